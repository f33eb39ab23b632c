"""The ``check-kernels`` pass; its docstring (``qc passes check-kernels``) says what it recognises."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qc.errors import QCError
from qc.ir.core import Module, Op, Value
from qc.pm import Pass, PassContext, register_pass

from ._util import const_array, graphs

# ONNX TensorProto element type -> the dtype names of the target kernel tables.
_DTYPE_NAMES = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64", 6: "int32", 5: "int16",
                4: "uint16", 3: "int8", 2: "uint8", 22: "int4", 21: "uint4"}
_FLOATS = ("float32", "float16", "bfloat16", "float64")
_ANCHORS = ("MatMul", "Gemm", "Conv")


def _dtype(v: Value | None) -> str | None:
    if v is None:
        return None
    t = v.const.dtype if v.const is not None else getattr(v.type, "dtype", None)
    return None if t is None else _DTYPE_NAMES.get(int(t), str(t))


def _producer(v: Value | None, op_type: str) -> Op | None:
    p = v.producer if v is not None else None
    return p if p is not None and p.domain in ("", "ai.onnx") and p.op_type == op_type else None


def _size(v: Value | None) -> int | None:
    if v is None:
        return None
    if v.const is not None:
        return int(np.prod(v.const.shape)) if v.const.shape else 1
    shape = getattr(v.type, "shape", None)
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return int(np.prod(shape)) if shape else 1


def _zero_point(zp: Value | None) -> str:
    if zp is None:
        return "symmetric"
    a = const_array(zp)
    if a is None:
        return "any"
    return "symmetric" if not np.any(np.asarray(a).astype(np.int64)) else "asymmetric"


def _granularity(scale: Value | None, block_size: int) -> str:
    if block_size:
        return "block"
    n = _size(scale)
    return "any" if n is None else ("tensor" if n == 1 else "channel")


@dataclass
class Unit:
    op: Op
    kind: str       # table op: MatMul, Gemm, Conv, MatMulNBits
    act: str
    weight: str
    outs: tuple[str, ...]
    granularity: str = "any"
    zero_point: str = "any"
    const_weight: bool = True
    block: int = 0

    def describe(self) -> str:
        g = ""
        if self.weight not in _FLOATS:
            g = f" (block {self.block})" if self.granularity == "block" and self.block else (
                f" ({self.granularity})" if self.granularity != "any" else "")
        return f"{self.kind} {self.act} x {self.weight}{g}"


def _unit(op: Op) -> Unit | None:
    dom, t = op.domain, op.op_type
    ops = op.operands
    res = op.results[0] if op.results else None
    if dom in ("", "ai.onnx") and t in _ANCHORS:
        if len(ops) < 2 or ops[0] is None or ops[1] is None:
            return None
        a, w = ops[0], ops[1]
        adq, wdq = _producer(a, "DequantizeLinear"), _producer(w, "DequantizeLinear")
        act = _dtype(adq.operands[0]) if adq is not None else _dtype(a)
        if wdq is not None:
            wq = wdq.operands[0]
            block = int(wdq.attr("block_size", 0) or 0)
            weight, gran = _dtype(wq), _granularity(wdq.operands[1] if len(wdq.operands) > 1 else None, block)
            zp = _zero_point(wdq.operands[2] if len(wdq.operands) > 2 else None)
            const_w = wq is not None and wq.const is not None
        else:
            weight, gran, zp, const_w, block = _dtype(w), "any", "any", w.const is not None, 0
        if act is None or weight is None:
            return None
        users = res.users() if res is not None else []
        q = users[0] if len(users) == 1 and users[0].op_type == "QuantizeLinear" and users[0].domain in ("", "ai.onnx") else None
        out_float = _dtype(res) or "float32"
        if q is not None and q.results and _dtype(q.results[0]):
            outs = (_dtype(q.results[0]),)
        elif act in _FLOATS:
            outs = (out_float,)
        else:
            outs = (out_float, "int32")
        return Unit(op, t, act, weight, outs, gran, zp, const_w, block)
    if dom in ("", "ai.onnx") and t in ("QLinearMatMul", "QLinearConv") and len(ops) >= 8:
        return Unit(op, t[len("QLinear"):], _dtype(ops[0]) or "?", _dtype(ops[3]) or "?",
                    (_dtype(res) or "?",), _granularity(ops[4], 0), _zero_point(ops[5]), ops[3].const is not None)
    if dom in ("", "ai.onnx") and t == "MatMulInteger" and len(ops) >= 2:
        return Unit(op, "MatMul", _dtype(ops[0]) or "?", _dtype(ops[1]) or "?", ("int32",), "tensor",
                    _zero_point(ops[3] if len(ops) > 3 else None), ops[1].const is not None)
    if dom == "com.microsoft" and t == "MatMulNBits" and len(ops) >= 3:
        bits, block = int(op.attr("bits", 4) or 4), int(op.attr("block_size", 0) or 0)
        act = _dtype(ops[0]) or "float32"
        return Unit(op, "MatMulNBits", act, "int4" if bits == 4 else f"int{bits}", (act,), "block",
                    "asymmetric" if len(ops) > 3 and ops[3] is not None else "symmetric",
                    ops[1].const is not None, block)
    if dom == "com.microsoft" and t == "DynamicQuantizeMatMul" and len(ops) >= 3:
        act = _dtype(ops[0]) or "float32"
        return Unit(op, "MatMul", "uint8", _dtype(ops[1]) or "?", (act, "int32"), _granularity(ops[2], 0),
                    _zero_point(ops[3] if len(ops) > 3 else None), ops[1].const is not None)
    return None


@register_pass("check-kernels")
@dataclass(frozen=True)
class CheckKernels(Pass):
    """check-kernels: place every node unit on the cheapest device of the target that has a kernel.

    Node units (every graph)::

        %a = DQ(Q(%x)) or DQ(%x_q)   %w = DQ(W.q, scale, zp)   %y = MatMul(%a, %w)  [-> Q]
            -> one quantized MatMul unit: act dtype of %x_q, weight dtype/granularity
               (tensor/channel/block)/zero-point kind of the weight DQ, out dtype of the Q (or float)
        %w = DQ(W.int4 {block_size}) ; %y = MatMul(%x_float, %w)   -> a weight-only unit
        MatMul / Gemm / Conv on float operands                     -> a float unit
        QLinearMatMul, QLinearConv, MatMulInteger,
        com.microsoft.MatMulNBits / DynamicQuantizeMatMul          -> looked up directly

    Annotates only the anchor op of each unit (``%y = onnx.MatMul(...) on cpu``), never
    rewrites; returns True only if a device annotation changed. ``ctx.cache["placement"]``
    gets one dict per unit (node, op, dtypes, granularity, from, to, reason) and
    ``ctx.cache["fallbacks"]`` the units that leave the target's preferred device, e.g.
    ``MatMul float32 x int4 (block 32): no kernel on gpu -> cpu``. Ties go to the preferred device.
    """

    target: str = ""
    """target name or .toml path (default: the pass context's target)"""

    def run(self, module: Module, ctx: PassContext) -> bool:
        from qc.targets import load_target

        name = self.target or ctx.target
        if not name:
            raise QCError("check-kernels needs a target", hint="check-kernels{target=x86-avx2} or --target NAME")
        tgt = load_target(name)
        pref = tgt.preferred_device
        placement, changed = [], False
        for g, _fn in list(graphs(module)):
            for op in g.ops:
                if op.graph is not g:
                    continue
                u = _unit(op)
                if u is None:
                    continue
                kinds = (u.kind, "MatMulNBits") if (u.kind == "MatMul" and u.weight in ("int4", "uint4")
                                                    and u.act in _FLOATS) else (u.kind,)
                hits = [dk for k in kinds for out in u.outs
                        for dk in tgt.kernel_for(k, u.act, u.weight, out, u.granularity, u.zero_point,
                                                 u.const_weight)]
                best: dict[str, float] = {}
                for dev, k in hits:
                    best[dev] = min(best.get(dev, k.cost), k.cost)
                if best:
                    low = min(best.values())
                    to = pref if best.get(pref) == low else min(
                        (d for d in tgt.devices if best.get(d) == low), key=tgt.devices.index)
                else:
                    to = "cpu" if "cpu" in tgt.devices else pref
                desc = u.describe()
                if pref not in best:
                    extra = "" if best else (f" (no kernel on any device: dequantize + float on {to})"
                                             if to == pref else f" (no kernel on {to} either: dequantize + float)")
                    reason = f"{desc}: no kernel on {pref} -> {to}{extra}"
                elif to != pref:
                    reason = f"{desc}: cheaper on {to} (cost {best[to]:g} vs {best[pref]:g} on {pref}) -> {to}"
                else:
                    reason = ""
                placement.append({
                    "node": op.name or (op.results[0].name if op.results and op.results[0] else "?"),
                    "op": op.qualified_type, "unit": u.kind, "dtypes": [u.act, u.weight, *u.outs[:1]],
                    "granularity": u.granularity, "from": pref, "to": to, "reason": reason,
                    "fallback": bool(reason), "cost": best.get(to)})
                if op.device != to:
                    op.device = to
                    changed = True
        ctx.cache["placement"] = placement
        ctx.cache["fallbacks"] = [p for p in placement if p["fallback"]]
        return changed
