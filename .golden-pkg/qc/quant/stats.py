"""Deprecated path: moved to ``qc.calib.stats`` (this path goes in the next release)."""
import sys
import warnings

from qc.calib import stats as _moved

warnings.warn("qc.quant.stats is deprecated; import from qc.calib.stats", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
