"""The ``split-outliers`` pass: LLM.int8()-style mixed precision, decided at compile time."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from qc.errors import QCError
from qc.ir.core import Module, Op, Value
from qc.ir.dtypes import DType
from qc.ir.tensor import Tensor
from qc.ir.types import TensorType
from qc.pm import Pass, PassContext, register_pass
from qc.quant.outliers import OutlierSplit

from ._scaling import matmuls_by_input
from ._util import OUTLIER_SUFFIX, compile_regex
from .insert_qdq import learned_dequantize

MODES = ("threshold", "budget", "error")
DTYPES = ("f16", "f32")
_FLOAT16 = 10
_FLOAT = 1


Split = OutlierSplit  # the record type, kept under its old name


@dataclass
class Plan:
    """The columns chosen for one activation and the MatMuls that read it."""

    x: Value
    ops: list[Op]
    stats: object
    columns: np.ndarray
    rest: np.ndarray
    reason: str


@register_pass("split-outliers")
@dataclass(frozen=True)
class SplitOutliers(Pass):
    """split-outliers: keep the outlier feature columns of a MatMul's activation in float16 and
    the rest for int8, from calibration statistics (LLM.int8(), decided once at compile time).

    For ``Y = X @ W`` with a constant W [K, N] and outlier columns O of X (the rest R)::

        %y = onnx.MatMul(%x, @w)       ->  %x.outliers = onnx.Gather(%x, @x.outlier_cols) {axis = -1}
                                           %x.outliers.f16 = onnx.Cast(%x.outliers) {to = 10}
                                           %y.outliers.f16 = onnx.MatMul(%x.outliers.f16, @w.outliers)  : W[O, :] in f16
                                           %y.outliers = onnx.Cast(%y.outliers.f16) {to = 1}
                                           %x.rest = onnx.Gather(%x, @x.rest_cols) {axis = -1}
                                           %y.rest = onnx.MatMul(%x.rest, @w.rest)                     : W[R, :]
                                           %y = onnx.Add(%y.rest, %y.outliers)

    ``dtype = f32`` keeps the outlier part in float32 instead, for targets whose runtime has no
    float16 GEMM (onnxruntime's CPU provider on x86 runs a float16 MatMul through a generic path
    whose float16 sums round differently by kernel and row count, and differently from qc's C)::

        %y = onnx.MatMul(%x, @w)       ->  %x.outliers = onnx.Gather(%x, @x.outlier_cols) {axis = -1}
                                           %y.outliers = onnx.MatMul(%x.outliers, @w.outliers)        : W[O, :] in f32
                                           %x.rest = onnx.Gather(%x, @x.rest_cols) {axis = -1}
                                           %y.rest = onnx.MatMul(%x.rest, @w.rest)
                                           %y = onnx.Add(%y.rest, %y.outliers)

    The passes that quantize (``quantize-weights``, ``insert-qdq``, ``dynamic-per-token``) leave a
    MatMul whose weight is named ``@w.outliers`` alone.

    The MatMuls reading one activation (q, k and v) share its Gathers. ``%x.rest`` gets
    calibration statistics of its own (the range of the rest columns, from the per-feature
    minima and maxima), so ``quantize-weights`` and ``insert-qdq`` after this pass make the
    rest an int8 matmul whose activation scale no longer has to cover the outliers.

    Which columns (per-feature max |x| from ``calibrate``):

    - ``threshold``: every column reaching ``threshold`` (LLM.int8()'s 6.0), however many;
    - ``budget``: the ``max-fraction`` of columns with the largest |x| (at least one);
    - ``error``: ``max-fraction`` of all columns of all activations together, shared out
      greedily to where the int8 part's expected output error, relative to the output's
      energy, drops most per column: ``step^2 / 12 * sum of |W_j|^2 over the rest rows``
      (``step``: the activation's 8-bit step), over ``sum of mean|x_j|^2 |W_j|^2``. Layers
      with wide activations (SmolLM2's MLP down-projections) get more columns than others.

    Left alone: MatMuls without a constant 2-D float weight, activations without per-feature
    statistics, activations already quantized (a DequantizeLinear's result, directly or through
    shape-only ops: a QAT model's learned pair keeps its scale), ops matching ``exclude``, and
    activations where no column qualifies.
    """

    mode: str = "budget"
    """threshold | budget | error"""
    threshold: float = 6.0
    """threshold mode: columns whose max |x| reaches this are outliers"""
    max_fraction: float = 0.01
    """budget and error modes: at most this fraction of each activation's columns in float16"""
    exclude: str = ""
    """regex: MatMuls whose name matches are not split"""
    dtype: str = "f16"
    """the outlier part's float type: f16 (LLM.int8()) or f32 (targets without a float16 GEMM)"""

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise QCError(f"split-outliers: dtype must be f16 or f32, got '{self.dtype}'")
        if self.mode not in MODES:
            raise QCError(f"split-outliers: unknown mode '{self.mode}'", hint="one of " + ", ".join(MODES))
        if not 0.0 < self.max_fraction <= 1.0:
            raise QCError(f"split-outliers: max-fraction must be in (0, 1], got {self.max_fraction}")
        compile_regex("split-outliers", "exclude", self.exclude)

    def run(self, module: Module, ctx: PassContext) -> bool:
        calib = ctx.calibration
        if calib is None:
            raise QCError("split-outliers needs calibration statistics: run calibrate first",
                          hint="qc compile --quant w8a8 --outliers split adds it; give --calib or --calib-text")
        splits: list[Split] = ctx.outlier_splits
        changed = False
        plans = self.plan(module, calib, ctx, keep_empty=True)
        ctx.outlier_candidate_columns += sum(int(p.stats.features) for p in plans)
        for plan in plans:
            x, ops, stats, columns, rest = plan.x, plan.ops, plan.stats, plan.columns, plan.rest
            if columns.size == 0 or rest.size == 0:
                ctx.remark(ops[0], f"%{x.name}: {plan.reason}; not split")
                continue
            self._rewrite(module, x, ops, columns, rest, stats, calib)
            absmax = stats.channel_absmax
            kind = "float16" if self.dtype == "f16" else "float32"
            split = Split(x.name, [op.name or op.results[0].name for op in ops], [int(c) for c in columns],
                          int(stats.features), self.mode, plan.reason, float(absmax[columns].min()),
                          float(absmax[rest].max()), kind)
            splits.append(split)
            ctx.remark(ops[0], f"%{x.name}: {len(columns)} of {stats.features} columns to {kind} ({plan.reason}); "
                               f"int8 part now spans max |x| {split.rest_absmax:.4g} "
                               f"instead of {float(absmax.max()):.4g}")
            changed = True
        return changed

    def plan(self, module: Module, calib, ctx: PassContext | None = None, *, keep_empty: bool = False) -> list[Plan]:
        """The decision for every activation read by MatMuls with constant weights, without
        rewriting anything (``qc report`` draws these); ``keep_empty`` also returns the
        activations where no column qualifies."""
        exclude = re.compile(self.exclude) if self.exclude else None
        candidates = []
        for ops in matmuls_by_input(module, exclude):
            x = ops[0].operands[0]
            if learned_dequantize(x) is not None:
                if ctx is not None:
                    ctx.remark(ops[0], f"%{x.name} is already quantized (QAT or an earlier pass); not split, "
                                       "its scale is kept")
                continue
            stats = calib.tensors.get(x.name)
            if stats is None or stats.channel_min is None:
                if ctx is not None:
                    ctx.remark(ops[0], f"%{x.name} has no per-feature statistics; not split")
                continue
            weights = [op.operands[1].const.numpy() for op in ops]
            if any(wt.shape[0] != stats.features for wt in weights):
                continue
            candidates.append((x, ops, stats, weights))
        chosen = (self._allocate([(st, ws) for _, _, st, ws in candidates]) if self.mode == "error"
                  else [self._choose(st, ws) for _, _, st, ws in candidates])
        plans = []
        for (x, ops, stats, _), (columns, reason) in zip(candidates, chosen):
            rest = np.setdiff1d(np.arange(stats.features), columns)
            if columns and rest.size == 0:
                reason = f"every column is an outlier ({reason})"
            if (not columns or rest.size == 0) and not keep_empty:
                if ctx is not None:
                    ctx.remark(ops[0], f"%{x.name}: {reason}; not split")
                continue
            plans.append(Plan(x, ops, stats, np.asarray(columns, dtype=np.int64), rest, reason))
        return plans

    # -- choosing columns ----------------------------------------------------------------------
    def _choose(self, stats, weights: list[np.ndarray]) -> tuple[list[int], str]:
        absmax = stats.channel_absmax.astype(np.float64)
        k = absmax.size
        if self.mode == "threshold":
            cols = np.flatnonzero(absmax >= self.threshold)
            return sorted(cols.tolist()), f"max |x| >= {self.threshold:g}"
        budget = max(1, int(math.floor(self.max_fraction * k)))
        order = np.argsort(-absmax, kind="stable")
        return sorted(order[:budget].tolist()), f"the {budget} largest of {k} (max-fraction {self.max_fraction:g})"

    def _allocate(self, candidates: list) -> list[tuple[list[int], str]]:
        """Error mode: share one budget (``max-fraction`` of all columns of all activations)
        greedily, each step giving the next columns to the activation whose relative int8
        error (expected error / output energy) drops most per column."""
        curves, orders = [], []
        for stats, weights in candidates:
            absmax = stats.channel_absmax.astype(np.float64)
            order = np.argsort(-absmax, kind="stable")
            cap = max(1, min(absmax.size - 1, absmax.size // 4))     # at most a quarter of one activation
            mean_abs = stats.channel_abssum / max(stats.rows, 1)
            signal = float(np.sum(mean_abs ** 2 * sum(np.square(w.astype(np.float64)).sum(axis=1) for w in weights)))
            curves.append(self._expected_errors(stats, weights, order[:cap + 1]) / max(signal, 1e-30))
            orders.append(order)
        remaining = int(math.floor(self.max_fraction * sum(s.features for s, _ in candidates)))
        taken = [0] * len(curves)
        while remaining > 0:
            best = (0.0, -1, 0)
            for i, r in enumerate(curves):
                k0 = taken[i]
                span = min(64, len(r) - 1 - k0, remaining)
                if span <= 0:
                    continue
                gains = (r[k0] - r[k0 + 1:k0 + span + 1]) / np.arange(1, span + 1)
                j = int(np.argmax(gains))
                if gains[j] > best[0]:
                    best = (float(gains[j]), i, j + 1)
            if best[1] < 0:
                break
            taken[best[1]] += best[2]
            remaining -= best[2]
        out = []
        for r, order, count in zip(curves, orders, taken):
            if count == 0:
                out.append(([], "no share of the budget: other activations gain more"))
                continue
            cut = 100 * (r[0] - r[count]) / r[0] if r[0] > 0 else 0.0
            out.append((sorted(order[:count].tolist()),
                        f"error-driven share of {100 * self.max_fraction:g}% of all columns; "
                        f"cuts this activation's int8 error by {cut:.0f}%"))
        return out

    @staticmethod
    def _expected_errors(stats, weights: list[np.ndarray], order: np.ndarray) -> np.ndarray:
        """Expected squared output error of the int8 part after moving the first i columns of
        ``order`` to float16, for i = 0 .. len(order) - 1 (uniform rounding noise of the step)."""
        row_energy = sum(np.square(w.astype(np.float64)).sum(axis=1) for w in weights)
        lo, hi = stats.channel_min.astype(np.float64), stats.channel_max.astype(np.float64)
        removed = np.zeros(lo.size, dtype=bool)
        total = row_energy.sum()
        out = []
        for i in range(len(order)):
            if i:
                removed[order[i - 1]] = True
                total -= row_energy[order[i - 1]]
            keep = ~removed
            step = (max(hi[keep].max(), 0.0) - min(lo[keep].min(), 0.0)) / 255.0
            out.append(step * step / 12.0 * total)
        return np.asarray(out)

    # -- rewriting -----------------------------------------------------------------------------
    def _rewrite(self, module: Module, x: Value, ops: list[Op], columns: np.ndarray, rest: np.ndarray,
                 stats, calib) -> None:
        graph = module.graph
        first = ops[0]
        shape = x.type.shape if isinstance(x.type, TensorType) and x.type.shape is not None else None

        def narrowed(dtype: DType, width: int) -> TensorType:
            return TensorType(dtype, None if shape is None else (*shape[:-1], width))

        cols_o = graph.add_const(f"{x.name}.outlier_cols", Tensor.from_array(columns.astype(np.int64)))
        cols_r = graph.add_const(f"{x.name}.rest_cols", Tensor.from_array(rest.astype(np.int64)))
        half = self.dtype == "f16"
        x_o = Value(f"{x.name}.outliers", narrowed(DType.f32, columns.size))
        x_o16 = Value(f"{x.name}.outliers.f16", narrowed(DType.f16, columns.size)) if half else x_o
        x_r = Value(f"{x.name}.rest", narrowed(DType.f32, rest.size))
        prologue = [Op("Gather", [x, cols_o], results=[x_o], attrs={"axis": -1}, name=f"{x.name}.gather_outliers")]
        if half:
            prologue.append(Op("Cast", [x_o], results=[x_o16], attrs={"to": _FLOAT16}, name=f"{x.name}.to_f16"))
        prologue.append(Op("Gather", [x, cols_r], results=[x_r], attrs={"axis": -1}, name=f"{x.name}.gather_rest"))
        for op in prologue:
            graph.insert_before(first, op)
        calib.tensors[x_r.name] = _rest_stats(stats, rest)
        for op in ops:
            w = op.operands[1]
            data = w.const.numpy()
            y = op.results[0]
            yshape = y.type.shape if isinstance(y.type, TensorType) else None
            rows = data[columns].astype(np.float16 if half else np.float32)
            w_o = graph.add_const(f"{w.name}{OUTLIER_SUFFIX}", Tensor.from_array(rows))
            w_r = graph.add_const(f"{w.name}.rest", Tensor.from_array(np.ascontiguousarray(data[rest])))
            y_o = Value(f"{y.name}.outliers", TensorType(DType.f32, yshape))
            y_r = Value(f"{y.name}.rest", TensorType(DType.f32, yshape))
            base = op.name or y.name
            if half:
                y_o16 = Value(f"{y.name}.outliers.f16", TensorType(DType.f16, yshape))
                new = [Op("MatMul", [x_o16, w_o], results=[y_o16], name=f"{base}.outliers"),
                       Op("Cast", [y_o16], results=[y_o], attrs={"to": _FLOAT}, name=f"{base}.outliers_to_f32")]
            else:
                new = [Op("MatMul", [x_o, w_o], results=[y_o], name=f"{base}.outliers")]
            new.append(Op("MatMul", [x_r, w_r], results=[y_r], name=f"{base}.rest"))
            for n in new:
                graph.insert_before(op, n)
            total = Op("Add", [y_r, y_o], name=f"{base}.sum", results=[Value(y.name + ".sum", y.type)])
            graph.insert_before(op, total)
            # the Add takes over the MatMul's result value (its name and users stay)
            op.results[0].replace_all_uses_with(total.results[0])
            old_name = y.name
            graph.remove(op)
            total.results[0].name = old_name
            if not w.uses() and w.name in graph.consts:
                graph.remove_const(w)


def _rest_stats(stats, rest: np.ndarray):
    """Statistics of the rest columns, from the per-feature ones (no histogram: ranges are minmax),
    with the Hessian and row sample restricted to them (GPTQ / AWQ on the int8 part)."""
    from qc.calib.stats import TensorStats

    out = TensorStats(channels=True, histogram=False, axis=-1)
    out.channel_min = stats.channel_min[rest].copy()
    out.channel_max = stats.channel_max[rest].copy()
    out.channel_absmax = stats.channel_absmax[rest].copy()
    out.channel_abssum = stats.channel_abssum[rest].copy()
    out.min, out.max = float(out.channel_min.min()), float(out.channel_max.max())
    out.rows = stats.rows
    out.count = stats.rows * int(rest.size)
    if getattr(stats, "hessian", None) is not None:      # GPTQ on the int8 part: X_R^T X_R
        out.hessian_enabled, out.hessian = True, stats.hessian[np.ix_(rest, rest)].copy()
    if getattr(stats, "row_sample", None) is not None:   # AWQ
        out.max_rows, out.row_priority = stats.max_rows, stats.row_priority
        out.row_sample = stats.row_sample[:, rest].copy()
    return out
