"""The ``guard-int8-rows`` pass: float activations for the MatMulNBits whose rows a runtime's
per-row int8 quantization would coarsen."""
from __future__ import annotations

from dataclasses import dataclass

from qc.ir.core import Module
from qc.pm import Pass, PassContext, register_pass
from qc.quant.outliers import MIN_ROW_LEVELS, int8_row_ops, row_levels
from qc.targets import load_target


@register_pass("guard-int8-rows")
@dataclass(frozen=True)
class GuardInt8Rows(Pass):
    """guard-int8-rows: accuracy_level 1 where the target's runtime would quantize A per row.

    onnxruntime's arm64 MatMulNBits with accuracy_level 4 and symmetric int4 weights quantizes
    each row of A to int8 with one scale over the whole K (the target's ``onnx.nbits_int8_rows``).
    Where the calibration rows of A show an outlier feature that leaves the other values' rms
    under ``min-levels`` int8 steps (``qc.quant.outliers.row_levels``), the node keeps A in float::

        %y = com.microsoft.MatMulNBits(%x, @w.q, @w.scale) {accuracy_level = 4, ...}
          -> %y = com.microsoft.MatMulNBits(%x, @w.q, @w.scale) {accuracy_level = 1, ...}

    with a remark naming the rows and levels. Without calibration statistics of A, on targets
    whose runtime quantizes per block, and for weights the runtime quantizes per block (with zero
    points, when the target says "symmetric"), nothing changes. ``qc compile`` runs it after the
    scheme's pipeline for ONNX output (the C backend quantizes A per block of 32 itself).
    """

    target: str = ""
    """the target whose runtime runs the model (default: the compile's)"""
    min_levels: float = MIN_ROW_LEVELS
    """int8 steps of the other values' rms below which a row counts as coarsened"""

    def validate(self) -> None:
        if self.target:
            load_target(self.target)  # an unknown target fails when the pipeline is parsed

    def run(self, module: Module, ctx: PassContext) -> bool:
        target = ctx.require_target("guard-int8-rows", self.target)
        calib = ctx.calibration
        if calib is None:
            return False
        changed = False
        for op in int8_row_ops(module, target):
            a = op.operands[0]
            levels = row_levels(calib.tensors.get(a.name))
            if levels is None or not (levels < self.min_levels).any():
                continue
            op.set_attr("accuracy_level", 1)
            ctx.remark(op, f"%{a.name}: {int((levels < self.min_levels).sum())} of {levels.size} calibration rows "
                           f"keep the other values at {float(levels.min()):.2g} int8 steps under per-row "
                           f"quantization ({target.onnx.runtime}): accuracy_level 1 (A in float)")
            changed = True
        return changed
