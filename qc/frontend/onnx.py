"""The ONNX frontend: an .onnx file -> qc IR.

It reads the file (refusing what is not an ONNX model, with one clear message) and hands the
``ModelProto`` to the interop layer, ``qc.onnx.reader``, which does the conversion.
"""
from __future__ import annotations

import os

from google.protobuf.message import DecodeError
from onnx import ModelProto

from qc.errors import QCError
from qc.ir.core import Module
from qc.onnx.reader import PROTOBUF_LIMIT, import_model

__all__ = ["import_onnx", "load_model_proto"]


def load_model_proto(path: str) -> ModelProto:
    """Read a ModelProto from disk without loading external data; bad files raise QCError."""
    if not os.path.exists(path):
        raise QCError("no such file", where=path)
    if os.path.isdir(path):
        raise QCError("is a directory, expected an .onnx file", where=path)
    size = os.path.getsize(path)
    if size == 0:
        raise QCError("the file is empty", where=path, hint="pass an .onnx file (or a .qir text IR file)")
    if size > PROTOBUF_LIMIT:
        raise QCError(f"the file is {size} bytes, over protobuf's 2 GB limit for one message, so no ONNX "
                      "reader can decode it", where=path,
                      hint="store the large weights as external data "
                           "(onnx.save_model(..., save_as_external_data=True))")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise QCError(f"cannot read: {e.strerror}", where=path) from None
    model = ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        if "MaxDepth" in str(e):
            raise QCError("the model nests messages (subgraphs in subgraphs) deeper than protobuf's decoding "
                          "limit of 100 levels", where=path,
                          hint="a real model nests If/Loop/Scan bodies a few levels deep; "
                               "is the file hostile?") from None
        raise QCError(f"not a valid ONNX model: the protobuf does not decode ({e})", where=path,
                      hint="is the file truncated, or not an .onnx file?") from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise QCError("not an ONNX model: it has no ir_version or no graph", where=path,
                      hint="pass an .onnx file (or a .qir text IR file)")
    return model


def import_onnx(model: str | os.PathLike | ModelProto, *, upgrade_opset: int | None = None,
                infer_shapes: bool = True, base_dir: str | None = None) -> Module:
    """Lower an ONNX model (a path, or a ModelProto) into a qc :class:`Module`."""
    if isinstance(model, ModelProto):
        return import_model(model, upgrade_opset=upgrade_opset, infer_shapes=infer_shapes, base_dir=base_dir)
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"import_onnx expects a path or a ModelProto, got {type(model).__name__}")
    where = os.fspath(model)
    base_dir = os.path.dirname(os.path.abspath(where)) if base_dir is None else base_dir
    return import_model(load_model_proto(where), upgrade_opset=upgrade_opset, infer_shapes=infer_shapes,
                        base_dir=base_dir, where=where)
