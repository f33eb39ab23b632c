"""Quantized node units -> integer kernel calls (qc_kernels.h)."""
from __future__ import annotations

from qc.ir import Op


def match_unit(lw, op: Op) -> bool:
    """Lower the quantized unit rooted at *op* and return True, or return False to lower op alone."""
    return False
