"""The held-aside accuracy check of ``qc compile --quant``: end-to-end SQNR of the written model
against the input model on the calibration samples kept aside (``qc.calib.data.split_holdout``)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def output_sqnr(output_path: str, input_path: str, feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """End-to-end SQNR (dB) of each output of the compiled model against the input model."""
    from qc.tools import metrics

    values = metrics.compare_outputs(output_path, input_path, feeds)
    return {"samples": len(feeds), "sqnr_db": {k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}
