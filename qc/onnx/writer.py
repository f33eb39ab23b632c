"""qc IR -> ONNX ``ModelProto``, in memory (the file writer is ``qc.backends.onnx``).

The writer is deterministic: the same module gives byte-identical output. Tensors still in
their original (undecoded) form are passed through untouched. Large tensors can be placed by
a sink (external data in a file, or numpy arrays handed to onnxruntime).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, ModelProto, TensorProto, TypeProto

from qc.errors import QCError
from qc.ir.core import Attr, Function, Graph, Module, Value
from qc.ir.naming import assign_unique_names
from qc.ir.tensor import SparseTensor, Tensor
from qc.ir.types import MapType, NegativeDim, OptionalType, SequenceType, SparseTensorType, TensorType, Type

_ATTR_TYPE = {
    "int": AttributeProto.INT, "float": AttributeProto.FLOAT, "string": AttributeProto.STRING,
    "tensor": AttributeProto.TENSOR, "graph": AttributeProto.GRAPH, "sparse": AttributeProto.SPARSE_TENSOR,
    "type": AttributeProto.TYPE_PROTO, "ints": AttributeProto.INTS, "floats": AttributeProto.FLOATS,
    "strings": AttributeProto.STRINGS, "tensors": AttributeProto.TENSORS, "graphs": AttributeProto.GRAPHS,
    "sparses": AttributeProto.SPARSE_TENSORS, "types": AttributeProto.TYPE_PROTOS,
}

PROTOBUF_LIMIT = 2**31 - 1


class TensorSink(Protocol):
    """Where :class:`ModelWriter` may place a large tensor instead of inlining its data."""

    def place(self, tensor: Tensor, name: str) -> TensorProto | None:
        """The tensor's proto referencing data held elsewhere, or None to inline it."""


def export_onnx(module: Module) -> ModelProto:
    """The module as a ModelProto with every tensor inline (see ``save_onnx`` for > 2 GB)."""
    return ModelWriter(external=None).model(module)


def export_onnx_sharing_weights(module: Module, min_bytes: int = 1024) -> tuple[ModelProto, Mapping[str, np.ndarray]]:
    """``(proto, arrays)``: the module with every tensor of ``min_bytes`` or more left out of the
    proto (marked as external data at a location that does not exist) and handed over as numpy
    arrays instead, for ``SessionOptions.add_external_initializers``: onnxruntime then reads the
    IR's own buffers, and the weights are not copied into a proto and serialized bytes first.
    ``arrays`` reads each tensor when it is looked up, so weights on disk stay there until then."""
    sink = _MemorySink(min_bytes)
    return ModelWriter(external=sink).model(module), sink.arrays


def serialize(proto: ModelProto) -> bytes:
    data: bytes = proto.SerializeToString(deterministic=True)  # protobuf has no type information
    return data


def all_consts(module: Module) -> Iterator[Tensor | SparseTensor]:
    for op in module.walk():
        for a in op.attrs.values():
            if a.kind == "tensor" and a.value is not None:
                yield a.value
    stack = [module.graph]
    while stack:
        g = stack.pop()
        yield from (v.data() for v in g.consts.values())
        for op in g:
            stack.extend(op.subgraphs())


def const_bytes(t: Tensor | SparseTensor) -> int:
    if isinstance(t, SparseTensor):
        return t.values.nbytes + t.indices.nbytes
    return t.nbytes if t.dtype.bits else 0


class _LazyArrays(Mapping[str, np.ndarray]):
    """Tensor name -> contiguous array, each read only when asked for: a caller that only
    needs the proto (shape inference) never loads weights still on disk."""

    def __init__(self) -> None:
        self.tensors: dict[str, Tensor] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        return np.ascontiguousarray(self.tensors[name].numpy())

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)


class _MemorySink:
    """Keeps large tensors as arrays and references them as external data (see export_onnx_sharing_weights)."""

    LOCATION = "qc-in-memory-weights"

    def __init__(self, min_bytes: int):
        self.min_bytes = min_bytes
        self.arrays = _LazyArrays()

    def place(self, tensor: Tensor, name: str) -> TensorProto | None:
        if tensor.dtype.bits < 8 or tensor.nbytes < self.min_bytes or tensor.dtype.numpy.kind not in "fiub":
            return None
        self.arrays.tensors[name] = tensor
        p = TensorProto(name=name, data_type=int(tensor.dtype), dims=list(tensor.shape),
                        data_location=TensorProto.EXTERNAL)
        for k, v in (("location", self.LOCATION), ("offset", "0"), ("length", str(tensor.nbytes))):
            e = p.external_data.add()
            e.key, e.value = k, v
        return p


class ModelWriter:
    """IR -> ModelProto. ``external`` places large tensors elsewhere (a sink with
    ``place(tensor, name) -> TensorProto | None``); ``defer_initializers`` leaves the main
    graph's initializers out and lists their values in ``deferred`` for the caller to stream."""

    def __init__(self, external: TensorSink | None, defer_initializers: bool = False):
        self.external = external
        self.defer_initializers = defer_initializers
        self.deferred: list[Value] = []
        # onnxruntime hands add_external_initializers' arrays to main-graph initializers only; a
        # subgraph initializer marked external is looked up as a file and fails to load
        self.in_memory = isinstance(external, _MemorySink)

    def model(self, m: Module) -> ModelProto:
        assign_unique_names(m)
        proto = ModelProto(**_present(ir_version=m.ir_version, producer_name=m.producer_name,
                                      producer_version=m.producer_version, domain=m.domain,
                                      model_version=m.model_version, doc_string=m.doc))
        for domain, version in m.opset_imports.items():
            proto.opset_import.add(domain=domain, version=version)
        for k, v in m.metadata:
            proto.metadata_props.add(key=k, value=v)
        proto.graph.CopyFrom(self.graph(m.graph, consts_are_inputs=m.ir_version < 4, top=True))
        for f in m.functions:
            proto.functions.append(self.function(f))
        return proto

    def tensor(self, t: Tensor, name: str, placeable: bool = True) -> TensorProto:
        """``placeable=False``: always inline (a subgraph's initializer: onnxruntime's
        ``add_external_initializers`` and external-data loader only see the main graph's)."""
        if self.external is not None and placeable:
            placed = self.external.place(t, name)
            if placed is not None:
                return placed
        return t.to_proto(name)

    def sparse(self, s: SparseTensor, name: str = "") -> onnx.SparseTensorProto:
        return onnx.SparseTensorProto(values=self.tensor(s.values, name),
                                      indices=self.tensor(s.indices, ""), dims=list(s.shape))

    def graph(self, g: Graph, consts_are_inputs: bool = False, top: bool = False) -> GraphProto:
        """``consts_are_inputs``: list every initializer as an input too (required before IR version 4);
        ``top`` with ``defer_initializers``: leave the initializers out, listed in ``deferred``."""
        gp = GraphProto(**_present(name=g.name, doc_string=g.doc))
        for v in g.consts.values():
            if top and self.defer_initializers:
                self.deferred.append(v)
            else:
                data = v.data()
                if isinstance(data, SparseTensor):
                    gp.sparse_initializer.append(self.sparse(data, v.name))
                else:
                    gp.initializer.append(self.tensor(data, v.name, placeable=top or not self.in_memory))
        for v in g.inputs:
            gp.input.append(value_info(v))
        if consts_are_inputs:
            listed = {id(v) for v in g.inputs}
            gp.input.extend(value_info(v) for v in g.consts.values() if id(v) not in listed)
        described = {v.name for v in g.inputs} | {v.name for v in g.outputs}
        for op in g:
            node = gp.node.add(op_type=op.op_type, **_present(domain=op.domain, name=op.name, doc_string=op.doc,
                                                              overload=op.overload))
            node.input.extend(v.name if v is not None else "" for v in op.operands)
            node.output.extend(v.name if v is not None else "" for v in op.results)
            for name, a in op.attrs.items():
                node.attribute.append(self.attr(name, a))
            for r in op.results:
                if r is not None and r.type is not None and r.name not in described:
                    gp.value_info.append(value_info(r))
        for v in g.outputs:
            gp.output.append(value_info(v))
        return gp

    def function(self, f: Function) -> onnx.FunctionProto:
        body = f.body
        fp = onnx.FunctionProto(domain=f.domain, name=f.name, **_present(doc_string=f.doc, overload=f.overload),
                                input=[v.name for v in body.inputs], output=[v.name for v in body.outputs])
        fp.attribute.extend(p for p in f.attr_params if p not in f.attr_defaults)
        for name, a in f.attr_defaults.items():
            fp.attribute_proto.append(self.attr(name, a))
        for domain, version in f.opset_imports.items():
            fp.opset_import.add(domain=domain, version=version)
        for k, v in f.metadata:
            fp.metadata_props.add(key=k, value=v)
        g = self.graph(body)
        # FunctionProto has no initializers: a const of a function body becomes a Constant node
        for init in g.initializer:
            fp.node.add(op_type="Constant", output=[init.name]).attribute.add(
                name="value", type=AttributeProto.TENSOR).t.CopyFrom(init)
        for sp in g.sparse_initializer:
            fp.node.add(op_type="Constant", output=[sp.values.name]).attribute.add(
                name="sparse_value", type=AttributeProto.SPARSE_TENSOR).sparse_tensor.CopyFrom(sp)
        fp.node.extend(g.node)
        typed = [vi for vi in list(g.input) + list(g.value_info) + list(g.output) if vi.type.WhichOneof("value")]
        if typed:
            fp.value_info.extend(typed)
        return fp

    def attr(self, name: str, a: Attr) -> AttributeProto:
        ap = AttributeProto(name=name, type=_ATTR_TYPE[a.kind], **_present(doc_string=a.doc))
        if a.ref is not None:
            ap.ref_attr_name = a.ref
            return ap
        k, v = a.kind, a.value
        if k == "int":
            ap.i = v
        elif k == "float":
            ap.f = v
        elif k == "string":
            ap.s = v
        elif k == "tensor":
            ap.t.CopyFrom(v.to_proto())
        elif k == "graph":
            ap.g.CopyFrom(self.graph(v))
        elif k == "sparse":
            ap.sparse_tensor.CopyFrom(self.sparse(v))
        elif k == "type":
            ap.tp.CopyFrom(type_proto(v))
        elif k == "ints":
            ap.ints.extend(v)
        elif k == "floats":
            ap.floats.extend(v)
        elif k == "strings":
            ap.strings.extend(v)
        elif k == "tensors":
            ap.tensors.extend(t.to_proto() for t in v)
        elif k == "graphs":
            ap.graphs.extend(self.graph(g) for g in v)
        elif k == "sparses":
            ap.sparse_tensors.extend(self.sparse(s) for s in v)
        elif k == "types":
            ap.type_protos.extend(type_proto(t) for t in v)
        return ap


def value_info(v: Value) -> onnx.ValueInfoProto:
    vi = onnx.ValueInfoProto(name=v.name, **_present(doc_string=v.doc))
    if v.type is not None:
        vi.type.CopyFrom(type_proto(v.type))
    return vi


def _present(**fields: Any) -> dict[str, Any]:
    """The fields that are set: protobuf (proto2) records an explicit "" or 0 as present."""
    return {k: v for k, v in fields.items() if v}


def type_proto(t: Type) -> TypeProto:
    tp = TypeProto()
    if isinstance(t, (TensorType, SparseTensorType)):
        inner = tp.tensor_type if isinstance(t, TensorType) else tp.sparse_tensor_type
        inner.elem_type = int(t.dtype) if t.dtype is not None else 0
        if t.shape is not None:
            inner.shape.SetInParent()
            for d in t.shape:
                dim = inner.shape.dim.add()
                if isinstance(d, int):
                    dim.dim_value = d
                elif isinstance(d, NegativeDim):
                    dim.dim_value = d.value
                elif isinstance(d, str):
                    dim.dim_param = d
    elif isinstance(t, SequenceType):
        tp.sequence_type.elem_type.CopyFrom(type_proto(t.elem))
    elif isinstance(t, OptionalType):
        tp.optional_type.elem_type.CopyFrom(type_proto(t.elem))
    elif isinstance(t, MapType):
        tp.map_type.key_type = int(t.key)
        tp.map_type.value_type.CopyFrom(type_proto(t.value))
    return tp


def check(proto: ModelProto, where: str = "<model>") -> None:
    """onnx.checker full check, as a QCError naming what failed."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise QCError(f"the exported model fails onnx.checker: {e}", where=where) from None
