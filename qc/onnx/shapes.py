"""Shape inference between the IR and ONNX: export a module for ``onnx.shape_inference`` and merge
the inferred types back, never overwriting what the IR already knows.

    %y : f32[?, ?]   + inferred f32[2, 4]  ->  %y : f32[2, 4]
    %y : f32[N, 8]   + inferred f32[?, 8]  ->  unchanged (less specific)
    %y : f32[1, N]   + inferred f32[20, 1, 8]  ->  %y : f32[20, 1, 8] (a static shape beats a wrong rank)
    %y : f32[-1, 8]  + inferred f32[N, 8]  ->  %y : f32[N, 8] (-1, like ?, is anonymous)
    %y : ?           + inferred f32[1]     ->  %y : f32[1]
"""
from __future__ import annotations

from collections.abc import Iterator

import onnx
from onnx import AttributeProto, GraphProto

from qc.ir.core import Graph, Module, Value
from qc.ir.types import (
    Dim,
    OptionalType,
    SequenceType,
    SparseTensorType,
    TensorType,
    Type,
    dim_kind,
    is_static_dim,
    shared_symbol,
)

from .reader import clear_negative_dims, convert_type
from .writer import export_onnx_sharing_weights


def export_for_inference(module: Module) -> onnx.ModelProto:
    """The module as an ONNX model for shape inference (types only: the weights are shared, not
    copied). A ``-1`` dimension goes out unknown: onnx would take it for a size (and conflict
    with the size it infers once ``fix-shapes`` gave the inputs theirs). The graph outputs go out
    without shapes, so that onnx infers theirs too (:func:`merge_types` keeps what the
    declaration says unless the inference knows more)."""
    proto, _ = export_onnx_sharing_weights(module)
    clear_negative_dims(proto)
    for out in proto.graph.output:  # inferred afresh: a declared output shape may be wrong
        if out.type.HasField("tensor_type") and out.type.tensor_type.HasField("shape"):
            out.type.tensor_type.ClearField("shape")
    return proto


def merge_inferred(module: Module, inferred: onnx.ModelProto) -> bool:
    """Merge the value types of an inferred export of ``module`` into the main graph (and its
    subgraphs) with ``merge_types``; True when a type changed."""
    types: dict[str, onnx.TypeProto] = {}
    _collect(inferred.graph, types)
    changed = False
    for v in _values(module.graph, top=True):
        tp = types.get(v.name)
        if tp is None:
            continue
        new = merge_types(v.type, convert_type(tp))
        if new != v.type:
            v.type = new
            changed = True
    return changed


def _collect(g: GraphProto, out: dict[str, onnx.TypeProto]) -> None:
    for vi in list(g.value_info) + list(g.output) + list(g.input):
        if vi.type.WhichOneof("value") is not None:
            out.setdefault(vi.name, vi.type)
    for node in g.node:
        for a in node.attribute:
            if a.type == AttributeProto.GRAPH:
                _collect(a.g, out)
            elif a.type == AttributeProto.GRAPHS:
                for sub in a.graphs:
                    _collect(sub, out)


def _values(g: Graph, top: bool) -> Iterator[Value]:
    if not top:
        yield from (v for v in g.inputs if v.const is None)
    for op in g:
        for sub in op.subgraphs():
            yield from _values(sub, top=False)
        yield from (r for r in op.results if r is not None)


def merge_types(old: Type | None, new: Type | None) -> Type | None:
    """``old`` refined by ``new``: only what ``old`` leaves unknown is taken from ``new``."""
    if new is None:
        return old
    if old is None:
        return new
    if isinstance(old, TensorType) and isinstance(new, TensorType):
        dtype = old.dtype if old.dtype is not None else new.dtype
        return TensorType(dtype, _merge_shape(old.shape, new.shape), old.quant)
    if isinstance(old, SparseTensorType) and isinstance(new, SparseTensorType):
        dtype = old.dtype if old.dtype is not None else new.dtype
        return SparseTensorType(dtype, _merge_shape(old.shape, new.shape))
    if isinstance(old, SequenceType) and isinstance(new, SequenceType):
        return SequenceType(merge_types(old.elem, new.elem))
    if isinstance(old, OptionalType) and isinstance(new, OptionalType):
        return OptionalType(merge_types(old.elem, new.elem))
    return old


def _merge_shape(old: tuple | None, new: tuple | None) -> tuple | None:
    """Dimension by dimension (:func:`_merge_dim`); of two ranks, a fully static inferred shape
    wins (the declaration was wrong: ddddocr declares its [20, 1, 8210] output ``[1, seqlen]``)."""
    if old is None:
        return new
    if new is None:
        return old
    if len(old) != len(new):
        return new if all(is_static_dim(d) for d in new) else old
    return tuple(_merge_dim(a, b) for a, b in zip(old, new))


def _merge_dim(old: Dim, new: Dim) -> Dim:
    """A size beats a name, and a shared name an anonymous dimension (None, ``-1``, ``?``)."""
    if old is None or (not is_static_dim(old) and is_static_dim(new)):
        return new
    if dim_kind(old) == "anonymous" and shared_symbol(new) is not None:
        return new
    return old
