"""The ``fold-qdq`` pass: drop redundant requantization and move shape-only ops onto
quantized data."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qc.ir.core import Module, Op, Value
from qc.ir.types import TensorType
from qc.pm import Pass, PassContext, register_pass

from ._util import const_array, constant_consts, erase_op, replace_value

SHAPE_ONLY = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"})
"""Ops that move elements without changing them: exact on quantized data with one scale."""


@register_pass("fold-qdq")
@dataclass(frozen=True)
class FoldQDQ(Pass):
    """fold-qdq: remove quantize/dequantize work that changes nothing.

    Requantization with the same parameters (the second Q gives back the same integers)::

        %a = onnx.QuantizeLinear(%x, @s, @z)            %a = onnx.QuantizeLinear(%x, @s, @z)
        %b = onnx.DequantizeLinear(%a, @s, @z)      ->  (users of %c read %a)
        %c = onnx.QuantizeLinear(%b, @s2, @z2)          when @s2 == @s and @z2 == @z (same values)

    A shape-only op (Reshape, Transpose, Flatten, Squeeze, Unsqueeze) between a dequantize and
    a quantize with the same per-tensor parameters runs on the integers instead::

        %f = onnx.DequantizeLinear(%q, @s, @z)          %r = onnx.Reshape(%q, %shape)
        %r = onnx.Reshape(%f, %shape)               ->  (users of %g read %r;
        %g = onnx.QuantizeLinear(%r, @s2, @z2)           float users of the old %r read DQ(%r))

    Two Q/DQ pairs of one value with equal parameters are left to ``cse``. Per-axis or
    blocked parameters, parameters that are not constants, and pairs whose values are graph
    outputs stay as they are.
    """

    def run(self, module: Module, ctx: PassContext) -> bool:
        constants = constant_consts(module)
        changed = False
        for op in module.graph.ops:
            if op.graph is None or not _is(op, "QuantizeLinear"):
                continue
            source = op.operands[0].producer if op.operands[0] is not None else None
            if source is None:
                continue
            if _is(source, "DequantizeLinear") and _same_params(source, op, constants):
                integers = source.operands[0]
                if _fits(integers, op.results[0]) and replace_value(op.results[0], integers):
                    erase_op(op)
                    ctx.remark(source, f"requantization of %{integers.name} with the same parameters removed")
                    changed = True
            elif source.op_type in SHAPE_ONLY and source.domain in ("", "ai.onnx"):
                changed |= self._move_shape_op(source, op, constants, ctx)
        return changed

    def _move_shape_op(self, shape_op: Op, quant: Op, constants: set[int], ctx: PassContext) -> bool:
        dq = shape_op.operands[0].producer if shape_op.operands[0] is not None else None
        if dq is None or not _is(dq, "DequantizeLinear") or not _same_params(dq, quant, constants):
            return False
        integers = dq.operands[0]
        graph = shape_op.graph
        moved_result = Value(f"{shape_op.results[0].name}.int", TensorType(
            quant.results[0].type.dtype,
            shape_op.results[0].type.shape if isinstance(shape_op.results[0].type, TensorType) else None,
            quant.results[0].type.quant if isinstance(quant.results[0].type, TensorType) else None))
        moved = Op(shape_op.op_type, [integers, *shape_op.operands[1:]], results=[moved_result],
                   name=f"{shape_op.name}.int" if shape_op.name else "")
        moved.attrs = dict(shape_op.attrs)
        graph.insert_after(shape_op, moved)
        if not replace_value(quant.results[0], moved_result):
            graph.remove(moved)
            return False
        erase_op(quant)
        ctx.remark(shape_op, f"{shape_op.op_type} now runs on the quantized %{integers.name}")
        return True


def _is(op: Op, op_type: str) -> bool:
    return op.op_type == op_type and op.domain in ("", "ai.onnx")


def _same_params(dq: Op, q: Op, constants: set[int]) -> bool:
    """Equal per-tensor scale and zero point (as constants) and no axis / block attributes."""
    if any(k in ("axis", "block_size") and _nontrivial(op, k) for op in (dq, q) for k in op.attrs):
        return False
    for i in (1, 2):
        a = dq.operands[i] if i < len(dq.operands) else None
        b = q.operands[i] if i < len(q.operands) else None
        if a is b:
            continue
        if a is None or b is None:
            return False
        x, y = const_array(a, constants), const_array(b, constants)
        if x is None or y is None or x.size != 1 or y.size != 1 or x.dtype != y.dtype or not np.array_equal(x, y):
            return False
    return True


def _nontrivial(op: Op, key: str) -> bool:
    if key == "block_size":
        return op.attr("block_size", 0) != 0
    scale = op.operands[1]
    return not (isinstance(scale.type, TensorType) and scale.type.shape in ((), (1,)))


def _fits(integers: Value, result: Value) -> bool:
    a, b = integers.type, result.type
    return isinstance(a, TensorType) and isinstance(b, TensorType) and a.dtype == b.dtype
