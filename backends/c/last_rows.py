"""The prefill program's last-row mode: the logits of the chunk's last token only (as llama.cpp's
prefill), by slicing that row off before the row-wise ops at the end of the decoder.

``slice_last_row(module)`` rewrites a decoder prepared for a chunk of S tokens (``c_decode_pipeline``)
in place. The tail is the largest set of row-wise ops (``ROW_WISE``: the token axis 1 of
``[1, S, ...]`` is a batch for them) whose results feed only the tail or the logits; every
value the tail reads from outside it is sliced to its last row::

    %a = qc.CachedAttention(...)                    %a = qc.CachedAttention(...)
    %r = ...  (the residual stream, [1, S, H])      %r = ...
    %o = MatMulNBits(%a', W)                        %a1 = Slice(%a', [S-1], [S], [1])
    %n, %s = qc.AddRMSNormalization(%r, %o, g)  ->  %r1 = Slice(%r, [S-1], [S], [1])
    ...  (MLP, final norm)                          %o = MatMulNBits(%a1, W)       [1, 1, H]
    %logits = MatMulNBits(%h, W_head)  [1, S, V]    %n, %s = qc.AddRMSNormalization(%r1, %o, g)
                                                    ...
                                                    %logits = MatMulNBits(%h, W_head)  [1, 1, V]

For SmolLM2 that is the last layer's o_proj, its MLP, the final norm and the LM head. Row-wise
ops compute each row alone, so the last row's logits are the all-rows program's last row, bit
for bit (the kernels' M = 1 path rounds as their tiles do; tests/test_c_decode.py checks it).
The cache writes (CachedAttention) stay whole: attention is never in the tail. ``guard_tail``
then lets a caller that wants no logits at all (a chunk before the prompt's last) skip the tail
by passing ``logits = NULL``.
"""
from __future__ import annotations

import numpy as np

from qc.ir.core import Module, Op, Value
from qc.ir.tensor import Tensor
from qc.ir.types import TensorType

from .lowering import Call, Lowered, node_name

ROW_WISE = {("com.microsoft", "MatMulNBits"), ("qc", "MatMulNBitsRows"), ("qc", "AddRMSNormalization"),
            ("qc", "RMSNormalization"),
            ("qc", "SiLUMul"), ("qc", "SiLU"), ("", "Add"), ("", "Mul"), ("", "Cast"), ("", "MatMul"),
            ("", "QuantizeLinear"), ("", "DequantizeLinear"), ("", "Gather")}
"""Ops whose rows along the token axis are computed independently, when their other operands are
weights (constants, or ops of constants such as a weight's DequantizeLinear) with no token axis:
elementwise ones and (de)quantization with weights of rank <= 1 on the last axis, Gather of
constant columns (the last axis), MatMul by a weight matrix."""


def _weight(v: Value, seq: int, depth: int = 3) -> bool:
    if v.is_const:
        return True
    p = v.producer
    return depth > 0 and p is not None and not _seq_shaped(v, seq) and bool(p.present_operands()) \
        and all(_weight(u, seq, depth - 1) for u in p.present_operands())


def _rank(v: Value) -> int:
    t = v.type
    return len(t.shape) if isinstance(t, TensorType) and t.shape is not None else -1


def _row_wise(op: Op, seq: int) -> bool:
    kind = (op.domain, op.op_type)
    if kind not in ROW_WISE or not all(_seq_shaped(r, seq) for r in op.present_results()):
        return False
    x, *rest = op.operands
    if x is None or not _seq_shaped(x, seq):
        return False
    if kind[1] in ("MatMul", "Gather"):
        if len(op.operands) != 2 or rest[0] is None or not _weight(rest[0], seq):
            return False
        return _rank(rest[0]) == 2 if kind[1] == "MatMul" else op.attr("axis", 0) in (-1, 2)
    if kind[1] in ("QuantizeLinear", "DequantizeLinear") and op.attr("axis", 1) not in (-1, 2) and \
            any(v is not None and _rank(v) != 0 for v in rest):
        return False
    for v in rest:
        if v is None or _seq_shaped(v, seq):
            continue
        if not _weight(v, seq) or (kind[0] == "" and kind[1] not in ("MatMul", "Gather") and _rank(v) > 1):
            return False
    return True


def _seq_shaped(v: Value, seq: int) -> bool:
    t = v.type
    return isinstance(t, TensorType) and t.is_static and t.shape is not None and len(t.shape) == 3 \
        and t.shape[0] == 1 and t.shape[1] == seq


def slice_last_row(module: Module, seq: int) -> set[str]:
    """Rewrite *module* (a decoder step of *seq* tokens, one output: the logits ``[1, seq, V]``)
    as above; returns the C schedule's node names (``node_name``) of the tail and its Slices
    (``guard_tail``'s), or an empty set, changing nothing, when the logits are not made by a
    row-wise op."""
    g = module.graph
    if len(g.outputs) != 1 or seq < 2:
        return set()
    head = g.outputs[0].producer
    if head is None or head.graph is not g or not _row_wise(head, seq):
        return set()
    tail: set[int] = {id(head)}
    grew = True
    while grew:  # add producers all of whose results feed only the tail
        grew = False
        for op in reversed(g.ops):
            if id(op) in tail or not _row_wise(op, seq):
                continue
            users = [u for r in op.present_results() for u in r.users()]
            if users and all(id(u) in tail for u in users) and not any(r in g.outputs for r in op.present_results()):
                tail.add(id(op))
                grew = True
    ops = [op for op in g.ops if id(op) in tail]
    cut: dict[int, Value] = {}
    names = set()
    starts, ends, axes = (g.add_const(f"last_row.{k}", Tensor.from_array(np.array([a], np.int64)))
                          for k, a in (("starts", seq - 1), ("ends", seq), ("axes", 1)))
    for op in ops:
        for i, v in enumerate(op.operands):
            if v is None or not _seq_shaped(v, seq) or (v.producer is not None and id(v.producer) in tail):
                continue
            if id(v) not in cut:
                assert isinstance(v.type, TensorType) and v.type.shape is not None
                sliced = Value(f"{v.name}.last_row", v.type.with_shape((1, 1, *v.type.shape[2:])))
                names.add(node_name(g.insert_before(op, Op("Slice", [v, starts, ends, axes], results=[sliced],
                                                           name=f"{v.name}/last_row"))))
                cut[id(v)] = sliced
            op.set_operand(i, cut[id(v)])
    for op in ops:
        for r in op.present_results():
            assert isinstance(r.type, TensorType) and r.type.shape is not None
            r.type = r.type.with_shape((1, 1, *r.type.shape[2:]))
    return names | {node_name(op) for op in ops}


def guard_tail(low: Lowered, names: set[str]) -> bool:
    """Put the lowered calls of the tail (*names*, ``slice_last_row``'s) in ``if (logits != NULL)``
    when they are the schedule's last calls: a chunk before the prompt's last needs no logits and
    skips the tail (its only result is the logits). Whether it did."""
    tail = [i for i, c in enumerate(low.calls) if c.node.rsplit(" (", 1)[0] in names]
    if not tail or len(low.outputs) != 1:
        return False
    k = tail[0]
    if any(c.block or c.node.rsplit(" (", 1)[0] not in names for c in low.calls[k:]):
        return False
    out = low.outputs[0].name
    low.calls.insert(k, Call("", [], "the last row's logits (if)", "", text=f"if ({out} != NULL) {{{{", block=1))
    low.calls.append(Call("", [], "the last row's logits (end if)", "", text="}}", block=-1))
    return True
