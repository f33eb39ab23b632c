"""Quantized node units and Q/DQ ops -> integer kernel calls (runtime/qc_kernels.h).

Units (recognized on the graph before the walk, like onnxruntime's QDQ node units):

    DQ(x int8, per-tensor) -> MatMul <- DQ(w int8 const, per-tensor or per output column, zp 0)
        qc_gemm_s8_f32 on the int8 activation and the packed weight, its fused epilogue adding
        bias[n] = -zp_x * sum_k w[k][n] (the activation zero point folded into an int32 bias)
        and scaling by scale[n] = s_x * s_w[n] (+ Gemm's C); with an int8 output Q,
        qc_gemm_s8_q8 requantizes instead. No int32 matrix is written. The DQ ops are not
        computed when nothing else reads them.
    MatMul(x f16, w f16 const) -> qc_matmul_f16 (the outlier half of split-outliers).

Standalone QuantizeLinear / DequantizeLinear: per tensor through qc_quantize_* / qc_dequantize_*;
DequantizeLinear of a constant is evaluated here (as onnxruntime does it: (q - zp) * scale in
float32); per-axis ones on activations become Cast / Sub / Mul (exact, the same arithmetic).
"""
from __future__ import annotations

import math

import numpy as np

from qc.ir import DType, Op, Value
from qc.quant.units import Unit, node_unit

from .lower_conv_s8 import lower_conv_s8
from .lower_conv_s8 import output_q as conv_output_q
from .lower_gemm_s8 import Tail, epilogue_tail, gemm_s8
from .lower_ops import batch_offsets, binary
from .lowering import Lowering, Ptr, Raw, handler, unsupported

_INT8 = (DType.i8, DType.u8)


def _producer(v: Value | None, op_type: str) -> Op | None:
    if v is None or v.const is not None:
        return None
    p = v.producer
    return p if p is not None and p.domain in ("", "ai.onnx") and p.op_type == op_type else None


def _const(v: Value | None) -> np.ndarray | None:
    return None if v is None or v.const is None else v.const.numpy()


def _qparams(dq: Op):
    """(scale array, zero point array or None, axis) of a Q/DQ op with constant parameters, or None."""
    scale = _const(dq.operands[1])
    zp_v = dq.operands[2] if len(dq.operands) > 2 else None
    zp = _const(zp_v)
    if scale is None or (zp_v is not None and zp is None) or dq.attr("block_size", 0):
        return None
    return scale.astype(np.float32), zp, dq.attr("axis", 1)


def _weight_unit(u: Unit | None, channel_axis: int):
    """(dq_x, dq_w, s_x, zp_x, int8 weight, weight scales) when the unit reads DQ(int8 activation,
    per tensor) and DQ(int8 constant, zero point 0, per tensor or per output channel)."""
    if u is None or u.act_dq is None or u.weight_dq is None or not u.const_weight:
        return None
    if u.act != "int8" or u.weight != "int8":
        return None
    dqa, dqb = u.act_dq, u.weight_dq
    pa, pb = _qparams(dqa), _qparams(dqb)
    if pa is None or pb is None or pa[0].size != 1:
        return None
    w = u.weight_value.const.numpy()
    ws, wzp, axis = pb
    if wzp is not None and np.any(wzp != 0):
        return None  # an asymmetric weight needs the activation row sums: left to the float path
    nch = w.shape[channel_axis]
    if ws.size not in (1, nch) or (ws.size == nch and nch > 1 and axis % w.ndim != channel_axis % w.ndim):
        return None
    x_zp = 0 if pa[1] is None else int(pa[1].reshape(-1)[0])
    return dqa, dqb, float(pa[0].reshape(-1)[0]), x_zp, w.astype(np.int8), ws.reshape(-1)


def _output_q(u: Unit) -> Op | None:
    """The unit's output QuantizeLinear when it reads the result directly and is int8 per tensor."""
    q = u.out_q
    if q is None or q.operands[0] is not u.op.results[0]:
        return None
    p = _qparams(q)
    if p is None or p[0].size != 1 or getattr(q.results[0].type, "dtype", None) != DType.i8:
        return None
    return q


def _find_unit(lw: Lowering, op: Op):
    """The integer lowering of the unit anchored at op: (kind, dq_x, dq_w, s_x, zp_x, weight [K, N]
    (Conv: as stored), weight scales, output Q or None), or None for the float path."""
    if op.domain not in ("", "ai.onnx") or op.op_type not in ("MatMul", "Gemm", "Conv"):
        return None
    u = node_unit(op)
    if u is not None and not _table_picks_gemm_s8(lw, u):
        return None
    if op.op_type == "MatMul":
        unit = _weight_unit(u, 1)
        if unit is None or unit[4].ndim != 2 or len(lw.shape(op.operands[0])) < 2:
            return None
        return ("matmul",) + unit + (_output_q(u),)
    if op.op_type == "Gemm" and not op.attr("transA", 0) and op.attr("alpha", 1.0) == 1.0 \
            and op.attr("beta", 1.0) == 1.0:
        tb = op.attr("transB", 0)
        unit = _weight_unit(u, 0 if tb else 1)
        if unit is None or not _const_bias(u.bias, lw, unit[4].shape[0 if tb else 1]):
            return None
        unit = unit[:4] + ((unit[4].T if tb else unit[4]),) + unit[5:]
        return ("matmul",) + unit + (_output_q(u),)
    if op.op_type == "Conv" and len(lw.shape(op.operands[0])) in (3, 4):
        unit = _weight_unit(u, 0)
        if unit is None:
            return None
        bias = u.bias
        if bias is not None and bias.const is None and _producer(bias, "DequantizeLinear") is None:
            return None
        return ("conv",) + unit + (conv_output_q(lw, op),)
    return None


def _table_picks_gemm_s8(lw: Lowering, u: Unit) -> bool:
    """Does the target's kernel table give the unit's key (op, dtypes, granularity, zero point,
    constant weight; any output) a qc_gemm_s8_* kernel? A key the table lacks is left to the C
    backend, which runs every int8 unit it can match on qc_gemm_s8."""
    hits = [k for k in lw.table if k.op == u.kind and k.act == u.act and k.weight == u.weight
            and k.matches(k.op, k.act, k.weight, k.out, u.granularity, u.zero_point, u.const_weight)]
    if not hits:
        return True
    best = min(hits, key=lambda k: k.cost)
    return best.c_kernel is None or best.c_kernel.startswith("qc_gemm_s8_")


def _const_bias(c: Value | None, lw: Lowering, n: int) -> bool:
    """Gemm's C: absent, or a constant (or DQ of one) with n elements (one per output column)."""
    if c is None:
        return True
    if c.const is None and (_producer(c, "DequantizeLinear") is None
                            or _producer(c, "DequantizeLinear").operands[0].const is None):
        return False
    return math.prod(lw.shape(c)) == n


def _bias_value(lw: Lowering, op: Op, index: int) -> np.ndarray | None:
    v = op.operands[index] if len(op.operands) > index else None
    if v is None:
        return None
    return v.const.numpy() if v.const is not None else _dequantized(lw, _producer(v, "DequantizeLinear"))


def plan_units(lw: Lowering) -> None:
    """Find the units of the main graph; DQ ops read only by units, and a unit's output Q, are consumed."""
    lw.units = {}
    lw.unit_tails = {}  # id(MatMul / Gemm) -> the Tail its epilogue computes
    readers: dict[int, set[int]] = {}
    for op in lw.module.graph:
        unit = _find_unit(lw, op)
        if unit is None:
            continue
        lw.units[id(op)] = unit
        if unit[0] == "matmul" and unit[-1] is None:
            tail = epilogue_tail(lw, op, unit[5].shape[1], may_add=op.op_type == "MatMul")
            if tail is not None:
                lw.unit_tails[id(op)] = tail
                lw.consumed.update(id(t) for t in tail.ops)
        for dq in unit[1:3]:
            readers.setdefault(id(dq), set()).add(id(op))
        if unit[-1] is not None:
            lw.consumed.add(id(unit[-1]))
    outputs = {id(v) for v in lw.module.graph.outputs}
    for op in lw.module.graph:
        if id(op) in readers:
            r = op.results[0]
            users = {id(u) for u in r.users()}
            if users <= readers[id(op)] and id(r) not in outputs:
                lw.consumed.add(id(op))


def match_unit(lw: Lowering, op: Op) -> bool:
    unit = getattr(lw, "units", {}).get(id(op))
    if unit is not None:
        (_lower_matmul_s8 if unit[0] == "matmul" else _lower_conv_s8)(lw, op, *unit[1:])
        return True
    if op.op_type == "MatMul" and op.domain in ("", "ai.onnx") and lw.dtype(op.operands[0]) == DType.f16:
        return _lower_matmul_f16(lw, op)
    if op.op_type == "MatMulNBits" and op.domain == "com.microsoft":
        from .lower_w4 import lower_matmul_nbits
        lower_matmul_nbits(lw, op)
        return True
    return False


def _gemm_s8(lw: Lowering, op: Op, M: int, N: int, K: int, a: Ptr, packed, bias: np.ndarray, scale: np.ndarray,
             q: Op | None, out: Ptr, fbias=None, act: str | None = None) -> None:
    """The fused GEMM of a MatMul / Gemm unit: qc_gemm_s8_f32 (dequantized in its epilogue, then
    *act*) or, with an int8 output Q, qc_gemm_s8_q8 (TFLite requantization)."""
    if q is None:
        gemm_s8(lw, op, M, N, K, a, K, packed, out, N, bias, scale=scale, fbias=fbias, act=act)
        return
    from .packing import quantize_multiplier

    sy, zy, _ = _qparams(q)
    real = scale.astype(np.float64) / np.float64(sy.reshape(-1)[0])
    ms = [quantize_multiplier(float(r)) for r in real.reshape(-1)]
    gemm_s8(lw, op, M, N, K, a, K, packed, out, N, bias, mult=np.array([m for m, _ in ms], np.int32),
            shift=np.array([s for _, s in ms], np.int32), out_zp=0 if zy is None else int(zy.reshape(-1)[0]))


def _lower_matmul_s8(lw: Lowering, op: Op, dqa: Op, dqb: Op, sx: float, zx: int, w: np.ndarray,
                     ws: np.ndarray, q: Op | None) -> None:
    from .packing import pack_s8

    xq = dqa.operands[0]
    K, N = w.shape
    M = math.prod(lw.shape(xq)[:-1])
    tail: Tail | None = getattr(lw, "unit_tails", {}).get(id(op))
    y = lw.out(q if q is not None else (tail.ops[-1] if tail is not None else op))
    packed = lw.weight(np.frombuffer(pack_s8(np.ascontiguousarray(w), lw.variant), np.int8))
    bias = (-zx * w.astype(np.int64).sum(axis=0)).astype(np.int32)
    scale = (np.float32(sx) * ws.astype(np.float32)).astype(np.float32)
    fb = _bias_value(lw, op, 2) if op.op_type == "Gemm" else None
    if fb is not None and q is not None:
        raise unsupported(op, "a Gemm bias before an output QuantizeLinear")
    if tail is not None and tail.fbias is not None:
        fb = tail.fbias
    _gemm_s8(lw, op, M, N, K, Ptr(lw.buf(xq)), packed, bias, scale, q, Ptr(y, const=False),
             fbias=lw.weight(fb.reshape(-1).astype(np.float32)) if fb is not None else None,
             act="QC_ACT_GELU" if tail is not None and tail.gelu is not None else None)


def _lower_conv_s8(lw: Lowering, op: Op, dqa: Op, dqb: Op, sx: float, zx: int, w: np.ndarray,
                   ws: np.ndarray, q: Op | None) -> None:
    """The Conv unit: lower_conv_s8 (depthwise, or im2col + the fused GEMM; int8 or float output)."""
    lower_conv_s8(lw, op, dqa, dqb, sx, zx, w, ws, q, _bias_value(lw, op, 2))


def _dequantized(lw: Lowering, dq: Op | None) -> np.ndarray:
    """The float value of DQ(constant), as _dequantize_const computes it."""
    if dq is None or dq.operands[0].const is None:
        raise unsupported(dq, "a non-constant bias")
    if id(dq.results[0]) not in lw.bufs:
        _dequantize_const(lw, dq)
    return np.frombuffer(lw.bufs[id(dq.results[0])].data, np.float32)


def _lower_matmul_f16(lw: Lowering, op: Op) -> bool:
    a, b = op.operands
    if lw.dtype(b) != DType.f16:
        raise unsupported(op, "float16 activations times a non-float16 weight")
    batch, M, K, N, aoff, boff = batch_offsets(list(lw.shape(a)), list(lw.shape(b)))
    y = lw.out(op)
    if len(lw.shape(b)) <= 2:  # a shared 2-D weight: fold the batch into M
        lw.call(op, "qc_matmul_f16", [M * batch, N, K, Ptr(lw.buf(a), ctype="qc_f16"), Ptr(lw.buf(b), ctype="qc_f16"),
                                      Ptr(y, ctype="qc_f16", const=False)], "matmul f16")
        return True
    for i, (ao, bo) in enumerate(zip(aoff, boff)):
        lw.call(op, "qc_matmul_f16", [M, N, K, Ptr(lw.buf(a), ao, ctype="qc_f16"), Ptr(lw.buf(b), bo, ctype="qc_f16"),
                                      Ptr(y, i * M * N, ctype="qc_f16", const=False)], "matmul f16")
    return True


# -- standalone QuantizeLinear / DequantizeLinear -------------------------------------------------
def _per_tensor(lw: Lowering, op: Op, what: str, int_dt: DType, x: Value, y, scale, zp) -> None:
    """qc_quantize_s8/u8 or qc_dequantize_s8/u8 with a per-tensor scale and zero point."""
    z = 0 if zp is None else int(zp.reshape(-1)[0])
    lw.call(op, f"qc_{what}_{'s8' if int_dt == DType.i8 else 'u8'}",
            [y.size, Ptr(lw.buf(x)), float(scale.reshape(-1)[0]), z, Ptr(y, const=False)], f"{what} {int_dt}")


@handler("QuantizeLinear")
def _quantize(lw: Lowering, op: Op) -> None:
    x = op.operands[0]
    if lw.dtype(x) != DType.f32:
        raise unsupported(op, f"input of dtype {lw.dtype(x)}")
    y = lw.out(op)
    q = _qparams(op)
    if y.dtype not in _INT8 or q is None:
        raise unsupported(op, f"output {y.dtype}" if q is not None else "blocked or non-constant parameters")
    scale, zp, axis = q
    if scale.size == 1:
        _per_tensor(lw, op, "quantize", y.dtype, x, y, scale, zp)
        return
    # per axis: saturate(round_half_even(x / scale) + zp), as float steps, then an exact Cast
    shape = y.shape
    axis = axis + len(shape) if axis < 0 else axis
    bshape = tuple(n if d == axis else 1 for d, n in enumerate(shape))
    t = lw.scratch(DType.f32, y.size)
    t.shape = shape
    binary(lw, op, "QC_DIV", lw.buf(x), lw.weight(scale.reshape(bshape)), t, DType.f32)
    lw.call(op, "qc_unary_f32", [Raw("QC_ROUND"), y.size, Ptr(t), 0.0, 0.0, Ptr(t, const=False)], "round")
    zf = np.zeros(bshape, np.float32) if zp is None else zp.astype(np.float32).reshape(bshape)
    binary(lw, op, "QC_ADD", t, lw.weight(zf), t, DType.f32)
    info = np.iinfo(y.dtype.numpy)
    lw.call(op, "qc_unary_f32", [Raw("QC_CLIP"), y.size, Ptr(t), float(info.min), float(info.max),
                                 Ptr(t, const=False)], "clip")
    lw.call(op, "qc_cast", [y.size, int(DType.f32), Ptr(t), int(y.dtype), Ptr(y, const=False)], "quantize per-axis")


@handler("DequantizeLinear")
def _dequantize(lw: Lowering, op: Op) -> None:
    x = op.operands[0]
    q = _qparams(op)
    xdt = lw.dtype(x)
    if xdt not in (DType.i8, DType.u8, DType.i32):
        raise unsupported(op, f"input of dtype {xdt}")
    out_t = op.results[0].type
    if getattr(out_t, "dtype", DType.f32) != DType.f32:
        raise unsupported(op, f"output of dtype {out_t.dtype}")
    if x.const is not None:  # a constant: evaluate it here, as onnxruntime does
        _dequantize_const(lw, op)
        return
    if q is None:
        raise unsupported(op, "blocked or non-constant parameters")
    scale, zp, axis = q
    y = lw.out(op)
    if scale.size == 1 and xdt in _INT8:
        _per_tensor(lw, op, "dequantize", xdt, x, y, scale, zp)
        return
    shape = y.shape
    axis = axis + len(shape) if axis < 0 else axis
    bshape = tuple(n if d == axis else 1 for d, n in enumerate(shape)) if scale.size > 1 else ()
    lw.call(op, "qc_cast", [y.size, int(xdt), Ptr(lw.buf(x)), int(DType.f32), Ptr(y, const=False)], "cast")
    if zp is not None and np.any(zp != 0):
        binary(lw, op, "QC_SUB", y, lw.weight(zp.astype(np.float32).reshape(bshape)), y, DType.f32)
    binary(lw, op, "QC_MUL", y, lw.weight(scale.reshape(bshape)), y, DType.f32)


def _dequantize_const(lw: Lowering, op: Op) -> None:
    x, s = op.operands[0], op.operands[1]
    q = x.const.numpy().astype(np.int64)
    scale = s.const.numpy().astype(np.float32) if s.const is not None else None
    zp_v = op.operands[2] if len(op.operands) > 2 else None
    if scale is None or (zp_v is not None and zp_v.const is None):
        raise unsupported(op, "non-constant parameters")
    zp = np.zeros_like(scale, dtype=np.int64) if zp_v is None else zp_v.const.numpy().astype(np.int64)
    axis = op.attr("axis", 1)
    block = op.attr("block_size", 0)
    if scale.size > 1:
        axis = axis + q.ndim if axis < 0 else axis
        if block:
            scale, zp = np.repeat(scale, block, axis=axis), np.repeat(zp, block, axis=axis)
            idx = [slice(None)] * q.ndim
            idx[axis] = slice(0, q.shape[axis])
            scale, zp = scale[tuple(idx)], zp[tuple(idx)]
        else:
            bshape = [1] * q.ndim
            bshape[axis] = q.shape[axis]
            scale, zp = scale.reshape(bshape), zp.reshape(bshape)
    value = ((q - zp).astype(np.float32) * scale).astype(np.float32)
    w = lw.weight(value)
    r = op.results[0]
    existing = lw.bufs.get(id(r))
    if existing is not None and existing.kind == "output":
        lw.call(op, "qc_copy", [existing.nbytes, Ptr(w), Ptr(existing, const=False)], "copy")
    else:
        lw.bufs[id(r)] = w
