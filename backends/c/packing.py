"""Weight packing and the requantization model of qc's C kernels (runtime/qc_kernels.h).

The packed layouts are private to the kernels; docs/c-kernels.md describes them. Everything
here is deterministic: the same weights and variant give the same bytes.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from qc.errors import QCError

VARIANTS = ("portable", "neon", "dotprod", "i8mm", "mve", "dsp")

_MACROS = {
    "portable": [],
    "neon": ["-DQC_KERNEL_NEON"],
    "dotprod": ["-DQC_KERNEL_DOTPROD"],
    "i8mm": ["-DQC_KERNEL_I8MM"],
    "mve": ["-DQC_KERNEL_MVE"],
    "dsp": ["-DQC_KERNEL_DSP"],
}


def variant_for(features: Sequence[str]) -> str:
    """The qc_gemm_s8 variant for a target's ISA feature list (qc/targets/*.toml `features`)."""
    fs = set(features)
    for feature in ("i8mm", "dotprod", "neon", "mve", "dsp"):
        if feature in fs:
            return feature
    return "portable"


def variant_macros(variant: str) -> list[str]:
    """The -D flags selecting *variant* when compiling runtime/qc_*.c."""
    return list(_MACROS[_check_variant(variant)])


def _check_variant(variant: str) -> str:
    if variant not in _MACROS:
        raise QCError(f"unknown C kernel variant {variant!r}",
                      hint=f"use one of {', '.join(VARIANTS)}")
    return variant


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def packed_size_s8(K: int, N: int, variant: str) -> int:
    """Bytes of pack_s8's output for a K x N int8 weight matrix."""
    _check_variant(variant)
    if variant in ("neon", "dotprod"):
        return _round_up(N, 4 if variant == "dotprod" else 1) * _round_up(K, 16)
    if variant == "i8mm":
        return _round_up(N, 2) * _round_up(K, 16)
    if variant == "mve":
        return _round_up(N, 4) * K
    return K * N


PANEL = {"dotprod": 16, "i8mm": 16, "mve": 4}


def panel_width(variant: str) -> int:
    """Columns per packed panel (qc_gemm_s8_panel()): a column slice must start at a multiple."""
    return PANEL.get(_check_variant(variant), 1)


def wp_offset(n0: int, K: int, variant: str) -> int:
    """Byte offset of column n0 (a multiple of panel_width) in pack_s8's output (qc_gemm_s8_wp_offset)."""
    if n0 % panel_width(variant):
        raise QCError(f"column slice start {n0} is not a multiple of the {variant} panel width "
                      f"{panel_width(variant)}")
    return n0 * (_round_up(K, 16) if variant in ("neon", "dotprod", "i8mm") else K)


def _panels(wt: np.ndarray, group: int, per: int) -> bytes:
    """wt: N x Kp (padded), N a multiple of group. Panels of 16 columns (the last one narrower);
    inside a panel, for each block of `per` k, the panel's groups of `group` columns side by
    side, each group's block stored column-major (column, then its `per` k)."""
    N, Kp = wt.shape
    parts = []
    for n0 in range(0, N, 16):
        p = wt[n0:n0 + 16]                                   # w x Kp
        w = p.shape[0]
        # (group g, column j, kblock q, k i) -> (q, g, j, i)
        parts.append(p.reshape(w // group, group, Kp // per, per).transpose(2, 0, 1, 3).tobytes())
    return b"".join(parts)


def pack_s8(w: np.ndarray, variant: str) -> bytes:
    """Pack an int8 K x N weight matrix for qc_gemm_s8 compiled as *variant*.

    portable/dsp: W transposed (N rows of K bytes). neon: the same with each row zero-padded
    to Kp = roundup(K, 16). mve: N padded to 4; per group of 4 columns, each block of 16 k as
    the 4 columns' 16 bytes in turn, then each column's K tail. dotprod: N padded to 4, panels of 16 columns (the last
    4, 8 or 12 wide); per k-quad q, the panel's 4-column groups side by side, each 16 bytes with
    byte 4j + i = W[4q + i][4g + j] (the lane-indexed SDOT operand). i8mm: N padded to 2, K to
    16, panels of 16 columns (8 pairs); per k-block b of 8, the panel's column pairs side by
    side, each 16 bytes = W[8b..8b+7][2p] then W[8b..8b+7][2p+1] (the SMMLA 8x2 operand).
    Zeros in every padding.
    """
    _check_variant(variant)
    w = np.asarray(w)
    if w.ndim != 2 or w.dtype != np.int8:
        raise QCError(f"pack_s8 expects a 2-D int8 K x N matrix, got {w.dtype} {w.shape}")
    K, N = w.shape
    wt = np.ascontiguousarray(w.T)
    if variant in ("neon", "dotprod", "i8mm"):
        group = {"neon": 1, "dotprod": 4, "i8mm": 2}[variant]
        pad = np.zeros((_round_up(N, group), _round_up(K, 16)), np.int8)
        pad[:N, :K] = wt
        per = 4 if variant == "dotprod" else 8
        data = pad.tobytes() if variant == "neon" else _panels(pad, group, per)
    elif variant == "mve":
        pad = np.zeros((_round_up(N, 4), K), np.int8)
        pad[:N] = wt
        full = K // 16 * 16
        groups = pad.reshape(-1, 4, K)
        g = len(groups)
        body = groups[:, :, :full].reshape(g, 4, full // 16, 16).transpose(0, 2, 1, 3).reshape(g, -1)
        data = np.concatenate([body, groups[:, :, full:].reshape(g, -1)], axis=1).tobytes()
    else:
        data = wt.tobytes()
    assert len(data) == packed_size_s8(K, N, variant)
    return data


def _nibbles(q: np.ndarray, what: str) -> np.ndarray:
    q = np.asarray(q)
    if q.dtype == np.int8:
        if q.size and (q.min() < -8 or q.max() > 7):
            raise QCError(f"{what}: int8 values must lie in -8..7 for int4 packing")
        return (q.astype(np.int16) + 8).astype(np.uint8)
    if q.dtype == np.uint8:
        if q.size and q.max() > 15:
            raise QCError(f"{what}: uint8 values must lie in 0..15 for uint4 packing")
        return q
    raise QCError(f"{what}: expected int8 (-8..7) or uint8 (0..15) values, got {q.dtype}")


def _pack_nibbles(nib: np.ndarray) -> bytes:
    flat = nib.reshape(-1).astype(np.uint8)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


def pack_s4(q: np.ndarray, variant: str) -> bytes:
    """Pack K x N int4 weights, two per byte (row-major, even element in the low nibble).

    int8 input (-8..7) is stored excess-8; uint8 input (0..15) as is. With uint8 weights always
    pass zero points (pack_s4_zero_points), since zps == NULL means signed weights.
    """
    _check_variant(variant)
    q = np.asarray(q)
    if q.ndim != 2:
        raise QCError(f"pack_s4 expects a 2-D K x N matrix, got shape {q.shape}")
    return _pack_nibbles(_nibbles(q, "pack_s4"))


def pack_s4_zero_points(zp: np.ndarray) -> bytes:
    """Pack the (ceil(K/block)) x N zero points like pack_s4 (same dtype as the weights)."""
    return _pack_nibbles(_nibbles(np.asarray(zp), "pack_s4_zero_points"))


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier: (Q31 multiplier, shift) with real = mult * 2^(shift - 31)."""
    if not math.isfinite(real) or real < 0:
        raise QCError(f"requantization scale {real!r} must be finite and >= 0")
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = _round_half_away(q * (1 << 31))
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        raise QCError(f"requantization scale {real!r} is too large (shift {shift} > 30)")
    return int(q_fixed), int(shift)


def _round_half_away(x: float) -> int:
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def _wrap32(x: np.ndarray) -> np.ndarray:
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def multiply_by_quantized_multiplier(acc: np.ndarray, mult, shift) -> np.ndarray:
    """TFLite MultiplyByQuantizedMultiplier on int64 arrays (broadcasting); int32 wrap on x << shift."""
    x = np.asarray(acc, np.int64)
    m = np.asarray(mult, np.int64)
    s = np.asarray(shift, np.int64)
    left = np.minimum(np.maximum(s, 0), 31)
    right = np.minimum(np.maximum(-s, 0), 31)
    x = _wrap32(x << left)
    # SaturatingRoundingDoublingHighMul
    ab = x * m
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    num = ab + nudge
    high = np.where(num >= 0, num >> 31, -((-num) >> 31))   # truncating division by 2^31
    high = np.where((x == -(1 << 31)) & (m == -(1 << 31)), (1 << 31) - 1, high)
    # RoundingDivideByPOT
    mask = (np.int64(1) << right) - 1
    remainder = high & mask
    threshold = (mask >> 1) + (high < 0)
    return (high >> right) + (remainder > threshold)


def requantize_ref(acc: np.ndarray, mult, shift, zp: int, qmin: int = -128,
                   qmax: int = 127) -> np.ndarray:
    """The numpy model of qc_requant_s8: clamp(zp + MBQM(acc, mult, shift), qmin, qmax) as int8.

    *acc* already includes the bias (int32 range); *mult* / *shift* broadcast against it (a
    scalar, or one per column for per-channel).
    """
    v = multiply_by_quantized_multiplier(acc, mult, shift) + np.int64(zp)
    return np.clip(v, qmin, qmax).astype(np.int8)
