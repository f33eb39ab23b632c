"""The ``legalize`` pass; its docstring (``qc passes legalize``) lists every rewrite."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qc.ir.core import Graph, Module, Op, Value
from qc.ir.dtypes import DType
from qc.ir.tensor import Tensor
from qc.ir.types import QuantParams, TensorType
from qc.pm import Pass, PassContext, register_pass
from qc.quant.units import FLOATS, Unit, dtype_name, macs, node_unit
from qc.quant.weight_algos import dequantize, quantize_rtn
from qc.targets import load_target

from ._scaling import NameTable
from ._util import const_array
from .check_kernels import device_costs, float_cost, nbytes, place_unit

_UNSIGNED = {"uint8": "int8"}


@dataclass
class _Candidate:
    name: str            # what the rewrite does, for the report
    unit: Unit           # the unit's signature after the rewrite
    weight_bytes: int    # storage of the rewritten weights
    order: int           # preference among equal costs: exact rewrites first
    apply: Callable[[], None]


@register_pass("legalize")
@dataclass(frozen=True)
class Legalize(Pass):
    """legalize: rewrite node units that would leave the target's preferred device into forms that
    have a kernel there, when that is cheaper than falling back; then check again. Units that stay
    on the preferred device (with a kernel, or as dequantize + float there) are left as they are.

    Rewrites, tried per fallback unit (main graph); the cheapest with a kernel on the preferred
    device wins, exact ones first at equal cost::

        Q(x, s, zp:u8) -> DQ -> MatMul <- DQ(W:u8, sw, zw:u8)          (uint8 -> int8, exact)
            -> Q(x, s, zp-128:i8) -> DQ -> MatMul <- DQ(W-128:i8, sw, zw-128:i8)
        DQ(W:int4 {block_size}) -> MatMul                               (int4 -> int8 block, exact)
            -> DQ(W:int8 {block_size}) -> MatMul
        DQ(W:int4 {block_size}) -> MatMul   or   com.microsoft.MatMulNBits(x, B, scales[, zp])
            -> DQ(W8:int8, s8 per channel) -> MatMul                     (re-rounded to 8 bits per column)
            -> Cast(x, f16) -> MatMul(., W:f16) -> Cast(., f32)          (float16 weights)
            -> MatMul(x, W:f32)                                           (float32 weights)
        (also for DynamicQuantizeMatMul and QDQ units with constant weights: the float16 / float32 forms)

    What still falls back afterwards is ``check-kernels``' to report (it runs next in a compile,
    with ``fallback=allow|warn|error``). ``ctx.legalized`` lists each rewrite with its estimated
    cost before and after (MACs x relative kernel cost, plus the copies saved; nominal costs
    from the target file).
    """

    target: str = ""
    """target name or .toml path (default: the pass context's target)"""

    def validate(self) -> None:
        if self.target:
            load_target(self.target)  # an unknown target fails when the pipeline is parsed

    def run(self, module: Module, ctx: PassContext) -> bool:
        tgt = ctx.require_target("legalize", self.target)
        g = module.graph
        names = NameTable(g)
        done: list[dict] = list(ctx.legalized or [])
        rewrites = 0
        for op in list(g.ops):
            if op.graph is not g:
                continue
            u = node_unit(op, ort_fusions=tgt.backend == "onnx")
            if u is None or place_unit(tgt, u)["to"] == tgt.preferred_device:
                continue  # runs on the preferred device (with a kernel, or as dequantize + float there)
            rewrite = _Rewriter(g, u, names)
            options = []
            for cand in rewrite.candidates():
                costs = device_costs(tgt, cand.unit)
                if tgt.preferred_device in costs:
                    options.append((costs[tgt.preferred_device], cand.order, cand.weight_bytes, cand))
            if not options:
                continue
            cost, _, _, best = min(options, key=lambda o: o[:3])
            before = _fallback_cost(tgt, u)
            if cost >= before:
                continue  # falling back is no worse (e.g. the same float kernel on a single-device target)
            n = macs(u)
            best.apply()
            rewrites += 1
            done.append({"node": op.name, "change": best.name + f" -> {tgt.preferred_device}",
                         "cost_before": None if n is None else round(n * before, 3),
                         "cost_after": None if n is None else round(n * cost, 3)})
        ctx.legalized = done
        return rewrites > 0


def _fallback_cost(tgt, u: Unit) -> float:
    """Estimated cost per MAC of leaving the unit as it is: the cost where it lands (its kernel
    there, or dequantize + float), plus copying its activation in and its result back when that
    is not the preferred device (when shapes are known)."""
    costs = device_costs(tgt, u)
    dev = min(costs, key=costs.get) if costs else ("cpu" if "cpu" in tgt.devices else tgt.preferred_device)
    cost = costs.get(dev, float_cost(tgt, dev, "MatMul" if u.kind == "MatMulNBits" else u.kind))
    n = macs(u)
    if dev != tgt.preferred_device and n:
        moved = [u.op.operands[0], u.op.results[0]]
        cost += tgt.copy_cost * sum(nbytes(v) or 0 for v in moved if v is not None) / n
    return cost


class _Rewriter:
    """The candidate rewrites of one unit; each candidate's ``apply`` edits the graph."""

    def __init__(self, g: Graph, u: Unit, names: NameTable):
        self.g, self.u, self.names = g, u, names

    def candidates(self) -> list[_Candidate]:
        out: list[_Candidate] = []
        u = self.u
        signed = self._signed_candidate()
        if signed is not None:
            out.append(signed)
        w = self._float_weight()
        if u.weight in ("int4", "uint4") and u.granularity == "block" and u.weight_dq is not None:
            out.append(self._int8_block())
        if w is None:
            return out
        if u.weight not in FLOATS and u.kind in ("MatMul", "MatMulNBits"):
            out.append(self._int8_channel(w))
        out.append(self._float(w, "float16"))
        out.append(self._float(w, "float32"))
        return out

    # -- the unit's parts ---------------------------------------------------------------------
    def _float_weight(self) -> np.ndarray | None:
        """The unit's weights as float32 [K, N] (MatMul) or the op's layout (Gemm / Conv), or None."""
        u, op = self.u, self.u.op
        if op.op_type == "MatMulNBits":
            return _unpack_nbits(op)
        if op.op_type == "DynamicQuantizeMatMul":
            b, s = const_array(op.operands[1]), const_array(op.operands[2])
            zp = const_array(op.operands[3]) if len(op.operands) > 3 and op.operands[3] is not None else 0
            if b is None or s is None:
                return None
            return dequantize(b, s, zp, axis=1 if np.size(s) > 1 else None)
        if op.op_type not in ("MatMul", "Gemm", "Conv"):
            return None
        if u.weight_dq is not None:
            dq = u.weight_dq
            q, s = const_array(dq.operands[0]), const_array(dq.operands[1])
            zp = const_array(dq.operands[2]) if len(dq.operands) > 2 and dq.operands[2] is not None else 0
            if q is None or s is None or zp is None:
                return None
            axis = dq.attr("axis", 1) if np.size(s) > 1 else None
            return dequantize(q, s, zp, axis, dq.attr("block_size", 0) or None)
        return None

    def _activation(self) -> Value:
        """The float activation: before its Q/DQ pair when it has one (the float forms need no
        activation quantization), else the anchor's first operand."""
        dq = self.u.act_dq
        if dq is not None:
            q = dq.operands[0].producer
            if q is not None and q.op_type in ("QuantizeLinear", "DynamicQuantizeLinear"):
                return q.operands[0]
        return self.u.op.operands[0]

    # -- candidates -----------------------------------------------------------------------------
    def _signed_candidate(self) -> _Candidate | None:
        """uint8 activations / weights / outputs of a QDQ unit -> int8 with zero point - 128 (exact)."""
        u = self.u
        if u.act_dq is None or not ({u.act, u.weight, *u.outs[:1]} & set(_UNSIGNED)):
            return None
        act_q = u.act_dq.operands[0].producer if u.act == "uint8" else None
        if u.act == "uint8" and not _retypable_q(act_q):
            return None
        if u.weight == "uint8" and (u.weight_dq is None or const_array(u.weight_dq.operands[0]) is None):
            return None
        if u.outs[0] == "uint8" and not _retypable_q(u.out_q):
            return None
        sig = dataclasses.replace(u, act=_UNSIGNED.get(u.act, u.act), weight=_UNSIGNED.get(u.weight, u.weight),
                                  outs=tuple(_UNSIGNED.get(o, o) for o in u.outs))

        def apply() -> None:
            if u.act == "uint8":
                self._retype_q(act_q)
            if u.out_q is not None and u.outs[0] == "uint8":
                self._retype_q(u.out_q)
            if u.weight == "uint8":
                self._retype_const_dq(u.weight_dq, DType.i8, shift=-128)

        size = _size(u.weight_dq.operands[0]) if u.weight_dq is not None else 0
        return _Candidate("uint8 -> int8 (zero point - 128, exact)", sig, size, 0, apply)

    def _int8_block(self) -> _Candidate:
        u = self.u
        sig = dataclasses.replace(u, weight="int8")

        def apply() -> None:
            self._retype_const_dq(u.weight_dq, DType.i8, shift=0)

        return _Candidate(f"{u.weight} -> int8 weights (block {u.block}, same scales, exact)", sig,
                          _size(u.weight_dq.operands[0]), 1, apply)

    def _int8_channel(self, w: np.ndarray) -> _Candidate:
        u = self.u
        sig = dataclasses.replace(u, kind="MatMul", act=dtype_name(self._activation()) or "float32",
                                  weight="int8", outs=("float32",), granularity="channel",
                                  zero_point="symmetric", block=0)

        def apply() -> None:
            q, scale, zp = quantize_rtn(w, 8, "channel", 0, True, True)
            base = self._base()
            s_const = self.g.add_const(self.names.fresh(f"{base}.legal.scale"),
                                       Tensor.from_array(scale.astype(np.float32)))
            z_const = self.g.add_const(self.names.fresh(f"{base}.legal.zp"), Tensor.from_array(zp.astype(np.int8)))
            params = QuantParams(scale=s_const, zero_point=z_const, axis=1)
            q_const = self.g.add_const(self.names.fresh(f"{base}.legal.q"), Tensor.from_array(q.astype(np.int8)),
                                       TensorType(DType.i8, tuple(q.shape), params))
            wv = Value(self.names.fresh(f"{base}.legal.dq"), TensorType(DType.f32, tuple(q.shape)))
            self.g.insert_before(u.op, Op("DequantizeLinear", [q_const, s_const, z_const], results=[wv],
                                          attrs={"axis": 1}, name=f"{base}.legal.dequantize"))
            self._replace_anchor(wv, DType.f32)

        return _Candidate("weights re-rounded to int8 per column (float activations)", sig, int(w.size), 2, apply)

    def _float(self, w: np.ndarray, dtype: str) -> _Candidate:
        u = self.u
        kind = "MatMul" if u.kind == "MatMulNBits" else u.kind
        sig = dataclasses.replace(u, kind=kind, act=dtype, weight=dtype, outs=(dtype,), granularity="any",
                                  zero_point="any", block=0, act_dq=None, weight_dq=None, out_q=None)
        dt = DType.f16 if dtype == "float16" else DType.f32

        def apply() -> None:
            base = self._base()
            wc = self.g.add_const(self.names.fresh(f"{base}.legal.{'f16' if dt is DType.f16 else 'f32'}"),
                                  Tensor.from_array(w.astype(dt.numpy)))
            self._replace_anchor(wc, dt)

        order = 3 if dtype == "float16" else 4
        return _Candidate(f"weights stored as {dtype}" + (" (activations cast to float16)" if dt is DType.f16 else ""),
                          sig, int(w.size) * (2 if dt is DType.f16 else 4), order, apply)

    # -- graph edits ----------------------------------------------------------------------------
    def _base(self) -> str:
        return self.u.op.name or self.u.op.results[0].name

    def _replace_anchor(self, weight: Value, dt: DType) -> None:
        """Replace the unit's anchor by a standard MatMul / Gemm / Conv reading ``weight`` (dtype ``dt``),
        with Casts around it for float16; the result value (and so every user) stays the same."""
        g, u, op = self.g, self.u, self.u.op
        y = op.results[0]
        x = self._activation()
        base = self._base()
        if dt is DType.f16:
            x16 = Value(self.names.fresh(f"{x.name}.f16"), TensorType(DType.f16, getattr(x.type, "shape", None)))
            g.insert_before(op, Op("Cast", [x], results=[x16], attrs={"to": int(DType.f16)},
                                   name=f"{base}.legal.cast_in"))
            x = x16
        kind = "MatMul" if op.op_type in ("MatMulNBits", "DynamicQuantizeMatMul") else op.op_type
        operands = [x, weight]
        bias = self._bias()
        if bias is not None and kind in ("Gemm", "Conv"):
            operands.append(g.add_const(self.names.fresh(f"{base}.legal.bias"),
                                        Tensor.from_array(bias.astype(dt.numpy))))
            bias = None
        attrs = {} if kind == "MatMul" else dict(op.attrs)
        shape = getattr(y.type, "shape", None)
        out = Value(self.names.fresh(f"{y.name}.legal"), TensorType(dt, shape))
        new = Op(kind, operands, results=[out], attrs=attrs, name=op.name)
        g.insert_before(op, new)
        last = out
        if dt is DType.f16:
            back = Value(self.names.fresh(f"{y.name}.f32"), TensorType(DType.f32, shape))
            g.insert_before(op, Op("Cast", [out], results=[back], attrs={"to": int(DType.f32)},
                                   name=f"{base}.legal.cast_out"))
            last = back
        if bias is not None:
            with_bias = Value(self.names.fresh(f"{y.name}.bias"), TensorType(DType.f32, shape))
            b = g.add_const(self.names.fresh(f"{base}.legal.bias"), Tensor.from_array(bias.astype(np.float32)))
            g.insert_before(op, Op("Add", [last, b], results=[with_bias], name=f"{base}.legal.bias_add"))
            last = with_bias
        y.replace_all_uses_with(last)
        name = y.name  # the result keeps its name (it may be a graph output)
        y.name = self.names.fresh(f"{name}.replaced")
        last.name = name
        consts = [v for v in op.operands if v is not None and v.const is not None]
        g.remove(op)
        act_q = u.act_dq.operands[0].producer if u.act_dq is not None else None
        _drop_dead(g, [d for d in (u.weight_dq, u.act_dq, act_q) if d is not None])
        _drop_consts(g, consts)

    def _bias(self) -> np.ndarray | None:
        op = self.u.op
        if op.op_type == "MatMulNBits" and len(op.operands) > 5 and op.operands[5] is not None:
            return const_array(op.operands[5])
        if op.op_type == "DynamicQuantizeMatMul" and len(op.operands) > 4 and op.operands[4] is not None:
            return const_array(op.operands[4])
        if op.op_type in ("Gemm", "Conv") and len(op.operands) > 2 and op.operands[2] is not None:
            b = op.operands[2]
            dq = b.producer if b.producer is not None and b.producer.op_type == "DequantizeLinear" else None
            if dq is not None:
                q, s = const_array(dq.operands[0]), const_array(dq.operands[1])
                return None if q is None or s is None else dequantize(q, s, 0, 0 if np.size(s) > 1 else None)
            return const_array(b)
        return None

    def _retype_q(self, q: Op) -> None:
        """Q(x, s, zp:u8) and every DQ reading it -> int8 with zero point - 128."""
        zp_u8 = const_array(q.operands[2]) if len(q.operands) > 2 and q.operands[2] is not None else np.uint8(0)
        zp = self.g.add_const(self.names.fresh(f"{q.results[0].name}.zp_s8"),
                              Tensor.from_array((np.asarray(zp_u8).astype(np.int16) - 128).astype(np.int8)))
        r = q.results[0]
        for dq in r.users():
            _set_zero_point(dq, zp)
        _set_zero_point(q, zp)
        r.type = _retyped(r.type, DType.i8, zp, -128)

    def _retype_const_dq(self, dq: Op, dtype: DType, shift: int) -> None:
        """DQ(W, s, zp) with constant W: W and zp stored as ``dtype``, both moved by ``shift``."""
        wq = dq.operands[0]
        q = const_array(wq).astype(np.int16) + shift
        zp_v = dq.operands[2] if len(dq.operands) > 2 else None
        base = wq.name
        new_zp = None
        if zp_v is not None or shift:
            if zp_v is not None:
                zp = const_array(zp_v).astype(np.int16) + shift
            else:  # the default zero point 0, moved: shaped like the scales (blocked DQ wants that)
                zp = np.full(np.shape(const_array(dq.operands[1])), shift, np.int16)
            new_zp = self.g.add_const(self.names.fresh(f"{base}.zp_s8"), Tensor.from_array(zp.astype(np.int8)))
        new_q = self.g.add_const(self.names.fresh(f"{base}.s8"), Tensor.from_array(q.astype(np.int8)),
                                 _retyped(wq.type, dtype, new_zp, shift))
        dq.set_operand(0, new_q)
        if new_zp is not None:
            _set_zero_point(dq, new_zp)
        for v in (wq, zp_v):
            if v is not None and not v.uses():
                self.g.remove_const(v)


def _retypable_q(q: Op | None) -> bool:
    """A QuantizeLinear to uint8 with a constant zero point whose result only DequantizeLinear reads."""
    if q is None or q.op_type != "QuantizeLinear" or not q.results:
        return False
    if len(q.operands) > 2 and q.operands[2] is not None and const_array(q.operands[2]) is None:
        return False
    users = q.results[0].users()
    return bool(users) and all(u.op_type == "DequantizeLinear" for u in users) and \
        not [user for user, _ in q.results[0].uses() if isinstance(user, Graph)]


def _set_zero_point(op: Op, zp: Value) -> None:
    if len(op.operands) > 2:
        op.set_operand(2, zp)
    else:
        op.set_operands([*op.operands, zp])


def _retyped(t, dtype: DType, zp: Value | None, shift: int):
    if not isinstance(t, TensorType):
        return TensorType(dtype, None)
    quant = t.quant
    if quant is not None and zp is not None:
        new_zp = quant.zero_point + shift if isinstance(quant.zero_point, int) else zp
        quant = dataclasses.replace(quant, zero_point=new_zp)
    return TensorType(dtype, t.shape, quant)


def _size(v: Value) -> int:
    return int(np.prod(v.const.shape)) if v is not None and v.const is not None else 0


def _drop_dead(g: Graph, ops: list[Op]) -> None:
    """Remove ops (and then the consts they alone read) whose results nobody reads anymore."""
    for op in ops:
        if op.graph is not g or any(r is not None and r.uses() for r in op.results):
            continue
        consts = [v for v in op.operands if v is not None and v.const is not None]
        g.remove(op)
        _drop_consts(g, consts)


def _drop_consts(g: Graph, consts: list[Value]) -> None:
    for v in consts:
        if not v.uses() and v.name in g.consts:
            g.remove_const(v)


def _unpack_nbits(op: Op) -> np.ndarray | None:
    """com.microsoft.MatMulNBits weights as float32 [K, N]: B [N, blocks, block*bits/8] packed low bits
    first, scales [N * blocks], optional packed uint8 (or float) zero points, default 2**(bits-1)."""
    bits, k, n, bs = (int(op.attr(a, 0) or 0) for a in ("bits", "K", "N", "block_size"))
    b, scales = const_array(op.operands[1]), const_array(op.operands[2])
    if b is None or scales is None or bits not in (2, 4, 8) or not (k and n and bs):
        return None
    blocks = -(-k // bs)
    per_byte = 8 // bits
    raw = np.asarray(b, np.uint8).reshape(n, -1)
    codes = np.stack([(raw >> (bits * i)) & ((1 << bits) - 1) for i in range(per_byte)], axis=-1).reshape(n, -1)
    codes = codes[:, :blocks * bs].reshape(n, blocks, bs).astype(np.float32)
    scale = np.asarray(scales, np.float32).reshape(n, blocks)
    zp_v = op.operands[3] if len(op.operands) > 3 else None
    if zp_v is None:
        zp = np.full((n, blocks), float(1 << (bits - 1)), np.float32)
    else:
        z = const_array(zp_v)
        if z is None:
            return None
        if np.issubdtype(z.dtype, np.floating):
            return None  # float zero points: not produced by qc; left alone rather than guessed
        zr = np.asarray(z, np.uint8).reshape(n, -1)
        zp = np.stack([(zr >> (bits * i)) & ((1 << bits) - 1) for i in range(per_byte)],
                      axis=-1).reshape(n, -1)[:, :blocks].astype(np.float32)
    w = (codes - zp[:, :, None]) * scale[:, :, None]
    return np.ascontiguousarray(w.reshape(n, blocks * bs)[:, :k].T)
