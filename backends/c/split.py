"""How a kernel call splits across threads (``qc compile --threads N``, docs/c-backend.md).

A ``Split`` names one dimension of a call (rows of a GEMM, batches of a batched MatMul, a range
of elements): the call's ``extent`` units along it, cut only at multiples of ``granule`` units,
and how each argument depends on it: ``counts`` are the arguments that become the slice's unit
count (times a factor), ``offsets`` the pointer or int-table arguments that move by a number of
elements per unit. The emitter writes one static task function per split call that computes its
units ``[lo, hi)`` from (task, ntasks) with ``qc_split_range`` and calls the same kernel on them.

``SPLITTERS`` maps a kernel name to the function that describes the split of one of its calls
(None: that call does not split). A new kernel that computes every output element from its own
slice of the inputs, whatever the slicing (no cross-slice reduction), adds one entry. The
granule keeps the results identical for any thread count: it is a multiple of the kernel's
register tile (rows) or vector width (elements), so every slice is tiled as the whole would be.

``plan`` gives ``Call.split`` to the calls whose estimated work pays for a dispatch.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .lowering import Call, Ints, Ptr

MIN_WORK = 1 << 16
"""A call splits when its estimated work (``Split.work``: multiply-adds, or elements times a
per-element cost, about one unit per instruction) reaches this: a dispatch costs a few thousand
instructions (a condition-variable wake-up per worker)."""

MIN_TASK_WORK = 1 << 15
"""... and it is cut into at most work / MIN_TASK_WORK tasks (and at most its granule count)."""

ROW_GRANULE = 8
"""Rows per granule of the GEMMs: a multiple of every qc_gemm_s8 variant's row tile (4, 2, 1),
of qc_gemm_f32's four-row block, and of an eight-row SIMD tile."""

ELEM_GRANULE = 64
"""Elements per granule of element-wise kernels: whole vectors and unrolled loops (and 256 bytes
of float32 output, so two threads never write one cache line)."""


@dataclass(frozen=True)
class Split:
    """How one call splits: see the module docstring."""

    extent: int
    granule: int
    work: int
    counts: dict[int, int] = field(default_factory=dict)  # arg index -> factor (units -> the arg's value)
    offsets: dict[int, int] = field(default_factory=dict)  # arg index -> elements per unit

    @property
    def granules(self) -> int:
        return -(-self.extent // self.granule)

    @property
    def max_tasks(self) -> int:
        return max(1, min(self.granules, self.work // MIN_TASK_WORK))


Splitter = Callable[[list], "Split | None"]
SPLITTERS: dict[str, Splitter] = {}
"""Kernel name -> the description of how one of its calls (its argument list) splits."""


def splitter(*names: str):
    """Register the decorated function as the splitter of the kernels *names*."""
    def deco(fn: Splitter) -> Splitter:
        for n in names:
            SPLITTERS[n] = fn
        return fn
    return deco


def _ptrs(args: list, per_unit: dict[int, int]) -> dict[int, int]:
    """The entries of *per_unit* whose argument is a pointer or an int table (not NULL)."""
    return {i: s for i, s in per_unit.items() if isinstance(args[i], (Ptr, Ints))}


@splitter("qc_gemm_s8")
def _gemm_s8(a: list) -> Split:
    # (M, N, K, A, Wp, C): rows of A and C; integer arithmetic, exact under any split
    M, N, K = a[0], a[1], a[2]
    return Split(M, ROW_GRANULE, M * N * K // 4, {0: 1}, {3: K, 5: N})


@splitter("qc_gemm_s8_f32", "qc_gemm_s8_q8")
def _gemm_s8_fused(a: list) -> Split:
    # (M, N, K, A, lda, Wp, <the epilogue's fields>, out, ldo): rows of A and out; each output is
    # its exact int32 sum through the same epilogue whatever the tile (vector and scalar forms agree)
    M, N, K, lda, ldo = a[0], a[1], a[2], a[4], a[-1]
    return Split(M, ROW_GRANULE, M * N * K // 4, {0: 1}, {3: lda, len(a) - 2: ldo})


@splitter("qc_dequant_acc_f32")
def _dequant_acc(a: list) -> Split:
    # (M, N, C, bias, scale, per_channel, fbias, out): bias / scale / fbias are per column
    M, N = a[0], a[1]
    return Split(M, ROW_GRANULE, 3 * M * N, {0: 1}, {2: N, 7: N})


@splitter("qc_requant_s8")
def _requant(a: list) -> Split:
    # (M, N, C, bias, mult, shift, per_channel, out_zp, qmin, qmax, out)
    M, N = a[0], a[1]
    return Split(M, ROW_GRANULE, 6 * M * N, {0: 1}, {2: N, 10: N})


@splitter("qc_transpose_s8")
def _transpose_s8(a: list) -> Split:
    # (R, Cn, x, ldx, y, ldy): rows of x = columns of y; 8 x 8 NEON blocks
    R, Cn, ldx = a[0], a[1], a[3]
    return Split(R, ROW_GRANULE, 2 * R * Cn, {0: 1}, {2: ldx, 4: 1})


@splitter("qc_gemm_f32")
def _gemm_f32(a: list) -> Split:
    # (M, N, K, A, ars, acs, B, brs, bcs, alpha, C, crs, ccs, beta, Y): rows of A, C and Y
    M, N, K, ars, crs = a[0], a[1], a[2], a[4], a[11]
    return Split(M, ROW_GRANULE, M * N * K, {0: 1}, _ptrs(a, {3: ars, 10: crs, 14: N}))


@splitter("qc_sgemm")
def _sgemm(a: list) -> Split | None:
    # (M, N, K, A, lda, B, brs, bcs, alpha, C, crs, ccs, beta, bias, Y, ldy, work): rows of A, C, Y
    # in 4-row tiles; not when it packs B into `work` first (every task would pack it)
    M, N, K, lda, crs, ldy = a[0], a[1], a[2], a[4], a[10], a[15]
    if isinstance(a[16], Ptr):
        return None
    return Split(M, ROW_GRANULE, M * N * K // 4, {0: 1}, _ptrs(a, {3: lda, 9: crs, 14: ldy}))


@splitter("qc_sgemm_batch")
def _sgemm_batch(a: list) -> Split | None:
    # (batch, aoff, boff, yoff, M, N, K, A, lda, B, brs, bcs, alpha, bias, Y, ldy, work): whole
    # batches through the three offset tables; not with a `work` to pack B into
    batch, M, N, K = a[0], a[4], a[5], a[6]
    if batch < 2 or isinstance(a[16], Ptr):
        return None
    return Split(batch, 1, batch * M * N * K // 4, {0: 1}, {1: 1, 2: 1, 3: 1})


@splitter("qc_matmul_f32")
def _matmul_f32(a: list) -> Split | None:
    # (batch, aoff, boff, M, N, K, A, B, Y): whole batches (attention heads); A and B are
    # addressed through the offset tables, Y is batch-major
    batch, M, N, K = a[0], a[3], a[4], a[5]
    if batch < 2:
        return None
    return Split(batch, 1, batch * M * N * K, {0: 1}, {1: 1, 2: 1, 8: M * N})


ATTENTION_TASKS = 4
"""qc_attention_f32 splits into at most this many slices: each needs its own work area."""


def attention_call_work(causal: int, Lk: int, d: int, dv: int) -> int:
    """Floats of qc_attention_f32's work for one call (qc_ops.h): causal, the score rows of 4
    queries; else those of 8, K^T (Lk rounded up to 8) and V."""
    return 4 * Lk if causal else (8 + d) * ((Lk + 7) & ~7) + (dv & ~7) * Lk


def _attention_units(B: int, Hkv: int, per_call: int) -> tuple[int, int, int]:
    """(extent, granule, work floats per unit): batches when B > 1, else K / V heads, in at
    most ATTENTION_TASKS granules; a slice starting at unit lo uses work + lo * per_unit."""
    extent = B if B > 1 else Hkv
    g = -(-extent // ATTENTION_TASKS)
    return extent, g, -(-per_call // g)


def attention_work(B: int, Hkv: int, per_call: int) -> int:
    """Floats the lowering gives qc_attention_f32's work: one call's area for every slice."""
    extent, g, per_unit = _attention_units(B, Hkv, per_call)
    return (-(-extent // g) - 1) * g * per_unit + per_call


@splitter("qc_attention_f32")
def _attention(a: list) -> Split | None:
    # (B, H, Hkv, Lq, Lk, d, dv, scale, causal, q, qs, k, ks, v, vs, mask, ms, y, ys, work): one
    # batch (B > 1) or one group of H / Hkv query heads sharing a K / V head (B = 1) per unit;
    # each slice uses its own work area, only when the lowering sized `work` for them all
    B, H, Hkv, Lq, Lk, d, dv, causal = a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[8]
    qs, ks, vs, ms, ys, work = a[10], a[12], a[14], a[16], a[18], a[19]
    per_call = attention_call_work(causal, Lk, d, dv)
    extent, g, per_unit = _attention_units(B, Hkv, per_call)
    if not isinstance(work, Ptr) or work.buf.size - work.elems < attention_work(B, Hkv, per_call):
        return None
    cost = B * H * Lq * Lk * (d + dv)
    if B > 1:
        per = {9: qs.values[0], 11: ks.values[0], 13: vs.values[0], 15: ms.values[0], 17: ys.values[0]}
        return Split(B, g, cost, {0: 1}, _ptrs(a, per) | {19: per_unit})
    grp = H // Hkv
    per = {9: grp * qs.values[1], 11: ks.values[1], 13: vs.values[1], 15: grp * ms.values[1], 17: grp * ys.values[1]}
    return Split(Hkv, g, cost, {1: grp, 2: 1}, {i: v for i, v in _ptrs(a, per).items() if v} | {19: per_unit})


def _w4a8_rows(a: list, M: int, K: int, sa: Ptr) -> tuple[int, int]:
    """(qa, sa) elements per row of qc_quantize_q8b32's outputs: the i8mm layout (row pairs, sa
    and suma twice; told apart by sa's size, packing_s4.scratch_elems) has 2 per row and block."""
    nb = -(-K // 32)
    dup = 2 if sa.buf.size >= 2 * (M + M % 2) * nb else 1
    return nb * 32, dup * nb


@splitter("qc_quantize_q8b32")
def _quantize_q8b32(a: list) -> Split:
    # (M, K, A, qa, sa, suma): rows, in granules of 8 (whole i8mm row pairs)
    M, K = a[0], a[1]
    nq, ns = _w4a8_rows(a, M, K, a[4])
    return Split(M, ROW_GRANULE, 8 * M * K, {0: 1}, {2: K, 3: nq, 4: ns, 5: ns})


@splitter("qc_gemm_s4a8")
def _gemm_s4a8(a: list) -> Split:
    # (M, N, K, qa, sa, suma, Wp, ws, wzp, bias, out): rows of the activations and out
    M, N, K = a[0], a[1], a[2]
    nq, ns = _w4a8_rows(a, M, K, a[4])
    return Split(M, ROW_GRANULE, M * N * K // 4, {0: 1}, {3: nq, 4: ns, 5: ns, 10: N})


@splitter("qc_quantize_q8r")
def _quantize_q8r(a: list) -> Split:
    # (M, K, A, qa, sa, nu): rows, in granules of 8 (whole tiles of the layout)
    M, K = a[0], a[1]
    nb = -(-K // 32)
    return Split(M, ROW_GRANULE, 8 * M * K, {0: 1}, {2: K, 3: nb * 32, 4: 1, 5: nb})


@splitter("qc_gemm_s4a8r")
def _gemm_s4a8r(a: list) -> Split:
    # (M, N, K, qa, sa, nu, Wp, wsi, wzp, ws, bias, out): rows of the activations and out
    M, N, K = a[0], a[1], a[2]
    nb = -(-K // 32)
    return Split(M, ROW_GRANULE, M * N * K // 4, {0: 1}, {3: nb * 32, 4: 1, 5: nb, 11: N})


# qc_unary_f32's ops by cost per element (about instructions; libm calls cost more)
_CHEAP_UNARY = {"QC_NEG", "QC_ABS", "QC_RELU", "QC_CLIP", "QC_LEAKYRELU", "QC_HARDSIGMOID", "QC_HARDSWISH",
                "QC_FLOOR", "QC_CEIL", "QC_ROUND", "QC_SIGN", "QC_NOT", "QC_RECIP", "QC_SQRT",
                "QC_THRESHOLDEDRELU", "QC_SOFTSIGN"}


@splitter("qc_unary_f32")
def _unary(a: list) -> Split:
    # (op, n, x, p0, p1, y): element ranges
    n = a[1]
    cost = 2 if getattr(a[0], "text", "") in _CHEAP_UNARY else 20
    return Split(n, ELEM_GRANULE, cost * n, {1: 1}, {2: 1, 5: 1})


@splitter("qc_quantize_s8", "qc_quantize_u8", "qc_dequantize_s8", "qc_dequantize_u8")
def _quantize(a: list) -> Split:
    # (n, x, scale, zp, y)
    n = a[0]
    return Split(n, ELEM_GRANULE, 4 * n, {0: 1}, {1: 1, 4: 1})


@splitter("qc_softmax_f32")
def _softmax(a: list) -> Split | None:
    # (outer, n, inner, log, x, y): whole rows of the outer dimension
    outer, n, inner = a[0], a[1], a[2]
    return Split(outer, 1, 30 * outer * n * inner, {0: 1}, {4: n * inner, 5: n * inner})


@splitter("qc_layernorm_f32")
def _layernorm(a: list) -> Split:
    # (outer, n, eps, x, scale, bias, y, mean_out, invstd_out): rows; the statistics per row
    outer, n = a[0], a[1]
    return Split(outer, 1, 8 * outer * n, {0: 1}, _ptrs(a, {3: n, 6: n, 7: 1, 8: 1}))


@splitter("qc_rmsnorm_f32")
def _rmsnorm(a: list) -> Split:
    # (outer, n, eps, x, scale, y): rows
    outer, n = a[0], a[1]
    return Split(outer, 1, 6 * outer * n, {0: 1}, {3: n, 5: n})


def describe(c: Call) -> Split | None:
    """How *c* splits (None: its kernel has no splitter, or this call cannot split)."""
    fn = SPLITTERS.get(c.fn)
    if fn is None or c.block:  # control flow, or a kernel without a splitter
        return None
    s = fn(c.args)
    if s is None or s.extent < 2:
        return None
    for i in s.counts:
        assert isinstance(c.args[i], int), (c.fn, i)
    return s


def plan(calls: list[Call]) -> int:
    """Set ``split`` on every call that pays for a dispatch (work >= MIN_WORK, more than one
    task) outside If / Loop blocks (their calls may read the block's variables); returns how many."""
    depth, n = 0, 0
    for c in calls:
        if c.block < 0:
            depth += c.block
        if depth == 0 and c.block == 0:
            s = describe(c)
            if s is not None and s.work >= MIN_WORK and s.max_tasks > 1:
                c.split = s
                n += 1
        if c.block > 0:
            depth += c.block
    return n
