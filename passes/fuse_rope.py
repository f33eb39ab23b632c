"""The ``fuse-rope`` pass; its docstring (``qc passes fuse-rope``) lists the rewrite."""
from __future__ import annotations

from dataclasses import dataclass

from qc.ir.core import Graph, Module, Op, Value
from qc.pm import Pass, PassContext, register_pass

from . import _fuse as F
from ._util import const_array, constant_consts, graphs, is_default_domain


@register_pass("fuse-rope")
@dataclass(frozen=True)
class FuseRope(Pass):
    """fuse-rope: rotary position embedding in the rotate-half form (Llama, SmolLM2) -> one qc.Rope::

        %x1, %x2 = onnx.Split(%x, @halves) {axis = -1}      (two equal halves of the last axis)
        %n = onnx.Neg(%x2)
        %r = onnx.Concat(%n, %x1) {axis = -1}
        %a = onnx.Mul(%x, %cos)                             (either order)
        %b = onnx.Mul(%r, %sin)                             (either order)
        %y = onnx.Add(%a, %b)                               (either order)
            ->  %y = qc.Rope(%x, %cos, %sin)

    ``qc.Rope`` (domain ``qc``): ``Y = X * cos + rotate_half(X) * sin`` with
    ``rotate_half(X) = concat(-X[..., D/2:], X[..., :D/2])`` over the last axis (size D); cos and
    sin have the same shape, broadcast to X's and are not broadcast along the last axis. The
    arithmetic is the unfused one (two products, one sum), so the result is bit-identical.
    Left alone: a value of the chain other than %x, %cos, %sin read by anything else; a split
    that is not into two equal halves of the last axis; interleaved (GPT-J) rotations.
    """

    def run(self, module: Module, ctx: PassContext) -> bool:
        constants = constant_consts(module)
        changed = False
        for g, fn in list(graphs(module)):
            if fn is not None:
                continue
            for op in list(g.ops):
                if op.graph is g and is_default_domain(op) and op.op_type == "Add" and _fuse(module, g, op, constants):
                    changed = True
        return changed


def _last(axis: int, rank: int) -> bool:
    return axis == -1 or axis == rank - 1


def _halves(split: Op, rank: int, d: int, constants: set[int]) -> bool:
    """Split into exactly two equal halves of the last axis."""
    if len(split.results) != 2 or not _last(int(split.attr("axis", 0)), rank) or d % 2:
        return False
    sizes = split.attr("split")
    if len(split.operands) > 1 and split.operands[1] is not None:
        a = const_array(split.operands[1], constants)
        sizes = None if a is None else [int(s) for s in a.reshape(-1)]
        if sizes is None:
            return False
    return sizes is None or list(sizes) == [d // 2, d // 2]


def _mul_by(g: Graph, v: Value | None, x: Value) -> tuple[Op, Value] | None:
    """(the Mul, the other factor) when v = Mul(x, c) or Mul(c, x)."""
    mul = F.producer(v, "Mul", graph=g)
    if mul is None:
        return None
    c = F.other(mul, x)
    return (mul, c) if c is not None and c is not x else None


def _fuse(module: Module, g: Graph, add: Op, constants: set[int]) -> bool:
    for a, b in (add.operands[:2], tuple(reversed(add.operands[:2]))):
        for mul_b in (F.producer(b, "Mul", graph=g),):
            if mul_b is None:
                continue
            for r, sin in (mul_b.operands[:2], tuple(reversed(mul_b.operands[:2]))):
                cat = F.producer(r, "Concat", graph=g)
                if cat is None or len(cat.operands) != 2:
                    continue
                neg = F.producer(cat.operands[0], "Neg", graph=g)
                split = F.producer(neg.operands[0], "Split", graph=g) if neg is not None else None
                if split is None or neg.operands[0] is not split.results[1] or cat.operands[1] is not split.results[0]:
                    continue
                x = split.operands[0]
                xs = F.static_shape(x)
                got = _mul_by(g, a, x)
                if xs is None or got is None or not F.is_float(x) or not _halves(split, len(xs), xs[-1], constants):
                    continue
                mul_a, cos = got
                if not _last(int(cat.attr("axis", 0)), len(xs)) or F.static_shape(cos) != F.static_shape(sin):
                    continue
                cs = F.static_shape(cos)
                if cs is None or len(cs) > len(xs) or cs[-1] != xs[-1] \
                        or any(F.static_shape(v) != xs for v in (add.results[0], mul_a.results[0], mul_b.results[0])):
                    continue
                chain = [mul_a, mul_b, cat, neg, split]
                if not (F.only_used_by(a, add) and F.only_used_by(b, add) and F.only_used_by(r, mul_b)
                        and F.only_used_by(neg.results[0], cat) and F.only_used_by(split.results[0], cat)
                        and F.only_used_by(split.results[1], neg)):
                    continue
                F.ensure_domain(module)
                F.apply(add, Op("Rope", [x, cos, sin], domain=F.QC_DOMAIN, results=0), chain)
                return True
    return False
