"""The ONNX IR version and opsets a written model declares: the lowest the model needs, checked
against what the target's runtime loads (the target file's ``[onnx]`` table).

"What the model needs":
- opset, per domain the onnx package has schemas for: the highest ``since_version`` of the
  schemas its nodes resolve to (graph, subgraphs, functions). Every node then resolves to the
  same schema as before, so nothing changes meaning; ``opset 21`` with only Relu-14 /
  MatMul-13 / Add-14 nodes -> ``opset 14``. Never below ai.onnx 13 (unless the file declared
  less). Domains without schemas (com.microsoft) stay.
- IR version: the highest of what the opsets need (``onnx.helper.VERSION_TABLE``; no more than
  the file declared), what the
  element types need (float8 9, int4 10, float4 11, float8e8m0 12, int2 13, float6 14) and
  what the file's structure needs (initializers that are not inputs 4, model-local functions and
  sparse / optional types 8, function attribute defaults 9, metadata on nodes and functions 10).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import onnx
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TypeProto
from onnx.defs import SchemaError, get_schema, has
from onnx.helper import find_min_ir_version_for, make_opsetid

from qc.errors import QCError
from qc.targets import Target

# TensorProto.DataType -> the first IR version that has it (onnx.proto's IR_VERSION comments)
DTYPE_IR = {17: 9, 18: 9, 19: 9, 20: 9, 21: 10, 22: 10, 23: 11, 24: 12, 25: 13, 26: 13, 27: 14, 28: 14}
DTYPE_ATTRS = ("to", "dtype", "output_dtype")  # integer attributes that name an element type
_SCHEMA_DOMAINS = ("", "ai.onnx.ml", "ai.onnx.preview.training")
FLOOR = {"": 13}


@dataclass(frozen=True)
class Versions:
    ir_version: int
    opsets: dict[str, int]
    why_ir: str      # what sets the IR version ("int4 tensors", "opset 21 of ai.onnx", ...)
    why_opset: dict[str, str]  # domain -> the op that sets its opset ("Cast-21")


def _types(t: TypeProto) -> Iterator[tuple[str, int]]:
    """(what, element type) of a type and its nested types; what: "tensor", "sparse", "optional"."""
    kind = t.WhichOneof("value")
    if kind == "tensor_type":
        yield "tensor", t.tensor_type.elem_type
    elif kind == "sparse_tensor_type":
        yield "sparse", t.sparse_tensor_type.elem_type
    elif kind == "sequence_type":
        yield from _types(t.sequence_type.elem_type)
    elif kind == "optional_type":
        yield "optional", 0
        yield from _types(t.optional_type.elem_type)
    elif kind == "map_type":
        yield "tensor", t.map_type.key_type
        yield from _types(t.map_type.value_type)


def _graphs(g: GraphProto) -> Iterator[GraphProto]:
    yield g
    for n in g.node:
        for a in n.attribute:
            if a.type == AttributeProto.GRAPH:
                yield from _graphs(a.g)
            elif a.type == AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from _graphs(sub)


def _nodes(model: ModelProto) -> Iterator[tuple[NodeProto, dict[str, int]]]:
    """Every node with the opset imports it resolves against."""
    top = {o.domain: o.version for o in model.opset_import}
    for g in _graphs(model.graph):
        for n in g.node:
            yield n, top
    for f in model.functions:
        imports = {**top, **{o.domain: o.version for o in f.opset_import}}
        for n in f.node:
            yield n, imports
            for a in n.attribute:
                for sub in ([a.g] if a.type == AttributeProto.GRAPH else a.graphs):
                    for g in _graphs(sub):
                        for m in g.node:
                            yield m, imports


def _attr_dtypes(n: NodeProto) -> Iterator[int]:
    for a in n.attribute:
        if a.type == AttributeProto.INT and a.name in DTYPE_ATTRS:
            yield a.i
        elif a.type == AttributeProto.TENSOR:
            yield a.t.data_type
        elif a.type == AttributeProto.SPARSE_TENSOR:
            yield a.sparse_tensor.values.data_type


def needed(model: ModelProto, extra_dtypes: Iterable[int] = ()) -> Versions:
    """The lowest IR version and opsets ``model`` can declare (``extra_dtypes``: element types of
    initializers the caller writes separately)."""
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
    # floor: ai.onnx 13 (or the declared opset when lower), so that a tool adding ops to the file
    # later (a Cast of a contrib-only model) does not get opset 1's schemas
    lowest: dict[str, int] = {d: min(v, FLOOR.get(d, 1)) for d, v in opsets.items() if d in _SCHEMA_DOMAINS}
    why_opset: dict[str, str] = {}
    ir, why_ir = 3, "the oldest IR version onnxruntime reads"
    tensor_dtypes: set[int] = set(extra_dtypes)
    for n, imports in _nodes(model):
        domain = "" if n.domain == "ai.onnx" else n.domain
        tensor_dtypes.update(_attr_dtypes(n))
        if domain not in lowest:
            continue
        version = imports.get(domain, imports.get("ai.onnx", 0)) if domain == "" else imports.get(domain, 0)
        try:
            since = get_schema(n.op_type, version, domain).since_version if has(n.op_type, domain) else version
        except SchemaError:
            since = version  # no schema at that version: keep what the model says
        if since > lowest[domain]:
            lowest[domain], why_opset[domain] = since, f"{n.op_type}-{since}"
    new_opsets = {d: (lowest[d] if d in lowest else v) for d, v in opsets.items()}

    def need(version: int, why: str) -> None:
        nonlocal ir, why_ir
        if version > ir:
            ir, why_ir = version, why

    by_opset = find_min_ir_version_for([make_opsetid(d, v) for d, v in new_opsets.items()], ignore_unknown=True)
    # an older file that declares less than the table says for its opsets (IR 3 with opset 9)
    # keeps its declaration: runtimes load it so, and the table is not a requirement of the format
    by_opset = min(by_opset, max(model.ir_version, 3))
    need(by_opset, "opsets " + ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in sorted(new_opsets.items())))
    g = model.graph
    inputs = {i.name for i in g.input}
    if any(t.name not in inputs for t in g.initializer) or g.sparse_initializer:
        need(4, "initializers that are not graph inputs")
    if model.training_info:
        need(7, "training information")
    for graph in _graphs(g):
        tensor_dtypes.update(t.data_type for t in graph.initializer)
        tensor_dtypes.update(t.values.data_type for t in graph.sparse_initializer)
        for vi in (*graph.input, *graph.output, *graph.value_info):
            for what, dt in _types(vi.type):
                if what in ("sparse", "optional"):
                    need(8, f"{what} types")
                tensor_dtypes.add(dt)
        if any(n.metadata_props for n in graph.node) or graph.metadata_props:
            need(10, "metadata on nodes or graphs")
    if model.functions:
        need(8, "model-local functions")
    for f in model.functions:
        if f.attribute_proto:
            need(9, "function attribute defaults")
        if f.overload or f.metadata_props:
            need(10, "function overloads or metadata")
    for dt in sorted(tensor_dtypes):
        if dt in DTYPE_IR:
            need(DTYPE_IR[dt], f"{onnx.helper.tensor_dtype_to_string(dt).removeprefix('TensorProto.').lower()} tensors")
    return Versions(ir, new_opsets, why_ir, why_opset)


def fit(model: ModelProto, target: Target | None = None, extra_dtypes: Iterable[int] = ()) -> Versions:
    """Set ``model``'s IR version and opsets to the lowest it needs; a QCError when that is more
    than ``target``'s runtime loads (its ``[onnx]`` table; no table: no limit)."""
    v = needed(model, extra_dtypes)
    limits = target.onnx if target is not None else None
    if limits is not None:
        where = f"target {target.name}" if target is not None else None
        runtime = limits.runtime
        if limits.max_ir_version is not None and v.ir_version > limits.max_ir_version:
            raise QCError(f"the model needs ONNX IR version {v.ir_version} ({v.why_ir}), but {runtime} loads IR "
                          f"version {limits.max_ir_version} at most", where=where,
                          hint="choose a scheme without those types, or a target whose runtime is newer "
                               "(docs/targets.md, [onnx])")
        over = v.opsets.get("", 0)
        if limits.max_opset is not None and over > limits.max_opset:
            raise QCError(f"the model needs ai.onnx opset {over} ({v.why_opset.get('', 'its opset import')}), but "
                          f"{runtime} loads opset {limits.max_opset} at most", where=where,
                          hint="convert the model to an older opset first, or choose a target whose runtime "
                               "is newer (docs/targets.md, [onnx])")
    model.ir_version = v.ir_version
    _set_opsets(model.opset_import, v.opsets)
    for f in model.functions:
        _set_opsets(f.opset_import, {d: n for d, n in v.opsets.items() if d in {o.domain for o in f.opset_import}})
    return v


def _set_opsets(imports, opsets: dict[str, int]) -> None:
    for o in imports:
        d = "" if o.domain == "ai.onnx" else o.domain
        if d in opsets:
            o.version = opsets[d]
