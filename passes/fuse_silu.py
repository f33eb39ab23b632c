"""The ``fuse-silu`` pass; its docstring (``qc passes fuse-silu``) lists the rewrite."""
from __future__ import annotations

from dataclasses import dataclass

from qc.ir.core import Module, Op
from qc.pm import Pass, PassContext, register_pass

from . import _fuse as F
from ._util import graphs, is_default_domain


@register_pass("fuse-silu")
@dataclass(frozen=True)
class FuseSiLU(Pass):
    """fuse-silu: x * sigmoid(x) -> one SiLU::

        %s = onnx.Sigmoid(%x)
        %y = onnx.Mul(%x, %s)                  (either order)
            ->  %y = qc.SiLU(%x)

    ``qc.SiLU`` (domain ``qc``): y = x * sigmoid(x), elementwise (ONNX has no such op below
    Swish-24, whose alpha would be 1). Left alone: a Sigmoid read by anything else; non-float.
    """

    def run(self, module: Module, ctx: PassContext) -> bool:
        changed = False
        for g, fn in list(graphs(module)):
            if fn is not None:
                continue
            for op in list(g.ops):
                if op.graph is not g or not is_default_domain(op) or op.op_type != "Mul" or len(op.operands) != 2:
                    continue
                for x, s in (op.operands, tuple(reversed(op.operands))):
                    sig = F.producer(s, "Sigmoid", graph=g)
                    if sig is None or sig.operands[0] is not x or x is s or not F.is_float(x) \
                            or not F.only_used_by(s, op) or F.static_shape(x) != F.static_shape(op.results[0]):
                        continue
                    F.ensure_domain(module)
                    F.apply(op, Op("SiLU", [x], domain=F.QC_DOMAIN, results=0), [sig])
                    changed = True
                    break
        return changed
