"""The ``fuse-add-layernorm`` pass; its docstring (``qc passes fuse-add-layernorm``) lists the rewrite."""
from __future__ import annotations

import math
from dataclasses import dataclass

from qc.ir.core import Module, Op
from qc.pm import Pass, PassContext, register_pass

from . import _fuse as F
from ._util import graphs, is_default_domain


@register_pass("fuse-add-layernorm")
@dataclass(frozen=True)
class FuseAddLayerNorm(Pass):
    """fuse-add-layernorm: a residual Add read only by a LayerNormalization -> one op::

        %s = onnx.Add(%a, %b)
        %y = onnx.LayerNormalization(%s, @scale, @bias) {axis = -k, epsilon = e}
            ->  %y = qc.AddLayerNormalization(%a, %b, @scale, @bias) {axis = -k, epsilon = e}

    ``qc.AddLayerNormalization`` (domain ``qc``) is LayerNormalization-17 of ``A + B``
    (onnxruntime's com.microsoft.SkipLayerNormalization without its bias input). %a and %b
    must both have the sum's element count and shape up to leading 1s (no broadcasting).
    Left alone: a sum read by anything else (or a graph output); a LayerNormalization whose
    mean / inverse-deviation outputs are used; non-static shapes; function bodies. Run after
    fuse-layernorm.
    """

    def run(self, module: Module, ctx: PassContext) -> bool:
        changed = False
        for g, fn in list(graphs(module)):
            if fn is not None:
                continue
            for op in list(g.ops):
                if op.graph is not g or op.op_type != "LayerNormalization" \
                        or not (is_default_domain(op) or op.domain == F.QC_DOMAIN):
                    continue
                if any(r is not None and r.uses() for r in op.results[1:]) or len(op.operands) < 2:
                    continue
                add = F.producer(op.operands[0], "Add", graph=g)
                if add is None or not F.only_used_by(add.results[0], op):
                    continue
                s = F.static_shape(add.results[0])
                shapes = [F.static_shape(v) for v in add.operands[:2]]
                if s is None or any(sh is None or math.prod(sh) != math.prod(s) or _strip(sh) != _strip(s)
                                    for sh in shapes):
                    continue
                F.ensure_domain(module)
                fused = Op("AddLayerNormalization", [*add.operands[:2], *op.operands[1:3]], domain=F.QC_DOMAIN,
                           results=0, attrs={"axis": int(op.attr("axis", -1)),
                                             "epsilon": float(op.attr("epsilon", 1e-5))})
                F.apply(op, fused, [add])
                changed = True
        return changed


def _strip(shape: tuple[int, ...]) -> tuple[int, ...]:
    i = 0
    while i < len(shape) - 1 and shape[i] == 1:
        i += 1
    return tuple(shape[i:])
