"""The ``fuse-gelu`` pass; its docstring (``qc passes fuse-gelu``) lists the rewrites."""
from __future__ import annotations

import math
from dataclasses import dataclass

from qc.ir.core import Graph, Module, Op, Value
from qc.pm import Pass, PassContext, register_pass

from . import _fuse as F
from ._util import constant_consts, graphs, is_default_domain, opsets_for

SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
TANH_CUBIC = 0.044715


@register_pass("fuse-gelu")
@dataclass(frozen=True)
class FuseGelu(Pass):
    """fuse-gelu: GELU spelled in primitive ops -> one Gelu (ONNX Gelu-20 semantics).

    The erf form (BERT, a Hugging Face export)::

        %d = onnx.Div(%x, @sqrt2)          (or onnx.Mul(%x, @inv_sqrt2))
        %e = onnx.Erf(%d)
        %a = onnx.Add(%e, @one)            (either order)
        %m = onnx.Mul(%x, %a)
        %y = onnx.Mul(%m, @half)           (the three factors %x, %a, @half in any order / grouping)
            ->  %y = qc.Gelu(%x)                              (opset < 20)
            ->  %y = onnx.Gelu(%x)                            (opset >= 20)

    The tanh form (GPT-2's gelu_new)::

        %c = onnx.Pow(%x, @three)          (or onnx.Mul(%x, onnx.Mul(%x, %x)))
        %u = onnx.Add(%x, onnx.Mul(%c, @k))                   (@k = 0.044715)
        %t = onnx.Tanh(onnx.Mul(%u, @s))                      (@s = sqrt(2 / pi))
        %a = onnx.Add(%t, @one)
        %y = 0.5 * %x * %a                 (as above)
            ->  %y = qc.Gelu(%x) {approximate = "tanh"}       (onnx.Gelu from opset 20)

    Constants must equal the float32 rounding of sqrt(2), 1/sqrt(2), 1, 0.5, 3, 0.044715 and
    sqrt(2/pi) exactly (one element each, any shape). Every value of the chain except %x must
    be read only by the chain. ``qc.Gelu`` (domain ``qc``) has the semantics of ONNX Gelu-20
    (docs/passes.md); the Add of a bias before %x is left alone, so a backend can still move
    bias and activation into a GEMM epilogue.
    """

    def run(self, module: Module, ctx: PassContext) -> bool:
        constants = constant_consts(module)
        opset = opsets_for(module, None).get("", 0)
        changed = False
        for g, fn in list(graphs(module)):
            if fn is not None:
                continue
            for op in reversed(list(g.ops)):
                if op.graph is g and is_default_domain(op) and op.op_type == "Mul" and _fuse(module, g, op, constants,
                                                                                             opset):
                    changed = True
        return changed


def _factors(g: Graph, tail: Op) -> list[tuple[list[Value | None], Op | None]]:
    """The ways to read Mul(Mul(a, b), c) / Mul(a, Mul(b, c)) as three factors (+ the inner Mul)."""
    out: list[tuple[list[Value | None], Op | None]] = []
    p, q = tail.operands[:2]
    for a, b in ((p, q), (q, p)):
        inner = F.producer(a, "Mul", graph=g)
        if inner is not None and F.only_used_by(inner.results[0], tail):
            out.append(([b, *inner.operands[:2]], inner))
    return out


def _erf_arg(g: Graph, a: Value | None, constants: set[int]) -> tuple[Value, list[Op], str] | None:
    """(%x, ops, approximate) when %a = Add(Erf(%x / sqrt2), 1) or the tanh form's Add."""
    add = F.producer(a, "Add", graph=g)
    if add is None:
        return None
    for e, one in (add.operands[:2], tuple(reversed(add.operands[:2]))):
        if not F.is_f32_const(one, constants, 1.0):
            continue
        erf = F.producer(e, "Erf", graph=g)
        if erf is not None and F.only_used_by(erf.results[0], add):
            d = erf.operands[0]
            div = F.producer(d, "Div", graph=g)
            if div is not None and F.is_f32_const(div.operands[1], constants, SQRT2) \
                    and F.only_used_by(div.results[0], erf):
                return div.operands[0], [add, erf, div], "none"
            mul = F.producer(d, "Mul", graph=g)
            if mul is not None and F.only_used_by(mul.results[0], erf):
                for x, c in (mul.operands[:2], tuple(reversed(mul.operands[:2]))):
                    if F.is_f32_const(c, constants, 1.0 / SQRT2):
                        return x, [add, erf, mul], "none"
        tanh = F.producer(e, "Tanh", graph=g)
        if tanh is not None and F.only_used_by(tanh.results[0], add):
            got = _tanh_arg(g, tanh.operands[0], constants)
            if got is not None:
                return got[0], [add, tanh, *got[1]], "tanh"
    return None


def _const_mul(g: Graph, v: Value | None, constants: set[int], value: float) -> tuple[Value, Op] | None:
    """(%z, the Mul) when v = Mul(%z, @c) with @c = float32(value), either order."""
    mul = F.producer(v, "Mul", graph=g)
    if mul is None:
        return None
    for z, c in (mul.operands[:2], tuple(reversed(mul.operands[:2]))):
        if F.is_f32_const(c, constants, value):
            return z, mul
    return None


def _tanh_arg(g: Graph, t: Value | None, constants: set[int]) -> tuple[Value, list[Op]] | None:
    """(%x, ops) when t = Mul(Add(%x, Mul(cube(%x), 0.044715)), sqrt(2/pi))."""
    got = _const_mul(g, t, constants, SQRT_2_OVER_PI)
    if got is None:
        return None
    u, smul = got
    add = F.producer(u, "Add", graph=g)
    if add is None or not F.only_used_by(add.results[0], smul):
        return None
    for x, w in (add.operands[:2], tuple(reversed(add.operands[:2]))):
        got = _const_mul(g, w, constants, TANH_CUBIC)
        if got is None:
            continue
        cube, kmul = got
        cube_ops = _cube_of(g, cube, x, constants, kmul)
        if cube_ops is not None and F.only_used_by(kmul.results[0], add):
            return x, [smul, add, kmul, *cube_ops]
    return None


def _cube_of(g: Graph, c: Value | None, x: Value, constants: set[int], user: Op) -> list[Op] | None:
    """The ops of c = Pow(%x, 3) or Mul(%x, Mul(%x, %x)) (c read only by *user*), else None."""
    if not F.only_used_by(c, user):
        return None
    pow_ = F.producer(c, "Pow", graph=g)
    if pow_ is not None:
        ok = pow_.operands[0] is x and F.is_f32_const(pow_.operands[1], constants, 3.0)
        return [pow_] if ok else None
    mul = F.producer(c, "Mul", graph=g)
    if mul is None:
        return None
    for a, b in (mul.operands[:2], tuple(reversed(mul.operands[:2]))):
        sq = F.producer(b, "Mul", graph=g)
        if a is x and sq is not None and sq.operands[0] is x and sq.operands[1] is x \
                and F.only_used_by(sq.results[0], mul):
            return [mul, sq]
    return None


def _fuse(module: Module, g: Graph, tail: Op, constants: set[int], opset: int) -> bool:
    for factors, inner in _factors(g, tail):
        for i, half in enumerate(factors):
            if not F.is_f32_const(half, constants, 0.5):
                continue
            rest = factors[:i] + factors[i + 1:]
            for x, a in (rest, tuple(reversed(rest))):
                got = _erf_arg(g, a, constants)
                if got is None or got[0] is not x or not F.is_float(x):
                    continue
                _, ops, approximate = got
                if not F.only_used_by(a, inner) and not F.only_used_by(a, tail):
                    continue
                if not all(F.only_used_by(op.results[0], *([tail, inner] + ops)) for op in ops):
                    continue
                if F.static_shape(x) is None or F.static_shape(x) != F.static_shape(tail.results[0]):
                    continue
                attrs = {"approximate": "tanh"} if approximate == "tanh" else {}
                domain = "" if opset >= 20 else F.QC_DOMAIN
                if domain:
                    F.ensure_domain(module)
                F.apply(tail, Op("Gelu", [x], domain=domain, results=0, attrs=attrs), [inner, *ops])
                return True
    return False
