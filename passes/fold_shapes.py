"""The ``fold-shapes`` pass; its docstring (``qc passes fold-shapes``) lists every rewrite."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from qc.ir.core import Module
from qc.ir.tensor import Tensor
from qc.ir.types import TensorType
from qc.onnx.shapes import export_for_inference, merge_inferred
from qc.pm import Pass, PassContext, register_pass

from ._util import can_hold_consts, graphs


@register_pass("fold-shapes")
@dataclass(frozen=True)
class FoldShapes(Pass):
    """fold-shapes: replace shape queries of static values by constants.

    Rewrites (the main graph and its subgraphs (If / Loop bodies), default domain)::

        %s = onnx.Shape(%x : f32[1, 16, 384])               ->  const @s.folded = i64[3] [1, 16, 384]
        %s = onnx.Shape(%x : f32[1, 16, 384]) {start = 1}   ->  const @s.folded = i64[2] [16, 384]
        %n = onnx.Size(%x : f32[1, 16])                     ->  const @n.folded = i64[] 16
        %z = onnx.ConstantOfShape(@shape = [1, 16]) {value} ->  const @z.folded = (value's dtype)[1, 16]
                                                                (value absent: f32 zeros)

    ``Shape`` and ``Size`` of a constant use its shape. The uses of the old result move to the
    constant and the op is removed (``dce`` then drops what only fed it).

    Before folding, when the graph has ``com.microsoft.MatMulNBits`` ops (which ONNX shape
    inference does not know, so everything after them stays symbolic), types are inferred on an
    export where each one is ``MatMul(A, ConstantOfShape([K, N]))`` (the same result type) and
    merged into the IR as ``propagate-shapes`` merges them::

        %y = com.microsoft.MatMulNBits(%a : f32[1, 16, 384], ...) {K = 384, N = 1536} : f32[?, ?, ?]
            ->  ... : f32[1, 16, 1536]

    Changed: when an op was folded or a type was refined. With ``propagate-shapes``,
    ``fold-constants`` and ``dce`` around it, repeated until it reports no change, the shape
    arithmetic of a model with static inputs (position ids, masks, reshape targets) becomes
    constants; the C backend's preparation pipeline does that.
    """

    def run(self, module: Module, ctx: PassContext) -> bool:
        changed = _infer_through_contrib(module) if _has_matmul_nbits(module) else False
        return _fold_shape_ops(module) or changed


def _fold_shape_ops(module: Module) -> bool:
    changed = False
    for g, fn in list(graphs(module)):
        if fn is None and can_hold_consts(module, g, fn):
            changed |= _fold_in(g)
    return changed


def _fold_in(g) -> bool:
    changed = False
    for op in list(g):
        if op.domain not in ("", "ai.onnx") or not op.results or op.results[0] is None:
            continue
        arr = _folded_value(op)
        if arr is None:
            continue
        r = op.results[0]
        c = g.add_const(f"{r.name or 'folded'}.folded", Tensor.from_array(arr))
        r.replace_all_uses_with(c)
        g.remove(op)
        changed = True
    return changed


def _folded_value(op) -> np.ndarray | None:
    """The constant an op computes from static shapes alone, or None."""
    if op.op_type in ("Shape", "Size"):
        x = op.operands[0]
        if x.const is not None:
            shape = tuple(x.const.shape)
        else:
            t = x.type
            shape = t.shape if isinstance(t, TensorType) and t.is_static else None
        if shape is None:
            return None
        if op.op_type == "Size":
            return np.array(math.prod(shape), np.int64)
        start, end = op.attr("start", 0), op.attr("end", None)
        return np.array(shape[slice(start, end)], np.int64)
    if op.op_type == "ConstantOfShape" and op.operands[0].const is not None:
        v = op.attr("value")
        value = np.zeros((), np.float32) if v is None else v.numpy().reshape(())
        return np.full(tuple(int(d) for d in op.operands[0].const.numpy().tolist()), value, value.dtype)
    return None


def _has_matmul_nbits(module: Module) -> bool:
    return any(op.domain == "com.microsoft" and op.op_type == "MatMulNBits" for op in module.graph)


def _infer_through_contrib(module: Module) -> bool:
    """ONNX shape inference on an export with each MatMulNBits as MatMul(A, ConstantOfShape([K, N])),
    merged into the IR; True when a type changed. An inference error leaves the types as they are."""
    proto = export_for_inference(module)
    nodes = []
    for n in proto.graph.node:
        if n.domain == "com.microsoft" and n.op_type == "MatMulNBits":
            a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
            shape, zeros = n.output[0] + ".qc_kn", n.output[0] + ".qc_w"
            nodes += [helper.make_node("Constant", [], [shape], value=helper.make_tensor(
                          shape, TensorProto.INT64, [2], [a["K"], a["N"]])),
                      helper.make_node("ConstantOfShape", [shape], [zeros]),
                      helper.make_node("MatMul", [n.input[0], zeros], [n.output[0]])]
        else:
            nodes.append(n)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # as propagate-shapes: leave the types as they are
        return False
    return merge_inferred(module, inferred)
