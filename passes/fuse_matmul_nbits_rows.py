"""The ``fuse-matmul-nbits-rows`` pass; its docstring (``qc passes fuse-matmul-nbits-rows``) lists the rewrite."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qc.ir.core import Module, Op, Value
from qc.ir.tensor import Tensor
from qc.pm import Pass, PassContext, register_pass
from qc.quant.scales import factor_scales

from . import _fuse as F
from ._util import constant_consts

MAX_K = 8192
"""The largest K whose integer sum, blocks * 127 * 32 * 15 * 127, stays exact in int32."""


@register_pass("fuse-matmul-nbits-rows")
@dataclass(frozen=True)
class FuseMatMulNBitsRows(Pass):
    """fuse-matmul-nbits-rows: ``w4a8-per-token``'s chain and the MatMulNBits it feeds as one op::

        %s = onnx.Div(onnx.Max(onnx.ReduceMax(onnx.Abs(%x)) {axes = [-1], keepdims = 1}, 1e-30), 127)
        %xq = onnx.Mul(onnx.Round(onnx.Div(%x, %s)), %s)
        %y = com.microsoft.MatMulNBits(%xq, @B, @S[, @Z, , @bias]) {accuracy_level = 1, bits = 4, ...}
            ->  %y = qc.MatMulNBitsRows(%x, @B, @S[, @Z, , @bias]) {K, N, block_size}

    ``qc.MatMulNBitsRows`` (domain ``qc``) is the MatMulNBits of %x quantized to int8 with one
    scale per row, as the chain computes it. It applies when the block size is a multiple of 32,
    K <= 8192 and the scales factor as ws[n] x wsi[b][n] (``qc.quant.scales.factor_scales``):
    the C kernel ``qc_gemm_s4a8r`` then sums in int32 across K. The chain stays while anything
    else reads %xq (dce removes it once nothing does).
    """

    def run(self, module: Module, ctx: PassContext) -> bool:
        constants = constant_consts(module)
        graph = module.graph
        changed = False
        for op in list(graph.ops):
            if op.graph is not graph or op.domain != "com.microsoft" or op.op_type != "MatMulNBits":
                continue
            x = _chain_input(op.operands[0], constants)
            if x is None or not _fits(op):
                continue
            fused = Op("MatMulNBitsRows", [x, *op.operands[1:]], domain=F.QC_DOMAIN, results=0,
                       attrs={"K": op.attr("K"), "N": op.attr("N"), "block_size": op.attr("block_size")})
            F.ensure_domain(module)
            F.apply(op, fused, [])
            changed = True
        return changed


def _chain_input(v: Value | None, constants: set[int]) -> Value | None:
    """The %x of ``Mul(Round(Div(%x, %s)), %s)`` with %s the chain's per-row scale, else None."""
    mul = F.producer(v, "Mul")
    if mul is None or len(mul.operands) != 2:
        return None
    for r, s in (mul.operands, tuple(reversed(mul.operands))):
        rnd = F.producer(r, "Round")
        div = F.producer(rnd.operands[0], "Div") if rnd is not None else None
        if div is None or div.operands[1] is not s:
            continue
        x = div.operands[0]
        scale = F.producer(s, "Div")
        if scale is None or not F.is_f32_const(scale.operands[1], constants, 127):
            continue
        mx = F.producer(scale.operands[0], "Max")
        if mx is None or len(mx.operands) != 2:
            continue
        for a, t in (mx.operands, tuple(reversed(mx.operands))):
            red = F.producer(a, "ReduceMax")
            ab = F.producer(red.operands[0], "Abs") if red is not None else None
            if red is None or ab is None or ab.operands[0] is not x or not F.is_f32_const(t, constants, 1e-30) \
                    or red.attr("keepdims", 1) != 1 or not _last_axis(red, constants):
                continue
            return x
    return None


def _last_axis(red: Op, constants: set[int]) -> bool:
    axes = red.attr("axes")
    if axes is None and len(red.operands) > 1 and red.operands[1] is not None:
        c = red.operands[1].const
        axes = c.numpy().reshape(-1).tolist() if isinstance(c, Tensor) else None
    rank = len(F.static_shape(red.operands[0]) or ())
    return axes is not None and len(axes) == 1 and rank > 0 and int(axes[0]) % rank == rank - 1


def _fits(op: Op) -> bool:
    K, N, bs = op.attr("K"), op.attr("N"), op.attr("block_size")
    if op.attr("bits", 4) != 4 or op.attr("accuracy_level", 0) != 1 or bs % 32 or K > MAX_K:
        return False
    if len(op.operands) > 4 and op.operands[4] is not None:
        return False
    s = op.operands[2].const if op.operands[2] is not None else None
    if not isinstance(s, Tensor) or not isinstance(op.operands[1].const if op.operands[1] else None, Tensor):
        return False
    scales = s.numpy()
    if scales.dtype != np.float32:
        return False
    return factor_scales(scales.reshape(N, -(-K // bs)).T) is not None
