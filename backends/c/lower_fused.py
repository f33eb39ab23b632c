"""The fused ops of the ``fuse-*`` passes (domain ``qc``) -> kernel calls, and Transposes as views.

``qc.Attention`` -> ``qc_attention_f32`` (runtime/qc_attention.c), which reads Q, K, V and the
mask through strides: a Transpose whose only reader is a qc.Attention (the head split of a
model) is not run, the kernel reads its input in place (``plan_views``); a Transpose that is
the only reader of a qc.Attention result (the head merge) is not run either, the kernel writes
its output in place. ``qc.Gelu`` -> ``qc_unary_f32`` (QC_GELU / QC_GELU_TANH),
``qc.RMSNormalization`` -> ``qc_rmsnorm_f32``, ``qc.AddRMSNormalization`` -> ``qc_add_rmsnorm_f32``,
``qc.AddLayerNormalization`` -> ``qc_add_layernorm_f32``, ``qc.Rope`` -> ``qc_rope_f32`` (reads X through strides too),
``qc.SiLU`` -> ``qc_unary_f32`` (QC_SILU), ``qc.SiLUMul`` -> ``qc_silu_mul_f32``; a constant causal
mask of a ``qc.Attention`` (0 on and below the diagonal, <= -1e30 above) becomes the kernel's
causal path, which skips the masked keys.
"""
from __future__ import annotations

import math

import numpy as np

from qc.errors import QCError
from qc.ir import DType, Op, Value

from . import lower_ops
from .lowering import Buffer, Ints, Lowering, Ptr, Raw, broadcast_strides, contiguous, handler, unsupported
from .split import attention_call_work, attention_work

QC = "qc"
# fused op -> how many leading operands may be views
_VIEW_READERS = {("qc", "Attention"): 3, ("qc", "CachedAttention"): 3, ("qc", "Rope"): 1}


def _transpose_of(v: Value | None) -> Op | None:
    t = v.producer if v is not None else None
    if t is None or t.domain not in ("", "ai.onnx") or t.op_type != "Transpose" or len(t.results) != 1:
        return None
    return t


def _perm(t: Op, rank: int) -> list[int]:
    return [int(p) for p in (t.attr("perm") or reversed(range(rank)))]


def plan_views(lw: Lowering) -> None:
    """Mark the Transposes that a fused kernel reads or writes through strides as consumed, and
    record the views (``lw.views``); only where the innermost dimension stays contiguous."""
    g = lw.module.graph
    outputs = {id(v) for v in g.outputs}
    for op in g:
        n = _VIEW_READERS.get((op.domain, op.op_type))
        if n is None or id(op) in lw.consumed:
            continue
        for v in op.operands[:n]:
            t = _transpose_of(v)
            if t is None or id(t) in lw.consumed or id(v) in outputs or t.graph is not g \
                    or any(u is not op for u, _ in v.uses()):
                continue
            src = t.operands[0]
            try:
                shape = lw.shape(src)
            except QCError:  # no static shape: the Transpose is lowered as usual
                continue
            st = contiguous(shape)
            strides = tuple(st[p] for p in _perm(t, len(shape)))
            if strides and strides[-1] == 1:
                lw.views[id(v)] = (src, strides)
                lw.consumed.add(id(t))
        r = op.results[0] if op.results else None
        users = r.uses() if r is not None else ()
        if r is None or id(r) in outputs or len(users) != 1:
            continue
        t = users[0][0]
        if not isinstance(t, Op) or _transpose_of(t.results[0]) is not t or id(t) in lw.consumed:
            continue
        rank = len(lw.shape(r))
        perm = _perm(t, rank)
        tshape = tuple(lw.shape(r)[p] for p in perm)
        tst = contiguous(tshape)
        inv = [perm.index(j) for j in range(rank)]
        strides = tuple(tst[inv[j]] for j in range(rank))
        if strides[-1] == 1:
            lw.views[id(r)] = (t.results[0], strides)
            lw.consumed.add(id(t))


def _read(lw: Lowering, v: Value) -> tuple[Buffer, tuple[int, ...]]:
    """The buffer and element strides an operand is read through (a view, or contiguous)."""
    view = lw.views.get(id(v))
    if view is not None:
        return lw.buf(view[0]), view[1]
    return lw.buf(v), contiguous(lw.shape(v))


CAUSAL_MASKED = -1e30
"""A constant mask at or below this above its diagonal (and 0 on and below it) is causal."""


def _is_causal_mask(mask: Value, n: int) -> bool:
    """A constant additive mask whose last two dimensions are the same square causal pattern
    everywhere: 0 for key <= query, at most ``CAUSAL_MASKED`` (e.g. float32's min) above. The
    kernel's causal path then reads only the unmasked keys (their masked exp is below 4.4e-38:
    the result agrees with the masked computation within rounding, tests/test_fuse_kernels.py)."""
    if mask.const is None:
        return False
    m = mask.const.numpy()
    if m.dtype != np.float32 or m.ndim < 2 or m.shape[-2:] != (n, n):
        return False
    upper = np.triu(np.ones(m.shape[-2:], dtype=bool), 1)
    return bool(np.all(m[..., ~upper] == 0.0) and np.all(m[..., upper] <= CAUSAL_MASKED))


@handler("Attention", domain=QC)
def _attention(lw: Lowering, op: Op) -> None:
    q, k, v = op.operands[:3]
    mask = op.operands[3] if len(op.operands) > 3 else None
    for i, x in enumerate((q, k, v, mask)):
        if x is not None and lw.dtype(x) != DType.f32:
            raise unsupported(op, f"input {i} of dtype {lw.dtype(x)}; only float32")
    B, H, Lq, d = lw.shape(q)
    _, Hkv, Lk, dk = lw.shape(k)
    dv = lw.shape(v)[3]
    if dk != d or lw.shape(v)[:3] != (B, Hkv, Lk) or H % Hkv:
        raise unsupported(op, "Q, K, V shapes")
    (qb, qs), (kb, ks), (vb, vs) = (_read(lw, x) for x in (q, k, v))
    r = op.results[0]
    view = lw.views.get(id(r))
    if view is not None:
        yb = lw.bufs.get(id(view[0]))
        if yb is None:
            yb = lw.out(view[0].producer)
        ys = view[1]
    else:
        yb, ys = lw.out(op), contiguous((B, H, Lq, dv))
    causal = int(op.attr("is_causal", 0))
    if mask is not None and not causal and Lq == Lk and _is_causal_mask(mask, Lk):
        causal, mask = 1, None
    if mask is not None:
        ms = broadcast_strides(lw.shape(mask), (B, H, Lq, Lk))
        mptr = Ptr(lw.buf(mask))
    else:
        ms, mptr = (0, 0, 0, 0), Raw("NULL")
    # causal: the score rows of 4 queries; else those of 8, K^T (Lk rounded up to 8) and V; with
    # --threads one such area per slice of a split (split.attention_work: at most 4 slices)
    per_call = attention_call_work(causal, Lk, d, dv)
    work = lw.scratch(DType.f32, attention_work(B, Hkv, per_call) if lw.threads else per_call)
    lw.call(op, "qc_attention_f32",
            [B, H, Hkv, Lq, Lk, d, dv, float(op.attr("scale", 1.0 / math.sqrt(d))), causal,
             Ptr(qb), Ints(qs[:3]), Ptr(kb), Ints(ks[:3]), Ptr(vb), Ints(vs[:3]), mptr, Ints(tuple(ms)),
             Ptr(yb, const=False), Ints(ys[:3]), Ptr(work, const=False)], "attention f32")


@handler("CachedAttention", domain=QC)
def _cached_attention(lw: Lowering, op: Op) -> None:
    """The C decode runtime's attention: the cache is the step's state (``kv_cache``, slots of
    [Hkv, max_context, d] floats in the order of key_cache / value_cache), ``past_len`` the
    run-time count of cached tokens."""
    q, k, v = op.operands[:3]
    for i, x in enumerate((q, k, v)):
        if lw.dtype(x) != DType.f32:
            raise unsupported(op, f"input {i} of dtype {lw.dtype(x)}; only float32")
    _, H, S, d = lw.shape(q)
    _, Hkv, Sk, dk = lw.shape(k)
    dv = lw.shape(v)[3]
    n = int(op.attr("max_context"))
    if dk != d or Sk != S or lw.shape(v)[:3] != (1, Hkv, S) or H % Hkv:
        raise unsupported(op, "Q, K, V shapes")
    if lw.max_context not in (0, n) or lw.step_tokens not in (0, S):
        raise unsupported(op, "cached attentions of different context or step lengths")
    lw.max_context, lw.step_tokens = n, S
    slots = lw.cache_slots
    for attr, width in (("key_cache", d), ("value_cache", dv)):
        slots[int(op.attr(attr))] = Hkv * n * width
    (qb, qs), (kb, ks), (vb, vs) = (_read(lw, x) for x in (q, k, v))
    r = op.results[0]
    view = lw.views.get(id(r))
    if view is not None:
        yb = lw.bufs.get(id(view[0])) or lw.out(view[0].producer)
        ys = view[1]
    else:
        yb, ys = lw.out(op), contiguous((1, H, S, dv))
    work = lw.scratch(DType.f32, attention_call_work(1, n, d, dv))
    lw.call(op, "qc_cached_attention_f32",
            [H, Hkv, S, Raw("past_len"), n, d, dv, float(op.attr("scale", 1.0 / math.sqrt(d))),
             Ptr(qb), Ints(qs[:3]), Ptr(kb), Ints(ks[:3]), Ptr(vb), Ints(vs[:3]),
             Raw(f"qc_cache_slot(kv_cache, {int(op.attr('key_cache'))})"),
             Raw(f"qc_cache_slot(kv_cache, {int(op.attr('value_cache'))})"),
             Ptr(yb, const=False), Ints(ys[:3]), Ptr(work, const=False)], "attention over the KV cache f32")


@handler("Gelu", domain=QC)
def _gelu(lw: Lowering, op: Op) -> None:
    lower_ops.HANDLERS["Gelu"](lw, op)


@handler("SiLU", domain=QC)
def _silu(lw: Lowering, op: Op) -> None:
    x = op.operands[0]
    if lw.dtype(x) != DType.f32:
        raise unsupported(op, f"dtype {lw.dtype(x)}")
    y = lw.out(op)
    lw.call(op, "qc_unary_f32", [Raw("QC_SILU"), y.size, Ptr(lw.buf(x), ctype="float"), 0.0, 0.0,
                                 Ptr(y, ctype="float", const=False)], "silu f32")


@handler("SiLUMul", domain=QC)
def _silu_mul(lw: Lowering, op: Op) -> None:
    for i, v in enumerate(op.operands):
        if v is not None and lw.dtype(v) != DType.f32:
            raise unsupported(op, f"input {i} of dtype {lw.dtype(v)}; only float32")
    g, u = op.operands[:2]
    c = op.operands[2] if len(op.operands) > 2 else None
    shape = lw.shape(g)
    n = shape[-1]
    if lw.shape(u) != shape or (c is not None and math.prod(lw.shape(c)) != n):
        raise unsupported(op, "shapes (g, u the same; c one per channel of the last axis)")
    y = lw.out(op)
    lw.call(op, "qc_silu_mul_f32", [math.prod(shape[:-1]), n, Ptr(lw.buf(g)), Ptr(lw.buf(u)),
                                    Ptr(lw.buf(c)) if c is not None else Raw("NULL"), Ptr(y, const=False)],
            "silu*mul f32")


@handler("RMSNormalization", domain=QC)
def _rmsnorm(lw: Lowering, op: Op) -> None:
    x, scale = op.operands[:2]
    if lw.dtype(x) != DType.f32:
        raise unsupported(op, f"dtype {lw.dtype(x)}")
    shape = lw.shape(x)
    axis = int(op.attr("axis", -1))
    axis = axis + len(shape) if axis < 0 else axis
    n = math.prod(shape[axis:])
    if scale is None:
        sp = Ptr(lw.weight(np.ones(n, np.float32)))
    elif math.prod(lw.shape(scale)) == n:
        sp = Ptr(lw.buf(scale))
    else:
        arr = lw.const(op, 1, "a broadcast scale")
        sp = Ptr(lw.weight(np.broadcast_to(arr, tuple(shape[axis:])).astype(np.float32)))
    y = lw.out(op)
    lw.call(op, "qc_rmsnorm_f32", [math.prod(shape[:axis]), n, float(op.attr("epsilon", 1e-5)), Ptr(lw.buf(x)), sp,
                                   Ptr(y, const=False)], "rmsnorm f32")


@handler("AddRMSNormalization", domain=QC)
def _add_rmsnorm(lw: Lowering, op: Op) -> None:
    a, b, scale = op.operands[:3]
    for i, v in enumerate((a, b, scale)):
        if lw.dtype(v) != DType.f32:
            raise unsupported(op, f"input {i} of dtype {lw.dtype(v)}; only float32")
    shape = lw.shape(a)
    axis = int(op.attr("axis", -1))
    axis = axis + len(shape) if axis < 0 else axis
    n = math.prod(shape[axis:])
    if lw.shape(b) != shape:
        raise unsupported(op, "A and B of different shapes")
    if math.prod(lw.shape(scale)) == n:
        sp = Ptr(lw.buf(scale))
    else:
        arr = lw.const(op, 2, "a broadcast scale")
        sp = Ptr(lw.weight(np.broadcast_to(arr, tuple(shape[axis:])).astype(np.float32)))
    y, s = lw.out(op, 0), lw.out(op, 1)
    lw.call(op, "qc_add_rmsnorm_f32", [math.prod(shape[:axis]), n, float(op.attr("epsilon", 1e-5)), Ptr(lw.buf(a)),
                                       Ptr(lw.buf(b)), sp, Ptr(s, const=False), Ptr(y, const=False)],
            "add+rmsnorm f32")


@handler("Rope", domain=QC)
def _rope(lw: Lowering, op: Op) -> None:
    x, cos, sin = op.operands[:3]
    for i, v in enumerate((x, cos, sin)):
        if lw.dtype(v) != DType.f32:
            raise unsupported(op, f"input {i} of dtype {lw.dtype(v)}; only float32")
    shape = lw.shape(x)
    if len(shape) > 4 or len(lw.shape(cos)) > len(shape) or lw.shape(cos) != lw.shape(sin):
        raise unsupported(op, "rank above 4 or cos / sin shapes")
    pad = 4 - len(shape)
    shape4 = (1,) * pad + tuple(shape)
    xb, xs = _read(lw, x)
    xs4 = (0,) * pad + tuple(xs)
    ts = broadcast_strides(lw.shape(cos), shape4)
    y = lw.out(op)
    lw.call(op, "qc_rope_f32", [*shape4, Ptr(xb), Ints(xs4[:3]), Ptr(lw.buf(cos)), Ptr(lw.buf(sin)), Ints(ts[:3]),
                                Ptr(y, const=False)], "rope f32")


@handler("AddLayerNormalization", domain=QC)
def _add_layernorm(lw: Lowering, op: Op) -> None:
    a, b, scale = op.operands[:3]
    bias = op.operands[3] if len(op.operands) > 3 else None
    for i, v in enumerate(op.operands):
        if v is not None and lw.dtype(v) != DType.f32:
            raise unsupported(op, f"input {i} of dtype {lw.dtype(v)}; only float32")
    y = lw.out(op)
    axis = int(op.attr("axis", -1))
    axis = axis + len(y.shape) if axis < 0 else axis
    norm = tuple(y.shape[axis:])
    n = math.prod(norm)

    def full(i: int, v: Value | None):
        if v is None:
            return Raw("NULL")
        if math.prod(lw.shape(v)) == n:
            return Ptr(lw.buf(v))
        return Ptr(lw.weight(np.broadcast_to(lw.const(op, i, "a broadcast scale / bias"), norm).astype(np.float32)))

    lw.call(op, "qc_add_layernorm_f32", [math.prod(y.shape[:axis]), n, float(op.attr("epsilon", 1e-5)),
                                         Ptr(lw.buf(a)), Ptr(lw.buf(b)), full(2, scale), full(3, bias),
                                         Ptr(y, const=False)], "add+layernorm f32")
