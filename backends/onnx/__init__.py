"""The ONNX backend: qc IR -> .onnx file, atomically, with external data for large models.

The in-memory conversion (IR -> ModelProto) is the interop layer's, ``qc.onnx.writer``; this
module adds only the files: the weights' data file and the streamed initializers, and writes
the lowest IR version and opsets the model needs, within the target's runtime (``versions``).
"""
from __future__ import annotations

import contextlib
import os

from onnx import ModelProto, TensorProto

from qc.fileio import atomic_write
from qc.ir.core import Module
from qc.ir.tensor import SparseTensor, Tensor
from qc.onnx.writer import PROTOBUF_LIMIT, ModelWriter, all_consts, const_bytes, export_onnx
from qc.targets import Target

from . import versions

__all__ = ["export_onnx", "save_onnx"]


def save_onnx(module: Module, path: str, *, external: bool | None = None,
              external_min_bytes: int = 1024, target: Target | None = None) -> None:
    """Write ``module`` to ``path`` atomically.

    ``external=None`` puts weights in ``<path>.data`` only when the model would exceed the
    2 GB protobuf limit; ``True`` always does (for tensors of ``external_min_bytes`` or more).
    The file declares the lowest IR version and opsets the model needs; a QCError (nothing
    written) when that is more than ``target``'s runtime loads (its ``[onnx]`` table).
    """
    path = os.fspath(path)
    total = sum(const_bytes(v) for v in all_consts(module))
    if external is None:
        external = total > PROTOBUF_LIMIT - (64 << 20)
    data_name = os.path.basename(path) + ".data"
    with contextlib.ExitStack() as stack:  # the data file lands first, then the model that points into it
        sink = None
        if external:
            data_path = os.path.join(os.path.dirname(os.path.abspath(path)), data_name)
            data_file = stack.enter_context(atomic_write(data_path))
            sink = _ExternalSink(data_file, data_name, external_min_bytes)
        writer = ModelWriter(external=sink, defer_initializers=not external)
        proto = writer.model(module)
        versions.fit(proto, target, extra_dtypes=(int(v.const.dtype) for v in writer.deferred
                                                  if not isinstance(v.const, SparseTensor)))
        blob = proto.SerializeToString(deterministic=True)
    with atomic_write(path) as f:
        f.write(blob)
        # The main graph's initializers follow one at a time, each as a ModelProto holding only
        # that initializer: a protobuf parser merges repeated messages (onnx.load and onnxruntime
        # see one graph, initializers in order), and no copy of all weights is ever held at once.
        for v in writer.deferred:
            chunk = ModelProto()
            if isinstance(v.const, SparseTensor):
                chunk.graph.sparse_initializer.append(writer.sparse(v.const, v.name))
            else:
                chunk.graph.initializer.append(writer.tensor(v.const, v.name))
            f.write(chunk.SerializeToString(deterministic=True))


class _ExternalSink:
    """Appends tensor bytes to one data file, 64-byte aligned, and returns the reference."""

    ALIGN = 64

    def __init__(self, file, location: str, min_bytes: int):
        self.file, self.location, self.min_bytes = file, location, min_bytes
        self.offset = 0

    def place(self, tensor: Tensor, name: str) -> TensorProto | None:
        if tensor.dtype.bits == 0 or tensor.nbytes < self.min_bytes:
            return None
        pad = -self.offset % self.ALIGN
        if pad:
            self.file.write(b"\0" * pad)
            self.offset += pad
        raw = tensor.raw_bytes()
        self.file.write(raw)
        p = TensorProto(name=name, data_type=int(tensor.dtype), dims=list(tensor.shape),
                        data_location=TensorProto.EXTERNAL)
        for k, v in (("location", self.location), ("offset", str(self.offset)), ("length", str(len(raw)))):
            e = p.external_data.add()
            e.key, e.value = k, v
        self.offset += len(raw)
        return p


