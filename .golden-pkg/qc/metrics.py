"""Deprecated path: the metrics moved to ``qc.tools.metrics`` (this path goes in the next release)."""
import warnings

from qc.tools import metrics as _metrics

globals().update({k: v for k, v in vars(_metrics).items() if not k.startswith("__")})
warnings.warn("qc.metrics is deprecated; import from qc.tools.metrics", DeprecationWarning, stacklevel=2)
