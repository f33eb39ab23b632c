"""Frontends: ONNX -> qc IR."""
from .onnx import import_onnx, load_model_proto

__all__ = ["import_onnx", "load_model_proto"]
