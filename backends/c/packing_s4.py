"""int4 block weights packed for the W4A8 kernels (runtime/qc_gemm_s4a8*.c) and the numpy model
of their arithmetic (the reference the kernels are bit-exact with).

The weights of a MatMulNBits (uint4 q, zero point zp, default 8, one float scale per block of
32 along K and per column n) are stored as signed nibbles s = q - 8 (two's complement, -8..7)
with zp' = zp - 8 per (block, column), so that s - zp' = q - zp. The columns are grouped by 4
(N padded with zero columns); each (group, block) is 64 bytes = 128 nibbles, ordered for the
variant so that one 16-byte load gives two SIMD operands (low nibbles: ``v << 4``, high
nibbles: ``v & 0xF0``, both 16 x the value; the kernels shift the int32 sums right by 4):

- portable (every variant without dotprod / i8mm): column c of the group in bytes 16c..16c+15,
  byte j holding k = j (low nibble) and k = j + 16 (high nibble) of the block.
- dotprod (SDOT): 16-byte vector v (0..3) holds in its low nibbles operand O_v and in its high
  nibbles O_{v+4}, where byte 4c + i of O_g is k = 4g + i of column c (SDOT by element: lane g
  of the activation's k 0..15, or lane g - 4 of its k 16..31). The groups come in super-groups
  of 4 (16 columns, N padded to 16): per super-group and block, the 4 groups' 64 bytes one after
  the other (256 bytes), and their scales and zero points (16 each), so that a decode step over
  16 columns reads each block's weights, scales and zero points from one place.
- i8mm (SMMLA): vector v = 2h + p holds in its low nibbles P_{p,h} and in its high nibbles
  P_{p,h+2}, where P_{p,j} is 8 k (8j..8j+7) of column 2p then the same 8 k of column 2p + 1.

Scales and zero points are (group, block, 4) arrays (dotprod: super-group, block, group, 4); the
SDOT / SMMLA layouts store 16 * zp' (their int32 sums are 16 x the products until the float
conversion divides by 16, exactly). Everything is deterministic.
"""
from __future__ import annotations

import numpy as np

from qc.errors import QCError

BLOCK = 32
GROUP = 4
SUPER = 4   # dotprod: groups per super-group


def layout(variant: str) -> str:
    """The packed layout the W4A8 kernel of a qc_gemm_s8 variant reads."""
    return variant if variant in ("dotprod", "i8mm") else "portable"


def _order(lay: str) -> np.ndarray:
    """For each of the 128 nibble slots of a (group, block) tile, the (column, k) index c * 32 + k,
    slots listed as (vector v, low/high half h, byte j) -> slot 32 v + 16 h + j."""
    idx = np.zeros((4, 2, 16), np.int64)
    for v in range(4):
        for h in range(2):
            for j in range(16):
                if lay == "portable":
                    c, k = v, j + 16 * h
                elif lay == "dotprod":
                    g = v + 4 * h
                    c, k = j // 4, 4 * g + j % 4
                else:
                    p, hh = v % 2, v // 2 + 2 * h
                    c, k = 2 * p + j // 8, 8 * hh + j % 8
                idx[v, h, j] = c * BLOCK + k
    return idx


def groups(N: int, variant: str) -> int:
    """Column groups of 4 the packed weights hold: N / 4 rounded up; the dotprod layout in whole
    super-groups of 4 groups (16 columns)."""
    G = -(-N // GROUP)
    return -(-G // SUPER) * SUPER if layout(variant) == "dotprod" else G


def pack_s4a8(q: np.ndarray, scales: np.ndarray, zp: np.ndarray | None, variant: str
              ) -> tuple[bytes, np.ndarray, np.ndarray | None]:
    """(packed nibbles, scales float32, zp' or 16 zp' int8 or None) for the K x N uint4 weights *q*
    (values 0..15, uint8), *scales* (blocks x N) and zero points (blocks x N uint8, None = 8
    everywhere). Scales and zero points are (G, blocks, 4) arrays, the dotprod layout's
    (G / 4, blocks, 4, 4): super-group, block, group, column, as its nibble tiles."""
    q = np.asarray(q)
    if q.ndim != 2 or q.dtype != np.uint8 or (q.size and q.max() > 15):
        raise QCError(f"pack_s4a8 expects K x N uint8 values 0..15, got {q.dtype} {q.shape}")
    K, N = q.shape
    nb, G = -(-K // BLOCK), groups(N, variant)
    s = np.zeros((G * GROUP, nb * BLOCK), np.int16)
    s[:N, :K] = q.T.astype(np.int16) - 8
    tiles = s.reshape(G, GROUP, nb, BLOCK).transpose(0, 2, 1, 3).reshape(G, nb, GROUP * BLOCK)
    slots = tiles[:, :, _order(layout(variant))]          # G, nb, 4, 2, 16
    nib = (slots & 0x0F).astype(np.uint8)
    packed = nib[:, :, :, 0, :] | (nib[:, :, :, 1, :] << 4)
    sc = np.zeros((nb, G * GROUP), np.float32)
    sc[:, :N] = np.asarray(scales, np.float32).reshape(nb, N)
    sc = sc.reshape(nb, G, GROUP).transpose(1, 0, 2)
    zq = None
    if zp is not None:
        zq = np.zeros((nb, G * GROUP), np.int8)
        zq[:, :N] = (np.asarray(zp).reshape(nb, N).astype(np.int16) - 8) * (1 if layout(variant) == "portable" else 16)
        zq = zq.reshape(nb, G, GROUP).transpose(1, 0, 2)
    if layout(variant) == "dotprod":   # (G, nb, ...) -> (G / 4, nb, 4, ...)
        def sup(x: np.ndarray) -> np.ndarray:
            return x.reshape(G // SUPER, SUPER, nb, *x.shape[2:]).swapaxes(1, 2)
        packed, sc = sup(packed), sup(sc)
        zq = None if zq is None else sup(zq)
    return (np.ascontiguousarray(packed).tobytes(), np.ascontiguousarray(sc),
            None if zq is None else np.ascontiguousarray(zq))


def scratch_elems(M: int, K: int, variant: str) -> tuple[int, int, int]:
    """Elements of qc_quantize_q8b32's three outputs (qa int8, sa float32, suma int32) for the
    variant: M x blocks x 32, M x blocks, M x blocks; i8mm: row pairs (M rounded up to even),
    sa and suma twice (see ``activation_layout``)."""
    nb = -(-K // BLOCK)
    if layout(variant) != "i8mm":
        return M * nb * BLOCK, M * nb, M * nb
    Mp = M + M % 2
    return Mp * nb * BLOCK, 2 * Mp * nb, 2 * Mp * nb


def activation_layout(qa: np.ndarray, sa: np.ndarray, suma: np.ndarray, variant: str
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """quantize_rows_ref's arrays as qc_quantize_q8b32 stores them for the variant. i8mm: per row
    pair and block, 64 bytes = for each 8 k the 8 of the first row then the 8 of the second (an
    odd M's last pair has a zero second row), sa / suma as [r0 r0 r1 r1]. dotprod: tiles of 8
    rows (the last one M % 8), block-major within a tile (row 8t + i, block b at index
    8t * blocks + b * r + i, r the tile's rows); suma negated as int16 in the first half of the
    tile's words (int16 index 2 * 8t * blocks + b * r + i), the second half zero. Portable: as
    they are."""
    if layout(variant) == "dotprod":
        M, nb = sa.shape
        q3 = qa.reshape(M, nb, BLOCK)
        tiles = [(t, min(8, M - t)) for t in range(0, M, 8)]

        def tiled(x: np.ndarray) -> np.ndarray:
            return np.concatenate([x[t:t + r].swapaxes(0, 1).reshape(-1) for t, r in tiles]) if M else x.reshape(-1)

        nu = np.zeros(2 * M * nb, np.int16)
        for t, r in tiles:
            nu[2 * t * nb:2 * t * nb + r * nb] = -suma[t:t + r].T.reshape(-1)
        return tiled(q3), tiled(sa), nu.view(np.int32)
    if layout(variant) != "i8mm":
        return qa, sa, suma
    M, nb = sa.shape
    Mp = M + M % 2
    q = np.zeros((Mp, nb, 4, 8), np.int8)
    q[:M] = qa.reshape(M, nb, 4, 8)
    q = q.reshape(Mp // 2, 2, nb, 4, 8).transpose(0, 2, 3, 1, 4)   # pair, block, chunk, row, 8
    s = np.zeros((Mp, nb), np.float32)
    s[:M] = sa
    u = np.zeros((Mp, nb), np.int32)
    u[:M] = suma

    def dup(x: np.ndarray) -> np.ndarray:
        return np.repeat(x.reshape(Mp // 2, 2, nb).transpose(0, 2, 1), 2, axis=2)

    return np.ascontiguousarray(q).reshape(-1), np.ascontiguousarray(dup(s)).reshape(-1), \
        np.ascontiguousarray(dup(u)).reshape(-1)


def quantize_rows_ref(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """qc_quantize_q8b32: (q M x blocks*32 int8 (zero padded), scale M x blocks float32, sum of q
    M x blocks int32). Per row and block of 32 along K: amax = max |x|, scale = amax / 127,
    q = round half to even (x * (127 / amax)) (0 when amax is 0), float32 throughout."""
    a = np.asarray(a, np.float32)
    M, K = a.shape
    nb = -(-K // BLOCK)
    x = np.zeros((M, nb * BLOCK), np.float32)
    x[:, :K] = a
    x = x.reshape(M, nb, BLOCK)
    amax = np.max(np.abs(x), axis=2)
    scale = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax != 0, np.float32(127) / np.where(amax != 0, amax, 1), 0).astype(np.float32)
    q = np.rint((x * inv[:, :, None]).astype(np.float32)).astype(np.int8)
    return q.reshape(M, nb * BLOCK), scale, q.astype(np.int32).sum(axis=2).astype(np.int32)


def fma_f32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """fmaf(a, b, c) elementwise on float32 arrays: a * b + c rounded once to float32 (C's fmaf,
    NEON's FMLA). a * b is exact in float64; the float64 sum s is made round-to-odd with its
    exact error (TwoSum), which makes the final rounding to float32 the single correct one
    (round-to-odd at 53 >= 24 + 2 bits, then to nearest: no double rounding)."""
    a, b, c = (np.asarray(x, np.float32).astype(np.float64) for x in (a, b, c))
    p = a * b
    s = p + c
    bb = s - p
    e = (p - (s - bb)) + (c - bb)
    even = (s.view(np.int64) & 1) == 0
    s = np.where((e != 0) & even, np.nextafter(s, np.where(e > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)


def matmul_s4a8_ref(a: np.ndarray, q: np.ndarray, scales: np.ndarray, zp: np.ndarray | None,
                    bias: np.ndarray | None = None) -> np.ndarray:
    """The output of qc_quantize_q8b32 + qc_gemm_s4a8, bit for bit: per block the exact int32
    d = sum_k qa * (q - zp), then acc = fmaf(float(d) * ws, sa, acc) in block order (float32:
    a product, then one fused multiply-add, FMLA), then + bias. *q* K x N uint4 values, *scales* / *zp* blocks x N."""
    qa, sa, _ = quantize_rows_ref(a)
    K, N = q.shape
    nb = sa.shape[1]
    w = np.zeros((nb * BLOCK, N), np.int64)
    z = np.full((nb, N), 8, np.int64) if zp is None else np.asarray(zp, np.int64).reshape(nb, N)
    w[:K] = q.astype(np.int64) - np.repeat(z, BLOCK, axis=0)[:K]
    ws = np.asarray(scales, np.float32).reshape(nb, N)
    acc = np.zeros((a.shape[0], N), np.float32)
    for b in range(nb):
        d = qa[:, b * BLOCK:(b + 1) * BLOCK].astype(np.int64) @ w[b * BLOCK:(b + 1) * BLOCK]
        acc = fma_f32((d.astype(np.float32) * ws[b][None, :]).astype(np.float32), sa[:, b:b + 1], acc)
    if bias is not None:
        acc = (acc + np.asarray(bias, np.float32)[None, :]).astype(np.float32)
    return acc
