"""Deprecated: onnxruntime sessions moved to ``qc.onnx.evaluator`` (this path goes in the next release)."""
import warnings

from qc.onnx.evaluator import module_session, ort_session, trim_heap

warnings.warn("qc.runtime is deprecated; import from qc.onnx.evaluator", DeprecationWarning, stacklevel=2)

__all__ = ["module_session", "ort_session", "trim_heap"]
