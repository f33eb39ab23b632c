"""qc IR -> text (the ``.qir`` format; grammar in grammar.lark, spec in docs/ir.md).

Constants with more than ``elide_above`` elements print as ``blob(...)`` references; with a
:class:`~qc.ir.weights.SidecarWriter` their bytes go to the sidecar and the reference
carries the offset, so the text plus the sidecar reload completely.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from ._gc import without_gc
from .core import Attr, Function, Graph, Module, Op, Value
from .dtypes import DType
from .naming import assign_unique_names
from .tensor import SparseTensor, Tensor
from .types import (
    Dim,
    MapType,
    NegativeDim,
    OptionalType,
    QuantParams,
    QuantRef,
    SequenceType,
    SparseTensorType,
    TensorType,
    Type,
)
from .weights import SidecarWriter

KEYWORDS = frozenset({
    "module", "func", "graph", "const", "return", "attributes", "on", "loc", "none", "dense",
    "blob", "hex", "seq", "opt", "map", "sparse", "type", "ref", "q", "true", "false", "inf",
    "nan", "weights", "ints", "floats", "strings", "tensors", "graphs", "sparses", "types", "_",
})
_BARE_NAME = re.compile(r"[\w.\-/]+(:+[\w.\-/]+)*\Z", re.ASCII)
_IDENT = re.compile(r"[A-Za-z_]\w*\Z", re.ASCII)
_LIST_KINDS = {"ints", "floats", "strings", "tensors", "graphs", "sparses", "types"}


@without_gc
def print_ir(module: Module, elide_above: int | None = 16, *, sidecar: SidecarWriter | None = None,
             header: str | None = None) -> str:
    """The module as text. ``elide_above=None`` prints every tensor in full."""
    assign_unique_names(module)
    return _Printer(elide_above, sidecar).module(module, header)


# -- leaf formatting -------------------------------------------------------------------------
def quote(data: bytes | str) -> str:
    """A double-quoted string literal; bytes outside printable ASCII print as \\xNN."""
    if isinstance(data, str):
        data = data.encode()
    out = ['"']
    for b in data:
        if b == 0x22:
            out.append('\\"')
        elif b == 0x5C:
            out.append("\\\\")
        elif b == 0x0A:
            out.append("\\n")
        elif b == 0x09:
            out.append("\\t")
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
    out.append('"')
    return "".join(out)


def name_token(sigil: str, name: str) -> str:
    return sigil + (name if _BARE_NAME.match(name) else quote(name))


def key_token(name: str) -> str:
    return name if _IDENT.match(name) and name not in KEYWORDS else quote(name)


def format_float(x: float) -> str:
    """A float32 attribute value, shortest form that reads back to the same float32."""
    return str(np.float32(x))


def format_type(t: Type) -> str:
    if t is None:
        return "?"
    if isinstance(t, TensorType):
        text = _tensor_type(t.dtype, t.shape)
        return text + _quant(t.quant) if t.quant is not None else text
    if isinstance(t, SparseTensorType):
        return f"sparse<{_tensor_type(t.dtype, t.shape)}>"
    if isinstance(t, SequenceType):
        return f"seq<{format_type(t.elem)}>"
    if isinstance(t, OptionalType):
        return f"opt<{format_type(t.elem)}>"
    if isinstance(t, MapType):
        return f"map<{t.key.name}, {format_type(t.value)}>"
    raise TypeError(f"unknown type {t!r}")


def _tensor_type(dtype: DType | None, shape: tuple[Dim, ...] | None) -> str:
    head = dtype.name if dtype is not None else "?"
    if shape is None:
        return f"{head}[*]"
    dims = ", ".join(str(d) if isinstance(d, (int, NegativeDim)) else "?" if d is None else key_token(d) for d in shape)
    return f"{head}[{dims}]"


def _quant(q: QuantParams) -> str:
    parts = [f"scale = {_qnum(q.scale, float)}", f"zp = {_qnum(q.zero_point, int)}"]
    if q.axis is not None:
        parts.append(f"axis = {q.axis}")
    if q.block_size is not None:
        parts.append(f"block = {q.block_size}")
    return f" q({', '.join(parts)})"


def _qnum(x: float | QuantRef, kind: type) -> str:
    """A quantization parameter: a number, or ``@name`` of the Value holding it."""
    if isinstance(x, (int, float, np.integer, np.floating)):
        return repr(float(x)) if kind is float else str(int(x))
    return name_token("@", x.name)


_FLOAT_FORMAT = {DType.f32: np.float32, DType.f16: np.float16}


def format_dense(t: Tensor) -> str:
    """``dense[...]`` (flat, row-major) when every element reads back bit-exactly, else ``hex"..."``."""
    a = t.numpy().reshape(-1)
    d = t.dtype
    if d is DType.str:
        return "dense[" + ", ".join(quote(s if isinstance(s, bytes) else str(s)) for s in a) + "]"
    if d is DType.bool:
        return "dense[" + ", ".join("true" if x else "false" for x in a) + "]"
    if d.is_integer:
        ints = a.tolist() if a.dtype.kind in "iu" else a.astype(np.int64).tolist()
        return "dense[" + ", ".join(map(str, ints)) + "]"
    if d.is_float:
        scalar = _FLOAT_FORMAT.get(d)
        items = [str(scalar(x)) for x in a] if scalar else [repr(float(x)) for x in a]
        back = np.array([float(s) for s in items], dtype=np.float64).astype(d.numpy)
        if back.tobytes() == a.tobytes():
            return "dense[" + ", ".join(items) + "]"
    return f'hex"{t.raw_bytes().hex()}"'


class _Printer:
    def __init__(self, elide_above: int | None, sidecar: SidecarWriter | None):
        self.elide_above = elide_above
        self.sidecar = sidecar
        self.lines: list[str] = []

    # -- structure ---------------------------------------------------------------------
    def module(self, m: Module, header: str | None) -> str:
        if header:
            self.lines.extend(f"// {line}" for line in header.splitlines())
        if self.sidecar is not None:
            self.lines.append(f"weights {quote(self.sidecar.reference)}")
        attrs = {"ir_version": m.ir_version,
                 "opset_import": dict(m.opset_imports)}
        for key, value, default in (("producer_name", m.producer_name, ""),
                                    ("producer_version", m.producer_version, ""),
                                    ("domain", m.domain, ""), ("model_version", m.model_version, 0),
                                    ("doc", m.doc, "")):
            if value != default:
                attrs[key] = value
        if m.metadata:
            attrs["metadata"] = dict(m.metadata)
        self.lines.append(f"module {name_token('@', m.graph.name)} {self.plain_dict(attrs)} {{")
        self.consts(m.graph, "  ")
        self.func(m.graph, "  ", {"doc": m.graph.doc} if m.graph.doc else {}, name="main")
        for f in m.functions:
            self.func(f.body, "  ", self.function_attrs(f))
        self.lines.append("}")
        return "\n".join(self.lines) + "\n"

    def function_attrs(self, f: Function) -> dict:
        attrs: dict = {"domain": f.domain}
        if f.overload:
            attrs["overload"] = f.overload
        plain = [p for p in f.attr_params if p not in f.attr_defaults]
        if plain:
            attrs["attributes"] = plain
        if f.attr_defaults:
            attrs["attribute_defaults"] = _AttrDict(f.attr_defaults)
        attrs["opset_import"] = dict(f.opset_imports)
        if f.doc:
            attrs["doc"] = f.doc
        if f.metadata:
            attrs["metadata"] = dict(f.metadata)
        return attrs

    def consts(self, g: Graph, indent: str) -> None:
        for v in g.consts.values():
            self.lines.append(f"{indent}const {name_token('@', v.name)} : {format_type(v.type)} = "
                              f"{self.payload(v.data(), v.name, indent)}")

    def signature(self, keyword: str, g: Graph, indent: str, name: str | None = None) -> str:
        args = []
        for v in g.inputs:
            if v.const is not None:
                args.append(f"{name_token('@', v.name)}: {format_type(v.type)}")
            elif v.type is None and keyword == "func":
                args.append(name_token("%", v.name))
            else:
                args.append(f"{name_token('%', v.name)}: {format_type(v.type)}")
        results = ", ".join(format_type(v.type) for v in g.outputs)
        return f"{keyword} {name_token('@', g.name if name is None else name)}({', '.join(args)}) -> ({results})"

    def func(self, g: Graph, indent: str, attrs: dict, name: str | None = None) -> None:
        head = self.signature("func", g, indent, name)
        if attrs:
            head += f" attributes {self.plain_dict(attrs)}"
        self.lines.append(f"{indent}{head} {{")
        if name is None:  # a local function: its consts live in its body (the main graph's print at module level)
            self.consts(g, indent + "  ")
        self.body(g, indent + "  ")
        self.lines.append(f"{indent}}}")

    def body(self, g: Graph, indent: str) -> None:
        for op in g:
            self.lines.append(indent + self.op(op, indent))
        self.lines.append(indent + "return " + ", ".join(self.ref(v) for v in g.outputs) if g.outputs
                          else indent + "return")

    def graph_literal(self, g: Graph, indent: str) -> str:
        saved, self.lines = self.lines, []
        inner = indent + "  "
        self.lines.append(self.signature("graph", g, indent) + " {")
        self.consts(g, inner)
        self.body(g, inner)
        self.lines.append(f"{indent}}}")
        text, self.lines = "\n".join(self.lines), saved
        return text

    @staticmethod
    def ref(v: Value | None) -> str:
        if v is None:
            return "none"
        return name_token("@" if v.const is not None else "%", v.name)

    def op(self, op: Op, indent: str) -> str:
        parts = []
        if op.results:
            parts.append(", ".join(name_token("%", r.name) if r is not None else "_" for r in op.results))
            parts.append(" = ")
        parts.append(f"{op.domain or 'onnx'}.{op.op_type}" if _IDENT.match(op.op_type) and
                     re.fullmatch(r"[A-Za-z_][\w\-]*(\.[A-Za-z_][\w\-]*)*", op.domain or "onnx")
                     else f"{quote(op.domain)}::{quote(op.op_type)}")
        parts.append("(" + ", ".join(self.ref(v) for v in op.operands) + ")")
        if op.attrs:
            parts.append(" {" + ", ".join(f"{key_token(k)} = {self.attr(a, k, op, indent)}"
                                         for k, a in op.attrs.items()) + "}")
        if op.device:
            parts.append(f" on {op.device}")
        present = [r for r in op.results if r is not None]
        if len(present) == 1 and len(op.results) == 1:
            parts.append(f" : {format_type(present[0].type)}")
        elif op.results:
            parts.append(" : (" + ", ".join(format_type(r.type) for r in present) + ")")
        if op.overload:
            parts.append(f" overload({quote(op.overload)})")
        if op.name:
            parts.append(f" loc({quote(op.name)})")
        return "".join(parts)

    # -- attributes and literals -------------------------------------------------------
    def attr(self, a: Attr, key: str, op: Op | None, indent: str) -> str:
        if a.ref is not None:
            return f"ref<{a.kind}>({quote(a.ref)})"
        k, v = a.kind, a.value
        if k in _LIST_KINDS and not v:
            return f"{k}[]"
        owner = op.results[0].name if op is not None and op.results and op.results[0] is not None else "attr"
        blob_key = f"{owner}.{key}"
        if k == "int":
            return str(v)
        if k == "float":
            return format_float(v)
        if k == "string":
            return quote(v)
        if k == "ints":
            return "[" + ", ".join(map(str, v)) + "]"
        if k == "floats":
            return "[" + ", ".join(map(format_float, v)) + "]"
        if k == "strings":
            return "[" + ", ".join(map(quote, v)) + "]"
        if k == "tensor":
            return self.tensor_literal(v, blob_key, indent)
        if k == "tensors":
            return "[" + ", ".join(self.tensor_literal(t, f"{blob_key}.{i}", indent) for i, t in enumerate(v)) + "]"
        if k == "sparse":
            return self.sparse_literal(v, blob_key, indent)
        if k == "sparses":
            return "[" + ", ".join(self.sparse_literal(s, f"{blob_key}.{i}", indent) for i, s in enumerate(v)) + "]"
        if k == "graph":
            return self.graph_literal(v, indent)
        if k == "graphs":
            return "[" + ", ".join(self.graph_literal(g, indent) for g in v) + "]"
        if k == "type":
            return f"type<{format_type(v)}>"
        if k == "types":
            return "[" + ", ".join(f"type<{format_type(t)}>" for t in v) + "]"
        raise TypeError(f"unknown attribute kind {k}")

    def tensor_literal(self, t: Tensor, key: str, indent: str) -> str:
        return f"{_tensor_type(t.dtype, t.shape)} {self.payload(t, key, indent)}"

    def sparse_literal(self, s: SparseTensor, key: str, indent: str) -> str:
        return (f"sparse<{_tensor_type(s.dtype, s.shape)}>({self.tensor_literal(s.values, key + '.values', indent)}, "
                f"{self.tensor_literal(s.indices, key + '.indices', indent)})")

    def payload(self, t: Tensor | SparseTensor, key: str, indent: str) -> str:
        if isinstance(t, SparseTensor):
            return (f"sparse({self.tensor_literal(t.values, key + '.values', indent)}, "
                    f"{self.tensor_literal(t.indices, key + '.indices', indent)})")
        elide = t.is_elided or (self.elide_above is not None and t.size > self.elide_above
                                and t.dtype is not DType.str)
        if not elide:
            return format_dense(t)
        if self.sidecar is not None and not t.is_elided:
            offset = self.sidecar.add(t)
            return f"blob({quote(key)}, offset = {offset}, bytes = {t.nbytes})"
        return f"blob({quote(t._elided_key or key)}, bytes = {t.nbytes})"

    def plain_dict(self, d: dict[str, Any]) -> str:
        return "{" + ", ".join(f"{key_token(k)} = {self.plain(v)}" for k, v in d.items()) + "}"

    def plain(self, v: Any) -> str:
        if isinstance(v, _AttrDict):
            return "{" + ", ".join(f"{key_token(k)} = {self.attr(a, k, None, '  ')}" for k, a in v.items()) + "}"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, (str, bytes)):
            return quote(v)
        if isinstance(v, dict):
            return self.plain_dict(v)
        if isinstance(v, list):
            return "[" + ", ".join(self.plain(x) for x in v) + "]"
        raise TypeError(f"cannot print {v!r}")


class _AttrDict(dict):
    """Marks a dict of Attr values (function attribute defaults)."""
