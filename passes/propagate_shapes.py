"""The ``propagate-shapes`` pass; its docstring (``qc passes propagate-shapes``) lists every rewrite."""
from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import AttributeProto, GraphProto

from qc.errors import QCError
from qc.ir.core import Graph, Module
from qc.ir.types import OptionalType, SequenceType, SparseTensorType, TensorType, Type
from qc.pm import Pass, PassContext, register_pass


@register_pass("propagate-shapes")
@dataclass(frozen=True)
class PropagateShapes(Pass):
    """propagate-shapes: fill in value types with ONNX shape inference.

    Rewrites (types only; the main graph and its subgraphs)::

        %y = onnx.Relu(%x) : ?                 ->  %y = onnx.Relu(%x) : f32[1, 8]
        %y = onnx.Reshape(%x, @s) : f32[?, ?]  ->  %y = onnx.Reshape(%x, @s) : f32[2, 4]
        %y = onnx.Relu(%x) : f32[N, 8]         ->  unchanged (inference says f32[?, 8]: less specific)
        %y = onnx.Shape(%x) : i64[*]           ->  %y = onnx.Shape(%x) : i64[2]

    The module is exported to ONNX and run through ``onnx.shape_inference.infer_shapes`` with
    ``data_prop=True`` (``strict_mode`` as the ``strict`` option says); the inferred types are
    merged into the IR one dimension at a time: an unknown dtype, an unknown rank, an unknown
    dimension (``?``) or a symbolic one replaced by a number is taken from inference; nothing
    known is ever overwritten (a conflicting dtype, rank or number keeps the IR's value).
    Quantization parameters stay. Main graph inputs are never changed (they are the interface);
    inputs of subgraphs are refined like op results. Function bodies are left alone: ONNX
    inference does not record types inside functions.

    With ``strict=true`` a shape inference error is raised as a QCError; otherwise it is noted as
    a remark and the IR is left unchanged (also when the module cannot be exported, e.g. text IR
    whose weights were elided without a sidecar).
    """

    strict: bool = False
    """raise a QCError when shape inference fails instead of ignoring it"""

    def run(self, module: Module, ctx: PassContext) -> bool:
        try:
            proto = export_for_inference(module)
        except QCError as e:  # e.g. text IR whose weights were elided and have no sidecar
            if self.strict:
                raise
            ctx.remark(None, f"cannot export the module for shape inference, types unchanged: {e}")
            return False
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, check_type=self.strict, strict_mode=self.strict,
                                                         data_prop=True)
        except Exception as e:  # onnx raises InferenceError / ValidationError / RuntimeError
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if self.strict:
                raise QCError(f"shape inference failed: {message}") from None
            ctx.remark(None, f"shape inference failed, types unchanged: {message}")
            return False
        return merge_inferred(module, inferred)


# The one place the passes reach into the ONNX interop code (qc.backends.onnx / qc.frontend):
# to be replaced by the qc.onnx layer.
def export_for_inference(module: Module) -> onnx.ModelProto:
    """The module as an ONNX model for shape inference (types only: the weights are shared, not copied)."""
    from qc.backends.onnx.writer import export_onnx_sharing_weights

    proto, _ = export_onnx_sharing_weights(module)
    return proto


def merge_inferred(module: Module, inferred: onnx.ModelProto) -> bool:
    """Merge the value types of an inferred export of ``module`` into the main graph (and its
    subgraphs) with ``merge_types``; True when a type changed."""
    from qc.frontend.onnx import convert_type

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


def _collect(g: GraphProto, out: dict) -> None:
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


def _values(g: Graph, top: bool):
    if not top:
        yield from (v for v in g.inputs if v.const is None)
    for op in g:
        for sub in op.subgraphs():
            yield from _values(sub, top=False)
        yield from (r for r in op.results if r is not None)


def merge_types(old: Type, new: Type) -> Type:
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


def _merge_shape(old, new):
    if old is None:
        return new
    if new is None or len(old) != len(new):
        return old
    dims = []
    for a, b in zip(old, new):
        if a is None:
            dims.append(b)
        elif isinstance(a, str) and isinstance(b, int):
            dims.append(b)
        else:
            dims.append(a)
    return tuple(dims)
