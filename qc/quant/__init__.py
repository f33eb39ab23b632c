"""Quantization: weight algorithms, schemes -> pipelines, the shared quantized-unit matcher.

Calibration data and statistics live in ``qc.calib`` (re-exported here for one release).

The passes that use these live in ``qc.passes`` (``calibrate``, ``quantize-weights``,
``insert-qdq``, ``fold-qdq``, ``lower-qop``, ``to-fp16``); ``qc.quant.schemes`` turns a
``--quant`` scheme and its options into a pipeline of them. See docs/quantization.md.
"""
from qc.calib.data import CalibrationData, check_against, from_arrays, from_npz, from_samples, from_text
from qc.calib.stats import CalibrationStats, Histogram, TensorStats, choose_range, scale_zero_point

from .schemes import SCHEMES, QuantOptions, pipeline
from .weight_algos import awq_scales, dequantize, gptq, quantize_rtn

__all__ = [
    "CalibrationData", "CalibrationStats", "Histogram", "QuantOptions", "SCHEMES", "TensorStats", "awq_scales",
    "check_against", "choose_range", "dequantize", "from_arrays", "from_npz", "from_samples", "from_text", "gptq",
    "pipeline", "quantize_rtn", "scale_zero_point",
]
