"""Calibration: model inputs to calibrate with (``data``) and streaming activation statistics
(``stats``). Below the passes: ``calibrate`` fills the statistics, the quantization passes read them."""
from .data import CalibrationData, check_against, from_arrays, from_npz, from_samples, from_text
from .stats import CalibrationStats, Histogram, TensorStats, choose_range, scale_zero_point

__all__ = [
    "CalibrationData", "CalibrationStats", "Histogram", "TensorStats", "check_against", "choose_range",
    "from_arrays", "from_npz", "from_samples", "from_text", "scale_zero_point",
]
