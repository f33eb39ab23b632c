"""The qc IR: a mutable SSA graph of ONNX-style ops with use lists.

``Module`` -> main ``Graph`` (+ local ``Function`` s) -> ``Op`` s -> ``Value`` s. Every value
knows its producer and its uses; value identity is object identity. Subgraphs (If/Loop/Scan
bodies) are ``Graph`` s held in attributes; their ops may use values of enclosing graphs
directly, and those uses are recorded like any other.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .tensor import SparseTensor, Tensor
from .types import Type

ATTR_KINDS = ("int", "float", "string", "tensor", "graph", "sparse", "type",
              "ints", "floats", "strings", "tensors", "graphs", "sparses", "types")


@dataclass
class Attr:
    """An attribute value with its ONNX kind; ``ref`` names a function attribute it refers to."""

    kind: str
    value: Any = None
    ref: str | None = None
    doc: str = ""

    @classmethod
    def infer(cls, value: Any) -> Attr:
        """The Attr for a plain Python value (bool/int -> int, str/bytes -> string, ...)."""
        if isinstance(value, Attr):
            return value
        if isinstance(value, (bool, int)):
            return cls("int", int(value))
        if isinstance(value, float):
            return cls("float", value)
        if isinstance(value, (str, bytes)):
            return cls("string", value.encode() if isinstance(value, str) else value)
        if isinstance(value, Tensor):
            return cls("tensor", value)
        if isinstance(value, Graph):
            return cls("graph", value)
        if isinstance(value, (list, tuple)):
            items = list(value)
            if items and all(isinstance(v, (bool, int)) for v in items):
                return cls("ints", [int(v) for v in items])
            if items and all(isinstance(v, (int, float)) for v in items):
                return cls("floats", [float(v) for v in items])
            if items and all(isinstance(v, (str, bytes)) for v in items):
                return cls("strings", [v.encode() if isinstance(v, str) else v for v in items])
        raise TypeError(f"cannot infer an attribute kind for {value!r}")


class Value:
    """An SSA value: a graph input, an op result, or a constant (``const`` is set)."""

    __slots__ = ("name", "type", "producer", "index", "const", "_uses", "meta", "doc")

    def __init__(self, name: str = "", type: Type = None, *, const: Tensor | SparseTensor | None = None):
        self.name = name
        self.type = type
        self.producer: Op | None = None
        self.index = 0
        self.const = const
        # (user, operand index) -> None: an insertion-ordered set, so that adding, removing and
        # finding a use stay O(1) for a value read by thousands of ops (a shared const)
        self._uses: dict[tuple[Op | Graph, int], None] = {}
        self.meta: dict[str, Any] = {}
        self.doc = ""

    def uses(self) -> tuple[tuple[Op | Graph, int], ...]:
        """(user, operand index) pairs; a Graph user means the value is that graph's output."""
        return tuple(self._uses)

    def users(self) -> list[Op]:
        seen: dict[int, Op] = {}
        for user, _ in self._uses:
            if isinstance(user, Op):
                seen.setdefault(id(user), user)
        return list(seen.values())

    @property
    def is_const(self) -> bool:
        return self.const is not None

    def data(self) -> Tensor | SparseTensor:
        """The payload of a const; an error for a value that is not one."""
        if self.const is None:
            raise ValueError(f"{self!r} is not a const")
        return self.const

    @property
    def producer_op(self) -> Op:
        """The op whose result this is; an error for a graph input or a const."""
        if self.producer is None:
            raise ValueError(f"{self!r} is not an op result")
        return self.producer

    def replace_all_uses_with(self, other: Value) -> None:
        for user, index in list(self._uses):
            if isinstance(user, Op):
                user.set_operand(index, other)
            else:
                user.set_output(index, other)

    def __repr__(self) -> str:
        return f"Value(%{self.name})"


class Op:
    """One operation: ``domain.op_type(operands) {attrs} -> results``.

    ``domain`` is the ONNX domain ('' for the default ai.onnx domain). Absent optional inputs
    and outputs are None.
    """

    __slots__ = ("domain", "op_type", "overload", "_operands", "results", "attrs", "name",
                 "doc", "device", "graph", "meta", "_prev", "_next")

    def __init__(self, op_type: str, operands: Iterable[Value | None] = (), *,
                 domain: str = "", results: Iterable[Value | None] | int = 1,
                 attrs: dict[str, Any] | None = None, name: str = "", overload: str = ""):
        self.domain = domain
        self.op_type = op_type
        self.overload = overload
        self._operands: list[Value | None] = []
        self.attrs: dict[str, Attr] = {k: Attr.infer(v) for k, v in (attrs or {}).items()}
        self.name = name
        self.doc = ""
        self.device: str | None = None
        self.graph: Graph | None = None
        self.meta: dict[str, Any] = {}
        self._prev: Op | None = None
        self._next: Op | None = None
        for v in operands:
            self._append_operand(v)
        if isinstance(results, int):
            results = [Value() for _ in range(results)]
        self.results: list[Value | None] = []
        for r in results:
            self.add_result(r)

    # -- operands ----------------------------------------------------------------------
    @property
    def operands(self) -> tuple[Value | None, ...]:
        return tuple(self._operands)

    def _append_operand(self, v: Value | None) -> None:
        self._operands.append(v)
        if v is not None:
            v._uses[(self, len(self._operands) - 1)] = None

    def set_operand(self, index: int, v: Value | None) -> None:
        old = self._operands[index]
        if old is v:
            return
        if old is not None:
            del old._uses[(self, index)]
        self._operands[index] = v
        if v is not None:
            v._uses[(self, index)] = None

    def set_operands(self, values: Iterable[Value | None]) -> None:
        self.drop_operands()
        for v in values:
            self._append_operand(v)

    def drop_operands(self) -> None:
        for i, v in enumerate(self._operands):
            if v is not None:
                del v._uses[(self, i)]
        self._operands = []

    # -- results -----------------------------------------------------------------------
    def add_result(self, v: Value | None = None) -> Value | None:
        if v is not None:
            v.producer, v.index = self, len(self.results)
        self.results.append(v)
        return v

    def input(self, index: int) -> Value:
        """Operand ``index``; an error if the op has fewer operands or that optional input is absent."""
        v = self._operands[index] if -len(self._operands) <= index < len(self._operands) else None
        if v is None:
            raise ValueError(f"{self!r} has no input {index} (it has {len(self._operands)} operands)")
        return v

    def optional_input(self, index: int) -> Value | None:
        """Operand ``index``, or None when it is absent or beyond the operands given."""
        return self._operands[index] if 0 <= index < len(self._operands) else None

    def present_operands(self) -> list[Value]:
        """The operands that are present (absent optional inputs left out)."""
        return [v for v in self._operands if v is not None]

    def output(self, index: int) -> Value:
        """Result ``index``; an error if the op has fewer results or that optional output is absent."""
        v = self.results[index] if -len(self.results) <= index < len(self.results) else None
        if v is None:
            raise ValueError(f"{self!r} has no output {index} (it has {len(self.results)} results)")
        return v

    def optional_output(self, index: int) -> Value | None:
        """Result ``index``, or None when it is absent or beyond the results."""
        return self.results[index] if 0 <= index < len(self.results) else None

    def present_results(self) -> list[Value]:
        """The results that are present (absent optional outputs left out)."""
        return [v for v in self.results if v is not None]

    @property
    def result(self) -> Value:
        """The single result (error for ops with several)."""
        if len(self.results) != 1 or self.results[0] is None:
            raise ValueError(f"{self.qualified_type} has {len(self.results)} results")
        return self.results[0]

    # -- attributes --------------------------------------------------------------------
    def attr(self, name: str, default: Any = None) -> Any:
        a = self.attrs.get(name)
        return default if a is None or a.ref is not None else a.value

    def set_attr(self, name: str, value: Any) -> None:
        self.attrs[name] = Attr.infer(value)

    @property
    def qualified_type(self) -> str:
        return f"{self.domain or 'onnx'}.{self.op_type}"

    def subgraphs(self) -> Iterator[Graph]:
        for a in self.attrs.values():
            if a.kind == "graph" and a.value is not None:
                yield a.value
            elif a.kind == "graphs":
                yield from a.value

    def __repr__(self) -> str:
        outs = ", ".join(f"%{r.name}" if r else "_" for r in self.results)
        return f"Op({outs} = {self.qualified_type})"


class Graph:
    """A body: inputs, constants, an ordered op list and outputs.

    The main graph of a module, a subgraph in an attribute, or a function body.
    """

    def __init__(self, name: str = "", inputs: Iterable[Value] = (), outputs: Iterable[Value] = ()):
        self.name = name
        self.doc = ""
        self.inputs: list[Value] = list(inputs)
        self.consts: dict[str, Value] = {}
        self._outputs: list[Value] = []
        self._first: Op | None = None
        self._last: Op | None = None
        self._count = 0
        self.parent: Op | None = None
        self.value_info_extra: list[Any] = []
        for v in outputs:
            self.add_output(v)

    # -- outputs -----------------------------------------------------------------------
    @property
    def outputs(self) -> tuple[Value, ...]:
        return tuple(self._outputs)

    def add_output(self, v: Value) -> None:
        self._outputs.append(v)
        v._uses[(self, len(self._outputs) - 1)] = None

    def set_output(self, index: int, v: Value) -> None:
        old = self._outputs[index]
        del old._uses[(self, index)]
        self._outputs[index] = v
        v._uses[(self, index)] = None

    def set_outputs(self, values: Iterable[Value]) -> None:
        for i, v in enumerate(self._outputs):
            del v._uses[(self, i)]
        self._outputs = []
        for v in values:
            self.add_output(v)

    # -- constants ---------------------------------------------------------------------
    def add_const(self, name: str, data: Tensor | SparseTensor, type: Type = None) -> Value:
        from .types import SparseTensorType, TensorType  # local: avoid cycle at import

        if type is None:
            type = (SparseTensorType(data.dtype, data.shape) if isinstance(data, SparseTensor)
                    else TensorType(data.dtype, data.shape))
        base, n = name, 0
        while name in self.consts:
            n += 1
            name = f"{base}_{n}"
        v = Value(name, type, const=data)
        self.consts[name] = v
        return v

    def remove_const(self, v: Value) -> None:
        del self.consts[v.name]

    # -- ops (a doubly linked list: safe to mutate while iterating) ---------------------
    def __iter__(self) -> Iterator[Op]:
        op = self._first
        while op is not None:
            nxt = op._next
            yield op
            op = nxt

    def __len__(self) -> int:
        return self._count

    @property
    def ops(self) -> list[Op]:
        return list(self)

    def _link(self, op: Op, prev: Op | None, nxt: Op | None) -> Op:
        if op.graph is not None:
            raise ValueError(f"{op!r} is already in a graph")
        op.graph, op._prev, op._next = self, prev, nxt
        if prev is None:
            self._first = op
        else:
            prev._next = op
        if nxt is None:
            self._last = op
        else:
            nxt._prev = op
        self._count += 1
        return op

    def append(self, op: Op) -> Op:
        return self._link(op, self._last, None)

    def insert_before(self, anchor: Op, op: Op) -> Op:
        return self._link(op, anchor._prev, anchor)

    def insert_after(self, anchor: Op, op: Op) -> Op:
        return self._link(op, anchor, anchor._next)

    def remove(self, op: Op, *, drop_uses: bool = True) -> None:
        """Unlink ``op``; with ``drop_uses`` the uses it holds (its subgraphs' too) are released."""
        if op.graph is not self:
            raise ValueError(f"{op!r} is not in this graph")
        if op._prev is None:
            self._first = op._next
        else:
            op._prev._next = op._next
        if op._next is None:
            self._last = op._prev
        else:
            op._next._prev = op._prev
        op.graph = op._prev = op._next = None
        self._count -= 1
        if drop_uses:
            op.drop_operands()
            for sub in op.subgraphs():
                sub.release()

    def release(self) -> None:
        """Drop every use this graph's ops and outputs hold (before discarding the graph)."""
        for op in self:
            op.drop_operands()
            for sub in op.subgraphs():
                sub.release()
        self.set_outputs([])

    def reorder(self, ops: list[Op]) -> None:
        """Replace the op order by ``ops`` (a permutation of the current ops)."""
        if len(ops) != self._count:
            raise ValueError("reorder needs every op of the graph exactly once")
        self._first = self._last = None
        prev = None
        for op in ops:
            op._prev, op._next = prev, None
            if prev is None:
                self._first = op
            else:
                prev._next = op
            prev = op
        self._last = prev

    def walk(self) -> Iterator[Op]:
        """Every op, including those of nested subgraphs (pre-order)."""
        for op in self:
            yield op
            for g in op.subgraphs():
                yield from g.walk()

    def __repr__(self) -> str:
        return f"Graph(@{self.name}, {self._count} ops)"


@dataclass
class Function:
    """An ONNX model-local function: ``domain.name`` with attribute parameters and a body."""

    domain: str
    name: str
    body: Graph
    attr_params: list[str] = field(default_factory=list)
    attr_defaults: dict[str, Attr] = field(default_factory=dict)
    opset_imports: dict[str, int] = field(default_factory=dict)
    overload: str = ""
    doc: str = ""
    metadata: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Module:
    """A whole model: the main graph, local functions, opset imports and metadata."""

    graph: Graph
    opset_imports: dict[str, int] = field(default_factory=dict)
    functions: list[Function] = field(default_factory=list)
    ir_version: int = 10
    producer_name: str = ""
    producer_version: str = ""
    domain: str = ""
    model_version: int = 0
    doc: str = ""
    metadata: list[tuple[str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.graph.name

    def walk(self) -> Iterator[Op]:
        yield from self.graph.walk()
        for f in self.functions:
            yield from f.body.walk()

    def opset(self, domain: str = "") -> int | None:
        return self.opset_imports.get(domain, self.opset_imports.get("ai.onnx") if domain == "" else None)

    def to_networkx(self) -> Any:
        """The main graph as a networkx.DiGraph of ops (an analysis view, not the storage)."""
        import networkx as nx

        g = nx.DiGraph()
        for op in self.graph:
            g.add_node(op)
            for v in op.operands:
                if v is not None and v.producer is not None and v.producer.graph is self.graph:
                    g.add_edge(v.producer, op, value=v)
        return g


Payload = Tensor | SparseTensor
