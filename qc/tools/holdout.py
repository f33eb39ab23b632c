"""The held-aside accuracy check of ``qc compile --quant``: end-to-end SQNR of the written model
against the input model, on at least ``MIN_SAMPLES`` inputs.

The calibration samples kept aside (``qc.calib.data.split_holdout``) come first: real inputs the
ranges were not fitted to. A few of them give an unstable figure (two or four samples can read
130 dB where sixteen others read 47), so when fewer than ``MIN_SAMPLES`` are held aside the rest
are generated like the real samples (``qc.tools.evaluate.like``, over the held-aside and
calibration samples: their shapes; float inputs normal with their mean and std; integer inputs,
token ids and masks, element by element from a real sample picked at random). An explicit
``holdout=0`` (``--holdout 0``: the user measures elsewhere, e.g. ``qc eval``) measures nothing. Calibration samples
themselves are never reused: the ranges were fitted to them, so they would flatter the model.
The report gives each group's SQNR apart, the count of each, and the spread (min / median of the
per-sample SQNR) over all of them. A model that onnxruntime cannot run on the generated inputs
(an input with a few valid values, say a sample rate) is measured on the held-aside ones alone,
and the report says why (``generated_failed``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

MIN_SAMPLES = 16


def output_sqnr(output_path: str, input_path: str, feeds: Sequence[dict[str, np.ndarray]], *,
                calibration: Sequence[dict[str, np.ndarray]] = (), min_samples: int = MIN_SAMPLES,
                seed: int = 0) -> dict[str, Any] | None:
    """SQNR (dB) of each output of the compiled model against the input model on the held-aside
    ``feeds`` plus, up to ``min_samples``, inputs generated like them and ``calibration``; None
    when there is nothing to generate from."""
    from qc.errors import QCError
    from qc.tools.evaluate import compare_groups, like

    held = [{k: np.asarray(a) for k, a in f.items()} for f in feeds]   # 0-d arrays, never numpy scalars
    real = held + [{k: np.asarray(a) for k, a in f.items()} for f in calibration]
    generated = like(real, min_samples - len(held), seed) if len(held) < min_samples else []
    if not held and not generated:
        return None
    failed = None
    try:
        groups = compare_groups(output_path, input_path, {"held_aside": held, "generated": generated})
    except QCError as e:
        if not generated:
            raise
        failed = str(e)            # a model that cannot take imitated inputs: the real ones alone
        generated = []
        if not held:
            return {"samples": 0, "held_aside": 0, "generated": 0, "generated_failed": failed, "sqnr_db": {}}
        groups = compare_groups(output_path, input_path, {"held_aside": held})

    def per_output(group: str, key: str) -> dict[str, Any]:
        return {k: _finite(v[key]) for k, v in groups[group].items()}

    out: dict[str, Any] = {"samples": len(held) + len(generated), "held_aside": len(held),
                           "generated": len(generated), "sqnr_db": per_output("all", "sqnr_db"),
                           "sqnr_db_min": per_output("all", "sqnr_db_min"),
                           "sqnr_db_median": per_output("all", "sqnr_db_median")}
    if generated:
        out["generated_from"] = len(real)
        out["generated_sqnr_db"] = per_output("generated", "sqnr_db")
    if held and generated:
        out["held_aside_sqnr_db"] = per_output("held_aside", "sqnr_db")
    if failed:
        out["generated_failed"] = failed
    return out


def _finite(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)
