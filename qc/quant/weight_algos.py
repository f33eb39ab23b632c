"""Weight quantization algorithms in numpy: round-to-nearest, GPTQ and AWQ.

Conventions: a weight ``W`` is ``[K, N]`` as a MatMul's second operand ``Y = X @ W`` (``K`` input
features, the reduction dim; ``N`` outputs). Quantization parameters come in ONNX
``DequantizeLinear`` shapes:

==============  ======================  ==========================
granularity     scale / zero point      DequantizeLinear attributes
==============  ======================  ==========================
``tensor``      scalar                  (none)
``channel``     ``[N]``                 ``axis = 1``
``block``       ``[ceil(K / bs), N]``   ``axis = 0, block_size = bs``
==============  ======================  ==========================

Storage ranges (``signed`` picks the int type, ``bits`` its width):

- symmetric, signed, 8 bits and more: ``q`` in ``-(2^(b-1) - 1) .. 2^(b-1) - 1`` (i8: -127..127)
  and ``zp = 0``. The most negative code (-128) is left unused so that the grid is symmetric
  around 0: ``+max`` and ``-max`` are both exact, and integer kernels may negate codes freely.
- symmetric, 4 bits and fewer: ``zp = 0`` and the whole range ``-8 .. 7``; the scale is
  ``max(-min / 8, max / 7)``, so a negative extreme uses the code -8 (as llama.cpp's Q4_0 and
  onnxruntime's int4 quantizer do). Out of 16 codes, leaving one unused costs too much.
- symmetric, unsigned: the same grid shifted by ``zp = 2^(b-1)`` (u8: 1..255 around 128).
- asymmetric: ``[min(w, 0), max(w, 0)]`` over the full storage range; the real range always
  contains 0 (so 0 is exactly representable) and ``zp`` is an integer inside the storage range.

Every scale is a positive float32, rounded *up* from the exact value so that the extreme weights
stay on the grid; an all-zero channel or block gets scale 1 (its codes are all ``zp``).
With these choices round-to-nearest errs by at most ``scale / 2`` per element.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Granularity = Literal["tensor", "channel", "block"]
GRANULARITIES = ("tensor", "channel", "block")


@dataclass(frozen=True)
class IntGrid:
    """The integer codes one weight may take: ``qmin .. qmax`` for the ``symmetric`` / ``signed`` choice."""

    bits: int
    symmetric: bool
    signed: bool

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 16:
            raise ValueError(f"bits must be in 2..16, got {self.bits}")

    @property
    def storage_min(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def storage_max(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def half_range(self) -> int:
        """Symmetric grids use ``zp +- half_range`` (127 for 8 bits, 7 for 4 bits)."""
        return (1 << (self.bits - 1)) - 1

    @property
    def symmetric_zero_point(self) -> int:
        return 0 if self.signed else 1 << (self.bits - 1)

    @property
    def int_dtype(self) -> np.dtype:
        """A numpy dtype that holds every code (int8/uint8 up to 8 bits, int16/uint16 above)."""
        if self.bits <= 8:
            return np.dtype(np.int8 if self.signed else np.uint8)
        return np.dtype(np.int16 if self.signed else np.uint16)


def _round_up_f32(x: np.ndarray) -> np.ndarray:
    """float32 values >= ``x`` (float64), each the nearest such float32."""
    f = x.astype(np.float32)
    low = f.astype(np.float64) < x
    return np.where(low, np.nextafter(f, np.float32(np.inf)), f).astype(np.float32)


def params_from_range(lo: np.ndarray, hi: np.ndarray, grid: IntGrid) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32, > 0) and zero point (int64) per element of the ranges ``lo <= 0 <= hi``."""
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    if grid.symmetric and grid.bits <= 4:
        exact = np.maximum(-lo / (grid.half_range + 1), hi / grid.half_range)
        zp = np.full(exact.shape, grid.symmetric_zero_point, dtype=np.int64)
    elif grid.symmetric:
        exact = np.maximum(-lo, hi) / grid.half_range
        zp = np.full(exact.shape, grid.symmetric_zero_point, dtype=np.int64)
    else:
        exact = (hi - lo) / (grid.storage_max - grid.storage_min)
    scale = _round_up_f32(exact)
    scale = np.where(scale >= np.finfo(np.float32).tiny, scale, np.float32(1.0)).astype(np.float32)
    if not grid.symmetric:
        zp = np.round(grid.storage_min - lo / scale.astype(np.float64)).astype(np.int64)
        zp = np.clip(zp, grid.storage_min, grid.storage_max)
    return scale, zp


def quantize_with(w: np.ndarray, scale: np.ndarray, zp: np.ndarray, grid: IntGrid) -> np.ndarray:
    """Codes of ``w`` for parameters broadcastable to it (round half to even, like QuantizeLinear)."""
    q = np.round(np.asarray(w, dtype=np.float64) / np.asarray(scale, dtype=np.float64)) + zp
    return np.clip(q, grid.storage_min, grid.storage_max).astype(np.int64)


def _check_weight(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"a weight must be 2-D [K, N], got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("the weight holds NaN or Inf")
    return w


def _check_granularity(granularity: str, block_size: int) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}, got '{granularity}'")
    if granularity == "block" and block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")


def _pad_rows(w: np.ndarray, block_size: int) -> np.ndarray:
    """``w`` with zero rows appended up to a multiple of ``block_size`` (zeros never widen a range: it holds 0)."""
    k = w.shape[0]
    pad = -k % block_size
    return np.concatenate([w, np.zeros((pad, w.shape[1]), w.dtype)]) if pad else w


def find_params(w: np.ndarray, grid: IntGrid, granularity: str, block_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) of ``w`` [K, N] in ONNX shapes (see the module docstring)."""
    w = np.asarray(w, dtype=np.float64)
    if granularity == "tensor":
        return params_from_range(w.min(initial=0.0), w.max(initial=0.0), grid)
    if granularity == "channel":
        return params_from_range(w.min(axis=0, initial=0.0), w.max(axis=0, initial=0.0), grid)
    blocks = _pad_rows(w, block_size).reshape(-1, block_size, w.shape[1])
    return params_from_range(blocks.min(axis=1), blocks.max(axis=1), grid)


def expand_params(p: np.ndarray, shape: tuple[int, int], granularity: str, block_size: int = 32) -> np.ndarray:
    """Per-tensor / per-channel / per-block parameters broadcast to a [K, N] weight."""
    p = np.asarray(p)
    if granularity == "tensor":
        return np.broadcast_to(p.reshape(()), shape)
    if granularity == "channel":
        return np.broadcast_to(p.reshape(1, -1), shape)
    return np.repeat(p, block_size, axis=0)[: shape[0]]


def quantize_rtn(w: np.ndarray, bits: int = 8, granularity: Granularity = "channel", block_size: int = 32,
                 symmetric: bool = True, signed: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round-to-nearest quantization of ``w`` [K, N].

    Returns ``(q, scale, zero_point)``: ``q`` [K, N] in int8/uint8 (int16/uint16 above 8 bits),
    ``scale`` float32 and ``zero_point`` of q's dtype, both scalar / [N] / [ceil(K/bs), N].
    """
    w = _check_weight(w)
    _check_granularity(granularity, block_size)
    grid = IntGrid(bits, symmetric, signed)
    scale, zp = find_params(w, grid, granularity, block_size)
    q = quantize_with(w, expand_params(scale, w.shape, granularity, block_size),
                      expand_params(zp, w.shape, granularity, block_size), grid)
    return q.astype(grid.int_dtype), scale, zp.astype(grid.int_dtype)


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | int = 0, axis: int | None = None,
               block_size: int | None = None) -> np.ndarray:
    """Reference DequantizeLinear: ``(q - zero_point) * scale`` in float32.

    ``axis`` None: per tensor; ``axis`` alone: ``scale`` is 1-D along ``axis``; ``axis`` with
    ``block_size``: ``scale`` has q's shape except ``ceil(q.shape[axis] / block_size)`` along ``axis``.
    """
    q = np.asarray(q)
    scale = np.asarray(scale, dtype=np.float32)
    zp = np.asarray(zero_point).astype(np.int64)
    if axis is not None:
        axis = axis % q.ndim
        if block_size:
            scale = np.repeat(scale, block_size, axis=axis).take(range(q.shape[axis]), axis=axis)
            zp = np.broadcast_to(zp, np.asarray(zero_point).shape or ())
            if zp.ndim:
                zp = np.repeat(zp, block_size, axis=axis).take(range(q.shape[axis]), axis=axis)
        else:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
            zp = zp.reshape(shape) if zp.ndim else zp
    return ((q.astype(np.int64) - zp).astype(np.float32) * scale).astype(np.float32)


def _dequantize_kn(q: np.ndarray, scale: np.ndarray, zp: np.ndarray, granularity: str, block_size: int) -> np.ndarray:
    axis = None if granularity == "tensor" else 1 if granularity == "channel" else 0
    return dequantize(q, scale, zp, axis, block_size if granularity == "block" else None)


# -- scale / clip search -------------------------------------------------------------------------
SEARCH_STEPS = 16          # clip ratios 1.0, ..., SEARCH_MIN_RATIO (evenly spaced)
SEARCH_MIN_RATIO = 0.55
SEARCH_REFITS = 2          # least-squares refits of the best candidate's scale (and zero point)


def _groups(w: np.ndarray, granularity: str, block_size: int) -> np.ndarray:
    """``w`` [K, N] as [G, rows, N]: one group per block (zero rows padded), or one group of all K rows."""
    if granularity == "block":
        return _pad_rows(w, block_size).reshape(-1, block_size, w.shape[1])
    return w.reshape(1, *w.shape)


def _codes(g: np.ndarray, scale: np.ndarray, zp: np.ndarray, grid: IntGrid) -> np.ndarray:
    """``q - zp`` (float64) for the groups ``g`` [G, rows, N] and parameters [G, N] (as :func:`quantize_with`)."""
    z = zp[:, None, :].astype(np.float64)
    q = np.round(g / scale.astype(np.float64)[:, None, :])
    q += z
    np.clip(q, grid.storage_min, grid.storage_max, out=q)
    q -= z
    return q


def _weighted_error(g: np.ndarray, d: np.ndarray, scale: np.ndarray, zp: np.ndarray, grid: IntGrid) -> np.ndarray:
    """``sum_k d_k (w - dq(q(w)))^2`` per (group, column) for parameters [G, N]."""
    e = _codes(g, scale, zp, grid)
    e *= scale.astype(np.float64)[:, None, :]
    e -= g
    e *= e
    return np.einsum("grn,gr->gn", e, d[:, :, 0])


def search_groups(g: np.ndarray, d: np.ndarray, grid: IntGrid, steps: int = SEARCH_STEPS,
                  min_ratio: float = SEARCH_MIN_RATIO) -> tuple[np.ndarray, np.ndarray]:
    """The searched (scale, zero point) [G, N] of the groups ``g`` [G, rows, N] with the row
    weights ``d`` [G, rows, 1] (see :func:`search_params`)."""
    g = np.asarray(g, np.float64)
    d = np.broadcast_to(np.asarray(d, np.float64), g.shape[:2] + (1,))
    lo, hi = g.min(axis=1, initial=0.0), g.max(axis=1, initial=0.0)
    best_s, best_z = params_from_range(lo, hi, grid)
    best_err = _weighted_error(g, d, best_s, best_z, grid)

    def consider(s: np.ndarray, z: np.ndarray) -> None:
        nonlocal best_s, best_z, best_err
        err = _weighted_error(g, d, s, z, grid)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_s, best_z = np.where(better, s, best_s), np.where(better, z, best_z)

    for r in np.linspace(1.0, min_ratio, max(2, steps))[1:]:
        consider(*params_from_range(lo * r, hi * r, grid))
    tiny = np.finfo(np.float32).tiny
    for _ in range(SEARCH_REFITS):
        # weighted least squares for the best candidate's codes (llama.cpp's make_qx_quants):
        # symmetric argmin_t sum d (w - t q)^2; asymmetric argmin_(t, b) sum d (w - t q - b)^2 with the
        # zero point then rounded to the integer -b / t
        q = _codes(g, best_s, best_z, grid)
        if not grid.symmetric:
            q += best_z[:, None, :]
        dq = d * q
        sqq, sqw = np.sum(dq * q, axis=1), np.sum(dq * g, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            if grid.symmetric:
                t = np.where(sqq > 0, sqw / np.where(sqq > 0, sqq, 1.0), 0.0)
                z = best_z
            else:
                sd, sq, sw = np.sum(d, axis=1), np.sum(dq, axis=1), np.sum(d * g, axis=1)
                det = sqq * sd - sq * sq
                ok = det > 1e-12 * np.maximum(sqq * sd, tiny)
                safe = np.where(ok, det, 1.0)
                t = np.where(ok, (sqw * sd - sq * sw) / safe, 0.0)
                b = np.where(ok, (sqq * sw - sq * sqw) / safe, 0.0)
                z = np.where(t > 0, np.clip(np.round(-b / np.where(t > 0, t, 1.0)), grid.storage_min,
                                            grid.storage_max), best_z).astype(np.int64)
        t = t.astype(np.float32)
        consider(np.where(t >= tiny, t, best_s).astype(np.float32), np.where(t >= tiny, z, best_z))
    return best_s.astype(np.float32), best_z.astype(np.int64)


def search_params(w: np.ndarray, grid: IntGrid, granularity: str, block_size: int = 32,
                  importance: np.ndarray | None = None, steps: int = SEARCH_STEPS,
                  min_ratio: float = SEARCH_MIN_RATIO) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) of ``w`` [K, N] in ONNX shapes, each block's (or channel's) chosen to
    minimize the activation-weighted error ``sum_k d_k (w_k - dq(q(w_k)))^2``, ``d = importance``
    [K] (the diagonal of ``H = X^T X``, i.e. ``E[x_k^2]`` up to a constant; None: all 1).

    Candidates, for clip ratios ``r`` from 1 down to ``min_ratio`` (``steps`` of them): the
    range ``[r min, r max]`` through :func:`params_from_range` (AWQ's clip search); then, twice,
    the weighted least-squares scale for the best candidate's codes (llama.cpp's
    ``make_qx_quants``; asymmetric: scale and offset, the zero point rounded to an integer).
    Every candidate is scored on the codes it gives itself, so the result is exactly what
    :func:`quantize_with` produces from it. ``r = 1`` is round-to-nearest and wins ties: the
    weighted error is never above RTN's. Per tensor: RTN's parameters.
    """
    w = np.asarray(w, np.float64)
    if granularity == "tensor":
        return find_params(w, grid, granularity, block_size)
    k = w.shape[0]
    d = np.ones(k) if importance is None else np.asarray(importance, np.float64).reshape(-1)
    if d.shape != (k,):
        raise ValueError(f"importance must have {k} entries, got {d.shape}")
    dg = _groups(d[:, None], granularity, block_size)
    scale, zp = search_groups(_groups(w, granularity, block_size), dg, grid, steps, min_ratio)
    return (scale, zp) if granularity == "block" else (scale[0], zp[0])


def quantize_search(w: np.ndarray, importance: np.ndarray | None, bits: int = 4, granularity: Granularity = "block",
                    block_size: int = 32, symmetric: bool = True,
                    signed: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round to nearest with the scales of :func:`search_params`; returns as :func:`quantize_rtn`."""
    w = _check_weight(w)
    _check_granularity(granularity, block_size)
    grid = IntGrid(bits, symmetric, signed)
    scale, zp = search_params(w, grid, granularity, block_size, importance)
    q = quantize_with(w, expand_params(scale, w.shape, granularity, block_size),
                      expand_params(zp, w.shape, granularity, block_size), grid)
    return q.astype(grid.int_dtype), scale, zp.astype(grid.int_dtype)


# -- GPTQ --------------------------------------------------------------------------------------------
def _inverse_hessian_cholesky(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor ``U`` of ``(H + damp * mean(diag H) * I)^-1`` (``U^T U``); damping grows until it is PD."""
    k = h.shape[0]
    mean_diag = float(np.mean(np.diag(h)))
    for attempt in range(8):
        damped = h + (damp * 10.0 ** attempt) * mean_diag * np.eye(k)
        try:
            lower = np.linalg.cholesky(damped)
            lower_inv = np.linalg.inv(lower)
            h_inv = lower_inv.T @ lower_inv
            return np.linalg.cholesky((h_inv + h_inv.T) / 2).T
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("the Hessian stays singular after damping it by up to 1e7 x its mean diagonal")


def gptq(w: np.ndarray, h: np.ndarray, bits: int = 8, granularity: Granularity = "channel", block_size: int = 32,
         symmetric: bool = True, signed: bool = True, damp: float = 0.01, act_order: bool = False,
         lazy_block: int = 128, search: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
    Pre-trained Transformers"): quantize the rows of ``w`` [K, N] one input feature at a time and
    spread each row's rounding error over the rows not yet quantized, weighted by the inverse
    Hessian ``H = sum_r x_r^T x_r`` [K, K] of the MatMul's input, which minimizes
    ``||X W - X Wq||_F^2`` greedily.

    The reference implementation works on PyTorch's ``weight`` [N, K] = ``w.T`` and walks its
    columns; here the same walk goes over the rows of ``w`` (vectorized over the N outputs):

    - dead inputs (``H[k, k] == 0``, never active in calibration) get ``H[k, k] = 1`` and a zero
      weight row; then ``H += damp * mean(diag H) * I`` and ``U = chol(H^-1)`` (upper);
    - rows are processed in lazy blocks of ``lazy_block`` rows: within a block every quantized
      row updates the remaining rows of the block at once, and the block's accumulated errors
      update all later rows in one matrix product;
    - scales / zero points: per tensor and per channel they are computed once from ``w`` (after
      dead rows are zeroed). Per block they are computed when the walk enters a block, from the
      weights as updated so far (the lazy block is rounded to a multiple of ``block_size`` so that
      a quantization block never straddles two lazy blocks and is fully updated when entered).
      With ``act_order`` (rows in order of decreasing ``H[k, k]``) a quantization block's rows are
      visited out of order, so all block parameters are computed up front from ``w`` ("static
      groups"): the groups still follow the original row order, as ONNX block-wise layouts need.
    - ``search``: each scale / zero point is :func:`search_params`'s (the clip / scale search,
      weighted by ``diag H``) instead of the plain range's.

    Returns ``(q, scale, zero_point)`` exactly as :func:`quantize_rtn`.
    """
    w = _check_weight(w)
    _check_granularity(granularity, block_size)
    k, n = w.shape
    h = np.array(h, dtype=np.float64)
    if h.shape != (k, k):
        raise ValueError(f"the Hessian must be [{k}, {k}] for a weight of shape {w.shape}, got {h.shape}")
    if not np.all(np.isfinite(h)):
        raise ValueError("the Hessian holds NaN or Inf")
    grid = IntGrid(bits, symmetric, signed)
    work = np.array(w, dtype=np.float64)

    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    work[dead, :] = 0.0

    static = granularity != "block" or act_order
    diag = np.diag(h).copy()
    scale, zp = None, None
    if static:
        scale, zp = (search_params(work, grid, granularity, block_size, diag) if search
                     else find_params(work, grid, granularity, block_size))
    if granularity == "block":
        if static:
            scale_rows = expand_params(scale, work.shape, "block", block_size).astype(np.float64)
            zp_rows = expand_params(zp, work.shape, "block", block_size)
        else:
            scale = np.empty((-(-k // block_size), n), np.float32)
            zp = np.empty((-(-k // block_size), n), np.int64)
        lazy_block = max(1, math.ceil(lazy_block / block_size)) * block_size
    else:
        scale_rows = np.broadcast_to(np.asarray(scale, np.float64).reshape(1, -1) if scale.ndim else scale, (1, n))
        zp_rows = np.broadcast_to(zp.reshape(1, -1) if zp.ndim else zp, (1, n))

    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    work = work[perm]
    h = h[np.ix_(perm, perm)]
    u = _inverse_hessian_cholesky(h, damp)

    q = np.empty((k, n), np.int64)
    for i1 in range(0, k, lazy_block):
        i2 = min(i1 + lazy_block, k)
        block = work[i1:i2].copy()
        errors = np.empty_like(block)
        u_block = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            row = i1 + i
            original = perm[row]
            if granularity == "block":
                group = original // block_size
                if not static and original % block_size == 0:
                    rows = block[i: i + block_size]
                    if search:
                        s_g, z_g = search_groups(rows[None], diag[row: row + len(rows)][None, :, None], grid)
                        scale[group], zp[group] = s_g[0], z_g[0]
                    else:
                        scale[group], zp[group] = params_from_range(rows.min(axis=0, initial=0.0),
                                                                    rows.max(axis=0, initial=0.0), grid)
                s = scale[group].astype(np.float64) if not static else scale_rows[original]
                z = zp[group] if not static else zp_rows[original]
            else:
                s, z = scale_rows[0], zp_rows[0]
            w_row = block[i]
            q_row = quantize_with(w_row, s, z, grid)
            q[row] = q_row
            err = (w_row - (q_row - z) * s) / u_block[i, i]
            block[i + 1:] -= np.outer(u_block[i, i + 1:], err)
            errors[i] = err
        work[i2:] -= u[i1:i2, i2:].T @ errors

    q_out = np.empty_like(q)
    q_out[perm] = q
    return q_out.astype(grid.int_dtype), np.asarray(scale, np.float32), np.asarray(zp).astype(grid.int_dtype)


# -- AWQ ---------------------------------------------------------------------------------------------
def awq_candidate_scales(abs_mean: np.ndarray, alpha: float) -> np.ndarray:
    """``s = abs_mean^alpha`` (abs_mean clamped to >= 1e-4), normalized by ``sqrt(max(s) * min(s))``, float32."""
    s = np.maximum(np.asarray(abs_mean, np.float64), 1e-4) ** alpha
    s = s / math.sqrt(float(s.max()) * float(s.min()))
    return s.astype(np.float32)


def awq_scaled_error(ws: Sequence[np.ndarray], s: np.ndarray, bits: int, granularity: str, block_size: int,
                     symmetric: bool, signed: bool, x_rows: np.ndarray | None = None,
                     hessian: np.ndarray | None = None) -> float:
    """``sum_W ||x diag(1/s) Q(diag(s) W) - x W||^2`` over the rows ``x`` (or ``tr(E^T H E)`` with a Hessian)."""
    inv_s = (np.float32(1.0) / s.astype(np.float32)).astype(np.float64)
    total = 0.0
    for w in ws:
        scaled = (s.astype(np.float32)[:, None] * np.asarray(w, np.float32))
        q, scale, zp = quantize_rtn(scaled, bits, granularity, block_size, symmetric, signed)
        dq = _dequantize_kn(q, scale, zp, granularity, block_size).astype(np.float64)
        err = inv_s[:, None] * dq - np.asarray(w, np.float64)
        if x_rows is not None:
            total += float(np.sum((x_rows @ err) ** 2))
        else:
            total += float(np.sum((hessian @ err) * err))
    return total


def awq_scales(ws: Sequence[np.ndarray], x_rows: np.ndarray | None, abs_mean: np.ndarray, bits: int = 4,
               granularity: Granularity = "block", block_size: int = 32, symmetric: bool = True,
               signed: bool = True, grid: int = 20, hessian: np.ndarray | None = None) -> np.ndarray:
    """AWQ's scale search (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization").

    The MatMuls ``Y_i = X @ W_i`` that share the input ``X`` become ``Y_i = (X diag(1/s)) @
    Q(diag(s) W_i)``: input features with large activations get their weight rows scaled up
    before rounding, so their relative rounding error shrinks. ``s = abs_mean^alpha`` (normalized
    by ``sqrt(max * min)``) for ``alpha`` in ``0, 1/grid, ..., (grid-1)/grid``; the ``alpha`` with the
    least ``sum_i ||X diag(1/s) Q(diag(s) W_i) - X W_i||^2`` on the rows ``x_rows`` [R, K] wins
    (or, with ``x_rows`` None, the same error over all calibration rows via ``hessian`` [K, K]).
    ``alpha = 0`` is ``s = 1``, plain round-to-nearest, and wins ties: the result is never worse
    than RTN on the rows it was chosen on. Returns ``s`` [K] (float32).
    """
    ws = [_check_weight(w) for w in ws]
    if not ws:
        raise ValueError("awq_scales needs at least one weight")
    k = ws[0].shape[0]
    if any(w.shape[0] != k for w in ws):
        raise ValueError("every weight of an AWQ group must have the same number of input features")
    _check_granularity(granularity, block_size)
    if x_rows is None and hessian is None:
        raise ValueError("awq_scales needs x_rows or a hessian")
    x = np.asarray(x_rows, np.float64).reshape(-1, k) if x_rows is not None else None
    hess = np.asarray(hessian, np.float64) if x is None else None
    abs_mean = np.asarray(abs_mean, np.float64).reshape(-1)
    if abs_mean.shape != (k,):
        raise ValueError(f"abs_mean must have {k} entries, got {abs_mean.shape}")
    best_s = np.ones(k, np.float32)
    best_err = math.inf
    for step in range(max(1, grid)):
        s = awq_candidate_scales(abs_mean, step / max(1, grid))
        err = awq_scaled_error(ws, s, bits, granularity, block_size, symmetric, signed, x, hess)
        if err < best_err:
            best_err, best_s = err, s
    return best_s
