"""The ``rotate`` pass: an orthogonal rotation of a pre-norm transformer's residual stream
(QuaRot / SpinQuant), so that activations lose their outlier features before quantization."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qc.errors import QCError
from qc.ir.core import Graph, Module, Op, Value
from qc.ir.dtypes import DType
from qc.ir.tensor import Tensor
from qc.ir.types import TensorType
from qc.pm import Pass, PassContext, register_pass

from . import _fuse as F
from . import _hadamard as H
from ._scaling import NameTable, first_op, matmuls_by_input
from ._util import const_array, constant_consts, is_default_domain, lift_constant_weights, opsets_for

NORM_DOMAINS = ("", "ai.onnx", "qc")
ONLINE = ("down", "all", "none")
ONLINE_OP = "rotate.hadamard"
"""The name every op of an online Hadamard ends with (quantization schemes exclude them: the
Hadamard's input still has its outliers, its output is what gets quantized)."""


@dataclass
class Region:
    """One residual stream: the values that carry it and the ops that touch it."""

    d: int
    stream: set[int] = field(default_factory=set)
    seen: set[int] = field(default_factory=set)
    tables: list[Op] = field(default_factory=list)           # Gather(@T, ids): T <- T Q
    offsets: list[tuple[Op, int]] = field(default_factory=list)  # Add(%x, @c): c <- c Q
    writers: list[tuple[Op, Op | None, int]] = field(default_factory=list)  # MatMul, bias Add, bias index
    readers: list[tuple[Op, np.ndarray | None]] = field(default_factory=list)  # MatMul, gain folded in
    gains: list[Op] = field(default_factory=list)             # Mul by the gain (removed) or a norm (scale -> 1)


class NotRotated(Exception):
    """Why a stream is left alone (a remark)."""


@register_pass("rotate")
@dataclass(frozen=True)
class Rotate(Pass):
    """rotate: multiply the residual stream of a pre-norm transformer by a seeded randomized
    Hadamard matrix Q (orthogonal; QuaRot, SpinQuant without the training), folded into the
    weights, so that the float model computes the same function and the activations every
    linear reads lose their outlier features. With an embedding ``Gather(@T)``, RMSNorms
    ``x / rms(x) * g`` (primitive ops or an RMSNormalization), linears reading the norms,
    linears writing the residual Adds, and the final norm and lm_head::

        %x = onnx.Gather(@T, %ids)               ->  %x = onnx.Gather(@T.rot, %ids)              : T Q
        %n = onnx.Div(%x, %rms)                      %n = onnx.Div(%x, %rms)                      : rms(x Q) = rms(x)
        %y = onnx.Mul(%n, @g)                        (removed)
        %q = onnx.MatMul(%y, @wq)                    %q = onnx.MatMul(%n, @wq.rot)               : Q^T diag(g) wq
        %o = onnx.MatMul(%a, @wo)                    %o = onnx.MatMul(%a, @wo.rot)               : wo Q
        %x2 = onnx.Add(%x, %o)                       %x2 = onnx.Add(%x, %o)
        %f = onnx.MatMul(%m, @wdown)                 %m.h = <Reshape, MatMul by @rotate.h12t, ...>  : m H (online)
                                                     %f = onnx.MatMul(%m.h, @wdown.rot)          : H^T wdown Q

    The online Hadamard H (``online``) goes before every linear writing the stream whose input
    is not of the hidden size (the MLP down projection), as standard ONNX: the input reshaped to
    [..., f1, f2, ...] for H = H_f1 (x) H_f2 (x) ... (Sylvester factors <= 32, one Paley order
    such as 12 for 1536 = 12 * 32 * 4) and one small MatMul per factor; a dense orthogonal
    matrix (one MatMul) when the size has no such factorization. A bias of a writer is rotated
    too (b Q), and so is a constant added to the stream. Tied embeddings are untied (each
    use gets its own rotated copy).

    Left alone, with a remark saying what reads the stream: LayerNorm models (the mean
    subtraction does not commute with a rotation; post-norm BERT encoders also keep the norm's
    gain on the residual path), streams that are graph outputs or read by anything else, and
    graphs where a norm's output is read by anything but MatMuls with constant weights. Run
    before calibrate (the statistics of the rotated activations change).
    """

    seed: int = 0
    """seed of the random signs of Q (same seed, same model)"""
    online: str = "down"
    """online Hadamards (their inverse folded into the weights) before: "down" the MLP down
    projection, "all" also every other linear whose input is not rotated (attention output
    projection; every linear of a stream left alone, e.g. a post-norm encoder), or "none"
    """

    def validate(self) -> None:
        if self.online not in ONLINE:
            raise QCError(f"rotate: online must be one of {', '.join(ONLINE)}, got '{self.online}'")

    def run(self, module: Module, ctx: PassContext) -> bool:
        lifted = lift_constant_weights(module, {"MatMul"}) > 0
        constants = constant_consts(module)
        graph = module.graph
        opset = opsets_for(module, None).get("", 0)
        names = NameTable(graph)
        shared: dict[str, Value] = {}
        report = ctx.cache.setdefault("rotate", [])
        changed = lifted
        claimed: set[int] = set()
        done: set[int] = set()   # MatMuls whose input is rotated already
        for op in list(graph):
            if op.graph is not graph or id(op) in claimed or not _is_table(op, constants):
                continue
            try:
                region = _trace(graph, op, constants, opset)
            except NotRotated as why:
                ctx.remark(op, f"residual stream not rotated: {why}")
                continue
            claimed.update(id(t) for t in region.tables)
            q, how = H.randomized_hadamard(region.d, self.seed)
            onlines = self._apply(graph, region, q, constants, names, shared, done)
            done.update(id(op) for op, _ in region.readers)
            report.append({"hidden": region.d, "rotation": how, "tables": [t.name for t in region.tables],
                           "readers": [r.name for r, _ in region.readers],
                           "writers": [w.name for w, _, _ in region.writers], "online": onlines})
            ctx.remark(op, f"residual stream [{region.d}] rotated by {how}: {len(region.tables)} embedding(s), "
                           f"{len(region.gains)} norm gain(s) folded, {len(region.readers)} reading and "
                           f"{len(region.writers)} writing linears, {len(onlines)} online Hadamard(s)"
                           + (f" ({onlines[0]['how']})" if onlines else ""))
            changed = True
        if self.online == "all":
            changed |= self._online_inputs(module, done, names, shared, ctx)
        return changed

    def _online_inputs(self, module: Module, done: set[int], names: NameTable, shared: dict[str, Value],
                       ctx: PassContext) -> bool:
        """An online Hadamard before every other group of MatMuls with constant weights reading one input."""
        graph = module.graph
        count, hows = 0, set()
        order = {id(op): i for i, op in enumerate(graph)}
        ours = {id(v) for v in shared.values()}
        for ops in matmuls_by_input(module):
            if any(id(op) in done or id(op.operands[1]) in ours for op in ops):
                continue
            weights = [const_array(op.operands[1]).astype(np.float64) for op in ops]
            online = _online_hadamard(graph, ops[0].operands[0], ops, first_op(graph, ops, order), names, shared)
            if online is None:
                continue
            for op, w in zip(ops, weights):
                _replace_const(graph, op, 1, online[0].T @ w, names)
            count += 1
            hows.add(online[1])
        if count:
            ctx.remark(None, f"{count} online Hadamard(s) before the other linears: {', '.join(sorted(hows))}")
        return count > 0

    def _apply(self, graph: Graph, r: Region, q: np.ndarray, constants: set[int], names: NameTable,
               shared: dict[str, Value], done: set[int]) -> list[dict]:
        for t in r.tables:
            _replace_const(graph, t, 0, const_array(t.operands[0]).astype(np.float64) @ q, names)
        for op, index in r.offsets:
            c = op.operands[index]
            data = const_array(c).astype(np.float64)
            _replace_const(graph, op, index, (data.reshape(-1, r.d) @ q).reshape(data.shape), names)
        onlines = []
        for mm, bias, bias_index in r.writers:
            w = const_array(mm.operands[1]).astype(np.float64)
            if self.online != "none" and w.shape[0] != r.d:
                online = _online_hadamard(graph, mm.operands[0], [mm], mm, names, shared)
                if online is not None:
                    w = online[0].T @ w
                    done.add(id(mm))
                    onlines.append({"op": mm.name, "size": w.shape[0], "how": online[1]})
            _replace_const(graph, mm, 1, w @ q, names)
            if bias is not None:
                b = const_array(bias.operands[bias_index]).astype(np.float64)
                _replace_const(graph, bias, bias_index, (b.reshape(-1, r.d) @ q).reshape(b.shape), names)
        for mm, gain in r.readers:
            w = _weight(mm.operands[1], constants).astype(np.float64)
            if gain is not None:
                w = gain.astype(np.float64)[:, None] * w
            _replace_const(graph, mm, 1, q.T @ w, names)
        for op in r.gains:
            if op.op_type == "Mul":
                y, n = op.results[0], op.operands[0] if id(op.operands[0]) in r.stream else op.operands[1]
                y.replace_all_uses_with(n)
                old = [v for v in op.operands if v is not None and v.const is not None]
                graph.remove(op)
                for v in old:
                    if not v.uses() and graph.consts.get(v.name) is v:
                        graph.remove_const(v)
            else:
                scale = const_array(op.operands[1])
                _replace_const(graph, op, 1, np.ones_like(scale, dtype=np.float64), names)
        return onlines


def _is_table(op: Op, constants: set[int]) -> bool:
    """``Gather(@T, %ids)`` with a constant float32 table [V, D] on axis 0."""
    if op.op_type != "Gather" or not is_default_domain(op) or len(op.operands) != 2 or op.attr("axis", 0) != 0:
        return False
    t = const_array(op.operands[0], constants)
    return t is not None and t.ndim == 2 and op.operands[0].const.dtype is DType.f32 and op.operands[1].const is None


def _last_dim(v: Value) -> object:
    t = v.const.shape if v.const is not None else (v.type.shape if isinstance(v.type, TensorType) else None)
    return t[-1] if t else None


def _trace(graph: Graph, seed: Op, constants: set[int], opset: int) -> Region:
    """The stream that starts at the embedding ``seed``, or NotRotated."""
    r = Region(d=int(const_array(seed.operands[0]).shape[1]))
    r.tables.append(seed)
    work = [seed.results[0]]
    r.stream.add(id(seed.results[0]))
    while work:
        v = work.pop()
        if _last_dim(v) != r.d:
            raise NotRotated(f"%{v.name} has no static last dimension {r.d}")
        for user, index in v.uses():
            if isinstance(user, Graph):
                raise NotRotated(f"%{v.name} is a graph output")
            if user.graph is not graph:
                raise NotRotated(f"%{v.name} is read inside a subgraph")
            if id(user) in r.seen:
                continue
            r.seen.add(id(user))
            for out in _use(r, v, user, index, constants, opset):
                if id(out) not in r.stream:
                    r.stream.add(id(out))
                    work.append(out)
    return r


def _use(r: Region, v: Value, op: Op, index: int, constants: set[int], opset: int) -> list[Value]:
    """What ``op`` reading stream value ``v`` means for the rotation: the stream values it makes."""
    where = f"{op.qualified_type} '{op.name or op.results[0].name}'"
    if op.op_type in ("RMSNormalization", "SimplifiedLayerNormalization") and op.domain in NORM_DOMAINS + (
            "com.microsoft",) and index == 0:
        rank = v.type.rank if isinstance(v.type, TensorType) else None
        axis = op.attr("axis", -1)
        scale = const_array(op.operands[1], constants) if len(op.operands) > 1 else None
        if (axis != -1 and axis != (rank or 0) - 1) or scale is None or scale.shape != (r.d,) \
                or any(x is not None and x.uses() for x in op.results[1:]):
            raise NotRotated(f"{where}: not a last-axis norm with a constant scale [{r.d}]")
        _readers(r, op.results[0], scale, constants, where)
        r.gains.append(op)
        return []
    if not is_default_domain(op):
        raise NotRotated(f"{where} reads the residual stream")
    t, a = op.op_type, op.operands
    if t == "Add" and len(a) == 2:
        other = a[1 - index]
        if other is v or id(other) in r.stream:
            return [op.results[0]]
        _writer(r, op, 1 - index, constants, where)
        return [op.results[0]]
    if (t == "Mul" and len(a) == 2 and a[0] is a[1]) or (t == "Pow" and index == 0 and F.is_f32_const(a[1], constants,
                                                                                                     2.0)):
        _row_statistic(op.results[0], constants, opset, where)
        return []
    if t in ("Mul", "Div") and len(a) == 2 and (t == "Mul" or index == 0):
        other = a[1 - index]
        if F.scalar(other, constants) is not None or (other.const is None and _last_dim(other) == 1):
            return [op.results[0]]   # one factor per row commutes with the rotation
        gain = const_array(other, constants) if t == "Mul" else None
        if gain is not None and gain.dtype == np.float32 and gain.shape[-1:] == (r.d,) \
                and all(s == 1 for s in gain.shape[:-1]):
            _readers(r, op.results[0], gain.reshape(-1), constants, where)
            r.gains.append(op)
            return []
    if t == "MatMul" and index == 0:
        _readers(r, v, None, constants, where, only=op)
        return []
    if t in ("ReduceMean", "LayerNormalization"):
        raise NotRotated(f"{where} subtracts the mean of the residual stream (LayerNorm): a rotation does not "
                         "commute with it")
    raise NotRotated(f"{where} reads the residual stream")


def _readers(r: Region, y: Value, gain: np.ndarray | None, constants: set[int], where: str,
             only: Op | None = None) -> None:
    """Every reader of ``y`` is a MatMul with a constant weight [D, N] (the gain folds into it)."""
    uses = [(only, 0)] if only is not None else y.uses()
    if not uses:
        raise NotRotated(f"{where}: its result is unused")
    for user, index in uses:
        if isinstance(user, Graph) or user.op_type != "MatMul" or not is_default_domain(user) or index != 0:
            raise NotRotated(f"{where}: its result is read by "
                             + ("a graph output" if isinstance(user, Graph) else f"{user.qualified_type} '{user.name}'")
                             + ", not only by MatMuls with constant weights")
        w = _weight(user.operands[1], constants)
        if w is None or w.shape[0] != r.d:
            raise NotRotated(f"{where}: MatMul '{user.name}' has no constant weight [{r.d}, N]")
        r.readers.append((user, gain))


def _weight(w: Value | None, constants: set[int]) -> np.ndarray | None:
    """A constant 2-D float32 weight, or the transpose of one (tied embeddings: lm_head)."""
    data = const_array(w, constants)
    if data is not None:
        return data if data.ndim == 2 and data.dtype == np.float32 else None
    p = F.producer(w, "Transpose")
    if p is None:
        return None
    data = const_array(p.operands[0], constants)
    if data is None or data.ndim != 2 or data.dtype != np.float32 or list(p.attr("perm", [1, 0])) != [1, 0]:
        return None
    return data.T


def _writer(r: Region, add: Op, index: int, constants: set[int], where: str) -> None:
    """The other operand of a residual Add: a linear (with a bias), an embedding or a constant."""
    u = add.operands[index]
    c = const_array(u, constants)
    if c is not None and c.dtype == np.float32 and c.shape[-1:] == (r.d,) and c.size == r.d:
        r.offsets.append((add, index))
        return
    if not F.only_used_by(u, add):
        raise NotRotated(f"{where}: %{u.name} is added to the stream and read elsewhere")
    p = u.producer
    if p is not None and p.graph is add.graph and _is_table(p, constants) \
            and const_array(p.operands[0]).shape[1] == r.d:
        r.tables.append(p)
        return
    bias, bias_index = None, 0
    if p is not None and p.op_type == "Add" and is_default_domain(p):
        for i in (0, 1):
            b = const_array(p.operands[i], constants)
            if b is not None and b.dtype == np.float32 and b.size == r.d and b.shape[-1:] == (r.d,) \
                    and F.only_used_by(p.operands[1 - i], p):
                bias, bias_index, p = p, i, p.operands[1 - i].producer
                break
    if p is None or p.op_type != "MatMul" or not is_default_domain(p) or p.graph is not add.graph:
        raise NotRotated(f"{where}: %{u.name} is added to the stream but is no linear with a constant weight")
    w = const_array(p.operands[1], constants)
    if w is None or w.ndim != 2 or w.shape[1] != r.d or w.dtype != np.float32:
        raise NotRotated(f"{where}: MatMul '{p.name}' writes the stream without a constant weight [K, {r.d}]")
    r.writers.append((p, bias, bias_index))


def _row_statistic(sq: Value, constants: set[int], opset: int, where: str) -> None:
    """The square of the stream feeds only reductions over the last axis (rms: invariant)."""
    rank = sq.type.rank if isinstance(sq.type, TensorType) else None
    for user, _ in sq.uses():
        ok = not isinstance(user, Graph) and user.op_type in ("ReduceMean", "ReduceSum") and is_default_domain(user)
        if ok:
            axes = F.reduce_axes(user, constants, opset if user.op_type == "ReduceMean" else max(opset, 13))
            ok = rank is not None and axes is not None and F.trailing_axes(axes, rank) == 1
        if not ok:
            raise NotRotated(f"{where}: the square of the stream is read by something other than a mean over "
                             "the last axis")


def _replace_const(graph: Graph, op: Op, index: int, data: np.ndarray, names: NameTable) -> None:
    old = op.operands[index]
    base = old.name if old.const is not None else (old.producer.operands[0].name if old.producer else "w")
    new = graph.add_const(names.fresh(f"{base}.rot"), Tensor.from_array(np.ascontiguousarray(data, np.float32)))
    op.set_operand(index, new)
    _drop_if_unused(graph, old)


def _drop_if_unused(graph: Graph, v: Value) -> None:
    if v.uses():
        return
    if v.const is not None and graph.consts.get(v.name) is v:
        graph.remove_const(v)
    elif v.producer is not None and v.producer.op_type == "Transpose" and not any(
            r is not None and r.uses() for r in v.producer.results):
        src = v.producer.operands[0]
        graph.remove(v.producer)
        _drop_if_unused(graph, src)


def _online_hadamard(graph: Graph, a: Value, consumers: list[Op], anchor: Op, names: NameTable,
                     shared: dict[str, Value]) -> tuple[np.ndarray, str] | None:
    """Make ``consumers`` read ``%a.h = %a H`` (inserted before ``anchor``; ``%a`` [..., K]);
    H and how it is built."""
    t = a.type
    if not isinstance(t, TensorType) or t.shape is None or len(t.shape) < 2 or not isinstance(t.shape[-1], int):
        return None
    k = int(t.shape[-1])
    mm = anchor
    lead = tuple(t.shape[:-1])
    keep = [0] * len(lead)
    fs = H.factors(k)
    if fs is None or len(fs) == 1:
        if fs is None:
            h, key = H.random_orthogonal(k, np.random.default_rng(k)), f"rotate.dense{k}"
            how = f"dense random orthogonal {k}x{k} online (no Hadamard of order {k} here)"
        else:
            h, key, how = H.normalized(fs), f"rotate.h{k}", f"Hadamard {k} online"
        mat = _shared_const(graph, names, shared, key, h)
        out = Value(names.fresh(f"{a.name}.h"), t)
        graph.insert_before(mm, Op("MatMul", [a, mat], results=[out], name=f"{out.name}/{ONLINE_OP}"))
        for c in consumers:
            c.set_operand(0, out)
        return h, how
    x = a
    for j, f in enumerate(fs):
        left, right = int(np.prod(fs[:j], dtype=np.int64)), int(np.prod(fs[j + 1:], dtype=np.int64))
        dims = ((left,) if left > 1 else ()) + (f,) + ((right,) if right > 1 else ())
        shape = _shared_const(graph, names, shared, "rotate.shape." + "x".join(map(str, keep + list(dims))),
                              np.array(keep + list(dims), np.int64))
        xr = Value(names.fresh(f"{a.name}.h{j}.in"), TensorType(t.dtype, lead + dims))
        graph.insert_before(mm, Op("Reshape", [x, shape], results=[xr], name=f"{xr.name}/{ONLINE_OP}"))
        hf = H.hadamard(f).astype(np.float64) / np.sqrt(f)
        xo = Value(names.fresh(f"{a.name}.h{j}"), TensorType(t.dtype, lead + dims))
        if right > 1:
            mat = _shared_const(graph, names, shared, f"rotate.h{f}t", hf.T)
            operands = [mat, xr]
        else:
            mat = _shared_const(graph, names, shared, f"rotate.h{f}", hf)
            operands = [xr, mat]
        graph.insert_before(mm, Op("MatMul", operands, results=[xo], name=f"{xo.name}/{ONLINE_OP}"))
        x = xo
    back = _shared_const(graph, names, shared, f"rotate.shape.{'x'.join(map(str, keep))}x{k}",
                         np.array(keep + [k], np.int64))
    out = Value(names.fresh(f"{a.name}.h"), t)
    graph.insert_before(mm, Op("Reshape", [x, back], results=[out], name=f"{out.name}/{ONLINE_OP}"))
    for c in consumers:
        c.set_operand(0, out)
    return H.normalized(fs), "Hadamard " + " x ".join(map(str, fs)) + " online"


def _shared_const(graph: Graph, names: NameTable, shared: dict[str, Value], key: str, data: np.ndarray) -> Value:
    if key not in shared:
        arr = data if data.dtype == np.int64 else np.ascontiguousarray(data, np.float32)
        shared[key] = graph.add_const(names.fresh(key), Tensor.from_array(arr))
    return shared[key]
