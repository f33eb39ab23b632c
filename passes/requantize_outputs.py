"""The ``requantize-outputs`` pass: close the quantized Conv units that insert-qdq leaves open."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from qc.errors import QCError
from qc.ir.core import Graph, Module, Op, Value
from qc.ir.dtypes import DType
from qc.ir.tensor import Tensor
from qc.ir.types import QuantParams, TensorType
from qc.pm import Pass, PassContext, register_pass
from qc.quant.units import FLOATS, clip_exact, node_unit

from ._util import const_array, is_any_output, is_default_domain
from .insert_qdq import ACTIVATION_DTYPES, storage_range


def activation_bounds(op: Op) -> tuple[float, float] | None:
    """(lo, hi) of a Relu, or of a Clip with constant (or absent) bounds; None for anything else."""
    if not is_default_domain(op) or op.op_type not in ("Relu", "Clip"):
        return None
    if op.op_type == "Relu":
        return 0.0, math.inf
    if len(op.operands) == 1 and (op.attr("min", None) is not None or op.attr("max", None) is not None):
        return float(op.attr("min", -math.inf)), float(op.attr("max", math.inf))  # opset < 11
    bounds = []
    for i, default in ((1, -math.inf), (2, math.inf)):
        v = op.operands[i] if len(op.operands) > i else None
        c = const_array(v) if v is not None else None
        if v is not None and (c is None or c.size != 1):
            return None
        bounds.append(default if c is None else float(np.asarray(c, np.float32).reshape(-1)[0]))
    return (bounds[0], bounds[1]) if bounds[0] <= bounds[1] else None


@register_pass("requantize-outputs")
@dataclass(frozen=True)
class RequantizeOutputs(Pass):
    """requantize-outputs: give every quantized Conv whose result is not quantized again (it goes
    to a Concat, an Add, a pooling, a graph output ...) its own output QuantizeLinear, after the
    Relu / Clip that follows it, so that the Conv, its activation and the requantization are one
    integer unit (QLinearConv in onnxruntime, an int8 conv with a clamp in C, an NPU conv)::

        %y = onnx.Conv(%x.dq, %w.dq, @b)            %y = onnx.Conv(%x.dq, %w.dq, @b)
        %r = onnx.Relu(%y)                      ->  %r = onnx.Relu(%y)
        %c = onnx.Concat(%r, %t) {axis = 1}         %r.q = onnx.QuantizeLinear(%r, @r.scale, @r.zp)
                                                    %r.dq = onnx.DequantizeLinear(%r.q, @r.scale, @r.zp)
                                                    %c = onnx.Concat(%r.dq, %t) {axis = 1}

    The range is the Conv result's calibrated range (``calibrate{output-ops=Conv}``) clipped to
    the activation's bounds (Relu: [0, inf), Clip: its constants), so the activation's lower bound
    sits at the lowest code and the QuantizeLinear's clamp does its work exactly (onnxruntime's
    ClipQuantFusion drops it). When the value's only reader is a Concat that is quantized (its
    only reader a QuantizeLinear), the Concat's scale and zero point are used instead: every
    input then has the Concat's parameters, and the Concat moves integers unchanged (only when the
    activation's bounds still fall on its lowest and highest codes, so that the unit stays closed).

    A result that is already quantized for one of its readers (the next Conv's input) and also read
    as float (a residual Add) has its float readers read that pair's DequantizeLinear instead.

    Left alone: Convs whose input or weight is not quantized, Convs already followed by a
    QuantizeLinear (insert-qdq's pair of the next Conv; a QAT model's learned one, even where the
    activation cannot fold into it), results that are graph outputs, and
    results without statistics (a remark each).
    """

    ops: str = "Conv"
    """op types whose results are requantized"""
    dtype: str = "u8"
    """activation storage type (insert-qdq's)"""
    symmetric: bool = False
    """zero point 0 / the middle of the range (insert-qdq's option)"""
    method: str = ""
    """range method; empty = the calibrate pass's"""
    exclude: str = ""
    """regex: ops whose name matches are left alone"""

    def validate(self) -> None:
        if self.dtype not in ACTIVATION_DTYPES:
            raise QCError(f"requantize-outputs: dtype '{self.dtype}' is not an activation type",
                          hint="one of " + ", ".join(ACTIVATION_DTYPES))

    def run(self, module: Module, ctx: PassContext) -> bool:
        calib = ctx.calibration
        if calib is None:
            raise QCError("requantize-outputs needs calibration statistics: run calibrate{output-ops=Conv} first")
        types = {t.strip() for t in self.ops.split(",") if t.strip()}
        exclude = re.compile(self.exclude) if self.exclude else None
        dtype = DType.parse(self.dtype)
        method = self.method or getattr(calib, "method", "") or "minmax"
        changed = False
        for op in list(module.graph.walk()):
            if op.op_type not in types or not is_default_domain(op) or op.graph is None:
                continue
            if exclude is not None and exclude.search(op.name or ""):
                continue
            unit = node_unit(op, graph=op.graph)
            if (unit is None or unit.act_dq is None or unit.weight_dq is None or unit.act in FLOATS
                    or unit.weight in FLOATS or unit.out_q is not None):
                continue
            end, lo_b, hi_b = op.results[0], -math.inf, math.inf
            while True:
                users = end.users()
                if len(users) != 1 or users[0].graph is not op.graph or is_any_output(end):
                    break
                b = activation_bounds(users[0])
                if b is None or end.uses() != ((users[0], 0),):
                    break
                lo_b, hi_b = max(lo_b, b[0]), min(hi_b, b[1])
                end = users[0].results[0]
            if is_any_output(end) or not end.users():
                ctx.remark(op, f"%{end.name} is a graph output; left float")
                continue
            if self._reuse_quantize(end, lo_b, hi_b):
                ctx.remark(op, f"%{end.name}: its float readers now read the QuantizeLinear -> DequantizeLinear "
                               "already there (the next Conv's input)")
                changed = True
                continue
            if any(u.op_type == "QuantizeLinear" and is_default_domain(u) for u in end.users()):
                ctx.remark(op, f"%{end.name} is already quantized with parameters its activation does not fold into "
                               "(a QAT model's learned ones are kept); output left as it is")
                continue
            params = self._shared_concat_params(end, lo_b, hi_b)
            if params is None:
                stats = calib.tensors.get(op.results[0].name)
                if stats is None or stats.count == 0:
                    ctx.remark(op, f"no calibration statistics for %{op.results[0].name} "
                                   "(calibrate{output-ops=Conv}); output left float")
                    continue
                params = self._params(op.graph, end, stats, method, lo_b, hi_b, dtype, ctx, op)
            _insert_pair(op.graph, end, *params)
            changed = True
        return changed

    def _params(self, graph: Graph, end: Value, stats, method: str, lo_b: float, hi_b: float, dtype: DType,
                ctx: PassContext, op: Op) -> tuple[Value, Value]:
        from qc.calib.stats import choose_range, scale_zero_point

        qmin, qmax = storage_range(dtype, self.symmetric)
        if method != "minmax" and stats.hist is None:
            method = "minmax"
        lo, hi = choose_range(stats, method, qmin=qmin, qmax=qmax, symmetric=self.symmetric)
        lo, hi = min(max(lo, lo_b), hi_b), max(min(hi, hi_b), lo_b)
        s, z = scale_zero_point(lo, hi, qmin=qmin, qmax=qmax, symmetric=self.symmetric)
        float_dtype = end.type.dtype if isinstance(end.type, TensorType) else DType.f32
        scale = graph.add_const(f"{end.name}.scale", Tensor.from_array(np.asarray(s, dtype=float_dtype.numpy)))
        zp = graph.add_const(f"{end.name}.zp", Tensor.from_array(np.asarray(z, dtype=dtype.numpy), dtype))
        ctx.remark(op, f"%{end.name}: output requantized, {dtype} scale {float(s):.6g} zp {int(z)} from {method} "
                       f"range [{lo:.6g}, {hi:.6g}]")
        return scale, zp

    @staticmethod
    def _reuse_quantize(end: Value, lo: float, hi: float) -> bool:
        """``end`` is already quantized for one reader (insert-qdq's pair of a Conv input) but also
        read as float (a residual Add): the float readers read that pair's DequantizeLinear too,
        so that the QuantizeLinear is ``end``'s only reader and closes the unit."""
        q = next((u for u in end.users() if u.op_type == "QuantizeLinear" and is_default_domain(u)
                  and u.graph is end.producer.graph and u.operands[0] is end), None)
        if q is None or q.results[0] is None or not clip_exact(q, lo, hi):
            return False
        dq = next((u for u in q.results[0].users() if u.op_type == "DequantizeLinear" and is_default_domain(u)
                   and u.graph is q.graph), None)
        if dq is None or dq.operands[1:] != q.operands[1:]:
            return False
        for user, i in [(u, i) for u, i in end.uses() if isinstance(u, Op) and u is not q]:
            user.set_operand(i, dq.results[0])
        return True

    @staticmethod
    def _shared_concat_params(end: Value, lo: float, hi: float) -> tuple[Value, Value] | None:
        """The scale and zero point of the QuantizeLinear that is the only reader of the Concat
        that is the only reader of ``end``, if so (with constant per-tensor parameters, and the
        activation's bounds ``lo``, ``hi`` at its lowest and highest codes, so the unit stays closed)."""
        users = end.users()
        if len(users) != 1 or users[0].op_type != "Concat" or not is_default_domain(users[0]):
            return None
        cat = users[0].results[0]
        readers = cat.users()
        if len(readers) != 1 or readers[0].op_type != "QuantizeLinear" or is_any_output(cat):
            return None
        q = readers[0]
        if len(q.operands) < 3 or q.attr("block_size", 0):
            return None
        s, z = const_array(q.operands[1]), const_array(q.operands[2])
        if s is None or z is None or s.size != 1 or z.size != 1 or not clip_exact(q, lo, hi):
            return None
        return q.operands[1], q.operands[2]


def _insert_pair(graph: Graph, end: Value, scale: Value, zp: Value) -> None:
    uses = [(u, i) for u, i in end.uses() if isinstance(u, Op)]
    shape = end.type.shape if isinstance(end.type, TensorType) else None
    dtype = zp.const.dtype if zp.const is not None else DType.u8
    s = float(np.asarray(scale.const.numpy()).reshape(-1)[0])
    z = int(np.asarray(zp.const.numpy()).reshape(-1)[0])
    q = Value(f"{end.name}.out.q", TensorType(dtype, shape, QuantParams(scale=s, zero_point=z)))
    quant = Op("QuantizeLinear", [end, scale, zp], results=[q], name=f"{end.name}.out.quantize")
    dq = Value(f"{end.name}.out.dq", TensorType(end.type.dtype, shape))
    dequant = Op("DequantizeLinear", [q, scale, zp], results=[dq], name=f"{end.name}.out.dequantize")
    graph.insert_after(end.producer, quant)
    graph.insert_after(quant, dequant)
    for user, i in uses:
        user.set_operand(i, dq)
