"""Calibration data: where the samples that ``calibrate`` runs the model on come from.

A :class:`CalibrationData` is an iterable of feed dicts (input name -> array), one sample each,
with a ``key`` that fingerprints its content (for the calibration cache). Sources:

- :func:`from_npz`: one ``.npz`` with an array per model input and a leading sample axis (the
  layout ``qc.data.text.to_npz`` writes; a 0-d array, ``sr=np.int64(16000)``, is the same scalar
  in every sample), or a directory of ``.npz`` files, one sample each,
  taken in name order and read one at a time;
- :func:`from_text`: token windows of a text (``qc.data.text.token_windows``), fed like
  ``qc eval`` feeds token models (``qc.metrics.token_feeds``);
- :func:`from_arrays` / :func:`from_samples`: arrays already in memory.

A sample's arrays either have the input's own shape, or one extra leading axis of size 1 (a
sample sliced out of a file's sample axis); :meth:`CalibrationData.feeds` drops that axis where
the model input does not have it. :func:`check_against` validates the data against a module's
inputs before anything runs, with one-line errors that say what to change.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np

from qc.errors import QCError
from qc.ir.core import Module, Value
from qc.ir.dtypes import DType
from qc.ir.types import TensorType, dim_kind

Sample = dict[str, np.ndarray]


class CalibrationData:
    """An iterable of samples (feed dicts); ``len`` is the sample count, ``key`` a content hash."""

    def __init__(self, count: int, load: Callable[[int], Sample], *, key: str, source: str | None = None,
                 where: Callable[[int], str | None] | None = None, description: str = ""):
        self._count = count
        self._load = load
        self._where = where
        self.key = key
        self.source = source              # the file or directory the data came from (for messages)
        self.description = description

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Sample]:
        for i in range(self._count):
            yield self._load(i)

    def sample(self, index: int) -> Sample:
        return self._load(index)

    def without(self, names: Iterable[str]) -> CalibrationData:
        """The same samples without the arrays ``names`` (inputs bound to constants: the bound
        module no longer takes them)."""
        drop = frozenset(names)
        if not drop:
            return self
        return CalibrationData(self._count, lambda i: {k: a for k, a in self._load(i).items() if k not in drop},
                               key=f"{self.key}-without-{','.join(sorted(drop))}", source=self.source,
                               where=self._where, description=self.description)

    def where(self, index: int) -> str | None:
        """The file sample ``index`` comes from (None for data built in memory)."""
        return self._where(index) if self._where is not None else self.source

    def feeds(self, module: Module) -> Iterator[Sample]:
        """The samples shaped for ``module``'s inputs (a leading axis of 1 dropped where needed)."""
        inputs = {v.name: v for v in module.graph.inputs}
        for sample in self:
            yield conform(sample, inputs)

    def __repr__(self) -> str:
        return f"CalibrationData({self._count} samples{', ' + self.description if self.description else ''})"


def conform(sample: Mapping[str, np.ndarray], inputs: Mapping[str, Value]) -> Sample:
    """Drop a leading axis of size 1 from arrays that have one axis more than their input."""
    out: Sample = {}
    for name, array in sample.items():
        v = inputs.get(name)
        rank = v.type.rank if v is not None and isinstance(v.type, TensorType) else None
        if rank is not None and array.ndim == rank + 1 and array.shape[0] == 1:
            array = array[0, ...]  # a 0-d array, not a numpy scalar, when the input is a scalar
        out[name] = array
    return out


# -- sources ------------------------------------------------------------------------------------
def from_npz(path: str | os.PathLike) -> CalibrationData:
    """One ``.npz`` (arrays named after the inputs, leading sample axis) or a directory of
    ``.npz`` files (one sample each, sorted by file name)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return _from_npz_dir(path)
    if not os.path.isfile(path):
        raise QCError("no such calibration data file or directory", where=path,
                      hint="give an .npz file (one array per model input, leading sample axis) or a directory of them")
    arrays = _read_npz(path)
    count = _sample_count(arrays, path)
    return CalibrationData(count, lambda i: _slice(arrays, i), key=_hash_file(path), source=path, description=path)


def _sample_count(arrays: Mapping[str, np.ndarray], where: str | None) -> int:
    """The length of the leading sample axis that every array but the 0-d ones has (a 0-d array,
    e.g. ``sr=np.int64(16000)``, is the same scalar in every sample); 1 if all are 0-d."""
    counts = {a.shape[0] for a in arrays.values() if a.ndim}
    if len(counts) > 1:
        raise QCError("every array needs the same leading sample axis; got "
                      + ", ".join(f"{k} {list(a.shape)}" for k, a in arrays.items()), where=where,
                      hint="stack the samples along a new first axis (np.stack) for every input")
    return counts.pop() if counts else (1 if arrays else 0)


def _slice(arrays: Mapping[str, np.ndarray], i: int) -> Sample:
    """Sample ``i``: each array's slice ``[i:i + 1]`` of its sample axis; 0-d arrays as they are."""
    return {k: a[i:i + 1] if a.ndim else a for k, a in arrays.items()}


def _from_npz_dir(path: str) -> CalibrationData:
    files = sorted(f for f in os.listdir(path) if f.endswith(".npz"))
    paths = [os.path.join(path, f) for f in files]
    if not paths:
        raise QCError("the directory has no .npz files", where=path,
                      hint="write one .npz per sample, arrays named after the model inputs")
    digest = hashlib.sha256()
    for f, p in zip(files, paths):
        digest.update(f.encode() + b"\0" + _hash_file(p).encode())
    return CalibrationData(len(paths), lambda i: _read_npz(paths[i]), key=digest.hexdigest(), source=path,
                           where=lambda i: paths[i], description=f"{path} ({len(paths)} files)")


def _read_npz(path: str) -> Sample:
    hint = "save numeric arrays with np.savez(path, input_name=array, ...)"
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise QCError("not an .npz archive (a single .npy array?)", where=path, hint=hint)
        with z:
            return {name: z[name] for name in z.files}
    except QCError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "allow_pickle" in detail or "pickled" in detail:
            detail = "it holds object arrays, which qc does not unpickle"
        raise QCError(f"cannot read the calibration data ({detail})", where=path, hint=hint) from None


def _hash_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hash_arrays(samples: Sequence[Mapping[str, np.ndarray]]) -> str:
    digest = hashlib.sha256()
    for sample in samples:
        for name in sorted(sample):
            a = np.ascontiguousarray(sample[name])
            digest.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
            digest.update(a.tobytes())
    return digest.hexdigest()


def from_arrays(arrays: Mapping[str, np.ndarray], *, source: str | None = None) -> CalibrationData:
    """Arrays in memory, named after the inputs, with a leading sample axis."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    count = _sample_count(arrays, source)
    return CalibrationData(count, lambda i: _slice(arrays, i), key=_hash_arrays([arrays]), source=source,
                           description="arrays")


def from_samples(samples: Sequence[Mapping[str, np.ndarray]], *, source: str | None = None) -> CalibrationData:
    """A list of feed dicts, one per sample."""
    items = [{k: np.asarray(v) for k, v in s.items()} for s in samples]
    return CalibrationData(len(items), lambda i: dict(items[i]), key=_hash_arrays(items), source=source,
                           description=f"{len(items)} samples")


def from_text(text: str | os.PathLike | None, tokenizer: Any, *, seq_len: int, samples: int | None,
              input_names: Sequence[str] | Mapping[str, Any] = ("input_ids",)) -> CalibrationData:
    """Token windows of a text as samples for a token model.

    ``text``: a file, a built-in source name (``licenses``, the default calibration text, when
    None), or the text itself (a string containing a newline). ``tokenizer``: a model name from
    ``qc models``, a ``tokenizer.json`` path, or a tokenizer object. Windows are ``seq_len``
    tokens, ``samples`` of them spread evenly over the text (all when None); a tokenizer with
    ``[CLS]`` and ``[SEP]`` (a BERT-style encoder) gets ``[CLS] + seq_len - 2 tokens + [SEP]``.
    ``input_names``: the model's inputs (or a mapping name -> dtype, for int32 token inputs);
    each gets what ``qc eval`` feeds it (``input_ids``, ``attention_mask`` of ones,
    ``token_type_ids`` of zeros, ``position_ids`` 0..L-1).
    """
    from qc.data import text as textdata
    from qc.data.feeds import token_feeds

    if isinstance(text, str) and "\n" in text:
        path, where = text, None
    else:
        path = textdata.resolve_text(text, default=textdata.CALIBRATION_SOURCE)
        where = path
    tok = textdata.load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    cls_sep = _cls_sep(tok)
    if cls_sep is not None and seq_len < 4:
        raise QCError(f"an encoder's windows need at least 4 tokens ([CLS], 2 tokens, [SEP]); got --seq-len {seq_len}")
    body = textdata.token_windows(path, tok, seq_len - 2 if cls_sep else seq_len, samples=samples)
    if cls_sep is not None:
        n = len(body)
        windows = np.concatenate([np.full((n, 1), cls_sep[0]), body, np.full((n, 1), cls_sep[1])], axis=1)
    else:
        windows = body
    windows = windows.astype(np.int64)
    session_like = _InputList(input_names)
    token_feeds(session_like, windows[:1], where=where)     # raises now for inputs that text cannot feed

    digest = hashlib.sha256()
    digest.update(textdata.read_text(path).encode())
    digest.update(_tokenizer_fingerprint(tok).encode())
    digest.update(f"|{seq_len}|{samples}|{sorted(session_like.types.items())}".encode())
    return CalibrationData(len(windows), lambda i: token_feeds(session_like, windows[i:i + 1], where=where),
                           key=digest.hexdigest(), source=where,
                           description=f"{len(windows)} windows x {seq_len} tokens of {where or 'text'}")


def kv_from_text(module: Module, layout: Any, text: str | os.PathLike | None, tokenizer: Any, *, seq_len: int,
                 samples: int | None, decode_steps: int = 4) -> CalibrationData:
    """Calibration samples for a KV-cache decoder: per token window, the prefill of its first
    ``seq_len - decode_steps`` tokens (empty cache) and then ``decode_steps`` one-token steps
    against the cache the float model wrote (activation statistics differ between the two:
    a decode step's rows are one token over a long cache). The caches come from running
    ``module`` itself (float) in onnxruntime, one window at a time."""
    from qc.onnx.evaluator import module_session

    windows = from_text(text, tokenizer, seq_len=seq_len, samples=samples)
    steps = min(decode_steps, seq_len // 4)
    per_window = 1 + steps
    session: list[Any] = []
    memo: dict[int, list[Sample]] = {}

    def window_samples(w: int) -> list[Sample]:
        if w not in memo:
            if not session:
                session.append(module_session(module, optimize=True))
            memo.clear()
            memo[w] = _kv_window(session[0], layout, windows.sample(w)["input_ids"][0], steps)
        return memo[w]

    return CalibrationData(len(windows) * per_window, lambda i: window_samples(i // per_window)[i % per_window],
                           key=f"{windows.key}-kv{steps}", source=windows.source,
                           description=f"{windows.description}, each as a prefill of {seq_len - steps} tokens and "
                                       f"{steps} decode steps through the KV cache")


def _kv_window(session: Any, layout: Any, ids: np.ndarray, steps: int) -> list[Sample]:
    prefill = len(ids) - steps
    cache = {p.past.name: np.zeros([0 if a == p.seq_axis else (1 if a == 0 else int(d))
                                    for a, d in enumerate(p.past.dims)], p.past.numpy_dtype) for p in layout.pairs}
    outputs = [p.present.name for p in layout.pairs]
    out: list[Sample] = []
    start = 0
    for end in [prefill, *range(prefill + 1, len(ids) + 1)]:
        sample: Sample = {layout.input_ids.name: ids[None, start:end].astype(layout.input_ids.numpy_dtype), **cache}
        if layout.attention_mask is not None:
            sample[layout.attention_mask.name] = np.ones((1, end), layout.attention_mask.numpy_dtype)
        if layout.position_ids is not None:
            sample[layout.position_ids.name] = np.arange(start, end, dtype=layout.position_ids.numpy_dtype)[None]
        out.append(sample)
        if end < len(ids):
            cache = dict(zip(cache, session.run(outputs, sample)))
        start = end
    return out


class _InputList:
    """Just enough of an onnxruntime session (``get_inputs``) for ``qc.metrics.token_feeds``."""

    def __init__(self, input_names: Sequence[str] | Mapping[str, Any]):
        if isinstance(input_names, Mapping):
            self.types = {name: _ort_type(dtype) for name, dtype in input_names.items()}
        else:
            self.types = dict.fromkeys(input_names, "tensor(int64)")

    def get_inputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=name, type=t) for name, t in self.types.items()]


def _ort_type(dtype: Any) -> str:
    if isinstance(dtype, DType):
        dtype = dtype.numpy
    return "tensor(int32)" if np.dtype(dtype) == np.int32 else "tensor(int64)"


def _cls_sep(tok: Any) -> tuple[int, int] | None:
    to_id = getattr(tok, "token_to_id", None)
    if to_id is None:
        return None
    cls, sep = to_id("[CLS]"), to_id("[SEP]")
    return None if cls is None or sep is None else (int(cls), int(sep))


def _tokenizer_fingerprint(tok: Any) -> str:
    to_str = getattr(tok, "to_str", None)
    if to_str is not None:
        return hashlib.sha256(to_str().encode()).hexdigest()
    return f"{type(tok).__module__}.{type(tok).__qualname__}"


def text_input_names(module: Module) -> dict[str, np.dtype]:
    """The module's graph inputs (non-const) with their dtypes, for ``from_text(input_names=...)``."""
    out: dict[str, np.dtype] = {}
    for v in module.graph.inputs:
        if v.const is None:
            dtype = v.type.dtype if isinstance(v.type, TensorType) and v.type.dtype is not None else DType.i64
            out[v.name] = dtype.numpy
    return out


# -- validation ---------------------------------------------------------------------------------
def _fmt_shape(shape: Sequence[Any] | None) -> str:
    if shape is None:
        return "[*]"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _describe_input(v: Value) -> str:
    t = v.type
    if isinstance(t, TensorType) and t.dtype is not None:
        return f"{v.name} ({np.dtype(t.dtype.numpy).name}{_fmt_shape(t.shape)})"
    return v.name


def check_against(data: CalibrationData, module: Module) -> None:
    """Raise a QCError (``where=`` the file) unless every sample feeds ``module`` exactly:
    every required input present, no unknown arrays, dtypes equal, ranks and static dims
    matching (a shared symbol such as ``batch`` the same size throughout a sample; anonymous
    dims, ``-1`` ``?`` ``unk__3`` (``qc.ir.types.dim_kind``), any size), no NaN/Inf in float
    arrays, and at least one sample."""
    inputs = {v.name: v for v in module.graph.inputs}
    required = [v for v in module.graph.inputs if v.const is None]
    if len(data) == 0:
        raise QCError("the calibration data has no samples", where=data.source,
                      hint="give at least one sample (arrays with a leading sample axis of length 1 or more)")
    expected_list = ", ".join(_describe_input(v) for v in required) or "none"
    for index, raw in enumerate(data):
        where = data.where(index)
        sample = conform(raw, inputs)
        names = ", ".join(sample) or "none"
        missing = [v.name for v in required if v.name not in sample]
        if missing:
            more = f" (nor for {', '.join(repr(m) for m in missing[1:])})" if len(missing) > 1 else ""
            raise QCError(f"the calibration data has no array for the model input '{missing[0]}'{more}; "
                          f"its arrays: {names}", where=where,
                          hint=f"name the arrays after the model inputs: {expected_list}")
        unknown = [n for n in sample if n not in inputs]
        if unknown:
            raise QCError(f"the calibration data has an array '{unknown[0]}' that is not a model input", where=where,
                          hint=f"the model inputs are {expected_list}; rename or drop the array")
        symbols: dict[str, tuple[int, str]] = {}
        for name, array in sample.items():
            _check_array(name, array, inputs[name], index, where, symbols)


def _check_array(name: str, array: np.ndarray, v: Value, index: int, where: str | None,
                 symbols: dict[str, tuple[int, str]]) -> None:
    t = v.type
    if not isinstance(t, TensorType):
        return
    if t.dtype is not None:
        expected = np.dtype(t.dtype.numpy)
        if array.dtype != expected:
            raise QCError(f"input '{name}' expects {expected.name}, the calibration data has {array.dtype.name}",
                          where=where, hint=f"convert the array with .astype(np.{expected.name})")
    if t.shape is not None:
        shown = list(array.shape)
        if array.ndim != len(t.shape):
            raise QCError(f"input '{name}' expects rank {len(t.shape)} {_fmt_shape(t.shape)}, sample {index} has "
                          f"shape {shown}", where=where,
                          hint="each sample is the input's own shape (a file adds one leading sample axis)")
        for axis, (want, got) in enumerate(zip(t.shape, array.shape)):
            kind = dim_kind(want)
            if kind == "static" and want != got:
                raise QCError(f"input '{name}' expects shape {_fmt_shape(t.shape)}, sample {index} has {shown} "
                              f"(axis {axis}: {got} instead of {want})", where=where,
                              hint="each sample is the input's own shape (a file adds one leading sample axis)")
            if kind == "symbol":
                assert isinstance(want, str)
                seen = symbols.setdefault(want, (got, name))
                if seen[0] != got:
                    raise QCError(f"inputs '{seen[1]}' and '{name}' share the dimension '{want}', but sample {index} "
                                  f"gives {seen[0]} and {got}", where=where,
                                  hint="make the arrays of one sample agree on shared dimensions")
    if array.dtype.kind == "f" or array.dtype.name == "bfloat16":
        finite = np.isfinite(array)
        if not finite.all():
            nan = int(np.isnan(array).sum())
            inf = int(array.size - finite.sum()) - nan
            what = " and ".join(p for p in (f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else "") if p)
            raise QCError(f"input '{name}' of sample {index} contains {what} value(s)", where=where,
                          hint="clean the calibration data (NaN/Inf would poison every range computed from it)")


# -- held-aside samples and loading by option --------------------------------------------------
def holdout_count(samples: int, requested: int | None) -> int:
    """Samples kept aside for the SQNR check: ``requested``, else 1/8 of the set (1..4), none under 8."""
    if requested is not None:
        if requested < 0 or requested >= samples:
            raise QCError(f"--holdout {requested} leaves no calibration samples (the data has {samples})",
                          hint=f"use --holdout between 0 and {samples - 1}")
        return requested
    return 0 if samples < 8 else min(4, max(1, samples // 8))


def split_holdout(data: Any, requested: int | None, module: Any) -> tuple[Any, list[dict[str, np.ndarray]]]:
    """(calibration samples, held-aside feeds shaped for ``module``): the last samples are held aside."""
    n_hold = holdout_count(len(data), requested)
    n_calib = len(data) - n_hold
    key = hashlib.sha256(f"{data.key}|first {n_calib}".encode()).hexdigest()[:16]
    calib = CalibrationData(n_calib, data.sample, key=key, source=data.source, where=data.where,
                            description=data.description)
    inputs = {v.name: v for v in module.graph.inputs}
    return calib, [conform(data.sample(i), inputs) for i in range(n_calib, len(data))]


def load_inputs(module: Module, tokenizer: Callable[[], Any], *, npz: str | None, text: str | None,
                samples: int | None, seq_len: int, flags: tuple[str, str]) -> CalibrationData | None:
    """Model inputs from an .npz (or a directory of them) or from text cut into token windows
    (``seq_len`` tokens, ``samples`` windows; ``tokenizer()`` gives the tokenizer), checked against
    the module's inputs; None if neither is given. ``flags`` name the two options in the messages."""
    if npz and text:
        raise QCError(f"give either {flags[0]} or {flags[1]}, not both")
    if npz:
        data = from_npz(npz)
    elif text:
        from qc.data import text as textdata
        from qc.onnx.kv_layout import recognize_module

        layout = recognize_module(module)
        if layout is not None:
            data = kv_from_text(module, layout, textdata.resolve_text(text), tokenizer(), seq_len=seq_len,
                                samples=samples)
        else:
            data = from_text(textdata.resolve_text(text), tokenizer(), seq_len=seq_len,
                             samples=samples, input_names=text_input_names(module))
    else:
        return None
    check_against(data, module)
    return data
