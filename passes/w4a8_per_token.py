"""The ``w4a8-per-token`` pass: W4A8 with one activation scale per token and integer block scales."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qc.ir.core import Graph, Module, Op, Value
from qc.ir.dtypes import DType
from qc.ir.tensor import Tensor
from qc.ir.types import TensorType
from qc.pm import Pass, PassContext, register_pass

TINY = np.float32(1e-30)  # an all-zero row keeps a positive scale (its codes are all 0)
SIGNIFICANT_BITS = 16     # of the per-column scale ws: ws * wsi (wsi <= 127, 7 bits) is exact in float32


@register_pass("w4a8-per-token")
@dataclass(frozen=True)
class W4A8PerToken(Pass):
    """w4a8-per-token: the form whose int32 sums can run across the whole of K (the C kernel
    ``qc_gemm_s4a8r``, docs/c-kernels.md "W4A8 per token").

    A 4-bit MatMulNBits with accuracy_level 4 (onnxruntime quantizes A per block of 32) and
    constant weights::

        %y = com.microsoft.MatMulNBits(%x, @B, @S[, @Z]) {accuracy_level = 4, bits = 4, ...}
      ->
        %x.s = onnx.Div(onnx.Max(onnx.ReduceMax(onnx.Abs(%x)) {axes = [-1], keepdims = 1}, 1e-30), 127)
        %x.pt = onnx.Mul(onnx.Round(onnx.Div(%x, %x.s)), %x.s)          one chain per %x, shared
        %y = com.microsoft.MatMulNBits(%x.pt, @B', @S'[, @Z]) {accuracy_level = 1, ...}

    @S' = ws[n] * wsi[b][n]: ws = max_b S[b][n] / 127 rounded up to 16 significant bits, wsi =
    ceil(S / ws) in 1..127, so the product is exact in float32 and no block's range shrinks; @B'
    re-rounds the codes against @S' with the zero points kept. accuracy_level 1 makes onnxruntime
    compute the product of the per-token codes in float32, what the integer kernel computes
    exactly. SmolLM2-135M: perplexity 24.166 -> 24.547 (docs/c-kernels.md). Left alone: other
    accuracy levels and widths, non-constant weights, g_idx, inputs without a static last axis.
    """

    def run(self, module: Module, ctx: PassContext) -> bool:
        graph = module.graph
        opset = module.opset("") or 13
        chains: dict[int, Value] = {}
        changed = False
        for op in list(graph.ops):
            if op.graph is not graph or not _applies(op):
                continue
            x, b, s = op.operands[0], op.operands[1], op.operands[2]
            assert x is not None and b is not None and s is not None  # _applies
            if id(x) not in chains:
                chains[id(x)] = _chain(graph, op, x, opset)
            codes, scales = _two_level(op)
            operands = list(op.operands)
            operands[0] = chains[id(x)]
            operands[1] = graph.add_const(b.name + ".pt", Tensor.from_array(codes, DType.u8))
            operands[2] = graph.add_const(s.name + ".pt", Tensor.from_array(scales, DType.f32))
            op.set_operands(operands)
            op.set_attr("accuracy_level", 1)
            ctx.remark(op, f"%{x.name}: A per token, block scales ws x wsi (accuracy_level 1)")
            changed = True
        return changed


def _const(v: Value | None) -> np.ndarray | None:
    return v.const.numpy() if v is not None and isinstance(v.const, Tensor) else None


def _applies(op: Op) -> bool:
    if op.domain != "com.microsoft" or op.op_type != "MatMulNBits" or op.attr("bits", 4) != 4 \
            or op.attr("accuracy_level", 0) != 4:
        return False
    if len(op.operands) > 4 and op.operands[4] is not None:
        return False
    x = op.operands[0]
    xt = x.type if x is not None else None
    if not isinstance(xt, TensorType) or xt.dtype is not DType.f32 or not xt.shape or not isinstance(xt.shape[-1], int):
        return False
    zp = op.operands[3] if len(op.operands) > 3 else None
    b, s, z = _const(op.operands[1]), _const(op.operands[2]), _const(zp)
    return b is not None and s is not None and s.dtype == np.float32 and (zp is None or (z is not None
                                                                                         and z.dtype == np.uint8))


def _two_level(op: Op) -> tuple[np.ndarray, np.ndarray]:
    """(@B', @S') in MatMulNBits' layouts ([N, blocks, bs / 2] uint8, [N * blocks] float32 as @S)."""
    K, N, bs = op.attr("K"), op.attr("N"), op.attr("block_size")
    nb = -(-K // bs)
    b = _const(op.operands[1])
    s_in = _const(op.operands[2])
    assert b is not None and s_in is not None
    s = s_in.astype(np.float32).reshape(N, nb)
    zp = _const(op.operands[3]) if len(op.operands) > 3 else None
    q = np.stack([b & 15, b >> 4], -1).reshape(N, nb, bs).astype(np.int64)
    z = (np.full((N, nb), 8, np.int64) if zp is None
         else np.stack([zp & 15, zp >> 4], -1).reshape(N, -1)[:, :nb].astype(np.int64))
    w = (q - z[:, :, None]) * s[:, :, None].astype(np.float64)
    top = s.max(axis=1)
    m, e = np.frexp(np.maximum(top, np.float32(np.finfo(np.float32).tiny)) / np.float32(127))
    ws = np.ldexp(np.ceil(m * 2.0 ** SIGNIFICANT_BITS) / 2.0 ** SIGNIFICANT_BITS, e).astype(np.float32)
    wsi = np.clip(np.ceil(s / ws[:, None] - 1e-6), 1, 127)
    s2 = (ws[:, None] * wsi).astype(np.float32)
    q2 = np.clip(np.rint(w / s2[:, :, None]) + z[:, :, None], 0, 15).astype(np.uint8).reshape(N, -1)
    packed = (q2[:, 0::2] | (q2[:, 1::2] << 4)).reshape(b.shape)
    return np.ascontiguousarray(packed), s2.reshape(s_in.shape)


def _chain(graph: Graph, anchor: Op, x: Value, opset: int) -> Value:
    xt = x.type
    assert isinstance(xt, TensorType) and xt.shape is not None
    rows = (*xt.shape[:-1], 1)
    n = x.name

    def add(op_type: str, operands: list[Value | None], name: str, shape, **attrs) -> Value:
        v = Value(name, TensorType(DType.f32, shape))
        graph.insert_before(anchor, Op(op_type, operands, results=[v], attrs=attrs or None))
        return v

    def const(name: str, array: np.ndarray) -> Value:
        return graph.add_const(name, Tensor.from_array(array))

    ab = add("Abs", [x], f"{n}.pt.abs", xt.shape)
    if opset >= 18:
        amax = add("ReduceMax", [ab, const(f"{n}.pt.axes", np.array([-1], np.int64))], f"{n}.pt.amax", rows,
                   keepdims=1)
    else:
        amax = add("ReduceMax", [ab], f"{n}.pt.amax", rows, axes=[-1], keepdims=1)
    floor = add("Max", [amax, const(f"{n}.pt.tiny", np.array(TINY))], f"{n}.pt.amax.pos", rows)
    s = add("Div", [floor, const(f"{n}.pt.qmax", np.array(127, np.float32))], f"{n}.pt.s", rows)
    scaled = add("Div", [x, s], f"{n}.pt.scaled", xt.shape)
    rounded = add("Round", [scaled], f"{n}.pt.round", xt.shape)
    return add("Mul", [rounded, s], f"{n}.pt", xt.shape)
