"""``qc compile --quant``: calibration data, held-aside samples and the accuracy check.

The CLI builds :class:`~qc.quant.schemes.QuantOptions` from its flags; this module loads the
calibration data (``--calib`` / ``--calib-text``), keeps a few samples aside for the report's
end-to-end SQNR, and measures it after the model is written.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

from qc.errors import QCError


def holdout_count(samples: int, requested: int | None) -> int:
    """Samples kept aside for the SQNR check: ``requested``, else 1/8 of the set (1..4), none under 8."""
    if requested is not None:
        if requested < 0 or requested >= samples:
            raise QCError(f"--holdout {requested} leaves no calibration samples (the data has {samples})",
                          hint=f"use --holdout between 0 and {samples - 1}")
        return requested
    return 0 if samples < 8 else min(4, max(1, samples // 8))


def split_holdout(data: Any, requested: int | None, module: Any) -> tuple[Any, list[dict[str, np.ndarray]]]:
    """(calibration samples, held-aside feeds shaped for ``module``): the last samples are held aside."""
    from .calib_data import CalibrationData, conform

    n_hold = holdout_count(len(data), requested)
    n_calib = len(data) - n_hold
    key = hashlib.sha256(f"{data.key}|first {n_calib}".encode()).hexdigest()[:16]
    calib = CalibrationData(n_calib, data.sample, key=key, source=data.source, where=data.where,
                            description=data.description)
    inputs = {v.name: v for v in module.graph.inputs}
    return calib, [conform(data.sample(i), inputs) for i in range(n_calib, len(data))]


def load_calibration(args: Any, module: Any, tokenizer_for) -> Any:
    """The calibration set the flags name (checked against the module's inputs), or None."""
    return load_inputs(args, module, tokenizer_for, npz=args.calib, text=args.calib_text, samples=args.samples,
                       flags=("--calib", "--calib-text"))


def load_inputs(args: Any, module: Any, tokenizer_for, *, npz: str | None, text: str | None, samples: int | None,
                flags: tuple[str, str]) -> Any:
    """Model inputs from an .npz (or a directory of them) or from text cut into token windows
    (``args.seq_len`` tokens, ``samples`` windows), checked against the module's inputs; None if
    neither is given. ``flags`` name the two options in the messages."""
    from . import calib_data

    if npz and text:
        raise QCError(f"give either {flags[0]} or {flags[1]}, not both")
    if npz:
        data = calib_data.from_npz(npz)
    elif text:
        from qc.data import text as textdata

        tokenizer, _ = tokenizer_for(args)
        data = calib_data.from_text(textdata.resolve_text(text), tokenizer, seq_len=args.seq_len,
                                    samples=samples, input_names=calib_data.text_input_names(module))
    else:
        return None
    calib_data.check_against(data, module)
    return data


def output_sqnr(output_path: str, input_path: str, feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """End-to-end SQNR (dB) of each output of the compiled model against the input model."""
    from qc import metrics

    values = metrics.compare_outputs(output_path, input_path, feeds)
    return {"samples": len(feeds), "sqnr_db": {k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}
