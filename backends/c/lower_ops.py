"""Float32 and data-movement ops -> qc_ops.h kernel calls (one handler per ONNX op type)."""
from __future__ import annotations

import math

import numpy as np

from qc.ir import DType, Op

from . import lower_sgemm
from .lowering import (  # noqa: F401 - HANDLERS: the registry, re-exported for tests/c_backend
    HANDLERS,
    Ints,
    Lowering,
    Ptr,
    Raw,
    broadcast_strides,
    coalesce,
    contiguous,
    handler,
    unsupported,
)

_BINARY = {"Add": "QC_ADD", "Sub": "QC_SUB", "Mul": "QC_MUL", "Div": "QC_DIV", "Pow": "QC_POW",
           "Max": "QC_MAX", "Min": "QC_MIN", "PRelu": "QC_PRELU", "Equal": "QC_EQ", "Less": "QC_LT",
           "Greater": "QC_GT", "LessOrEqual": "QC_LE", "GreaterOrEqual": "QC_GE", "And": "QC_AND",
           "Or": "QC_OR", "Xor": "QC_XOR", "BitwiseAnd": "QC_BITAND", "BitwiseOr": "QC_BITOR",
           "BitwiseXor": "QC_BITXOR", "Sum": "QC_ADD", "Mean": "QC_ADD", "Mod": "QC_MOD"}
_BINARY_DTYPES = {DType.f32, DType.i32, DType.i64, DType.u8, DType.i8, DType.bool}
_FLOAT_ONLY = {"Pow", "PRelu"}

# op -> (enum, default p0, default p1, attribute names)
_UNARY = {"Neg": ("QC_NEG",), "Abs": ("QC_ABS",), "Relu": ("QC_RELU",), "Exp": ("QC_EXP",),
          "Log": ("QC_LOG",), "Sqrt": ("QC_SQRT",), "Reciprocal": ("QC_RECIP",),
          "Sigmoid": ("QC_SIGMOID",), "Tanh": ("QC_TANH",), "Erf": ("QC_ERF",), "Floor": ("QC_FLOOR",),
          "Ceil": ("QC_CEIL",), "Round": ("QC_ROUND",), "Sin": ("QC_SIN",), "Cos": ("QC_COS",),
          "Tan": ("QC_TAN",), "Asin": ("QC_ASIN",), "Acos": ("QC_ACOS",), "Atan": ("QC_ATAN",),
          "Sinh": ("QC_SINH",), "Cosh": ("QC_COSH",), "Asinh": ("QC_ASINH",), "Acosh": ("QC_ACOSH",),
          "Atanh": ("QC_ATANH",), "Softplus": ("QC_SOFTPLUS",), "Softsign": ("QC_SOFTSIGN",),
          "Sign": ("QC_SIGN",), "HardSwish": ("QC_HARDSWISH",), "Mish": ("QC_MISH",), "Not": ("QC_NOT",),
          "LeakyRelu": ("QC_LEAKYRELU", ("alpha", 0.01)), "Elu": ("QC_ELU", ("alpha", 1.0)),
          "Celu": ("QC_CELU", ("alpha", 1.0)), "ThresholdedRelu": ("QC_THRESHOLDEDRELU", ("alpha", 1.0)),
          "Selu": ("QC_SELU", ("alpha", 1.67326319217681884765625), ("gamma", 1.05070102214813232421875)),
          "HardSigmoid": ("QC_HARDSIGMOID", ("alpha", 0.2), ("beta", 0.5))}
_INT_UNARY = {"Neg", "Abs", "Sign", "Relu", "Clip"}

_REDUCE = {"ReduceSum": "QC_RSUM", "ReduceMean": "QC_RMEAN", "ReduceMax": "QC_RMAX", "ReduceMin": "QC_RMIN",
           "ReduceProd": "QC_RPROD", "ReduceL1": "QC_RL1", "ReduceL2": "QC_RL2",
           "ReduceSumSquare": "QC_RSUMSQ", "ReduceLogSum": "QC_RLOGSUM", "ReduceLogSumExp": "QC_RLOGSUMEXP"}

_ALIASES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout")


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _f32(op: Op, lw: Lowering, i: int) -> None:
    if lw.dtype(op.operands[i]) != DType.f32:
        raise unsupported(op, f"input {i} of dtype {lw.dtype(op.operands[i])}; only float32")


def str_attr(op: Op, name: str, default: str) -> str:
    v = op.attr(name, default)
    return v.decode() if isinstance(v, bytes) else v


def _used(op: Op, i: int) -> bool:
    return i < len(op.results) and op.results[i] is not None and bool(op.results[i].uses())


# -- elementwise ----------------------------------------------------------------------------------
def binary(lw: Lowering, op: Op, enum: str, a, b, y, dt: DType) -> None:
    """y = a OP b with broadcasting; a, b are Buffers (or Ptr-able) and y the output buffer."""
    out = y.shape
    shape, sa, sb = coalesce(out, broadcast_strides(a.shape, out), broadcast_strides(b.shape, out))
    lw.call(op, "qc_binary", [Raw(enum), int(dt), len(shape), Ints(shape), Ints(sa), Ints(sb),
                              Ptr(a), Ptr(b), Ptr(y, const=False)], f"{enum.lower()[3:]} {dt}")


@handler(*_BINARY)
def _binary(lw: Lowering, op: Op) -> None:
    enum = _BINARY[op.op_type]
    if op.op_type == "Mod" and op.attr("fmod", 0):
        enum = "QC_FMOD"
    operands = [v for v in op.operands if v is not None]
    dt = lw.dtype(operands[0])
    if dt not in _BINARY_DTYPES or (op.op_type in _FLOAT_ONLY and dt != DType.f32):
        raise unsupported(op, f"dtype {dt}")
    bufs = [lw.buf(v) for v in operands]
    if op.op_type == "Pow" and lw.dtype(operands[1]) != DType.f32:
        e = lw.const(op, 1, "a non-float exponent")
        bufs[1] = lw.weight(e.astype(np.float32))
    elif any(lw.dtype(v) != dt for v in operands):
        raise unsupported(op, "mixed input dtypes")
    y = lw.out(op)
    if len(bufs) == 1:
        lw.call(op, "qc_copy", [y.nbytes, Ptr(bufs[0]), Ptr(y, const=False)], "copy")
    acc = bufs[0]
    for b in bufs[1:]:
        binary(lw, op, enum, acc, b, y, dt)
        acc = y
    if op.op_type == "Mean" and len(bufs) > 1:
        binary(lw, op, "QC_MUL", y, lw.weight(np.array(1.0 / len(bufs), np.float32)), y, dt)


@handler(*_UNARY, "Clip", "Gelu")
def _unary(lw: Lowering, op: Op) -> None:
    x = op.operands[0]
    dt = lw.dtype(x)
    y = lw.out(op)
    if op.op_type == "Clip":
        lo, hi = _clip_bounds(lw, op, dt)
        if dt in (DType.i32, DType.i64):
            lw.call(op, "qc_unary_int", [Raw("QC_CLIP"), int(dt), y.size, Ptr(lw.buf(x)), int(lo), int(hi),
                                         Ptr(y, const=False)], f"clip {dt}")
            return
        enum, p = "QC_CLIP", [float(lo), float(hi)]
    elif op.op_type == "Gelu":
        enum, p = ("QC_GELU_TANH" if str_attr(op, "approximate", "none") == "tanh" else "QC_GELU"), [0.0, 0.0]
    else:
        spec = _UNARY[op.op_type]
        enum = spec[0]
        p = [float(op.attr(name, default)) for name, default in spec[1:]] + [0.0, 0.0]
    if op.op_type in _INT_UNARY and dt in (DType.i32, DType.i64):
        lw.call(op, "qc_unary_int", [Raw(enum), int(dt), y.size, Ptr(lw.buf(x)), 0, 0, Ptr(y, const=False)],
                f"{enum.lower()[3:]} {dt}")
        return
    if (dt != DType.bool) if op.op_type == "Not" else (dt != DType.f32):
        raise unsupported(op, f"dtype {dt}")
    lw.call(op, "qc_unary_f32", [Raw(enum), y.size, Ptr(lw.buf(x), ctype="float"), p[0], p[1],
                                 Ptr(y, ctype="float", const=False)], f"{enum.lower()[3:]} {dt}")


def _clip_bounds(lw: Lowering, op: Op, dt: DType):
    info = np.finfo(np.float32) if dt == DType.f32 else np.iinfo(dt.numpy)
    if lw.opset < 11:
        return op.attr("min", float(info.min)), op.attr("max", float(info.max))
    lo = lw.const(op, 1, "min")
    hi = lw.const(op, 2, "max")
    return (info.min if lo is None else lo.item()), (info.max if hi is None else hi.item())


@handler("Where")
def _where(lw: Lowering, op: Op) -> None:
    c, a, b = op.operands
    y = lw.out(op)
    out = y.shape
    shape, sc, sa, sb = coalesce(out, broadcast_strides(lw.shape(c), out), broadcast_strides(lw.shape(a), out),
                                 broadcast_strides(lw.shape(b), out))
    es = np.dtype(y.dtype.numpy).itemsize
    lw.call(op, "qc_where", [len(shape), Ints(shape), Ints(sc), Ints(sa), Ints(sb), es, Ptr(lw.buf(c)),
                             Ptr(lw.buf(a)), Ptr(lw.buf(b)), Ptr(y, const=False)], "where")


@handler("Cast", "CastLike")
def _cast(lw: Lowering, op: Op) -> None:
    x = op.operands[0]
    y = lw.out(op)
    lw.call(op, "qc_cast", [y.size, int(lw.dtype(x)), Ptr(lw.buf(x)), int(y.dtype), Ptr(y, const=False)],
            f"cast {lw.dtype(x)}->{y.dtype}")


# -- shapes and data movement ----------------------------------------------------------------------
@handler(*_ALIASES)
def _alias(lw: Lowering, op: Op) -> None:
    if op.op_type == "Dropout":
        if _used(op, 1):
            raise unsupported(op, "the mask output")
        training = lw.const(op, 2, "training_mode")
        if training is not None and bool(training.reshape(-1)[0]):
            raise unsupported(op, "training mode")
    lw.alias(op, op.operands[0])


def copy_nd(lw: Lowering, op: Op, src, src_elems: int, shape, xs, y, y_elems: int = 0, kernel: str = "copy") -> None:
    es = np.dtype(y.dtype.numpy).itemsize
    shape, xs, _ = coalesce(tuple(shape), tuple(xs), contiguous(tuple(shape)))
    lw.call(op, "qc_copy_nd", [len(shape), Ints(shape), Ints(xs), es, Ptr(src, src_elems),
                               Ptr(y, y_elems, const=False)], kernel)


@handler("Transpose")
def _transpose(lw: Lowering, op: Op) -> None:
    x = op.operands[0]
    shape = lw.shape(x)
    perm = op.attr("perm") or list(reversed(range(len(shape))))
    st = contiguous(shape)
    y = lw.out(op)
    copy_nd(lw, op, lw.buf(x), 0, y.shape, [st[p] for p in perm], y, kernel="transpose")


@handler("Expand")
def _expand(lw: Lowering, op: Op) -> None:
    x = op.operands[0]
    y = lw.out(op)
    copy_nd(lw, op, lw.buf(x), 0, y.shape, broadcast_strides(lw.shape(x), y.shape), y, kernel="expand")


@handler("Tile")
def _tile(lw: Lowering, op: Op) -> None:
    x = op.operands[0]
    reps = lw.const(op, 1, "repeats").tolist()
    shape = lw.shape(x)
    st = contiguous(shape)
    y = lw.out(op)
    vshape, vst = [], []
    for r, n, s in zip(reps, shape, st):
        vshape += [int(r), n]
        vst += [0, s]
    copy_nd(lw, op, lw.buf(x), 0, vshape, vst, y, kernel="tile")


@handler("Concat")
def _concat(lw: Lowering, op: Op) -> None:
    y = lw.out(op)
    axis = _axis(op.attr("axis"), len(y.shape))
    ys = contiguous(y.shape)
    es = np.dtype(y.dtype.numpy).itemsize
    pos = 0
    for v in op.operands:
        shape = lw.shape(v)
        if math.prod(shape) == 0:
            continue
        cshape, cys, _ = coalesce(shape, ys, contiguous(shape))
        lw.call(op, "qc_place_nd", [len(cshape), Ints(cshape), Ints(cys), es, Ptr(lw.buf(v)),
                                    Ptr(y, pos * ys[axis], const=False)], "concat")
        pos += shape[axis]


@handler("Split")
def _split(lw: Lowering, op: Op) -> None:
    x = op.operands[0]
    shape = lw.shape(x)
    axis = _axis(op.attr("axis", 0), len(shape))
    st = contiguous(shape)
    pos = 0
    for i, r in enumerate(op.results):
        if r is None:
            continue
        y = lw.out(op, i)
        if y.size:
            copy_nd(lw, op, lw.buf(x), pos * st[axis], y.shape, st, y, kernel="split")
        pos += y.shape[axis]


@handler("Slice")
def _slice(lw: Lowering, op: Op) -> None:
    x = op.operands[0]
    shape = lw.shape(x)
    rank = len(shape)
    if lw.opset < 10:
        starts, ends = op.attr("starts"), op.attr("ends")
        axes = op.attr("axes") or list(range(len(starts)))
        steps = [1] * len(starts)
    else:
        starts = lw.const(op, 1, "starts").tolist()
        ends = lw.const(op, 2, "ends").tolist()
        a = lw.const(op, 3, "axes")
        s = lw.const(op, 4, "steps")
        axes = list(range(len(starts))) if a is None else a.tolist()
        steps = [1] * len(starts) if s is None else s.tolist()
    begin = [0] * rank
    step = [1] * rank
    for st_, en, ax, sp in zip(starts, ends, axes, steps):
        ax = _axis(int(ax), rank)
        b, _, _ = slice(int(st_), int(en), int(sp)).indices(shape[ax])
        begin[ax], step[ax] = b, int(sp)
    y = lw.out(op)
    if y.size == 0:
        return
    cst = contiguous(shape)
    offset = sum(b * s for b, s in zip(begin, cst))
    copy_nd(lw, op, lw.buf(x), offset, y.shape, [s * k for s, k in zip(cst, step)], y, kernel="slice")


@handler("Gather")
def _gather(lw: Lowering, op: Op) -> None:
    data, idx = op.operands
    shape = lw.shape(data)
    axis = _axis(op.attr("axis", 0), len(shape))
    idt = lw.dtype(idx)
    if idt not in (DType.i64, DType.i32):
        raise unsupported(op, f"indices of dtype {idt}")
    y = lw.out(op)
    es = np.dtype(y.dtype.numpy).itemsize
    outer = math.prod(shape[:axis])
    inner = math.prod(shape[axis + 1:]) * es
    nidx = math.prod(lw.shape(idx))
    fn = "qc_gather_i64" if idt == DType.i64 else "qc_gather_i32"
    lw.call(op, fn, [outer, shape[axis], inner, Ptr(lw.buf(data)), nidx, Ptr(lw.buf(idx)), Ptr(y, const=False)],
            "gather")


_PAD_MODES = {"constant": "QC_PAD_CONSTANT", "reflect": "QC_PAD_REFLECT", "edge": "QC_PAD_EDGE",
              "wrap": "QC_PAD_WRAP"}


@handler("Pad")
def _pad(lw: Lowering, op: Op) -> None:
    """constant with pads >= 0: a fill and a place; otherwise (cropping, reflect / edge / wrap)
    qc_pad_nd over the cropped view of x (onnxruntime crops negative pads first)."""
    x = op.operands[0]
    shape = lw.shape(x)
    rank = len(shape)
    mode = str_attr(op, "mode", "constant")
    if mode not in _PAD_MODES:
        raise unsupported(op, f"mode {mode}")
    if lw.opset < 11:
        pads, value = op.attr("pads"), op.attr("value", 0.0)
        axes = list(range(rank))
    else:
        pads = lw.const(op, 1, "pads").tolist()
        v = lw.const(op, 2, "constant_value")
        value = 0 if v is None else v.item()
        a = lw.const(op, 3, "axes")
        axes = list(range(rank)) if a is None else [_axis(int(k), rank) for k in a.tolist()]
    begin, end = [0] * rank, [0] * rank
    for i, ax in enumerate(axes):
        begin[ax], end[ax] = int(pads[i]), int(pads[i + len(axes)])
    y = lw.out(op)
    if y.size == 0:
        return
    es = np.dtype(y.dtype.numpy).itemsize
    fill = lw.weight(np.array(value, dtype=y.dtype.numpy)) if mode == "constant" else None
    if rank == 0:
        lw.call(op, "qc_copy", [y.nbytes, Ptr(lw.buf(x)), Ptr(y, const=False)], "pad")
        return
    view = [n - max(-b, 0) - max(-e, 0) for n, b, e in zip(shape, begin, end)]
    if mode == "constant" and (min(begin + end) >= 0 or math.prod(view) <= 0):
        assert fill is not None
        lw.call(op, "qc_fill", [y.size, es, Ptr(fill), Ptr(y, const=False)], "pad")
        if min(begin + end) >= 0 and math.prod(shape):
            ys = contiguous(y.shape)
            cshape, cys, _ = coalesce(shape, ys, contiguous(shape))
            lw.call(op, "qc_place_nd", [len(cshape), Ints(cshape), Ints(cys), es, Ptr(lw.buf(x)),
                                        Ptr(y, sum(b * s for b, s in zip(begin, ys)), const=False)], "pad")
        return
    if any(n <= 0 for n in view):
        raise unsupported(op, f"mode {mode} on an axis with no elements (after cropping)")
    xs = contiguous(shape)
    first = sum(max(-b, 0) * s for b, s in zip(begin, xs))
    lw.call(op, "qc_pad_nd", [Raw(_PAD_MODES[mode]), rank, Ints(y.shape), Ints(tuple(view)), Ints(xs),
                              Ints(tuple(max(b, 0) for b in begin)), es, Ptr(lw.buf(x), first),
                              Ptr(fill) if fill is not None else Raw("NULL"), Ptr(y, const=False)], f"pad {mode}")


def _constant_of_shape(lw: Lowering, op: Op) -> None:
    y = lw.out(op)
    v = op.attr("value")
    value = np.zeros((), y.dtype.numpy) if v is None else v.numpy().reshape(())
    lw.call(op, "qc_fill", [y.size, np.dtype(y.dtype.numpy).itemsize, Ptr(lw.weight(np.asarray(value))),
                            Ptr(y, const=False)], "fill")


# -- linear algebra -----------------------------------------------------------------------------
@handler("MatMul")
def _matmul(lw: Lowering, op: Op) -> None:
    _f32(op, lw, 0)
    _f32(op, lw, 1)
    lower_sgemm.matmul(lw, op)


def batch_offsets(ashape, bshape):
    """(batch, M, K, N, a offsets, b offsets) of a broadcasting MatMul (1-D operands promoted)."""
    if len(ashape) == 1:
        ashape = [1] + ashape
    if len(bshape) == 1:
        bshape = bshape + [1]
    M, K = ashape[-2:]
    N = bshape[-1]
    abatch, bbatch = tuple(ashape[:-2]), tuple(bshape[:-2])
    out = tuple(np.broadcast_shapes(abatch, bbatch))
    sa = broadcast_strides(abatch, out)
    sb = broadcast_strides(bbatch, out)
    aoff, boff = [], []
    for idx in np.ndindex(*out) if out else [()]:
        aoff.append(sum(i * s for i, s in zip(idx, sa)) * M * K)
        boff.append(sum(i * s for i, s in zip(idx, sb)) * K * N)
    return len(aoff), M, K, N, aoff, boff


@handler("Gemm")
def _gemm(lw: Lowering, op: Op) -> None:
    for i in range(len([v for v in op.operands if v is not None])):
        _f32(op, lw, i)
    lower_sgemm.gemm(lw, op)


def conv_geometry(lw: Lowering, op: Op, xshape, kshape, yshape):
    """(N, C, H, W, OH, OW, KH, KW, params) for a 1-D or 2-D NCHW conv / pool."""
    nd = len(xshape) - 2
    if nd not in (1, 2):
        raise unsupported(op, f"{nd}-D")
    strides = list(op.attr("strides") or [1] * nd)
    dil = list(op.attr("dilations") or [1] * nd)
    pads = list(op.attr("pads") or [0] * (2 * nd))
    auto = str_attr(op, "auto_pad", "NOTSET")
    spatial_in, spatial_out = list(xshape[2:]), list(yshape[2:])
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * nd)
        for d in range(nd):
            total = max(0, (spatial_out[d] - 1) * strides[d] + (kshape[d] - 1) * dil[d] + 1 - spatial_in[d])
            small = total // 2
            pads[d] = small if auto == "SAME_UPPER" else total - small
            pads[d + nd] = total - pads[d]
    elif auto == "VALID":
        pads = [0] * (2 * nd)
    if nd == 1:
        spatial_in, spatial_out, kshape = [1] + spatial_in, [1] + spatial_out, [1] + list(kshape)
        strides, dil, pads = [1] + strides, [1] + dil, [0, pads[0], 0, pads[1]]
    N, C = xshape[:2]
    return (N, C, spatial_in[0], spatial_in[1], spatial_out[0], spatial_out[1], kshape[0], kshape[1],
            strides, dil, pads)


@handler("Conv")
def _conv(lw: Lowering, op: Op) -> None:
    x, w = op.operands[:2]
    bias = op.operands[2] if len(op.operands) > 2 else None
    _f32(op, lw, 0)
    _f32(op, lw, 1)
    y = lw.out(op)
    wshape = lw.shape(w)
    N, C, H, W, OH, OW, KH, KW, s, d, p = conv_geometry(lw, op, lw.shape(x), wshape[2:], y.shape)
    params = (s[0], s[1], p[0], p[1], d[0], d[1])
    group = op.attr("group", 1)
    args = [N, C, H, W, wshape[0], OH, OW, KH, KW, group, Ints(params), Ptr(lw.buf(x)), Ptr(lw.buf(w)),
            Ptr(lw.buf(bias)) if bias is not None else Raw("NULL"), Ptr(y, const=False)]
    plan = lower_sgemm.conv_plan(C // group, wshape[0] // group, KH, KW, H, W, OH, OW, params, N * C * H * W + y.size)
    if plan is None:
        lw.call(op, "qc_conv2d_f32", args, "conv2d f32 direct")
        return
    nb, work = plan
    scratch = lw.scratch(DType.f32, work) if work else None
    lw.call(op, "qc_conv2d_sgemm_f32", args + [Ptr(scratch, const=False) if scratch else Raw("NULL"), nb],
            "conv2d f32 sgemm", scratch=[scratch] if scratch else [])


def transpose_pads(op: Op, xshape, kshape, yshape) -> list[int]:
    """The leading pads of a ConvTranspose per spatial axis, as onnxruntime computes them
    (conv_transpose_attributes.h): explicit ``pads``, or split from the total padding that
    ``output_shape`` / ``auto_pad`` imply (an odd one goes at the end for SAME_UPPER, else at the start)."""
    nd = len(xshape) - 2
    strides = list(op.attr("strides") or [1] * nd)
    dil = list(op.attr("dilations") or [1] * nd)
    adj = list(op.attr("output_padding") or [0] * nd)
    pads = list(op.attr("pads") or [0] * (2 * nd))
    auto = str_attr(op, "auto_pad", "NOTSET")
    if op.attr("output_shape") is None and auto not in ("SAME_UPPER", "SAME_LOWER"):
        return [0] * nd if auto == "VALID" else pads[:nd]
    head = []
    for d in range(nd):
        total = max(0, (xshape[2 + d] - 1) * strides[d] + adj[d] + (kshape[d] - 1) * dil[d] + 1 - yshape[2 + d])
        head.append(total // 2 if auto == "SAME_UPPER" else total - total // 2)
    return head


@handler("ConvTranspose")
def _conv_transpose(lw: Lowering, op: Op) -> None:
    x, w = op.operands[:2]
    bias = op.operands[2] if len(op.operands) > 2 else None
    _f32(op, lw, 0)
    _f32(op, lw, 1)
    xshape, wshape = lw.shape(x), lw.shape(w)
    nd = len(xshape) - 2
    if nd not in (1, 2):
        raise unsupported(op, f"{nd}-D")
    y = lw.out(op)
    group = op.attr("group", 1)
    head = transpose_pads(op, xshape, wshape[2:], y.shape)
    strides = list(op.attr("strides") or [1] * nd)
    dil = list(op.attr("dilations") or [1] * nd)
    if nd == 1:
        xshape, wshape, yshape = xshape[:2] + (1,) + xshape[2:], wshape[:2] + (1,) + wshape[2:], \
            y.shape[:2] + (1,) + y.shape[2:]
        head, strides, dil = [0] + head, [1] + strides, [1] + dil
    else:
        yshape = y.shape
    N, C, H, W = xshape
    params = (strides[0], strides[1], head[0], head[1], dil[0], dil[1])
    lw.call(op, "qc_convtranspose2d_f32", [N, C, H, W, yshape[1], yshape[2], yshape[3], wshape[2], wshape[3], group,
                                           Ints(params), Ptr(lw.buf(x)), Ptr(lw.buf(w)),
                                           Ptr(lw.buf(bias)) if bias is not None else Raw("NULL"),
                                           Ptr(y, const=False)], "convtranspose2d f32")


@handler("MaxPool", "AveragePool")
def _pool(lw: Lowering, op: Op) -> None:
    x = op.operands[0]
    _f32(op, lw, 0)
    if _used(op, 1):
        raise unsupported(op, "the Indices output")
    y = lw.out(op)
    kshape = op.attr("kernel_shape")
    N, C, H, W, OH, OW, KH, KW, s, d, p = conv_geometry(lw, op, lw.shape(x), kshape, y.shape)
    params = (KH, KW, s[0], s[1], p[0], p[1], d[0], d[1], op.attr("count_include_pad", 0), p[2], p[3])
    fn = "qc_maxpool2d_f32" if op.op_type == "MaxPool" else "qc_avgpool2d_f32"
    lw.call(op, fn, [N * C, H, W, OH, OW, Ints(params), Ptr(lw.buf(x)), Ptr(y, const=False)],
            op.op_type.lower() + " f32")


@handler("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(lw: Lowering, op: Op) -> None:
    x = op.operands[0]
    _f32(op, lw, 0)
    shape = lw.shape(x)
    y = lw.out(op)
    enum = "QC_RMEAN" if op.op_type == "GlobalAveragePool" else "QC_RMAX"
    nc, hw = math.prod(shape[:2]), math.prod(shape[2:])
    lw.call(op, "qc_reduce_f32", [Raw(enum), 2, Ints((nc, hw)), Ints((1, 0)), nc, hw, Ptr(lw.buf(x)),
                                  Ptr(y, const=False)], op.op_type.lower())


@handler("BatchNormalization")
def _batchnorm(lw: Lowering, op: Op) -> None:
    x = op.operands[0]
    _f32(op, lw, 0)
    if any(_used(op, i) for i in range(1, len(op.results))):
        raise unsupported(op, "training outputs")
    scale, b, mean, var = (lw.const(op, i, "scale, B, mean and var").astype(np.float64) for i in range(1, 5))
    a = scale / np.sqrt(var + op.attr("epsilon", 1e-5))
    shape = lw.shape(x)
    y = lw.out(op)
    lw.call(op, "qc_channel_affine_f32", [shape[0], shape[1], math.prod(shape[2:]),
                                          Ptr(lw.weight(a.astype(np.float32))),
                                          Ptr(lw.weight((b - mean * a).astype(np.float32))),
                                          Ptr(lw.buf(x)), Ptr(y, const=False)], "batchnorm f32")


@handler("LRN")
def _lrn(lw: Lowering, op: Op) -> None:
    x = op.operands[0]
    _f32(op, lw, 0)
    shape = lw.shape(x)
    y = lw.out(op)
    lw.call(op, "qc_lrn_f32", [shape[0], shape[1], math.prod(shape[2:]), op.attr("size"),
                               float(op.attr("alpha", 1e-4)), float(op.attr("beta", 0.75)),
                               float(op.attr("bias", 1.0)), Ptr(lw.buf(x)), Ptr(y, const=False)], "lrn f32")


# -- normalization and reductions -----------------------------------------------------------------
@handler("Softmax", "LogSoftmax")
def _softmax(lw: Lowering, op: Op) -> None:
    x = op.operands[0]
    _f32(op, lw, 0)
    shape = lw.shape(x)
    legacy = lw.opset < 13
    axis = _axis(op.attr("axis", 1 if legacy else -1), len(shape))
    outer = math.prod(shape[:axis])
    n, inner = (math.prod(shape[axis:]), 1) if legacy else (shape[axis], math.prod(shape[axis + 1:]))
    y = lw.out(op)
    lw.call(op, "qc_softmax_f32", [outer, n, inner, int(op.op_type == "LogSoftmax"), Ptr(lw.buf(x)),
                                   Ptr(y, const=False)], op.op_type.lower() + " f32")


@handler("LayerNormalization")
@handler("LayerNormalization", domain="qc")   # fuse-layernorm below opset 17
def _layernorm(lw: Lowering, op: Op) -> None:
    x, scale = op.operands[:2]
    bias = op.operands[2] if len(op.operands) > 2 else None
    _f32(op, lw, 0)
    shape = lw.shape(x)
    axis = _axis(op.attr("axis", -1), len(shape))
    n = math.prod(shape[axis:])
    norm = tuple(shape[axis:])

    def full(v):
        if v is None:
            return Raw("NULL")
        if lw.shape(v) == norm or math.prod(lw.shape(v)) == n and len(lw.shape(v)) <= len(norm):
            return Ptr(lw.buf(v))
        arr = lw.const(op, op.operands.index(v), "a broadcast scale / bias")
        return Ptr(lw.weight(np.broadcast_to(arr, norm).astype(np.float32)))

    y = lw.out(op)
    stats = [Ptr(lw.out(op, i), const=False) if i < len(op.results) and op.results[i] is not None else Raw("NULL")
             for i in (1, 2)]
    lw.call(op, "qc_layernorm_f32", [math.prod(shape[:axis]), n, float(op.attr("epsilon", 1e-5)),
                                     Ptr(lw.buf(x)), full(scale), full(bias), Ptr(y, const=False)] + stats,
            "layernorm f32")


@handler(*_REDUCE)
def _reduce(lw: Lowering, op: Op) -> None:
    x = op.operands[0]
    _f32(op, lw, 0)
    shape = lw.shape(x)
    rank = len(shape)
    axes_input = op.op_type == "ReduceSum" and lw.opset >= 13 or lw.opset >= 18
    if axes_input:
        a = lw.const(op, 1, "axes")
        axes = None if a is None or a.size == 0 else a.tolist()
        if axes is None and op.attr("noop_with_empty_axes", 0):
            lw.alias(op, x)
            return
    else:
        axes = op.attr("axes")
    axes = list(range(rank)) if not axes else [_axis(int(k), rank) for k in axes]
    y = lw.out(op)
    kept = tuple(1 if d in axes else n for d, n in enumerate(shape))
    st = contiguous(kept)
    ys = tuple(0 if d in axes else st[d] for d in range(rank))
    shape_c, ys_c = coalesce(shape, ys) if rank else ((1,), (0,))
    count = math.prod(shape[d] for d in axes)
    lw.call(op, "qc_reduce_f32", [Raw(_REDUCE[op.op_type]), len(shape_c), Ints(shape_c), Ints(ys_c), y.size,
                                  count, Ptr(lw.buf(x)), Ptr(y, const=False)], op.op_type.lower() + " f32")


@handler("ArgMax", "ArgMin")
def _argmax(lw: Lowering, op: Op) -> None:
    x = op.operands[0]
    _f32(op, lw, 0)
    shape = lw.shape(x)
    axis = _axis(op.attr("axis", 0), len(shape))
    y = lw.out(op)
    lw.call(op, "qc_argmax_f32", [math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:]),
                                  int(op.op_type == "ArgMin"), op.attr("select_last_index", 0), Ptr(lw.buf(x)),
                                  Ptr(y, const=False)], op.op_type.lower() + " f32")
