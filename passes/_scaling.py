"""Per-feature rescaling of an activation (AWQ, SmoothQuant): ``x / s`` folded into the
op that makes ``x`` when that op multiplies by a per-feature constant, else an explicit Mul."""
from __future__ import annotations

import re

import numpy as np

from qc.ir.core import Graph, Module, Op, Value
from qc.ir.dtypes import DType
from qc.ir.tensor import Tensor
from qc.ir.types import TensorType

from ._util import const_array, constant_consts, is_default_domain


class NameTable:
    """Names taken in the main graph (inputs, consts, op results), to keep new names unique."""

    def __init__(self, graph: Graph):
        self.taken = {v.name for v in graph.inputs} | set(graph.consts)
        for op in graph.walk():
            self.taken.update(r.name for r in op.results if r is not None)

    def fresh(self, base: str) -> str:
        """``base`` or ``base_N``, not taken before, and taken from now on."""
        name, n = base, 0
        while name in self.taken:
            n += 1
            name = f"{base}_{n}"
        self.taken.add(name)
        return name


def divide_input(graph: Graph, x: Value, s: np.ndarray, consumers: list[Op], constants: set[int],
                 names: NameTable, suffix: str, order: dict[int, int] | None = None) -> str:
    """Make ``consumers`` read ``x / s`` (s per feature, last axis): fold 1/s into x's producer
    when possible, else insert ``Mul(x, 1/s)``. Returns how, for remarks. ``order`` (op id ->
    position, from before the rewrites) spares a scan of the graph per call."""
    inv_s = (np.float32(1.0) / s).astype(np.float32)
    if fold_into_producer(graph, x, inv_s, consumers, constants, names, suffix):
        return f"folded into {describe(x.producer)}"
    inv = graph.add_const(names.fresh(f"{x.name}.{suffix}_inv_scale"), Tensor.from_array(inv_s))
    scaled = Value(names.fresh(f"{x.name}.{suffix}"), x.type)
    mul = Op("Mul", [x, inv], results=[scaled], name=f"{x.name}.{suffix}_scale")
    graph.insert_before(first_op(graph, consumers, order), mul)
    for op in consumers:
        for i, v in enumerate(op.operands):
            if v is x and i == 0:
                op.set_operand(i, scaled)
    return f"new Mul by @{inv.name}"


def fold_into_producer(graph: Graph, x: Value, inv_s: np.ndarray, consumers: list[Op], constants: set[int],
                       names: NameTable, suffix: str) -> bool:
    """Multiply the per-feature constant of x's producer by 1/s when only the consumers read x.

    ``Mul(%h, @g)`` / ``Mul(@g, %h)`` with ``@g`` of shape [K] or [1, ..., K]; or
    ``LayerNormalization(%h, @scale, @bias)`` over the last axis (scale and bias both divided).
    """
    producer = x.producer
    if producer is None or producer.graph is not graph or not is_default_domain(producer):
        return False
    consumer_ids = {id(op) for op in consumers}
    if any(not isinstance(user, Op) or id(user) not in consumer_ids or index != 0 for user, index in x.uses()):
        return False
    k = inv_s.size
    if producer.op_type == "Mul" and len(producer.operands) == 2:
        for i, operand in enumerate(producer.operands):
            other = producer.operands[1 - i]
            if _per_feature_const(operand, k, constants) and not _per_feature_const(other, k, constants):
                _scale_operand(graph, producer, i, inv_s, names, suffix)
                return True
        return False
    if producer.op_type == "LayerNormalization" and producer.results[0] is x:
        rank = x.type.rank if isinstance(x.type, TensorType) else None
        axis = producer.attr("axis", -1)
        if not (axis == -1 or (rank is not None and axis == rank - 1)):
            return False
        if any(r is not None and r._uses for r in producer.results[1:]):
            return False
        params = [i for i in (1, 2) if i < len(producer.operands) and producer.operands[i] is not None]
        if not all(_per_feature_const(producer.operands[i], k, constants, exact=True) for i in params):
            return False
        for i in params:
            _scale_operand(graph, producer, i, inv_s, names, suffix)
        return True
    return False


def _per_feature_const(v: Value | None, k: int, constants: set[int], exact: bool = False) -> bool:
    """A fixed float32 const with one value per feature: shape [K] (``exact``) or [1, ..., K]."""
    if const_array(v, constants) is None or v.const.dtype is not DType.f32:
        return False
    shape = v.const.shape
    if exact:
        return shape == (k,)
    return len(shape) >= 1 and shape[-1] == k and all(d == 1 for d in shape[:-1])


def _scale_operand(graph: Graph, op: Op, index: int, inv_s: np.ndarray, names: NameTable, suffix: str) -> None:
    old = op.operands[index]
    data = np.asarray(old.const.numpy(), np.float32)
    scaled = (data * inv_s.reshape(data.shape)).astype(np.float32)
    new = graph.add_const(names.fresh(f"{old.name}.{suffix}"), Tensor.from_array(scaled))
    op.set_operand(index, new)
    if not old._uses and graph.consts.get(old.name) is old:
        graph.remove_const(old)


def first_op(graph: Graph, ops: list[Op], order: dict[int, int] | None = None) -> Op:
    """The op of ``ops`` that comes first in ``graph``."""
    if order is not None and all(id(op) in order for op in ops):
        return min(ops, key=lambda op: order[id(op)])
    wanted = {id(op) for op in ops}
    return next(op for op in graph if id(op) in wanted)


def describe(op: Op) -> str:
    return f"{op.qualified_type} '{op.name or (op.results[0].name if op.results and op.results[0] else '?')}'"


def matmuls_by_input(module: Module, exclude: re.Pattern | None = None) -> list[list[Op]]:
    """The main graph's MatMuls with a constant 2-D float32 weight, grouped by their activation
    input (q, k and v read one), in graph order; ops whose name matches ``exclude`` left out."""
    constants = constant_consts(module)
    groups: dict[int, list[Op]] = {}
    for op in module.graph:
        if op.op_type != "MatMul" or not is_default_domain(op) or len(op.operands) != 2:
            continue
        if exclude is not None and exclude.search(op.name or ""):
            continue
        x, w = op.operands
        data = const_array(w, constants)
        if x is None or x.const is not None or data is None or data.ndim != 2 or w.const.dtype is not DType.f32:
            continue
        groups.setdefault(id(x), []).append(op)
    return list(groups.values())


def divided_stats(stats, s: np.ndarray):
    """The calibration statistics of ``x / s`` (per feature) from those of ``x`` (per-feature
    statistics needed), without a histogram."""
    from qc.calib.stats import TensorStats

    out = TensorStats(channels=True, histogram=False, axis=stats.axis)
    out.channel_min = (stats.channel_min / s).astype(np.float32)
    out.channel_max = (stats.channel_max / s).astype(np.float32)
    out.channel_absmax = (stats.channel_absmax / s).astype(np.float32)
    out.channel_abssum = stats.channel_abssum / s
    out.min, out.max = float(out.channel_min.min()), float(out.channel_max.max())
    out.rows, out.count = stats.rows, stats.count
    if stats.hessian is not None:
        inv = 1.0 / s.astype(np.float64)
        out.hessian_enabled, out.hessian = True, stats.hessian * np.outer(inv, inv)
    if stats.row_sample is not None:
        out.max_rows, out.row_sample, out.row_priority = stats.max_rows, stats.row_sample / s, stats.row_priority
    return out
