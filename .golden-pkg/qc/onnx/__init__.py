"""ONNX interop: ModelProto <-> qc IR in memory, type conversion, the shape-inference merge and
the onnxruntime evaluator. It sits just above the IR: passes and backends use it; the frontend
(``qc.frontend``) and the ONNX backend (``qc.backends.onnx``) are thin file wrappers over it.
"""
from .evaluator import module_session, ort_session, trim_heap
from .reader import convert_type, import_model, with_inferred_shapes
from .writer import export_onnx, export_onnx_sharing_weights, type_proto, value_info

__all__ = [
    "convert_type", "export_onnx", "export_onnx_sharing_weights", "import_model", "module_session",
    "ort_session", "trim_heap", "type_proto", "value_info", "with_inferred_shapes",
]
