"""ONNX ``ModelProto`` -> qc IR, in memory (the file reader is ``qc.frontend.onnx``).

Reads any valid ``ModelProto``: every opset and domain, local functions, subgraphs, sparse
initializers and external data (left on disk until a pass reads it). Models whose opset is
older than requested can be upgraded with ``onnx.version_converter``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import onnx
from google.protobuf.descriptor import FieldDescriptor
from onnx import AttributeProto, GraphProto, ModelProto, TensorShapeProto, TypeProto

from qc.errors import QCError
from qc.ir._gc import without_gc
from qc.ir.core import Attr, Function, Graph, Module, Op, Value
from qc.ir.dtypes import DType
from qc.ir.printer import format_type
from qc.ir.scope import Scope
from qc.ir.tensor import SparseTensor, Tensor, check_proto
from qc.ir.types import Dim, MapType, OptionalType, SequenceType, SparseTensorType, TensorType, Type, dim_from_int

PROTOBUF_LIMIT = 2**31 - 1
_ATTR_KIND = {
    AttributeProto.INT: "int", AttributeProto.FLOAT: "float", AttributeProto.STRING: "string",
    AttributeProto.TENSOR: "tensor", AttributeProto.GRAPH: "graph", AttributeProto.SPARSE_TENSOR: "sparse",
    AttributeProto.TYPE_PROTO: "type", AttributeProto.INTS: "ints", AttributeProto.FLOATS: "floats",
    AttributeProto.STRINGS: "strings", AttributeProto.TENSORS: "tensors", AttributeProto.GRAPHS: "graphs",
    AttributeProto.SPARSE_TENSORS: "sparses", AttributeProto.TYPE_PROTOS: "types",
}


@without_gc
def import_model(model: ModelProto, *, upgrade_opset: int | None = None, infer_shapes: bool = True,
                 base_dir: str | None = None, where: str = "<model>") -> Module:
    """Lower a ``ModelProto`` into a qc :class:`Module`. External data is read from ``base_dir``
    when a pass needs it; ``where`` names the model in messages."""
    if not isinstance(model, ModelProto):
        raise TypeError(f"import_model expects a ModelProto, got {type(model).__name__}")
    _check_text_fields(model, where)
    if upgrade_opset is not None:
        model = _upgrade(model, upgrade_opset, where)
    if infer_shapes:
        model = with_inferred_shapes(model)
    try:
        return _Importer(where, base_dir).module(model)
    except QCError as e:
        if e.where is None:
            raise QCError(e.bare_message, where=where, hint=e.hint) from None
        raise
    except RecursionError:
        raise QCError("the model nests subgraphs too deeply to import", where=where,
                      hint="a real model nests If/Loop/Scan bodies a few levels deep, not hundreds") from None


_STRING, _MESSAGE = FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE


def _check_text_fields(model: ModelProto, where: str) -> None:
    """Refuse a model with a string field (a name, op type, domain...) that is not UTF-8: protobuf
    hands such fields over as bytes. Only fields that are set are visited (``ListFields``), and
    of a tensor only its name and external data keys: its data is never read."""
    stack: list = [model]
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        msg = pop()
        if type(msg) is onnx.TensorProto:
            name: str | bytes = msg.name  # typed str, but protobuf hands non-UTF-8 text over as bytes
            if type(name) is bytes:
                _not_utf8(msg, "name", name, where)
            extend(msg.external_data)
            continue
        for fd, value in msg.ListFields():
            kind = fd.type
            if kind == _MESSAGE:
                if fd.is_repeated:
                    extend(value)
                else:
                    push(value)
            elif kind == _STRING:
                if fd.is_repeated:
                    for v in value:
                        if type(v) is bytes:
                            _not_utf8(msg, fd.name, v, where)
                elif type(value) is bytes:
                    _not_utf8(msg, fd.name, value, where)


def _not_utf8(msg: Any, field: str, value: bytes, where: str) -> None:
    raise QCError(f"{msg.DESCRIPTOR.name}.{field} is not valid UTF-8 text ({value!r:.80})", where=where,
                  hint="the model is corrupt (names, op types and domains are UTF-8 strings)")


def _upgrade(model: ModelProto, target: int, where: str) -> ModelProto:
    from onnx import version_converter

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if current is None or current >= target:
        return model
    try:
        return _convert_without_weights(model, target)
    except Exception:
        pass  # an adapter needed a weight's value: convert the whole model
    try:
        return version_converter.convert_version(model, target)
    except Exception as e:  # the converter raises bare RuntimeErrors
        raise QCError(f"cannot upgrade opset {current} -> {target}: {e}", where=where) from None


def _convert_without_weights(model: ModelProto, target: int) -> ModelProto:
    """Convert the graph with its large initializers detached (see :func:`detach_weights`):
    the converter copies the whole model, weights included, but its adapters only rewrite nodes."""
    from onnx import version_converter

    light, reattach = detach_weights(model)
    return reattach(version_converter.convert_version(light, target))


def detach_weights(model: ModelProto, min_bytes: int = 1024) -> tuple[ModelProto, Callable[[ModelProto], ModelProto]]:
    """``(light, reattach)``: the model with every initializer of ``min_bytes`` or more turned
    into a typed graph input, and a function that puts them back into a model derived from
    ``light`` (by onnx's shape inference or version converter, which copy whatever they are
    given: seconds for a model of a few hundred MB). ``reattach`` raises ValueError when the
    derived model no longer lists each detached initializer as an input.
    """
    from onnx import helper

    graph = model.graph
    big = [t for t in graph.initializer
           if len(t.raw_data) >= min_bytes or t.data_location == onnx.TensorProto.EXTERNAL]
    names = {t.name for t in big}
    original_inputs = {i.name for i in graph.input}
    light = ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(light, field, getattr(model, field))
    light.opset_import.extend(model.opset_import)
    light.metadata_props.extend(model.metadata_props)
    light.functions.extend(model.functions)
    light.graph.CopyFrom(helper.make_graph(
        list(graph.node), graph.name,
        list(graph.input) + [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in big if t.name not in original_inputs],
        list(graph.output), [t for t in graph.initializer if t.name not in names],
        value_info=list(graph.value_info), doc_string=graph.doc_string))
    light.graph.sparse_initializer.extend(graph.sparse_initializer)

    def reattach(derived: ModelProto) -> ModelProto:
        if not big:
            return derived
        if sum(1 for i in derived.graph.input if i.name in names) != len(names):
            raise ValueError("the detached initializers are no longer inputs")
        inputs = [i for i in derived.graph.input if i.name not in names or i.name in original_inputs]
        del derived.graph.input[:]
        derived.graph.input.extend(inputs)
        derived.graph.initializer.extend(big)
        return derived

    return light, reattach


def with_inferred_shapes(model: ModelProto) -> ModelProto:
    """The model with onnx shape inference's types, minus the dim names it invents. Inference
    sees a negative ``dim_value`` (``-1``) as unknown (onnx would carry it along as a size, into
    shape data that Reshape then reads as "infer this axis"); the declared ones are put back."""
    light, reattach = detach_weights(model)
    negative = clear_negative_dims(light)
    try:
        inferred = reattach(onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True))
    except Exception:
        return model  # types stay as declared; `propagate-shapes` reports the reason
    declared = {d.dim_param for tp in _type_protos(model) for d in _dims(tp) if d.dim_param}
    for tp in _type_protos(inferred):
        for d in _dims(tp):
            if d.dim_param and d.dim_param not in declared:
                d.ClearField("dim_param")
    _restore_negative_dims(inferred, negative)
    return inferred


def clear_negative_dims(model: ModelProto) -> dict[str, list[tuple[int, int]]]:
    """Make every negative ``dim_value`` of ``model``'s value types (all graphs) an unknown
    dimension, in place; returns ``{value name: [(axis, value), ...]}`` for putting them back."""
    cleared: dict[str, list[tuple[int, int]]] = {}
    for name, tp in _named_type_protos(model):
        which = tp.WhichOneof("value")
        if which not in ("tensor_type", "sparse_tensor_type"):
            continue
        for axis, d in enumerate(getattr(tp, which).shape.dim):
            if d.HasField("dim_value") and d.dim_value < 0:
                cleared.setdefault(name, []).append((axis, int(d.dim_value)))
                d.ClearField("dim_value")
    return cleared


def _restore_negative_dims(model: ModelProto, cleared: dict[str, list[tuple[int, int]]]) -> None:
    for name, tp in _named_type_protos(model):
        which = tp.WhichOneof("value")
        if name not in cleared or which not in ("tensor_type", "sparse_tensor_type"):
            continue
        dims = getattr(tp, which).shape.dim
        for axis, value in cleared[name]:
            if axis < len(dims) and not dims[axis].HasField("dim_value"):
                dims[axis].ClearField("dim_param")
                dims[axis].dim_value = value


def _named_type_protos(model: ModelProto) -> Iterator[tuple[str, TypeProto]]:
    """(value name, type) of every value_info, input and output, in all graphs."""
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            yield vi.name, vi.type
        for node in g.node:
            for a in node.attribute:
                graphs.extend([a.g] if a.type == AttributeProto.GRAPH else a.graphs)


def _type_protos(model: ModelProto) -> Iterator[TypeProto]:
    """The types of every value_info, input and output, in all graphs and functions."""
    yield from (tp for _, tp in _named_type_protos(model))
    for f in model.functions:
        for vi in f.value_info:
            yield vi.type


def _dims(tp: TypeProto) -> Iterator[TensorShapeProto.Dimension]:
    """The shape dimensions inside a type, through sequences, optionals and maps."""
    which = tp.WhichOneof("value")
    if which in ("tensor_type", "sparse_tensor_type"):
        yield from getattr(tp, which).shape.dim
    elif which in ("sequence_type", "optional_type"):
        yield from _dims(getattr(tp, which).elem_type)
    elif which == "map_type":
        yield from _dims(tp.map_type.value_type)


def convert_type(tp: TypeProto) -> Type:
    which = tp.WhichOneof("value")
    if which == "tensor_type":
        t = tp.tensor_type
        return TensorType(_dtype(t.elem_type), _shape(t) if t.HasField("shape") else None)
    if which == "sparse_tensor_type":
        t = tp.sparse_tensor_type
        return SparseTensorType(_dtype(t.elem_type), _shape(t) if t.HasField("shape") else None)
    if which == "sequence_type":
        return SequenceType(convert_type(tp.sequence_type.elem_type))
    if which == "optional_type":
        return OptionalType(convert_type(tp.optional_type.elem_type))
    if which == "map_type":
        key = _dtype(tp.map_type.key_type)
        if key is None:
            raise QCError("a map type has no key type", hint="the model is corrupt")
        return MapType(key, convert_type(tp.map_type.value_type))
    return None


def _dtype(code: int) -> DType | None:
    if not code:
        return None
    try:
        return DType(code)
    except ValueError:
        raise QCError(f"unknown tensor element type code {code}",
                      hint="the model is corrupt, or needs a newer onnx than this qc knows") from None


def _shape(t: Any) -> tuple[Dim, ...]:
    dims: list[Dim] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(dim_from_int(int(d.dim_value)))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


class _Importer:
    def __init__(self, where: str, base_dir: str | None):
        self.where = where
        self.base_dir = base_dir

    def module(self, model: ModelProto) -> Module:
        opsets = {o.domain: o.version for o in model.opset_import}
        functions = [self.function(f) for f in model.functions]
        graph = self.graph(model.graph, Scope(), path="graph")
        return Module(
            graph=graph, opset_imports=opsets, functions=functions, ir_version=model.ir_version,
            producer_name=model.producer_name, producer_version=model.producer_version,
            domain=model.domain, model_version=model.model_version, doc=model.doc_string,
            metadata=[(p.key, p.value) for p in model.metadata_props],
        )

    def function(self, f: onnx.FunctionProto) -> Function:
        scope = Scope()
        types = {vi.name: convert_type(vi.type) for vi in f.value_info}
        body = Graph(f.name)
        for name in f.input:
            v = Value(name, types.get(name))
            scope.names[name] = v
            body.inputs.append(v)
        self.fill(body, f.node, f.output, scope, types, f"function {f.domain}.{f.name}")
        defaults = {a.name: self.attr(a, scope, "") for a in f.attribute_proto}
        params = list(f.attribute) + [a.name for a in f.attribute_proto]
        return Function(domain=f.domain, name=f.name, body=body, attr_params=params,
                        attr_defaults=defaults, opset_imports={o.domain: o.version for o in f.opset_import},
                        overload=f.overload, doc=f.doc_string,
                        metadata=[(p.key, p.value) for p in f.metadata_props])

    def graph(self, g: GraphProto, outer: Scope, path: str) -> Graph:
        scope = Scope(outer)
        types: dict[str, Type] = {}
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            t = convert_type(vi.type)
            if t is not None or vi.name not in types:
                types[vi.name] = t
        graph = Graph(g.name)
        graph.doc = g.doc_string
        for init in g.initializer:
            self.define(scope, init.name, path)
            data = self.tensor(init, path)
            declared = types.get(init.name)
            if isinstance(declared, TensorType) and (
                    (declared.dtype is not None and declared.dtype != data.dtype)
                    or (declared.shape is not None and declared.is_static and declared.shape != data.shape)):
                raise QCError(f"initializer '{init.name}' in {path} holds {data.dtype}{list(data.shape)}, but the "
                              f"graph declares it as {format_type(declared)}", where=self.where,
                              hint="the value_info or input type of the initializer contradicts its data")
            v = Value(init.name, declared or TensorType(data.dtype, data.shape), const=data)
            graph.consts[init.name] = scope.names[init.name] = v
        for sp in g.sparse_initializer:
            name = sp.values.name
            self.define(scope, name, path)
            sparse = self.sparse(sp, path)
            v = Value(name, SparseTensorType(sparse.dtype, sparse.shape), const=sparse)
            graph.consts[name] = scope.names[name] = v
        for vi in g.input:
            known = scope.names.get(vi.name)
            if known is None or known.const is None:
                self.define(scope, vi.name, path)
                known = scope.names[vi.name] = Value(vi.name, types.get(vi.name))
            graph.inputs.append(known)
        self.fill(graph, g.node, [o.name for o in g.output], scope, types, path)
        return graph

    def define(self, scope: Scope, name: str, path: str) -> None:
        if name in scope.names:
            raise QCError(f"value '{name}' is defined twice in {path}", where=self.where,
                          hint="ONNX graphs must be in SSA form: every name is assigned once")

    def fill(self, graph: Graph, nodes: Iterable[onnx.NodeProto], outputs: Iterable[str],
             scope: Scope, types: dict[str, Type], path: str) -> None:
        for node in _topological(list(nodes), scope, self.where, path):
            operands = [self.lookup(scope, name, node, path) if name else None for name in node.input]
            op = Op(node.op_type, operands, domain=node.domain, results=0, name=node.name,
                    overload=node.overload)
            op.doc = node.doc_string
            for a in node.attribute:
                op.attrs[a.name] = self.attr(a, scope, f"{path}/{node.name or node.op_type}")
            for name in node.output:
                if not name:
                    op.add_result(None)
                    continue
                self.define(scope, name, path)
                result = scope.names[name] = Value(name, types.get(name))
                op.add_result(result)
            graph.append(op)
        for name in outputs:
            v = scope.get(name)
            if v is None:
                raise QCError(f"graph output '{name}' of {path} is not produced by any node, input or initializer",
                              where=self.where, hint="fix the output name or add the node that computes it")
            graph.add_output(v)

    def lookup(self, scope: Scope, name: str, node: onnx.NodeProto, path: str) -> Value:
        v = scope.get(name)
        if v is None:
            raise QCError(f"node '{node.name or '?'}' ({node.op_type}) in {path} reads '{name}', which no node, "
                          "graph input or initializer defines", where=self.where,
                          hint="the model is incomplete: fix the input name or add its producer")
        return v

    def attr(self, a: AttributeProto, scope: Scope, path: str) -> Attr:
        kind = _ATTR_KIND.get(a.type)
        if kind is None:
            raise QCError(f"attribute '{a.name}' in {path} has no type", where=self.where)
        if a.ref_attr_name:
            return Attr(kind, None, ref=a.ref_attr_name, doc=a.doc_string)
        value = {
            "int": lambda: int(a.i), "float": lambda: float(a.f), "string": lambda: bytes(a.s),
            "tensor": lambda: self.tensor(a.t, path),
            "graph": lambda: self.graph(a.g, scope, f"{path}.{a.name}"),
            "sparse": lambda: self.sparse(a.sparse_tensor, path), "type": lambda: convert_type(a.tp),
            "ints": lambda: [int(i) for i in a.ints], "floats": lambda: [float(f) for f in a.floats],
            "strings": lambda: [bytes(s) for s in a.strings],
            "tensors": lambda: [self.tensor(t, path) for t in a.tensors],
            "graphs": lambda: [self.graph(g, scope, f"{path}.{a.name}[{i}]") for i, g in enumerate(a.graphs)],
            "sparses": lambda: [self.sparse(s, path) for s in a.sparse_tensors],
            "types": lambda: [convert_type(t) for t in a.type_protos],
        }[kind]()
        return Attr(kind, value, doc=a.doc_string)

    def tensor(self, proto: onnx.TensorProto, path: str) -> Tensor:
        """The tensor, undecoded, after :func:`check_proto` found its header and data consistent."""
        try:
            check_proto(proto, self.base_dir)
        except QCError as e:
            raise QCError(f"{e.bare_message} (in {path})", where=self.where, hint=e.hint) from None
        return Tensor.from_proto(proto, self.base_dir)

    def sparse(self, sp: onnx.SparseTensorProto, path: str) -> SparseTensor:
        values, indices = self.tensor(sp.values, path), self.tensor(sp.indices, path)
        name = sp.values.name or "a sparse tensor"
        nnz, rank = values.size, len(sp.dims)
        if any(d < 0 for d in sp.dims) or len(values.shape) != 1 or indices.dtype is not DType.i64 \
                or indices.shape not in ((nnz,), (nnz, rank)):
            raise QCError(f"sparse tensor '{name}' in {path} is malformed: values {list(values.shape)}, indices "
                          f"{indices.dtype}{list(indices.shape)}, dense shape {list(sp.dims)}", where=self.where,
                          hint="values must be [NNZ] and indices int64 [NNZ] or [NNZ, rank]")
        return SparseTensor(values, indices, tuple(sp.dims))


def _topological(nodes: list[onnx.NodeProto], scope: Scope, where: str, path: str) -> list[onnx.NodeProto]:
    """Nodes in an order where producers come first; a cycle is an error naming its nodes."""
    produced: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                produced[o] = i
    in_order = True
    seen: set[str] = set()
    for n in nodes:
        for name in _reads(n):
            if name in produced and name not in seen:
                in_order = False
                break
        if not in_order:
            break
        seen.update(o for o in n.output if o)
    if in_order:
        return nodes
    # Kahn's algorithm, stable with respect to the original order.
    import heapq

    deps: list[set[int]] = [set() for _ in nodes]
    users: list[list[int]] = [[] for _ in nodes]
    for i, n in enumerate(nodes):
        for name in _reads(n):
            j = produced.get(name)
            if j is not None and j != i and j not in deps[i]:
                deps[i].add(j)
                users[j].append(i)
            elif j == i:
                raise QCError(f"node '{n.name or n.op_type}' in {path} reads its own output '{name}' (a cycle)",
                              where=where, hint="ONNX graphs must be acyclic")
    ready = [i for i in range(len(nodes)) if not deps[i]]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for u in users[i]:
            deps[u].discard(i)
            if not deps[u]:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        stuck = [nodes[i].name or nodes[i].op_type for i in range(len(nodes)) if deps[i]]
        raise QCError(f"the graph {path} has a cycle through nodes {', '.join(repr(s) for s in stuck[:6])}",
                      where=where, hint="ONNX graphs must be acyclic")
    return order


def _reads(node: onnx.NodeProto) -> Iterable[str]:
    """Names a node reads: its inputs and the outer names its subgraphs use."""
    yield from (i for i in node.input if i)
    for a in node.attribute:
        for g in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
            yield from _graph_free_names(g)


def _graph_free_names(g: GraphProto) -> set[str]:
    local = {i.name for i in g.input} | {i.name for i in g.initializer}
    local |= {s.values.name for s in g.sparse_initializer}
    free: set[str] = set()
    for n in g.node:
        for name in _reads(n):
            if name not in local:
                free.add(name)
        local.update(n.output)
    free.update(o.name for o in g.output if o.name not in local)
    return free
