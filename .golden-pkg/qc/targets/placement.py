"""Where each node unit of a module runs on a target: what ``check-kernels`` finds and
``legalize`` changes, read by the placement report and the C backend's kernel choice."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Placement:
    """``check-kernels``' result for one module and target.

    ``units``: one dict per node unit (node, op, dtypes, granularity, from, to, reason, kernel,
    cost, macs, status); ``fallbacks``: the units that leave the preferred device or have no
    kernel there; ``traffic``: copies between devices and device transitions; ``cost``: the
    nominal estimate (compute, copy bytes, copy, total, units without shapes); ``ops_per_device``:
    how many ops of the main graph each device runs."""

    units: list[dict[str, Any]] = field(default_factory=list)
    fallbacks: list[dict[str, Any]] = field(default_factory=list)
    traffic: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    ops_per_device: dict[str, int] = field(default_factory=dict)
