"""The ``calibrate`` pass; its docstring (``qc passes calibrate``) says what it collects."""
from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from qc.calib.data import CalibrationData, check_against, from_npz
from qc.calib.stats import DEFAULT_BINS, FORMAT_VERSION, METHODS, CalibrationStats, TensorStats
from qc.errors import QCError
from qc.ir.core import Module, Op, Value
from qc.ir.tensor import SparseTensor, Tensor
from qc.ir.types import TensorType
from qc.onnx.evaluator import trim_heap
from qc.pm import Pass, PassContext, register_pass

from ._util import graphs, is_default_domain
from .insert_qdq import learned_dequantize

DATA_HINT = "give calibration data: --calib FILE.npz or --calib-text FILE --tokenizer ..."
FLOAT_DTYPES = ("f32", "f16", "f64", "bf16")


@dataclass(frozen=True)
class Observed:
    """One tensor to observe: its feature (contraction) axis, whether it multiplies a constant
    weight (then the Hessian and row samples apply) and whether per-feature statistics are
    collected (weight operands and Conv inputs: their feature count is fixed by the weight)."""

    value: Value
    axis: int
    feeds_weight: bool
    per_feature: bool
    is_result: bool = False


STATS_FORMAT = 3
"""Bumped when TensorStats gains fields, so that older --calib-cache files are recomputed."""


@register_pass("calibrate")
@dataclass(frozen=True)
class Calibrate(Pass):
    """calibrate: run the model on calibration data and record statistics of its activations.

    The IR is not changed::

        %y = onnx.MatMul(%x, @w)       ->  unchanged;  ctx.calibration["x"] = TensorStats(
                                                           min, max, histogram, per-feature |x| max/sum,
                                                           Hessian X^T X, row sample)

    Observed (main graph, If branches, Loop bodies): the float, non-constant operands of the ops named in ``ops`` --
    MatMul A (features: last axis) and B (axis -2), Gemm A and B (transA/transB honoured),
    Conv X (channels: axis 1) -- and, with ``outputs=true``, their results (``output-ops``: the
    results of these op types only). Per-feature
    statistics (``channels``) are kept for operands multiplying a constant weight and for Conv
    inputs. Operands computed
    from constants only (Cast or DequantizeLinear of a weight) count as constants. Operands
    already quantized (out of a DequantizeLinear of an activation, directly or through
    shape-only ops: a QAT model's learned pairs) are not observed: their scales are kept. A graph
    input is observed from the feeds; every other value becomes an extra output of an ONNX
    export of the module run by onnxruntime, one sample (or ``batch-size`` samples when the
    batch dimension is symbolic) at a time, so memory holds one batch's activations.
    A value inside an If branch or a Loop body (nested ones too) cannot be a graph output, so
    the session's copy of the model threads it out (``qc.onnx.expose``; the IR is not changed)::

        %y = If(%c) then {%h = ...; %z = MatMul(%h, @w)}   ->  %y, %h.qc_observed = If(%c)
                                                                 then {... -> Identity(%h)}
                                                                 else {... -> Constant(f32[0])}

    the branch not taken gives an empty tensor (nothing is added to the statistics), a Loop
    gives every iteration's value as a scan output (folded in as more rows of axis 0). Chosen
    over evaluating bodies one by one because it is one onnxruntime run per sample with the
    model's own control flow, whatever the trip count or branch taken. Scan and function bodies
    are not observed. Constant ops' results count as constants (weights stored as Constant nodes).
    ``hessian`` (K x K float64 per tensor) and ``rows`` (at most that many rows kept for AWQ)
    apply to operands that multiply a constant weight (MatMul A, Gemm A), not to Conv.

    Data: ``ctx.calibration_data`` (a CalibrationData or an .npz path), checked
    against the model inputs first. ``ctx.calibration_cache`` (a path): loaded
    instead of running when its key (model structure and weights fingerprint, observed
    tensors, data, collection options) matches, else written after running. ``method`` is
    recorded in the statistics as the default range method of ``insert-qdq``. Values with
    empty or duplicate names are given unique names first (as the ONNX writer does).
    """

    method: str = "minmax"
    """range method recorded for insert-qdq: minmax|percentile|entropy|mse"""
    ops: str = "MatMul,Gemm,Conv"
    """op types whose activation operands are observed (comma-separated)"""
    histogram: bool = True
    """collect a histogram per tensor (needed by percentile, entropy, mse)"""
    channels: bool = True
    """collect per-feature max |x| and sum |x| (SmoothQuant, AWQ)"""
    hessian: bool = False
    """accumulate X^T X in float64 for the inputs of constant-weight MatMul/Gemm (GPTQ)"""
    rows: int = 0
    """keep a deterministic sample of at most this many input rows (AWQ)"""
    batch_size: int = 1
    """samples per onnxruntime run (concatenated on axis 0; only with a symbolic batch dimension)"""
    outputs: bool = False
    """also observe the results of the ops (min/max/histogram only)"""
    output_ops: str = ""
    """also observe the results of these op types (comma-separated; requantize-outputs)"""
    activation_pairs: bool = True
    """also observe MatMuls of two activations (attention); insert-qdq's option of the same name"""
    jobs: int = 0
    """worker processes, each running a contiguous share of the samples; their statistics merge
    (0: ctx.jobs)"""

    def run(self, module: Module, ctx: PassContext) -> bool:
        data = _calibration_data(ctx)
        check_against(data, module)
        from qc.ir.naming import assign_unique_names

        assign_unique_names(module)
        observed = self.observed_values(module)
        kept = _already_quantized(module, self.op_types())
        if kept:
            ctx.remark(None, f"{len(kept)} operands already quantized (QAT or an earlier pass) keep their scales; "
                             f"not observed: {', '.join('%' + n for n in kept[:5])}"
                             + (" ..." if len(kept) > 5 else ""))
        key = self._key(module, observed, data)
        cache_path = ctx.calibration_cache
        if cache_path:
            cache_path = os.fspath(cache_path)
            if os.path.exists(cache_path):
                cached = CalibrationStats.load(cache_path)
                if cached.key == key:
                    cached.method = self.method
                    ctx.calibration = cached
                    ctx.calibration_from_cache = cache_path
                    ctx.remark(None, f"{cached.samples} samples, {len(cached.tensors)} tensors, "
                                     f"loaded from {cache_path}")
                    return False
                ctx.remark(None, f"{cache_path} holds statistics of another model, data or options; recomputing")
        start = time.perf_counter()
        stats = CalibrationStats(key=key, method=self.method, options=self._collection_options())
        if observed:
            stats.tensors = self._collect(module, observed, data, ctx)
            stats.samples = len(data)
        else:
            ctx.remark(None, f"nothing to observe: no {self.ops} op with a float activation operand")
        for name, s in stats.tensors.items():
            if s.nonfinite:
                ctx.remark(None, f"'{name}' had {s.nonfinite} NaN/Inf values, left out of its statistics")
        seconds = time.perf_counter() - start
        ctx.calibration = stats
        ctx.remark(None, f"{stats.samples} samples, {len(stats.tensors)} tensors, {seconds:.2f} s")
        if cache_path:
            stats.save(cache_path)
        return False

    # -- what to observe -------------------------------------------------------------------
    def validate(self) -> None:
        if self.method not in METHODS:
            raise QCError(f"calibrate: unknown method '{self.method}'", hint="use one of " + ", ".join(METHODS))
        if not self.op_types():
            raise QCError("calibrate: ops is empty", hint="name op types, e.g. ops=MatMul,Gemm,Conv")
        if self.batch_size < 1:
            raise QCError(f"calibrate: batch-size must be at least 1 (got {self.batch_size})")
        if self.rows < 0:
            raise QCError(f"calibrate: rows must be 0 or more (got {self.rows})")

    def op_types(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.ops.split(",") if t.strip())

    def observed_values(self, module: Module) -> dict[str, Observed]:
        """The tensors to observe, by name, in graph order (first use decides the axis)."""
        constant = _constant_values(module)
        types = self.op_types()
        out: dict[str, Observed] = {}

        def add(v: Value | None, axis: int, feeds_weight: bool, per_feature: bool, is_result: bool = False) -> None:
            if v is None or id(v) in constant or v.name in out or not _maybe_float(v):
                return
            if not is_result and learned_dequantize(v) is not None:
                return      # already quantized (a QAT model's pair): its scale is kept, nothing to calibrate
            out[v.name] = Observed(v, axis, feeds_weight, per_feature, is_result)

        for op in calibrated_ops(module):
            if op.op_type not in types or not is_default_domain(op):
                continue
            if (not self.activation_pairs and op.op_type == "MatMul"
                    and not any(v is not None and id(v) in constant for v in op.operands[:2])):
                continue
            for v, axis, feeds_weight, per_feature in _operand_roles(op, constant):
                add(v, axis, feeds_weight, per_feature)
        result_types = types if self.outputs else frozenset(t.strip() for t in self.output_ops.split(",") if t.strip())
        if result_types:
            for op in calibrated_ops(module):
                if op.op_type in result_types and is_default_domain(op):
                    for r in op.results:
                        add(r, -1, False, False, True)
        return out

    def _stats_for(self, o: Observed) -> TensorStats:
        return TensorStats(channels=self.channels and o.per_feature, histogram=self.histogram,
                           hessian_enabled=self.hessian and o.feeds_weight,
                           max_rows=self.rows if o.feeds_weight else 0, axis=o.axis)

    def _collection_options(self) -> dict:
        return {"stats_format": STATS_FORMAT, "ops": sorted(self.op_types()), "activation_pairs": self.activation_pairs,
                "histogram": self.histogram, "channels": self.channels,
                "hessian": self.hessian, "rows": self.rows, "outputs": self.outputs, "bins": DEFAULT_BINS,
                "format": FORMAT_VERSION, **({"output_ops": self.output_ops} if self.output_ops else {})}

    def _key(self, module: Module, observed: dict[str, Observed], data: CalibrationData) -> str:
        digest = hashlib.sha256()
        digest.update(module_fingerprint(module).encode())
        for name, o in observed.items():
            digest.update(f"|{name}:{o.axis}:{int(o.feeds_weight)}:{int(o.per_feature)}:{int(o.is_result)}".encode())
        digest.update(f"|data:{data.key}|{sorted(self._collection_options().items())}".encode())
        return digest.hexdigest()

    # -- running ---------------------------------------------------------------------------
    def _collect(self, module: Module, observed: dict[str, Observed], data: CalibrationData,
                 ctx: PassContext) -> dict[str, TensorStats]:
        inputs = {v.name for v in module.graph.inputs}
        from_feed = [n for n in observed if n in inputs]
        fetched = _fetch_plan(module, [observed[n].value for n in observed if n not in inputs])
        inner = [f for f in fetched if f.output != f.name]
        if inner:
            ctx.remark(None, f"{len(inner)} of the observed tensors are inside If/Loop bodies (threaded out as "
                             "extra outputs)")
        stats = {name: self._stats_for(o) for name, o in observed.items()}
        batch = self.batch_size
        if batch > 1 and not _batch_dim_is_symbolic(module):
            ctx.remark(None, f"batch-size {batch} ignored: the model's batch dimension is static; running one "
                             "sample at a time")
            batch = 1
        if ctx.executor is not None and len(data) > 1 and not self.jobs:
            return self._collect_on_executor(module, observed, fetched, from_feed, stats, data, batch, ctx)
        jobs = self.jobs or int(ctx.jobs or 1)
        if jobs > 1 and len(data) > 1:
            return self._collect_in_workers(module, observed, fetched, from_feed, stats, data, batch, jobs, ctx)
        skipped: set[str] = set()
        session = _session(module, [observed[f.name].value for f in fetched if f.output == f.name],
                           {f.name: f.elem_type for f in fetched if f.output != f.name})
        bar = _progress(len(data), ctx)
        try:
            for feed, indices in _batches(data.feeds(module), batch):
                try:
                    results = session.run([f.output for f in fetched], feed) if fetched else []
                except Exception as e:  # onnxruntime raises its own exception types
                    detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise QCError(f"onnxruntime failed on calibration sample {indices[0]}: {detail}",
                                  where=data.where(indices[0]),
                                  hint="check that the sample is a valid input of the model") from None
                for f, array in zip(fetched, results):
                    self._update(stats, f.name, f.unstack(array), skipped)
                for name in from_feed:
                    self._update(stats, name, feed[name], skipped)
                del results
                bar.update(len(indices))
        finally:
            bar.close()
            del session
            trim_heap()
        for name in skipped:
            ctx.remark(None, f"'{name}' is not a float tensor; not observed")
        return {name: s for name, s in stats.items() if name not in skipped}

    def _collect_in_workers(self, module: Module, observed: dict[str, Observed], fetched: list[Fetch],
                            from_feed: list[str], stats: dict[str, TensorStats], data: CalibrationData,
                            batch: int, jobs: int, ctx: PassContext) -> dict[str, TensorStats]:
        """The samples split into ``jobs`` contiguous shares, each run by a worker process on the
        model written once to a temporary file; the shares' statistics merge in sample order
        (min/max/histograms/row samples exactly as one process would get them; sums in float64)."""
        import multiprocessing
        import shutil
        import tempfile

        import onnx

        from qc.onnx.expose import expose_subgraph_values
        from qc.onnx.writer import export_onnx, value_info

        tmp = tempfile.mkdtemp(prefix="qc-calibrate-")
        try:
            proto = export_onnx(module)
            have = {o.name for o in proto.graph.output}
            proto.graph.output.extend(value_info(observed[f.name].value) for f in fetched
                                      if f.output == f.name and f.name not in have)
            expose_subgraph_values(proto, {f.name: f.elem_type for f in fetched if f.output != f.name})
            path = os.path.join(tmp, "model.onnx")
            onnx.save(proto, path, save_as_external_data=True, location="model.onnx.data")
            del proto
            feeds = list(data.feeds(module))
            cut = [round(i * len(feeds) / jobs) for i in range(jobs + 1)]
            shares = [(path, fetched, from_feed, stats, feeds[a:b], batch) for a, b in zip(cut, cut[1:]) if b > a]
            with multiprocessing.get_context("spawn").Pool(len(shares)) as pool:
                parts = pool.map(_collect_share, shares)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        merged, skipped = parts[0]
        for part, part_skipped in parts[1:]:
            skipped |= part_skipped
            for name, s in part.items():
                merged[name].merge(s)
        ctx.remark(None, f"calibrated in {len(shares)} worker processes, statistics merged")
        for name in skipped:
            ctx.remark(None, f"'{name}' is not a float tensor; not observed")
        return {name: s for name, s in merged.items() if name not in skipped}

    def _collect_on_executor(self, module: Module, observed: dict[str, Observed], fetched: list[Fetch],
                             from_feed: list[str], stats: dict[str, TensorStats], data: CalibrationData,
                             batch: int, ctx: PassContext) -> dict[str, TensorStats]:
        """The samples in contiguous shares, one task each on ``ctx.executor`` (a Ray cluster): the
        model (ONNX bytes and weights, with the observed values as outputs) and the empty statistics
        are shared once, each task gets its samples; the shares' statistics merge in sample order,
        as those of the worker processes do (the same statistics as one process)."""
        from qc.onnx.evaluator import portable_model

        executor = ctx.executor
        assert executor is not None
        feeds = list(data.feeds(module))
        n = max(1, min(len(feeds), executor.workers))
        cut = [round(i * len(feeds) / n) for i in range(n + 1)]
        spans = [(a, b) for a, b in zip(cut, cut[1:]) if b > a]
        shared = (portable_model(module, extra_outputs=_typed([observed[f.name].value for f in fetched
                                                               if f.output == f.name]),
                                 subgraph_outputs={f.name: f.elem_type for f in fetched if f.output != f.name}),
                  fetched, from_feed, stats, batch)

        def describe(i: int) -> str:
            a, b = spans[i]
            first, last = data.where(a), data.where(b - 1)
            where = f" ({first}{'' if last == first else ' .. ' + last})" if first else ""
            return f"calibration samples {a}..{b - 1}{where}"

        parts = executor.map(_share_setup, _share_run, shared, [feeds[a:b] for a, b in spans],
                             describe=describe, desc="calibrate")
        if len(parts) != len(spans):
            raise QCError(f"calibration got {len(parts)} results for {len(spans)} shares of the samples")
        import copy

        merged, skipped = copy.deepcopy(parts[0])  # a copy: results from Ray's object store are read-only
        for part, part_skipped in parts[1:]:
            skipped |= part_skipped
            for name, st in part.items():
                merged[name].merge(st)
        missing = sorted(set(stats) - set(merged))
        if missing:
            raise QCError(f"calibration statistics of {len(missing)} values are missing after the merge: "
                          + ", ".join(missing[:5]))
        ctx.remark(None, f"calibrated in {len(spans)} tasks on {type(executor).__name__}, statistics merged")
        for name in skipped:
            ctx.remark(None, f"'{name}' is not a float tensor; not observed")
        return {name: st for name, st in merged.items() if name not in skipped}

    @staticmethod
    def _update(stats: dict[str, TensorStats], name: str, array: np.ndarray, skipped: set[str]) -> None:
        if name in skipped:
            return
        array = np.asarray(array)
        if array.dtype.kind != "f" and array.dtype.name != "bfloat16":
            skipped.add(name)
            return
        if array.size == 0:
            return  # an If branch that did not run, or a Loop that ran no iteration
        stats[name].update(array)


# -- helpers ------------------------------------------------------------------------------------
def _collect_share(job) -> tuple[dict[str, TensorStats], set[str]]:
    """A worker's share of the samples: fresh statistics (copies of the empty templates it was sent)."""
    import onnx

    from qc.onnx.reader import import_model

    path, fetched, from_feed, stats, feeds, batch = job
    module = import_model(onnx.load(path))  # the same session setup as one process, so the same floats
    outputs = {v.name: v for v in module.graph.outputs}
    session = _session(module, [outputs[f.output] for f in fetched])
    return stats, _observe(session, fetched, from_feed, stats, feeds, batch)


def _observe(session, fetched: list[Fetch], from_feed: list[str], stats: dict[str, TensorStats],
             feeds: list[dict[str, np.ndarray]], batch: int) -> set[str]:
    """Run the samples through ``session`` and fold the observed values (``fetched`` outputs and
    ``from_feed`` inputs) into ``stats``; returns the names that turned out not to be float."""
    skipped: set[str] = set()
    for feed, _ in _batches(feeds, batch):
        results = session.run([f.output for f in fetched], feed) if fetched else []
        for f, array in zip(fetched, results):
            Calibrate._update(stats, f.name, f.unstack(array), skipped)
        for name in from_feed:  # a copy: arrays from Ray's object store are read-only
            Calibrate._update(stats, name, np.array(feed[name]), skipped)
    return skipped


def _share_setup(shared: tuple) -> tuple:
    """An executor's worker: the session of the shared model (the one :func:`_session` makes here)."""
    from qc.onnx.evaluator import portable_session

    model, fetched, from_feed, stats, batch = shared
    return portable_session(model, optimize=True, prepack=False), fetched, from_feed, stats, batch


def _share_run(state: tuple, feeds: list[dict[str, np.ndarray]]) -> tuple[dict[str, TensorStats], set[str]]:
    """An executor's task: fresh statistics (copies of the empty templates) over its samples."""
    import copy

    session, fetched, from_feed, templates, batch = state
    stats = copy.deepcopy(templates)
    return stats, _observe(session, fetched, from_feed, stats, feeds, batch)


def _calibration_data(ctx: PassContext) -> CalibrationData:
    data = ctx.calibration_data
    if data is None:
        raise QCError("calibrate needs calibration data, and none was given", hint=DATA_HINT)
    if isinstance(data, (str, os.PathLike)):
        return from_npz(data)
    if not isinstance(data, CalibrationData):
        raise TypeError(f"ctx.calibration_data must be a CalibrationData or a path, "
                        f"got {type(data).__name__}")
    return data


def _maybe_float(v: Value) -> bool:
    t = v.type
    if isinstance(t, TensorType):
        return t.dtype is None or t.dtype.name in FLOAT_DTYPES
    return t is None


def _already_quantized(module: Module, types: frozenset[str]) -> list[str]:
    """Names of compute-op activation operands that come out of a DequantizeLinear (directly or
    through shape-only ops): calibrate leaves them out, insert-qdq keeps their parameters."""
    names: list[str] = []
    for op in calibrated_ops(module):
        if op.op_type in types and is_default_domain(op):
            for v in op.operands[:2]:
                if v is not None and v.name not in names and learned_dequantize(v) is not None:
                    names.append(v.name)
    return names


def _operand_roles(op: Op, constant: set[int]) -> Iterator[tuple[Value | None, int, bool, bool]]:
    """(operand, feature axis, multiplies a constant weight, per-feature stats) for the operands
    to observe. Activation x activation products (attention) get no per-feature statistics:
    their contraction axis may be the sequence, whose length varies between samples."""
    operands = op.operands

    def is_const(i: int) -> bool:
        return i < len(operands) and operands[i] is not None and id(operands[i]) in constant

    if op.op_type == "MatMul" and len(operands) >= 2:
        yield operands[0], -1, is_const(1), is_const(1)
        yield operands[1], -2, False, False
    elif op.op_type == "Gemm" and len(operands) >= 2:
        yield operands[0], 0 if op.attr("transA", 0) else -1, is_const(1), is_const(1)
        yield operands[1], -1 if op.attr("transB", 0) else 0, False, False
    elif op.op_type == "Conv" and operands:
        yield operands[0], 1, False, True
        if len(operands) > 1:
            yield operands[1], 1, False, False
    else:
        for v in operands:
            yield v, -1, False, False


def _constant_values(module: Module) -> set[int]:
    """ids of values that are constants (of any graph) or computed from constants only, Constant
    ops' results included (weights stored as Constant nodes)."""
    from ._util import constant_consts

    constant = set(constant_consts(module))
    for op in module.graph.walk():
        if op.op_type in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                          "Multinomial", "Bernoulli") or any(True for _ in op.subgraphs()):
            continue
        if all(v is None or id(v) in constant for v in op.operands):
            constant.update(id(r) for r in op.results if r is not None)
    return constant


def _batch_dim_is_symbolic(module: Module) -> bool:
    required = [v for v in module.graph.inputs if v.const is None]
    for v in required:
        t = v.type
        if not isinstance(t, TensorType) or not t.shape or isinstance(t.shape[0], int):
            return False
    return bool(required)


def _batches(feeds: Iterable[dict[str, np.ndarray]], size: int) -> Iterator[tuple[dict[str, np.ndarray], list[int]]]:
    """Consecutive samples of equal shapes concatenated along axis 0, up to ``size`` at a time."""
    pending: list[dict[str, np.ndarray]] = []
    indices: list[int] = []

    def signature(feed: dict[str, np.ndarray]) -> tuple:
        return tuple(sorted((k, a.dtype.str, a.shape[1:]) for k, a in feed.items()))

    def flush() -> tuple[dict[str, np.ndarray], list[int]]:
        if len(pending) == 1:
            out = pending[0]
        else:
            out = {k: np.concatenate([p[k] for p in pending], axis=0) for k in pending[0]}
        return out, list(indices)

    for i, feed in enumerate(feeds):
        if size == 1:
            yield feed, [i]
            continue
        if pending and (len(pending) == size or signature(feed) != signature(pending[0])):
            yield flush()
            pending.clear()
            indices.clear()
        pending.append(feed)
        indices.append(i)
    if pending:
        yield flush()


def _session(module: Module, values: list[Value], inner: dict[str, int] | None = None):
    """An onnxruntime session of the module with ``values`` as extra outputs (and the ``inner``
    values of If/Loop bodies threaded out), reading the IR's weights in place (no proto or
    serialized copy of them; no limit at 2 GB)."""
    from qc.onnx.evaluator import module_session

    return module_session(module, extra_outputs=_typed(values), optimize=True, prepack=False,
                          subgraph_outputs=inner)


@dataclass(frozen=True)
class Fetch:
    """How an observed value is fetched: session output ``output`` (the value's own name in the
    main graph, else its threaded-out name), ``levels`` leading axes stacked by enclosing Loops."""

    name: str
    output: str
    levels: int = 0
    elem_type: int = 1

    def unstack(self, array: np.ndarray) -> np.ndarray:
        """The per-iteration values of a Loop body as more rows of axis 0 (the batch axis)."""
        array = np.asarray(array)
        if not self.levels or array.ndim <= self.levels:
            return array.reshape(-1) if self.levels else array
        return array.reshape((-1,) + array.shape[self.levels + 1:])


def calibrated_ops(module: Module) -> Iterator[Op]:
    """The ops of the main graph and of the If / Loop bodies in it (nested ones too): the ones
    whose values a session can return (Scan bodies and functions are not threaded out)."""
    def rec(g) -> Iterator[Op]:
        for op in g:
            yield op
            if is_default_domain(op) and op.op_type in ("If", "Loop"):
                for sub in op.subgraphs():
                    yield from rec(sub)

    yield from rec(module.graph)


def _fetch_plan(module: Module, values: list[Value]) -> list[Fetch]:
    """A Fetch per value: main-graph values by name, body values through qc.onnx.expose."""
    from qc.onnx.expose import SUFFIX

    loops: dict[int, int] = {id(module.graph): 0}   # id(graph) -> Loops around it

    def rec(g, depth: int) -> None:
        for op in g:
            for sub in op.subgraphs():
                loops[id(sub)] = depth + (op.op_type == "Loop")
                rec(sub, loops[id(sub)])

    rec(module.graph, 0)
    home: dict[int, int] = {}   # id(value) -> id(graph defining it)
    for g in [module.graph] + [sub for op in module.graph.walk() for sub in op.subgraphs()]:
        home.update((id(v), id(g)) for v in g.inputs)
    out = []
    for v in values:
        g = id(v.producer.graph) if v.producer is not None and v.producer.graph is not None else home.get(id(v))
        elem = int(v.type.dtype) if isinstance(v.type, TensorType) and v.type.dtype is not None else 1
        if g is None or g == id(module.graph):
            out.append(Fetch(v.name, v.name, 0, elem))
        else:
            out.append(Fetch(v.name, v.name + SUFFIX, loops.get(g, 0), elem))
    return out


def _typed(values: list[Value]) -> list[Value]:
    """The values as session outputs: untyped ones by name only."""
    return [v if isinstance(v.type, TensorType) and v.type.dtype is not None else Value(v.name) for v in values]


def _progress(total: int, ctx: PassContext):
    from tqdm import tqdm

    quiet = ctx.quiet or not sys.stderr.isatty()
    return tqdm(total=total, desc="calibrate", unit="sample", file=sys.stderr, disable=quiet, leave=False)


# -- the cache key ------------------------------------------------------------------------------
_FULL_HASH_BYTES = 1 << 20
_SAMPLED_ELEMENTS = 4096


def tensor_fingerprint(t: Tensor | SparseTensor) -> str:
    """dtype, shape and a digest of the data: all bytes up to 1 MiB, else 4096 evenly spaced
    elements plus the first and last 1024 (cheap for big weights, yet sensitive to a new checkpoint)."""
    if isinstance(t, SparseTensor):
        return f"sparse{t.shape}:{tensor_fingerprint(t.values)}:{tensor_fingerprint(t.indices)}"
    head = f"{t.dtype.name}{t.shape}"
    if t.is_elided:
        return head + ":elided"
    if t.dtype.name == "str":
        return head + ":" + hashlib.sha256(repr(t.numpy().tolist()).encode()).hexdigest()
    if t.nbytes <= _FULL_HASH_BYTES or t.dtype.bits < 8:
        return head + ":" + t.sha256()
    flat = t.numpy().reshape(-1)
    spread = np.linspace(0, flat.size - 1, _SAMPLED_ELEMENTS).astype(np.int64)
    picks = np.unique(np.concatenate([np.arange(1024), spread, np.arange(flat.size - 1024, flat.size)]))
    return head + ":" + hashlib.sha256(np.ascontiguousarray(flat[picks]).tobytes()).hexdigest()


def module_fingerprint(module: Module) -> str:
    """A hash of the module's structure (ops, attributes, names, types) and its weights' fingerprints."""
    digest = hashlib.sha256()

    def put(*parts: object) -> None:
        digest.update(("\x1f".join(str(p) for p in parts) + "\x1e").encode())

    put("opsets", sorted(module.opset_imports.items()), module.ir_version)
    for g, _ in graphs(module):
        put("graph", g.name, [(v.name, v.type) for v in g.inputs], [v.name for v in g.outputs])
        for name, v in sorted(g.consts.items()):
            put("const", name, tensor_fingerprint(v.const))
    for op in module.walk():
        put("op", op.domain, op.op_type, [v.name if v is not None else "" for v in op.operands],
            [(r.name, r.type) if r is not None else "" for r in op.results])
        for name, a in sorted(op.attrs.items()):
            if a.kind == "tensor":
                put("attr", name, tensor_fingerprint(a.value))
            elif a.kind in ("graph", "graphs"):
                put("attr", name, a.kind)          # their ops are walked above
            elif a.kind in ("tensors", "sparses"):
                put("attr", name, [tensor_fingerprint(x) for x in a.value])
            else:
                put("attr", name, a.kind, a.ref, a.value)
    for f in module.functions:
        put("function", f.domain, f.name, f.attr_params, sorted(f.opset_imports.items()))
    return digest.hexdigest()
