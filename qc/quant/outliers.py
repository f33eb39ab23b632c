"""The record of what ``split-outliers`` kept in float16, per activation; how coarse per-row
int8 quantization leaves a calibrated activation's ordinary values (:func:`row_levels`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qc.ir.core import Module, Op


@dataclass
class OutlierSplit:
    """What ``split-outliers`` decided for one activation (the compile report lists these)."""

    activation: str
    ops: list[str]
    columns: list[int]
    features: int
    mode: str
    reason: str
    outlier_absmax: float
    rest_absmax: float
    dtype: str = "float16"      # the outlier part's float type: float16 | float32


MIN_ROW_LEVELS = 4.0
"""int8 steps below which a row's ordinary values are too coarse when a runtime quantizes a
MatMul's A per row (one scale for the whole K: an outlier feature sets every value's step)"""


def row_levels(stats: Any | None) -> np.ndarray | None:
    """Per calibration row (its row sample), or from the per-feature ranges when there is no
    sample: the rms of the row without its largest 1% of |x| in int8 steps of the row's own
    scale (max |x| / 127): how finely the ordinary values are resolved."""
    sample = getattr(stats, "row_sample", None)
    if sample is not None and len(sample):
        rows = np.abs(np.asarray(sample, np.float64).reshape(-1, np.shape(sample)[-1]))
    else:
        absmax = getattr(stats, "channel_absmax", None)
        if absmax is None or absmax.size < 8:
            return None
        rows = np.abs(np.asarray(absmax, np.float64))[None, :]   # all features at their peak in one row
    rows = np.sort(rows, axis=1)
    peak = rows[:, -1]
    rest = rows[:, :rows.shape[1] - max(1, rows.shape[1] // 100)]
    keep = peak > 0
    if not keep.any():
        return None
    return 127.0 * np.sqrt(np.mean(rest[keep] ** 2, axis=1)) / peak[keep]


def int8_row_ops(module: Module, target: Any | None) -> list[Op]:
    """The MatMulNBits ops whose A the target's runtime quantizes to int8 per row (accuracy_level 4;
    the target's ``onnx.nbits_int8_rows``: all of them, or those without zero points)."""
    mode = getattr(getattr(target, "onnx", None), "nbits_int8_rows", "none")
    if mode == "none":
        return []
    return [op for op in module.graph
            if op.op_type == "MatMulNBits" and op.domain == "com.microsoft" and op.attr("accuracy_level", 0) == 4
            and op.operands[0] is not None
            and (mode == "all" or len(op.operands) < 4 or op.operands[3] is None)]
