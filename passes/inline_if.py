"""The ``inline-if`` pass; its docstring (``qc passes inline-if``) lists every rewrite."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qc.ir.core import Function, Graph, Module, Op, Value
from qc.pm import Pass, PassContext, register_pass

from ._util import (
    can_hold_consts,
    const_array,
    constant_consts,
    erase_op,
    graphs,
    is_default_domain,
    replace_value,
)


@register_pass("inline-if")
@dataclass(frozen=True)
class InlineIf(Pass):
    """inline-if: replace an If whose condition is a constant by the branch it takes.

    Rewrites (every graph: the main graph, function bodies and nested subgraphs)::

        %c = const true
        %y = onnx.If(%c) {then: %t = onnx.Relu(%x)  return %t;  else: ...}
                                                    ->  %y = onnx.Relu(%x)

        %y = onnx.If(%c) {then: return %x; ...}     ->  %y = onnx.Identity(%x)   (%y a graph output,
                                                        %x a value the output cannot take over)

    The taken branch's ops move before the If (they may read values of enclosing graphs, which
    stay visible) and its constants into the enclosing graph (renamed when the name is taken);
    the If's results are replaced by the branch's outputs. Ifs inside the inlined branch are
    inlined in the same run when their conditions are constants too.

    Left alone: an If whose condition is not a constant (an input, a computed value, an
    overridable initializer), or whose branch has constants where the enclosing graph cannot
    hold any (a function body, a subgraph before IR version 4).
    """

    def run(self, module: Module, ctx: PassContext) -> bool:
        constants = constant_consts(module)
        changed = False
        for g, fn in list(graphs(module)):
            again = True
            while again:  # inlined branches may bring Ifs of their own
                again = False
                for op in g.ops:
                    if op.graph is g and is_default_domain(op) and op.op_type == "If" and \
                            self._inline(module, g, fn, op, constants):
                        again = changed = True
        return changed

    @staticmethod
    def _inline(module: Module, g: Graph, fn: Function | None, op: Op, constants: set[int]) -> bool:
        cond = const_array(op.operands[0] if op.operands else None, constants)
        if cond is None or cond.size != 1:
            return False
        branch: Graph = op.attr("then_branch" if bool(np.asarray(cond).reshape(-1)[0]) else "else_branch")
        if branch is None or (branch.consts and not can_hold_consts(module, g, fn)):
            return False
        for name, v in list(branch.consts.items()):
            branch.remove_const(v)
            new, n = name, 0
            while new in g.consts:
                n += 1
                new = f"{name}_{n}"
            v.name = new
            g.consts[new] = v
            constants.add(id(v))
        for inner in branch.ops:
            branch.remove(inner, drop_uses=False)
            g.insert_before(op, inner)
        outputs = list(branch.outputs)
        branch.set_outputs([])
        for r, o in zip(op.results, outputs):
            if r is None or not r.uses():
                continue
            if not replace_value(r, o):
                ident = g.insert_before(op, Op("Identity", [o], results=[Value(r.name, r.type or o.type)]))
                r.name = r.name + ".replaced" if r.name else ""
                r.replace_all_uses_with(ident.results[0])
        erase_op(op)
        return True
