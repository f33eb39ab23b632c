"""onnxruntime sessions as qc uses them: CPU provider, graph optimizations off unless asked."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

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
    options = _options(optimize, log_level, threads)
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


def _options(optimize: bool, log_level: int, threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = log_level
    if threads:
        options.intra_op_num_threads = threads
    return options


class PortableModel:
    """A module as onnxruntime needs it, detached from this process and its files: the serialized
    ONNX graph without its large tensors (``proto``) and those tensors as numpy arrays (``arrays``,
    by initializer name). Pickles (and travels through Ray's object store, the arrays without a
    copy); :func:`portable_session` makes the same session of it anywhere."""

    __slots__ = ("proto", "arrays")

    def __init__(self, proto: bytes, arrays: dict[str, Any]):
        self.proto, self.arrays = proto, arrays

    def __getstate__(self) -> tuple[bytes, dict[str, Any]]:
        return self.proto, self.arrays

    def __setstate__(self, state: tuple[bytes, dict[str, Any]]) -> None:
        self.proto, self.arrays = state

    @property
    def nbytes(self) -> int:
        return len(self.proto) + sum(int(a.nbytes) for a in self.arrays.values())


def portable_model(module: Any, *, extra_outputs: Sequence[Any] = (),
                   subgraph_outputs: Mapping[str, int] | None = None) -> PortableModel:
    """The module (with ``extra_outputs``, IR values, as graph outputs) as a :class:`PortableModel`;
    the arrays are the IR's own buffers where it has them (no copy). ``subgraph_outputs`` (name ->
    ONNX elem type) names values inside If / Loop bodies to thread out as outputs too (see
    :mod:`qc.onnx.expose` for their output names and stacking)."""
    from qc.onnx.expose import expose_subgraph_values
    from qc.onnx.writer import export_onnx_sharing_weights, value_info

    proto, arrays = export_onnx_sharing_weights(module)
    existing = {o.name for o in proto.graph.output}
    for v in extra_outputs:
        if v.name not in existing:
            existing.add(v.name)
            proto.graph.output.append(value_info(v))
    if subgraph_outputs:
        expose_subgraph_values(proto, dict(subgraph_outputs))
    return PortableModel(proto.SerializeToString(), {name: arrays[name] for name in arrays})


def portable_session(model: PortableModel, *, optimize: bool = False, log_level: int = 3,
                     threads: int | None = None, prepack: bool = True) -> Any:
    """The onnxruntime session of a :class:`PortableModel` (what :func:`module_session` makes)."""
    import onnxruntime as ort

    options = _options(optimize, log_level, threads)
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in model.arrays.values()]
    if model.arrays:
        options.add_external_initializers(list(model.arrays), values)
    session = ort.InferenceSession(model.proto, options, providers=["CPUExecutionProvider"])
    session._qc_keep_alive = (model.arrays, values)  # onnxruntime reads these buffers for the session's lifetime
    return session


def module_session(module: Any, *, extra_outputs: Sequence[Any] = (), optimize: bool = False,
                   log_level: int = 3, threads: int | None = None, prepack: bool = True,
                   subgraph_outputs: Mapping[str, int] | None = None) -> Any:
    """An onnxruntime CPU session of a qc Module that reads the IR's weight buffers in place
    (``add_external_initializers``): no ModelProto or serialized copy of the weights is made,
    and models over protobuf's 2 GB limit need no temporary files. ``extra_outputs`` are IR
    values to fetch besides the graph outputs. ``prepack=False`` stops onnxruntime from keeping
    a repacked copy of every MatMul weight (less memory, somewhat slower runs). The same session
    as :func:`portable_session` of :func:`portable_model` (which is how it is made)."""
    return portable_session(portable_model(module, extra_outputs=extra_outputs, subgraph_outputs=subgraph_outputs),
                            optimize=optimize,
                            log_level=log_level, threads=threads, prepack=prepack)


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``), e.g. after a large
    onnxruntime session is gone, so that later phases do not stack on its high-water mark."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass
