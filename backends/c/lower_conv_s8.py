"""int8 Conv units -> integer kernels (runtime/qc_kernels.h), NCHW in and out.

The unit (recognized by lower_quant): DQ(x int8, per tensor) -> Conv <- DQ(w int8 const, zero
point 0, per tensor or per output channel) [+ bias], and its output either float32 or, when the
result goes only to an int8 per-tensor QuantizeLinear, directly or through one Relu or Clip with
constant bounds (``output_q``), int8: Q(clip(y, lo, hi)) = clamp(Q(y), Q(lo), Q(hi)) as Q is
monotone, so the activation is the requantization's clamp and neither op is computed.

    depthwise (group = C = OC):  qc_conv_dw_s8_q8 / _f32, a direct per-channel convolution
        (qc_conv_dw3x3_s8_q8_nhwc, 16 channels a vector, for 3x3 planes narrower than 16)
    SDOT targets (dotprod / i8mm), per image and group: qc_conv1x1_s8_q8 / _f32 on the NCHW planes
        (K x pixels) straight into the NCHW output, after qc_im2row_s8 unless 1x1 stride 1 unpadded
    otherwise, per image and group: qc_im2col_s8 (padding by the zero point; a 1x1 stride-1
        unpadded conv: qc_transpose_s8) -> qc_gemm_s8_q8 (int8 pixels x channels, then
        qc_transpose_s8 to NCHW) or qc_gemm_s8_f32 (float, then a float transpose): the
        requantization / dequantization is the GEMM's fused epilogue

The activation zero point is folded into an int32 bias (-zx * sum_k w[k][n]) for both; the int8
output uses qc_requant_s8's TFLite rounding (the same in qc_gemm_s8_q8) (at most 1 LSB from onnxruntime's float path).
"""
from __future__ import annotations

import numpy as np

from qc.ir import DType, Op, Value

from .lower_gemm_s8 import gemm_s8
from .lower_ops import conv_geometry, copy_nd
from .lowering import Lowering, Ptr, Raw

_ACTS = ("Relu", "Clip")
_SDOT_VARIANTS = ("dotprod", "i8mm")  # kernel variants whose targets have SDOT (qc_conv1x1_s8)
_NEON_VARIANTS = ("neon", "dotprod", "i8mm")
_DW_NHWC_MAX_OW = 15  # narrower depthwise planes vectorize across channels (per-channel setup, row tails)


def _const(v: Value | None) -> np.ndarray | None:
    return None if v is None or v.const is None else v.const.numpy()


def _int8_q(q: Op) -> tuple[float, int] | None:
    """(scale, zero point) of an int8 per-tensor QuantizeLinear with constant parameters, or None."""
    if q.domain not in ("", "ai.onnx") or q.op_type != "QuantizeLinear" or q.attr("block_size", 0):
        return None
    s = _const(q.operands[1])
    zv = q.operands[2] if len(q.operands) > 2 else None
    z = _const(zv)
    if s is None or s.size != 1 or (zv is not None and (z is None or z.size != 1)):
        return None
    if getattr(q.results[0].type, "dtype", None) != DType.i8:
        return None
    return float(s.astype(np.float32).reshape(-1)[0]), 0 if z is None else int(z.reshape(-1)[0])


def _only_user(v: Value, graph_outputs: set[int]) -> Op | None:
    users = list(v.users())
    if len(users) != 1 or id(v) in graph_outputs:
        return None
    return users[0]


def _act_bounds(act: Op) -> tuple[float, float] | None:
    """(lo, hi) of a Relu, or of a Clip whose bounds are constants (absent: unbounded)."""
    if act.domain not in ("", "ai.onnx") or act.op_type not in _ACTS:
        return None
    if act.op_type == "Relu":
        return 0.0, float("inf")
    if len(act.operands) == 1 and (act.attr("min", None) is not None or act.attr("max", None) is not None):
        return float(act.attr("min", -np.inf)), float(act.attr("max", np.inf))  # opset < 11
    bounds = []
    for i, default in ((1, -np.inf), (2, np.inf)):
        v = act.operands[i] if len(act.operands) > i else None
        c = _const(v)
        if v is not None and (c is None or c.size != 1):
            return None
        bounds.append(default if c is None else float(c.astype(np.float32).reshape(-1)[0]))
    return (bounds[0], bounds[1]) if bounds[0] <= bounds[1] else None


def output_q(lw: Lowering, op: Op) -> Op | None:
    """The int8 per-tensor QuantizeLinear that is the only reader of the Conv's result, directly
    or through one Relu / Clip (marked consumed here: it becomes the requantization clamp)."""
    outputs = {id(v) for v in lw.module.graph.outputs}
    user = _only_user(op.results[0], outputs)
    if user is None:
        return None
    act = None
    if _act_bounds(user) is not None and user.operands[0] is op.results[0]:
        act, user = user, _only_user(user.results[0], outputs)
        if user is None:
            return None
    if _int8_q(user) is None or user.operands[0] is not (act or op).results[0]:
        return None
    if act is not None:
        lw.consumed.add(id(act))
    return user


def _float_act(lw: Lowering, op: Op) -> Op | None:
    """The Relu / constant Clip that is the only reader of a float Conv result (marked consumed:
    qc_conv1x1_s8_f32 clamps in its epilogue), or None."""
    outputs = {id(v) for v in lw.module.graph.outputs}
    user = _only_user(op.results[0], outputs)
    if user is None or _act_bounds(user) is None or user.operands[0] is not op.results[0]:
        return None
    if lw.dtype(user.results[0]) != DType.f32:
        return None
    lw.consumed.add(id(user))
    return user


def _clamp(q: Op, act: Op | None) -> tuple[int, int]:
    """int8 [qmin, qmax] of Q(act(y)): the activation's bounds quantized as QuantizeLinear does."""
    sy, zy = _int8_q(q)
    if act is None:
        return -128, 127
    lo, hi = _act_bounds(act)

    def quant(v: float) -> int:
        if np.isinf(v):
            return -128 if v < 0 else 127
        r = float(np.rint(np.float32(v) / np.float32(sy)))
        return int(min(127, max(-128, r + zy)))
    return quant(lo), quant(hi)


def _requant_params(scale: np.ndarray, sy: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel Q31 multipliers and shifts of s_x * s_w[c] / s_y (as lower_quant's epilogue)."""
    from .packing import quantize_multiplier

    real = np.broadcast_to(scale.astype(np.float64) / np.float64(sy), (n,))
    ms = [quantize_multiplier(float(r)) for r in real]
    return np.array([m for m, _ in ms], np.int32), np.array([s for _, s in ms], np.int32)


def lower_conv_s8(lw: Lowering, op: Op, dqa: Op, dqb: Op, sx: float, zx: int, w: np.ndarray,
                  ws: np.ndarray, q: Op | None, fb: np.ndarray | None) -> None:
    """Lower one int8 Conv unit (see the module docstring); fb: the float bias or None."""
    xq = dqa.operands[0]
    act = q.operands[0].producer if q is not None and q.operands[0] is not op.results[0] else None
    OC = w.shape[0]
    group = op.attr("group", 1)
    depthwise = group == lw.shape(xq)[1] == OC and w.shape[1] == 1
    if q is None and not depthwise and lw.variant in _SDOT_VARIANTS:
        act = _float_act(lw, op)
    y = lw.out(q if q is not None else act if act is not None else op)
    xshape = lw.shape(xq)
    N, C, H, W, OH, OW, KH, KW, s, d, p = conv_geometry(lw, op, xshape, w.shape[2:], y.shape)
    geo = (C, H, W, KH, KW, s[0], s[1], p[0], p[1], d[0], d[1], OH, OW)
    scale = (np.float32(sx) * ws.astype(np.float32)).astype(np.float32)
    fb = None if fb is None else fb.reshape(-1).astype(np.float32)
    if q is not None and fb is not None:
        # a float bias before the output Q: exact as an int32 bias only when it is a multiple
        # of the accumulator scale; qc's QDQ gives int32-quantized biases or none, so round it
        # to the accumulator grid as onnxruntime's QLinearConv would
        acc_scale = np.broadcast_to(scale, (OC,)).astype(np.float64)
        ib = np.rint(fb.astype(np.float64) / acc_scale).astype(np.int64)
    else:
        ib = np.zeros(OC, np.int64)
    w64 = w.reshape(OC, -1).astype(np.int64)
    if depthwise:
        bias = (ib - zx * w64.sum(axis=1)).astype(np.int32)
        _depthwise(lw, op, geo, N, xq, zx, w, bias, scale, fb, q, act, y)
        return
    _im2col_gemm(lw, op, geo, N, group, xq, zx, w, ib, scale, fb, q, act, y)


def _depthwise(lw, op, geo, N, xq, zx, w, bias, scale, fb, q, act, y) -> None:
    C, H, W, KH, KW, sh, sw, pt, pl, dh, dw, OH, OW = geo
    PH, PW = (OH - 1) * sh + (KH - 1) * dh + 1, (OW - 1) * sw + (KW - 1) * dw + 1
    stride = ((PW + 15) & ~15) + 16  # QC_DW_STRIDE
    nbytes = PH * stride + 16 + OH * OW * 4  # qc_conv_dw_s8_scratch
    small = (q is not None and (KH, KW, dh, dw) == (3, 3, 1, 1) and sh == sw <= 2 and C % 16 == 0
             and OW <= _DW_NHWC_MAX_OW and lw.variant in _NEON_VARIANTS)
    if small:
        sy, zy = _int8_q(q)
        small = bool(np.all(_requant_params(scale, sy, C)[1] <= 0))
    if small:  # qc_conv_dw3x3_s8_nhwc_scratch
        nbytes = max(nbytes, (PH * PW + OH * OW + 9) * C + 64)
    scratch = lw.scratch(DType.i8, nbytes)
    wbuf = lw.weight(np.ascontiguousarray(w.reshape(C, KH * KW)).astype(np.int8))
    bbuf = lw.weight(bias)
    for n in range(N):
        x_at, y_at = Ptr(lw.buf(xq), n * C * H * W), n * C * OH * OW
        if q is not None:
            sy, zy = _int8_q(q)
            mult, shift = _requant_params(scale, sy, C)
            qmin, qmax = _clamp(q, act)
            if small:
                lw.call(op, "qc_conv_dw3x3_s8_q8_nhwc", [C, H, W, sh, pt, pl, OH, OW, x_at, zx, Ptr(wbuf), Ptr(bbuf),
                                                         Ptr(lw.weight(mult)), Ptr(lw.weight(shift)), zy, qmin, qmax,
                                                         Ptr(scratch, const=False), Ptr(y, y_at, const=False)],
                        "conv dw 3x3 s8 -> s8 nhwc" + (f" ({act.op_type.lower()})" if act is not None else ""))
                continue
            lw.call(op, "qc_conv_dw_s8_q8", [*geo, x_at, zx, Ptr(wbuf), Ptr(bbuf), Ptr(lw.weight(mult)),
                                             Ptr(lw.weight(shift)), zy, qmin, qmax, Ptr(scratch, const=False),
                                             Ptr(y, y_at, const=False)],
                    "conv dw s8 -> s8" + (f" ({act.op_type.lower()})" if act is not None else ""))
        else:
            per_channel = int(scale.size > 1)
            lw.call(op, "qc_conv_dw_s8_f32", [*geo, x_at, zx, Ptr(wbuf), Ptr(bbuf), Ptr(lw.weight(scale)),
                                              per_channel, Ptr(lw.weight(fb)) if fb is not None else Raw("NULL"),
                                              Ptr(scratch, const=False), Ptr(y, y_at, const=False)],
                    "conv dw s8 -> f32")


def _im2col_gemm(lw, op, geo, N, group, xq, zx, w, ib, scale, fb, q, act, y) -> None:
    """Per image and group: im2col, the fused GEMM (requantized or dequantized) into a pixels x
    channels scratch, transpose into the NCHW output."""
    from .packing import pack_s8

    C, H, W, KH, KW, sh, sw, pt, pl, dh, dw, OH, OW = geo
    OC = w.shape[0]
    icg, ocg = C // group, OC // group
    K, M = icg * KH * KW, OH * OW
    pointwise = KH == KW == 1 and (sh, sw, pt, pl, OH, OW) == (1, 1, 0, 0, H, W)
    w2 = w.reshape(OC, K)
    scale = np.broadcast_to(scale, (OC,)).astype(np.float32) if scale.size > 1 else scale
    if lw.variant in _SDOT_VARIANTS:
        _pointwise(lw, op, N, group, xq, zx, w2, ib, scale, fb, q, act, y, M, None if pointwise else geo)
        return
    cols = lw.scratch(DType.i8, M * K)
    tmp = lw.scratch(DType.i8 if q is not None else DType.f32, M * ocg)
    if q is not None:
        sy, zy = _int8_q(q)
        mult, shift = _requant_params(scale, sy, OC)
        qmin, qmax = _clamp(q, act)
    for g in range(group):
        sl = slice(g * ocg, (g + 1) * ocg)
        wg = np.ascontiguousarray(w2[sl].T)  # K x ocg
        packed = lw.weight(np.frombuffer(pack_s8(wg, lw.variant), np.int8))
        bias = (ib[sl] - zx * wg.astype(np.int64).sum(axis=0)).astype(np.int32)
        for n in range(N):
            if pointwise:  # im2col of a 1x1 stride-1 unpadded conv is a transpose
                lw.call(op, "qc_transpose_s8", [icg, M, Ptr(lw.buf(xq), (n * C + g * icg) * M), M,
                                                Ptr(cols, const=False), icg], "transpose s8")
            else:
                lw.call(op, "qc_im2col_s8", [C, H, W, KH, KW, sh, sw, pt, pl, dh, dw, OH, OW, g * icg, icg,
                                             Ptr(lw.buf(xq), n * C * H * W), zx, Ptr(cols, const=False)],
                        "im2col s8")
            out = Ptr(tmp, const=False)
            label = f" ({act.op_type.lower()})" if act is not None else ""
            if q is not None:   # the fused GEMM epilogue: no int32 matrix, no separate pass
                gemm_s8(lw, op, M, ocg, K, Ptr(cols), K, packed, out, ocg, bias, mult=mult[sl], shift=shift[sl],
                        out_zp=zy, qmin=qmin, qmax=qmax, label=label)
            else:
                per_channel = int(scale.size > 1)
                fbg = lw.weight(np.ascontiguousarray(fb[sl])) if fb is not None else None
                gemm_s8(lw, op, M, ocg, K, Ptr(cols), K, packed, out, ocg, bias,
                        scale=scale[sl] if per_channel else scale, fbias=fbg)
            if q is not None:
                lw.call(op, "qc_transpose_s8", [M, ocg, Ptr(tmp), ocg, Ptr(y, (n * OC + g * ocg) * M, const=False), M],
                        "transpose s8")
                continue
            tmp.shape = (M, ocg)
            copy_nd(lw, op, tmp, 0, (ocg, M), (1, ocg), y, (n * OC + g * ocg) * M, kernel="transpose")


def pack_pointwise(w: np.ndarray) -> np.ndarray:
    """An OC x K int8 weight in qc_conv1x1_s8's layout: [ceil(OC/4)][ceil(K/4)][4 oc][4 k], zero padded."""
    oc, k = w.shape
    ocp, kp = -(-oc // 4) * 4, -(-k // 4) * 4
    padded = np.zeros((ocp, kp), np.int8)
    padded[:oc, :k] = w
    return np.ascontiguousarray(padded.reshape(ocp // 4, 4, kp // 4, 4).transpose(0, 2, 1, 3)).reshape(-1)


def _pointwise(lw, op, N, group, xq, zx, w2, ib, scale, fb, q, act, y, M, geo) -> None:
    """SDOT targets: qc_conv1x1_s8_q8 / _f32 per image and group on the K x pixels matrix -- the
    NCHW planes themselves for a 1x1 stride-1 unpadded conv, else qc_im2row_s8's rows (geo: the
    conv geometry) -- straight into the NCHW output; no transposes, no int32 matrix in memory."""
    OC, K = w2.shape
    ocg = OC // group
    if geo is None:
        icg = K
    else:
        C, H, W, KH, KW, sh, sw, pt, pl, dh, dw, OH, OW = geo
        icg = K // (KH * KW)
        rows = lw.scratch(DType.i8, K * M)
        pad_bytes = ((OH - 1) * sh + (KH - 1) * dh + 1) * ((((OW - 1) * sw + (KW - 1) * dw + 1 + 15) & ~15) + 16) + 32
        pad = lw.scratch(DType.i8, pad_bytes)  # qc_im2row_s8_pad_bytes
    C = icg * group
    scratch = lw.scratch(DType.i8, 64 * (-(-K // 4)))  # qc_conv1x1_s8_scratch
    if q is not None:
        sy, zy = _int8_q(q)
        mult, shift = _requant_params(scale, sy, OC)
        qmin, qmax = _clamp(q, act)
    per_channel = int(scale.size > 1)
    clip = None
    if q is None and act is not None:  # a float Relu / Clip fused as the epilogue's clamp
        lo, hi = _act_bounds(act)
        clip = lw.weight(np.array([lo, hi], np.float32))
    plane = M if geo is None else H * W
    for g in range(group):
        sl = slice(g * ocg, (g + 1) * ocg)
        wg = w2[sl]
        wbuf = lw.weight(pack_pointwise(wg))
        bbuf = lw.weight((ib[sl] - zx * wg.astype(np.int64).sum(axis=1)).astype(np.int32))
        for n in range(N):
            x_at = Ptr(lw.buf(xq), (n * C + g * icg) * plane)
            if geo is not None:
                lw.call(op, "qc_im2row_s8", [*geo, g * icg, icg, Ptr(lw.buf(xq), n * C * H * W), zx,
                                             Ptr(pad, const=False), Ptr(rows, const=False)], "im2row s8")
                x_at = Ptr(rows)
            y_at = Ptr(y, (n * OC + g * ocg) * M, const=False)
            what = "conv 1x1" if geo is None else "conv im2row"
            if q is not None:
                lw.call(op, "qc_conv1x1_s8_q8", [K, M, ocg, x_at, Ptr(wbuf), Ptr(bbuf), Ptr(lw.weight(mult[sl])),
                                                 Ptr(lw.weight(shift[sl])), zy, qmin, qmax,
                                                 Ptr(scratch, const=False), y_at],
                        f"{what} s8 -> s8" + (f" ({act.op_type.lower()})" if act is not None else ""))
            else:
                sc = lw.weight(np.ascontiguousarray(scale[sl]) if per_channel else scale)
                fbg = lw.weight(np.ascontiguousarray(fb[sl])) if fb is not None else None
                lw.call(op, "qc_conv1x1_s8_f32", [K, M, ocg, x_at, Ptr(wbuf), Ptr(bbuf), Ptr(sc), per_channel,
                                                  Ptr(fbg) if fbg is not None else Raw("NULL"),
                                                  Ptr(clip) if clip is not None else Raw("NULL"),
                                                  Ptr(scratch, const=False), y_at],
                        f"{what} s8 -> f32" + (f" ({act.op_type.lower()})" if act is not None else ""))
