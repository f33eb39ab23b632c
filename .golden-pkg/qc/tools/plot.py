"""The outlier report as one self-contained HTML file with inline SVG (no plotting library).

One chart per activation that feeds MatMuls with constant weights: the per-feature max |x| seen
in calibration on a log scale, the columns ``split-outliers`` would keep in float16 marked in
red, and the threshold of LLM.int8() (6.0) as a dashed orange line.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass

import numpy as np

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 960, 150, 56, 22, 10


@dataclass
class Chart:
    activation: str
    ops: list[str]
    absmax: np.ndarray
    columns: list[int]
    reason: str


def _y(value: float, lo: float, hi: float) -> float:
    v = math.log10(max(value, 10 ** lo))
    return TOP + (HEIGHT - TOP - BOTTOM) * (1 - (v - lo) / (hi - lo))


def chart_svg(c: Chart, threshold: float) -> str:
    k = c.absmax.size
    top_value = float(c.absmax.max()) if k else 1.0
    hi = math.ceil(math.log10(max(top_value, threshold, 1e-3)) + 0.01)
    lo = min(math.floor(math.log10(max(float(np.median(c.absmax)), 1e-6))) - 1, hi - 2)
    plot_w = WIDTH - LEFT - 8
    x_of = (lambda j: LEFT + plot_w * (j + 0.5) / k) if k else (lambda j: LEFT)
    base = HEIGHT - BOTTOM
    bars = "".join(f"M{x_of(j):.1f} {base}V{_y(float(v), lo, hi):.1f}" for j, v in enumerate(c.absmax))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img">']
    for e in range(lo, hi + 1):
        y = _y(10.0 ** e, lo, hi)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                     f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">1e{e}</text>')
    parts.append(f'<path d="{bars}" stroke="#4a6fa5" stroke-width="{max(plot_w / max(k, 1), 0.6):.2f}"/>')
    ty = _y(threshold, lo, hi)
    parts.append(f'<line x1="{LEFT}" x2="{WIDTH - 8}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#e08214" '
                 f'stroke-width="1.5" stroke-dasharray="5 3"/><text x="{WIDTH - 10}" y="{ty - 3:.1f}" '
                 f'text-anchor="end" font-size="10" fill="#e08214">|x| = {threshold:g}</text>')
    for j in c.columns:
        parts.append(f'<circle cx="{x_of(j):.1f}" cy="{_y(float(c.absmax[j]), lo, hi):.1f}" r="3" fill="#d62728">'
                     f'<title>column {j}: max |x| {float(c.absmax[j]):.4g}</title></circle>')
    parts.append(f'<text x="{LEFT}" y="{HEIGHT - 6}" font-size="10">feature 0</text>'
                 f'<text x="{WIDTH - 8}" y="{HEIGHT - 6}" font-size="10" text-anchor="end">{k - 1}</text></svg>')
    return "".join(parts)


def outlier_html(title: str, charts: list[Chart], threshold: float, summary: str) -> str:
    rows = []
    for c in charts:
        head = (f"%{html.escape(c.activation)} &rarr; {html.escape(', '.join(c.ops))}: max |x| "
                f"{float(c.absmax.max()):.4g}; {len(c.columns)} of {c.absmax.size} columns in float16 "
                f"({html.escape(c.reason)})")
        rows.append(f"<section><h3>{head}</h3>{chart_svg(c, threshold)}</section>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
            "<style>body{font-family:sans-serif;margin:1.5em}h3{font-size:13px;font-weight:normal;margin:1em 0 0}"
            "</style></head><body><h1>" + html.escape(title) + "</h1><p>" + html.escape(summary) +
            "</p><p>Per feature (column) of each activation: the largest |x| seen in calibration (log scale). "
            "Red: the columns split-outliers keeps in float16. Dashed orange: the threshold.</p>"
            + "".join(rows) + "</body></html>\n")
