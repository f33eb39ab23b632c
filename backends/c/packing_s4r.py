"""int4 block weights packed for the per-token W4A8 kernel (runtime/qc_gemm_s4a8r.c) and the
numpy model of its arithmetic (the reference the kernel is bit-exact with).

The block scales of a ``w4a8-per-token`` MatMulNBits are two-level: scale[b][n] = ws[n] * wsi[b][n]
with ws a float32 per column and wsi an integer 1..127 (``factor_scales`` recovers them), so that
the kernel sums wsi * (int8 x int4 dot product) in int32 across the whole of K and multiplies by
ws and the row's activation scale once.

Layout (every variant): the columns in super-groups of 16 (N padded with zero columns); per
super-group and block of 32 along K, 256 bytes = 4 groups of 4 columns x 64 bytes in
``packing_s4``'s dotprod order, each nibble the unsigned code q (0..15, not q - 8: the kernel
unpacks with ``v & 0xF`` and ``v >> 4``, the sums stay 1 x the products); wsi int32 and zero
points int8 (0..15; 8 without zero points) per (super-group, block, 16 columns); ws float32 per
column (N padded to 16, zeros).
"""
from __future__ import annotations

import numpy as np

from qc.errors import QCError
from qc.quant.scales import factor_scales

from .packing_s4 import BLOCK, _order

__all__ = ["factor_scales", "pack_s4a8r", "matmul_s4a8r_ref", "quantize_token_ref", "activation_layout",
           "scratch_elems"]

SUPER_COLS = 16
MAX_K = 8192
"""The largest K whose int32 sum is exact: blocks * 127 * 32 * 15 * 127 < 2^31."""
TINY = np.float32(1e-30)


def pack_s4a8r(q: np.ndarray, ws: np.ndarray, wsi: np.ndarray, zp: np.ndarray | None
               ) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    """(packed nibbles, wsi int32, zero points int8, ws float32) for the K x N uint4 codes *q*
    (uint8 0..15), *ws* (N), *wsi* (blocks x N) and zero points (blocks x N, None = 8)."""
    q = np.asarray(q)
    if q.ndim != 2 or q.dtype != np.uint8 or (q.size and q.max() > 15):
        raise QCError(f"pack_s4a8r expects K x N uint8 values 0..15, got {q.dtype} {q.shape}")
    K, N = q.shape
    nb = -(-K // BLOCK)
    S = -(-N // SUPER_COLS)
    Np = S * SUPER_COLS
    codes = np.zeros((Np, nb * BLOCK), np.uint8)
    codes[:N, :K] = q.T
    G = Np // 4
    tiles = codes.reshape(G, 4, nb, BLOCK).transpose(0, 2, 1, 3).reshape(G, nb, 4 * BLOCK)
    slots = tiles[:, :, _order("dotprod")]                     # G, nb, 4, 2, 16
    packed = slots[:, :, :, 0, :] | (slots[:, :, :, 1, :] << 4)
    packed = packed.reshape(S, 4, nb, 4, 16).swapaxes(1, 2)    # super-group, block, group, vector, byte

    def per_col(x: np.ndarray, dtype, fill) -> np.ndarray:
        out = np.full((nb, Np), fill, dtype)
        out[:, :N] = x
        return np.ascontiguousarray(out.reshape(nb, S, SUPER_COLS).swapaxes(0, 1))

    z = np.full((nb, N), 8, np.int64) if zp is None else np.asarray(zp, np.int64).reshape(nb, N)
    w = np.zeros(Np, np.float32)
    w[:N] = np.asarray(ws, np.float32)
    return (np.ascontiguousarray(packed).tobytes(), per_col(np.asarray(wsi, np.int32), np.int32, 0),
            per_col(z.astype(np.int8), np.int8, 0), w)


def scratch_elems(M: int, K: int) -> tuple[int, int, int]:
    """Elements of qc_quantize_q8r's outputs (qa int8, sa float32, nu int16)."""
    nb = -(-K // BLOCK)
    return M * nb * BLOCK, M, M * nb


def quantize_token_ref(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """qc_quantize_q8r in row-major order: (q M x blocks*32 int8, zero padded; scale M float32;
    block sums M x blocks int32). The chain of ``w4a8-per-token`` (passes/_row_scale.py): s =
    Max(ReduceMax(Abs(x)), 1e-30) / 127, q = Round(x / s) (ties to even), float32 throughout."""
    a = np.asarray(a, np.float32)
    M, K = a.shape
    nb = -(-K // BLOCK)
    s = (np.maximum(np.abs(a).max(axis=1) if K else np.zeros(M, np.float32), TINY) / np.float32(127)).astype(np.float32)
    q = np.zeros((M, nb * BLOCK), np.int8)
    q[:, :K] = np.rint((a / s[:, None]).astype(np.float32)).astype(np.int8)
    return q, s, q.reshape(M, nb, BLOCK).astype(np.int32).sum(axis=2)


def activation_layout(qa: np.ndarray, suma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """quantize_token_ref's qa and sums as qc_quantize_q8r stores them: tiles of 8 rows (the
    last one M % 8), block-major within a tile; the sums negated, int16."""
    M, nb = suma.shape
    q3 = qa.reshape(M, nb, BLOCK)
    tiles = [(t, min(8, M - t)) for t in range(0, M, 8)]
    if not tiles:
        return qa.reshape(-1), np.zeros(0, np.int16)
    q = np.concatenate([q3[t:t + r].swapaxes(0, 1).reshape(-1) for t, r in tiles])
    nu = np.concatenate([(-suma[t:t + r]).T.reshape(-1) for t, r in tiles]).astype(np.int16)
    return q, nu


def matmul_s4a8r_ref(a: np.ndarray, q: np.ndarray, ws: np.ndarray, wsi: np.ndarray, zp: np.ndarray | None,
                     bias: np.ndarray | None = None) -> np.ndarray:
    """The output of qc_quantize_q8r + qc_gemm_s4a8r, bit for bit: D = sum_b wsi_b * sum_k qa *
    (q - zp) exactly, then (float(D) * ws) * sa, then + bias (float32). *q* K x N uint4 codes;
    *wsi* / *zp* blocks x N."""
    qa, sa, _ = quantize_token_ref(a)
    K, N = q.shape
    nb = -(-K // BLOCK)
    z = np.full((nb, N), 8, np.int64) if zp is None else np.asarray(zp, np.int64).reshape(nb, N)
    w = np.zeros((nb * BLOCK, N), np.int64)
    w[:K] = (q.astype(np.int64) - np.repeat(z, BLOCK, axis=0)[:K]) * np.repeat(np.asarray(wsi, np.int64), BLOCK,
                                                                                axis=0)[:K]
    d = qa.astype(np.int64) @ w
    if d.size and np.abs(d).max() >= 2 ** 31:
        raise QCError(f"W4A8 per token: an int32 sum overflows (K = {K})")
    cols = (d.astype(np.float32) * np.asarray(ws, np.float32)[None, :]).astype(np.float32)
    out = (cols * sa[:, None]).astype(np.float32)
    if bias is not None:
        out = (out + np.asarray(bias, np.float32)[None, :]).astype(np.float32)
    return np.asarray(out, np.float32)
