"""The ``fold-batchnorm`` pass; its docstring (``qc passes fold-batchnorm``) lists every rewrite."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qc.ir.core import Graph, Module, Op, Value
from qc.ir.tensor import Tensor
from qc.ir.types import TensorType
from qc.pm import Pass, PassContext, register_pass

from ._util import (
    can_hold_consts,
    const_array,
    constant_consts,
    erase_op,
    graphs,
    is_default_domain,
    opsets_for,
    replace_value,
)


@register_pass("fold-batchnorm")
@dataclass(frozen=True)
class FoldBatchNorm(Pass):
    """fold-batchnorm: fold inference-mode BatchNormalization into the preceding Conv, Gemm or MatMul.

    With ``s = scale / sqrt(var + epsilon)`` (per channel, computed in float64 and cast back to the
    weight's dtype)::

        %c = onnx.Conv(%x, @W, @B) {...}
        %y = onnx.BatchNormalization(%c, @scale, @bias, @mean, @var) {epsilon = e}
            ->  %y = onnx.Conv(%x, @W', @B') {...}
                W' = W * s[:, None, None, ...]     (output channels are W's axis 0, any group)
                B' = (B - mean) * s + bias          (B = 0 when the Conv has no bias)

        %g = onnx.Gemm(%a, @B, @C) {alpha, beta, transB}
        %y = onnx.BatchNormalization(%g, ...)
            ->  %y = onnx.Gemm(%a, @B', @C') {alpha, beta = 1.0, transB}
                B' = B * s[None, :]  (transB = 0)  or  B * s[:, None]  (transB = 1)
                C' = beta * C * s + (bias - mean * s)   (C = 0 when absent)

        %m = onnx.MatMul(%a, @W)            (%a of rank 2, @W of rank 2: BN's channel axis 1 is the last)
        %y = onnx.BatchNormalization(%m, ...)
            ->  %m = onnx.MatMul(%a, @W')   W' = W * s[None, :]
                %y = onnx.Add(%m, @b')       b' = bias - mean * s

    Left alone: BatchNormalization in training mode (``training_mode = 1``, more than one used
    result, or ``is_test = 0`` / ``spatial = 0`` in old opsets); a Conv/Gemm/MatMul whose result has
    another use or is a graph output; weights, biases or BN parameters that are not consts (or are
    overridable graph-input consts); non-float weights; function bodies (ONNX functions have no
    initializers to hold the new weights) and subgraphs of IR version < 4 models (initializers
    must be graph inputs there). In IR version < 4 models the new consts are also listed as main
    graph inputs, as that IR version requires.

    New weights are new consts (the old ones may be shared; ``dce`` removes them when unused).
    The arithmetic changes, so the results differ from the unfolded model by rounding only: one
    float32 rounding of each folded weight (relative error <= 2**-24) plus the accumulation
    order of the convolution, i.e. a few ulps of the largest partial sums.
    """

    conv: bool = True
    """fold into Conv"""
    gemm: bool = True
    """fold into Gemm"""
    matmul: bool = True
    """fold into MatMul (rank-2 result; adds an Add for the bias)"""

    def run(self, module: Module, ctx: PassContext) -> bool:
        kinds = {k for k, on in (("Conv", self.conv), ("Gemm", self.gemm), ("MatMul", self.matmul)) if on}
        folder = _Folder(constant_consts(module), kinds)
        opset = opsets_for(module, None).get("", 0)  # consts exist only outside functions
        changed = False
        for g, fn in list(graphs(module)):
            if not can_hold_consts(module, g, fn):
                continue
            for op in g.ops:
                if op.graph is g and is_default_domain(op) and op.op_type == "BatchNormalization":
                    if folder.fold(g, op, opset, ctx):
                        changed = True
        return changed


class _Folder:
    """The rewrites, with the set of consts that may be treated as fixed."""

    def __init__(self, constants: set[int], kinds: set[str]):
        self._constants = constants
        self.kinds = kinds

    # -- matching ------------------------------------------------------------------------------
    def _bn_params(self, bn: Op, opset: int):
        if len(bn.operands) != 5 or any(v is None for v in bn.operands) or not bn.results or bn.results[0] is None:
            return None
        if any(r is not None and r._uses for r in bn.results[1:]):
            return None
        if bn.attr("training_mode", 0) != 0:
            return None
        if (("is_test" in bn.attrs and bn.attr("is_test", 0) != 1)
                or (opset and opset < 7 and bn.attr("is_test", 0) != 1)):
            return None
        if bn.attr("spatial", 1) != 1:
            return None
        arrays = [const_array(v, self._constants) for v in bn.operands[1:]]
        if any(a is None for a in arrays):
            return None
        scale, bias, mean, var = (np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays)
        if not scale.size == bias.size == mean.size == var.size:
            return None
        eps = float(bn.attr("epsilon", 1e-5))
        s = scale / np.sqrt(var + eps)
        return s, bias, mean

    def fold(self, g: Graph, bn: Op, opset: int, ctx: PassContext) -> bool:
        x = bn.operands[0]
        if x is None or x.producer is None or x.producer.graph is not g:
            return False
        prod = x.producer
        if not is_default_domain(prod) or len(prod.results) != 1 or len(x._uses) != 1:
            return False
        kind = prod.op_type
        if kind not in self.kinds:
            return False
        params = self._bn_params(bn, opset)
        if params is None:
            return False
        s, bias, mean = params
        done = {"Conv": self._conv, "Gemm": self._gemm, "MatMul": self._matmul}[kind](g, prod, bn, s, bias, mean)
        if not done:
            return False
        y = bn.results[0]
        if y._uses and not replace_value(y, done):
            # Cannot keep the output name (the folded value is not a plain op result of this graph):
            # keep the graph valid by producing y from an Identity of the folded value.
            ident = Op("Identity", [done], results=0)
            g.insert_after(bn, ident)
            ident.add_result(Value(y.name, y.type))
            y.replace_all_uses_with(ident.results[0])
        erase_op(bn)
        ctx.remark(prod, f"folded BatchNormalization '{bn.name or y.name}'")
        return True

    def _weight(self, v: Value | None) -> np.ndarray | None:
        w = const_array(v, self._constants)
        if w is None or v.const.dtype is None or not v.const.dtype.is_float:
            return None
        return w

    def _new_const(self, g: Graph, base: Value | str, data: np.ndarray, dtype) -> Value:
        name = (base.name if isinstance(base, Value) else base) + "_bnfold"
        return g.add_const(name, Tensor.from_array(data.astype(dtype.numpy), dtype))

    # -- rewrites ------------------------------------------------------------------------------
    def _replace_weight_and_bias(self, g: Graph, op: Op, w64: np.ndarray, b64: np.ndarray, *, has_bias: bool) -> None:
        """Operand 1 (weight) and operand 2 (bias, created when absent) of a Conv/Gemm get new consts."""
        ops = op.operands
        dtype = ops[1].const.dtype
        op.set_operand(1, self._new_const(g, ops[1], w64, dtype))
        new_b = self._new_const(g, ops[2] if has_bias else ops[1].name + "_bias", b64,
                                ops[2].const.dtype if has_bias else dtype)
        if len(ops) >= 3:
            op.set_operand(2, new_b)
        else:
            op.set_operands([ops[0], op.operands[1], new_b])

    def _conv(self, g: Graph, conv: Op, bn: Op, s, bias, mean) -> Value | None:
        ops = conv.operands
        if len(ops) < 2:
            return None
        w = self._weight(ops[1])
        if w is None or w.ndim < 3 or w.shape[0] != s.size:
            return None
        b = None
        if len(ops) >= 3 and ops[2] is not None:
            b = const_array(ops[2], self._constants)
            if b is None or b.size != s.size:
                return None
        w64 = w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))
        b64 = ((b.astype(np.float64).reshape(-1) if b is not None else 0.0) - mean) * s + bias
        self._replace_weight_and_bias(g, conv, w64, b64, has_bias=b is not None)
        return conv.results[0]

    def _gemm(self, g: Graph, gemm: Op, bn: Op, s, bias, mean) -> Value | None:
        ops = gemm.operands
        if len(ops) < 2 or gemm.attr("transA", 0) not in (0, 1):
            return None
        w = self._weight(ops[1])
        if w is None or w.ndim != 2:
            return None
        trans_b = gemm.attr("transB", 0)
        n = w.shape[0] if trans_b else w.shape[1]
        if n != s.size:
            return None
        c = None
        if len(ops) >= 3 and ops[2] is not None:
            c = const_array(ops[2], self._constants)
            if c is None or c.ndim > 2 or (c.ndim >= 1 and c.shape[-1] not in (1, n)):
                return None
        beta = float(gemm.attr("beta", 1.0))
        w64 = w.astype(np.float64) * (s[:, None] if trans_b else s[None, :])
        c64 = (beta * c.astype(np.float64) * s if c is not None else 0.0) + (bias - mean * s)
        c64 = np.asarray(c64)
        if c64.ndim == 0:
            c64 = np.broadcast_to(c64, (n,))
        self._replace_weight_and_bias(g, gemm, w64, c64, has_bias=c is not None)
        if "beta" in gemm.attrs:
            del gemm.attrs["beta"]
        return gemm.results[0]

    def _matmul(self, g: Graph, mm: Op, bn: Op, s, bias, mean) -> Value | None:
        a, wv = mm.operands
        w = self._weight(wv)
        t = a.type if a is not None else None
        if w is None or w.ndim != 2 or w.shape[1] != s.size or not isinstance(t, TensorType) or t.rank != 2:
            return None
        dtype = wv.const.dtype
        mm.set_operand(1, self._new_const(g, wv, w.astype(np.float64) * s[None, :], dtype))
        b = self._new_const(g, wv.name + "_bias", bias - mean * s, dtype)
        add = Op("Add", [mm.results[0], b], results=0, name=(bn.name + "_bias") if bn.name else "")
        g.insert_after(mm, add)
        out = add.add_result(Value(mm.results[0].name + "_bn", bn.results[0].type))
        return out
