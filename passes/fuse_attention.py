"""The ``fuse-attention`` pass; its docstring (``qc passes fuse-attention``) lists the rewrite."""
from __future__ import annotations

from dataclasses import dataclass

from qc.ir.core import Graph, Module, Op, Value
from qc.ir.types import TensorType
from qc.pm import Pass, PassContext, register_pass

from . import _fuse as F
from ._util import constant_consts, graphs, is_default_domain, opsets_for

SWAP_LAST = (0, 1, 3, 2)


@register_pass("fuse-attention")
@dataclass(frozen=True)
class FuseAttention(Pass):
    """fuse-attention: scaled dot-product attention per head -> one qc.Attention::

        %s = onnx.MatMul(%q, %kt)          %q [B, H, Lq, d], %kt [B, H, d, Lk]
        %c = onnx.Div(%s, @c)              (or onnx.Mul(%s, @c); optional: scale 1)
        %a = onnx.Add(%c, %mask)           (optional; %mask broadcasts to [B, H, Lq, Lk])
        %p = onnx.Softmax(%a) {axis = -1}
        %y = onnx.MatMul(%p, %v)           %v [B, H, Lk, dv]
            ->  %k = onnx.Transpose(%kt) {perm = [0, 1, 3, 2]}
                %y = qc.Attention(%q, %k, %v, %mask) {scale = 1/c (or c)}

    When %kt is itself a Transpose of %t, %k is the Transpose of %t with the composed
    permutation, or %t itself when that is the identity (``%kt = Transpose(%t, [0, 2, 3, 1])``
    of a head split gives ``%k = Transpose(%t, [0, 2, 1, 3])``, the same Transpose as %q's).
    Grouped-query heads repeated as ``Reshape(Expand(Unsqueeze(%t, axes = [2]),
    [B, Hkv, G, L, d]), [B, Hkv*G, L, d])`` (K and V alike) become %t with Hkv heads.

    ``qc.Attention`` (domain ``qc``) has the semantics of ONNX Attention-23 with 4-D inputs,
    ``is_causal = 0`` and no softcap: Q [B, H, Lq, d], K [B, Hkv, Lk, d], V [B, Hkv, Lk, dv]
    (H a multiple of Hkv; query head h reads key/value head h / (H / Hkv)), an optional additive
    float mask broadcasting to [B, H, Lq, Lk], ``scale`` applied to Q K^T; result
    [B, H, Lq, dv]. A Div by @c becomes a multiplication by float32(1/c): the scores may differ
    by one rounding. Left alone: a value of the chain read by anything else; a mask that
    broadcasts the scores to a larger shape; Softmax over another axis (or, below opset 13, any
    axis but the last); shapes that are not static rank 4 with equal batch and head dims.
    """

    def run(self, module: Module, ctx: PassContext) -> bool:
        constants = constant_consts(module)
        opset = opsets_for(module, None).get("", 0)
        changed = False
        for g, fn in list(graphs(module)):
            if fn is not None:
                continue
            for op in list(g.ops):
                if op.graph is g and is_default_domain(op) and op.op_type == "MatMul":
                    if _fuse(module, g, op, constants, opset) or _fuse_grouped(module, g, op, constants, opset):
                        changed = True
        return changed


def _shape4(v: Value | None) -> tuple[int, ...] | None:
    s = F.static_shape(v)
    return s if s is not None and len(s) == 4 else None


def _transpose(g: Graph, before: Op, x: Value, perm: tuple[int, ...]) -> Value:
    """x transposed by *perm* (x itself for the identity): a new Transpose inserted before *before*."""
    if perm == tuple(range(len(perm))):
        return x
    shape = F.static_shape(x)
    t = Op("Transpose", [x], results=0, attrs={"perm": list(perm)})
    g.insert_before(before, t)
    dtype = x.const.dtype if x.const is not None else x.type.dtype
    t.add_result(Value((x.name or "k") + ".k", TensorType(dtype, tuple(shape[p] for p in perm))))
    return t.results[0]


def _ungroup(g: Graph, v: Value, users: tuple[Op, ...]) -> tuple[Value, list[Op]] | None:
    """(%t, the ops) when v = Reshape(Expand(Unsqueeze(%t, [2]), [B, Hkv, G, L, d]), [B, Hkv*G, L, d])
    and the chain is read by *users* only; else None."""
    rs = F.producer(v, "Reshape", graph=g)
    ex = F.producer(rs.operands[0], "Expand", graph=g) if rs is not None else None
    un = F.producer(ex.operands[0], "Unsqueeze", graph=g) if ex is not None else None
    if un is None or not (F.only_used_by(v, *users) and F.only_used_by(rs.operands[0], rs)
                          and F.only_used_by(ex.operands[0], ex)):
        return None
    t = un.operands[0]
    ts, us, es, rsh = _shape4(t), F.static_shape(un.results[0]), F.static_shape(ex.results[0]), _shape4(v)
    if ts is None or us != ts[:2] + (1,) + ts[2:] or es is None or len(es) != 5 or rsh is None:
        return None
    b, hkv, _, seq, d = es
    if (b, hkv, seq, d) != ts or rsh != (b, hkv * es[2], seq, d):
        return None
    return t, [rs, ex, un]


def _scores(g: Graph, x: Value | None) -> bool:
    """x = MatMul(...) or Div/Mul(MatMul(...), ...), or a Reshape of one of them (grouped
    queries): the scores side of the mask Add."""
    rs = F.producer(x, "Reshape", graph=g)
    if rs is not None:
        x = rs.operands[0]
    op = F.producer(x, "Div", "Mul", graph=g)
    if op is not None:
        x = op.operands[0] if F.producer(op.operands[0], "MatMul", graph=g) is not None else op.operands[1]
    return F.producer(x, "MatMul", graph=g) is not None


def _masked(g: Graph, a: Value, dead: list[Op]) -> tuple[Value, Value | None] | None:
    """(scores, mask) for the Softmax input a = Add(scores, mask) (or a alone, no mask); the Add
    joins *dead*."""
    add = F.producer(a, "Add", graph=g)
    if add is None:
        return a, None
    for x, m in (add.operands[:2], tuple(reversed(add.operands[:2]))):
        if _scores(g, x) and F.only_used_by(x, add):
            if not F.is_float(m) or F.static_shape(add.results[0]) != F.static_shape(x):
                return None
            dead.append(add)
            return x, m
    return None


def _scaled(g: Graph, s: Value, constants: set[int], dead: list[Op]) -> tuple[Value, float] | None:
    """(product, scale) for s = Div/Mul(product, @c) (or s alone, scale 1); the op joins *dead*."""
    sc = F.producer(s, "Div", "Mul", graph=g)
    if sc is None:
        return s, 1.0
    c = F.scalar(sc.operands[1], constants)
    if sc.op_type == "Mul" and c is None:
        c = F.scalar(sc.operands[0], constants)
        s2 = sc.operands[1]
    else:
        s2 = sc.operands[0]
    if c is None or c == 0.0 or not F.only_used_by(s2, sc):
        return None
    dead.append(sc)
    return s2, (1.0 / c if sc.op_type == "Div" else c)


def _softmax_of(g: Graph, p: Value, users: tuple[Op, ...], opset: int, dead: list[Op]) -> Value | None:
    """The input of p = Softmax(x) over the last axis of a rank-4 value read by *users* only."""
    sm = F.producer(p, "Softmax", graph=g)
    if sm is None or not F.only_used_by(p, *users) or _shape4(p) is None:
        return None
    if sm.attr("axis", -1 if opset >= 13 else 1) not in (-1, 3) or not F.only_used_by(sm.operands[0], sm):
        return None
    dead.append(sm)
    return sm.operands[0]


def _reshape_to(g: Graph, v: Value, shape: tuple[int, ...], users: tuple[Op, ...]) -> Op | None:
    """The Reshape that makes v with static *shape*, read by *users* only."""
    rs = F.producer(v, "Reshape", graph=g)
    if rs is None or F.static_shape(v) != shape or not F.only_used_by(v, *users):
        return None
    return rs


def _fuse_grouped(module: Module, g: Graph, tail: Op, constants: set[int], opset: int) -> bool:
    """Grouped-query attention written as one MatMul per key/value head (qc's KV-cache SmolLM2):
    ``Reshape(MatMul(Reshape(P, [B, Hkv, G*Lq, Lk]), %v), [B, H, Lq, dv])`` with P the Softmax
    of ``Add(Reshape(Mul(MatMul(Reshape(%q, [B, Hkv, G*Lq, d]), %kt), @c), [B, H, Lq, Lk]), %mask)``."""
    out = tail.results[0]
    users = out.users()
    if len(users) != 1 or users[0].op_type != "Reshape" or not is_default_domain(users[0]):
        return False
    final, (p, v) = users[0], tail.operands[:2]
    ys, vs = _shape4(final.results[0]), _shape4(v)
    if ys is None or vs is None or F.static_shape(out) is None:
        return False
    B, H, Lq, dv = ys
    Hkv, Lk = vs[1], vs[2]
    if H % Hkv or vs != (B, Hkv, Lk, dv) or F.static_shape(out) != (B, Hkv, H // Hkv * Lq, dv):
        return False
    dead: list[Op] = [tail]
    regroup = _reshape_to(g, p, (B, Hkv, H // Hkv * Lq, Lk), (tail,))
    a = _softmax_of(g, regroup.operands[0], (regroup,), opset, dead) if regroup is not None else None
    masked = _masked(g, a, dead) if a is not None else None
    if masked is None:
        return False
    dead.append(regroup)
    per_head = _reshape_to(g, masked[0], (B, H, Lq, Lk), tuple(masked[0].users()))
    scaled = _scaled(g, per_head.operands[0], constants, dead) if per_head is not None else None
    qk = F.producer(scaled[0], "MatMul", graph=g) if scaled is not None else None
    if qk is None or not F.only_used_by(scaled[0], *scaled[0].users()):
        return False
    dead += [per_head, qk]
    gq, kt = qk.operands[:2]
    gqs = _shape4(gq)
    grouped_q = _reshape_to(g, gq, (B, Hkv, H // Hkv * Lq, gqs[3]), (qk,)) if gqs is not None else None
    if grouped_q is None:
        return False
    q, d = grouped_q.operands[0], gqs[3]
    if _shape4(q) != (B, H, Lq, d) or _shape4(kt) != (B, Hkv, d, Lk) or not all(F.is_float(x) for x in (q, kt, v)):
        return False
    dead.append(grouped_q)
    kt_op = F.producer(kt, "Transpose", graph=g)
    k_src, k_perm = kt, SWAP_LAST
    if kt_op is not None and F.only_used_by(kt, qk):
        perm = tuple(int(i) for i in kt_op.attr("perm") or (3, 2, 1, 0))
        k_src, k_perm = kt_op.operands[0], tuple(perm[i] for i in SWAP_LAST)
        dead.append(kt_op)
    k = _transpose(g, final, k_src, k_perm)
    F.ensure_domain(module)
    operands = [q, k, v] + ([masked[1]] if masked[1] is not None else [])
    F.apply(final, Op("Attention", operands, domain=F.QC_DOMAIN, results=0, attrs={"scale": float(scaled[1])}), dead)
    return True


def _fuse(module: Module, g: Graph, tail: Op, constants: set[int], opset: int) -> bool:
    p, v = tail.operands[:2]
    ps, vs = _shape4(p), _shape4(v)
    dead: list[Op] = []
    a = _softmax_of(g, p, (tail,), opset, dead)
    if a is None or vs is None:
        return False
    masked = _masked(g, a, dead)
    scaled = _scaled(g, masked[0], constants, dead) if masked is not None else None
    if scaled is None:
        return False
    (s, scale), mask = scaled, masked[1]
    qk = F.producer(s, "MatMul", graph=g)
    if qk is None:
        return False
    q, kt = qk.operands[:2]
    qs, ks = _shape4(q), _shape4(kt)
    if qs is None or ks is None or not (F.is_float(q) and F.is_float(kt) and F.is_float(v)):
        return False
    B, H, Lq, d = qs
    if ks != (B, H, d, ks[3]) or vs[:3] != (B, H, ks[3]) or ps != (B, H, Lq, ks[3]):
        return False
    dead.append(qk)
    # K: undo the transpose of K^T (composed with a Transpose that made it); GQA repeats undone
    kt_op = F.producer(kt, "Transpose", graph=g)
    k_src, k_perm, k_users = kt, SWAP_LAST, (qk,)
    if kt_op is not None and F.only_used_by(kt, qk):
        perm = tuple(int(i) for i in kt_op.attr("perm") or (3, 2, 1, 0))
        k_src, k_perm, k_users = kt_op.operands[0], tuple(perm[i] for i in SWAP_LAST), (kt_op,)
        dead.append(kt_op)
    identity = k_perm == tuple(range(4))
    gk = _ungroup(g, k_src, k_users) if identity else None
    gv = _ungroup(g, v, (tail,))
    if gk is not None and gv is not None and _shape4(gk[0])[1] == _shape4(gv[0])[1]:
        (k_src, k_ops), (v, v_ops) = gk, gv
        dead += k_ops + v_ops
    k = _transpose(g, tail, k_src, k_perm)
    F.ensure_domain(module)
    operands = [q, k, v] + ([mask] if mask is not None else [])
    F.apply(tail, Op("Attention", operands, domain=F.QC_DOMAIN, results=0, attrs={"scale": float(scale)}), dead)
    return True
