"""The ``bias-correction`` pass: correct Conv biases for the mean error of their rounded weights."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from qc.errors import QCError
from qc.ir.core import Module
from qc.ir.dtypes import DType
from qc.ir.tensor import Tensor
from qc.pm import Pass, PassContext, register_pass
from qc.quant import weight_algos as algos

from ._util import const_array, is_default_domain


@register_pass("bias-correction")
@dataclass(frozen=True)
class BiasCorrection(Pass):
    """bias-correction: rounding a Conv's weights shifts the mean of each output channel by
    ``(dq(Wq) - W) . E[x]``; subtract that from the bias (Nagel et al. 2019, "Data-Free Quantization
    Through Weight Equalization and Bias Correction", with ``E[x]`` the calibrated per-channel means
    of the Conv input, ``calibrate``'s ``channel_sum / rows``)::

        %y = onnx.Conv(%x, @W, @b)     ->  %y = onnx.Conv(%x, @W, @b')
                                            b'[o] = b[o] - sum_{c,k} (dq(Wq) - W)[o, c, k] * mean(x)[c]
                                            (a Conv without a bias gets @b' = -that)

    It runs just before the ``quantize-weights`` that quantizes the Convs, with the same ``bits``,
    ``granularity``, ``symmetric`` and ``dtype``: it rounds each weight the way that pass does (RTN,
    ``qc.quant.weight_algos.quantize_rtn``) to know the error, and leaves the weight float.
    Zero padding is ignored (border pixels see zeros, not the mean). Left alone: Convs whose weight
    or bias is not a constant read by that op only, whose input has no per-channel statistics
    (``calibrate{channels=true}``), and ops matching ``exclude``.
    """

    bits: int = 8
    """weight code bits (quantize-weights' option)"""
    granularity: str = "channel"
    """tensor | channel (quantize-weights' option)"""
    symmetric: bool = True
    """quantize-weights' option"""
    dtype: str = "i8"
    """weight storage type i8 | u8 (quantize-weights' option)"""
    exclude: str = ""
    """regex: ops whose name matches are left alone"""

    def validate(self) -> None:
        if self.granularity not in ("tensor", "channel"):
            raise QCError(f"bias-correction: granularity '{self.granularity}' is not tensor or channel")
        if self.dtype not in ("i8", "u8"):
            raise QCError(f"bias-correction: dtype '{self.dtype}' is not i8 or u8")
        if not 2 <= self.bits <= 8:
            raise QCError(f"bias-correction: bits={self.bits} is not 2..8")

    def run(self, module: Module, ctx: PassContext) -> bool:
        calib = ctx.calibration
        if calib is None:
            raise QCError("bias-correction needs calibration statistics: run calibrate first")
        exclude = re.compile(self.exclude) if self.exclude else None
        signed = DType.parse(self.dtype).name.startswith("i")
        changed = 0
        for op in list(module.graph.ops):
            if op.op_type != "Conv" or not is_default_domain(op) or len(op.operands) < 2:
                continue
            if exclude is not None and exclude.search(op.name or ""):
                continue
            x, wv = op.operands[0], op.operands[1]
            bv = op.operands[2] if len(op.operands) > 2 else None
            w = const_array(wv)
            if x is None or w is None or w.dtype != np.float32 or len(wv.users()) != 1:
                continue
            b = const_array(bv) if bv is not None else np.zeros(w.shape[0], np.float32)
            if b is None or (bv is not None and len(bv.users()) != 1):
                continue
            stats = calib.tensors.get(x.name)
            sums = getattr(stats, "channel_sum", None) if stats is not None else None
            if sums is None or not stats.rows:
                ctx.remark(op, f"no per-channel means of %{x.name}; bias not corrected")
                continue
            mean = np.asarray(sums, np.float64) / stats.rows
            group = int(op.attr("group", 1) or 1)
            m, cg = w.shape[0], w.shape[1]
            if mean.shape != (cg * group,) or m % group:
                continue
            kn = np.ascontiguousarray(w.reshape(m, -1).T)
            q, scale, zp = algos.quantize_rtn(kn, self.bits, self.granularity, 32, self.symmetric, signed)
            q = q.T.reshape(w.shape)
            err = (algos.dequantize(q, scale, zp, 0 if self.granularity == "channel" else None).astype(np.float64)
                   - w.astype(np.float64))
            means = mean.reshape(group, cg)[np.arange(m) // (m // group)]          # [M, C/g]
            delta = (err.reshape(m, cg, -1).sum(axis=2) * means).sum(axis=1)
            new_b = (b.astype(np.float64) - delta).astype(np.float32)
            if bv is not None:
                bv.const = Tensor.from_array(new_b)
            else:
                nb = op.graph.add_const(f"{wv.name}.bias", Tensor.from_array(new_b))
                op.set_operands([x, wv, nb])
            changed += 1
            ctx.remark(op, f"bias corrected by up to {float(np.max(np.abs(delta))):.3g} "
                           f"(weight rounding error . mean of %{x.name})")
        return changed > 0
