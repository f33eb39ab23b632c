"""The ``dynamic-per-token`` pass: LLM.int8()'s vector-wise dynamic int8 MatMul in standard ONNX."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qc.ir.core import Graph, Module, Op, Value
from qc.ir.dtypes import DType
from qc.ir.tensor import Tensor
from qc.ir.types import TensorType
from qc.pm import Pass, PassContext, register_pass

from ._row_scale import build_row_codes
from ._util import const_array, constant_consts, erase_op, is_any_output, is_default_domain, is_outlier_part


@register_pass("dynamic-per-token")
@dataclass(frozen=True)
class DynamicPerToken(Pass):
    """dynamic-per-token: one int8 scale per activation row (token), computed at run time.

    A MatMul of a float32 activation and a per-column (or per-tensor) symmetric 8-bit weight
    (``quantize-weights{symmetric=true}``: i8 with zero points 0, or u8 with zero points 128)::

        %w.dq = onnx.DequantizeLinear(@w.q, @w.scale, @w.zp) {axis = 1}
        %y = onnx.MatMul(%x, %w.dq)
      ->
        %x.amax = onnx.ReduceMax(onnx.Abs(%x)) {axes = [-1], keepdims = 1}   (axes an input from opset 18)
        %x.s = onnx.Div(onnx.Max(%x.amax, 1e-30), 127)                         [..., T, 1]
        %x.q = onnx.Cast(onnx.Round(onnx.Div(%x, %x.s))) {to = int8}            |x / s| <= 127
        %y.i = onnx.MatMulInteger(%x.q, @w.q, , @w.zp)                          int32 (@w.zp: zeros)
        %y = onnx.Mul(onnx.Mul(onnx.Cast(%y.i) {to = float}, @w.scale), %x.s)

    Each row's codes span the full -127..127 range of that row, so a token with one large
    feature no longer coarsens the others (per-tensor dynamic scales take the whole tensor's
    maximum). Stock onnxruntime runs MatMulInteger in its integer GEMM. With u8 weights (x86
    without VNNI, where its u8 x s8 kernels saturate) the codes are shifted: ``%x.q =
    Cast(Add(Round(..), 128)) {to = uint8}`` and ``MatMulInteger(%x.q, @w.q, 128, @w.zp)``.
    Applies when the weights are symmetric, no block size, the activation has a static last axis and is
    not the weight. Targets with the C backend keep the per-tensor form (remark), whose
    DynamicQuantizeLinear the C backend lowers.
    """

    def run(self, module: Module, ctx: PassContext) -> bool:
        if ctx.target is not None and ctx.target.backend == "c":
            ctx.remark(None, "dynamic-per-token: the C backend keeps the per-tensor dynamic form")
            return False
        graph = module.graph
        constants = constant_consts(module)
        opset = module.opset("") or 13
        changed = False
        for op in graph.ops:
            if op.graph is not graph or not is_default_domain(op) or op.op_type != "MatMul" or is_outlier_part(op):
                continue
            dq = _weight_dq(op, constants)
            if dq is None:
                continue
            _rewrite(graph, op, dq, opset)
            ctx.remark(op, f"%{op.results[0].name}: per-token int8 activations x int8 weights (MatMulInteger)")
            changed = True
        return changed


def _weight_dq(mm: Op, constants: set[int]) -> Op | None:
    x, w = mm.operands[0], mm.operands[1]
    if x is None or w is None or x is w or w.producer is None:
        return None
    xt = x.type
    if not isinstance(xt, TensorType) or xt.dtype is not DType.f32 or not xt.shape or len(xt.shape) < 2 \
            or not isinstance(xt.shape[-1], int):
        return None
    dq = w.producer
    if not is_default_domain(dq) or dq.op_type != "DequantizeLinear" or dq.attr("block_size", 0):
        return None
    q = dq.operands[0]
    if q is None or q.const is None or len(q.const.shape) != 2 or q.const.dtype not in (DType.i8, DType.u8):
        return None
    scale = const_array(dq.operands[1], constants)
    if scale is None or scale.dtype != np.float32 or (scale.size > 1 and dq.attr("axis", 1) % 2 != 1):
        return None
    zp = const_array(dq.operands[2], constants) if len(dq.operands) > 2 and dq.operands[2] is not None else None
    center = 128 if q.const.dtype is DType.u8 else 0  # symmetric: u8 codes around 128
    if (zp is None and center) or (zp is not None and np.any(zp.astype(np.int64) != center)):
        return None
    return dq


def _const(graph: Graph, name: str, array: np.ndarray) -> Value:
    return graph.add_const(name, Tensor.from_array(array))


def _rewrite(graph: Graph, mm: Op, dq: Op, opset: int) -> None:
    x, y = mm.operands[0], mm.results[0]
    xt = x.type
    assert isinstance(xt, TensorType) and xt.shape is not None
    yt = y.type if isinstance(y.type, TensorType) else TensorType(DType.f32, None)
    n = f"{x.name}.{y.name}" if y.name else x.name

    def add(op_type: str, operands: list[Value | None], name: str, dtype: DType, shape, **attrs) -> Value:
        v = Value(name, TensorType(dtype, shape))
        graph.insert_before(mm, Op(op_type, operands, results=[v], attrs=attrs or None,
                                   name=f"{mm.name}:{name}" if mm.name else ""))
        return v

    chain = build_row_codes(graph, mm, x, opset, n, mm.name)
    s, rounded = chain.scale, chain.codes
    wq, wscale = dq.operands[0], dq.operands[1]
    wzp = dq.operands[2] if len(dq.operands) > 2 else None  # @w.q's quant type names it
    if wq.type.dtype is DType.u8:  # u8 x u8 (x86 without VNNI): codes + 128, zero points 128
        shifted = add("Add", [rounded, _const(graph, f"{n}.128", np.array(128, np.float32))], f"{n}.shifted",
                      DType.f32, xt.shape)
        xq = add("Cast", [shifted], f"{n}.q", DType.u8, xt.shape, to=int(DType.u8))
        xzp: Value | None = _const(graph, f"{n}.zp", np.array(128, np.uint8))
    else:
        xq, xzp = add("Cast", [rounded], f"{n}.q", DType.i8, xt.shape, to=int(DType.i8)), None
    acc = add("MatMulInteger", [xq, wq] + ([xzp, wzp] if wzp is not None else []), f"{y.name}.i32",
              DType.i32, yt.shape)
    accf = add("Cast", [acc], f"{y.name}.f32", DType.f32, yt.shape, to=int(DType.f32))
    cols = add("Mul", [accf, wscale], f"{y.name}.wscaled", DType.f32, yt.shape)
    mm.set_operands([cols, s])  # the MatMul becomes the final Mul: %y keeps its name, type and users
    mm.op_type = "Mul"
    if not dq.results[0].uses() and not is_any_output(dq.results[0]):
        erase_op(dq)
