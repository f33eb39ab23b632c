"""Pattern helpers shared by the ``fuse-*`` passes (not a public API).

A fusion matches a chain of default-domain ops ending in a *tail* op, backwards from the tail;
every value inside the chain must be used only by the chain (``only_used_by``), so no value
that something else reads disappears. ``Fusion.apply`` then inserts the fused op before the
tail, hands it the tail's result (name, type, uses, graph outputs) and erases the chain.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from qc.ir.core import Graph, Module, Op, Value
from qc.ir.types import TensorType

from ._util import const_array, is_default_domain

QC_DOMAIN = "qc"
"""The domain of the fused ops that ONNX has no op for at the model's opset (docs/passes.md)."""


def producer(v: Value | None, *op_types: str, graph: Graph | None = None) -> Op | None:
    """The default-domain op of one of *op_types* that computes *v*, as any of its results (in
    *graph* when given)."""
    if v is None or v.producer is None:
        return None
    p = v.producer
    if not is_default_domain(p) or p.op_type not in op_types or (graph is not None and p.graph is not graph):
        return None
    if not any(r is v for r in p.results):
        return None
    return p


def only_used_by(v: Value | None, *ops: Op) -> bool:
    """*v* is read only by *ops* (each at least once) and is no graph output."""
    if v is None:
        return False
    users = {id(u) for u, _ in v.uses()}
    return bool(users) and users <= {id(o) for o in ops}


def scalar(v: Value | None, constants: set[int]) -> float | None:
    """The value of a constant with one element (any shape), else None."""
    a = const_array(v, constants)
    if a is None or a.size != 1 or a.dtype.kind not in "fiu":
        return None
    return float(a.reshape(-1)[0])


def is_f32_const(v: Value | None, constants: set[int], value: float) -> bool:
    """*v* is a one-element constant equal to float32(*value*) (exact float32 bits)."""
    x = scalar(v, constants)
    return x is not None and np.float32(x) == np.float32(value)


def other(op: Op, v: Value) -> Value | None:
    """The other operand of a binary op one of whose operands is *v* (None if neither is)."""
    a, b = (op.operands + (None, None))[:2]
    if a is v:
        return b
    if b is v:
        return a
    return None


def static_shape(v: Value | None) -> tuple[int, ...] | None:
    if v is None:
        return None
    if v.const is not None:
        return tuple(v.const.shape)
    t = v.type
    if not isinstance(t, TensorType) or not t.is_static:
        return None
    return tuple(int(d) for d in t.shape)


def is_float(v: Value | None) -> bool:
    t = v.const.dtype if v is not None and v.const is not None else getattr(v, "type", None)
    dt = t if v is not None and v.const is not None else getattr(t, "dtype", None)
    return dt is not None and dt.is_float


def reduce_axes(op: Op, constants: set[int], opset: int) -> list[int] | None:
    """The axes of a ReduceMean (attribute, or input 1 from opset 18), None when not constant."""
    if len(op.operands) > 1 and op.operands[1] is not None:
        a = const_array(op.operands[1], constants)
        return None if a is None else [int(x) for x in a.reshape(-1)]
    if opset >= 18:
        return [] if op.attr("noop_with_empty_axes", 0) == 0 else None
    return [int(x) for x in op.attr("axes", [])]


def trailing_axes(axes: list[int], rank: int) -> int | None:
    """k when *axes* are exactly the last k axes of a rank-*rank* tensor (any order, negative or
    not), else None. Empty axes (reduce all) count as all axes."""
    if rank <= 0:
        return None
    norm = sorted({a + rank if a < 0 else a for a in (axes or range(rank))})
    k = len(norm)
    return k if norm == list(range(rank - k, rank)) and len(norm) == len(axes or range(rank)) else None


def affine_const(op: Op, x_shape: tuple[int, ...], k: int, constants: set[int]):
    """(input, constant) of a Mul/Add whose constant operand broadcasts along the last k axes only."""
    for inner, c in (op.operands, tuple(reversed(op.operands))):
        shape = static_shape(c)
        if c is None or c.const is None or id(c) not in constants or shape is None or not is_float(c):
            continue
        if len(shape) > len(x_shape) or any(d != 1 for d in shape[:max(0, len(shape) - k)]):
            continue
        tail = shape[-k:] if len(shape) >= k else (1,) * (k - len(shape)) + shape
        if tuple(tail) == tuple(x_shape[-k:]):
            return inner, c
    return None


def ensure_domain(module: Module, domain: str = QC_DOMAIN) -> None:
    module.opset_imports.setdefault(domain, 1)


def apply(tail: Op, fused: Op, dead: Iterable[Op]) -> None:
    """Put *fused* before *tail*, give it the tail's result (name, type, uses) and erase *tail*
    and *dead* (ops of the matched chain whose results only the chain read)."""
    g = tail.graph
    old = tail.results[0]
    g.insert_before(tail, fused)
    new = fused.add_result(Value(old.name, old.type))
    old.name = old.name + ".unfused" if old.name else ""
    old.replace_all_uses_with(new)
    if tail.name and not fused.name:
        fused.name = tail.name
    seen: set[int] = set()
    for op in [tail, *dead]:
        if id(op) not in seen and op.graph is g:
            seen.add(id(op))
            g.remove(op)
