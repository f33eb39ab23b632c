"""onnxruntime sessions as qc uses them: CPU provider, graph optimizations off unless asked."""
from __future__ import annotations

from typing import Any

from onnx import ModelProto


def ort_session(model: ModelProto | bytes | str, *, optimize: bool = False, log_level: int = 3) -> Any:
    """An InferenceSession on the CPU provider; ``optimize=False`` disables every graph optimization
    so that what runs is exactly the model given (the reference for bit-identity checks)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = log_level
    source = model.SerializeToString() if isinstance(model, ModelProto) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
