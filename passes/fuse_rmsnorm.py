"""The ``fuse-rmsnorm`` pass; its docstring (``qc passes fuse-rmsnorm``) lists the rewrite."""
from __future__ import annotations

from dataclasses import dataclass

from qc.ir.core import Module, Op
from qc.pm import Pass, PassContext, register_pass

from . import _fuse as F
from ._util import constant_consts, graphs, is_default_domain, opsets_for


@register_pass("fuse-rmsnorm")
@dataclass(frozen=True)
class FuseRMSNorm(Pass):
    """fuse-rmsnorm: RMSNorm spelled in primitive ops (Llama / SmolLM2) -> one RMSNormalization
    (ONNX RMSNormalization-23 semantics)::

        %p = onnx.Pow(%x, @two)                       (@two = 2.0)
        %m = onnx.ReduceMean(%p) {axes = [-1], keepdims = 1}
        %e = onnx.Add(%m, @eps)                       (@eps: one element; either order)
        %s = onnx.Sqrt(%e)
        %n = onnx.Div(%x, %s)
        %y = onnx.Mul(%n, @scale)                     (either order)
            ->  %y = qc.RMSNormalization(%x, @scale) {axis = -k, epsilon = eps}    (opset < 23)
            ->  %y = onnx.RMSNormalization(%x, @scale) {axis = -k, epsilon = eps}  (opset >= 23)

    The reduction is over the last k axes; @scale is a constant broadcasting along those axes
    only. Left alone: a value inside the chain read by anything else (%x itself may be);
    non-float or non-static shapes; function bodies.
    """

    def run(self, module: Module, ctx: PassContext) -> bool:
        constants = constant_consts(module)
        opset = opsets_for(module, None).get("", 0)
        changed = False
        for g, fn in list(graphs(module)):
            if fn is not None:
                continue
            for op in reversed(list(g.ops)):
                if op.graph is g and is_default_domain(op) and op.op_type == "Mul" and _fuse(module, op, constants,
                                                                                             opset):
                    changed = True
        return changed


def _fuse(module: Module, tail: Op, constants: set[int], opset: int) -> bool:
    g = tail.graph
    for n, _ in (tail.operands[:2], tuple(reversed(tail.operands[:2]))):
        div = F.producer(n, "Div", graph=g)
        if div is None or not F.only_used_by(div.results[0], tail):
            continue
        x = div.operands[0]
        sqrt = F.producer(div.operands[1], "Sqrt", graph=g)
        x_shape = F.static_shape(x)
        if sqrt is None or x_shape is None or not F.is_float(x) or not F.only_used_by(sqrt.results[0], div):
            continue
        add = F.producer(sqrt.operands[0], "Add", graph=g)
        if add is None or not F.only_used_by(add.results[0], sqrt):
            continue
        for m, eps in (add.operands[:2], tuple(reversed(add.operands[:2]))):
            mean = F.producer(m, "ReduceMean", graph=g)
            if mean is None or F.scalar(eps, constants) is None or not F.only_used_by(m, add):
                continue
            axes = F.reduce_axes(mean, constants, opset)
            k = F.trailing_axes(axes, len(x_shape)) if axes is not None else None
            pow_ = F.producer(mean.operands[0], "Pow", graph=g)
            if k is None or mean.attr("keepdims", 1) != 1 or pow_ is None or pow_.operands[0] is not x \
                    or not F.is_f32_const(pow_.operands[1], constants, 2.0) \
                    or not F.only_used_by(pow_.results[0], mean):
                continue
            scale = F.affine_const(tail, x_shape, k, constants)
            if scale is None or scale[0] is not div.results[0] or F.static_shape(tail.results[0]) != x_shape:
                continue
            domain = "" if opset >= 23 else F.QC_DOMAIN
            if domain:
                F.ensure_domain(module)
            op = Op("RMSNormalization", [x, scale[1]], domain=domain, results=0,
                    attrs={"axis": -k, "epsilon": float(F.scalar(eps, constants))})
            F.apply(tail, op, [div, sqrt, add, mean, pow_])
            return True
    return False
