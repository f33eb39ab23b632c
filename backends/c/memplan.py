"""The static memory plan: liveness on the final schedule, greedy offsets in one arena."""
from __future__ import annotations

from .lowering import ALIGN, Buffer, Call


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan(calls: list[Call], buffers: list[Buffer]) -> int:
    """Give every arena buffer an offset; return the arena size in bytes.

    A buffer lives from the first call that touches it to the last (aliases count for their
    root). Buffers are placed largest first (ties: first defined first) at the lowest aligned
    offset that overlaps no placed buffer whose lifetime intersects its own (TFLite's
    greedy-by-size). A call's inputs and outputs are live at the same call, so an output never
    shares memory with an input of its own call. A buffer that a loop body touches and that is
    live outside the loop lives through the whole loop (the body runs again after its last use).
    """
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
