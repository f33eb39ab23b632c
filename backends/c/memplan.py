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
    shares memory with an input of its own call.
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
