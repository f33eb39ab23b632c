"""Helpers shared by the built-in passes (not a public API)."""
from __future__ import annotations

import re
import struct
from collections.abc import Iterator

import numpy as np

from qc.errors import QCError
from qc.ir.core import Attr, Function, Graph, Module, Op, Value
from qc.ir.tensor import SparseTensor, Tensor
from qc.ir.types import TensorType

NONDETERMINISTIC = frozenset({
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
})
"""Ops of the default domain whose results differ from run to run (never folded or merged)."""


def graphs(module: Module) -> Iterator[tuple[Graph, Function | None]]:
    """Every graph of the module as ``(graph, function)``, outer graphs before nested ones.

    ``function`` is the local function whose body contains the graph (None in the main
    graph and its subgraphs): ONNX functions have no initializers, so passes must not create
    consts there, and their ops use the function's opset imports.
    """
    def rec(g: Graph, fn: Function | None) -> Iterator[tuple[Graph, Function | None]]:
        yield g, fn
        for op in g:
            for sub in op.subgraphs():
                yield from rec(sub, fn)

    yield from rec(module.graph, None)
    for f in module.functions:
        yield from rec(f.body, f)


def opsets_for(module: Module, fn: Function | None) -> dict[str, int]:
    """The opset imports in force in the main graph (``fn`` None) or in a function body."""
    opsets = dict(module.opset_imports)
    if fn is not None:
        opsets.update(fn.opset_imports)
    if "ai.onnx" in opsets and "" not in opsets:
        opsets[""] = opsets["ai.onnx"]
    return opsets


def is_default_domain(op: Op) -> bool:
    return op.domain in ("", "ai.onnx")


def graph_input_consts(module: Module) -> set[int]:
    """ids of consts that are also graph inputs (ONNX "overridable initializers")."""
    out: set[int] = set()
    for g, _ in graphs(module):
        for v in g.inputs:
            if v.const is not None:
                out.add(id(v))
    return out


def constant_consts(module: Module) -> set[int]:
    """ids of consts whose data a pass may treat as fixed.

    Follows onnxruntime: a const that is also a graph input is overridable (not constant)
    from IR version 4 on; before IR version 4 every initializer had to be listed as an input
    and all of them are constant.
    """
    overridable = graph_input_consts(module) if module.ir_version >= 4 else set()
    out: set[int] = set()
    for g, _ in graphs(module):
        for v in g.consts.values():
            if id(v) not in overridable:
                out.add(id(v))
    return out


def const_array(v: Value | None, constants: set[int] | None = None) -> np.ndarray | None:
    """The data of a dense, non-elided, constant value, else None."""
    if v is None or v.const is None or not isinstance(v.const, Tensor) or v.const.is_elided:
        return None
    if constants is not None and id(v) not in constants:
        return None
    return v.const.numpy()


def output_users(v: Value) -> list[Graph]:
    """The graphs that list ``v`` among their outputs."""
    return [user for user, _ in v.uses() if isinstance(user, Graph)]


OUTLIER_SUFFIX = ".outliers"
"""split-outliers names the weight rows of a MatMul's outlier part ``@W.outliers``"""


def is_outlier_part(op: Op) -> bool:
    """The outlier part of a MatMul that split-outliers made (a float16 or float32 weight named
    ``@W.outliers``): the quantizing passes leave it in float."""
    if op.op_type != "MatMul" or len(op.operands) < 2:
        return False
    w = op.operands[1]
    return w is not None and w.const is not None and w.name.endswith(OUTLIER_SUFFIX)


def is_any_output(v: Value) -> bool:
    return any(isinstance(user, Graph) for user, _ in v.uses())


def defining_graph(v: Value) -> Graph | None:
    """The graph that defines ``v`` if it is an op result (None for inputs and consts)."""
    return v.producer.graph if v.producer is not None else None


def replace_value(old: Value, new: Value) -> bool:
    """Redirect every use of ``old`` to ``new``, keeping graph output names stable.

    When ``old`` is a graph output, ``new`` takes over its name; that is only done when
    ``new`` is an op result of that same graph and not already an output of any graph (a
    graph output that is an input, a const, an outer value or listed twice would change the
    graph's interface). Returns False, changing nothing, when the replacement is not safe.
    """
    if old is new:
        return False
    outs = output_users(old)
    if outs:
        if new.const is not None or new.producer is None or is_any_output(new):
            return False
        if any(g is not new.producer.graph for g in outs):
            return False
        new.name = old.name
        old.name = old.name + ".replaced" if old.name else ""
    old.replace_all_uses_with(new)
    return True


def erase_op(op: Op) -> None:
    """Remove ``op`` from its graph, releasing every use it holds, including in its subgraphs."""
    op.graph.remove(op)


def results_unused(op: Op) -> bool:
    return all(r is None or not r._uses for r in op.results)


# -- structural keys (CSE) -------------------------------------------------------------------
def tensor_key(t: Tensor) -> tuple:
    """Equality key of a tensor: dtype, shape and exact bytes (None when the data is elided)."""
    if t.is_elided:
        return ("elided", id(t))
    if t.dtype.bits == 0:  # strings
        return (int(t.dtype), t.shape, tuple(bytes(x) if isinstance(x, bytes) else str(x).encode()
                                             for x in t.numpy().reshape(-1)))
    return (int(t.dtype), t.shape, t.raw_bytes())


def payload_key(p: Tensor | SparseTensor) -> tuple:
    if isinstance(p, SparseTensor):
        return ("sparse", p.shape, tensor_key(p.values), tensor_key(p.indices))
    return ("dense",) + tensor_key(p)


def _float_bits(x: float) -> bytes:
    try:
        return struct.pack("<f", x)  # attributes are float32 in ONNX
    except OverflowError:
        return struct.pack("<d", x)


def attr_key(a: Attr) -> tuple | None:
    """Equality key of an attribute value (floats by their bits); None when not comparable."""
    if a.ref is not None:
        return (a.kind, "ref", a.ref)
    k, v = a.kind, a.value
    if k in ("graph", "graphs"):
        return None
    if k == "float":
        return (k, _float_bits(v))
    if k == "floats":
        return (k, tuple(_float_bits(x) for x in v))
    if k in ("int", "string"):
        return (k, v)
    if k in ("ints", "strings"):
        return (k, tuple(v))
    if k in ("tensor", "sparse"):
        return (k, payload_key(v))
    if k in ("tensors", "sparses"):
        return (k, tuple(payload_key(t) for t in v))
    if k in ("type", "types"):
        return (k, v if k == "type" else tuple(v))
    return None


# -- creating consts -------------------------------------------------------------------------
def can_hold_consts(module: Module, g: Graph, fn: Function | None) -> bool:
    """Whether a pass may add consts (ONNX initializers) to ``g``.

    Not in function bodies (FunctionProto has no initializers) and, before IR version 4
    (where every initializer must also be a graph input), not in subgraphs, whose inputs
    are positional.
    """
    return fn is None and (module.ir_version >= 4 or g is module.graph)




def lift_constant_weights(module: Module, op_types: set[str], position: int = 1) -> int:
    """Weights stored as Constant ops (torch.onnx exports them so), read at operand ``position``
    of an op of ``op_types`` anywhere in the main graph or its subgraphs, become consts of the
    Constant op's graph, so that the weight passes see them as the weights they are::

        %w = onnx.Constant() {value = f32[K, N] ...}   ->  const @w : f32[K, N] = ...
        %y = onnx.MatMul(%x, %w)                            %y = onnx.MatMul(%x, @w)

    Not where a graph cannot hold consts (see :func:`can_hold_consts`). Returns how many."""
    lifted = 0
    for op in list(module.graph.walk()):
        if op.op_type not in op_types or not is_default_domain(op) or len(op.operands) <= position:
            continue
        w = op.operands[position]
        c = w.producer if w is not None else None
        if c is None or c.op_type != "Constant" or not is_default_domain(c) or c.graph is None \
                or len(c.attrs) != 1 or not can_hold_consts(module, c.graph, None):
            continue
        a = c.attrs.get("value")
        if a is None or a.ref is not None or a.kind != "tensor" or not isinstance(a.value, Tensor) \
                or a.value.is_elided or a.value.dtype.name != "f32" or is_any_output(w):
            continue  # a graph output keeps its producer: a const could not keep the output's name
        g = c.graph
        const = g.add_const(w.name, a.value)
        if isinstance(w.type, TensorType) and w.type.quant is not None:
            const.type = w.type
        w.replace_all_uses_with(const)
        g.remove(c)
        lifted += 1
    return lifted


def parent_ops(module: Module) -> dict[int, Op]:
    """id(subgraph) -> the op holding it, for every subgraph of the main graph."""
    return {id(sub): op for op in module.graph.walk() for sub in op.subgraphs()}


def ancestor_in(op: Op, graph: Graph, parents: dict[int, Op]) -> Op | None:
    """``op`` itself if it is in ``graph``, else the op of ``graph`` whose subgraph holds it."""
    while op is not None and op.graph is not graph:
        op = parents.get(id(op.graph))
    return op


def compile_regex(pass_name: str, option: str, pattern: str) -> re.Pattern[str] | None:
    """An option's regular expression, or None when empty; a bad one is the user's error."""
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise QCError(f"{pass_name}: {option} '{pattern}' is not a valid regular expression: {e}",
                      hint=f"e.g. {option}=lm_head|embed") from None


def drop_removed_quant_refs(module: Module) -> None:
    """Drop the quantization parameters of values whose scale or zero point Value is gone
    (a pass removed the const they named): the annotation no longer has numbers to show."""
    def rec(g: Graph, outer: frozenset[int]) -> None:
        values = [*g.inputs, *g.consts.values(), *(r for op in g for r in op.results if r is not None)]
        visible = outer | {id(v) for v in values}
        for v in values:
            t = v.type
            if isinstance(t, TensorType) and t.quant is not None and \
                    any(id(p) not in visible for p in t.quant.values()):
                v.type = TensorType(t.dtype, t.shape)
        for op in g:
            for sub in op.subgraphs():
                rec(sub, visible)

    rec(module.graph, frozenset())
    for f in module.functions:
        rec(f.body, frozenset())
