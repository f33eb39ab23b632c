"""The ``fuse-matmul-nbits-rows`` pass; its docstring (``qc passes fuse-matmul-nbits-rows``) lists the rewrite."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qc.ir.core import Module, Op, Value
from qc.ir.tensor import Tensor
from qc.pm import Pass, PassContext, register_pass
from qc.quant.scales import factor_scales

from . import _fuse as F
from ._row_scale import match_row_codes
from ._util import const_array, constant_consts, is_default_domain

MAX_K = 8192
"""The largest K whose integer sum, blocks * 127 * 32 * 15 * 127, stays exact in int32."""


@register_pass("fuse-matmul-nbits-rows")
@dataclass(frozen=True)
class FuseMatMulNBitsRows(Pass):
    """fuse-matmul-nbits-rows: ``w4a8-per-token``'s form, the per-row int8 codes of %x times
    4-bit weights with integer block scales and the per-column and per-row scales after, as one
    op::

        %s = onnx.Div(onnx.Max(onnx.ReduceMax(onnx.Abs(%x)) {axes = [-1], keepdims = 1}, 1e-30), 127)
        %acc = com.microsoft.MatMulNBits(onnx.Round(onnx.Div(%x, %s)), @B, @wsi[, @Z]) {accuracy_level = 1, ...}
        %y = onnx.Mul(onnx.Mul(%acc, @ws), %s)
            ->  %y = qc.MatMulNBitsRows(%x, @B, @S[, @Z]) {K, N, block_size}      @S = @ws x @wsi

    ``qc.MatMulNBitsRows`` (domain ``qc``) is the MatMulNBits of %x quantized to int8 with one
    scale per row (passes/_row_scale.py). It applies when the block size is a multiple of 32,
    K <= 8192 and @S factors exactly as ws[n] x wsi[b][n] (``qc.quant.scales.factor_scales``):
    the C kernel ``qc_gemm_s4a8r`` then sums in int32 across K. The chain stays while anything
    else reads its values (dce removes it once nothing does).
    """

    def run(self, module: Module, ctx: PassContext) -> bool:
        constants = constant_consts(module)
        graph = module.graph
        changed = False
        for op in list(graph.ops):
            if op.graph is not graph or not is_default_domain(op) or op.op_type != "Mul" or len(op.operands) != 2:
                continue
            match = _match(op, constants)
            if match is None:
                continue
            mnb, cols, x, scales = match
            rest = list(mnb.operands[3:4])
            fused = Op("MatMulNBitsRows", [x, mnb.operands[1], graph.add_const(f"{mnb.operands[2].name}.s", scales),
                                           *rest], domain=F.QC_DOMAIN, results=0,
                       attrs={"K": mnb.attr("K"), "N": mnb.attr("N"), "block_size": mnb.attr("block_size")})
            F.ensure_domain(module)
            F.apply(op, fused, [cols, mnb])
            changed = True
        return changed


def _match(tail: Op, constants: set[int]) -> tuple[Op, Op, Value, Tensor] | None:
    """(the MatMulNBits, the Mul by @ws, %x, @ws x @wsi as MatMulNBits' scales) of the form above
    ending in *tail*, else None."""
    for c, s in (tail.operands, tuple(reversed(tail.operands))):
        cols = F.producer(c, "Mul")
        if cols is None or len(cols.operands) != 2 or not F.only_used_by(c, tail):
            continue
        for acc, ws in (cols.operands, tuple(reversed(cols.operands))):
            mnb = acc.producer if acc is not None else None
            if mnb is None or mnb.domain != "com.microsoft" or mnb.op_type != "MatMulNBits" \
                    or not F.only_used_by(acc, cols) or not _fits(mnb):
                continue
            chain = match_row_codes(mnb.operands[0], constants)
            w = const_array(ws, constants)
            N = mnb.attr("N")
            if chain is None or chain.scale is not s or w is None or w.dtype != np.float32 or w.size != N \
                    or any(d != 1 for d in w.shape[:-1]):
                continue
            wsi = mnb.operands[2].const.numpy()
            scales = (w.reshape(N, 1) * wsi.reshape(N, -1)).astype(np.float32)
            if factor_scales(scales.T) is None:
                continue
            return mnb, cols, chain.x, Tensor.from_array(scales.reshape(wsi.shape))
    return None


def _fits(op: Op) -> bool:
    K, N, bs = op.attr("K"), op.attr("N"), op.attr("block_size")
    if op.attr("bits", 4) != 4 or op.attr("accuracy_level", 0) != 1 or bs % 32 or K > MAX_K:
        return False
    if any(v is not None for v in op.operands[4:]):  # g_idx; a bias would be scaled by ws x s
        return False
    s = op.operands[2].const if op.operands[2] is not None else None
    if not isinstance(s, Tensor) or not isinstance(op.operands[1].const if op.operands[1] else None, Tensor):
        return False
    return s.numpy().dtype == np.float32 and s.numpy().size == N * -(-K // bs)
