"""Float32 MatMul / Gemm / Conv -> qc_sgemm calls (runtime/qc_sgemm.c), with operand views.

A MatMul operand that is the only use of a Transpose is read through the Transpose (its strides
go to qc_sgemm, the copy is dropped from the schedule), and a MatMul whose only use is a
Transpose writes the transposed result directly (row stride ``ldy``, per-batch offsets): the
Reshape/Transpose to and from attention heads cost nothing. Constant B operands are packed at
compile time (``packing_f32``); others are read in place when their rows are contiguous and
N % 4 == 0, else packed at run time into arena scratch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qc.ir import DType, Graph, Op, Value

from . import packing_f32
from .lowering import Buffer, Call, Ints, Lowering, Ptr, Raw, broadcast_strides, contiguous


@dataclass
class View:
    """A tensor as qc_sgemm reads it: a buffer, the logical shape and element strides into it."""

    buf: Buffer | None  # None: a constant B, packed at compile time
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    drop: Call | None = None  # the Transpose copy this view makes unnecessary
    const: np.ndarray | None = None


def _single_use(v: Value) -> Op | None:
    """The op that is *v*'s only use (not a graph output, not a subgraph), else None."""
    uses = v.uses()
    if len(uses) != 1 or isinstance(uses[0][0], Graph):
        return None
    return uses[0][0]


def _transpose_call(lw: Lowering, t: Op) -> Call | None:
    """The qc_copy_nd call the Transpose handler emitted for *t* (it writes t's result buffer)."""
    out = lw.bufs.get(id(t.results[0]))
    if out is None or out.kind != "arena":
        return None
    for c in reversed(lw.calls):
        if c.fn == "qc_copy_nd" and c.kernel == "transpose" and any(b is out for b, w in c.buffers() if w):
            return c
    return None


def operand(lw: Lowering, v: Value) -> View:
    """*v* as a view: through a single-use Transpose when there is one (its copy is dropped only
    if the caller takes the view, see ``take``)."""
    shape = lw.shape(v)
    p = v.producer
    if p is not None and p.op_type == "Transpose" and v.const is None and _single_use(v) is not None:
        call = _transpose_call(lw, p)
        if call is not None:
            src = p.operands[0]
            sshape = lw.shape(src)
            perm = p.attr("perm") or list(reversed(range(len(sshape))))
            st = contiguous(sshape)
            return View(lw.buf(src), shape, tuple(st[i] for i in perm), call)
    if v.const is not None:
        return View(None, shape, contiguous(shape), const=v.const.numpy())
    return View(lw.buf(v), shape, contiguous(shape))


def plain(lw: Lowering, v: Value) -> View:
    """*v* itself (contiguous), its buffer created if it is a constant."""
    return View(lw.buf(v), lw.shape(v), contiguous(lw.shape(v)))


def take(lw: Lowering, view: View) -> None:
    """Drop the Transpose copy *view* reads through (its result buffer is then never touched)."""
    if view.drop is not None and view.drop in lw.calls:
        lw.calls.remove(view.drop)
        lw.kernels["transpose"] -= 1
        if not lw.kernels["transpose"]:
            del lw.kernels["transpose"]


def _batch(shape, strides):
    """(batch shape, batch strides, rows, cols, row stride, col stride) of a >= 2-D view."""
    return tuple(shape[:-2]), tuple(strides[:-2]), shape[-2], shape[-1], strides[-2], strides[-1]


def _offsets(out: tuple[int, ...], shape: tuple[int, ...], strides: tuple[int, ...]) -> list[int]:
    """Element offset of every batch index of *out* in an operand of batch *shape* (broadcast)."""
    pad = len(out) - len(shape)
    st = [0] * pad + [0 if n == 1 and o != 1 else s for n, s, o in zip(shape, strides, out[pad:])]
    return [sum(i * s for i, s in zip(idx, st)) for idx in (np.ndindex(*out) if out else [()])]


def _output_view(lw: Lowering, op: Op, yshape: tuple[int, ...]) -> tuple[Buffer, tuple[int, ...], Op | None]:
    """Where the MatMul writes: through its single-use Transpose when the columns stay contiguous
    (the Transpose is then consumed), else its own result buffer (contiguous)."""
    y = op.results[0]
    t = _single_use(y)
    if t is not None and t.op_type == "Transpose" and len(yshape) >= 2 and lw.loop_depth == 0:
        perm = list(t.attr("perm") or list(reversed(range(len(yshape)))))
        zshape = lw.shape(t.results[0])
        zst = contiguous(zshape)
        inv = [perm.index(d) for d in range(len(yshape))]
        strides = tuple(zst[inv[d]] for d in range(len(yshape)))
        if strides[-1] == 1:
            return lw.out(t), strides, t
    return lw.out(op), contiguous(yshape), None


def _bias_add(lw: Lowering, op: Op, N: int) -> tuple[Op, Ptr] | None:
    """(the Add, its bias) when the MatMul's only use is an Add of a constant float32 row of N
    values (shape (N,) or (1, .., N)) with the same result shape: qc_sgemm adds it per column."""
    y = op.results[0]
    ad = _single_use(y)
    if ad is None or ad.op_type != "Add" or len(ad.operands) != 2 or lw.loop_depth:
        return None
    other = ad.operands[1] if ad.operands[0] is y else ad.operands[0]
    if other is y or other.const is None or lw.dtype(other) != DType.f32:
        return None
    cshape = lw.shape(other)
    if not cshape or cshape[-1] != N or math.prod(cshape) != N or lw.shape(ad.results[0]) != lw.shape(y):
        return None
    return ad, Ptr(lw.weight(other.const.numpy().astype(np.float32).reshape(N), DType.f32))


def matmul(lw: Lowering, op: Op, kernel: str = "matmul f32") -> None:
    """MatMul (float32, any batch broadcasting, 1-D operands promoted) -> qc_sgemm / qc_sgemm_batch."""
    va, vb = operand(lw, op.operands[0]), operand(lw, op.operands[1])
    if va.const is not None or va.strides[-1] != 1:  # A's k must be contiguous: read the copy
        va = plain(lw, op.operands[0])
    a_shape, a_st = va.shape, va.strides
    if len(a_shape) == 1:
        a_shape, a_st = (1,) + a_shape, (0,) + a_st
    b_shape, b_st = vb.shape, vb.strides
    if len(b_shape) == 1:
        b_shape, b_st = b_shape + (1,), b_st + (0,)
    abatch, ast, M, K, lda, _ = _batch(a_shape, a_st)
    bbatch, bst, _, N, brs, bcs = _batch(b_shape, b_st)
    out = tuple(np.broadcast_shapes(abatch, bbatch))
    promoted = len(va.shape) == 1 or len(vb.shape) == 1
    if promoted:
        ybuf, yst, consumed = lw.out(op), contiguous(out + (M, N)), None
    else:
        ybuf, yst, consumed = _output_view(lw, op, out + (M, N))
    bias: Ptr | Raw = Raw("NULL")
    if consumed is None:
        fused = _bias_add(lw, op, N)
        if fused is not None:
            consumed, bias = fused
            ybuf = lw.out(consumed)
    ldy = yst[-2] if M > 1 else N
    aoff, boff, yoff = _offsets(out, abatch, ast), _offsets(out, bbatch, bst), _offsets(out, out, yst[:-2])
    lda = lda if M > 1 else K
    if vb.const is not None:  # constant B: packed per distinct batch matrix at compile time
        mats = np.broadcast_to(vb.const.astype(np.float32), bbatch + (K, N)).reshape(-1, K, N)
        packed, per = packing_f32.pack_batches(mats)
        bufb = lw.weight(packed, DType.f32)
        boff = [o // (K * N) * per for o in boff]
        brs = bcs = 0
    else:
        assert vb.buf is not None
        bufb = vb.buf
    for v in (va, vb):
        take(lw, v)
    if consumed is not None:
        lw.consumed.add(id(consumed))
    # broadcast B, batches of A and Y one after another: one GEMM of batch * M rows
    if len(set(boff)) == 1 and all(aoff[i] == aoff[0] + i * M * lda and yoff[i] == yoff[0] + i * M * ldy
                                   for i in range(len(aoff))):
        M, aoff, boff, yoff = M * len(aoff), aoff[:1], boff[:1], yoff[:1]
    work = _work(lw, K, N, brs, bcs)
    assert va.buf is not None
    common = [M, N, K]
    if len(aoff) == 1:
        lw.call(op, "qc_sgemm", common + [Ptr(va.buf, aoff[0]), lda, Ptr(bufb, boff[0]), brs, bcs, 1.0,
                                          Raw("NULL"), 0, 0, 0.0, bias, Ptr(ybuf, yoff[0], const=False),
                                          ldy, work], kernel, scratch=_scratch(work))
    else:
        lw.call(op, "qc_sgemm_batch", [len(aoff), Ints(tuple(aoff)), Ints(tuple(boff)), Ints(tuple(yoff))]
                + common + [Ptr(va.buf), lda, Ptr(bufb), brs, bcs, 1.0, bias, Ptr(ybuf, const=False), ldy,
                            work], kernel, scratch=_scratch(work))


def _work(lw: Lowering, K: int, N: int, brs: int, bcs: int):
    """The scratch qc_sgemm packs B into (Raw NULL when it reads B packed or in place)."""
    if (brs == 0 and bcs == 0) or (bcs == 1 and N % 4 == 0):
        return Raw("NULL")
    return Ptr(lw.scratch(DType.f32, packing_f32.packed_size(K, N)), const=False)


def _scratch(work) -> list[Buffer]:
    return [work.buf] if isinstance(work, Ptr) else []


def gemm(lw: Lowering, op: Op) -> None:
    """Gemm: alpha * op(A) op(B) + beta * C; a constant B packed, C a fused column bias when it is
    a constant row (or scalar), else added by qc_sgemm from its broadcast strides."""
    a, b = op.operands[:2]
    c = op.operands[2] if len(op.operands) > 2 else None
    ta, tb = op.attr("transA", 0), op.attr("transB", 0)
    alpha, beta = float(op.attr("alpha", 1.0)), float(op.attr("beta", 1.0))
    ash, bsh = lw.shape(a), lw.shape(b)
    M, K = (ash[1], ash[0]) if ta else ash
    N = bsh[0] if tb else bsh[1]
    y = lw.out(op)
    va = operand(lw, a) if not ta else plain(lw, a)
    if ta or va.strides[-1] != 1:
        if not ta:
            va = plain(lw, a)
        else:  # A^T materialized: qc_sgemm reads k contiguous
            at = lw.scratch(DType.f32, M * K)
            lw.call(op, "qc_copy_nd", [2, Ints((M, K)), Ints((1, M)), 4, Ptr(va.buf), Ptr(at, const=False)],
                    "transpose")
            va = View(at, (M, K), (K, 1))
    assert va.buf is not None
    if b.const is not None:
        bm = b.const.numpy().astype(np.float32)
        bufb, brs, bcs = lw.weight(packing_f32.pack_b(bm.T if tb else bm), DType.f32), 0, 0
    else:
        bufb = lw.buf(b)
        brs, bcs = (1, K) if tb else (N, 1)
    bias, cargs = Raw("NULL"), [Raw("NULL"), 0, 0, 0.0]
    if c is not None:
        csh = lw.shape(c)
        if c.const is not None and (len(csh) == 0 or math.prod(csh) == N and csh[-1] == N or math.prod(csh) == 1):
            vals = np.broadcast_to(c.const.numpy().astype(np.float32).reshape(-1), (N,))
            bias = Ptr(lw.weight((np.float32(beta) * vals).astype(np.float32), DType.f32))
        else:
            crs, ccs = broadcast_strides(csh, (M, N))
            cargs = [Ptr(lw.buf(c)), crs, ccs, beta]
    work = _work(lw, K, N, brs, bcs)
    take(lw, va)
    lw.call(op, "qc_sgemm", [M, N, K, Ptr(va.buf), va.strides[0] if M > 1 else K, Ptr(bufb), brs, bcs, alpha]
            + cargs + [bias, Ptr(y, const=False), N, work], "gemm f32", scratch=_scratch(work))


SCRATCH_SHARE = 10  # a conv's im2col scratch stays within 1/10 of its input + output


def conv_plan(cg: int, ocg: int, KH: int, KW: int, H: int, W: int, OH: int, OW: int, params, io_elems: int
              ) -> tuple[int, int] | None:
    """(pixel block nb, scratch floats) for qc_conv2d_sgemm_f32, or None for the direct kernel:
    fewer than 4 output channels per group (depthwise: a GEMM of M < 4 wastes the tile), or an
    im2col block of 16 pixels that would not fit in SCRATCH_SHARE of the conv's own memory (so
    the arena grows by at most that share)."""
    if ocg < 4:
        return None
    K, P = cg * KH * KW, OH * OW
    if KH == KW == 1 and tuple(params[:4]) == (1, 1, 0, 0) and (H, W) == (OH, OW) and P % 4 == 0:
        return P, 0
    nb = min((P + 15) // 16 * 16, io_elems // SCRATCH_SHARE // K // 16 * 16)
    if nb < 16:
        return None
    return nb, K * nb
