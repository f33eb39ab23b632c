"""Accuracy-driven mixed precision (``qc compile --accuracy``) and the pipeline plumbing that
``qc analyze`` shares with it: quantize with a switchboard, rank layers, search how many of the
most sensitive ones must stay in float16 for a criterion to hold."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from qc.errors import QCError

from .analyze import Config, Runner
from .switchboard import SnapshotWeights, Switch, install

_CRITERION = re.compile(r"^\s*(cosine|sqnr|ppl)\s*(>=|<=)\s*([+-]?\d+(?:\.\d+)?)\s*(%?)\s*$")


@dataclass(frozen=True)
class Criterion:
    """``cosine>=0.995``, ``sqnr>=30`` (dB), ``ppl<=+2%`` (relative to the float model) or ``ppl<=25``."""
    metric: str
    op: str
    value: float
    relative: bool = False

    @classmethod
    def parse(cls, text: str) -> Criterion:
        m = _CRITERION.match(text)
        if not m:
            raise QCError(f"cannot read the accuracy criterion '{text}'",
                          hint="e.g. --accuracy 'cosine>=0.995', 'sqnr>=30' or 'ppl<=+2%'")
        metric, op, value, pct = m.group(1), m.group(2), float(m.group(3)), m.group(4) == "%"
        if pct and metric != "ppl":
            raise QCError(f"a relative (%) criterion is for perplexity, not {metric}", hint="e.g. 'ppl<=+2%'")
        if (metric == "ppl") != (op == "<="):
            raise QCError(f"'{text}': use {'<=' if metric == 'ppl' else '>='} with {metric}")
        return cls(metric, op, value, pct)

    def threshold(self, float_score: float) -> float:
        return float_score * (1 + self.value / 100) if self.relative else self.value

    def holds(self, score: float, float_score: float) -> bool:
        t = self.threshold(float_score)
        return score <= t if self.op == "<=" else score >= t

    def __str__(self) -> str:
        v = f"{self.value:+g}%" if self.relative else f"{self.value:g}"
        return f"{self.metric}{self.op}{v}"


def split_tail(spec: str) -> tuple[str, str]:
    """The pipeline up to the QDQ model (the switchboard needs Q/DQ nodes) and the rest
    (lower-qop and after)."""
    parts = _split_top(spec)
    for i, p in enumerate(parts):
        if p.startswith("lower-qop"):
            return ",".join(parts[:i]), ",".join(parts[i:])
    return spec, ""


def _split_top(spec: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in spec:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        out.append(cur)
    return out


def quantize_with_switches(pm, module) -> tuple[list[Switch], dict]:
    """Run ``pm`` (a quantization pipeline without lower-qop) keeping the float weights, then
    install the switches. Returns (switches, the float consts)."""
    snap = SnapshotWeights()
    pm.instruments.append(snap)
    pm.run(module)
    if not snap.consts:
        raise QCError("the accuracy tools need a scheme that quantizes weights (quantize-weights did not run)")
    switches = install(module, snap.consts)
    if not switches:
        raise QCError("no quantized MatMul / Gemm / Conv to analyze",
                      hint="check --quant-ops / --exclude, or that the model has such ops")
    return switches, snap.consts


def layer_inputs(module, switches: list[Switch], stats) -> dict[str, str]:
    """Each switched layer's input activation as named in the calibration statistics (the name
    before smooth-quant / split-outliers suffixes)."""
    tensors = getattr(stats, "tensors", {}) if stats is not None else {}
    out = {}
    ops = {op.name: op for op in module.graph.ops}
    for sw in switches:
        op = ops.get(sw.name)
        if op is None or not sw.wheres:
            continue
        src = sw.wheres[0].operands[2] if sw.act else None
        name = src.name if src is not None else None
        while name and name not in tensors and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in tensors:
            out[sw.name] = name
    return out


@dataclass
class SearchResult:
    criterion: Criterion
    float_score: float
    order: list[str]
    float_units: list[str]
    score: float
    met: bool
    evaluations: int
    tried: list[tuple[int, float]] = field(default_factory=list)


def search(runner: Runner, order: list[str], criterion: Criterion) -> SearchResult:
    """The fewest of the most sensitive units (``order``, most sensitive first) to keep in float so
    that ``criterion`` holds: all quantized first, then all float, then a search between, with
    ``runner.jobs`` points per round. Never ends with nothing: if even all float misses, the
    best configuration tried is returned with ``met=False``."""
    sw = runner.switches
    all_a = frozenset(s.name for s in sw if s.act)
    all_w = frozenset(s.name for s in sw if s.weight)
    start = runner.evaluations

    def config(k: int) -> Config:
        f = frozenset(order[:k])
        return Config(all_a - f, all_w - f)

    if criterion.metric == "ppl":
        float_score = runner.score([Config(frozenset(), frozenset())], ["the float model"])[0]
    else:  # against the float model itself: identical outputs
        float_score = float("inf") if criterion.metric == "sqnr" else 1.0
    tried: dict[int, float] = {}

    def evaluate(ks: list[int]) -> None:
        ks = [k for k in dict.fromkeys(ks) if k not in tried]
        labels = [f"the {k} most sensitive layers in float16" for k in ks]
        for k, s in zip(ks, runner.score([config(k) for k in ks], labels)):
            tried[k] = s

    n = len(order)
    evaluate([0, n] if runner.jobs > 1 or runner.ray_address or runner.executor is not None else [0])
    ok = lambda k: criterion.holds(tried[k], float_score)  # noqa: E731
    if not ok(0):
        evaluate([n])
        if ok(n):
            lo, hi = 0, n
            while hi - lo > 1:
                width = max(1, runner.jobs)
                points = sorted({lo + (hi - lo) * (i + 1) // (width + 1) for i in range(width)} - {lo, hi})
                evaluate(points)
                for k in points:
                    if ok(k):
                        hi = k
                        break
                    lo = k
        else:
            hi = None
    else:
        hi = 0
    if hi is not None:
        k, met = hi, True
    else:  # even all float misses (the float16 / switch rounding, or a wrong criterion): the best tried
        better = (lambda a, b: a < b) if criterion.op == "<=" else (lambda a, b: a > b)
        k = min(tried)
        for kk in sorted(tried):
            if better(tried[kk], tried[k]):
                k = kk
        met = False
    return SearchResult(criterion, float_score, order, order[:k], tried[k], met, runner.evaluations - start,
                        sorted(tried.items()))
