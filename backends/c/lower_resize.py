"""Resize (opsets 10-19) and the old Upsample -> qc_resize_nearest / qc_resize_axis_f32.

Resize is separable: along each axis, every output index reads input indices with weights that
depend on that axis alone. The tables are computed here, in float32 with onnxruntime's formulas
(upsamplebase.h: coordinate transform, nearest rounding, clamping), so the C does no coordinate
arithmetic::

    y = Resize(x f32[1, 3, 4, 4], scales=[1, 1, 2, 2], mode=nearest)
        -> qc_resize_nearest(4, {1, 3, 8, 8}, {offset tables of the 4 axes}, 4, x, NULL, y)
    y = Resize(x f32[1, 3, 4, 4], scales=[1, 1, 2, 2], mode=linear)
        -> qc_resize_axis_f32(3, 4, 8, 4, 2, {taps}, {weights}, NULL, 0.0f, x, t)    (H: 2 taps per row)
           qc_resize_axis_f32(24, 4, 8, 1, 2, {taps}, {weights}, NULL, 0.0f, t, y)   (W)

Nearest is a gather (any dtype, exact); linear (2 taps) and cubic (4 taps) are float32 only:
quantized models run them between DequantizeLinear and QuantizeLinear (qc's insert-qdq does not
quantize Resize). tf_crop_and_resize writes ``extrapolation_value`` where an axis maps outside
the input (nearest: an offset of -1 in that axis's table; linear / cubic: a mask per axis).
Not supported: antialias, non-constant scales or roi.
"""
from __future__ import annotations

import math

import numpy as np

from qc.ir import DType, Op

from .lower_ops import copy_nd, str_attr
from .lowering import Ints, Lowering, Ptr, Raw, contiguous, handler, unsupported

F32 = np.float32
_COORD = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
          "tf_half_pixel_for_nn", "tf_crop_and_resize")
_NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def original_coords(mode: str, out_len: int, in_len: int, scale: np.float32,
                    roi: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """The input coordinate of every output index along one axis (onnxruntime's float32 formulas)."""
    x = np.arange(out_len, dtype=F32)
    s = F32(scale)
    if mode == "tf_crop_and_resize":
        start, end = F32(roi[0]), F32(roi[1])
        if out_len == 1:
            return np.full(out_len, F32(0.5) * (start + end) * F32(in_len - 1), F32)
        return start * F32(in_len - 1) + (x * (end - start) * F32(in_len - 1)) / F32(out_len - 1)
    if mode == "half_pixel":
        return (x + F32(0.5)) / s - F32(0.5)
    if mode == "half_pixel_symmetric":
        adjustment = F32(out_len) / (s * F32(in_len))
        offset = F32(in_len) / F32(2) * (F32(1) - adjustment)
        return offset + ((x + F32(0.5)) / s) - F32(0.5)
    if mode == "pytorch_half_pixel":
        return (x + F32(0.5)) / s - F32(0.5) if out_len > 1 else np.zeros(out_len, F32)
    if mode == "align_corners":
        return x * F32(in_len - 1) / F32(out_len - 1) if out_len > 1 else np.zeros(out_len, F32)
    if mode == "asymmetric":
        return x / s
    assert mode == "tf_half_pixel_for_nn", mode
    return (x + F32(0.5)) / s


def nearest_index(orig: np.ndarray, mode: str, in_len: int, downsample: bool) -> np.ndarray:
    """Input index per output index: round per nearest_mode ("simple": Upsample and Resize-10), clamp."""
    o = orig.astype(np.float64)  # exact: every float32 is a float64, and so is x + 0.5
    away = np.sign(o) * np.floor(np.abs(o) + 0.5)  # C's round(): halves away from zero
    if mode == "round_prefer_floor":
        idx = np.where(o == np.trunc(o) + 0.5, np.floor(o), away)
    elif mode == "round_prefer_ceil":
        idx = away
    elif mode == "floor":
        idx = np.floor(o)
    elif mode == "ceil":
        idx = np.ceil(o)
    else:  # simple
        idx = np.ceil(o) if downsample else np.trunc(o)
    return np.clip(idx, 0, in_len - 1).astype(np.int64)


def linear_taps(orig: np.ndarray, in_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices [out, 2], weights [out, 2]) of linear interpolation (clamped, as onnxruntime)."""
    c = np.clip(orig, F32(0), F32(in_len - 1)).astype(F32)
    i1 = np.minimum(c.astype(np.int64), in_len - 1)
    i2 = np.minimum(i1 + 1, in_len - 1)
    d1 = np.abs(c - i1.astype(F32))
    d2 = np.abs(c - i2.astype(F32))
    same = i1 == i2
    d1, d2 = np.where(same, F32(0.5), d1), np.where(same, F32(0.5), d2)
    return np.stack([i1, i2], 1), np.stack([d2, d1], 1).astype(F32)


def cubic_taps(orig: np.ndarray, in_len: int, a: float, exclude_outside: bool) -> tuple[np.ndarray, np.ndarray]:
    """(indices [out, 4], weights [out, 4]) of cubic convolution with coefficient *a* (edge-clamped
    taps; with exclude_outside the taps outside the input get weight 0 and the rest renormalize)."""
    base = np.floor(orig.astype(np.float64)).astype(np.int64)
    s = np.abs(orig.astype(np.float64) - base)
    coeffs = np.stack([((a * (s + 1) - 5 * a) * (s + 1) + 8 * a) * (s + 1) - 4 * a,
                       ((a + 2) * s - (a + 3)) * s * s + 1,
                       ((a + 2) * (1 - s) - (a + 3)) * (1 - s) * (1 - s) + 1,
                       ((a * (2 - s) - 5 * a) * (2 - s) + 8 * a) * (2 - s) - 4 * a], 1)
    taps = base[:, None] + np.arange(-1, 3)[None, :]
    if exclude_outside:
        coeffs = np.where((taps >= 0) & (taps < in_len), coeffs, 0.0)
        coeffs = coeffs / coeffs.sum(1, keepdims=True)
    return np.clip(taps, 0, in_len - 1), coeffs.astype(F32)


def _params(lw: Lowering, op: Op, xshape: tuple[int, ...], yshape: tuple[int, ...]) -> dict:
    """mode, coordinate and nearest modes, cubic parameters and the float32 scale of every axis."""
    rank = len(xshape)
    legacy = op.op_type == "Upsample" or lw.opset < 11
    mode = str_attr(op, "mode", "nearest")
    mode = "linear" if mode == "bilinear" else mode
    if mode not in ("nearest", "linear", "cubic"):
        raise unsupported(op, f"mode {mode}")
    if op.attr("antialias", 0):
        raise unsupported(op, "antialias")
    coord = "asymmetric" if legacy else str_attr(op, "coordinate_transformation_mode", "half_pixel")
    if coord not in _COORD:
        raise unsupported(op, f"coordinate_transformation_mode {coord}")
    nearest = "simple" if legacy else str_attr(op, "nearest_mode", "round_prefer_floor")
    if nearest not in _NEAREST + ("simple",):
        raise unsupported(op, f"nearest_mode {nearest}")
    axes = [a + rank if a < 0 else a for a in (op.attr("axes") or range(rank))]
    if op.op_type == "Upsample" and lw.opset < 9:
        given = op.attr("scales")
    else:
        scales_at = 1 if legacy else 2
        sv = op.operands[scales_at] if len(op.operands) > scales_at else None
        given = None if sv is None or (sv.const is not None and sv.const.numpy().size == 0) \
            else lw.const(op, scales_at, "scales")
    scales = [F32(1)] * rank
    if given is not None:
        for a, s in zip(axes, np.asarray(given, F32).reshape(-1)):
            scales[a] = F32(s)
    else:  # sizes: the scale is out / in (one scale for all axes under keep_aspect_ratio_policy)
        policy = str_attr(op, "keep_aspect_ratio_policy", "stretch")
        sizes = [yshape[a] for a in axes] if policy == "stretch" else lw.const(op, 3, "sizes").reshape(-1).tolist()
        ratios = [F32(n) / F32(xshape[a]) for a, n in zip(axes, sizes)]
        for a, r in zip(axes, ratios):
            scales[a] = r if policy == "stretch" else (min(ratios) if policy == "not_larger" else max(ratios))
    rois = [(0.0, 1.0)] * rank
    if coord == "tf_crop_and_resize":
        roi = lw.const(op, 1, "roi")
        if roi is None or roi.size != 2 * len(axes):
            raise unsupported(op, "tf_crop_and_resize without a roi of 2 values per axis")
        r = roi.astype(F32).reshape(2, len(axes))
        for k, a in enumerate(axes):
            rois[a] = (float(r[0, k]), float(r[1, k]))
    return {"mode": mode, "coord": coord, "nearest": nearest, "scales": scales, "rois": rois,
            "extrapolation": float(op.attr("extrapolation_value", 0.0)),
            "a": float(op.attr("cubic_coeff_a", -0.75)), "exclude": bool(op.attr("exclude_outside", 0))}


@handler("Resize", "Upsample")
def _resize(lw: Lowering, op: Op) -> None:
    x = op.operands[0]
    xshape = lw.shape(x)
    y = lw.out(op)
    p = _params(lw, op, xshape, y.shape)
    dt = lw.dtype(x)
    if p["mode"] != "nearest" and dt != DType.f32:
        raise unsupported(op, f"mode {p['mode']} on {dt} data; only float32 (nearest: any dtype)")
    if y.size == 0:
        return
    if all(s == 1 for s in p["scales"]) and y.shape == xshape and p["coord"] != "tf_crop_and_resize":
        lw.call(op, "qc_copy", [y.nbytes, Ptr(lw.buf(x)), Ptr(y, const=False)], "resize (copy)")
        return
    origs = [original_coords(p["coord"], n_out, n_in, s, r)
             for n_out, n_in, s, r in zip(y.shape, xshape, p["scales"], p["rois"])]
    if p["mode"] == "nearest":
        _nearest(lw, op, x, y, xshape, origs, p)
    else:
        _separable(lw, op, x, y, xshape, origs, p)


def _outside(origs, xshape, p) -> list[np.ndarray]:
    """Per axis, the output indices that tf_crop_and_resize maps outside the input (extrapolated)."""
    if p["coord"] != "tf_crop_and_resize":
        return [np.zeros(len(o), bool) for o in origs]
    return [(o < 0) | (o > F32(n - 1)) for o, n in zip(origs, xshape)]


def _nearest(lw: Lowering, op: Op, x, y, xshape, origs, p) -> None:
    st = contiguous(xshape)
    tables = [nearest_index(o, p["nearest"], n_in, bool(s < 1)) for o, n_in, s in zip(origs, xshape, p["scales"])]
    es = np.dtype(y.dtype.numpy).itemsize
    outside = _outside(origs, xshape, p)
    if any(m.any() for m in outside):
        idx = tuple(int(v) for t, s, m in zip(tables, st, outside) for v in np.where(m, -1, t * s).tolist())
        fill = lw.weight(np.array(p["extrapolation"], dtype=y.dtype.numpy))
        lw.call(op, "qc_resize_nearest", [len(xshape), Ints(y.shape), Ints(idx), es, Ptr(lw.buf(x)), Ptr(fill),
                                          Ptr(y, const=False)], "resize nearest")
        return
    if all(len(t) == n and np.all(t == np.arange(n)) for t, n in zip(tables, xshape)):
        lw.call(op, "qc_copy", [y.nbytes, Ptr(lw.buf(x)), Ptr(y, const=False)], "resize (copy)")
        return
    if all(np.all(t == t[0] + np.arange(len(t)) * (t[1] - t[0] if len(t) > 1 else 0)) for t in tables):
        # every axis is a strided slice (e.g. downsampling by 2): a plain strided copy
        steps = [int(t[1] - t[0]) if len(t) > 1 else 0 for t in tables]
        offset = sum(int(t[0]) * s for t, s in zip(tables, st))
        copy_nd(lw, op, lw.buf(x), offset, y.shape, [k * s for k, s in zip(steps, st)], y, kernel="resize nearest")
        return
    idx = tuple(int(v) for t, s in zip(tables, st) for v in (t * s).tolist())
    lw.call(op, "qc_resize_nearest", [len(xshape), Ints(y.shape), Ints(idx), es, Ptr(lw.buf(x)), Raw("NULL"),
                                      Ptr(y, const=False)], "resize nearest")


def _identity(idx: np.ndarray, w: np.ndarray, n_in: int) -> bool:
    """Whether the taps copy the axis unchanged (every output j reads input j with weight 1)."""
    if len(idx) != n_in:
        return False
    m = np.zeros((n_in, n_in), np.float64)
    np.add.at(m, (np.repeat(np.arange(n_in), idx.shape[1]), idx.reshape(-1)), w.reshape(-1).astype(np.float64))
    return bool(np.array_equal(m, np.eye(n_in)))


def _separable(lw: Lowering, op: Op, x, y, xshape, origs, p) -> None:
    """One qc_resize_axis_f32 per axis that changes, shrinking axes first (smaller intermediates)."""
    steps = []
    for d, (o, n_in, out) in enumerate(zip(origs, xshape, _outside(origs, xshape, p))):
        idx, w = linear_taps(o, n_in) if p["mode"] == "linear" else cubic_taps(o, n_in, p["a"], p["exclude"])
        if out.any() or not _identity(idx, w, n_in):
            steps.append((len(o) / n_in, d, idx, w, out))
    steps.sort(key=lambda s: (s[0], s[1]))
    if not steps:
        lw.call(op, "qc_copy", [y.nbytes, Ptr(lw.buf(x)), Ptr(y, const=False)], "resize (copy)")
        return
    shape = list(xshape)
    src = lw.buf(x)
    for k, (_, d, idx, w, out) in enumerate(steps):
        n_in, n_out = shape[d], len(idx)
        shape[d] = n_out
        dst = y if k == len(steps) - 1 else lw.scratch(DType.f32, math.prod(shape))
        lw.call(op, "qc_resize_axis_f32", [math.prod(shape[:d]), n_in, n_out, math.prod(shape[d + 1:]), idx.shape[1],
                                           Ints(tuple(int(v) for v in idx.reshape(-1))),
                                           Ptr(lw.weight(np.ascontiguousarray(w, F32))),
                                           Ints(tuple(out.astype(int).tolist())) if out.any() else Raw("NULL"),
                                           p["extrapolation"], Ptr(src), Ptr(dst, const=False)],
                f"resize {p['mode']} f32")
        src = dst
