"""Text (.qir) -> qc IR, with lark's LALR parser over grammar.lark.

Parsing has two phases: lark turns the text into small syntax records (an inline
transformer, so no parse tree is kept), then :class:`_Builder` resolves names scope by scope
and builds the IR. Every error is a :class:`~qc.errors.ParseError` reading ``file:line:col: message``.
"""
from __future__ import annotations

import builtins
import functools
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
from lark import Lark, Token, Transformer, v_args

try:
    import lark_cython
except ImportError:  # optional accelerator: same grammar, same results, about 3x faster
    lark_cython = None
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from ._gc import without_gc
from .core import Attr, Function, Graph, Module, Op, Value
from .dtypes import DType
from .errors import ParseError, QCError
from .scope import Scope
from .tensor import SparseTensor, Tensor
from .types import (
    Dim,
    MapType,
    OptionalType,
    QuantParams,
    SequenceType,
    SparseTensorType,
    TensorType,
    Type,
    dim_from_int,
)
from .weights import SidecarReader

_GRAMMAR = os.path.join(os.path.dirname(__file__), "grammar.lark")


@without_gc
def parse_ir(text: str, weights: str | os.PathLike[str] | Mapping[str, np.ndarray] | None = None, *,
             filename: str = "<input>") -> Module:
    """Parse text IR into a Module.

    ``weights`` resolves ``blob(...)`` tensors: a sidecar path, or a mapping from blob key to
    array. Without it a ``weights "FILE"`` line is looked up beside ``filename``; blobs with
    nothing to resolve them become elided tensors that raise when their data is read.
    """
    _CURRENT_FILE[0] = filename
    try:
        # lark types parse() as returning a Tree; with the inline transformer it returns the
        # record of _ToSyntax.start
        syntax = cast(_ModuleSyntax, _lark().parse(text))
    except UnexpectedInput as e:
        raise _syntax_error(e, text, filename) from None
    except VisitError as e:
        if isinstance(e.orig_exc, ParseError):
            raise e.orig_exc from None
        raise
    return _Builder(filename, weights).module(syntax)


@functools.lru_cache(maxsize=1)
def _lark() -> Lark:
    with open(_GRAMMAR) as f:
        grammar = f.read()
    plugins = {"_plugins": lark_cython.plugins} if lark_cython is not None else {}
    return Lark(grammar, parser="lalr", transformer=_ToSyntax(), maybe_placeholders=True, **plugins)


def _syntax_error(e: UnexpectedInput, text: str, filename: str) -> ParseError:
    if isinstance(e, UnexpectedEOF):
        lines = text.splitlines() or [""]
        return ParseError("unexpected end of input" + _expected(e.expected), file=filename,
                          line=len(lines), col=len(lines[-1]) + 1)
    if isinstance(e, UnexpectedToken):
        got = "end of input" if e.token.type == "$END" else repr(str(e.token))
        return ParseError(f"unexpected {got}" + _expected(e.expected), file=filename,
                          line=e.line, col=e.column)
    if isinstance(e, UnexpectedCharacters):
        # lark declares pos_in_stream None on the base class; the lexer sets it to its position
        pos: int | None = getattr(e, "pos_in_stream", None)
        char = text[pos] if pos is not None and pos < len(text) else "?"
        return ParseError(f"unexpected character {char!r}" + _expected(e.allowed or ()), file=filename,
                          line=e.line, col=e.column)
    return ParseError(str(e).splitlines()[0], file=filename, line=getattr(e, "line", 0) or 0,
                      col=getattr(e, "column", 0) or 0)


def _expected(names: Iterable[str]) -> str:
    lark = _lark()
    shown = []
    for name in sorted(names):
        try:
            pattern = lark.get_terminal(name).pattern
        except KeyError:
            continue
        shown.append(repr(pattern.value) if pattern.type == "str" else name.lower())
    if not shown:
        return ""
    return ", expected " + (shown[0] if len(shown) == 1 else "one of " + ", ".join(shown[:12]))


def unquote(token: Token | str) -> bytes:
    """The bytes of a double-quoted literal (escapes: \\\\ \\" \\n \\t \\r \\xNN)."""
    text: str = getattr(token, "value", token)  # lark_cython's tokens are no str: read .value
    body = text[1:-1]
    if "\\" not in body:
        return body.encode()
    out = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode()
            i += 1
            continue
        nxt = body[i + 1]
        if nxt == "x":
            out.append(int(body[i + 2:i + 4], 16))
            i += 4
            continue
        out += {"n": b"\n", "t": b"\t", "r": b"\r", "\\": b"\\", '"': b'"'}.get(nxt, nxt.encode())
        i += 2
    return bytes(out)


def _name(token: Token | str) -> str:
    text: str = getattr(token, "value", token)
    body = text[1:]
    return unquote(body).decode("utf-8", "surrogateescape") if body.startswith('"') else body


# -- phase 1: syntax records ------------------------------------------------------------------
# Tokens are lark's Token, or lark_cython's (same attributes: type, value, line, column) with the
# accelerator. Attribute values are tagged with their kind: ("int", 3), ("strings", [b"a"]),
# ("dict", {key: tagged}), ("tensor", _TensorLit), ("sparse", (TensorType, _TensorLit, _TensorLit)).
_Tagged = tuple[str, Any]
_TaggedDict = tuple[str, dict[str, _Tagged]]  # ("dict", {key: tagged value})
# a const's data: ("dense", DENSE token), ("hex", bytes), ("blob", key, {field: int}, STRING token)
# or ("sparse", values _TensorLit, indices _TensorLit)
_Payload = tuple[Any, ...]


@dataclass
class _TensorLit:
    type: TensorType
    payload: _Payload
    token: Token | None


_ArgSyntax = tuple[str, Token, Type]  # ("value" | "const", name token, type)
_ConstSyntax = tuple[str, Token, Type, _Payload]  # ("const", name token, type, payload)


@dataclass
class _GraphSyntax:
    name: Token
    args: list[_ArgSyntax]
    types: list[Type]
    attrs: dict[str, _Tagged] | None
    body: list[_ConstSyntax | _OpSyntax]
    ret: list[Token]


@dataclass
class _OpSyntax:
    results: list[Token | None]
    domain: str
    op_type: str
    operands: list[Token | None]
    attrs: dict[str, _Tagged] | None
    device: str | None
    types: list[Type] | None
    overload: str
    loc: str
    token: Token


_Item = _ConstSyntax | _GraphSyntax  # a module item
_ModuleSyntax = tuple[str | None, tuple[Token, _TaggedDict, list[_Item]]]  # (weights file, (name, attrs, items))


@v_args(inline=True)
class _ToSyntax(Transformer[Token, _ModuleSyntax]):
    # Each method builds the record of the grammar rule of its name from the rule's children (the
    # [optional] ones None when absent). `dict` and `float` are rules too, so the builtins are
    # named builtins.dict / builtins.float in the signatures (in the class body the names are
    # these methods).

    # module structure
    def start(self, *items: Any) -> _ModuleSyntax:
        return items[0] if len(items) == 2 else None, items[-1]

    def weights_decl(self, s: Token) -> str:
        return unquote(s).decode()

    def module(self, sym: Token, attrs: _TaggedDict, *items: _Item) -> tuple[Token, _TaggedDict, list[_Item]]:
        return sym, attrs, list(items)

    def const(self, sym: Token, type_: Type, payload: _Payload) -> _ConstSyntax:
        return ("const", sym, type_, payload)

    def func(self, sym: Token, args: list[_ArgSyntax], types: list[Type], attrs: _TaggedDict | None,
             body: tuple[list[_ConstSyntax | _OpSyntax], list[Token]]) -> _GraphSyntax:
        return _GraphSyntax(sym, args, types, attrs[1] if attrs else None, body[0], body[1])

    def graph_lit(self, sym: Token, args: list[_ArgSyntax], types: list[Type],
                  body: tuple[list[_ConstSyntax | _OpSyntax], list[Token]]) -> _Tagged:
        return ("graph", _GraphSyntax(sym, args, types, None, body[0], body[1]))

    def args(self, *items: _ArgSyntax) -> list[_ArgSyntax]:
        return list(items)

    def value_arg(self, tok: Token, type_: Type) -> _ArgSyntax:
        return ("value", tok, type_)

    def const_arg(self, tok: Token, type_: Type) -> _ArgSyntax:
        return ("const", tok, type_)

    def types(self, *items: Type) -> list[Type]:
        return list(items)

    def body(self, *items: Any) -> tuple[list[_ConstSyntax | _OpSyntax], list[Token]]:
        return list(items[:-1]), items[-1]

    def ret(self, *items: Token) -> list[Token]:
        return list(items)

    def op(self, results: list[Token | None] | None, opname: Token | tuple[str, str, Token],
           operands: list[Token | None], attrs: _TaggedDict | None, device: Token | None,
           types: list[Type] | None, overload: Token | None, loc: Token | None) -> _OpSyntax:
        domain, op_type, tok = opname if isinstance(opname, tuple) else self.dotted_opname(opname)
        return _OpSyntax(results or [], domain, op_type, operands, attrs[1] if attrs else None,
                         device.value if device is not None else None, types,
                         unquote(overload).decode() if overload else "",
                         unquote(loc.value[4:-1]).decode("utf-8", "surrogateescape") if loc else "", tok)

    def dotted_opname(self, tok: Token) -> tuple[str, str, Token]:
        domain, _, op_type = tok.value.rpartition(".")
        return ("" if domain == "onnx" else domain), op_type, tok

    def quoted_opname(self, domain: Token, op_type: Token) -> tuple[str, str, Token]:
        return unquote(domain).decode(), unquote(op_type).decode(), domain

    def results(self, *items: Token) -> list[Token | None]:
        return [None if t.type == "ABSENT" else t for t in items]

    def operands(self, *items: Token) -> list[Token | None]:
        return [None if t.type == "NONE" else t for t in items]

    def one_type(self, t: Type) -> list[Type]:
        return [t]

    def many_types(self, ts: list[Type]) -> list[Type]:
        return ts

    # attribute values, tagged with their kind
    def dict(self, *entries: tuple[str, _Tagged]) -> _TaggedDict:
        return ("dict", builtins.dict(entries))

    def entry(self, key: str, value: _Tagged) -> tuple[str, _Tagged]:
        return key, value

    def key(self, tok: Token) -> str:
        name: str = tok.value
        return unquote(tok).decode() if tok.type == "STRING" else name

    def int_value(self, tok: Token) -> _Tagged:
        return ("int", int(tok.value))

    def float_value(self, x: builtins.float) -> _Tagged:
        return ("float", x)

    def string_value(self, tok: Token) -> _Tagged:
        return ("string", unquote(tok))

    def true_value(self) -> _Tagged:
        return ("bool", True)

    def false_value(self) -> _Tagged:
        return ("bool", False)

    def list_value(self, *items: _Tagged) -> _Tagged:
        kinds = {k for k, _ in items}
        if kinds <= {"int"}:
            return ("ints", [v for _, v in items])
        if kinds <= {"int", "float"}:
            return ("floats", [builtins.float(np.float32(v)) for _, v in items])
        single = {"string": "strings", "tensor": "tensors", "graph": "graphs", "sparse": "sparses",
                  "type": "types", "dict": "list"}
        if len(kinds) == 1 and next(iter(kinds)) in single:
            return (single[next(iter(kinds))], [v for _, v in items])
        return ("list", [v for _, v in items])

    def empty_list(self, kind: Token) -> _Tagged:
        return (kind.value, [])

    def tensor_lit(self, ttype: TensorType, payload: _Payload) -> tuple[str, _TensorLit]:
        return ("tensor", _TensorLit(ttype, payload, None))

    def sparse_lit(self, ttype: TensorType, values: tuple[str, _TensorLit],
                   indices: tuple[str, _TensorLit]) -> tuple[str, tuple[TensorType, _TensorLit, _TensorLit]]:
        return ("sparse", (ttype, values[1], indices[1]))

    def type_value(self, t: Type) -> _Tagged:
        return ("type", t)

    def ref_value(self, kind: Token, name: Token) -> _Tagged:
        return ("ref", (kind.value, unquote(name).decode()))

    def float(self, tok: Token) -> builtins.float:
        return builtins.float(tok.value)

    # payloads
    def dense(self, tok: Token) -> _Payload:
        return ("dense", tok)

    def hex(self, tok: Token) -> _Payload:
        return ("hex", bytes.fromhex(tok.value[4:-1]))

    def blob(self, key: Token, *kv: Token) -> _Payload:
        fields = {kv[i].value: int(kv[i + 1].value) for i in range(0, len(kv), 2)}
        return ("blob", unquote(key).decode(), fields, key)

    def sparse_payload(self, values: tuple[str, _TensorLit], indices: tuple[str, _TensorLit]) -> _Payload:
        return ("sparse", values[1], indices[1])

    # types
    def unknown_type(self) -> None:
        return None

    def seq_type(self, t: Type) -> SequenceType:
        return SequenceType(t)

    def opt_type(self, t: Type) -> OptionalType:
        return OptionalType(t)

    def map_type(self, key: Token, t: Type) -> MapType:
        return MapType(_dtype(key), t)

    def sparse_type(self, t: TensorType) -> SparseTensorType:
        return SparseTensorType(t.dtype, t.shape)

    def tensor_type(self, tok: Token, quant: QuantParams | None) -> TensorType:
        dtype, shape = _tensor_type_token(tok)
        return TensorType(dtype, shape, quant)

    def quant(self, *entries: _QEntry) -> QuantParams:
        fields = {key: (value, tok) for key, value, _, tok in entries}
        if "scale" not in fields:  # the grammar has one entry at least
            raise _token_error(entries[0][2], "q(...) needs a scale")
        zp, axis, block = fields.get("zp"), fields.get("axis"), fields.get("block")
        return QuantParams(
            scale=fields["scale"][0],
            zero_point=0 if zp is None else zp[0] if isinstance(zp[0], _QuantRef) else _quant_int("zp", *zp),
            axis=None if axis is None else _quant_int("axis", *axis),
            block_size=None if block is None else _quant_int("block", *block))

    def qentry(self, key: Token, value: Token) -> _QEntry:
        text = value.value
        v: _QNumber = (_QuantRef(value) if value.type == "SYMBOL" else builtins.float(text) if value.type == "FLOAT"
                       else int(text))
        if key.value == "scale" and isinstance(v, int):
            v = builtins.float(v)
        return key.value, v, key, value


def _quant_int(key: str, value: _QNumber, tok: Token) -> int:
    """A q(...) entry that must be an integer: the zero point (unless a @name), axis, block."""
    if not isinstance(value, int):
        raise _token_error(tok, f"q(...) {key} must be an integer{' or a @name' if key == 'zp' else ''}, "
                                f"got {tok.value}")
    return value


@functools.lru_cache(maxsize=4096)
def _parse_tensor_type(text: str) -> tuple[DType | None, tuple[Dim, ...] | None]:
    head, _, rest = text.partition("[")
    dtype = None if head == "?" else DType.parse(head)
    body = rest[:-1].strip()
    if body == "*":
        return dtype, None
    if not body:
        return dtype, ()
    dims: list[Dim] = []
    for item in _DIM_ITEM.findall(body):
        item = item.strip()
        if item == "?":
            dims.append(None)
        elif item.startswith('"'):
            dims.append(unquote(item).decode())
        elif item.lstrip("-").isdigit():
            if not -_INT64 <= int(item) < _INT64:
                raise ValueError(f"{item} (beyond 64 bits)")
            dims.append(dim_from_int(int(item)))
        elif _IDENT.match(item):
            dims.append(item)
        else:
            raise ValueError(item)
    return dtype, tuple(dims)


_INT64 = 1 << 63
_DIM_ITEM = re.compile(r'\s*("(?:\\.|[^"\\])*"|[^,]+)\s*(?:,|$)')
_IDENT = re.compile(r"[A-Za-z_]\w*\Z")


class _QuantRef(Value):
    """``@name`` in ``q(...)`` until the builder replaces it by the Value of that name."""

    __slots__ = ("token",)

    def __init__(self, token: Token) -> None:
        super().__init__(_name(token))
        self.token = token


_QNumber = float | int | _QuantRef  # a q(...) entry's value: a number, or the @name of a Value
_QEntry = tuple[str, _QNumber, Token, Token]  # (key, value, key token, value token)


def _has_quant_refs(t: Type) -> bool:
    """Whether ``t`` (or a type inside it) has quantization parameters naming Values."""
    if isinstance(t, TensorType):
        return t.quant is not None and bool(t.quant.values())
    if isinstance(t, (SequenceType, OptionalType)):
        return _has_quant_refs(t.elem)
    if isinstance(t, MapType):
        return _has_quant_refs(t.value)
    return False


def _tensor_type_token(tok: Token) -> tuple[DType | None, tuple[Dim, ...] | None]:
    try:
        return _parse_tensor_type(tok.value)
    except ValueError as e:
        raise _token_error(tok, f"bad dimension '{e}' in type {tok.value}",
                           hint="a dimension is a number, a name, a quoted name, or ?") from None


def _dtype(tok: Token) -> DType:
    try:
        return DType.parse(getattr(tok, "value", tok))
    except ValueError:
        raise _token_error(tok, f"unknown element type '{tok}'",
                           hint="known: " + ", ".join(d.name for d in DType)) from None


def _token_error(tok: Token | None, message: str, hint: str | None = None) -> ParseError:
    return ParseError(message, file=_CURRENT_FILE[0], line=getattr(tok, "line", 0) or 0,
                      col=getattr(tok, "column", 0) or 0, hint=hint)


_CURRENT_FILE = ["<input>"]


# -- phase 2: names, scopes, IR -------------------------------------------------------------------
_Weights = str | os.PathLike[str] | Mapping[str, np.ndarray] | None
_T = TypeVar("_T")


def _static_shape(shape: tuple[Dim, ...] | None) -> tuple[int, ...] | None:
    """``shape`` when every dimension is a number (as TensorType.is_static), else None."""
    if shape is None:
        return None
    dims = tuple(d for d in shape if isinstance(d, int))
    return dims if len(dims) == len(shape) else None


class _Builder:
    def __init__(self, filename: str, weights: _Weights) -> None:
        self.filename = filename
        self.weights = weights
        self.sidecar: SidecarReader | None = None
        # values and type attributes whose q(...) name Values, with the scope to resolve them in
        self.quant_refs: list[tuple[Value | Attr, Scope]] = []

    def err(self, tok: Token | None, message: str, hint: str | None = None) -> ParseError:
        return ParseError(message, file=self.filename, line=getattr(tok, "line", 0) or 0,
                          col=getattr(tok, "column", 0) or 0, hint=hint)

    def module(self, syntax: _ModuleSyntax) -> Module:
        weights_ref, (sym, attrs, items) = syntax
        if isinstance(self.weights, (str, os.PathLike)):
            self.sidecar = SidecarReader(os.fspath(self.weights))
        elif self.weights is None and weights_ref is not None:
            here = os.path.dirname(os.path.abspath(self.filename)) if self.filename != "<input>" else "."
            base = os.path.realpath(here)
            path = os.path.realpath(os.path.join(base, weights_ref))
            if os.path.isabs(weights_ref) or os.path.commonpath([base, path]) != base:
                raise QCError(f"the weights sidecar '{weights_ref}' named on its first line is outside the .qir "
                              "file's directory, which qc refuses", where=self.filename,
                              hint="the sidecar must be a relative path inside the .qir file's directory "
                                   "(no absolute path, no '..', no symlink leading out)")
            if not os.path.exists(path):
                raise QCError(f"the weights sidecar '{weights_ref}' named on its first line is missing",
                              where=self.filename,
                              hint=f"put {weights_ref} beside the .qir file (it is written with it)")
            self.sidecar = SidecarReader(path)
        plain = _plain(attrs)
        funcs = [i for i in items if isinstance(i, _GraphSyntax)]
        mains = [f for f in funcs if not (f.attrs and "domain" in f.attrs)]
        if len(mains) != 1:
            raise self.err(sym, f"a module needs exactly one main func (one without a domain), found {len(mains)}")
        main = mains[0]
        scope = Scope()
        graph = Graph(_name(main.name))
        for item in items:
            if isinstance(item, tuple) and item[0] == "const":
                self.const(graph, scope, item)
        self.graph_into(graph, main, scope)
        graph.name = _name(sym)
        if main.attrs and "doc" in main.attrs:
            graph.doc = unquote_str(main.attrs["doc"])
        header = _Header(self, sym, plain)
        module = Module(graph=graph, opset_imports=header.opsets("opset_import"),
                        ir_version=header.int64("ir_version", 10),
                        producer_name=header.text("producer_name"), producer_version=header.text("producer_version"),
                        domain=header.text("domain"), model_version=header.int64("model_version", 0),
                        doc=header.text("doc"), metadata=header.metadata("metadata"))
        for f in funcs:
            if f is not main:
                module.functions.append(self.function(f))
        self.resolve_quant_refs()
        return module

    def resolve_quant_refs(self) -> None:
        """Replace each ``@name`` of a q(...) by the Value of that name in its graph or an
        enclosing one (done last: a type may name a const declared after it, or a later result)."""
        for holder, scope in self.quant_refs:
            if isinstance(holder, Value):
                holder.type = self.resolved_type(holder.type, scope, holder.name)
            elif holder.kind == "type":
                holder.value = self.resolved_type(holder.value, scope, None)
            else:
                holder.value = [self.resolved_type(t, scope, None) for t in holder.value]

    def resolved_type(self, t: Type, scope: Scope, owner: str | None) -> Type:
        if isinstance(t, SequenceType):
            return SequenceType(self.resolved_type(t.elem, scope, owner))
        if isinstance(t, OptionalType):
            return OptionalType(self.resolved_type(t.elem, scope, owner))
        if isinstance(t, MapType):
            return MapType(t.key, self.resolved_type(t.value, scope, owner))
        if not isinstance(t, TensorType) or t.quant is None:
            return t
        q = t.quant
        return TensorType(t.dtype, t.shape, QuantParams(
            scale=self.resolved_ref(q.scale, scope, owner, "scale"),
            zero_point=self.resolved_ref(q.zero_point, scope, owner, "zero point"),
            axis=q.axis, block_size=q.block_size))

    def resolved_ref(self, x: _T, scope: Scope, owner: str | None, role: str) -> _T | Value:
        if not isinstance(x, _QuantRef):
            return x
        v = scope.get(x.name)
        if v is None:
            subject = f"%{owner}" if owner is not None else "a type attribute"
            raise self.err(x.token, f"the {role} of {subject} is {x.token.value}, which names no const or value",
                           hint="declare the const holding the quantization parameters in this graph "
                                "or an enclosing one")
        return v

    def function(self, f: _GraphSyntax) -> Function:
        fattrs = f.attrs or {}
        body = Graph(_name(f.name))
        self.graph_into(body, f, Scope())
        defaults = {k: self.attr(v, None, k) for k, v in fattrs.get("attribute_defaults", ("dict", {}))[1].items()}
        params = [s.decode() for s in _plain(fattrs.get("attributes", ("strings", []))) ] + list(defaults)
        header = _Header(self, f.name, {k: _plain(v) for k, v in fattrs.items()})
        return Function(domain=header.text("domain"), name=body.name, body=body, attr_params=params,
                        attr_defaults=defaults, opset_imports=header.opsets("opset_import"),
                        overload=header.text("overload"), doc=header.text("doc"),
                        metadata=header.metadata("metadata"))

    def define(self, scope: Scope, tok: Token, value: Value) -> Value:
        if value.name in scope.names:
            raise self.err(tok, f"'{tok.value}' is defined twice")
        scope.names[value.name] = value
        if _has_quant_refs(value.type):
            self.quant_refs.append((value, scope))
        return value

    def const(self, graph: Graph, scope: Scope, item: _ConstSyntax) -> Value:
        _, sym, type_, payload = item
        data = self.payload(type_, payload, sym, _name(sym))
        v = self.define(scope, sym, Value(_name(sym), type_, const=data))
        graph.consts[v.name] = v
        return v

    def graph_into(self, graph: Graph, syntax: _GraphSyntax, scope: Scope) -> Graph:
        for kind, tok, type_ in syntax.args:
            if kind == "const":
                v = scope.names.get(_name(tok))
                if v is None or v.const is None:
                    raise self.err(tok, f"input {tok.value} names no const of this graph",
                                   hint="declare it with `const` first")
                graph.inputs.append(v)
            else:
                graph.inputs.append(self.define(scope, tok, Value(_name(tok), type_)))
        for item in syntax.body:
            if isinstance(item, tuple):
                self.const(graph, scope, item)
            else:
                graph.append(self.op(item, scope))
        if len(syntax.ret) != len(syntax.types):
            raise self.err(syntax.name, f"{syntax.name.value} declares {len(syntax.types)} results "
                                        f"but returns {len(syntax.ret)}")
        for tok, type_ in zip(syntax.ret, syntax.types):
            v = self.lookup(scope, tok)
            if v.type is None and type_ is not None:
                v.type = type_
                if _has_quant_refs(type_):
                    self.quant_refs.append((v, scope))
            graph.add_output(v)
        return graph

    def lookup(self, scope: Scope, tok: Token) -> Value:
        v = scope.get(_name(tok))
        if v is None:
            kind = "const" if tok.value.startswith("@") else "value"
            raise self.err(tok, f"use of undefined {kind} {tok.value}",
                           hint="values must be defined before they are used")
        return v

    def op(self, s: _OpSyntax, scope: Scope) -> Op:
        operands = [self.lookup(scope, t) if t is not None else None for t in s.operands]
        op = Op(s.op_type, operands, domain=s.domain, results=0, name=s.loc, overload=s.overload)
        op.device = s.device
        for key, value in (s.attrs or {}).items():
            op.attrs[key] = self.attr(value, scope, key, s.token)
        present = [t for t in s.results if t is not None]
        types = s.types if s.types is not None else [None] * len(present)
        if len(types) != len(present):
            raise self.err(s.token, f"{len(present)} results but {len(types)} types")
        it = iter(types)
        for tok in s.results:
            op.add_result(None if tok is None else self.define(scope, tok, Value(_name(tok), next(it))))
        return op

    def attr(self, tagged: _Tagged, scope: Scope | None, key: str, tok: Token | None = None) -> Attr:
        kind, v = tagged
        if kind == "ref":
            return Attr(v[0], None, ref=v[1])
        if kind == "tensor":
            return Attr("tensor", self.tensor_lit(v, key))
        if kind == "tensors":
            return Attr("tensors", [self.tensor_lit(t, key) for t in v])
        if kind == "sparse":
            return Attr("sparse", self.sparse_lit(v, key))
        if kind == "sparses":
            return Attr("sparses", [self.sparse_lit(x, key) for x in v])
        if kind == "graph":
            return Attr("graph", self.subgraph(v, scope))
        if kind == "graphs":
            return Attr("graphs", [self.subgraph(g, scope) for g in v])
        if kind == "float":
            return Attr("float", float(np.float32(v)))
        if kind in ("int", "ints") and not all(-_INT64 <= x < _INT64 for x in (v if kind == "ints" else [v])):
            raise self.err(tok, f"attribute '{key}' has an integer beyond 64 bits")
        if kind in ("int", "string", "ints", "floats", "strings", "type", "types"):
            attr = Attr(kind, v)
            if kind in ("type", "types") and any(_has_quant_refs(t) for t in (v if kind == "types" else [v])):
                self.quant_refs.append((attr, scope if scope is not None else Scope()))
            return attr
        raise self.err(tok, f"attribute '{key}' has a value of kind {kind}, which no ONNX attribute can hold")

    def subgraph(self, g: _GraphSyntax, scope: Scope | None) -> Graph:
        graph = Graph(_name(g.name))
        return self.graph_into(graph, g, Scope(scope))

    def tensor_lit(self, lit: _TensorLit, key: str) -> Tensor:
        return self.tensor_payload(lit.type, lit.payload, None, key)

    def sparse_lit(self, v: tuple[TensorType, _TensorLit, _TensorLit], key: str) -> SparseTensor:
        ttype, values, indices = v
        return self.sparse(None, key, ttype.dtype, ttype.shape, values, indices)

    def sparse(self, tok: Token | None, key: str, dtype: DType | None, shape: tuple[Dim, ...] | None,
               values_lit: _TensorLit, indices_lit: _TensorLit) -> SparseTensor:
        """A sparse constant, its values [NNZ] and indices i64 [NNZ] or [NNZ, rank] checked against its type."""
        dense_shape = _static_shape(shape)
        if dense_shape is None or not all(d >= 0 for d in dense_shape):
            raise self.err(tok, f"{key}: a sparse constant needs a static dense shape")
        values, indices = self.tensor_lit(values_lit, key), self.tensor_lit(indices_lit, key)
        nnz = values.size
        if (dtype is not None and values.dtype != dtype) or len(values.shape) != 1 \
                or indices.dtype is not DType.i64 or indices.shape not in ((nnz,), (nnz, len(dense_shape))):
            raise self.err(tok, f"{key}: sparse values {values.dtype}{list(values.shape)} and indices "
                                f"{indices.dtype}{list(indices.shape)} do not fit sparse<{dtype}{list(dense_shape)}>",
                           hint="values are [NNZ] of the declared type, indices i64 [NNZ] or [NNZ, rank]")
        return SparseTensor(values, indices, dense_shape)

    def dense(self, tok: Token, dtype: DType, anchor: Token | None) -> np.ndarray:
        try:
            return _dense_array(tok.value[6:-1], dtype)
        except (ValueError, KeyError, OverflowError) as e:
            raise self.err(tok, f"bad {dtype} data: {e}") from None

    def payload(self, type_: Type, payload: _Payload, tok: Token | None, key: str) -> Tensor | SparseTensor:
        """A const's data: sparse for a sparse<...> type, else a tensor (see tensor_payload)."""
        if payload[0] == "sparse" and isinstance(type_, SparseTensorType):
            return self.sparse(tok, key, type_.dtype, type_.shape, payload[1], payload[2])
        return self.tensor_payload(type_, payload, tok, key)

    def tensor_payload(self, type_: Type, payload: _Payload, tok: Token | None, key: str) -> Tensor:
        kind = payload[0]
        if kind == "sparse":
            raise self.err(tok, f"sparse data needs a sparse<...> type, got {type_}")
        shape = _static_shape(type_.shape) if isinstance(type_, TensorType) else None
        if not isinstance(type_, TensorType) or type_.dtype is None or shape is None:
            raise self.err(tok, "a constant needs a tensor type with a known dtype and static shape")
        dtype = type_.dtype
        size = math.prod(shape)  # a Python int: no overflow for absurd shapes
        if kind == "dense":
            array = self.dense(payload[1], dtype, tok)
            if array.size != size:
                raise self.err(tok, f"{key}: {array.size} values for a tensor of {size} elements")
            return Tensor.from_array(array.reshape(shape), dtype)
        if kind == "hex":
            from onnx import TensorProto, numpy_helper

            proto = TensorProto(data_type=int(dtype), dims=list(shape), raw_data=payload[1])
            expected = (size * dtype.bits + 7) // 8
            if len(payload[1]) != expected:
                raise self.err(tok, f"{key}: hex data has {len(payload[1])} bytes, "
                                    f"{dtype}{list(shape)} needs {expected}")
            return Tensor.from_array(numpy_helper.to_array(proto), dtype)
        _, blob_key, fields, btok = payload
        nbytes = fields.get("bytes")
        expected = (size * dtype.bits + 7) // 8
        if nbytes is not None and nbytes != expected:
            raise self.err(btok, f"blob '{blob_key}' says {nbytes} bytes but {dtype}{list(shape)} needs {expected}")
        if isinstance(self.weights, Mapping):
            if blob_key not in self.weights:
                raise self.err(btok, f"blob '{blob_key}' is not in the weights given")
            return Tensor.from_array(np.asarray(self.weights[blob_key]).reshape(shape), dtype)
        if self.sidecar is not None and "offset" in fields:
            try:
                return self.sidecar.tensor(dtype, shape, fields["offset"], expected, blob_key)
            except QCError as e:
                raise self.err(btok, e.bare_message) from None
        return Tensor.elided(dtype, shape, blob_key)


class _Header:
    """Typed reads of a module's or function's header attributes, each an error at ``tok`` if
    it has the wrong kind or does not fit the ONNX field (int64)."""

    def __init__(self, builder: _Builder, tok: Token, plain: dict[str, Any]) -> None:
        self.builder, self.tok, self.plain = builder, tok, plain

    def fail(self, key: str, expected: str) -> ParseError:
        return self.builder.err(self.tok, f"header attribute '{key}' must be {expected}, got {self.plain[key]!r:.60}")

    def int64(self, key: str, default: int) -> int:
        v = self.plain.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or not -_INT64 <= v < _INT64:
            raise self.fail(key, "a 64-bit integer")
        return v

    def text(self, key: str) -> str:
        v = self.plain.get(key, "")
        if isinstance(v, bytes):
            return v.decode("utf-8", "surrogateescape")
        if not isinstance(v, str):
            raise self.fail(key, "a string")
        return v

    def opsets(self, key: str) -> dict[str, int]:
        v = self.plain.get(key, {})
        if not isinstance(v, dict) or not all(isinstance(n, int) and not isinstance(n, bool)
                                              and -_INT64 <= n < _INT64 for n in v.values()):
            raise self.fail(key, 'a dict of domain = version, e.g. {"" = 17}')
        return {str(k): n for k, n in v.items()}

    def metadata(self, key: str) -> list[tuple[str, str]]:
        v = self.plain.get(key, {})
        if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
            raise self.fail(key, 'a dict of key = "value" strings')
        return list(v.items())


_QUOTED = re.compile(r'"(?:\\.|[^"\\])*"')
_BOOLS = {"true": True, "false": False}


def _dense_array(body: str, dtype: DType) -> np.ndarray:
    """The elements of ``dense[...]`` (body without the brackets) as an array of ``dtype``."""
    if dtype is DType.str:
        items = _QUOTED.findall(body)
        if _QUOTED.sub("", body).replace(",", "").strip():
            raise ValueError("string tensors hold only quoted strings")
        return np.array([unquote(s) for s in items], dtype=object)
    items = [s.strip() for s in body.split(",")] if body.strip() else []
    if dtype is DType.bool:
        return np.array([_BOOLS[s] for s in items], dtype=np.bool_)
    if dtype.is_float:
        return np.array([float(s) for s in items], dtype=np.float64).astype(dtype.numpy)
    if dtype.is_integer:
        if any("." in s or "e" in s.lower() for s in items):
            raise ValueError(f"{dtype} elements must be integers")
        wide = np.uint64 if dtype is DType.u64 else np.int64
        return np.array([int(s) for s in items], dtype=wide).astype(dtype.numpy)
    raise ValueError(f"{dtype} data must be written as hex\"...\"")


def unquote_str(tagged: _Tagged | bytes | str) -> str:
    v = tagged[1] if isinstance(tagged, tuple) else tagged
    return v.decode() if isinstance(v, bytes) else str(v)


def _plain(tagged: _Tagged | dict[str, _Tagged]) -> Any:
    """Tagged attribute values -> plain Python (for module and function headers)."""
    if isinstance(tagged, dict):
        return {k: _plain(v) for k, v in tagged.items()}
    kind, v = tagged
    if kind == "dict":
        return {k: _plain(x) for k, x in v.items()}
    if kind == "string":
        return v.decode("utf-8", "surrogateescape")
    if kind == "list":
        return [_plain(x) if isinstance(x, tuple) else x for x in v]
    return v
