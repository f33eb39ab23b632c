"""Lowering: qc IR with static shapes -> a straight-line list of typed kernel calls.

Shapes, strides and offsets are computed here, so the C kernels stay small and the emitter holds
no logic. The pieces: ``lowering`` (buffers, state, handler registry), ``lower_ops`` (float32 and
data movement), ``lower_quant`` (quantized node units, Q / DQ), ``lower_rnn`` (LSTM, GRU),
``lower_control`` (If, Loop: their bodies are walked with ``lower_graph``); this module imports
them and walks.
"""
from __future__ import annotations

from collections.abc import Callable

from qc.ir import Graph

from . import lower_control, lower_ops, lower_rnn  # noqa: F401 - register their handlers
from .lower_quant import match_unit, plan_units  # importing it registers the Q / DQ handlers
from .lowering import HANDLERS, Buffer, Call, Lowered, Lowering, Ptr, unsupported
from .packing import variant_for

__all__ = ["Lowering", "lower"]


def lower_graph(lw: Lowering, graph: Graph) -> None:
    """Lower the ops of *graph* in order (the main graph, or an If / Loop body from lower_control)."""
    for op in graph:
        if id(op) in lw.consumed:
            continue
        if match_unit(lw, op):
            continue
        if op.domain not in ("", "ai.onnx"):
            raise unsupported(op, f"domain '{op.domain}'")
        handler: Callable | None = HANDLERS.get(op.op_type)
        if handler is None:
            raise unsupported(op)
        handler(lw, op)


def lower(lw: Lowering) -> Lowered:
    """Walk the main graph once, in order: units first (``lower_quant``), then one handler per op."""
    lw.variant = lw.variant or variant_for(lw.features)
    g = lw.module.graph
    inputs = []
    for v in g.inputs:
        if v.const is not None:
            continue
        dt, shape = lw.type_of(None, v)
        b = Buffer(lw.c_ident(v.name), dt, shape, "input")
        lw.bufs[id(v)] = b
        inputs.append(b)
    outputs = []
    for v in g.outputs:
        if v.const is not None or id(v) in lw.bufs:
            dt = lw.dtype(v)
            b = Buffer(lw.c_ident(v.name), dt, lw.shape(v), "output")
            outputs.append((v, b, True))
        else:
            dt, shape = lw.type_of(None, v)
            b = Buffer(lw.c_ident(v.name), dt, shape, "output")
            lw.bufs[id(v)] = b
            outputs.append((v, b, False))
    plan_units(lw)
    lw.walk = lambda graph: lower_graph(lw, graph)
    lower_graph(lw, g)
    for v, b, copy in outputs:
        if copy:  # an output that is a model input, a constant, or repeated: copy it
            src = lw.buf(v) if v.const is not None else lw.bufs[id(v)]
            if src is not b:
                lw.calls.append(Call("qc_copy", [b.nbytes, Ptr(src), Ptr(b, const=False)], f"output {v.name}", "copy"))
    return Lowered(inputs, [b for _, b, _ in outputs], lw.calls, lw.weights, lw.arena, lw.kernels,
                   [v.name for v in g.inputs if v.const is None], [v.name for v, _, _ in outputs])
