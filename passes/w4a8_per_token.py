"""The ``w4a8-per-token`` pass: W4A8 with one activation scale per token and integer block scales."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qc.ir.core import Graph, Module, Op, Value
from qc.ir.dtypes import DType
from qc.ir.tensor import Tensor
from qc.ir.types import TensorType
from qc.pm import Pass, PassContext, register_pass

from ._row_scale import RowCodes, build_row_codes

SIGNIFICANT_BITS = 16     # of the per-column scale ws: ws * wsi (wsi <= 127, 7 bits) is exact in float32


@register_pass("w4a8-per-token")
@dataclass(frozen=True)
class W4A8PerToken(Pass):
    """w4a8-per-token: the form whose int32 sums can run across the whole of K (the C kernel
    ``qc_gemm_s4a8r``, docs/c-kernels.md "W4A8 per token").

    A 4-bit MatMulNBits with accuracy_level 4 (onnxruntime quantizes A per block of 32) and
    constant weights::

        %y = com.microsoft.MatMulNBits(%x, @B, @S[, @Z[, , @bias]]) {accuracy_level = 4, bits = 4, ...}
      ->
        %x.pt.s = onnx.Div(onnx.Max(onnx.ReduceMax(onnx.Abs(%x)) {axes = [-1], keepdims = 1}, 1e-30), 127)
        %x.pt.round = onnx.Round(onnx.Div(%x, %x.pt.s))             one chain per %x, shared
        %y.acc = com.microsoft.MatMulNBits(%x.pt.round, @B', @wsi[, @Z]) {accuracy_level = 1, ...}
        %y = onnx.Mul(onnx.Mul(%y.acc, @ws), %x.pt.s)                   [then onnx.Add(.., @bias)]

    @S = ws[n] * wsi[b][n]: ws = max_b S[b][n] / 127 rounded up to 16 significant bits, wsi =
    ceil(S / ws) in 1..127, so no block's range shrinks; @B' re-rounds the codes against ws x wsi
    with the zero points kept. MatMulNBits then multiplies integer codes by integer weights
    (q - z) * wsi: every product and partial sum is an integer, exact in float32 below 2^24 in
    any order of summation, so onnxruntime computes the integer kernel's int32 sum D and the
    same (D * ws) * s, and one row gives what many rows give (its one-row and many-row kernels
    sum in different orders: with float codes the decode path drifted +0.3-0.7% in perplexity
    from the one-pass result). SmolLM2-135M: perplexity 24.166 -> 24.547 (docs/c-kernels.md).
    Left alone: other accuracy levels and widths, non-constant weights, g_idx, inputs without a
    static last axis.
    """

    def run(self, module: Module, ctx: PassContext) -> bool:
        graph = module.graph
        opset = module.opset("") or 13
        chains: dict[int, RowCodes] = {}
        changed = False
        for op in list(graph.ops):
            if op.graph is not graph or not _applies(op):
                continue
            x, b, s = op.operands[0], op.operands[1], op.operands[2]
            assert x is not None and b is not None and s is not None  # _applies
            if id(x) not in chains:
                chains[id(x)] = build_row_codes(graph, op, x, opset, f"{x.name}.pt")
            chain = chains[id(x)]
            codes, wsi, ws = _two_level(op)
            operands = list(op.operands)
            bias = operands[5] if len(operands) > 5 else None
            operands[0] = chain.codes
            operands[1] = graph.add_const(b.name + ".pt", Tensor.from_array(codes, DType.u8))
            operands[2] = graph.add_const(f"{s.name}.wsi", Tensor.from_array(wsi, DType.f32))
            op.set_operands(operands[:4])
            op.set_attr("accuracy_level", 1)
            ctx.remark(op, f"%{x.name}: A per token, integer block scales wsi, x ws x s after (accuracy_level 1)")
            _scale_output(graph, op, graph.add_const(f"{s.name}.ws", Tensor.from_array(ws)), chain.scale,
                          bias)
            changed = True
        return changed


def _scale_output(graph: Graph, op: Op, ws: Value, s: Value, bias: Value | None) -> None:
    """%y = MatMulNBits(..) -> %y.acc = MatMulNBits(..); %y = Mul(Mul(%y.acc, @ws), %s)[ + @bias]."""
    acc = op.results[0]
    assert acc is not None
    y = Value(acc.name, acc.type)
    acc.replace_all_uses_with(y)
    acc.name = f"{acc.name}.acc"
    base = y.name or acc.name

    def after(anchor: Op, op_type: str, operands: list[Value | None], result: Value) -> Op:
        return graph.insert_after(anchor, Op(op_type, operands, results=[result]))

    cols = after(op, "Mul", [acc, ws], Value(f"{base}.cols", acc.type))
    if bias is None:
        after(cols, "Mul", [cols.results[0], s], y)
        return
    scaled = after(cols, "Mul", [cols.results[0], s], Value(f"{base}.scaled", acc.type))
    after(scaled, "Add", [scaled.results[0], bias], y)


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


def _two_level(op: Op) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(@B', @wsi, @ws): @B' and @wsi in MatMulNBits' layouts ([N, blocks, bs / 2] uint8, float32
    integers shaped as @S), @ws float32 [N]."""
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
    return np.ascontiguousarray(packed), wsi.astype(np.float32).reshape(s_in.shape), ws

