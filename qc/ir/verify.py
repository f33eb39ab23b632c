"""The IR verifier: use-def consistency, definition before use, and ops against ONNX schemas.

Schemas come from ``onnx.defs`` (never hand-written): operand and result counts, required
and unknown attributes, and type constraints (``T`` must be the same type wherever it
appears and one of the allowed types). The pass manager runs it after every pass.
"""
from __future__ import annotations

import functools
from typing import Any

import onnx.defs
from onnx import TensorProto

from .core import Graph, Module, Op, Value
from .dtypes import DType
from .errors import VerifyError
from .types import MapType, OptionalType, SequenceType, SparseTensorType, TensorType, Type

SCHEMA_DOMAINS = ("", "ai.onnx.ml", "ai.onnx.preview.training")
_TYPE_NAME = {d: TensorProto.DataType.Name(d.value).lower() for d in DType}


def verify(module: Module) -> None:
    """Raise VerifyError naming the first broken invariant."""
    functions = {(f.domain, f.name) for f in module.functions}
    _verify_graph(module.graph, module.opset_imports, functions, outer=frozenset(), where="main graph")
    for f in module.functions:
        opsets = {**module.opset_imports, **f.opset_imports}
        _verify_graph(f.body, opsets, functions, outer=frozenset(), where=f"function {f.domain}.{f.name}",
                      check_types=False)


def type_string(t: Type) -> str | None:
    """The ONNX type string (``tensor(float)``, ``seq(tensor(int64))``) or None if not fully known."""
    if isinstance(t, TensorType):
        return f"tensor({_TYPE_NAME[t.dtype]})" if t.dtype is not None else None
    if isinstance(t, SparseTensorType):
        return f"sparse_tensor({_TYPE_NAME[t.dtype]})" if t.dtype is not None else None
    if isinstance(t, SequenceType):
        inner = type_string(t.elem)
        return f"seq({inner})" if inner else None
    if isinstance(t, OptionalType):
        inner = type_string(t.elem)
        return f"optional({inner})" if inner else None
    if isinstance(t, MapType):
        inner = type_string(t.value)
        return f"map({_TYPE_NAME[t.key]},{inner})" if inner else None
    return None


def _describe(op: Op) -> str:
    label = op.name or (op.results[0].name if op.results and op.results[0] is not None else "")
    return f"{op.qualified_type} '{label}'" if label else op.qualified_type


def _verify_graph(g: Graph, opsets: dict[str, int], functions: set[tuple[str, str]], outer: frozenset[int], where: str,
                  check_types: bool = True) -> None:
    defined: set[int] = set(outer)
    quantized: list[Value] = []   # checked last: a type may name a value defined after it
    for v in g.inputs:
        defined.add(id(v))
        _note_quantized(v, quantized)
    for name, v in g.consts.items():
        if v.const is None:
            raise VerifyError(f"{where}: const @{name} has no data")
        if v.name != name:
            raise VerifyError(f"{where}: const registered as @{name} is named @{v.name}")
        defined.add(id(v))
        _note_quantized(v, quantized)
    count = 0
    for op in g:
        count += 1
        if op.graph is not g:
            raise VerifyError(f"{where}: {_describe(op)} is listed in the graph but owned by another")
        for i, operand in enumerate(op.operands):
            if operand is None:
                continue
            if (op, i) not in operand._uses:
                raise VerifyError(f"{where}: {_describe(op)} operand {i} (%{operand.name}) "
                                  "is missing from that value's uses")
            if id(operand) not in defined:
                raise VerifyError(f"{where}: {_describe(op)} uses %{operand.name} before it is defined "
                                  "(ops out of order, or a value from another graph)")
        for sub in op.subgraphs():
            _verify_graph(sub, opsets, functions, frozenset(defined), f"{where} / {_describe(op)} subgraph @{sub.name}",
                          check_types)
        for i, r in enumerate(op.results):
            if r is None:
                continue
            if r.producer is not op or r.index != i:
                raise VerifyError(f"{where}: result {i} of {_describe(op)} (%{r.name}) does not point back to its op")
            if id(r) in defined:
                raise VerifyError(f"{where}: %{r.name} is defined twice")
            defined.add(id(r))
            _note_quantized(r, quantized)
            for user, index in r._uses:
                _check_use(r, user, index, where)
        _check_schema(op, opsets, functions, where, check_types)
    if count != len(g):
        raise VerifyError(f"{where}: the op list is corrupt ({count} ops linked, {len(g)} counted)")
    for v in quantized:
        _check_quant(v, defined, where)
    for i, v in enumerate(g.outputs):
        if id(v) not in defined:
            raise VerifyError(f"{where}: output {i} (%{v.name}) is not defined in the graph or an enclosing one")


def _note_quantized(v: Value, quantized: list[Value]) -> None:
    if isinstance(v.type, TensorType) and v.type.quant is not None:
        quantized.append(v)


def _check_quant(v: Value, defined: set[int], where: str) -> None:
    """Quantization legality: an integer storage type, axis in range, positive scale, zero point
    inside the storage range; scale / zero point Values defined here or in an enclosing graph,
    of a float / the storage dtype, with one element per tensor, channel or block."""
    t = v.type
    assert isinstance(t, TensorType) and t.quant is not None
    q = t.quant
    if t.dtype is None or not t.dtype.is_integer:
        raise VerifyError(f"{where}: %{v.name} has quantization parameters but is {t.dtype}, not an integer type")
    if q.axis is not None and t.rank is not None and not -t.rank <= q.axis < t.rank:
        raise VerifyError(f"{where}: %{v.name} is quantized along axis {q.axis}, but its rank is {t.rank}")
    if isinstance(q.scale, (int, float)) and not q.scale > 0:
        raise VerifyError(f"{where}: %{v.name} has scale {q.scale}; scales must be positive")
    if isinstance(q.zero_point, int):
        bits, signed = t.dtype.bits, t.dtype.name.startswith("i")
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        if not low <= q.zero_point <= high:
            raise VerifyError(f"{where}: %{v.name} has zero point {q.zero_point}, "
                              f"outside {t.dtype}'s range {low}..{high}")
    if q.block_size is not None and (q.block_size <= 0 or q.axis is None):
        raise VerifyError(f"{where}: %{v.name} has block size {q.block_size}; blocks need a positive size and an axis")
    for role, param in (("scale", q.scale), ("zero point", q.zero_point)):
        if isinstance(param, Value):
            _check_quant_value(v, t, role, param, defined, where)


def _check_quant_value(v: Value, t: TensorType, role: str, param: Value, defined: set[int], where: str) -> None:
    """One scale or zero point Value of ``v`` (of type ``t``): defined, right dtype, right shape."""
    q = t.quant
    assert q is not None and t.dtype is not None
    subject = f"%{v.name}'s {role} @{param.name}"
    if id(param) not in defined:
        raise VerifyError(f"{where}: {subject} is not a const or value of this graph or an enclosing one "
                          "(removed or replaced by a pass without updating the type?)")
    ptype = param.type
    if not isinstance(ptype, TensorType):
        if ptype is None:
            return
        raise VerifyError(f"{where}: {subject} is not a tensor")
    if ptype.dtype is not None:
        if role == "scale" and not ptype.dtype.is_float:
            raise VerifyError(f"{where}: {subject} is {ptype.dtype}; scales are floating point")
        if role == "zero point" and ptype.dtype is not t.dtype:
            raise VerifyError(f"{where}: {subject} is {ptype.dtype}; the zero point has the storage type {t.dtype}")
    shape = ptype.shape
    if shape is None:
        return
    if q.axis is None:
        if any(d != 1 for d in shape):
            raise VerifyError(f"{where}: {subject} has shape {list(shape)}; per-tensor parameters are one element")
        return
    dims = t.shape
    axis = q.axis % len(dims) if dims is not None and dims else q.axis
    dim = dims[axis] if dims is not None and -len(dims) <= q.axis < len(dims) else None
    if q.block_size is None:
        if len(shape) != 1 or (isinstance(dim, int) and isinstance(shape[0], int) and shape[0] != dim):
            raise VerifyError(f"{where}: {subject} has shape {list(shape)}; per-channel parameters along axis "
                              f"{q.axis} need one element per channel ({dim if isinstance(dim, int) else '?'})")
        return
    if dims is None:
        return
    expected = [-(-d // q.block_size) if i == axis and isinstance(d, int) else d for i, d in enumerate(dims)]
    if len(shape) != len(dims) or any(isinstance(a, int) and isinstance(b, int) and a != b
                                      for a, b in zip(shape, expected)):
        shown = ", ".join("?" if d is None else str(d) for d in expected)
        raise VerifyError(f"{where}: {subject} has shape {list(shape)}; blocks of {q.block_size} along axis "
                          f"{q.axis} need [{shown}] (ceil({dim} / {q.block_size}) blocks)")


def _check_use(v: Value, user: Op | Graph, index: int, where: str) -> None:
    if isinstance(user, Op):
        if user.graph is None or index >= len(user._operands) or user._operands[index] is not v:
            raise VerifyError(f"{where}: %{v.name} lists a use by {_describe(user)} that no longer reads it "
                              "(an op was removed without dropping its operands?)")
    elif index >= len(user.outputs) or user.outputs[index] is not v:
        raise VerifyError(f"{where}: %{v.name} lists a stale graph-output use")


@functools.cache
def _schema(domain: str, op_type: str, version: int) -> Any:
    try:
        return onnx.defs.get_schema(op_type, max_inclusive_version=version, domain=domain)
    except (onnx.defs.SchemaError, TypeError):  # TypeError: a version beyond a C int
        return None


def _check_schema(op: Op, opsets: dict[str, int], functions: set[tuple[str, str]], where: str,
                  check_types: bool) -> None:
    domain = "" if op.domain == "ai.onnx" else op.domain
    version = opsets.get(domain, opsets.get("ai.onnx") if domain == "" else None)
    if version is None and (op.domain, op.op_type) not in functions:
        raise VerifyError(f"{where}: {_describe(op)} is in domain '{domain or 'ai.onnx'}', "
                          "which the model does not import", hint="add the domain to opset_import")
    if (op.domain, op.op_type) in functions or domain not in SCHEMA_DOMAINS:
        return
    if version is None:
        raise VerifyError(f"{where}: {_describe(op)} is in domain '{domain or 'ai.onnx'}', "
                          "which the model does not import", hint="add the domain to opset_import")
    # Whether an op passes depends only on this key: ops of one kind with the same attribute
    # names and operand / result type strings are checked once (a model repeats its layers).
    key = (domain, op.op_type, version, tuple(op.attrs), check_types,
           tuple(type_string(v.type) if v is not None else 0 for v in op.operands),
           tuple(type_string(v.type) if v is not None else 0 for v in op.results))
    if key in _PASSED:
        return
    _check_against_schema(op, domain, version, where, check_types)
    if len(_PASSED) > 100_000:
        _PASSED.clear()
    _PASSED.add(key)


_PASSED: set[tuple[Any, ...]] = set()


def _check_against_schema(op: Op, domain: str, version: int, where: str, check_types: bool) -> None:
    schema = _schema(domain, op.op_type, version)
    if schema is None:
        raise VerifyError(f"{where}: {_describe(op)}: no such operator in '{domain or 'ai.onnx'}' at opset {version}")
    n_in, n_out = len(op.operands), len(op.results)
    if not schema.min_input <= n_in <= schema.max_input:
        raise VerifyError(f"{where}: {_describe(op)} has {n_in} inputs; opset {version} allows "
                          f"{schema.min_input}..{schema.max_input}")
    if not schema.min_output <= n_out <= schema.max_output:
        raise VerifyError(f"{where}: {_describe(op)} has {n_out} outputs; opset {version} allows "
                          f"{schema.min_output}..{schema.max_output}")
    known = schema.attributes
    for name in op.attrs:
        if name not in known:
            raise VerifyError(f"{where}: {_describe(op)} has attribute '{name}', which opset {version} does not define",
                              hint="valid: " + ", ".join(sorted(known)) if known else None)
    for name, a in known.items():
        if a.required and name not in op.attrs:
            raise VerifyError(f"{where}: {_describe(op)} lacks the required attribute '{name}'")
    if check_types:
        _check_types(op, schema, where)


def _check_types(op: Op, schema: Any, where: str) -> None:
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    bound: dict[str, str] = {}

    def check(formal: Any, value: Value | None, role: str) -> None:
        if value is None:
            return
        actual = type_string(value.type)
        param = formal.type_str
        if actual is None:
            return
        if param in allowed:
            if actual not in allowed[param]:
                raise VerifyError(f"{where}: {_describe(op)} {role} %{value.name} is {actual}, but {param} allows "
                                  f"{', '.join(sorted(allowed[param]))}")
            homogeneous = formal.option != formal.option.Variadic or formal.is_homogeneous
            if homogeneous:
                first = bound.setdefault(param, actual)
                if first != actual:
                    raise VerifyError(f"{where}: {_describe(op)} {role} %{value.name} is {actual}, but type {param} "
                                      f"is already {first} for this op")
        elif param != actual and param.startswith(("tensor(", "seq(")):
            raise VerifyError(f"{where}: {_describe(op)} {role} %{value.name} is {actual}, expected {param}")

    for formals, values, role in ((schema.inputs, op.operands, "input"), (schema.outputs, op.results, "output")):
        if not formals:
            continue
        for i, v in enumerate(values):
            formal = formals[min(i, len(formals) - 1)]
            if i >= len(formals) and formal.option != formal.option.Variadic:
                break
            check(formal, v, f"{role} {i}")
