"""The ``remove-identity`` pass; its docstring (``qc passes remove-identity``) lists every rewrite."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qc.ir.core import Module, Op
from qc.pm import Pass, PassContext, register_pass

from ._util import const_array, constant_consts, erase_op, graphs, is_default_domain, opsets_for, replace_value


@register_pass("remove-identity")
@dataclass(frozen=True)
class RemoveIdentity(Pass):
    """remove-identity: drop ops that return their input unchanged.

    Rewrites (every graph: the main graph, function bodies and nested subgraphs)::

        %y = onnx.Identity(%x)
        %z = onnx.Relu(%y)                          ->  %z = onnx.Relu(%x)

        %y = onnx.Dropout(%x)                       ->  %x      (opset 7..11: always inference)
        %y = onnx.Dropout(%x, %ratio)               ->  %x      (opset >= 12, no training_mode)
        %y = onnx.Dropout(%x, %r, @false)           ->  %x      (training_mode a const false)
        %y, %mask = onnx.Dropout(%x)                ->  %x      (when %mask is unused)

    Left alone::

        %y, %mask = onnx.Dropout(%x)   with %mask used      (the mask would have to be built)
        %y = onnx.Dropout(%x, %r, %t)  with %t not a const false (training mode)
        %y = onnx.Dropout(%x) {is_test = 0}  (opset < 7: training unless is_test = 1)

    Graph outputs keep their names: when the removed op's result is a graph output, the
    surviving value ``%x`` is renamed to the output's name. That is only possible when ``%x`` is
    an op result of the same graph and no graph's output already; otherwise (``%x`` a graph
    input, a const, a value of an enclosing graph or an output itself) the op stays::

        func @g(%x) { %y = onnx.Identity(%x)  return %y }        ->  unchanged
        %t = onnx.Relu(%x)  %y = onnx.Identity(%t)  return %y   ->  %y = onnx.Relu(%x)  return %y
    """

    dropout: bool = True
    """also remove Dropout in inference mode"""

    def run(self, module: Module, ctx: PassContext) -> bool:
        constants = constant_consts(module)
        changed = False
        for g, fn in list(graphs(module)):
            opset = opsets_for(module, fn).get("", 0)
            for op in g.ops:
                if not is_default_domain(op) or op.graph is not g:
                    continue
                if op.op_type == "Identity" or (self.dropout and op.op_type == "Dropout"
                                                and self._dropout_is_identity(op, opset, constants)):
                    if self._remove(op):
                        changed = True
        return changed

    @staticmethod
    def _remove(op: Op) -> bool:
        if len(op.operands) < 1 or op.operands[0] is None or not op.results or op.results[0] is None:
            return False
        if any(r is not None and r._uses for r in op.results[1:]):
            return False
        x, y = op.operands[0], op.results[0]
        if y._uses and not replace_value(y, x):
            return False
        erase_op(op)
        return True

    @staticmethod
    def _dropout_is_identity(op: Op, opset: int, constants: set[int]) -> bool:
        if opset and opset < 7:
            return op.attr("is_test", 0) == 1
        if "is_test" in op.attrs and op.attr("is_test", 1) != 1:
            return False
        if len(op.operands) >= 3 and op.operands[2] is not None:
            mode = const_array(op.operands[2], constants)
            if mode is None or mode.size != 1 or bool(np.asarray(mode).reshape(-1)[0]):
                return False
        return True
