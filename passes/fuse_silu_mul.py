"""The ``fuse-silu-mul`` pass; its docstring (``qc passes fuse-silu-mul``) lists the rewrite."""
from __future__ import annotations

from dataclasses import dataclass

from qc.ir.core import Module, Op
from qc.pm import Pass, PassContext, register_pass

from . import _fuse as F
from ._util import constant_consts, graphs, is_default_domain


@register_pass("fuse-silu-mul")
@dataclass(frozen=True)
class FuseSiLUMul(Pass):
    """fuse-silu-mul: a SwiGLU MLP's gate, silu(g) * u, and a per-channel constant scale after it
    (smooth-quant's), as one op::

        %s = qc.SiLU(%g)                       (from fuse-silu)
        %t = onnx.Mul(%s, %u)                  (either order; %u of the same shape)
        %y = onnx.Mul(%t, @c)                  (optional; @c broadcasts along the last axis only)
            ->  %y = qc.SiLUMul(%g, %u, @c)

    ``qc.SiLUMul`` (domain ``qc``): y = (silu(g) * u) * c, in that order (the unfused bits);
    without @c, y = silu(g) * u. Left alone: a SiLU (or the product, for @c) read by anything
    else; broadcasting between %g and %u; non-float or non-static shapes; function bodies.
    """

    def run(self, module: Module, ctx: PassContext) -> bool:
        constants = constant_consts(module)
        changed = False
        for g, fn in list(graphs(module)):
            if fn is not None:
                continue
            for op in list(g.ops):
                if op.graph is g and is_default_domain(op) and op.op_type == "Mul" and len(op.operands) == 2:
                    changed |= _fuse(module, op, constants)
        return changed


def _fuse(module: Module, mul: Op, constants: set[int]) -> bool:
    g = mul.graph
    shape = F.static_shape(mul.results[0])
    for s, u in (mul.operands, tuple(reversed(mul.operands))):
        silu = s.producer if s is not None else None
        if silu is None or silu.domain != F.QC_DOMAIN or silu.op_type != "SiLU" or silu.graph is not g \
                or not F.only_used_by(s, mul) or s is u:
            continue
        if shape is None or not shape or F.static_shape(u) != shape or F.static_shape(silu.operands[0]) != shape \
                or not F.is_float(u):
            continue
        tail, operands, dead = mul, [silu.operands[0], u], [silu]
        users = mul.results[0].uses()
        if len(users) == 1 and isinstance(users[0][0], Op):
            nxt = users[0][0]
            if nxt.graph is g and is_default_domain(nxt) and nxt.op_type == "Mul" and len(nxt.operands) == 2 \
                    and F.only_used_by(mul.results[0], nxt) and F.static_shape(nxt.results[0]) == shape:
                c = F.affine_const(nxt, shape, 1, constants)
                if c is not None and c[0] is mul.results[0] and c[1] is not mul.results[0]:
                    tail, operands, dead = nxt, [*operands, c[1]], [silu, mul]
        F.ensure_domain(module)
        F.apply(tail, Op("SiLUMul", operands, domain=F.QC_DOMAIN, results=0), dead)
        return True
    return False
