"""The static memory plan: liveness on the final schedule, greedy offsets in one arena."""
from __future__ import annotations

import numpy as np

from .lowering import ALIGN, Buffer, Call, Ints, Ptr, contiguous

# elementwise kernels whose output may take the memory of an input that dies at the call:
# fn -> (positions of the inputs that may, position of the output)
# (each reads element i of that input before it writes element i of the output, nothing else)
_IN_PLACE = {"qc_unary_f32": ((2,), 5), "qc_unary_int": ((3,), 6), "qc_binary": ((6, 7), 8),
             "qc_dequant_acc_f32": ((2,), 7), "qc_add_layernorm_f32": ((3, 4), 7), "qc_silu_mul_f32": ((2, 3), 5),
             "qc_add_rmsnorm_f32": ((3, 4), 6)}


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan(calls: list[Call], buffers: list[Buffer]) -> int:
    """Give every arena buffer an offset; return the arena size in bytes.

    A buffer lives from the first call that touches it to the last (aliases count for their
    root). Buffers are placed largest first (ties: first defined first) at the lowest aligned
    offset that overlaps no placed buffer whose lifetime intersects its own (TFLite's
    greedy-by-size). A call's inputs and outputs are live at the same call, so an output never
    shares memory with an input of its own call, except where an elementwise kernel
    (``_IN_PLACE``) writes over an input that dies there (``in_place``: the output becomes an
    alias of it). A buffer that a loop body touches and that is live outside the loop lives
    through the whole loop (the body runs again after its last use).
    """
    first, last = _lifetimes(calls)
    if in_place(calls, first, last):
        first, last = _lifetimes(calls)
    live = [b for b in buffers if id(b) in first and b.nbytes > 0]
    order = sorted(live, key=lambda b: (-_align(b.nbytes), first[id(b)]))
    placed: list[Buffer] = []
    size = 0
    for b in order:
        lo, hi = first[id(b)], last[id(b)]
        busy = sorted((p.offset, p.offset + _align(p.nbytes)) for p in placed
                      if not (last[id(p)] < lo or first[id(p)] > hi))
        offset = 0
        for start, end in busy:
            if offset + _align(b.nbytes) <= start:
                break
            offset = max(offset, end)
        b.offset = offset
        placed.append(b)
        size = max(size, offset + _align(b.nbytes))
    return size


def _lifetimes(calls: list[Call]) -> tuple[dict[int, int], dict[int, int]]:
    """First and last call index touching each arena root (loop bodies extended, see plan)."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for i, c in enumerate(calls):
        for b, _ in c.buffers():
            r = b.root
            if r.kind != "arena":
                continue
            first.setdefault(id(r), i)
            last[id(r)] = i
    for lo, hi in loops(calls):  # inner loops first: an outer loop sees the extended lifetimes
        touched = {id(b.root) for c in calls[lo:hi + 1] for b, _ in c.buffers()}
        for k in touched & first.keys():
            if first[k] < lo or last[k] > hi:
                first[k], last[k] = min(first[k], lo), max(last[k], hi)
    return first, last


def _dense(c: Call, pos: int) -> bool:
    """The operand at *pos* of an elementwise call is read at the output's own indices."""
    if c.fn != "qc_binary":
        return True
    shape, strides = c.args[3], c.args[4 if pos == 6 else 5]
    return isinstance(shape, Ints) and isinstance(strides, Ints) and strides.values == contiguous(shape.values)


def _itemsize(b: Buffer) -> int:
    return int(np.dtype(b.dtype.numpy).itemsize)


def in_place(calls: list[Call], first: dict[int, int], last: dict[int, int]) -> bool:
    """Make the output of an elementwise call an alias of an input whose whole arena buffer
    (same element size and bytes, read from its start) dies at that call, and whose own life starts
    there. Returns whether any output was redirected (the lifetimes are then stale)."""
    changed = False
    for i, c in enumerate(calls):
        spec = _IN_PLACE.get(c.fn)
        if spec is None or c.text:
            continue
        out = c.args[spec[1]]
        if not isinstance(out, Ptr) or out.elems or out.buf.kind != "arena" or first.get(id(out.buf)) != i:
            continue
        y = out.buf
        for pos in spec[0]:
            a = c.args[pos]
            if not isinstance(a, Ptr) or a.elems or not _dense(c, pos):
                continue
            r = a.buf.root
            if r.kind != "arena" or r is y or last.get(id(r)) != i or _itemsize(a.buf) != _itemsize(y) \
                    or not (a.buf.nbytes == r.nbytes == y.nbytes):
                continue
            y.kind, y.base = "alias", r
            last[id(r)] = last[id(y)]
            del first[id(y)], last[id(y)]
            changed = True
            break
    return changed


def loops(calls: list[Call]) -> list[tuple[int, int]]:
    """(first, last) call index of every loop block (``Call.loop``), inner loops before outer ones."""
    stack: list[tuple[int, bool]] = []
    out: list[tuple[int, int]] = []
    for i, c in enumerate(calls):
        if c.block < 0:
            start, is_loop = stack.pop()
            if is_loop:
                out.append((start, i))
        if c.block > 0:
            stack.append((i, c.loop))
    return out
