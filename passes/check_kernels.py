"""The ``check-kernels`` pass; its docstring (``qc passes check-kernels``) says what it does."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from qc.errors import QCError
from qc.ir.core import Graph, Module, Op, Value
from qc.ir.types import TensorType, static_size
from qc.pm import Pass, PassContext, register_pass
from qc.quant.units import FLOATS, Unit, dtype_name, macs, node_unit
from qc.targets import load_target
from qc.targets.placement import Placement

from ._util import graphs

_HOST = "cpu"  # graph inputs and outputs live in host memory


def unit_kinds(u: Unit) -> tuple[str, ...]:
    """Table ops a unit may use: a weight-only MatMul (float x int4/int8 weights) also runs as
    MatMulNBits (onnxruntime fuses it)."""
    if u.kind == "MatMul" and u.weight in ("int4", "uint4", "int8", "uint8") and u.act in FLOATS:
        return (u.kind, "MatMulNBits")
    return (u.kind,)


def device_kernels(target, u: Unit) -> dict:
    """The cheapest kernel per device that has one for the unit."""
    best: dict = {}
    for kind in unit_kinds(u):
        for out in u.outs:
            for dev, k in target.kernel_for(kind, u.act, u.weight, out, u.granularity, u.zero_point, u.const_weight):
                if dev not in best or k.cost < best[dev].cost:
                    best[dev] = k
    return best


def device_costs(target, u: Unit) -> dict[str, float]:
    """The cheapest kernel cost per device that has a kernel for the unit."""
    return {dev: k.cost for dev, k in device_kernels(target, u).items()}


def float_kernel_cost(target, device: str, op: str) -> float | None:
    """The cheapest float32 kernel for ``op`` on ``device``, None if it has none."""
    hits = [k.cost for k in target.kernels.get(device, ())
            if k.op == op and k.act == "float32" and k.weight == "float32"]
    return min(hits) if hits else None


def float_cost(target, device: str, op: str) -> float:
    """Cost of the dequantize + float route on ``device`` (its float32 kernel, else 1.0)."""
    cost = float_kernel_cost(target, device, op)
    return 1.0 if cost is None else cost


def _member_dtype(op: Op) -> str | None:
    """The quantized side of a Q/DQ member (DQ: its input; Q: its output), else the op's own dtype."""
    if op.op_type == "DequantizeLinear":
        return dtype_name(op.operands[0])
    if op.op_type in ("QuantizeLinear", "DynamicQuantizeLinear"):
        return dtype_name(op.results[0])
    return _value_dtype(op)


def emulation_costs(target, u: Unit) -> dict[str, float]:
    """Devices that can run a QDQ unit as dequantize + float (its Q/DQ ops there, and a float kernel
    for the anchor), with the float kernel's cost: no integer speed-up, but no device change."""
    if u.act_dq is None and u.weight_dq is None:
        return {}
    out = {}
    for dev in target.devices:
        cost = float_kernel_cost(target, dev, u.kind)
        if cost is not None and all(target.runs_op(dev, m.op_type, _member_dtype(m))
                                    for m in u.members() if m is not u.op):
            out[dev] = cost
    return out


def _copy_overhead(target, u: Unit, n: int | None) -> float:
    """Per-MAC cost of moving the unit's activation in and result out of a non-preferred device."""
    if not n or not target.copy_cost:
        return 0.0
    moved = [v for v in (u.op.operands[0] if u.op.operands else None, u.op.results[0] if u.op.results else None)
             if v is not None]
    return target.copy_cost * sum(nbytes(v) or 0 for v in moved) / n


def place_unit(target, u: Unit) -> dict:
    """Where one unit runs and why: the cheapest device with a kernel, or running it as dequantize +
    float, counting the copies a non-preferred device costs (ties go to the preferred device)."""
    pref = target.preferred_device
    kernels = device_kernels(target, u)
    best = {dev: k.cost for dev, k in kernels.items()}
    emulated = {d: c for d, c in emulation_costs(target, u).items() if d not in best or c < best[d]}
    options = {**best, **emulated}
    n = macs(u)
    if options:
        overhead = _copy_overhead(target, u, n)
        total = {d: c + (0.0 if d == pref else overhead) for d, c in options.items()}
        low = min(total.values())
        to = pref if total.get(pref) == low else min((d for d in target.devices if total.get(d) == low),
                                                       key=target.devices.index)
    else:
        to = "cpu" if "cpu" in target.devices else pref
    desc = u.describe()
    if pref not in options:
        extra = "" if to in kernels else " (dequantize + float there)"
        reason = f"{desc}: no kernel on {pref} -> {to}{extra}"
        wants = sorted({k.out for k in target.kernels.get(pref, ()) if k.op in unit_kinds(u)
                        and k.matches(k.op, u.act, u.weight, k.out, u.granularity, u.zero_point, u.const_weight)})
        if wants and any(o.startswith("float") for o in u.outs) and not set(wants) & set(u.outs):
            reason = (f"{desc}: its output is {u.outs[0]}, and {pref}'s kernels write {', '.join(wants)} "
                      f"(no QuantizeLinear requantizes the output) -> {to}{extra}")
    elif to != pref:
        reason = f"{desc}: cheaper on {to} (cost {options[to]:g} vs {options[pref]:g} on {pref}) -> {to}"
    else:
        reason = ""
    status = kernels[to].status if to in kernels and to not in emulated else "dequantize + float"
    op = u.op
    unit_cost = options.get(to, float_cost(target, to, "MatMul" if u.kind == "MatMulNBits" else u.kind))
    return {
        "node": op.name or (op.results[0].name if op.results and op.results[0] else "?"),
        "op": op.qualified_type, "unit": u.kind, "dtypes": [u.act, u.weight, *u.outs[:1]],
        "granularity": u.granularity, "from": pref, "to": to, "reason": reason, "fallback": to != pref,
        "kernel": to in kernels and to not in emulated, "cost": options.get(to), "macs": n, "status": status,
        "estimate": None if n is None else n * unit_cost}


def _value_dtype(op: Op) -> str | None:
    for v in (*op.results, *op.operands):
        if v is not None:
            d = dtype_name(v)
            if d is not None:
                return d
    return None


def _other_device(target, op: Op, device_of: dict[int, str]) -> str:
    """Device for an op outside every unit: the preferred device if it runs the op's dtype (the
    preferred provider claims what it can, as in onnxruntime's partitioner); else where its data
    is, if that device runs it; else the first device that does (the CPU runs everything)."""
    dtype = _value_dtype(op)
    if target.runs_other_op(target.preferred_device, dtype):
        return target.preferred_device
    for v in op.operands:
        if v is not None and v.const is None and id(v) in device_of:
            if target.runs_other_op(device_of[id(v)], dtype):
                return device_of[id(v)]
            break
    for dev in target.devices:
        if target.runs_other_op(dev, dtype):
            return dev
    return "cpu" if "cpu" in target.devices else target.preferred_device


def nbytes(v: Value) -> int | None:
    """Bytes of a tensor (dimensions that are not sizes, ``N`` ``?`` ``-1``, count as 1), None if
    its type is unknown."""
    shape, dt = getattr(v.type, "shape", None), getattr(v.type, "dtype", None)
    if shape is None or dt is None or not dt.bits:
        return None
    size = static_size(shape, unknown=1)
    assert size is not None
    return (size * dt.bits + 7) // 8


def _sized(v: Value) -> bool:
    return isinstance(v.type, TensorType) and v.type.is_static


def _traffic(target, g: Graph, device_of_op: dict[int, str]) -> dict:
    """Copies between devices (one per tensor and destination), their bytes, and the device switches
    along the schedule."""
    device_of: dict[int, str] = {id(v): _HOST for v in g.inputs if v.const is None}
    copies: list[dict] = []
    seen: set[tuple[int, str]] = set()
    transitions, last = 0, None

    def need(v: Value, dev: str, consumer: str) -> None:
        src = device_of.get(id(v))
        if src is None or src == dev or (id(v), dev) in seen:
            return
        seen.add((id(v), dev))
        copies.append({"value": v.name, "from": src, "to": dev, "bytes": nbytes(v), "static": _sized(v),
                       "consumer": consumer})

    for op in g.ops:
        if op.graph is not g:
            continue
        dev = device_of_op[id(op)]
        if last is not None and dev != last:
            transitions += 1
        last = dev
        for v in op.operands:
            if v is not None and v.const is None:
                need(v, dev, op.name or op.op_type)
        for r in op.results:
            if r is not None:
                device_of[id(r)] = dev
    for v in g.outputs:
        if v is not None and v.const is None:
            need(v, _HOST, "(graph output)")
    return {"copies": copies, "transitions": transitions}


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

    Every other op runs on the preferred device if that runs ops of its dtype (the target's
    ``other_ops`` table), else where its data is if that device does, else on the CPU; a unit's
    Q/DQ nodes run with it. Never rewrites; annotates every op of the main graph with its device
    (``%y = onnx.MatMul(...) on gpu``) and returns True only if an annotation changed.

    ``fallback``: what to do with units that leave the preferred device: ``allow`` keeps them,
    ``warn`` adds a remark per unit, ``error`` stops with the list of nodes.

    Result in ``ctx.placement`` (a :class:`~qc.targets.placement.Placement`): ``units`` (one
    dict per unit: node, op, dtypes, granularity, from, to, reason, kernel, cost, macs,
    estimate), ``fallbacks`` (the units that leave the preferred device or have no kernel
    there, e.g. ``MatMul float32 x int4 (block 32): no kernel on gpu -> cpu``), ``traffic``
    (copies between devices with bytes, device transitions along the schedule) and ``cost``
    (MACs x relative kernel cost, plus copied bytes x the target's ``copy_cost``; dimensions
    that are not sizes, ``N`` ``?`` ``-1``, count as 1, and ``unknown_copies`` says how many
    copies that concerns: ``qc check --shape`` fixes the inputs' sizes first). Ties go to the
    preferred device.
    """

    target: str = ""
    """target name or .toml path (default: the pass context's target)"""
    fallback: Literal["allow", "warn", "error"] = "allow"
    """allow | warn | error: what to do with units that fall back from the preferred device"""

    def validate(self) -> None:
        if self.target:
            load_target(self.target)  # an unknown target fails when the pipeline is parsed

    def run(self, module: Module, ctx: PassContext) -> bool:
        tgt = ctx.require_target("check-kernels", self.target)
        placement: list[dict] = []
        device_of_op: dict[int, str] = {}
        for g, _fn in list(graphs(module)):
            for op in g.ops:
                if op.graph is not g or id(op) in device_of_op:
                    continue
                u = node_unit(op, ort_fusions=tgt.backend == "onnx")
                if u is None:
                    continue
                p = place_unit(tgt, u)
                placement.append(p)
                for member in u.members():
                    device_of_op.setdefault(id(member), p["to"])
                device_of_op[id(op)] = p["to"]
        g = module.graph
        device_of_value: dict[int, str] = {id(v): _HOST for v in g.inputs if v.const is None}
        for op in g.ops:
            if op.graph is not g:
                continue
            if id(op) not in device_of_op:
                device_of_op[id(op)] = _other_device(tgt, op, device_of_value)
            for r in op.results:
                if r is not None:
                    device_of_value[id(r)] = device_of_op[id(op)]
        traffic = _traffic(tgt, g, device_of_op)
        compute = sum(p["estimate"] or 0.0 for p in placement)
        copied = sum(c["bytes"] or 0 for c in traffic["copies"])
        changed = False
        for g2, _fn in graphs(module):
            for op in g2.ops:
                dev = device_of_op.get(id(op))
                if dev is not None and op.device != dev:
                    op.device = dev
                    changed = True
        ctx.placement = Placement(
            units=placement, fallbacks=[p for p in placement if p["fallback"]], traffic=traffic,
            cost={"compute": compute, "copy_bytes": copied, "copy": copied * tgt.copy_cost,
                  "total": compute + copied * tgt.copy_cost,
                  "unknown_macs": sum(1 for p in placement if p["macs"] is None),
                  "unknown_copies": sum(1 for c in traffic["copies"] if not c["static"])},
            ops_per_device={d: sum(1 for op in g.ops if device_of_op.get(id(op)) == d) for d in tgt.devices})
        self._apply_fallback_policy(ctx.placement.fallbacks, tgt, ctx)
        return changed

    def _apply_fallback_policy(self, left: list[dict], tgt, ctx: PassContext) -> None:
        if left and self.fallback == "error":
            shown = "; ".join(f"{p['node']} ({p['reason']})" for p in left[:10])
            more = f" and {len(left) - 10} more" if len(left) > 10 else ""
            raise QCError(f"{len(left)} node units fall back from {tgt.preferred_device} on target "
                          f"{tgt.name}: {shown}{more}",
                          hint="use --fallback=warn to compile anyway, or choose a scheme the target has "
                               "kernels for (`qc targets " + tgt.name + "`)")
        if self.fallback == "warn":
            for p in left:
                ctx.remark(None, f"{p['node']}: fallback: {p['reason']}")
