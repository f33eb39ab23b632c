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
The cache writes (CachedAttention) stay whole: attention is never in the tail.
"""
from __future__ import annotations

import numpy as np

from qc.ir.core import Module, Op, Value
from qc.ir.tensor import Tensor
from qc.ir.types import TensorType

ROW_WISE = {("com.microsoft", "MatMulNBits"), ("qc", "AddRMSNormalization"), ("qc", "RMSNormalization"),
            ("qc", "SiLUMul"), ("qc", "SiLU"), ("", "Add"), ("", "Mul")}
"""Ops whose rows along the token axis are computed independently (elementwise ones only with
operands that have no token axis of their own: constants of rank <= 1), besides MatMul by a
constant matrix."""


def _row_wise(op: Op, seq: int) -> bool:
    if (op.domain, op.op_type) == ("", "MatMul"):  # x [1, S, K] @ a constant W [K, N]
        w = op.operands[1] if len(op.operands) == 2 else None
        return w is not None and w.is_const and len(w.data().shape) == 2 and _seq_shaped(op.operands[0], seq) \
            and _seq_shaped(op.results[0], seq)
    if (op.domain, op.op_type) not in ROW_WISE:
        return False
    for v in op.present_operands():
        if v.is_const:
            if op.op_type in ("Add", "Mul") and len(v.data().shape) > 1:
                return False
        elif not _seq_shaped(v, seq):
            return False
    return all(_seq_shaped(r, seq) for r in op.present_results())


def _seq_shaped(v: Value, seq: int) -> bool:
    t = v.type
    return isinstance(t, TensorType) and t.is_static and t.shape is not None and len(t.shape) == 3 \
        and t.shape[0] == 1 and t.shape[1] == seq


def slice_last_row(module: Module, seq: int) -> int:
    """Rewrite *module* (a decoder step of *seq* tokens, one output: the logits ``[1, seq, V]``)
    as above; returns the number of ops in the tail (at least the LM head), or 0, changing
    nothing, when the logits are not made by a row-wise op."""
    g = module.graph
    if len(g.outputs) != 1 or seq < 2:
        return 0
    head = g.outputs[0].producer
    if head is None or head.graph is not g or not _row_wise(head, seq):
        return 0
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
    starts, ends, axes = (g.add_const(f"last_row.{k}", Tensor.from_array(np.array([a], np.int64)))
                          for k, a in (("starts", seq - 1), ("ends", seq), ("axes", 1)))
    for op in ops:
        for i, v in enumerate(op.operands):
            if v is None or v.is_const or (v.producer is not None and id(v.producer) in tail):
                continue
            if id(v) not in cut:
                assert isinstance(v.type, TensorType) and v.type.shape is not None
                sliced = Value(f"{v.name}.last_row", v.type.with_shape((1, 1, *v.type.shape[2:])))
                g.insert_before(op, Op("Slice", [v, starts, ends, axes], results=[sliced],
                                       name=f"{v.name}/last_row"))
                cut[id(v)] = sliced
            op.set_operand(i, cut[id(v)])
    for op in ops:
        for r in op.present_results():
            assert isinstance(r.type, TensorType) and r.type.shape is not None
            r.type = r.type.with_shape((1, 1, *r.type.shape[2:]))
    return len(ops)
