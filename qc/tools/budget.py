"""Memory budgets: does a C compile fit the target's RAM and flash (``[memory]`` in its TOML)?

The arena (scratch RAM the caller passes to ``model_run``) is checked against ``memory.ram``, the
weight blob (constant data, flash) against ``memory.flash``: the typical part the target stands
for; the message also gives the range of common parts. Targets with ``enforce = false``
(application processors with RAM in GB) are never over budget. ``qc.compile`` calls
:func:`check` on the prepared module; a failure is a warning, or an error with ``fallback="error"``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qc.errors import QCError
from qc.targets import Target


def fmt_bytes(n: int) -> str:
    """``196608 -> '192 KB'``, ``4194304 -> '4 MB'``, ``1536 -> '1.5 KB'`` (binary units)."""
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


@dataclass
class BudgetReport:
    """The arena and weights of a compile against a target's memory; ``problems`` is empty when
    it fits (or the target does not enforce its figures)."""
    target: str
    arena_bytes: int
    weight_bytes: int
    ram: int | None
    flash: int | None
    largest: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)
    shrink: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.problems

    def headline(self) -> str:
        return f"the model does not fit {self.target}: " + "; ".join(self.problems)

    def buffers(self) -> str:
        return ", ".join(f"'{b['name']}' {fmt_bytes(b['bytes'])} ({b['dtype']}{b['shape']}, from {b['node']})"
                         for b in self.largest)

    def message(self) -> str:
        """What does not fit, then (indented lines) the largest buffers and what would shrink them."""
        bufs = self.buffers()
        return self.headline() + (f"\n  largest arena buffers: {bufs}" if bufs else "") \
            + (f"\n  to shrink it: {'; '.join(self.shrink)}" if self.shrink else "")

    def error(self, where: str | None) -> QCError:
        """The one-line error of ``--fallback error``."""
        bufs = self.buffers()
        return QCError(self.headline() + (f"; largest arena buffers: {bufs}" if bufs else ""), where=where,
                       hint="to shrink it: " + "; ".join(self.shrink) + " (or --fallback warn to write it anyway)")

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "arena_bytes": self.arena_bytes, "weight_bytes": self.weight_bytes,
                "ram": self.ram, "flash": self.flash, "fits": self.fits, "problems": self.problems,
                "largest_buffers": self.largest, "shrink": self.shrink}


def check(target: Target, plan: Mapping[str, Any], *, quantized: bool, shapes: Mapping[str, Sequence[int]] | None
          = None) -> BudgetReport:
    """``plan`` (``qc.backends.c.memory_plan``: arena_bytes, weight_bytes, largest, and for the
    C decode runtime kv_cache_bytes, counted as RAM with the arena) against
    ``target.memory``. ``quantized``: the compile ran a quantization scheme (else int8 is the
    first thing to suggest); ``shapes``: the static input shapes given (``--shape``)."""
    mem = target.memory
    arena, weights = int(plan["arena_bytes"]) + int(plan.get("kv_cache_bytes", 0)), int(plan["weight_bytes"])
    report = BudgetReport(target.name, arena, weights, mem.ram if mem else None, mem.flash if mem else None,
                          list(plan.get("largest", ())))
    if mem is None or not mem.enforce:
        return report
    if arena > mem.ram:
        report.problems.append(_over("arena", arena, "RAM", mem.ram, mem.ram_range))
    if weights > mem.flash:
        report.problems.append(_over("weights", weights, "flash", mem.flash, mem.flash_range))
    if report.problems:
        report.shrink = _suggestions(report, quantized, shapes)
    return report


def _over(what: str, need: int, kind: str, have: int, rng: tuple[int, int]) -> str:
    text = (f"{what} {fmt_bytes(need)} ({need} bytes) > {kind} {fmt_bytes(have)} of the typical part "
            f"(parts: {fmt_bytes(rng[0])} to {fmt_bytes(rng[1])})")
    return text + (", more than any of them" if need > rng[1] else "")


def _suggestions(report: BudgetReport, quantized: bool, shapes: Mapping[str, Sequence[int]] | None) -> list[str]:
    out = []
    arena_over = report.ram is not None and report.arena_bytes > report.ram
    flash_over = report.flash is not None and report.weight_bytes > report.flash
    float_acts = any(b["dtype"] in ("float32", "f32", "float16", "f16") for b in report.largest)
    if arena_over:
        given = ",".join(f"{k}={'x'.join(map(str, v))}" for k, v in (shapes or {}).items())
        out.append("smaller inputs (the arena grows with them: " + (f"--shape {given} now; " if given else "")
                   + "fewer pixels, a shorter sequence, batch 1)")
        if not quantized:
            out.append("int8 activations (--quant w8a8: a quarter of float32's bytes)")
        elif float_acts:
            out.append("int8 activations for the largest buffers, which are still float (--quant-ops "
                       "quantizes more op types)")
    if flash_over:
        out.append("int8 weights (--quant w8a8 or w8)" if not quantized else
                   "4-bit weights (--quant w4) where the target has kernels for them, or fewer layers")
    out.append("--emit onnx for a device with more memory, or a target with more (cortex-m55: "
               "2 MB RAM, 4 MB flash; Cortex-A targets: GB)" if report.target != "cortex-m55" else
               "--emit onnx for a device with more memory, or a Cortex-A target (RAM in GB)")
    return out


def estimate(target: Target, module: Any, *, assumed_dims: bool = False) -> dict[str, Any] | None:
    """For ``qc check``: the module's weights (and, when every shape is static and the C backend
    lowers it, the arena of its C code) against the target's memory; None without ``[memory]``.
    Returns the :meth:`BudgetReport.as_dict` fields plus ``lines`` to print; ``arena_bytes`` is
    None when the arena is not known yet (symbolic shapes, or ``assumed_dims``: dynamic input
    dimensions that ``qc check`` counted as 1; ``--shape`` gives their sizes)."""
    mem = target.memory
    if mem is None:
        return None
    plan: dict[str, Any] | None = None
    why = "symbolic input shapes; --shape NAME=AxB gives their sizes" if mem.enforce else "not checked here"
    if mem.enforce and target.backend == "c" and not assumed_dims:
        from qc.backends.c import memory_plan

        try:
            plan = memory_plan(module, target)
        except QCError as e:
            if "static shape" not in e.bare_message:
                why = f"the C backend cannot lower it: {e.bare_message}"
    if plan is None:
        weights = sum(int(getattr(v.const, "nbytes", 0)) for v in module.graph.consts.values())
        plan = {"arena_bytes": None, "weight_bytes": weights, "largest": []}
    report = check(target, {**plan, "arena_bytes": plan["arena_bytes"] or 0}, quantized=False)
    out = report.as_dict()
    out["arena_bytes"] = plan["arena_bytes"]
    head = (f"memory: {target.name} parts have RAM {fmt_bytes(mem.ram_range[0])} to {fmt_bytes(mem.ram_range[1])} "
            f"and flash {fmt_bytes(mem.flash_range[0])} to {fmt_bytes(mem.flash_range[1])} (typical: "
            f"{fmt_bytes(mem.ram)} / {fmt_bytes(mem.flash)})" + ("" if mem.enforce else ", not checked"))
    arena = (f"arena {fmt_bytes(plan['arena_bytes'])}" if plan["arena_bytes"] is not None
             else f"arena not known ({why})")
    lines = [head, f"  weights {fmt_bytes(plan['weight_bytes'])}, {arena}"]
    lines += [f"  warning: {p}" for p in report.problems]
    if report.problems and report.largest:
        lines.append(f"  largest arena buffers: {report.buffers()}")
    if report.shrink:
        lines.append(f"  to shrink it: {'; '.join(report.shrink)}")
    out["lines"] = lines
    return out
