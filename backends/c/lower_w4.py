"""com.microsoft.MatMulNBits (4-bit block weights) -> the W4A8 kernels or the weight-only one.

Which kernel (``kernel_for``):

- W4A8 (runtime/qc_gemm_s4a8*.c: activations quantized per row and block of 32 at run time,
  int4 x int8 dot products, SDOT / SMMLA where the variant has them) when accuracy_level is 4
  (int8, what ``--quant w4a8`` writes), or when it is 0 (unset: the kernel decides, as in
  onnxruntime) and the kernel variant is dotprod or i8mm (``--quant w4`` on cortex-a76,
  armv8.6-i8mm). The block size must be a multiple of 32: a block of 64 .. 256 has its scale
  and zero point repeated over each 32 (the activation blocks stay 32, finer than onnxruntime's,
  which quantizes A per weight block).
- weight-only float (runtime/qc_gemm_s4.c qc_matmul_f32_s4: float32 activations times the
  dequantized weights) otherwise: accuracy_level 1 (fp32) asks for it, and without SDOT / SMMLA
  the integer path saves no time.

The ONNX model for ``w4`` keeps accuracy_level 0, which onnxruntime's CPU kernel runs in float32;
on a dotprod / i8mm target qc's C differs from it by the activation quantization (docs/c-kernels.md).
"""
from __future__ import annotations

import math

import numpy as np

from qc.ir import DType, Op

from .lower_ops import binary
from .lowering import Lowering, Ptr, Raw, handler, unsupported
from .packing_s4 import BLOCK, pack_s4a8, scratch_elems
from .packing_s4r import factor_scales, pack_s4a8r
from .packing_s4r import scratch_elems as scratch_elems_r

W4A8_VARIANTS = ("dotprod", "i8mm")


def kernel_for(accuracy_level: int, block: int, variant: str | None) -> str:
    """'qc_gemm_s4a8' or 'qc_matmul_f32_s4' for a 4-bit MatMulNBits (see the module docstring)."""
    if block % BLOCK == 0 and (accuracy_level == 4 or (accuracy_level == 0 and variant in W4A8_VARIANTS)):
        return "qc_gemm_s4a8"
    return "qc_matmul_f32_s4"


def _const(v) -> np.ndarray | None:
    return None if v is None or v.const is None else v.const.numpy()


def _weights(op: Op, K: int, N: int, block: int):
    """(q K x N uint8 0..15, scales blocks x N float32, zero points blocks x N uint8 or None)."""
    b, scales = _const(op.operands[1]), _const(op.operands[2])
    zp_v = op.operands[3] if len(op.operands) > 3 else None
    zp = _const(zp_v)
    if b is None or scales is None or (zp_v is not None and (zp is None or zp.dtype != np.uint8)):
        raise unsupported(op, "non-constant or float zero-point weights")
    blocks = -(-K // block)
    nib = np.stack([b & 0x0F, b >> 4], axis=-1).reshape(N, blocks * block)[:, :K]
    q = np.ascontiguousarray(nib.T.astype(np.uint8))
    s = np.ascontiguousarray(scales.astype(np.float32).reshape(N, blocks).T)
    z = None if zp is None else np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(N, -1)[:, :blocks].T.astype(np.uint8)
    return q, s, z


def lower_matmul_nbits(lw: Lowering, op: Op) -> None:
    """Lower one MatMulNBits (4 bits, float32 activations); bias (input 5) added by the kernel or
    after it."""
    K, N, bits, block = (op.attr("K"), op.attr("N"), op.attr("bits", 4), op.attr("block_size"))
    if bits != 4 or lw.dtype(op.operands[0]) != DType.f32:
        raise unsupported(op, f"{bits}-bit weights with {lw.dtype(op.operands[0])} activations")
    if len(op.operands) > 4 and op.operands[4] is not None:
        raise unsupported(op, "g_idx")
    q, s, z = _weights(op, K, N, block)
    a = op.operands[0]
    M = math.prod(lw.shape(a)[:-1])
    y = lw.out(op)
    bias = op.operands[5] if len(op.operands) > 5 else None
    if kernel_for(op.attr("accuracy_level", 0), block, lw.variant) == "qc_gemm_s4a8":
        _lower_w4a8(lw, op, M, N, K, block, q, s, z, bias, y)
        return
    _lower_weight_only(lw, op, M, N, K, block, q, s, z, y)
    if bias is not None:
        binary(lw, op, "QC_ADD", y, lw.buf(bias), y, DType.f32)


def _lower_w4a8(lw: Lowering, op: Op, M: int, N: int, K: int, block: int, q, s, z, bias, y) -> None:
    rep = block // BLOCK
    blocks = -(-K // BLOCK)
    s32 = np.repeat(s, rep, axis=0)[:blocks]
    z32 = None if z is None else np.repeat(z, rep, axis=0)[:blocks]
    variant = lw.variant or "portable"
    packed, ws, wzp = pack_s4a8(q, s32, z32, variant)
    nqa, nsa, nsum = scratch_elems(M, K, variant)
    qa = lw.scratch(DType.i8, nqa)
    sa = lw.scratch(DType.f32, nsa)
    suma = lw.scratch(DType.i32, nsum)
    lw.call(op, "qc_quantize_q8b32", [M, K, Ptr(lw.buf(op.operands[0])), Ptr(qa, const=False), Ptr(sa, const=False),
                                      Ptr(suma, const=False)], "quantize q8 block32")
    zarg = Raw("NULL") if wzp is None else Ptr(lw.weight(wzp))
    barg = Raw("NULL") if bias is None else Ptr(lw.buf(bias))
    lw.call(op, "qc_gemm_s4a8", [M, N, K, Ptr(qa), Ptr(sa), Ptr(suma),
                                 Ptr(lw.weight(np.frombuffer(packed, np.uint8))), Ptr(lw.weight(ws)), zarg, barg,
                                 Ptr(y, const=False)], "gemm s4a8")


def _lower_weight_only(lw: Lowering, op: Op, M: int, N: int, K: int, block: int, q, s, z, y) -> None:
    """qc_matmul_f32_s4: B is N x blocks x (block/2) bytes, element k of a block in the low nibble
    when k is even; scales N x blocks; zero points N x ceil(blocks/2) bytes of nibbles (default 8)."""
    from .packing import pack_s4, pack_s4_zero_points

    if z is None:
        z = np.full(s.shape, 8, np.uint8)
    lw.call(op, "qc_matmul_f32_s4", [M, N, K, Ptr(lw.buf(op.operands[0])),
                                     Ptr(lw.weight(np.frombuffer(pack_s4(q, lw.variant), np.uint8))),
                                     Ptr(lw.weight(s)), Ptr(lw.weight(np.frombuffer(pack_s4_zero_points(z), np.uint8))),
                                     block, Ptr(y, const=False)], "matmul f32 x s4")


@handler("MatMulNBitsRows", domain="qc")
def lower_matmul_nbits_rows(lw: Lowering, op: Op) -> None:
    """qc.MatMulNBitsRows (fuse-matmul-nbits-rows) -> qc_quantize_q8r + qc_gemm_s4a8r: A per
    row, the block scales as ws x wsi, the int32 sums across K (docs/c-kernels.md "W4A8 per
    token")."""
    K, N, block = op.attr("K"), op.attr("N"), op.attr("block_size")
    if lw.dtype(op.operands[0]) != DType.f32 or block % BLOCK:
        raise unsupported(op, f"{lw.dtype(op.operands[0])} activations, block {block}")
    q, s, z = _weights(op, K, N, block)
    blocks = -(-K // BLOCK)
    s32 = np.repeat(s, block // BLOCK, axis=0)[:blocks]
    z32 = None if z is None else np.repeat(z, block // BLOCK, axis=0)[:blocks]
    factored = factor_scales(s32)
    if factored is None:
        raise unsupported(op, "block scales that do not factor as ws x wsi")
    packed, wsi, wzp, ws = pack_s4a8r(q, factored[0], factored[1], z32)
    a = op.operands[0]
    M = math.prod(lw.shape(a)[:-1])
    nqa, nsa, nnu = scratch_elems_r(M, K)
    qa = lw.scratch(DType.i8, nqa)
    sa = lw.scratch(DType.f32, nsa)
    nu = lw.scratch(DType.i16, nnu)
    lw.call(op, "qc_quantize_q8r", [M, K, Ptr(lw.buf(a)), Ptr(qa, const=False), Ptr(sa, const=False),
                                    Ptr(nu, const=False)], "quantize q8 per row")
    bias = op.operands[5] if len(op.operands) > 5 else None
    barg = Raw("NULL") if bias is None else Ptr(lw.buf(bias))
    lw.call(op, "qc_gemm_s4a8r", [M, N, K, Ptr(qa), Ptr(sa), Ptr(nu), Ptr(lw.weight(np.frombuffer(packed, np.uint8))),
                                  Ptr(lw.weight(wsi)), Ptr(lw.weight(wzp)), Ptr(lw.weight(ws)), barg,
                                  Ptr(lw.out(op), const=False)], "gemm s4a8 per row")
