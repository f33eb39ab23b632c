"""``qc eval`` for any model: compare every output of a model with a reference model's on inputs
from an ``.npz`` or generated from the model's signature.

Per output, over all samples: ``sqnr_db`` (``10 log10(sum ref^2 / sum (ref - got)^2)``, energies
summed over the samples, as ``qc.tools.metrics.compare_outputs``), the per-sample SQNR's
``min`` and ``median``, ``cosine`` (of each sample's flattened output, mean and min),
``max_abs_error`` and, for **classifier-like** outputs, ``top1``: the fraction of rows whose
arg-max over the last axis agrees. An output is classifier-like when it is floating point and
its last axis is longer than 1 (class scores ``[N, classes]``, token logits ``[N, seq, vocab]``);
each position of the leading axes is one row.

Generated inputs (:func:`generate`): float inputs are standard normal (normalized images and
features), integer inputs that index a constant table through ``Gather`` (token ids into an
embedding) are uniform in ``[0, rows)``, inputs named like a mask are ones, other integers are
uniform in ``[0, 4)``, booleans fair coins. A symbolic dimension has no size to generate:
``shapes`` (``--shape NAME=AxB``) gives it, else the error names the input and the dimension.
:func:`like` generates inputs like real samples (their shapes; floats with their mean and std,
integers element by element from them), for the compile report's held-aside check.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qc.errors import QCError
from qc.ir.core import Module, Value
from qc.ir.types import TensorType
from qc.onnx.kv_layout import SCALE_SUFFIX, dequantize_cache_outputs, quantize_cache_feed
from qc.tools.metrics import sqnr_from

Feeds = dict[str, np.ndarray]
SMALL_INTS = 4  # generated integers without a known range are in [0, SMALL_INTS)


# -- generating inputs ----------------------------------------------------------------------------
@dataclass(frozen=True)
class InputSpec:
    """One model input and how :func:`generate` fills it (``kind``: normal, index, ones, small, bool)."""
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    kind: str
    high: int | None = None

    def describe(self) -> str:
        what = {"normal": "normal(0, 1)", "index": f"ints in [0, {self.high})", "ones": "ones",
                "small": f"ints in [0, {self.high})", "bool": "random bools"}[self.kind]
        return f"{self.name}: {what} {self.dtype.name}[{', '.join(map(str, self.shape))}]"


_PASS_THROUGH = ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity")


def _gather_rows(module: Module) -> dict[str, int]:
    """Graph inputs used as the indices of a Gather of a constant table (directly or through
    Cast / Reshape / Unsqueeze / Squeeze / Flatten / Identity) -> the table's rows on its axis."""
    rows: dict[str, int] = {}
    for op in module.walk():
        if op.op_type != "Gather" or len(op.operands) < 2:
            continue
        data, idx = op.operands[0], op.operands[1]
        while idx is not None and idx.producer is not None and idx.producer.op_type in _PASS_THROUGH:
            idx = idx.producer.operands[0]
        if data is None or idx is None or data.const is None or not isinstance(data.type, TensorType):
            continue
        shape = data.type.shape
        axis = int(op.attr("axis", 0))
        if shape and -len(shape) <= axis < len(shape) and isinstance(shape[axis], int):
            rows[idx.name] = min(rows.get(idx.name, shape[axis]), shape[axis])
    return rows


def signature(module: Module, shapes: Mapping[str, Sequence[int]] | None = None, *,
              where: str | None = None) -> list[InputSpec]:
    """How each non-constant input of ``module`` is generated; a symbolic dimension without a
    shape in ``shapes`` is a QCError (``where``: the model file) naming the input and the dimension."""
    shapes = dict(shapes or {})
    inputs = [v for v in module.graph.inputs if v.const is None]
    unknown = [n for n in shapes if n not in {v.name for v in inputs}]
    if unknown:
        raise QCError(f"--shape names '{unknown[0]}', which is not a model input",
                      hint="the inputs are " + ", ".join(v.name for v in inputs))
    rows = _gather_rows(module)
    return [_spec(v, shapes.get(v.name), rows.get(v.name), where) for v in inputs]


def _spec(v: Value, given: Sequence[int] | None, rows: int | None, where: str | None) -> InputSpec:
    t = v.type
    if not isinstance(t, TensorType) or t.dtype is None or t.shape is None:
        raise QCError(f"input '{v.name}' has no known dtype and rank ({t}) to generate data from", where=where,
                      hint="give the inputs as an .npz with --inputs")
    dims = list(t.shape)
    if given is not None:
        given = tuple(int(d) for d in given)
        if len(given) != len(dims) or any(isinstance(d, int) and d >= 0 and d != g for d, g in zip(dims, given)):
            raise QCError(f"--shape {v.name}={'x'.join(map(str, given))} does not match the input's shape "
                          f"{_fmt(dims)}", where=where,
                          hint="keep its static dimensions and give a size for each symbolic one")
        shape = given
    else:
        for axis, d in enumerate(dims):
            if not isinstance(d, int) or d < 0:
                name = f"'{d}'" if isinstance(d, str) else "(unnamed)"
                example = "x".join(str(x) if isinstance(x, int) and x >= 0 else
                                   (x.upper() if isinstance(x, str) and x.isidentifier() else "N") for x in dims)
                raise QCError(f"input '{v.name}' {_fmt(dims)} has the symbolic dimension {name} (axis {axis}), "
                              "so inputs cannot be generated for it", where=where,
                              hint=f"give its size: --shape {v.name}={example} (with numbers), or give inputs "
                                   "with --inputs X.npz")
        shape = tuple(int(d) for d in dims)
    dtype = np.dtype(t.dtype.numpy)
    if dtype.kind == "b":
        return InputSpec(v.name, dtype, shape, "bool")
    if dtype.kind in "iu":
        if rows is not None:
            return InputSpec(v.name, dtype, shape, "index", rows)
        if "mask" in v.name.lower():
            return InputSpec(v.name, dtype, shape, "ones")
        return InputSpec(v.name, dtype, shape, "small", SMALL_INTS)
    return InputSpec(v.name, dtype, shape, "normal")


def _fmt(dims: Sequence[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def generate(specs: Sequence[InputSpec], samples: int, seed: int) -> list[Feeds]:
    """``samples`` feed dicts from ``specs``; the same seed gives the same arrays."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(samples):
        feeds: Feeds = {}
        for s in specs:
            if s.kind == "normal":
                feeds[s.name] = np.asarray(rng.standard_normal(s.shape), dtype=s.dtype)
            elif s.kind == "bool":
                feeds[s.name] = np.asarray(rng.random(s.shape) < 0.5)
            elif s.kind == "ones":
                feeds[s.name] = np.ones(s.shape, s.dtype)
            else:
                feeds[s.name] = np.asarray(rng.integers(0, s.high or 1, s.shape), dtype=s.dtype)
        out.append(feeds)
    return out


def like(real: Sequence[Mapping[str, np.ndarray]], count: int, seed: int = 0) -> list[Feeds]:
    """``count`` feed dicts shaped like ``real`` (cycling through their shapes). A float input is
    normal with the mean and std of its pooled real values; an integer or boolean input takes each
    element from the same element of a real sample picked at random (token ids keep their
    frequencies and stay in the vocabulary, masks and position ids stay what they were), or from
    the pooled values where the shapes differ."""
    if not real or count <= 0:
        return []
    rng = np.random.default_rng(seed)
    pooled = {name: np.concatenate([np.asarray(r[name]).reshape(-1) for r in real]) for name in real[0]}
    out = []
    for i in range(count):
        template = real[i % len(real)]
        feeds: Feeds = {}
        for name, a in template.items():
            a = np.asarray(a)
            if a.dtype.kind == "f":
                values = pooled[name].astype(np.float64)
                feeds[name] = np.asarray(values.mean() + values.std() * rng.standard_normal(a.shape), dtype=a.dtype)
                continue
            same = [np.asarray(r[name]) for r in real if np.shape(r[name]) == a.shape]
            if len(same) == len(real):
                stack = np.stack(same)
                pick = rng.integers(0, len(same), a.shape)
                feeds[name] = np.take_along_axis(stack, pick[None], axis=0).reshape(a.shape)
            else:
                feeds[name] = np.asarray(rng.choice(pooled[name], a.shape), dtype=a.dtype)
        out.append(feeds)
    return out


# -- comparing ------------------------------------------------------------------------------------
def is_classifier_like(array: np.ndarray) -> bool:
    """Floating point with a last axis longer than 1: rows of class scores (or token logits)."""
    a = np.asarray(array)
    return a.dtype.kind == "f" and a.ndim >= 1 and a.shape[-1] > 1


@dataclass
class _Stats:
    signal: float = 0.0
    noise: float = 0.0
    per_sample: list[float] = field(default_factory=list)
    cosines: list[float] = field(default_factory=list)
    max_abs: float = 0.0
    rows: int = 0
    agree: int = 0
    classifier: bool = True
    shape: tuple[int, ...] = ()
    dtype: str = ""

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        r, g = np.asarray(ref), np.asarray(got)
        if r.shape != g.shape:
            raise QCError(f"cannot compare outputs of shapes {list(g.shape)} and {list(r.shape)} (the reference's)")
        r64, g64 = r.astype(np.float64).reshape(-1), g.astype(np.float64).reshape(-1)
        s, n = float(np.dot(r64, r64)), float(np.dot(r64 - g64, r64 - g64))
        self.signal += s
        self.noise += n
        self.per_sample.append(sqnr_from(s, n))
        nr, ng = math.sqrt(s), float(np.linalg.norm(g64))
        self.cosines.append(float(np.dot(r64, g64)) / (nr * ng) if nr > 0 and ng > 0 else float(nr == ng))
        if r64.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(r64 - g64))))
        self.classifier = self.classifier and is_classifier_like(r)
        if self.classifier and r.size:
            rr, gg = r.reshape(-1, r.shape[-1]), g.reshape(-1, g.shape[-1])
            self.rows += rr.shape[0]
            self.agree += int((rr.argmax(axis=1) == gg.argmax(axis=1)).sum())
        self.shape, self.dtype = tuple(r.shape), r.dtype.name

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sqnr_db": sqnr_from(self.signal, self.noise),
            "sqnr_db_min": float(min(self.per_sample)), "sqnr_db_median": float(np.median(self.per_sample)),
            "cosine": float(np.mean(self.cosines)), "cosine_min": float(min(self.cosines)),
            "max_abs_error": self.max_abs, "classifier_like": self.classifier,
            "shape": list(self.shape), "dtype": self.dtype}
        if self.classifier:
            out["top1"] = self.agree / self.rows if self.rows else None
            out["top1_rows"] = self.rows
        return out


def compare(model: Any, reference: Any, feeds: Iterable[Mapping[str, np.ndarray]], *,
            progress: bool = False) -> dict[str, dict[str, Any]]:
    """The metrics above for every output of ``reference``, by name, against ``model``'s (paths,
    ModelProtos or onnxruntime sessions; graph optimizations off)."""
    return compare_groups(model, reference, {"all": list(feeds)}, progress=progress)["all"]


def _only(feed: Mapping[str, np.ndarray], names: set[str]) -> dict[str, np.ndarray]:
    """The arrays of ``feed`` a session takes: a compiled model may have fewer inputs than its
    reference (an input bound to a constant with ``--bind``)."""
    return {k: a for k, a in feed.items() if k in names}


def compare_groups(model: Any, reference: Any, groups: Mapping[str, Sequence[Mapping[str, np.ndarray]]], *,
                   progress: bool = False) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`compare` for each group of feeds, and for all of them together under ``"all"``
    (each feed runs once)."""
    from qc.tools import metrics

    sess, ref = metrics.session(model), metrics.session(reference)
    names = [o.name for o in ref.get_outputs()]
    have = {o.name for o in sess.get_outputs()}
    missing = [n for n in names if n not in have]
    if missing:
        raise QCError(f"the model lacks the reference's output(s) {', '.join(missing)}", where=metrics._where(model),
                      hint="outputs: " + ", ".join(sorted(have)))
    model_inputs = {i.name for i in sess.get_inputs()}
    ref_inputs = {i.name for i in ref.get_inputs()}
    # an int8 KV cache (quantize-kv-cache): feed it the quantized float caches, compare it dequantized
    int8_caches = [i.name for i in sess.get_inputs()
                   if i.type == "tensor(int8)" and i.name + SCALE_SUFFIX in model_inputs]
    fetch = names + [n + SCALE_SUFFIX for n in names if n + SCALE_SUFFIX in have]
    tagged = [(g, f) for g, feeds in groups.items() for f in feeds]
    if not tagged:
        raise QCError("no inputs to compare the models on")
    stats = {g: {n: _Stats() for n in names} for g in {*groups, "all"} if g == "all" or groups[g]}
    for g, f in metrics._progress(tagged, total=len(tagged), desc="eval", unit="input", enabled=progress):
        feed = quantize_cache_feed(f, int8_caches) if int8_caches else f
        fetched = dict(zip(fetch, metrics.run(sess, fetch, _only(feed, model_inputs), metrics._where(model))))
        got = [dequantize_cache_outputs(fetched)[n] for n in names]
        want = metrics.run(ref, names, _only(f, ref_inputs), metrics._where(reference))
        for n, x, w in zip(names, got, want):
            stats["all"][n].add(w, x)
            if g != "all":
                stats[g][n].add(w, x)
    return {g: {n: s.result() for n, s in per.items()} for g, per in stats.items()}
