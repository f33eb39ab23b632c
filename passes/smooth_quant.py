"""The ``smooth-quant`` pass: move activation outliers into the weights (SmoothQuant)."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from qc.errors import QCError
from qc.ir.core import Module
from qc.ir.tensor import Tensor
from qc.pm import Pass, PassContext, register_pass

from ._scaling import NameTable, divide_input, divided_stats, matmuls_by_input
from ._util import compile_regex, constant_consts, lift_constant_weights
from .insert_qdq import learned_dequantize


@register_pass("smooth-quant")
@dataclass(frozen=True)
class SmoothQuant(Pass):
    """smooth-quant: divide each activation feature by ``s_j`` and multiply the matching weight
    rows by it, so that activations get easier to quantize and weights take the difference
    (Xiao et al., SmoothQuant). ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``, from the
    calibration statistics of X and the weights of every MatMul reading X.

    Folded into the op that makes X when that op multiplies by a per-feature constant (the
    weight of an RMSNorm's final Mul, or a LayerNormalization's scale and bias) and nothing
    else reads X::

        %x = onnx.Mul(%h, @g)                   ->  %x = onnx.Mul(%h, @g.smooth)       : g / s
        %q = onnx.MatMul(%x, @wq)                   %q = onnx.MatMul(%x, @wq.smooth)   : diag(s) wq
        %k = onnx.MatMul(%x, @wk)                   %k = onnx.MatMul(%x, @wk.smooth)

    otherwise an explicit Mul::

        %y = onnx.MatMul(%x, @w)                ->  %x.smooth = onnx.Mul(%x, @x.smooth_inv_scale)
                                                    %y = onnx.MatMul(%x.smooth, @w.smooth)

    The calibration statistics of the scaled activation are rescaled with it (per-feature
    ranges divided by s; the histogram dropped, so later ranges are minmax), so that
    ``split-outliers`` and ``insert-qdq`` after this pass see the smoothed activation.
    Left alone: MatMuls without a constant 2-D float32 weight, activations without
    per-feature statistics, activations already quantized (a DequantizeLinear's result, directly
    or through shape-only ops: a QAT model's learned pair keeps its scale), and ops matching
    ``exclude``.
    """

    alpha: float = 0.5
    """migration strength: 0 leaves activations as they are, 1 moves all their range into the weights"""
    exclude: str = ""
    """regex: MatMuls whose name matches are not smoothed (nor the others reading the same activation)"""

    def validate(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise QCError(f"smooth-quant: alpha must be in [0, 1], got {self.alpha}")
        compile_regex("smooth-quant", "exclude", self.exclude)

    def run(self, module: Module, ctx: PassContext) -> bool:
        calib = ctx.calibration
        if calib is None:
            raise QCError("smooth-quant needs calibration statistics: run calibrate first",
                          hint="qc compile --quant w8a8 --outliers smooth adds it; give --calib or --calib-text")
        exclude = re.compile(self.exclude) if self.exclude else None
        lifted = lift_constant_weights(module, {"MatMul"}) > 0   # Constant-node weights are weights too
        constants = constant_consts(module)
        graph = module.graph
        names = NameTable(graph)
        changed = lifted
        order = {id(op): i for i, op in enumerate(graph)}
        for ops in matmuls_by_input(module):
            x = ops[0].operands[0]
            if exclude is not None and any(exclude.search(op.name or "") for op in ops):
                continue
            if learned_dequantize(x) is not None:
                ctx.remark(ops[0], f"%{x.name} is already quantized (QAT or an earlier pass); not smoothed, "
                                   "its scale is kept")
                continue
            stats = calib.tensors.get(x.name)
            if stats is None or stats.channel_absmax is None or stats.features != ops[0].operands[1].const.shape[0]:
                ctx.remark(ops[0], f"%{x.name} has no per-feature statistics; not smoothed")
                continue
            s = self._scales(stats.channel_absmax, [op.operands[1].const.numpy() for op in ops])
            how = divide_input(graph, x, s, ops, constants, names, suffix="smooth", order=order)
            for op in ops:
                w = op.operands[1]
                scaled = graph.add_const(names.fresh(f"{w.name}.smooth"),
                                         Tensor.from_array((w.const.numpy() * s[:, None]).astype(np.float32)))
                op.set_operand(1, scaled)
                if not w.uses() and graph.consts.get(w.name) is w:
                    graph.remove_const(w)
            smoothed = ops[0].operands[0]
            calib.tensors[smoothed.name] = divided_stats(stats, s)
            ctx.remark(ops[0], f"%{x.name} / s ({how}; alpha {self.alpha:g}): "
                               f"max |x| {float(stats.channel_absmax.max()):.4g} "
                               f"-> {float(calib.tensors[smoothed.name].channel_absmax.max()):.4g}, "
                               f"s in [{float(s.min()):.3g}, {float(s.max()):.3g}]")
            changed = True
        return changed

    def _scales(self, act_absmax: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
        w_absmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0).astype(np.float64)
        a = np.maximum(act_absmax.astype(np.float64), 1e-5)
        s = a ** self.alpha / np.maximum(w_absmax, 1e-5) ** (1.0 - self.alpha)
        s = np.where((act_absmax > 0) & (w_absmax > 0), s, 1.0)
        return np.clip(s, 1e-5, 1e5).astype(np.float32)
