"""The ``dce`` pass; its docstring (``qc passes dce``) lists every rewrite."""
from __future__ import annotations

from dataclasses import dataclass

from qc.ir.core import Graph, Module
from qc.pm import Pass, PassContext, register_pass

from ._util import erase_op, results_unused


@register_pass("dce")
@dataclass(frozen=True)
class DCE(Pass):
    """dce: dead code elimination.

    Rewrites (every graph: the main graph, function bodies and nested subgraphs)::

        %t = onnx.Relu(%x)          // %t has no use
        return %y                   ->  (the Relu is gone)

        %a, %b = onnx.Split(%x)     // neither result used    ->  (gone)
        %a, %b = onnx.Split(%x)     // only %a used           ->  kept as is

        const @w = ...              // no use, not a graph input   ->  (gone)
        const @w = ...              // no use, but a graph input   ->  kept (it is part of the interface)
                                    // ... unless the IR version is < 4: then every initializer must be
                                    // an input, none can be overridden, and both entries go

    An op is dead when none of its results is used by an op, a graph output or an op inside a
    subgraph (uses from subgraphs are ordinary uses in the IR). One reverse sweep per graph reaches
    the fixpoint: removing an op releases its operands, whose producers come earlier and are
    visited afterwards. A live op's subgraphs are swept before the ops that come before it, so
    outer values used only by dead ops inside a branch die in the same sweep. Removing an op
    with subgraphs releases every use its subgraphs hold. ONNX ops have no side effects, so no op
    is kept for that reason.
    """

    remove_consts: bool = True
    """also remove unused consts that are not graph inputs"""

    def run(self, module: Module, ctx: PassContext) -> bool:
        changed = self._sweep(module.graph, module.ir_version < 4)
        for f in module.functions:
            changed |= self._sweep(f.body, False)
        return changed

    def _sweep(self, g: Graph, drop_const_inputs: bool = False) -> bool:
        changed = False
        for op in reversed(g.ops):
            if results_unused(op):
                erase_op(op)
                changed = True
            else:
                for sub in op.subgraphs():
                    changed |= self._sweep(sub)
        if self.remove_consts:
            inputs = {id(v) for v in g.inputs}
            for v in list(g.consts.values()):
                if v._uses:
                    continue
                if id(v) in inputs:
                    if not drop_const_inputs:
                        continue
                    g.inputs.remove(v)
                g.remove_const(v)
                changed = True
        return changed
