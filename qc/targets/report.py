"""The placement report of ``qc check`` / ``qc compile --target``: built from what check-kernels
(and legalize) left in the pass context, printed as a table or written as JSON."""
from __future__ import annotations

import collections
import re
from typing import Any

from .placement import Placement

_FALLBACK_KEYS = ("node", "op", "dtypes", "granularity", "from", "to", "reason")


def placement_report(target, found: Placement, legalized: list[dict] | None = None,
                     shapes: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-ready report: units per device, fallbacks, copies, transitions, estimated cost, the
    rewrites of legalize when it ran, and ``shapes`` when given (``qc check``: the input shapes the
    estimates used, ``given`` by --shape, and the dynamic dimensions ``assumed`` to be 1)."""
    placement, traffic, cost = found.units, found.traffic, found.cost
    report: dict[str, Any] = {
        "target": target.name,
        "preferred_device": target.preferred_device,
        "units": len(placement),
        "units_per_device": {d: sum(1 for p in placement if p["to"] == d) for d in target.devices},
        "ops_per_device": found.ops_per_device,
        "fallbacks": [{k: p[k] for k in _FALLBACK_KEYS} for p in found.fallbacks],
        "emulated": [{"node": p["node"], "op": p["op"], "dtypes": p["dtypes"], "on": p["to"], "reason": p["reason"]
                      or f"no integer kernel for {' x '.join(p['dtypes'][:2])} -> {p['dtypes'][2]} on {p['to']}"}
                     for p in placement if p["to"] == target.preferred_device and not p["kernel"]],
        "transitions": traffic["transitions"],
        "copies": len(traffic["copies"]),
        "copy_bytes": cost["copy_bytes"],
        "cost": {"compute": round(cost["compute"], 3), "copy": round(cost["copy"], 3),
                 "total": round(cost["total"], 3), "units_without_shapes": cost["unknown_macs"],
                 "copies_without_shapes": cost.get("unknown_copies", 0)},
        "placement": [{k: p[k] for k in (*_FALLBACK_KEYS, "kernel", "cost", "macs")} for p in placement],
    }
    if legalized is not None:
        report["legalized"] = legalized
    if shapes is not None:
        report["shapes"] = shapes
    return report


_RUNTIME = {"gpu": "the gpu placement needs a runtime qc does not emit for",
            "npu": "the npu placement needs Vela's command stream: --emit tflite"}


def realized(target, emit: str) -> dict[str, Any]:
    """What the artifact of ``emit`` does with the target's devices: ``devices`` it programs,
    ``note`` in words. The per-device counts above it are qc's table; this is the output."""
    accel = [d for d in target.devices if d != "cpu"]
    if not accel:
        return {"emit": emit, "devices": ["cpu"], "note": f"backend {emit} runs every unit on the cpu"}
    if emit == "onnx" and target.backend == "onnx":
        return {"emit": emit, "devices": list(target.devices),
                "note": f"backend onnx: onnxruntime places the nodes when the session starts ({target.description}); "
                        "the per-device counts model its kernel registrations"}
    if emit == "tflite" and target.vela is not None:
        return {"emit": emit, "devices": list(target.devices), "note": "backend tflite: Vela's split below is the "
                "artifact's placement; qc's table above is an estimate (differences listed)"}
    if emit == "tflite":
        return {"emit": emit, "devices": ["cpu"],
                "note": f"backend tflite runs every unit on the cpu of {target.name} in the TFLite interpreter; "
                        + "; ".join(_RUNTIME.get(d, f"the {d} placement is not realized") for d in accel)}
    return {"emit": emit, "devices": ["cpu"],
            "note": f"backend {emit} runs every unit on the cpu of {target.name}; "
                    + "; ".join(_RUNTIME.get(d, f"the {d} placement is not realized") for d in accel)}


def _shape_lines(shapes: dict[str, Any]) -> list[str]:
    """``input shapes: x [1, 3, 1, 1] (assumed 1: axis 0 (-1), axis 2 (?)), ...`` and what to do;
    nothing for a model with static inputs and no --shape."""
    if not shapes["assumed"] and not shapes["given"]:
        return []
    assumed: dict[str, list[str]] = collections.defaultdict(list)
    for a in shapes["assumed"]:
        assumed[a["input"]].append(f"axis {a['axis']} ({a['dim']})")
    parts = []
    for name, dims in shapes["inputs"].items():
        how = " (--shape)" if name in shapes["given"] else (
            f" (assumed 1: {', '.join(assumed[name])})" if name in assumed else "")
        parts.append(f"{name} [{', '.join(map(str, dims))}]{how}")
    out = [f"input shapes: {'; '.join(parts) or 'none'}"]
    if assumed:
        out.append(f"  {len(shapes['assumed'])} dynamic dimensions counted as 1 in the estimates; give their sizes "
                   "with --shape NAME=AxB,...")
    return out


def _fmt_num(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def _reason_kind(reason: str) -> str:
    """A fallback reason without its per-node numbers: ``(cost 12 vs 30 on npu)`` goes."""
    return re.sub(r" \(cost [^)]*\)", "", reason)


def _fallback_summary(fallbacks: list[dict], examples: int = 3, list_up_to: int = 8) -> list[str]:
    """Up to ``list_up_to`` fallbacks one line each; more grouped by reason, most frequent first,
    with a few node names per group and where to find the full listing."""
    if len(fallbacks) <= list_up_to:
        return [f"fallbacks ({len(fallbacks)}):", *(f"  {f['node']}: {f['reason']}" for f in fallbacks)]
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for f in fallbacks:
        groups[_reason_kind(f["reason"])].append(f["node"])
    out = [f"fallbacks ({len(fallbacks)}), by reason:"]
    for reason, nodes in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        more = f", and {len(nodes) - examples} more" if len(nodes) > examples else ""
        out.append(f"  {len(nodes)} x {reason} (e.g. {', '.join(nodes[:examples])}{more})")
    out.append("  (`qc check MODEL --target T` without --brief lists each one; --json gives every field)")
    return out


def format_placement(report: dict[str, Any], *, units: bool = True) -> str:
    """The terminal table: per device its units, then fallbacks, copies and the cost estimate.
    ``units=False`` (``qc check --brief``, the compile summary): only counts, and the fallbacks
    grouped by reason with a few examples each when there are more than 8."""
    real = report.get("realized")
    cpu_only = real is not None and real["devices"] == ["cpu"] and len(report["units_per_device"]) > 1
    if cpu_only:
        out = [f"{report['target']}: {report['units']} node units, all on the cpu in this output "
               f"(the table's placement for preferred device {report['preferred_device']}, not realized:)"]
    else:
        out = [f"{report['target']}: {report['units']} node units, preferred device {report['preferred_device']}"
               + (" (qc's table)" if real is not None and len(report["units_per_device"]) > 1 else "")]
    for dev, n in report["units_per_device"].items():
        ops = report["ops_per_device"].get(dev)
        out.append(f"  {'table: ' if cpu_only else ''}on {dev}: {n} units"
                   + (f", {ops} ops in all" if ops is not None else ""))
        if units:
            for p in report["placement"]:
                if p["to"] != dev:
                    continue
                cost = "no kernel: dequantize + float" if not p["kernel"] else f"cost {p['cost']:g}"
                out.append(f"    {p['node']:<40} {p['op']:<26} {' x '.join(p['dtypes'][:2])} -> {p['dtypes'][2]}"
                           f"  [{p['granularity']}]  {cost}")
    if units:
        out.append(f"fallbacks ({len(report['fallbacks'])}):")
        out.extend(f"  {f['node']}: {f['reason']}" for f in report["fallbacks"])
    else:
        out.extend(_fallback_summary(report["fallbacks"]))
    if report["emulated"]:
        out.append(f"run as dequantize + float on {report['preferred_device']} (no integer kernel there, no "
                   f"speed-up from quantizing): {len(report['emulated'])} units")
        if units:
            out.extend(f"  {e['node']}: {' x '.join(e['dtypes'][:2])} -> {e['dtypes'][2]}" for e in report["emulated"])
    c = report["cost"]
    if "shapes" in report:
        out.extend(_shape_lines(report["shapes"]))
    unsized = c.get("copies_without_shapes", 0)
    out.append(f"copies between devices: {report['copies']} ({_fmt_num(report['copy_bytes'])}B"
               + (f"; {unsized} of dynamic size, its unknown dimensions counted as 1" if unsized else "")
               + f"), device transitions: {report['transitions']}")
    note = f"; {c['units_without_shapes']} units without shapes not counted" if c["units_without_shapes"] else ""
    out.append(f"estimated cost: {_fmt_num(c['total'])} (compute {_fmt_num(c['compute'])} + copies "
               f"{_fmt_num(c['copy'])}; float32 CPU MAC = 1, nominal{note})")
    if real is not None and len(report["units_per_device"]) > 1:  # one device: nothing to realize
        out.append(f"realized: {real['note']}")
    legal = report.get("legalized", [])
    if legal:
        kinds = collections.Counter(r["change"] for r in legal)
        before = [r["cost_before"] for r in legal if r["cost_before"] is not None]
        after = [r["cost_after"] for r in legal if r["cost_after"] is not None]
        cost = f"; their estimated cost {_fmt_num(sum(before))} -> {_fmt_num(sum(after))}" if before and after else ""
        out.append(f"legalized {len(legal)} units{cost}:")
        out.extend(f"  {n} x {change}" for change, n in kinds.items())
        if units:
            out.extend(f"  {r['node']}: {r['change']}" + (f" (cost {_fmt_num(r['cost_before'])} -> "
                       f"{_fmt_num(r['cost_after'])})" if r["cost_before"] is not None else "") for r in legal)
    return "\n".join(out) + "\n"
