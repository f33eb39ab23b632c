"""The ONNX backend: qc IR -> ModelProto / .onnx file (external data for large models)."""
from .writer import export_onnx, save_onnx

__all__ = ["export_onnx", "save_onnx"]
