"""The ``cse`` pass; its docstring (``qc passes cse``) lists every rewrite."""
from __future__ import annotations

from dataclasses import dataclass

from qc.ir.core import Graph, Module, Op
from qc.pm import Pass, PassContext, register_pass

from ._util import NONDETERMINISTIC, attr_key, erase_op, graph_input_consts, payload_key, replace_value

_STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


@register_pass("cse")
@dataclass(frozen=True)
class CSE(Pass):
    """cse: common subexpression elimination.

    Rewrites (every graph: the main graph, function bodies and nested subgraphs)::

        %a = onnx.Relu(%x)
        %b = onnx.Relu(%x)
        %c = onnx.Add(%a, %b)            ->  %a = onnx.Relu(%x)  %c = onnx.Add(%a, %a)

        %a = onnx.Cast(%x) {to = 1}
        %b = onnx.Cast(%x) {to = 10}     ->  unchanged (attributes differ)

        const @k1 : i64[2] = dense[1, 2]
        const @k2 : i64[2] = dense[1, 2]
        %y = onnx.Reshape(%x, @k2)       ->  %y = onnx.Reshape(%x, @k1)     (merge-consts)

    Two ops are the same when they have the same domain, op type, overload, operands (the same
    values, in order), result count (and the same absent results) and attributes: same names,
    kinds and values, floats compared by their float32 bits, tensors by dtype, shape and bytes.
    An op in a subgraph may be replaced by an identical op of an enclosing graph that comes before
    the subgraph's op. Never merged: ops with subgraphs, non-deterministic ops (RandomNormal*,
    RandomUniform*, Multinomial, Bernoulli) and ops of non-standard domains (their semantics,
    e.g. state, are unknown).

    Consts are merged when they have the same dtype, shape and bytes and at most ``max-const-size``
    elements, within one graph; consts that are graph inputs are never merged (a caller may
    override them), except in models of IR version < 4, where every initializer must be an
    input and none can be overridden. Consts are merged first, so ops reading equal consts merge in the same run.

    Graph outputs keep their names: when a duplicate's result is a graph output, the surviving
    result takes its name; when that is impossible (both are outputs), the duplicate stays.
    """

    merge_consts: bool = True
    """also merge consts with the same dtype, shape and bytes"""
    max_const_size: int = 1 << 16
    """largest const (elements) compared byte by byte when merging consts"""

    def run(self, module: Module, ctx: PassContext) -> bool:
        overridable = graph_input_consts(module) if module.ir_version >= 4 else set()
        changed = self._graph(module.graph, [], overridable)
        for f in module.functions:
            changed |= self._graph(f.body, [], overridable)
        return changed

    def _graph(self, g: Graph, outer: list[dict], overridable: set[int]) -> bool:
        changed = self.merge_consts and self._consts(g, overridable)
        table: dict = {}
        scopes = outer + [table]
        for op in g.ops:
            subs = list(op.subgraphs())
            if subs:
                for sub in subs:
                    changed |= self._graph(sub, scopes, overridable)
                continue
            key = self._key(op)
            if key is None:
                continue
            existing = None
            for t in reversed(scopes):
                existing = t.get(key)
                if existing is not None:
                    break
            if existing is None:
                table[key] = op
                continue
            if self._merge(op, existing):
                changed = True
            else:
                table.setdefault(key, op)
        return changed

    @staticmethod
    def _key(op: Op) -> tuple | None:
        if op.domain not in _STANDARD_DOMAINS:
            return None
        if op.domain in ("", "ai.onnx") and op.op_type in NONDETERMINISTIC:
            return None
        attrs = []
        for name in sorted(op.attrs):
            k = attr_key(op.attrs[name])
            if k is None:
                return None
            attrs.append((name, k))
        return ("" if op.domain == "ai.onnx" else op.domain, op.op_type, op.overload,
                tuple(id(v) if v is not None else None for v in op.operands),
                tuple(r is None for r in op.results), tuple(attrs))

    @staticmethod
    def _merge(dup: Op, keep: Op) -> bool:
        pairs = [(d, k) for d, k in zip(dup.results, keep.results) if d is not None]
        # Check every result first: a graph output is renamed onto the survivor, which must
        # be a result of that same graph and not an output already (see replace_value).
        for d, k in pairs:
            outs = [u for u, _ in d.uses() if not isinstance(u, Op)]
            if outs and (any(not isinstance(u, Op) for u, _ in k.uses())
                         or any(g is not keep.graph for g in outs)):
                return False
        for d, k in pairs:
            if d._uses and not replace_value(d, k):
                return False  # unreachable after the checks above
        erase_op(dup)
        return True

    def _consts(self, g: Graph, overridable: set[int]) -> bool:
        seen: dict = {}
        changed = False
        for v in list(g.consts.values()):
            if id(v) in overridable or v.const.size > self.max_const_size:
                continue
            if getattr(v.const, "is_elided", False):
                continue
            key = (payload_key(v.const), v.type)
            first = seen.get(key)
            if first is None:
                seen[key] = v
                continue
            if any(not isinstance(u, Op) for u, _ in v.uses()):
                continue  # a graph output: its name is part of the interface
            v.replace_all_uses_with(first)
            g.remove_const(v)
            if v in g.inputs:  # IR version < 4: every initializer is listed as an input too
                g.inputs.remove(v)
            changed = True
        return changed
