"""Deprecated path: moved to ``qc.calib.data`` (this path goes in the next release)."""
import sys
import warnings

from qc.calib import data as _moved

warnings.warn("qc.quant.calib_data is deprecated; import from qc.calib.data", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
