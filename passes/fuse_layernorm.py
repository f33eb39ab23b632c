"""The ``fuse-layernorm`` pass; its docstring (``qc passes fuse-layernorm``) lists the rewrite."""
from __future__ import annotations

from dataclasses import dataclass

from qc.ir.core import Module, Op
from qc.pm import Pass, PassContext, register_pass

from . import _fuse as F
from ._util import constant_consts, graphs, is_default_domain, opsets_for


@register_pass("fuse-layernorm")
@dataclass(frozen=True)
class FuseLayerNorm(Pass):
    """fuse-layernorm: LayerNorm spelled in primitive ops (a Hugging Face export) -> one
    LayerNormalization (opset 17 semantics; ``qc.LayerNormalization`` below opset 17)::

        %m = onnx.ReduceMean(%x) {axes = [-1], keepdims = 1}
        %d = onnx.Sub(%x, %m)
        %p = onnx.Pow(%d, @two)                      (@two = 2.0)
        %v = onnx.ReduceMean(%p) {axes = [-1], keepdims = 1}
        %e = onnx.Add(%v, @eps)                      (@eps: one element; either operand order)
        %s = onnx.Sqrt(%e)
        %n = onnx.Div(%d, %s)
        %w = onnx.Mul(%n, @scale)                    (either order)
        %y = onnx.Add(%w, @bias)                     (either order; optional)
            ->  %y = onnx.LayerNormalization(%x, @scale, @bias) {axis = -k, epsilon = eps}   (opset >= 17)
            ->  %y = qc.LayerNormalization(%x, @scale, @bias) {axis = -k, epsilon = eps}     (opset < 17)

    The reductions may be over the last k axes (axes as attribute, or as a constant input from
    opset 18) and must be the same; @scale and @bias are constants with the normalized shape's
    element count, broadcasting along the last k axes only (so the result's shape is %x's).
    Left alone: a value inside the chain read by anything else (%x itself may be); non-float or
    non-static shapes; function bodies. (qc writes its ONNX at the lowest opset a model needs, so
    a decomposed LayerNorm of qc's own output may sit below opset 17.)
    """

    def run(self, module: Module, ctx: PassContext) -> bool:
        constants = constant_consts(module)
        opset = opsets_for(module, None).get("", 0)
        changed = False
        for g, fn in list(graphs(module)):
            if fn is not None:
                continue
            for op in reversed(list(g.ops)):  # an Add(bias) before the Mul(scale) it ends
                if op.graph is g and is_default_domain(op) and op.op_type in ("Add", "Mul"):
                    if _fuse(op, constants, opset):
                        changed = True
        if changed and opset < 17:
            F.ensure_domain(module)
        return changed


def _fuse(tail: Op, constants: set[int], opset: int) -> bool:
    g = tail.graph
    bias = None
    mul = tail
    if tail.op_type == "Add":
        mul = F.producer(tail.operands[0], "Mul", graph=g) or F.producer(tail.operands[1], "Mul", graph=g)
        if mul is None or not F.only_used_by(mul.results[0], tail):
            return False
    # walk down to %x to learn the shapes first
    div = None
    for v in mul.operands:
        div = F.producer(v, "Div", graph=g)
        if div is not None:
            break
    if div is None or not F.only_used_by(div.results[0], mul):
        return False
    sub = F.producer(div.operands[0], "Sub", graph=g)
    sqrt = F.producer(div.operands[1], "Sqrt", graph=g)
    if sub is None or sqrt is None or not F.only_used_by(sqrt.results[0], div):
        return False
    x = sub.operands[0]
    mean = F.producer(sub.operands[1], "ReduceMean", graph=g)
    x_shape = F.static_shape(x)
    if mean is None or mean.operands[0] is not x or x_shape is None or not F.is_float(x):
        return False
    if not F.only_used_by(mean.results[0], sub) or F.static_shape(tail.results[0]) != x_shape:
        return False
    axes = F.reduce_axes(mean, constants, opset)
    k = F.trailing_axes(axes, len(x_shape)) if axes is not None else None
    if k is None or mean.attr("keepdims", 1) != 1:
        return False
    add_eps = F.producer(sqrt.operands[0], "Add", graph=g)
    if add_eps is None or not F.only_used_by(add_eps.results[0], sqrt):
        return False
    var = eps_v = None
    for a, b in (add_eps.operands, tuple(reversed(add_eps.operands))):
        if F.producer(a, "ReduceMean", graph=g) is not None and F.scalar(b, constants) is not None:
            var, eps_v = a.producer, b
    if var is None or not F.only_used_by(var.results[0], add_eps) or var.attr("keepdims", 1) != 1:
        return False
    vaxes = F.reduce_axes(var, constants, opset)
    if vaxes is None or F.trailing_axes(vaxes, len(x_shape)) != k:
        return False
    pow_ = F.producer(var.operands[0], "Pow", graph=g)
    if pow_ is None or pow_.operands[0] is not sub.results[0] or not F.is_f32_const(pow_.operands[1], constants, 2.0):
        return False
    if not F.only_used_by(pow_.results[0], var) or not F.only_used_by(sub.results[0], pow_, div):
        return False
    scale = F.affine_const(mul, x_shape, k, constants)
    if scale is None or scale[0] is not div.results[0]:
        return False
    if tail is not mul:
        bias = F.affine_const(tail, x_shape, k, constants)
        if bias is None or bias[0] is not mul.results[0]:
            return False
    operands = [x, scale[1]] + ([bias[1]] if bias is not None else [])
    ln = Op("LayerNormalization", operands, results=0, domain="" if opset >= 17 else F.QC_DOMAIN,
            attrs={"axis": -k, "epsilon": float(F.scalar(eps_v, constants))})
    F.apply(tail, ln, [mul, div, sqrt, add_eps, var, pow_, sub, mean])
    return True
