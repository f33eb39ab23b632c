"""The ``insert-qdq`` pass: quantize the activation inputs of compute ops (QDQ form)."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from qc.errors import QCError
from qc.ir.core import Graph, Module, Op, Value
from qc.ir.dtypes import DType
from qc.ir.tensor import Tensor
from qc.ir.types import QuantParams, TensorType
from qc.pm import Pass, PassContext, register_pass

from ._util import compile_regex, is_outlier_part, opsets_for

ACTIVATION_DTYPES = ("u8", "i8", "u16", "i16", "u4", "i4")

# Operand positions that carry data to be multiplied (never Gemm's bias or Conv's bias).
_DATA_OPERANDS = {"MatMul": (0, 1), "Gemm": (0, 1), "Conv": (0, 1), "ConvTranspose": (0, 1)}


def storage_range(dtype: DType, symmetric: bool) -> tuple[int, int]:
    """The integer range a quantized tensor uses: the full storage range, or for signed
    symmetric quantization the balanced range (-127..127 for i8) so that zero point 0 sits in
    the middle and +x and -x round to opposite integers."""
    bits, signed = dtype.bits, dtype.name.startswith("i")
    if not signed:
        return 0, (1 << bits) - 1
    high = (1 << (bits - 1)) - 1
    return (-high if symmetric else -high - 1), high


def is_quantized(v: Value) -> bool:
    """True when ``v`` already comes out of a DequantizeLinear (a quantized weight, an
    activation quantized by an earlier pass, or a QAT model's fake-quant pair)."""
    p = v.producer
    return p is not None and p.op_type == "DequantizeLinear" and p.domain in ("", "ai.onnx")


def learned_dequantize(v: Value) -> Op | None:
    """The DequantizeLinear of an activation whose per-tensor scale and zero point reach ``v``
    unchanged: ``v`` itself, or ``v`` reached through shape-only ops (Reshape, Flatten, ...,
    which move values without changing them) -- a QAT model's learned pair, or one an earlier
    pass inserted. None for weights (a DequantizeLinear of a constant) and anything else."""
    from .fold_qdq import SHAPE_ONLY

    while (v.producer is not None and v.producer.op_type in SHAPE_ONLY and v.producer.domain in ("", "ai.onnx")
           and v.producer.operands and v.producer.operands[0] is not None):
        v = v.producer.operands[0]
    if not is_quantized(v) or is_weight(v):
        return None
    dq = v.producer
    scale = dq.operands[1] if len(dq.operands) > 1 else None
    per_tensor = (scale is not None and isinstance(scale.type, TensorType) and scale.type.shape in ((), (1,))
                  and not dq.attr("block_size", 0))
    return dq if per_tensor else None


def is_weight(v: Value) -> bool:
    """A constant, or a DequantizeLinear of a constant (a weight quantize-weights stored)."""
    if v.const is not None:
        return True
    return is_quantized(v) and v.producer.operands[0] is not None and v.producer.operands[0].const is not None


@register_pass("insert-qdq")
@dataclass(frozen=True)
class InsertQDQ(Pass):
    """insert-qdq: put a QuantizeLinear -> DequantizeLinear pair on every activation input of
    the chosen ops, with scales from calibration (static) or computed at run time (dynamic).

    Static (scale and zero point chosen from ``calibrate``'s statistics by ``method``)::

        %y = onnx.MatMul(%x, %w.dq)         ->  %x.q = onnx.QuantizeLinear(%x, @x.scale, @x.zp)
                                                     : u8[1, 128, 576] q(scale = 0.021, zp = 131)
                                                %x.dq = onnx.DequantizeLinear(%x.q, @x.scale, @x.zp)
                                                %y = onnx.MatMul(%x.dq, %w.dq)

    Dynamic (``dynamic = true``; u8, one scale per tensor and run)::

        %y = onnx.MatMul(%x, %w.dq)         ->  %x.q, %x.scale, %x.zp = onnx.DynamicQuantizeLinear(%x)
                                                %x.dq = onnx.DequantizeLinear(%x.q, %x.scale, %x.zp)
                                                %y = onnx.MatMul(%x.dq, %w.dq)

    One pair per activation, shared by all the ops it feeds (q, k and v projections read one
    quantized input). Already quantized activations keep their scale and zero point (a QAT
    model's learned ones): an operand that comes out of a DequantizeLinear is left alone, and one
    that comes out of it through shape-only ops (Reshape, Flatten, Transpose, Squeeze, Unsqueeze)
    gets a pair with that DequantizeLinear's own per-tensor parameters (exact; ``fold-qdq``
    then moves the shape op onto the integers)::

        %f = onnx.DequantizeLinear(%r.q, @s, @z)    ->  %f = onnx.DequantizeLinear(%r.q, @s, @z)
        %x = onnx.Flatten(%f)                           %x = onnx.Flatten(%f)
        %y = onnx.MatMul(%x, %w.dq)                     %x.q = onnx.QuantizeLinear(%x, @s, @z)
                                                        %x.dq = onnx.DequantizeLinear(%x.q, @s, @z)
                                                        %y = onnx.MatMul(%x.dq, %w.dq)

    Left alone: constant operands (weights are ``quantize-weights``' job), non-float operands,
    biases, ops whose name matches ``exclude``, and with ``activation-pairs = false`` MatMuls
    of two activations (attention's QK^T and PV), and MatMuls with a float16 weight (the
    float16 part that ``split-outliers`` made).
    Ops inside If branches and Loop bodies are quantized too, with the statistics ``calibrate``
    observed there; the pair goes where the activation is defined, so a main-graph value read
    in both branches of an If is quantized once, before the If. An op whose input has no
    statistics (inside a Scan body) keeps it float, with a remark.
    A Conv input made from a float tensor by a chain of single-use shape-only ops (a channel
    shuffle: Reshape -> Transpose -> Reshape) gets its pair before the chain instead, with the
    Conv input's statistics (the ops only move values), and one pair of the same parameters
    between consecutive shape ops, so that ``fold-qdq`` runs them on the integers::

        %r = onnx.Relu(%c)                       ->  %r.q = onnx.QuantizeLinear(%r, @s.scale, @s.zp)
        %s = Reshape(Transpose(Reshape(%r)))         %s.q = Reshape(Transpose(Reshape(%r.q)))  (int8)
        %y = onnx.Conv(%s, %w.dq)                    %y = onnx.Conv(DequantizeLinear(%s.q), %w.dq)

    Only the inputs of compute ops are quantized, never the pieces of a decomposed
    LayerNorm / RMSNorm or an attention mask.
    """

    ops: str = "MatMul,Gemm,Conv"
    """op types whose activation inputs are quantized"""
    dtype: str = "u8"
    """activation storage type: u8, i8, u16, i16, u4 or i4"""
    symmetric: bool = False
    """zero point 0 (signed) or the middle of the range (unsigned) instead of fitted"""
    method: str = ""
    """range method: minmax, percentile, entropy or mse; empty = the calibrate pass's"""
    percentile: float = 99.99
    """the percentile for method = percentile"""
    dynamic: bool = False
    """DynamicQuantizeLinear at run time instead of calibrated scales (u8 only)"""
    exclude: str = ""
    """regex: ops whose name matches keep float inputs"""
    activation_pairs: bool = True
    """also quantize MatMuls whose both operands are activations"""

    def run(self, module: Module, ctx: PassContext) -> bool:
        dtype = self._dtype()
        op_types = {t.strip() for t in self.ops.split(",") if t.strip()}
        exclude = re.compile(self.exclude) if self.exclude else None
        calib = None if self.dynamic else ctx.calibration
        if not self.dynamic and calib is None:
            raise QCError("insert-qdq needs calibration statistics for static quantization: run calibrate first",
                          hint="qc compile --quant adds it; give --calib FILE.npz or --calib-text FILE --tokenizer T, "
                               "or use insert-qdq{dynamic=true}")
        method = self.method or getattr(calib, "method", "") or "minmax"
        self._check_opset(module, dtype)
        homes = _Homes(module)
        pairs: dict[int, Value] = {}
        changed = False
        for op in list(module.graph.walk()):
            if op.op_type not in op_types or op.domain not in ("", "ai.onnx"):
                continue
            if exclude is not None and exclude.search(op.name or ""):
                ctx.remark(op, f"excluded by '{self.exclude}'")
                continue
            positions = [i for i in _DATA_OPERANDS.get(op.op_type, (0,)) if i < len(op.operands)]
            if any(op.operands[i] is not None and op.operands[i].const is not None
                   and op.operands[i].const.dtype is DType.f16 for i in positions):
                continue  # a float16 weight: the float16 part of split-outliers stays float16
            if is_outlier_part(op):
                continue  # split-outliers{dtype=f32}: the outlier part stays float32
            if (not self.activation_pairs and op.op_type == "MatMul"
                    and not any(is_weight(op.operands[i]) for i in positions)):
                ctx.remark(op, "both operands are activations; left float (activation-pairs = false)")
                continue
            for i in positions:
                x = op.operands[i]
                if x is None or is_weight(x) or not _is_float(x):
                    continue
                if is_quantized(x):
                    ctx.remark(op, f"%{x.name} is already quantized (by '{x.producer.name}'); its scale and zero "
                                   "point are kept")
                    continue
                dq = pairs.get(id(x))
                if dq is None and op.op_type == "Conv" and self._hoist_over_shape_ops(
                        x, pairs, homes, module, dtype, calib, method, ctx, op):
                    ctx.remark(op, f"%{x.name} is quantized before the shape-only ops producing it "
                                   "(same values, its statistics): they run on the integers")
                learned = learned_dequantize(x) if dq is None else None
                if learned is not None:
                    dq = _repeat_pair(x.producer_op.graph, x, learned)
                    pairs[id(x)] = dq
                    ctx.remark(op, f"%{x.name} comes from the quantized %{learned.results[0].name} through "
                                   f"shape-only ops: requantized with its scale and zero point (kept, not calibrated)")
                elif dq is None:
                    dq = self._insert_pair(homes.of(x), homes.consts_for(module, x), x, dtype, calib, method, ctx, op)
                    if dq is None:
                        continue
                    pairs[id(x)] = dq
                op.set_operand(i, dq)
                tag = f"a{i}:{dtype}{'-dyn' if self.dynamic else ''}"
                op.meta["qc.quant"] = (op.meta.get("qc.quant", "") + " " + tag).strip()
                changed = True
        return changed

    # -- pieces ----------------------------------------------------------------------------
    def validate(self) -> None:
        self._dtype()
        compile_regex("insert-qdq", "exclude", self.exclude)

    def _dtype(self) -> DType:
        if self.dtype not in ACTIVATION_DTYPES:
            raise QCError(f"insert-qdq: dtype '{self.dtype}' is not an activation type",
                          hint="one of " + ", ".join(ACTIVATION_DTYPES))
        if self.dynamic and self.dtype != "u8":
            raise QCError(f"insert-qdq: dynamic quantization produces u8 (DynamicQuantizeLinear), not {self.dtype}",
                          hint="use insert-qdq{dtype=u8,dynamic=true}")
        return DType.parse(self.dtype)

    def _check_opset(self, module: Module, dtype: DType) -> None:
        opset = opsets_for(module, None).get("", 0)
        need = 21 if dtype.bits in (4, 16) else 11 if self.dynamic else 10
        if opset < need:
            raise QCError(f"insert-qdq: {dtype} activations need opset {need}, the model has opset {opset}",
                          hint=f"recompile with --upgrade-opset {max(need, 13)}")

    def _hoist_over_shape_ops(self, x: Value, pairs: dict[int, Value], homes: _Homes, module: Module,
                              dtype: DType, calib, method: str, ctx: PassContext, consumer: Op) -> bool:
        """A Conv input made by a chain of single-use shape-only ops (a channel shuffle's
        Reshape / Transpose / Reshape) from a float y: put the pair on y instead, with x's
        statistics (the ops only move y's values), so that ``fold-qdq`` runs them on the
        integers and the op before y can write int8. True when it did."""
        from .fold_qdq import SHAPE_ONLY

        if self.dynamic or is_quantized(x) or learned_dequantize(x) is not None:
            return False
        v, chain = x, []
        while (v.producer is not None and v.producer.op_type in SHAPE_ONLY and v.producer.domain in ("", "ai.onnx")
               and v.producer.operands and v.producer.operands[0] is not None
               and len(list(v.producer.results[0].users())) == 1):
            chain.insert(0, v.producer)
            v = v.producer.operands[0]
        if not chain or is_weight(v) or not _is_float(v) or is_quantized(v) or v.producer is None:
            return False
        dq = pairs.get(id(v))
        if dq is None:
            dq = self._insert_pair(homes.of(v), homes.consts_for(module, v), v, dtype, calib, method, ctx, consumer,
                                   stats_name=x.name)
            if dq is None:
                return False
            pairs[id(v)] = dq
        chain[0].set_operand(0, dq)
        # a pair (same parameters) between consecutive shape ops: fold-qdq moves one shape op
        # between a DequantizeLinear and a QuantizeLinear at a time
        for prev, nxt in zip(chain, chain[1:]):
            nxt.set_operand(0, _repeat_pair(prev.graph, prev.results[0], dq.producer))
        return True

    def _insert_pair(self, graph: Graph, consts: Graph, x: Value, dtype: DType, calib, method: str,
                     ctx: PassContext, consumer: Op, stats_name: str | None = None) -> Value | None:
        """The pair on ``x`` in ``graph`` (where ``x`` is defined, so that every consumer sees it,
        in the branches of an If too), its scale and zero point consts in ``consts``."""
        float_dtype = x.type.dtype
        shape = x.type.shape if isinstance(x.type, TensorType) else None
        if self.dynamic:
            q = Value(f"{x.name}.q", TensorType(DType.u8, shape))
            scale = Value(f"{x.name}.scale", TensorType(DType.f32, ()))
            zp = Value(f"{x.name}.zp", TensorType(DType.u8, ()))
            quant = Op("DynamicQuantizeLinear", [x], results=[q, scale, zp], name=f"{x.name}.quantize")
            q.type = TensorType(DType.u8, shape, QuantParams(scale=scale, zero_point=zp))
        else:
            stats = calib.tensors.get(stats_name or x.name)
            if stats is None:
                ctx.remark(consumer, f"no calibration statistics for %{x.name}; input left float")
                return None
            from qc.calib.stats import choose_range, scale_zero_point

            qmin, qmax = storage_range(dtype, self.symmetric)
            if method != "minmax" and stats.hist is None:
                ctx.remark(consumer, f"%{x.name} has no histogram (statistics derived by an earlier pass); "
                                     f"minmax range instead of {method}")
                method = "minmax"
            lo, hi = choose_range(stats, method, qmin=qmin, qmax=qmax, symmetric=self.symmetric,
                                  percentile=self.percentile)
            s, z = scale_zero_point(lo, hi, qmin=qmin, qmax=qmax, symmetric=self.symmetric)
            scale = consts.add_const(f"{x.name}.scale", Tensor.from_array(np.asarray(s, dtype=float_dtype.numpy)))
            zp = consts.add_const(f"{x.name}.zp", Tensor.from_array(np.asarray(z, dtype=dtype.numpy), dtype))
            q = Value(f"{x.name}.q", TensorType(dtype, shape, QuantParams(scale=float(s), zero_point=int(z))))
            quant = Op("QuantizeLinear", [x, scale, zp], results=[q], name=f"{x.name}.quantize")
            ctx.remark(consumer, f"%{x.name}: {dtype} scale {float(s):.6g} zp {int(z)} from {method} range "
                                 f"[{lo:.6g}, {hi:.6g}] (observed [{stats.min:.6g}, {stats.max:.6g}])")
        dq_value = Value(f"{x.name}.dq", TensorType(float_dtype, shape))
        dequant = Op("DequantizeLinear", [q, scale, zp], results=[dq_value], name=f"{x.name}.dequantize")
        anchor = x.producer
        if anchor is not None and anchor.graph is graph:
            graph.insert_after(anchor, quant)
        else:
            first = next(iter(graph), None)
            if first is None:
                graph.append(quant)
            else:
                graph.insert_before(first, quant)
        graph.insert_after(quant, dequant)
        return dq_value


class _Homes:
    """The graph defining each value (op results: their op's; inputs: the graph listing them)."""

    def __init__(self, module: Module):
        self.inputs: dict[int, Graph] = {}
        self.main = module.graph
        for g in [module.graph] + [sub for op in module.graph.walk() for sub in op.subgraphs()]:
            self.inputs.update((id(v), g) for v in g.inputs)

    def of(self, v: Value) -> Graph:
        if v.producer is not None and v.producer.graph is not None:
            return v.producer.graph
        return self.inputs.get(id(v), self.main)

    def consts_for(self, module: Module, v: Value) -> Graph:
        """Where new consts for ``v``'s pair go: its graph, or the main graph where a subgraph
        cannot hold initializers (IR version < 4)."""
        from ._util import can_hold_consts

        g = self.of(v)
        return g if can_hold_consts(module, g, None) else self.main


def _repeat_pair(graph: Graph, x: Value, learned: Op) -> Value:
    """``DequantizeLinear(QuantizeLinear(x))`` with ``learned``'s own scale and zero point values:
    exact on ``x`` (its values are ``learned``'s), and ``fold-qdq`` moves the shape-only ops
    between the two onto the integers."""
    q_in = learned.operands[0]
    scale = learned.operands[1]
    zp = learned.operands[2] if len(learned.operands) > 2 else None
    shape = x.type.shape if isinstance(x.type, TensorType) else None
    dtype = q_in.type.dtype if isinstance(q_in.type, TensorType) else DType.u8
    params = q_in.type.quant if isinstance(q_in.type, TensorType) else None
    q = Value(f"{x.name}.q", TensorType(dtype, shape, params))
    operands = [x, scale] + ([zp] if zp is not None else [])
    quant = Op("QuantizeLinear", operands, results=[q], name=f"{x.name}.quantize")
    dq_value = Value(f"{x.name}.dq", TensorType(x.type.dtype, shape))
    dequant = Op("DequantizeLinear", [q] + operands[1:], results=[dq_value], name=f"{x.name}.dequantize")
    graph.insert_after(x.producer, quant)
    graph.insert_after(quant, dequant)
    return dq_value


def _is_float(v: Value) -> bool:
    t = v.type
    return isinstance(t, TensorType) and t.dtype in (DType.f32, DType.f16, DType.bf16)
