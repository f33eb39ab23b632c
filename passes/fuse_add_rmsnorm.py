"""The ``fuse-add-rmsnorm`` pass; its docstring (``qc passes fuse-add-rmsnorm``) lists the rewrite."""
from __future__ import annotations

from dataclasses import dataclass

from qc.ir.core import Module, Op, Value
from qc.pm import Pass, PassContext, register_pass

from . import _fuse as F
from ._util import graphs


@register_pass("fuse-add-rmsnorm")
@dataclass(frozen=True)
class FuseAddRMSNorm(Pass):
    """fuse-add-rmsnorm: a pre-norm decoder's residual Add and the RMSNorm of the sum -> one op
    with both results (the sum stays the residual stream)::

        %s = onnx.Add(%a, %b)
        %y = qc.RMSNormalization(%s, @scale) {axis = -k, epsilon = e}   (or onnx.RMSNormalization)
            ->  %y, %s = qc.AddRMSNormalization(%a, %b, @scale) {axis = -k, epsilon = e}

    ``qc.AddRMSNormalization`` (domain ``qc``): ``S = A + B``, ``Y = RMSNormalization(S)``
    (onnxruntime's com.microsoft.SkipSimplifiedLayerNormalization without its bias). %a, %b and
    %s of one static shape (no broadcasting). The fused op takes the Add's place, so every
    reader of %s still follows it. Left alone: an RMSNorm with a missing scale or an
    inverse-RMS output that is used; function bodies. Run after fuse-rmsnorm.
    """

    def run(self, module: Module, ctx: PassContext) -> bool:
        changed = False
        for g, fn in list(graphs(module)):
            if fn is not None:
                continue
            for op in list(g.ops):
                if op.graph is not g or op.op_type != "RMSNormalization" or op.domain not in ("", "ai.onnx", "qc"):
                    continue
                if len(op.operands) < 2 or op.operands[1] is None \
                        or any(r is not None and r.uses() for r in op.results[1:]):
                    continue
                add = F.producer(op.operands[0], "Add", graph=g)
                if add is None or len(add.operands) != 2:
                    continue
                s = add.results[0]
                shape = F.static_shape(s)
                if shape is None or not F.is_float(s) or any(F.static_shape(v) != shape for v in add.operands):
                    continue
                F.ensure_domain(module)
                fused = Op("AddRMSNormalization", [*add.operands, op.operands[1]], domain=F.QC_DOMAIN, results=0,
                           attrs={"axis": int(op.attr("axis", -1)), "epsilon": float(op.attr("epsilon", 1e-5))})
                g.insert_before(add, fused)
                for old in (op.results[0], s):
                    new = fused.add_result(Value(old.name, old.type))
                    old.name = old.name + ".unfused" if old.name else ""
                    old.replace_all_uses_with(new)
                if op.name and not fused.name:
                    fused.name = op.name
                g.remove(op)
                g.remove(add)
                changed = True
        return changed
