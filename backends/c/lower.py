"""Lowering: qc IR with static shapes -> a straight-line list of typed kernel calls.

Shapes, strides and offsets are computed here, so the C kernels stay small and the emitter holds
no logic. The pieces: ``lowering`` (buffers, state, handler registry), ``lower_ops`` (float32 and
data movement), ``lower_resize`` (Resize / Upsample), ``lower_quant`` (quantized node units,
Q / DQ), ``lower_rnn`` (LSTM, GRU), ``lower_control`` (If, Loop: their bodies are walked with
``lower_graph``); this module imports them and walks.

The walk does not stop at the first node it cannot lower: it records why (op type, attribute,
dtype, a shape that is not static, control flow), gives the node's results placeholder buffers
when their shapes are known so that the nodes after it are still checked, and raises one
``QCError`` naming every such node at the end::

    Einsum 'e1', TopK 't', Reshape 'r'   ->  qc: error: 3 nodes are not supported by the C backend:
    (r's shape is a model input)             Einsum (op type not supported): 'e1'; TopK (op type not
                                             supported): 't'; Reshape (output 'y' has no static shape
                                             (f32[?, ?]): it is not known at compile time): 'r'; HINTS
"""
from __future__ import annotations

from collections.abc import Callable

from qc.errors import QCError
from qc.ir import Graph, Op, TensorType, Value
from qc.ir.printer import format_type

from . import lower_control, lower_ops, lower_resize, lower_rnn, lower_w4  # noqa: F401 - register their handlers
from .lower_fused import plan_views
from .lower_outliers import match_outliers, plan_outliers
from .lower_quant import match_unit, plan_units  # importing it registers the Q / DQ handlers
from .lowering import DOMAIN_HANDLERS, HANDLERS, HINT, Buffer, Call, Lowered, Lowering, Ptr, Unsupported, unsupported
from .packing import variant_for

__all__ = ["Lowering", "lower", "lower_graph"]


CONTROL_FLOW_HINT = ("the C backend lowers the main graph only: compile with --emit onnx to run the model "
                     "with onnxruntime, which runs the subgraphs")
SHAPE_HINT = ("the C code needs every shape at compile time: qc compile --emit c (qc.backends.c.prepare) folds "
              "the shape arithmetic of static inputs, but a shape that depends on data or on a branch cannot be "
              "compiled to C; compile with --emit onnx")
SHOWN = 3  # node names listed per op type in the combined error


def _static(v: Value) -> bool:
    t = v.type
    return v.const is not None or isinstance(t, TensorType) and t.dtype is not None and t.is_static


def _dynamic_result(op: Op, outputs: set[int]) -> Value | None:
    """The first result of *op* that the C code needs (read, or a model output) without a static shape."""
    for r in op.results:
        if r is not None and (r.uses() or id(r) in outputs) and not _static(r):
            return r
    return None


def _check(lw: Lowering, op: Op, outputs: set[int]) -> Callable | None:
    """The handler that lowers *op* (None: a quantized unit, already lowered), or Unsupported."""
    handler: Callable | None = (HANDLERS.get(op.op_type) if op.domain in ("", "ai.onnx")
                                else DOMAIN_HANDLERS.get((op.domain, op.op_type)))
    subgraphs = any(s for s in op.subgraphs())
    dyn = _dynamic_result(op, outputs)
    if handler is None and subgraphs:
        raise unsupported(op, "control flow: ops with subgraphs", hint=CONTROL_FLOW_HINT)
    if dyn is not None:
        if handler is None and op.op_type not in ("MatMul", "Gemm", "Conv", "MatMulNBits"):
            raise unsupported(op)
        if op.op_type == "If":
            raise lower_control.if_shape_error(dyn)
        if op.op_type == "Loop":
            lower_control.trip_count(op)  # a run-time trip count is the reason: say so
        why = "it depends on the iterations" if subgraphs else "it is not known at compile time"
        raise unsupported(op, f"output '{dyn.name}' has no static shape ({format_type(dyn.type)}): {why}",
                          hint=SHAPE_HINT)
    if match_unit(lw, op) or match_outliers(lw, op):
        return None
    if op.domain not in ("", "ai.onnx") and handler is None:
        raise unsupported(op, f"domain '{op.domain}'")
    if handler is None:
        raise unsupported(op)
    return handler


def combined_error(problems: list[QCError]) -> QCError:
    """One QCError for several nodes: grouped by op type and reason, the first node names of each."""
    groups: dict[tuple[str, str], list[str]] = {}
    hints: list[str] = []
    for e in problems:
        if isinstance(e, Unsupported):
            groups.setdefault((e.op_type, e.why or "op type not supported"), []).append(e.node)
        else:
            groups.setdefault(("", str(e)), [])
        if e.hint and e.hint not in hints:
            hints.append(e.hint)
    parts = []
    for (op_type, why), nodes in groups.items():
        if not op_type:
            parts.append(why)
            continue
        names = ", ".join(f"'{n}'" for n in nodes[:SHOWN]) + (f" and {len(nodes) - SHOWN} more" if len(nodes) > SHOWN
                                                              else "")
        parts.append(f"{op_type}{f' x{len(nodes)}' if len(nodes) > 1 else ''} ({why}): {names}")
    err = QCError(f"{len(problems)} nodes are not supported by the C backend: " + "; ".join(parts),
                  hint=" / ".join(hints or [HINT]))
    err.problems = problems  # type: ignore[attr-defined]
    return err


def lower_graph(lw: Lowering, graph: Graph) -> None:
    """Lower the ops of *graph* in order; a node that cannot be lowered goes to ``lw.problems``
    (unless it only fails because a value upstream is missing) and the walk goes on."""
    outputs = {id(v) for v in graph.outputs}
    for op in graph:
        if id(op) in lw.consumed:
            continue
        after_failure = any(v is not None and id(v) in lw.missing for v in op.operands)
        recorded = len(lw.problems)  # a body walk (lower_control) records the nodes inside it
        try:
            handler = _check(lw, op, outputs)
            if handler is not None:
                handler(lw, op)
        except QCError as e:
            own = isinstance(e, Unsupported) and (not e.why or e.why.startswith("control flow")
                                                  or e.why.startswith("domain"))
            if own or not (after_failure or len(lw.problems) > recorded):  # else a consequence of one above
                lw.problems.append(e)
            _placeholders(lw, op)


def lower(lw: Lowering) -> Lowered:
    """Walk the main graph once, in order: units first (``lower_quant``), then one handler per op;
    every node that cannot be lowered is named in one QCError at the end."""
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
        elif _static(v):
            dt, shape = lw.type_of(None, v)
            b = Buffer(lw.c_ident(v.name), dt, shape, "output")
            lw.bufs[id(v)] = b
            outputs.append((v, b, False))
        # else: the node that computes it is reported by lower_graph
    plan_units(lw)
    plan_views(lw)
    plan_outliers(lw)
    lw.walk = lambda graph: lower_graph(lw, graph)
    lower_graph(lw, g)
    if lw.problems:
        raise lw.problems[0] if len(lw.problems) == 1 else combined_error(lw.problems)
    for v, b, copy in outputs:
        if copy:  # an output that is a model input, a constant, or repeated: copy it
            src = lw.buf(v) if v.const is not None else lw.bufs[id(v)]
            if src is not b:
                lw.calls.append(Call("qc_copy", [b.nbytes, Ptr(src), Ptr(b, const=False)], f"output {v.name}", "copy"))
    slots = [lw.cache_slots[i] for i in range(len(lw.cache_slots))] if lw.cache_slots else []
    if sorted(lw.cache_slots) != list(range(len(lw.cache_slots))):
        raise QCError("the KV-cache slots of the model's cached attentions are not 0 .. n-1 "
                      f"({sorted(lw.cache_slots)})")
    return Lowered(inputs, [b for _, b, _ in outputs], lw.calls, lw.weights, lw.arena, lw.kernels,
                   [v.name for v in g.inputs if v.const is None], [v.name for v, _, _ in outputs], slots,
                   lw.max_context, lw.step_tokens)


def _placeholders(lw: Lowering, op: Op) -> None:
    """Buffers for the results of a node that failed, so the nodes after it are checked too
    (results without a static shape or dtype stay missing)."""
    for i, r in enumerate(op.results):
        if r is None or id(r) in lw.bufs:
            continue
        try:
            lw.out(op, i)
        except QCError:
            lw.missing.add(id(r))
