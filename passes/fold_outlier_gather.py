"""The ``fold-outlier-gather`` pass: the int8 half of split-outliers reads all of x, not a copy."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from qc.ir.core import Graph, Module, Op, Value
from qc.ir.tensor import Tensor
from qc.ir.types import TensorType
from qc.pm import Pass, PassContext, register_pass

from ._util import const_array, constant_consts, erase_op, is_any_output, is_default_domain


@register_pass("fold-outlier-gather")
@dataclass(frozen=True)
class FoldOutlierGather(Pass):
    """fold-outlier-gather: quantize the whole activation instead of a Gather of its rest columns.

    ``split-outliers`` gives the int8 part ``x.rest = Gather(x, rest)``, a copy of almost all of
    x. With W' = W_rest scattered back to K rows, zero (the zero point's code) at the other
    (outlier) columns, the int32 accumulations are the same: the outlier columns meet zero
    weights whatever they quantize to,
    and the zero-point term ``-zp_x * sum_k W'[k]`` is the same sum::

        %x.rest = onnx.Gather(%x, @rest) {axis = -1}         %x.rest.q = onnx.QuantizeLinear(%x, @s, @z)
        %x.rest.q = onnx.QuantizeLinear(%x.rest, @s, @z)  -> %x.rest.dq = onnx.DequantizeLinear(%x.rest.q, @s, @z)
        %x.rest.dq = onnx.DequantizeLinear(%x.rest.q, ...)   %w.dq = onnx.DequantizeLinear(@w.q.full, @ws, @wz)
        %w.dq = onnx.DequantizeLinear(@w.q, @ws, @wz)        %y = onnx.MatMul(%x.rest.dq, %w.dq)
        %y = onnx.MatMul(%x.rest.dq, %w.dq)                  : @w.q.full[K, N], rows @rest = @w.q, others @wz

    The quantization parameters stay (the activation's scale still covers the rest columns only;
    the outlier columns saturate and meet zeros). Applies when every reader of the Gather is a
    per-tensor QuantizeLinear, every reader of those a per-tensor DequantizeLinear, and every reader
    of those a MatMul whose weight is DequantizeLinear of a 2-D integer constant (per tensor or per
    output column); the Gather's indices are a constant 1-D set of distinct columns of a last axis
    of static size. Nothing on the way may be a graph output. Anything else is left alone.
    """

    def run(self, module: Module, ctx: PassContext) -> bool:
        graph = module.graph
        constants = constant_consts(module)
        changed = False
        for op in graph.ops:
            if op.graph is not graph or not is_default_domain(op) or op.op_type != "Gather":
                continue
            plan = _match(op, constants)
            if plan is None:
                continue
            note = (f"%{op.results[0].name}: the int8 part quantizes %{op.operands[0].name} in place "
                    f"({len(plan[0])} of {plan[1]} columns; zero weight rows at the others)")
            ctx.remark(op, note)
            _rewrite(graph, op, *plan)
            changed = True
        return changed


def _is(op: Op, op_type: str) -> bool:
    return is_default_domain(op) and op.op_type == op_type


def _per_tensor(op: Op, constants: set[int]) -> bool:
    """A Q/DQ op with constant per-tensor parameters."""
    scale = const_array(op.operands[1], constants)
    zp_v = op.operands[2] if len(op.operands) > 2 else None
    return scale is not None and scale.size == 1 and (zp_v is None or const_array(zp_v, constants) is not None)


def _weight_dq(v: Value, constants: set[int]) -> Op | None:
    """The DequantizeLinear of a 2-D integer constant (per tensor or along axis 1) producing v."""
    dq = v.producer
    if dq is None or not _is(dq, "DequantizeLinear") or dq.attr("block_size", 0):
        return None
    w = dq.operands[0]
    if w.const is None or len(w.const.shape) != 2 or not np.issubdtype(w.const.numpy().dtype, np.integer):
        return None
    scale = const_array(dq.operands[1], constants)
    if scale is None or (scale.size > 1 and dq.attr("axis", 1) % 2 != 1):
        return None
    return dq


def _match(gather: Op, constants: set[int]):
    """(rest columns, K, [(matmul, weight DQ)]) when the Gather can be folded, else None."""
    x, idx_v = gather.operands[0], gather.operands[1]
    idx = const_array(idx_v, constants)
    xt = x.type if isinstance(x.type, TensorType) else None
    if idx is None or idx.ndim != 1 or xt is None or xt.shape is None or not xt.shape:
        return None
    k = xt.shape[-1]
    axis = gather.attr("axis", 0)
    if not isinstance(k, int) or axis % len(xt.shape) != len(xt.shape) - 1:
        return None
    cols = np.where(idx < 0, idx + k, idx).astype(np.int64)
    if cols.size == 0 or cols.min() < 0 or cols.max() >= k or np.unique(cols).size != cols.size:
        return None
    units: list[tuple[Op, Op]] = []
    r = gather.results[0]
    if is_any_output(r) or not r.users():
        return None
    for q in r.users():
        if not _is(q, "QuantizeLinear") or q.operands[0] is not r or not _per_tensor(q, constants) \
                or is_any_output(q.results[0]):
            return None
        for dq in q.results[0].users():
            if not _is(dq, "DequantizeLinear") or not _per_tensor(dq, constants) or is_any_output(dq.results[0]):
                return None
            for mm in dq.results[0].users():
                if not _is(mm, "MatMul") or mm.operands[0] is not dq.results[0] or mm.operands[1] is dq.results[0]:
                    return None
                wdq = _weight_dq(mm.operands[1], constants)
                if wdq is None or wdq.operands[0].const.shape[0] != cols.size:
                    return None
                units.append((mm, wdq))
    return cols, k, units


def _widened(v: Value, k: int) -> None:
    t = v.type
    if isinstance(t, TensorType) and t.shape is not None:
        v.type = replace(t, shape=(*t.shape[:-1], k))


def _rewrite(graph: Graph, gather: Op, cols: np.ndarray, k: int, units: list[tuple[Op, Op]]) -> None:
    x, r = gather.operands[0], gather.results[0]
    for q in r.users():
        q.set_operand(0, x)
        q.meta["qc.read_columns"] = [int(c) for c in cols]   # the others saturate and meet zero weights
        _widened(q.results[0], k)
        for dq in q.results[0].users():
            _widened(dq.results[0], k)
    done: dict[int, Value] = {}
    for mm, wdq in units:
        if id(wdq) not in done:
            done[id(wdq)] = _full_weight(graph, wdq, cols, k)
        mm.set_operand(1, done[id(wdq)])
    idx_v = gather.operands[1]
    erase_op(gather)
    for _, wdq in units:
        if wdq.graph is graph and not wdq.results[0].uses():
            w = wdq.operands[0]
            erase_op(wdq)
            _drop_const(graph, w)
    _drop_const(graph, idx_v)


def _drop_const(graph: Graph, v: Value) -> None:
    if not v.uses() and graph.consts.get(v.name) is v:
        graph.remove_const(v)


def _full_weight(graph: Graph, wdq: Op, cols: np.ndarray, k: int) -> Value:
    """A DequantizeLinear like wdq, of its weight scattered to k rows (rows that dequantize to zero
    elsewhere: the zero point's code)."""
    w = wdq.operands[0]
    data = w.const.numpy()
    zp = wdq.operands[2].const.numpy() if len(wdq.operands) > 2 and wdq.operands[2].const is not None else None
    full = np.zeros((k, data.shape[1]), data.dtype)
    if zp is not None:
        full[:] = zp.reshape(-1)      # a zero weight is the zero point's code (u8 weights: 128)
    full[cols] = data
    wt = w.type if isinstance(w.type, TensorType) else TensorType(w.const.dtype, tuple(data.shape))
    wide = graph.add_const(f"{w.name}.full", Tensor.from_array(full, w.const.dtype),
                           replace(wt, shape=(k, data.shape[1])))
    y = wdq.results[0]
    ydt = y.type.dtype if isinstance(y.type, TensorType) else None
    out = Value(f"{y.name}.full", TensorType(ydt, (k, data.shape[1])))
    graph.insert_before(wdq, Op("DequantizeLinear", [wide, *wdq.operands[1:]], results=[out], attrs=dict(wdq.attrs),
                                name=f"{wdq.name}.full" if wdq.name else ""))
    return out

