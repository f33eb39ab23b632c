"""The ``qc analyze`` report: a ranked table on the terminal and one self-contained HTML page
(inline SVG): sensitivity bars, the error split, and per activation its range histogram and
per-feature max |x| with the outlier features marked."""
from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

from .analyze import Analysis
from .plot import Chart, chart_svg

OUTLIER = 6.0  # LLM.int8()'s outlier threshold on |x|


def _fmt(metric: str, v: float | None) -> str:
    if v is None:
        return "-"
    if metric == "sqnr":
        return "inf" if math.isinf(v) else f"{v:.2f} dB"
    return f"{v:.4f}" if metric == "cosine" else f"{v:.3f}"


def weight_ranges(float_consts: dict, layer_weights: dict[str, str]) -> dict[str, dict[str, float]]:
    """Per layer: min / max of its float weight and the spread of its per-output-channel max |w|."""
    out = {}
    for layer, name in layer_weights.items():
        t = float_consts.get(name)
        if t is None:
            continue
        w = np.asarray(t.numpy(), np.float32)
        per_channel = np.max(np.abs(w.reshape(w.shape[0], -1)), axis=1) if w.ndim > 1 else np.abs(w)
        lo = float(np.min(per_channel[per_channel > 0])) if np.any(per_channel > 0) else 0.0
        out[layer] = {"min": float(w.min()), "max": float(w.max()),
                      "channel_spread": float(per_channel.max() / lo) if lo else math.inf}
    return out


def activation_ranges(stats: Any, layer_inputs: dict[str, str]) -> dict[str, dict[str, float]]:
    """Per layer: min / max of its input activation and how many features reach |x| >= 6."""
    out = {}
    tensors = getattr(stats, "tensors", {}) if stats is not None else {}
    for layer, name in layer_inputs.items():
        s = tensors.get(name)
        if s is None:
            continue
        row = {"min": float(s.min), "max": float(s.max)}
        if s.channel_absmax is not None:
            row["outlier_features"] = int(np.sum(s.channel_absmax >= OUTLIER))
            row["features"] = int(s.channel_absmax.size)
        out[layer] = row
    return out


def format_analysis(a: Analysis, *, top: int, acts: dict, weights: dict) -> str:
    m = a.metric
    lines = [f"metric: {m} of output '{a.output}' against the float model, {a.samples} samples "
             f"({a.evaluations} evaluations, {a.seconds:.1f} s)",
             f"  all quantized        {_fmt(m, a.all_quantized)}",
             f"  weights only         {_fmt(m, a.weights_only)}",
             f"  activations only     {_fmt(m, a.activations_only)}"]
    if m == "sqnr" and all(math.isfinite(x) for x in (a.all_quantized, a.weights_only, a.activations_only)):
        noise_w, noise_a = 10 ** (-a.weights_only / 10), 10 ** (-a.activations_only / 10)
        share = noise_a / (noise_a + noise_w) if noise_a + noise_w > 0 else 0.0
        lines.append(f"  error split: activations {100 * share:.0f}%, weights {100 * (1 - share):.0f}% "
                     "(noise power, each part quantized alone)")
    ranked = a.ranking()[:top]
    width = max([len(r.name) for r in ranked] + [5])
    exact = any(r.all_but is not None for r in ranked)
    head = f"{'rank':>4}  {'layer':<{width}}  {m + ' alone':>14}"
    if exact:
        head += f"  {'weights':>11}  {'activations':>11}  {'all but it':>11}"
    head += f"  {'act range':>20}  {'|x|>=6':>8}  {'w spread':>8}"
    lines += [f"most sensitive {len(ranked)} of {len(a.layers)} layers (quantized alone):", head]
    for i, r in enumerate(ranked, 1):
        row = f"{i:>4}  {r.name:<{width}}  {_fmt(m, r.alone):>14}"
        if exact:
            row += f"  {_fmt(m, r.alone_weight):>11}  {_fmt(m, r.alone_act):>11}  {_fmt(m, r.all_but):>11}"
        ar, wr = acts.get(r.name, {}), weights.get(r.name, {})
        rng = f"[{ar['min']:.3g}, {ar['max']:.3g}]" if ar else "-"
        outl = f"{ar['outlier_features']}/{ar['features']}" if "features" in ar else "-"
        spread = f"{wr['channel_spread']:.1f}x" if wr else "-"
        row += f"  {rng:>20}  {outl:>8}  {spread:>8}"
        lines.append(row)
    return "\n".join(lines) + "\n"


def _bars_svg(a: Analysis, width: int = 960, top: int | None = None) -> str:
    ranked = a.ranking()[:top]
    bar_h, left = 14, 330
    h = bar_h * len(ranked) + 30
    vals = [r.alone for r in ranked]
    if a.metric == "sqnr":   # bar = the noise power the layer adds, relative to the signal
        lengths = [10 ** (-v / 10) if math.isfinite(v) else 0.0 for v in vals]
    elif a.metric == "cosine":
        lengths = [1.0 - v for v in vals]
    else:
        lengths = [v - a.float_score for v in vals]
    scale = (width - left - 90) / max(max(lengths), 1e-12)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img">']
    for i, (r, length) in enumerate(zip(ranked, lengths)):
        y = 20 + i * bar_h
        parts.append(f'<text x="{left - 6}" y="{y + 10}" text-anchor="end" font-size="10">'
                     f'{html.escape(r.name[-55:])}</text>'
                     f'<rect x="{left}" y="{y}" width="{max(length * scale, 0.5):.1f}" height="{bar_h - 3}" '
                     'fill="#c0392b">'
                     f'<title>{html.escape(r.name)}: {_fmt(a.metric, r.alone)}</title></rect>'
                     f'<text x="{left + length * scale + 4:.1f}" y="{y + 10}" font-size="10">'
                     f'{_fmt(a.metric, r.alone)}</text>')
    measure = "noise power relative to the signal" if a.metric == "sqnr" else html.escape(a.metric)
    parts.append(f'<text x="{left}" y="12" font-size="11">error when only this layer is quantized '
                 f'({measure}; longer = more sensitive)</text></svg>')
    return "".join(parts)


def _hist_svg(stats: Any, width: int = 460, height: int = 120) -> str:
    hist = getattr(stats, "hist", None)
    if hist is None or hist.total == 0:
        return ""
    counts, edges = hist.counts.astype(np.float64), hist.edges()
    nz = np.nonzero(counts)[0]
    lo_i, hi_i = int(nz[0]), int(nz[-1]) + 1
    counts, edges = counts[lo_i:hi_i], edges[lo_i:hi_i + 1]
    groups = max(1, len(counts) // 200)
    if groups > 1:
        pad = (-len(counts)) % groups
        counts = np.concatenate([counts, np.zeros(pad)]).reshape(-1, groups).sum(axis=1)
        edges = edges[::groups]
        if len(edges) < len(counts) + 1:
            edges = np.append(edges, hist.edges()[hi_i])
    logc = np.log10(counts + 1)
    top = max(float(logc.max()), 1e-9)
    n = len(counts)
    bw = (width - 20) / n
    rects = "".join(f'<rect x="{10 + i * bw:.1f}" y="{height - 20 - (height - 30) * c / top:.1f}" '
                    f'width="{max(bw, 0.5):.1f}" height="{(height - 30) * c / top:.1f}" fill="#4a6fa5"/>'
                    for i, c in enumerate(logc) if c > 0)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">{rects}'
            f'<text x="10" y="{height - 5}" font-size="10">{edges[0]:.3g}</text>'
            f'<text x="{width - 10}" y="{height - 5}" font-size="10" text-anchor="end">{edges[-1]:.3g}</text>'
            f'<text x="10" y="10" font-size="10">values (log count)</text></svg>')


def analysis_html(title: str, a: Analysis, text: str, stats: Any, layer_inputs: dict[str, str]) -> str:
    sections = []
    tensors = getattr(stats, "tensors", {}) if stats is not None else {}
    seen = set()
    for r in a.ranking():
        name = layer_inputs.get(r.name)
        s = tensors.get(name) if name else None
        if s is None or name in seen:
            continue
        seen.add(name)
        chart = ""
        if s.channel_absmax is not None:
            cols = [int(j) for j in np.nonzero(s.channel_absmax >= OUTLIER)[0]]
            chart = chart_svg(Chart(name, [r.name], s.channel_absmax, cols, ""), OUTLIER)
        sections.append(f"<section><h3>%{html.escape(name)} &rarr; {html.escape(r.name)} "
                        f"(range [{s.min:.4g}, {s.max:.4g}])</h3>{_hist_svg(s)}{chart}</section>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
            "<style>body{font-family:sans-serif;margin:1.5em}h3{font-size:13px;font-weight:normal;margin:1em 0 0}"
            "pre{font-size:12px}</style></head><body><h1>" + html.escape(title) + "</h1>"
            "<pre>" + html.escape(text) + "</pre><h2>Sensitivity</h2>" + _bars_svg(a) +
            "<h2>Activations, most sensitive layer first</h2><p>Left: histogram of the values seen in "
            "calibration (log counts). Right/below: max |x| per feature (log scale), features with |x| &ge; 6 "
            "in red (LLM.int8() outliers).</p>" + "".join(sections) + "</body></html>\n")
