"""onnxruntime sessions as qc uses them: CPU provider, graph optimizations off unless asked."""
from __future__ import annotations

import os
from typing import Any, Sequence

from onnx import ModelProto


def ort_session(model: ModelProto | bytes | str | os.PathLike | Any, *, optimize: bool = False,
                log_level: int = 3, threads: int | None = None,
                disabled_optimizers: Sequence[str] | None = None) -> Any:
    """An InferenceSession on the CPU provider for a ModelProto, serialized bytes, a path, or a
    session (returned as is). ``optimize=False`` disables every graph optimization, so that what
    runs is exactly the model given (the reference for bit-identity checks); with
    ``optimize=True``, ``disabled_optimizers`` names onnxruntime rewrites to skip."""
    import onnxruntime as ort

    if isinstance(model, ort.InferenceSession):
        return model
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = log_level
    if threads:
        options.intra_op_num_threads = threads
    if isinstance(model, ModelProto):
        source: Any = model.SerializeToString()
    elif isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
    elif isinstance(model, bytes):
        source = model
    else:
        raise TypeError(f"expected a model path, ModelProto, bytes or InferenceSession, got {type(model).__name__}")
    extra = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers and optimize else {}
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"], **extra)
