"""If and Loop -> C control flow around their bodies' calls (bodies lowered by ``Lowering.walk``).

An If whose condition is a constant never gets here: the ``inline-if`` pass of the preparation
pipeline puts the taken branch in its place. A run-time condition becomes::

    %y = If(%c) {then: ... return %t; else: ... return %e}
        ->  if (*c) { <then calls>; qc_copy(t -> y) } else { <else calls>; qc_copy(e -> y) }

Both branches must give each output the same dtype and static shape. A Loop with a constant
trip count (M) becomes a C ``for`` loop; the loop-carried values live in one arena buffer each
(initialized from v_initial, rewritten from the body's outputs at the end of every iteration,
through a second buffer when one output is another carried value), and scan outputs are copied
to offset i of theirs::

    %v_final, %scan = Loop(@M=4, %cond, %v0) {body(%i, %c, %v): ... return %c2, %v2, %s}
        ->  qc_copy(v0 -> v); for (int qc_i0 = 0; qc_i0 < 4; ++qc_i0) { i = qc_i0; <body calls>;
            qc_copy(v2 -> v); qc_copy(s -> scan + qc_i0 * |s|); [if (!*c2) break;] }

The body's condition input is the constant true (an iteration runs only when the condition
was true); a body condition that is not a constant true ends the loop early (``break``), which
only a loop without scan outputs may do (their length would be a run-time value). A trip count
that is not a constant is refused.
"""
from __future__ import annotations

import numpy as np

from qc.errors import QCError
from qc.ir import DType, Graph, Op, TensorType, Value
from qc.ir.printer import format_type

from .lowering import Buffer, Lowering, Ptr, handler, node_name, unsupported


def _static(lw: Lowering, op: Op, v: Value, what: str) -> tuple[DType, tuple[int, ...]]:
    if v.const is not None:
        return v.const.dtype, tuple(v.const.shape)
    t = v.type
    if not isinstance(t, TensorType) or t.dtype is None or not t.is_static:
        raise QCError(f"{what} '{v.name}' has no static shape ({t})", where=f"node '{node_name(op)}'",
                      hint="the C backend needs static shapes inside If / Loop bodies too: give the model "
                           "inputs static shapes with --shape NAME=AxB")
    return t.dtype, tuple(int(d) for d in t.shape)


def _result(lw: Lowering, op: Op, i: int, dtype: DType, shape: tuple[int, ...]) -> Buffer:
    """The buffer of result i with the given type (the result's own type may be less precise)."""
    v = op.results[i]
    b = lw.bufs.get(id(v))
    if b is None:
        b = Buffer(lw.fresh("t"), dtype, shape, "arena")
        lw.arena.append(b)
        lw.bufs[id(v)] = b
    return b


def _copy(lw: Lowering, op: Op, src: Buffer, dst: Buffer) -> None:
    if src.root is not dst.root:
        lw.call(op, "qc_copy", [dst.nbytes, Ptr(src), Ptr(dst, const=False)], "copy")


@handler("If")
def _if(lw: Lowering, op: Op) -> None:
    then_g, else_g = op.attr("then_branch"), op.attr("else_branch")
    types = []
    for k in range(len(op.results)):
        tt = _static(lw, op, then_g.outputs[k], "then_branch output")
        et = _static(lw, op, else_g.outputs[k], "else_branch output")
        if tt != et:
            raise QCError(f"If output {k} ('{op.results[k].name}') has different types in its branches: then_branch "
                          f"{tt[0]}{list(tt[1])}, else_branch {et[0]}{list(et[1])}", where=f"node '{node_name(op)}'",
                          hint="the C backend needs one static shape per output; when the condition depends "
                               "on shapes, fix the inputs with --shape so that it folds (the taken branch is "
                               "then inlined)")
        types.append(tt)
    cond = lw.buf(op.operands[0])
    outs = [_result(lw, op, k, *t) if op.results[k] is not None else None for k, t in enumerate(types)]
    for text, g in (("if (*{0}) {{", then_g), ("else {{", else_g)):
        lw.stmt(op, text, [Ptr(cond, ctype="uint8_t")] if g is then_g else [], "if" if g is then_g else "else",
                block=1)
        lw.walk(g)
        for v, y in zip(g.outputs, outs):
            if y is not None:
                _copy(lw, op, lw.buf(v), y)
        lw.stmt(op, "}}", [], "end if", block=-1)


def _const_scalar(op: Op, v: Value, what: str):
    """The one element of the constant *v*; a refusal naming *what* when it is not a constant."""
    if v.const is None:
        raise unsupported(op, f"{what} that is not a constant (after folding); the C backend needs a static "
                              "number of iterations")
    a = v.const.numpy().reshape(-1)
    if a.size != 1:
        raise unsupported(op, f"{what} with {a.size} elements")
    return a[0].item()


def _true_always(body: Graph) -> bool:
    """Whether the body's condition output is the constant true or its condition input (through Identity)."""
    c = body.outputs[0]
    while c.producer is not None and c.producer.op_type == "Identity" and c.producer.domain in ("", "ai.onnx"):
        c = c.producer.operands[0]
    if c is body.inputs[1]:
        return True
    return c.const is not None and bool(c.const.numpy().reshape(-1)[0])


def trip_count(op: Op) -> int:
    """The constant trip count M of a Loop; the refusal (a QCError) when it has none."""
    m = op.operands[0] if op.operands else None
    if m is None:
        raise unsupported(op, "a loop without a trip count M; the C backend needs a static number of iterations")
    return int(_const_scalar(op, m, "a trip count M"))


@handler("Loop")
def _loop(lw: Lowering, op: Op) -> None:
    body: Graph = op.attr("body")
    trip = trip_count(op)
    cond = op.operands[1] if len(op.operands) > 1 else None
    if cond is not None and not _const_scalar(op, cond, "a loop condition"):
        trip = 0
    carried = list(op.operands[2:])
    nk = len(carried)
    scans = body.outputs[1 + nk:]
    stops = not _true_always(body)
    if stops and scans:
        raise unsupported(op, "a body condition that can stop the loop early, with scan outputs (their length "
                              "would be a run-time value)")
    # the carried state: one arena buffer per value, initialized from v_initial
    state = []
    for k, v in enumerate(carried):
        dt, shape = _static(lw, op, v, "loop-carried value")
        b = Buffer(lw.fresh("t"), dt, shape, "arena")
        lw.arena.append(b)
        _copy(lw, op, lw.buf(v), b)
        state.append(b)
        lw.bufs[id(body.inputs[2 + k])] = b
    scan_out = []
    for j, s in enumerate(scans):
        dt, shape = _static(lw, op, s, "scan output")
        scan_out.append(_result(lw, op, nk + j, dt, (trip,) + shape) if op.results[nk + j] is not None else None)
    lw.bufs[id(body.inputs[1])] = lw.weight(np.array(True))
    var = f"qc_i{lw.loop_depth}"
    lw.stmt(op, f"for (int {var} = 0; {var} < {trip}; ++{var}) {{{{", [], f"loop x{trip}", block=1, loop=True)
    lw.loop_depth += 1
    it = body.inputs[0]
    if it.uses():
        b = Buffer(lw.fresh("t"), DType.i64, (), "arena")
        lw.arena.append(b)
        lw.bufs[id(it)] = b
        lw.stmt(op, f"*{{0}} = (int64_t){var};", [Ptr(b, const=False)], "iteration number")
    lw.walk(body)
    new = [lw.buf(v) for v in body.outputs[1:1 + nk]]
    roots = {id(b.root) for b in state}
    for k, (src, dst) in enumerate(zip(new, state)):
        if src.root is not dst and id(src.root) in roots:  # another carried value: read it before it changes
            tmp = Buffer(lw.fresh("t"), dst.dtype, dst.shape, "arena")
            lw.arena.append(tmp)
            _copy(lw, op, src, tmp)
            new[k] = tmp
    for src, dst in zip(new, state):
        _copy(lw, op, src, dst)
    for s, y in zip(scans, scan_out):
        if y is not None:
            sb = lw.buf(s)
            lw.stmt(op, f"qc_copy({{0}}, {{1}}, (unsigned char *){{2}} + (size_t){var} * {{0}}u);",
                    [sb.nbytes, Ptr(sb), Ptr(y, const=False)], "scan output")
    if stops:
        lw.stmt(op, "if (!*{0}) break;", [Ptr(lw.buf(body.outputs[0]), ctype="uint8_t")], "loop condition")
    lw.loop_depth -= 1
    lw.stmt(op, "}}", [], "end loop", block=-1)
    for k in range(nk):
        r = op.results[k]
        if r is None:
            continue
        existing = lw.bufs.get(id(r))
        if existing is not None:  # a model output: copy the final state out
            _copy(lw, op, state[k], existing)
        else:
            lw.bufs[id(r)] = Buffer(lw.fresh("a"), state[k].dtype, state[k].shape, "alias", base=state[k])


def _is_static(v) -> bool:
    return v.const is not None or isinstance(v.type, TensorType) and v.type.is_static


def if_shape_error(v: Value) -> QCError:
    """An If result without a static shape: which branch gives which shape, and the first value
    inside a branch that has none (the run-time condition keeps both branches)."""
    op, k = v.producer, v.index
    branches = [(name, op.attr(name).outputs[k]) for name in ("then_branch", "else_branch")]
    cond = op.operands[0]
    feeds = _inputs_feeding(cond)
    bind = (" ".join(f"--bind {n}=VALUE" for n in feeds) + ": " if feeds else "")
    hint = (f"the condition '{cond.name}' is a run-time value, so the C code holds both branches, and each output "
            f"needs one static shape; make the condition a constant ({bind}the taken branch is then inlined) "
            "or give inputs shapes both branches accept")
    if all(_is_static(o) for _, o in branches):
        return QCError(f"If output {k} ('{v.name}') has different shapes in its branches: "
                       + ", ".join(f"{n} {format_type(o.type)}" for n, o in branches),
                       where=f"node '{op.name or v.name}'", hint=hint)
    first = ""
    for name, _ in branches:
        for inner in op.attr(name).walk():
            bad = next((r for r in inner.results if r is not None and not _is_static(r)), None)
            if bad is not None and not first:
                first = f"; the first value without one is '{bad.name}' ({inner.op_type} in the {name})"
    return QCError(f"If output {k} ('{v.name}') has no static shape: "
                   + ", ".join(f"{n} gives {format_type(o.type)}" for n, o in branches) + first,
                   where=f"node '{op.name or v.name}'", hint=hint)


def _inputs_feeding(v: Value) -> list[str]:
    """The model inputs (not consts) a value is computed from, in the graph's input order."""
    seen, stack, found = set(), [v], set()
    while stack:
        u = stack.pop()
        if u is None or id(u) in seen:
            continue
        seen.add(id(u))
        if u.producer is None:
            if u.const is None:
                found.add(u.name)
            continue
        stack.extend(u.producer.operands)
    g = v.producer.graph if v.producer is not None else None
    while g is not None and g.parent is not None:
        g = g.parent.graph
    order = [i.name for i in g.inputs] if g is not None else sorted(found)
    return [n for n in order if n in found]
