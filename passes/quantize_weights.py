"""The ``quantize-weights`` pass: store constant MatMul / Gemm weights as integers + DequantizeLinear."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from qc.errors import QCError
from qc.ir.core import Graph, Module, Op, Value
from qc.ir.dtypes import DType
from qc.ir.tensor import Tensor
from qc.ir.types import QuantParams, TensorType
from qc.pm import Pass, PassContext, register_pass
from qc.quant import weight_algos as algos

from ._scaling import NameTable, describe, divide_input, first_op
from ._util import (
    ancestor_in,
    const_array,
    constant_consts,
    graphs,
    is_default_domain,
    is_outlier_part,
    lift_constant_weights,
    opsets_for,
    parent_ops,
)
from .insert_qdq import learned_dequantize

WEIGHT_DTYPES = ("i8", "u8", "i4", "u4")
ALGOS = ("rtn", "gptq", "awq", "awq+gptq")
GPTQ_NEEDS = "algo={algo} needs calibration statistics with hessians: run calibrate{{hessian=true}} first"
AWQ_NEEDS = ("algo={algo} needs calibration statistics with row samples and per-channel sums: "
             "run calibrate{{rows=512}} first")


@dataclass
class _Use:
    """One op reading a weight: ``Y = X @ W`` with W stored [K, N], or [N, K] for Gemm transB = 1."""

    op: Op
    x: Value | None          # the activation operand (None when it cannot carry statistics)
    weight: Value
    transposed: bool


@dataclass
class _WeightJob:
    """One stored weight to quantize (in [K, N] orientation) and every use that will read its DQ."""

    weight: Value
    transposed: bool
    uses: list[_Use] = field(default_factory=list)
    awq_scale: np.ndarray | None = None     # s [K]: the weight is quantized as diag(s) W


@register_pass("quantize-weights")
@dataclass(frozen=True)
class QuantizeWeights(Pass):
    """quantize-weights: replace every constant 2-D float32 weight of a MatMul / Gemm by integer
    codes and a DequantizeLinear (ONNX QDQ form); the computation itself stays float.

    Per channel (default; one scale per output, ``axis = 1`` for a MatMul's [K, N] weight)::

        const @W : f32[K, N] = ...              ->  const @W.q : i8[K, N] q(scale = @W.scale, zp = @W.zp, axis = 1)
        %y = onnx.MatMul(%x, @W)                    const @W.scale : f32[N]    const @W.zp : i8[N]
                                                    %W.dq = onnx.DequantizeLinear(@W.q, @W.scale, @W.zp) {axis = 1}
                                                    %y = onnx.MatMul(%x, %W.dq)

    Per tensor: scalar ``@W.scale`` / ``@W.zp``, no axis, and the numbers themselves on the type
    (``i8[K, N] q(scale = 0.0123, zp = 0)``). Block-wise (``granularity = block``, usually 4-bit),
    ``%y = onnx.MatMul(%x, @W)`` becomes::

        const @W.q : u4[K, N] q(scale = @W.scale, zp = @W.zp, axis = 0, block = 32)
        const @W.scale : f32[ceil(K/32), N]   const @W.zp : u4[ceil(K/32), N]
        %W.dq = onnx.DequantizeLinear(@W.q, @W.scale, @W.zp) {axis = 0, block_size = 32}
        %y = onnx.MatMul(%x, %W.dq)

    Gemm reads its weight B as [N, K] when ``transB = 1``; the weight is stored as it was, so the
    output-channel axis becomes 0 and the block axis 1 (scale [N, ceil(K/bs)])::

        %y = onnx.Gemm(%a, @B, %c) {transB = 1} ->  %B.dq = onnx.DequantizeLinear(@B.q, @B.scale, @B.zp) {axis = 0}
                                                    %y = onnx.Gemm(%a, %B.dq, %c) {transB = 1}

    A weight read by several ops gets one DequantizeLinear, placed before the first of them; the
    float const is removed once nothing reads it any more. Ops inside If branches and Loop bodies
    are quantized too: the DequantizeLinear goes into the graph holding the weight (a main-graph
    weight read by both branches of an If: before the If, stored once). A weight stored as a
    Constant op is made a const first::

        %w = onnx.Constant() {value = f32[K, N] ...}   ->  const @w.q : i8[K, N] ...
        %y = onnx.MatMul(%x, %w)                            %w.dq = onnx.DequantizeLinear(@w.q, ...)
                                                            %y = onnx.MatMul(%x, %w.dq)

    Algorithms (``algo``; see qc.quant.weight_algos):

    - ``rtn``: round to nearest; every weight errs by at most scale / 2.
    - ``gptq``: GPTQ with the Hessian ``sum x^T x`` of the op's activation input, from
      ``calibrate{hessian=true}`` (a weight shared by several ops uses the sum of their Hessians).
    - ``awq``: AWQ. The ops reading one activation ``%x`` share one scale vector ``s`` [K], found
      on ``calibrate{rows=N}``'s row sample; their weights are quantized as ``diag(s) W`` and ``%x``
      is divided by ``s``, folded into the producer's constant when ``%x`` is produced by
      ``Mul(%h, @g)`` with ``@g`` one value per feature (an RMSNorm's weight) or by a
      LayerNormalization over the last axis (its scale and bias), and nothing else reads ``%x``::

        %x = onnx.Mul(%h, @g)                   ->  %x = onnx.Mul(%h, @g.awq)          g.awq = g / s
        %q = onnx.MatMul(%x, @Wq)                   %q = onnx.MatMul(%x, %Wq.dq)       Wq.q = Q(diag(s) Wq)
        %k = onnx.MatMul(%x, @Wk)                   %k = onnx.MatMul(%x, %Wk.dq)

      otherwise by a new Mul::

        %q = onnx.MatMul(%x, @Wq)               ->  %x.s = onnx.Mul(%x, @x.awq_inv_scale)
                                                    %q = onnx.MatMul(%x.s, %Wq.dq)

      When ``alpha = 0`` (``s = 1``, plain rounding) wins the search, nothing is inserted.
      Main-graph ops only: a weight read inside a subgraph is rounded to nearest (a remark says so).
    - ``awq+gptq``: AWQ's scaling, then GPTQ on ``diag(s) W`` with the Hessian of ``x / s``.
    - ``act-order = true`` (GPTQ): inputs in order of decreasing ``H[k, k]``; block scales fixed
      up front from the original rows, in their natural layout (static groups).
    - ``search = true`` (with any algo; needs the Hessians): each block's (channel's) scale and zero
      point minimize ``sum_k H[k, k] (w_k - dq(q(w_k)))^2`` over clip ratios and least-squares
      refits (``weight_algos.search_params``) instead of the plain range's; never worse than RTN's
      range on that weighted error. The summary names it: ``"w u4 block32 asym awq+gptq+act-order+search"``.

    Left alone (with a remark where useful): op types other than MatMul and Gemm (even when
    listed in ``ops``), ops whose name matches
    ``exclude`` (an op without a name is matched by its first result's name), weights that are not
    float32 2-D consts or are overridable graph inputs or hold NaN / Inf, weights with fewer
    than ``min_size`` elements. A Gemm with ``transA = 1`` reads its activation transposed, so calibration
    statistics (gathered over the last axis) do not apply: it gets round-to-nearest; so does a
    float weight whose activation is already quantized (a QAT model's learned pair: ``calibrate``
    does not observe it, and AWQ's rescaling would change its learned scale). Weights that are
    already a DequantizeLinear of integers (QAT exports) are not constants and stay as they are.

    Storage (``dtype = auto``): i8 / i4 for symmetric (codes -127..127 / -7..7, zp 0), u8 / u4
    for asymmetric. An explicit ``dtype`` sets the width; u8 / u4 with ``symmetric = true`` uses
    zp 128 / 8. Needs default-domain opset >= 13 for per-channel scales and >= 21 for 4-bit or
    block-wise weights (a QCError says to pass ``--upgrade-opset 21``).

    Each consumer gets a remark (weight, storage, algorithm, max |W - dequant(Wq)|; with
    statistics also the relative output error on calibration data next to RTN's) and
    ``meta["qc.quant"]`` such as ``"w i8 per-channel sym rtn"``.
    """

    bits: int = 8
    """weight bits: 8 or 4"""
    granularity: str = "channel"
    """tensor (one scale), channel (one per output) or block (per block-size inputs of an output)"""
    block_size: int = 32
    """inputs per scale with granularity = block"""
    symmetric: bool = True
    """zero point 0 (i8/i4) or the middle (u8/u4); false fits the zero point to [min, max]"""
    dtype: str = "auto"
    """storage: auto (i8/i4 symmetric, u8/u4 asymmetric), i8, u8, i4 or u4"""
    algo: str = "rtn"
    """rtn, gptq, awq or awq+gptq (gptq/awq need calibrate's statistics)"""
    ops: str = "MatMul,Gemm"
    """op types whose constant weight is quantized"""
    exclude: str = ""
    """regex on op names: matching ops keep float weights"""
    min_size: int = 0
    """skip weights with fewer elements"""
    damp: float = 0.01
    """GPTQ: damping added to the Hessian's diagonal, relative to its mean"""
    act_order: bool = False
    """GPTQ: quantize inputs in order of decreasing activation energy"""
    awq_grid: int = 20
    """AWQ: alpha values tried in [0, 1)"""
    search: bool = False
    """search each block's (channel's) scale / clip for the least error weighted by the input's
    mean x^2 (needs hessians)"""

    # -- entry ---------------------------------------------------------------------------------
    def run(self, module: Module, ctx: PassContext) -> bool:
        storage = self._storage_dtype()
        exclude = self._exclude_pattern()
        graph = module.graph
        lifted = lift_constant_weights(module, {t.strip() for t in self.ops.split(",")} & {"MatMul", "Gemm", "Conv"})
        uses = self._collect_uses(module, graph, exclude, ctx)
        convs = self._collect_convs(module, graph, exclude, ctx)
        if not uses and not convs:
            return lifted > 0
        self._check_opset(module, storage)
        homes = _WeightHomes(module)
        if convs:
            names = homes.names
            for op in convs:
                self._quantize_conv(homes.graph_of(op.operands[1]), op, storage, names, homes, ctx)
        if not uses:
            return True
        calib = self._calibration(ctx)
        jobs = self._plan_jobs(uses)
        names = homes.names
        if "awq" in self.algo:
            main = [job for job in jobs if all(use.op.graph is graph for use in job.uses)
                    and homes.graph_of(job.weight) is graph]
            for job in jobs:
                if not any(job is m for m in main):
                    for use in job.uses:
                        ctx.remark(use.op, f"inside a subgraph: awq scaling is not applied to @{job.weight.name}")
            self._apply_awq(graph, main, calib, storage, constant_consts(module), names, ctx)
        for job in jobs:
            home = homes.graph_of(job.weight)
            order = {id(op): i for i, op in enumerate(home)}
            self._quantize_job(home, job, storage, calib, names, order, homes, ctx)
        return True

    # -- options -------------------------------------------------------------------------------
    def validate(self) -> None:
        self._storage_dtype()
        self._exclude_pattern()

    def _storage_dtype(self) -> DType:
        if self.granularity not in algos.GRANULARITIES:
            raise QCError(f"quantize-weights: unknown granularity '{self.granularity}'",
                          hint="one of " + ", ".join(algos.GRANULARITIES))
        if self.algo not in ALGOS:
            raise QCError(f"quantize-weights: unknown algo '{self.algo}'", hint="one of " + ", ".join(ALGOS))
        if self.granularity == "block" and self.block_size <= 0:
            raise QCError(f"quantize-weights: block-size must be positive, got {self.block_size}")
        if self.dtype == "auto":
            if self.bits not in (4, 8):
                raise QCError(f"quantize-weights: bits must be 8 or 4, got {self.bits}")
            return DType.parse(("i" if self.symmetric else "u") + str(self.bits))
        if self.dtype not in WEIGHT_DTYPES:
            raise QCError(f"quantize-weights: dtype '{self.dtype}' is not a weight type",
                          hint="one of auto, " + ", ".join(WEIGHT_DTYPES))
        dtype = DType.parse(self.dtype)
        explicit_bits = self.bits != 8 or any(k == "bits" for k, _ in getattr(self, "_raw_options", None) or ())
        if explicit_bits and not 2 <= self.bits <= dtype.bits:
            raise QCError(f"quantize-weights: bits={self.bits} does not fit dtype={self.dtype}",
                          hint=f"codes of 2 to {dtype.bits} bits fit {self.dtype} "
                               "(bits=7 with i8: onnxruntime's reduce_range)")
        return dtype

    def _code_bits(self, storage: DType) -> int:
        """Bits of the codes: the storage's, or fewer when both bits and dtype are given (7 in i8)."""
        return min(self.bits, storage.bits) if self.dtype != "auto" else storage.bits

    def _exclude_pattern(self) -> re.Pattern | None:
        if not self.exclude:
            return None
        try:
            return re.compile(self.exclude)
        except re.error as e:
            raise QCError(f"quantize-weights: exclude '{self.exclude}' is not a valid regex: {e}") from None

    def _check_opset(self, module: Module, storage: DType) -> None:
        opset = opsets_for(module, None).get("", 0)
        if storage.bits == 4 or self.granularity == "block":
            need, what = 21, ("block-wise" if self.granularity == "block" else f"{storage}") + " weights"
        elif self.granularity == "channel":
            need, what = 13, "per-channel weights"
        else:
            need, what = 10, "quantized weights"
        if opset < need:
            raise QCError(f"quantize-weights: {what} need DequantizeLinear from opset {need}, "
                          f"the model has opset {opset}",
                          hint=f"pass --upgrade-opset {max(need, 21 if need > 13 else 13)}")

    def _calibration(self, ctx: PassContext):
        if self.algo == "rtn" and not self.search:
            return None
        calib = ctx.calibration
        if calib is None:
            needs = GPTQ_NEEDS if self.algo in ("gptq", "rtn") else AWQ_NEEDS
            raise QCError(needs.format(algo=self.algo + (",search=true" if self.search else "")),
                          hint="qc compile adds calibrate when given --calib data")
        return calib

    # -- matching ------------------------------------------------------------------------------
    def _collect_uses(self, module: Module, graph: Graph, exclude: re.Pattern | None, ctx: PassContext) -> list[_Use]:
        op_types = {t.strip() for t in self.ops.split(",") if t.strip()}
        unknown = op_types - {"MatMul", "Gemm", "Conv"}
        if unknown:   # a scheme's op list may name ops for their activations only: not an error here
            ctx.remark(None, f"only MatMul, Gemm and Conv weights are quantized; {', '.join(sorted(unknown))} "
                             "weights stay float")
            op_types -= unknown
        op_types.discard("Conv")
        constants = constant_consts(module)
        uses: list[_Use] = []
        for op in graph.walk():
            if op.op_type not in op_types or not is_default_domain(op) or len(op.operands) < 2:
                continue
            weight = op.operands[1]
            data = const_array(weight, constants)
            if data is None or weight.const.dtype is not DType.f32 or data.ndim != 2 or is_outlier_part(op):
                continue
            label = op.name or (op.results[0].name if op.results and op.results[0] is not None else "")
            if exclude is not None and exclude.search(label):
                ctx.remark(op, f"excluded by '{self.exclude}': weight @{weight.name} stays float")
                continue
            _refuse_nonfinite(op, weight.name, data)
            if data.size == 0 or data.size < self.min_size:
                ctx.remark(op, f"weight @{weight.name} has {data.size} elements (< min-size {self.min_size}); "
                               "stays float")
                continue
            gemm = op.op_type == "Gemm"
            x = op.operands[0]
            if self.algo != "rtn" and x is not None and learned_dequantize(x) is not None:
                x = None
                ctx.remark(op, f"%{op.operands[0].name} is already quantized (QAT): no calibration statistics "
                               f"for {self.algo}; round to nearest")
            elif gemm and op.attr("transA", 0):
                x = None
                if self.algo != "rtn":
                    ctx.remark(op, "transA = 1: calibration statistics (over the last axis) do not apply; "
                                   "round to nearest")
            uses.append(_Use(op, x, weight, bool(gemm and op.attr("transB", 0))))
        return uses

    def _collect_convs(self, module: Module, graph: Graph, exclude: re.Pattern | None, ctx: PassContext) -> list[Op]:
        """Convs (when ``ops`` names Conv) with a constant float32 weight [M, C/group, *kernel]."""
        if "Conv" not in {t.strip() for t in self.ops.split(",")}:
            return []
        constants = constant_consts(module)
        out = []
        for op in graph.walk():
            if op.op_type != "Conv" or not is_default_domain(op) or len(op.operands) < 2:
                continue
            weight = op.operands[1]
            data = const_array(weight, constants)
            if data is None or weight.const.dtype is not DType.f32 or data.ndim < 3:
                continue
            label = op.name or op.results[0].name
            if exclude is not None and exclude.search(label):
                ctx.remark(op, f"excluded by '{self.exclude}': weight @{weight.name} stays float")
            elif self.granularity == "block" or self.algo != "rtn":
                ctx.remark(op, f"Conv weights are quantized per channel or per tensor with rtn; "
                               f"@{weight.name} stays float under granularity={self.granularity}, algo={self.algo}")
            elif _refuse_nonfinite(op, weight.name, data) or data.size == 0 or data.size < self.min_size:
                ctx.remark(op, f"weight @{weight.name} is empty or under min-size; stays float")
            else:
                out.append(op)
        return out

    def _quantize_conv(self, graph: Graph, op: Op, storage: DType, names: NameTable, homes: _WeightHomes,
                       ctx: PassContext) -> None:
        """W [M, C/g, *k] -> DequantizeLinear(W.q, scale[M], zp[M]) {axis = 0} (per output channel)."""
        weight = op.operands[1]
        w = np.asarray(weight.const.numpy(), np.float32)
        kn = np.ascontiguousarray(w.reshape(w.shape[0], -1).T)          # [C/g * k, M]: outputs are columns
        bits, signed = self._code_bits(storage), storage.name.startswith("i")
        q, scale, zp = algos.quantize_rtn(kn, bits, self.granularity, self.block_size, self.symmetric, signed)
        q = q.T.reshape(w.shape)
        base = weight.name
        per_channel = self.granularity == "channel"
        dq_value = self._emit_dequantize(graph, base, storage, q, scale, zp, {"axis": 0} if per_channel else {},
                                         names, homes.anchor(op, graph))
        op.set_operand(1, dq_value)
        summary = self._summary(storage, "rtn")
        op.meta["qc.quant"] = summary
        err = float(np.max(np.abs(algos.dequantize(q, scale, zp, 0 if per_channel else None) - w)))
        ctx.remark(op, f"weight @{base} {list(w.shape)} -> {summary[2:]}: max |W - dq(Wq)| = {err:.3g}")
        if not weight._uses and graph.consts.get(base) is weight:
            graph.remove_const(weight)

    def _plan_jobs(self, uses: list[_Use]) -> list[_WeightJob]:
        """One job per stored weight and orientation; with AWQ also per activation (each has its own s)."""
        jobs: dict[tuple, _WeightJob] = {}
        for use in uses:
            key = (id(use.weight), use.transposed)
            if "awq" in self.algo and use.x is not None:
                key += (id(use.x),)
            job = jobs.setdefault(key, _WeightJob(use.weight, use.transposed))
            job.uses.append(use)
        return list(jobs.values())

    # -- AWQ -----------------------------------------------------------------------------------
    def _apply_awq(self, graph: Graph, jobs: list[_WeightJob], calib, storage: DType, constants: set[int],
                   names: NameTable, ctx: PassContext) -> None:
        by_input: dict[int, list[_WeightJob]] = {}
        order = {id(op): i for i, op in enumerate(graph)}
        for job in jobs:
            x = job.uses[0].x
            if x is not None:
                by_input.setdefault(id(x), []).append(job)
        for group in by_input.values():
            x = group[0].uses[0].x
            stats = calib.tensors.get(x.name)
            sample, abs_mean = _awq_inputs(stats)
            if abs_mean is None or (sample is None and getattr(stats, "hessian", None) is None):
                raise QCError(AWQ_NEEDS.format(algo=self.algo),
                              where=f"%{x.name} (read by {describe(group[0].uses[0].op)})")
            weights = [_kn(job) for job in group]
            k = weights[0].shape[0]
            if abs_mean.shape != (k,) or (sample is not None and sample.shape[-1] != k):
                raise QCError(f"calibration statistics of %{x.name} have {abs_mean.shape[0]} features, the weights {k}",
                              hint="recalibrate: the statistics belong to another model")
            s = algos.awq_scales(weights, sample, abs_mean, self._code_bits(storage), self.granularity, self.block_size,
                                 self.symmetric, storage.name.startswith("i"), grid=self.awq_grid,
                                 hessian=None if sample is not None else stats.hessian)
            consumers = [use.op for job in group for use in job.uses]
            if np.all(s == 1.0):
                for op in consumers:
                    ctx.remark(op, f"awq: no scaling of %{x.name} beats plain rounding (alpha = 0)")
                continue
            for job in group:
                job.awq_scale = s
            how = divide_input(graph, x, s, consumers, constants, names, suffix="awq", order=order)
            ratio = float(s.max() / s.min())
            for op in consumers:
                ctx.remark(op, f"awq: %{x.name} / s ({how}; s spans {ratio:.3g}x over {k} inputs)")

    # -- quantizing one weight -----------------------------------------------------------------
    def _quantize_job(self, graph: Graph, job: _WeightJob, storage: DType, calib, names: NameTable,
                      order: dict[int, int], homes: _WeightHomes, ctx: PassContext) -> None:
        w = _kn(job)
        k, n = w.shape
        target = w if job.awq_scale is None else job.awq_scale[:, None] * w
        hessian = self._hessian(job, calib, k)
        use_gptq = "gptq" in self.algo and hessian is not None   # None: a transA Gemm, no statistics apply
        search = self.search and hessian is not None
        algo = "+".join(a for a, on in (("awq", job.awq_scale is not None), ("gptq", use_gptq),
                                        ("act-order", use_gptq and self.act_order), ("search", search)) if on) or "rtn"
        bits, signed = self._code_bits(storage), storage.name.startswith("i")
        h = None if hessian is None else hessian if job.awq_scale is None else \
            hessian / np.outer(job.awq_scale, job.awq_scale)
        if use_gptq:
            try:
                q, scale, zp = algos.gptq(target, h, bits, self.granularity, self.block_size, self.symmetric, signed,
                                          damp=self.damp, act_order=self.act_order, search=search)
            except np.linalg.LinAlgError as e:
                raise QCError(f"GPTQ cannot invert the Hessian of the input of @{job.weight.name}: {e}",
                              where=describe(job.uses[0].op), hint="raise quantize-weights{damp=...} (default 0.01), "
                              "or keep this op out of GPTQ (--weight-algo rtn, or --exclude it)") from None
        elif search:
            q, scale, zp = algos.quantize_search(target, np.diag(h), bits, self.granularity, self.block_size,
                                                 self.symmetric, signed)
        else:
            q, scale, zp = algos.quantize_rtn(target, bits, self.granularity, self.block_size, self.symmetric, signed)
        dq = _dequantize_kn(q, scale, zp, self.granularity, self.block_size)
        effective = dq if job.awq_scale is None else (np.float32(1.0) / job.awq_scale)[:, None] * dq

        dq_value = self._emit(graph, job, storage, q, scale, zp, names, order, homes)
        summary = self._summary(storage, algo)
        detail = self._error_detail(w, effective, hessian, bits, signed)
        for use in job.uses:
            use.op.set_operand(1, dq_value)
            use.op.meta["qc.quant"] = summary
            shape = f"[{n}, {k}]" if job.transposed else f"[{k}, {n}]"
            ctx.remark(use.op, f"weight @{job.weight.name} {shape} -> {summary[2:]}: {detail}")
        if not job.weight._uses and job.weight.name in graph.consts and graph.consts[job.weight.name] is job.weight:
            graph.remove_const(job.weight)

    def _hessian(self, job: _WeightJob, calib, k: int) -> np.ndarray | None:
        """The summed Hessian of the job's activations (None without statistics or for transA Gemms)."""
        if calib is None or "gptq" not in self.algo and "awq" not in self.algo and not self.search:
            return None
        total, seen = None, set()
        for use in job.uses:
            if use.x is None:
                return None
            if id(use.x) in seen:
                continue
            seen.add(id(use.x))
            stats = calib.tensors.get(use.x.name)
            h = getattr(stats, "hessian", None)
            if h is None:
                if "gptq" not in self.algo and not self.search:
                    return None
                raise QCError(GPTQ_NEEDS.format(algo=self.algo), where=f"%{use.x.name} (read by {describe(use.op)})")
            if h.shape != (k, k):
                raise QCError(f"the Hessian of %{use.x.name} is {list(h.shape)}, "
                              f"the weight @{job.weight.name} needs [{k}, {k}]",
                              hint="recalibrate: the statistics belong to another model")
            total = np.array(h, np.float64) if total is None else total + h
        return total

    def _emit(self, graph: Graph, job: _WeightJob, storage: DType, q: np.ndarray, scale: np.ndarray, zp: np.ndarray,
              names: NameTable, order: dict[int, int], homes: _WeightHomes) -> Value:
        """Consts W.q / W.scale / W.zp (stored in W's own orientation) and the DequantizeLinear."""
        base = job.weight.name
        if job.transposed:
            q, scale, zp = q.T, (scale.T if scale.ndim == 2 else scale), (zp.T if zp.ndim == 2 else zp)
        out_axis, in_axis = (0, 1) if job.transposed else (1, 0)
        attrs: dict[str, int] = {}
        if self.granularity == "channel":
            attrs = {"axis": out_axis}
        elif self.granularity == "block":
            attrs = {"axis": in_axis, "block_size": self.block_size}
        anchor = first_op(graph, [homes.anchor(use.op, graph) for use in job.uses], order)
        return self._emit_dequantize(graph, base, storage, q, scale, zp, attrs, names, anchor)

    def _emit_dequantize(self, graph: Graph, base: str, storage: DType, q: np.ndarray, scale: np.ndarray,
                         zp: np.ndarray, attrs: dict[str, int], names: NameTable, anchor: Op) -> Value:
        """Consts ``base.q`` / ``.scale`` / ``.zp`` and a DequantizeLinear with ``attrs`` before ``anchor``."""
        q_name = names.fresh(f"{base}.q")
        suffix = q_name[len(base) + 2:]          # "_1" when the weight is stored twice (AWQ, two orientations)
        scale_const = graph.add_const(names.fresh(f"{base}.scale{suffix}"),
                                      Tensor.from_array(np.array(scale, np.float32)))
        zp_const = graph.add_const(names.fresh(f"{base}.zp{suffix}"),
                                   Tensor.from_array(np.array(zp).astype(storage.numpy), storage))
        if "axis" not in attrs:
            params = QuantParams(scale=float(scale), zero_point=int(zp))
        else:
            params = QuantParams(scale=scale_const, zero_point=zp_const, axis=attrs["axis"],
                                 block_size=attrs.get("block_size"))
        q_const = graph.add_const(q_name, Tensor.from_array(np.ascontiguousarray(q).astype(storage.numpy), storage),
                                  TensorType(storage, tuple(q.shape), params))
        dq_value = Value(names.fresh(f"{base}.dq{suffix}"), TensorType(DType.f32, tuple(q.shape)))
        graph.insert_before(anchor, Op("DequantizeLinear", [q_const, scale_const, zp_const], results=[dq_value],
                                       attrs=attrs, name=f"{base}.dequantize{suffix}"))
        return dq_value

    # -- reporting -----------------------------------------------------------------------------
    def _summary(self, storage: DType, algo: str) -> str:
        gran = {"tensor": "per-tensor", "channel": "per-channel", "block": f"block{self.block_size}"}[self.granularity]
        return f"w {storage} {gran} {'sym' if self.symmetric else 'asym'} {algo}"

    def _error_detail(self, w: np.ndarray, effective: np.ndarray, hessian: np.ndarray | None,
                      bits: int, signed: bool) -> str:
        """Max weight error; with a Hessian also ``||X E|| / ||X W||`` on calibration data, next to RTN's."""
        err = effective.astype(np.float64) - w
        text = f"max |W - dq(Wq)| = {float(np.max(np.abs(err))):.3g}"
        if hessian is None:
            return text
        q0, s0, z0 = algos.quantize_rtn(w, bits, self.granularity, self.block_size, self.symmetric, signed)
        err_rtn = _dequantize_kn(q0, s0, z0, self.granularity, self.block_size).astype(np.float64) - w
        ref = _energy(hessian, w.astype(np.float64))
        if ref > 0:
            rel, rel_rtn = np.sqrt(_energy(hessian, err) / ref), np.sqrt(_energy(hessian, err_rtn) / ref)
            text += f"; output error on calibration data {rel:.3g} relative (rtn {rel_rtn:.3g})"
        return text


# -- helpers -----------------------------------------------------------------------------------------
class _WeightHomes:
    """Where a weight's DequantizeLinear goes: the graph holding the const (visible to every op
    reading it, in If branches and Loop bodies too), before the op of that graph that reads it
    or holds the subgraph that does. One DequantizeLinear, one stored copy, for all of them."""

    def __init__(self, module: Module):
        self.holder: dict[int, Graph] = {}
        for g, fn in graphs(module):
            if fn is None:
                self.holder.update((id(v), g) for v in g.consts.values())
        self.parents = parent_ops(module)
        self.main = module.graph
        self.names = NameTable(module.graph)
        for g, _ in graphs(module):
            self.names.taken.update(g.consts)
            self.names.taken.update(v.name for v in g.inputs)

    def graph_of(self, weight: Value) -> Graph:
        return self.holder.get(id(weight), self.main)

    def anchor(self, op: Op, graph: Graph) -> Op:
        found = ancestor_in(op, graph, self.parents)
        assert found is not None, f"{op!r} is not inside the graph holding its weight"
        return found


def _kn(job: _WeightJob) -> np.ndarray:
    data = np.asarray(job.weight.const.numpy(), np.float32)
    return np.ascontiguousarray(data.T) if job.transposed else data


def _dequantize_kn(q: np.ndarray, scale: np.ndarray, zp: np.ndarray, granularity: str, block_size: int) -> np.ndarray:
    axis = None if granularity == "tensor" else 1 if granularity == "channel" else 0
    return algos.dequantize(q, scale, zp, axis, block_size if granularity == "block" else None)


def _energy(h: np.ndarray, e: np.ndarray) -> float:
    """``tr(E^T H E)``: the squared output error ``||X E||^2`` summed over the calibration rows."""
    return float(np.sum((h @ e) * e))


def _awq_inputs(stats) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(row sample [R, K], mean |x| per feature [K]) from a TensorStats, either None when absent."""
    if stats is None:
        return None, None
    sample = getattr(stats, "row_sample", None)
    sums = getattr(stats, "channel_abssum", None)
    if sums is None:
        return sample, None
    sums = np.asarray(sums, np.float64).reshape(-1)
    rows = getattr(stats, "rows", 0) or (getattr(stats, "count", 0) // max(1, sums.size))
    if sample is not None:
        sample = np.asarray(sample, np.float32).reshape(-1, sums.size) if sample.size else None
    return sample, sums / max(1, rows)


def _refuse_nonfinite(op: Op, name: str, data: np.ndarray) -> bool:
    """NaN / Inf weights would give NaN scales: stop with the weight's name (returns False otherwise)."""
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise QCError(f"weight '{name}' of {op.qualified_type} '{op.name}' holds {bad} NaN/Inf values; "
                      "it cannot be quantized", hint="fix the weights in the model, or keep this op float "
                      "with --exclude")
    return False
