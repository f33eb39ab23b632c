"""One symmetric int8 scale per activation row, computed at run time: the chain that
``dynamic-per-token`` and ``w4a8-per-token`` build, and the matcher that ``fuse-matmul-nbits-rows``
folds, side by side so that the two cannot drift (not a public API)::

    %p.abs = onnx.Abs(%x)
    %p.amax = onnx.ReduceMax(%p.abs) {axes = [-1], keepdims = 1}     (axes an input from opset 18)
    %p.amax.pos = onnx.Max(%p.amax, 1e-30)                          an all-zero row: codes 0
    %p.s = onnx.Div(%p.amax.pos, 127)                               [..., 1]
    %p.round = onnx.Round(onnx.Div(%x, %p.s))                       float codes, |code| <= 127
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qc.ir.core import Graph, Op, Value
from qc.ir.dtypes import DType
from qc.ir.tensor import Tensor
from qc.ir.types import TensorType

from . import _fuse as F

TINY = np.float32(1e-30)
QMAX = 127


@dataclass(frozen=True)
class RowCodes:
    """The chain's values: ``codes`` (float32, the Round) and ``scale`` (float32, [..., 1])."""

    x: Value
    scale: Value
    codes: Value


def build_row_codes(graph: Graph, anchor: Op, x: Value, opset: int, prefix: str, op_prefix: str = "") -> RowCodes:
    """Insert the chain for *x* before *anchor*; values are named ``{prefix}.abs`` ... ``{prefix}.round``
    and, when *op_prefix* is given, ops ``{op_prefix}:{value name}``."""
    xt = x.type
    assert isinstance(xt, TensorType) and xt.shape is not None
    rows = (*xt.shape[:-1], 1)

    def add(op_type: str, operands: list[Value | None], name: str, shape, **attrs) -> Value:
        v = Value(name, TensorType(DType.f32, shape))
        graph.insert_before(anchor, Op(op_type, operands, results=[v], attrs=attrs or None,
                                       name=f"{op_prefix}:{name}" if op_prefix else ""))
        return v

    def const(name: str, array: np.ndarray) -> Value:
        return graph.add_const(name, Tensor.from_array(array))

    ab = add("Abs", [x], f"{prefix}.abs", xt.shape)
    if opset >= 18:
        amax = add("ReduceMax", [ab, const(f"{prefix}.axes", np.array([-1], np.int64))], f"{prefix}.amax", rows,
                   keepdims=1)
    else:
        amax = add("ReduceMax", [ab], f"{prefix}.amax", rows, axes=[-1], keepdims=1)
    floor = add("Max", [amax, const(f"{prefix}.tiny", np.array(TINY))], f"{prefix}.amax.pos", rows)
    s = add("Div", [floor, const(f"{prefix}.qmax", np.array(QMAX, np.float32))], f"{prefix}.s", rows)
    scaled = add("Div", [x, s], f"{prefix}.scaled", xt.shape)
    return RowCodes(x, s, add("Round", [scaled], f"{prefix}.round", xt.shape))


def match_row_scale(s: Value | None, constants: set[int]) -> Value | None:
    """The %x whose per-row scale *s* is (``Div(Max(ReduceMax(Abs(%x)), 1e-30), 127)`` over the
    last axis), else None."""
    scale = F.producer(s, "Div")
    if scale is None or not F.is_f32_const(scale.operands[1], constants, QMAX):
        return None
    mx = F.producer(scale.operands[0], "Max")
    if mx is None or len(mx.operands) != 2:
        return None
    for a, t in (mx.operands, tuple(reversed(mx.operands))):
        red = F.producer(a, "ReduceMax")
        ab = F.producer(red.operands[0], "Abs") if red is not None else None
        if red is None or ab is None or not F.is_f32_const(t, constants, float(TINY)) \
                or red.attr("keepdims", 1) != 1 or not _last_axis(red):
            continue
        return ab.operands[0]
    return None


def match_row_codes(codes: Value | None, constants: set[int]) -> RowCodes | None:
    """The chain whose Round gives *codes*, else None."""
    rnd = F.producer(codes, "Round")
    div = F.producer(rnd.operands[0], "Div") if rnd is not None else None
    if codes is None or div is None or len(div.operands) != 2:
        return None
    x, s = div.operands
    if x is None or s is None or match_row_scale(s, constants) is not x:
        return None
    return RowCodes(x, s, codes)


def _last_axis(red: Op) -> bool:
    axes = red.attr("axes")
    if axes is None and len(red.operands) > 1 and red.operands[1] is not None:
        c = red.operands[1].const
        axes = c.numpy().reshape(-1).tolist() if isinstance(c, Tensor) else None
    rank = len(F.static_shape(red.operands[0]) or ())
    return axes is not None and len(axes) == 1 and rank > 0 and int(axes[0]) % rank == rank - 1
