"""The record of what ``split-outliers`` kept in float16, per activation."""
from __future__ import annotations

from dataclasses import dataclass


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
