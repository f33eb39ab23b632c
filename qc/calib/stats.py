"""Calibration statistics: streaming, mergeable, bounded memory; range choice; the cache file.

One :class:`TensorStats` per observed float tensor, fed batch by batch (``update``) or combined
with another (``merge``); nothing keeps the activations themselves. It holds

- ``min`` / ``max`` / ``count`` over the finite elements (``nonfinite`` counts NaN and +-inf,
  which are left out of every statistic);
- per feature (the contraction axis ``axis``, by default the last): ``channel_absmax`` (max |x|)
  and ``channel_abssum`` (sum |x|, float64) and ``channel_sum`` (sum x, float64), over ``rows`` rows;
- a :class:`Histogram` of x;
- optionally ``hessian``: ``sum_r x_r^T x_r`` in float64 over the rows of x reshaped to [-1, K]
  (what GPTQ needs; K*K float64, so only on request);
- optionally ``row_sample``: at most ``max_rows`` rows of x, chosen deterministically by a
  priority computed from each row's content (bottom-k), so that streaming, merging and one-shot
  updates keep exactly the same rows (what AWQ needs).

:func:`choose_range` turns the statistics into a clipping range (minmax, percentile, entropy,
mse) and :func:`scale_zero_point` the range into a quantization scale and zero point.
:class:`CalibrationStats` is the set for one model, saved as a ``.npz`` without pickles.
"""
from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from qc.errors import QCError
from qc.fileio import atomic_write

METHODS = ("minmax", "percentile", "entropy", "mse")
FORMAT_VERSION = 1
DEFAULT_BINS = 4096


# -- histogram ----------------------------------------------------------------------------------
class Histogram:
    """Counts of x over ``bins`` equal bins spanning ``[-R, R)``, ``R = 2**exponent``.

    The range is chosen so that every value seen lies strictly inside it; when a batch needs a
    wider range, ``R`` doubles and adjacent bin pairs merge (bin edges stay aligned, so the
    counts are exactly those a one-shot histogram over the wider range would give). Two
    histograms merge by coarsening the finer one to the other's range.
    """

    __slots__ = ("bins", "exponent", "counts")

    def __init__(self, bins: int = DEFAULT_BINS):
        if bins < 8 or bins & (bins - 1):
            raise ValueError(f"histogram bins must be a power of two >= 8, got {bins}")
        self.bins = bins
        self.exponent: int | None = None          # None until the first non-zero value
        self.counts = np.zeros(bins, dtype=np.int64)

    @property
    def limit(self) -> float:
        """R: the bins span [-R, R)."""
        return 0.0 if self.exponent is None else math.ldexp(1.0, self.exponent)

    @property
    def width(self) -> float:
        return 2.0 * self.limit / self.bins

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def edges(self) -> np.ndarray:
        return np.linspace(-self.limit, self.limit, self.bins + 1)

    def _grow(self, exponent: int) -> None:
        """Widen the range to 2**exponent, merging bin pairs once per doubling."""
        if self.exponent is None:
            self.exponent = exponent
            return
        counts, half = self.counts, self.bins // 2
        for _ in range(exponent - self.exponent):
            merged = counts.reshape(-1, 2).sum(axis=1)           # bins/2 bins over [-R, R)
            counts = np.zeros(self.bins, dtype=np.int64)
            counts[half // 2: half // 2 + half] = merged          # the middle half of [-2R, 2R)
        self.counts = counts
        self.exponent = max(exponent, self.exponent)

    def update(self, x: np.ndarray, absmax: float | None = None) -> None:
        """Add the (finite) values of x; ``absmax`` is max |x| when the caller knows it."""
        if x.size == 0:
            return
        if x.dtype != np.float32 and x.dtype != np.float64:
            x = x.astype(np.float32)
        if absmax is None:
            absmax = float(np.max(np.abs(x)))
        if absmax > 0.0:
            exponent = math.frexp(absmax)[1]                      # absmax < 2**exponent
            if self.exponent is None or exponent > self.exponent:
                self._grow(exponent)
        elif self.exponent is None:                               # only zeros so far: any range holds them
            self.exponent = -126
        # bin = floor(x * bins / 2R) + bins/2: the scale is a power of two, so the product is
        # exact (in float64 when the scale would leave float32's range) and so is the floor
        scale_exponent = (self.bins.bit_length() - 2) - self.exponent
        if x.dtype != np.float64 and not -100 < scale_exponent < 100:
            x = x.astype(np.float64)
        scaled = x * x.dtype.type(math.ldexp(1.0, scale_exponent))
        np.floor(scaled, out=scaled)
        index = scaled.astype(np.intp).reshape(-1)
        index += self.bins // 2
        np.clip(index, 0, self.bins - 1, out=index)     # only the subnormal corner cases need it
        self.counts += np.bincount(index, minlength=self.bins)

    def merge(self, other: Histogram) -> None:
        if other.bins != self.bins:
            raise ValueError(f"cannot merge histograms of {self.bins} and {other.bins} bins")
        if other.exponent is None:
            return
        if self.exponent is None:
            self.exponent, self.counts = other.exponent, other.counts.copy()
            return
        if other.exponent > self.exponent:
            self._grow(other.exponent)
        if other.exponent == self.exponent:
            self.counts += other.counts
            return
        coarse = Histogram(self.bins)
        coarse.exponent, coarse.counts = other.exponent, other.counts.copy()
        coarse._grow(self.exponent)
        self.counts += coarse.counts

    def folded(self) -> tuple[np.ndarray, float]:
        """Counts of |x| over bins/2 bins of the same width from 0 up, and that width.

        Folded bin k covers |x| in [k w, (k+1) w): x in [k w, (k+1) w) or x in (-(k+1) w, -k w].
        (A negative value exactly on a bin edge is counted one bin up; this does not matter at
        the histogram's resolution.)"""
        half = self.bins // 2
        return self.counts[half:] + self.counts[:half][::-1], self.width

    def copy(self) -> Histogram:
        h = Histogram(self.bins)
        h.exponent, h.counts = self.exponent, self.counts.copy()
        return h


# -- one tensor ---------------------------------------------------------------------------------
_PRIORITY_SEED = 0x5EED


def _row_priorities(rows: np.ndarray) -> np.ndarray:
    """A pseudo-random priority in [0, 1) per row, a function of the row's values only."""
    k = rows.shape[1]
    direction = np.random.default_rng(_PRIORITY_SEED + k).standard_normal(k)
    projected = rows.astype(np.float64) @ direction
    mixed = np.sin(projected * 12.9898 + 78.233) * 43758.5453   # the classic shader hash
    return mixed - np.floor(mixed)


@dataclass(eq=False)
class TensorStats:
    """Statistics of one float tensor over the calibration set (see the module docstring)."""

    channels: bool = True
    histogram: bool = True
    hessian_enabled: bool = False
    max_rows: int = 0
    axis: int = -1
    bins: int = DEFAULT_BINS
    min: float = math.inf
    max: float = -math.inf
    count: int = 0
    nonfinite: int = 0
    zeros: int = 0                             # exact zeros (quantized without error: mse ignores them)
    rows: int = 0
    channel_absmax: np.ndarray | None = None
    channel_abssum: np.ndarray | None = None
    channel_sum: np.ndarray | None = None      # per feature sum x, float64 (the means bias-correction needs)
    channel_min: np.ndarray | None = None      # per feature, float32 [K] (the range of any subset of columns)
    channel_max: np.ndarray | None = None
    hist: Histogram | None = None
    hessian: np.ndarray | None = None
    row_sample: np.ndarray | None = None
    row_priority: np.ndarray | None = None
    shape: tuple[int, ...] | None = None       # the shape of the last batch seen (for messages)

    def __post_init__(self) -> None:
        if self.histogram and self.hist is None:
            self.hist = Histogram(self.bins)

    def __repr__(self) -> str:
        parts = [f"min={self.min:.6g}", f"max={self.max:.6g}", f"count={self.count}"]
        if self.features is not None:
            parts.append(f"features={self.features} (axis {self.axis}, {self.rows} rows)")
        if self.nonfinite:
            parts.append(f"nonfinite={self.nonfinite}")
        parts += [k for k, on in (("hist", self.hist is not None), ("hessian", self.hessian is not None),
                                  (f"row_sample={0 if self.row_sample is None else len(self.row_sample)}",
                                   self.max_rows > 0)) if on]
        return "TensorStats(" + ", ".join(parts) + ")"

    @property
    def absmax(self) -> float:
        if self.count == 0:
            return 0.0
        return max(abs(self.min), abs(self.max))

    @property
    def features(self) -> int | None:
        return None if self.channel_absmax is None else int(self.channel_absmax.shape[0])

    @property
    def wants_rows(self) -> bool:
        return self.channels or self.hessian_enabled or self.max_rows > 0

    # -- update ---------------------------------------------------------------------------
    def update(self, x: np.ndarray) -> None:
        """Add one batch (any shape; the feature axis is ``axis``)."""
        x = np.asarray(x)
        if x.dtype.kind != "f" and x.dtype.name not in ("bfloat16",):
            raise TypeError(f"TensorStats observes float tensors, got {x.dtype}")
        if x.dtype != np.float32 and x.dtype != np.float64:
            x = x.astype(np.float32)
        self.shape = tuple(x.shape)
        if x.size == 0:
            return
        lo, hi = x.min(), x.max()
        if not (math.isfinite(lo) and math.isfinite(hi)):
            finite = np.isfinite(x)
            bad = int(x.size - np.count_nonzero(finite))
            self.nonfinite += bad
            if bad == x.size:
                return
            x = np.where(finite, x, 0).astype(x.dtype)       # zeros keep the shape for the per-feature sums
            lo, hi = x[finite].min(), x[finite].max()
            finite_count = x.size - bad
        else:
            finite_count = x.size
        self.min = min(self.min, float(lo))
        self.max = max(self.max, float(hi))
        self.count += int(finite_count)
        self.zeros += int(x.size - np.count_nonzero(x)) - (x.size - int(finite_count))
        if self.hist is not None:
            self.hist.update(x, max(-float(lo), float(hi), 0.0))
            if finite_count != x.size:   # take out the zeros that stood in for non-finite values
                self.hist.counts[self.hist.bins // 2] -= x.size - finite_count
        if self.wants_rows and x.ndim >= 1:
            self._update_rows(x)

    def _update_rows(self, x: np.ndarray) -> None:
        axis = self.axis % x.ndim
        if axis != x.ndim - 1:
            x = np.moveaxis(x, axis, -1)
        k = x.shape[-1]
        if self.channel_absmax is not None and self.channel_absmax.shape[0] != k:
            raise ValueError(f"feature count changed from {self.channel_absmax.shape[0]} to {k}")
        rows = x.reshape(-1, k)
        self.rows += rows.shape[0]
        if self.channels:
            cmin = rows.min(axis=0).astype(np.float32)
            cmax = rows.max(axis=0).astype(np.float32)
            absmax = np.maximum(-cmin, cmax)
            abssum = np.abs(rows).sum(axis=0, dtype=np.float64)
            total = rows.sum(axis=0, dtype=np.float64)
            if self.channel_absmax is None:
                self.channel_absmax, self.channel_abssum = absmax, abssum
                self.channel_min, self.channel_max = cmin, cmax
                self.channel_sum = total
            else:
                np.maximum(self.channel_absmax, absmax, out=self.channel_absmax)
                self.channel_abssum += abssum
                if self.channel_sum is not None:
                    self.channel_sum += total
                np.minimum(self.channel_min, cmin, out=self.channel_min)
                np.maximum(self.channel_max, cmax, out=self.channel_max)
        if self.hessian_enabled:
            r64 = rows.astype(np.float64)
            h = r64.T @ r64
            if self.hessian is None:
                self.hessian = h
            else:
                self.hessian += h
        if self.max_rows > 0:
            self._keep_rows(rows.astype(np.float32, copy=False), _row_priorities(rows))

    def _keep_rows(self, rows: np.ndarray, priority: np.ndarray) -> None:
        if self.row_sample is not None:
            rows = np.concatenate([self.row_sample, rows])
            priority = np.concatenate([self.row_priority, priority])
        if len(priority) > self.max_rows:
            keep = np.sort(np.argsort(priority, kind="stable")[:self.max_rows])
            rows, priority = rows[keep], priority[keep]
        self.row_sample = np.ascontiguousarray(rows, dtype=np.float32)
        self.row_priority = priority

    # -- merge ----------------------------------------------------------------------------
    def merge(self, other: TensorStats) -> None:
        """Combine with the statistics of other batches of the same tensor."""
        if (self.channels, self.histogram, self.hessian_enabled, self.max_rows, self.bins) != \
                (other.channels, other.histogram, other.hessian_enabled, other.max_rows, other.bins):
            raise ValueError("cannot merge statistics collected with different options")
        if self.features is not None and other.features is not None and self.features != other.features:
            raise ValueError(f"cannot merge statistics of {self.features} and {other.features} features")
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.count += other.count
        self.nonfinite += other.nonfinite
        self.zeros += other.zeros
        self.rows += other.rows
        if other.shape is not None:
            self.shape = other.shape
        if self.hist is not None and other.hist is not None:
            self.hist.merge(other.hist)
        if other.channel_absmax is not None:
            if self.channel_absmax is None:
                self.channel_absmax = other.channel_absmax.copy()
                self.channel_abssum = other.channel_abssum.copy()
                self.channel_sum = None if other.channel_sum is None else other.channel_sum.copy()
                self.channel_min = other.channel_min.copy()
                self.channel_max = other.channel_max.copy()
            else:
                np.maximum(self.channel_absmax, other.channel_absmax, out=self.channel_absmax)
                self.channel_abssum += other.channel_abssum
                self.channel_sum = (None if self.channel_sum is None or other.channel_sum is None
                                    else self.channel_sum + other.channel_sum)
                np.minimum(self.channel_min, other.channel_min, out=self.channel_min)
                np.maximum(self.channel_max, other.channel_max, out=self.channel_max)
        if other.hessian is not None:
            self.hessian = other.hessian.copy() if self.hessian is None else self.hessian + other.hessian
        if other.row_sample is not None:
            self._keep_rows(other.row_sample, other.row_priority)

    # -- (de)serialization helpers --------------------------------------------------------
    _SCALARS = ("channels", "histogram", "hessian_enabled", "max_rows", "axis", "bins",
                "min", "max", "count", "nonfinite", "zeros", "rows")
    _ARRAYS = ("channel_absmax", "channel_abssum", "channel_sum", "channel_min", "channel_max", "hessian", "row_sample",
               "row_priority")

    def _meta(self) -> dict:
        meta = {k: getattr(self, k) for k in self._SCALARS}
        meta["min"], meta["max"] = _json_float(self.min), _json_float(self.max)
        meta["hist_exponent"] = None if self.hist is None else self.hist.exponent
        meta["shape"] = None if self.shape is None else list(self.shape)
        return meta

    def _arrays(self) -> dict[str, np.ndarray]:
        out = {k: getattr(self, k) for k in self._ARRAYS if getattr(self, k) is not None}
        if self.hist is not None:
            out["hist"] = self.hist.counts
        return out

    @classmethod
    def _restore(cls, meta: dict, arrays: dict[str, np.ndarray]) -> TensorStats:
        s = cls(channels=bool(meta["channels"]), histogram=bool(meta["histogram"]),
                hessian_enabled=bool(meta["hessian_enabled"]), max_rows=int(meta["max_rows"]),
                axis=int(meta["axis"]), bins=int(meta["bins"]))
        s.min, s.max = float(meta["min"]), float(meta["max"])
        s.count, s.nonfinite, s.rows = int(meta["count"]), int(meta["nonfinite"]), int(meta["rows"])
        s.zeros = int(meta.get("zeros", 0))
        s.shape = None if meta.get("shape") is None else tuple(meta["shape"])
        for k in cls._ARRAYS:
            if k in arrays:
                setattr(s, k, arrays[k])
        if s.hist is not None:
            counts = arrays.get("hist")
            if counts is None or counts.shape != (s.bins,):
                raise ValueError("histogram counts missing or of the wrong size")
            s.hist.counts = counts.astype(np.int64)
            s.hist.exponent = meta["hist_exponent"]
        return s


def _json_float(v: float) -> float | str:
    return v if math.isfinite(v) else repr(v)   # 'inf' / '-inf' / 'nan' survive json as strings


# -- the set ------------------------------------------------------------------------------------
@dataclass
class CalibrationStats:
    """Statistics of every observed tensor of one model, by IR value name."""

    tensors: dict[str, TensorStats] = field(default_factory=dict)
    samples: int = 0
    key: str = ""
    method: str = "minmax"          # the range method calibrate was asked for (insert-qdq's default)
    options: dict = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __repr__(self) -> str:
        return f"CalibrationStats({len(self.tensors)} tensors, {self.samples} samples, method {self.method})"

    def __getitem__(self, name: str) -> TensorStats:
        return self.tensors[name]

    def get(self, name: str) -> TensorStats | None:
        return self.tensors.get(name)

    def merge(self, other: CalibrationStats) -> None:
        for name, s in other.tensors.items():
            if name in self.tensors:
                self.tensors[name].merge(s)
            else:
                self.tensors[name] = s
        self.samples += other.samples

    def save(self, path: str | os.PathLike) -> None:
        """Write a ``.npz`` (no pickles) atomically."""
        path = os.fspath(path)
        names = list(self.tensors)
        meta = {"format": "qc-calibration", "version": FORMAT_VERSION, "samples": self.samples, "key": self.key,
                "method": self.method, "options": self.options, "names": names,
                "tensors": [self.tensors[n]._meta() for n in names]}
        arrays = {"meta": np.array(json.dumps(meta))}
        for i, name in enumerate(names):
            for k, a in self.tensors[name]._arrays().items():
                arrays[f"t{i}.{k}"] = np.ascontiguousarray(a)
        try:
            with atomic_write(path, "wb") as f:
                np.savez(f, **arrays)
        except OSError as e:
            raise QCError(f"cannot write the calibration cache: {e.strerror or e}", where=path,
                          hint="give a writable --calib-cache path") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> CalibrationStats:
        path = os.fspath(path)
        hint = "delete the file to recompute the statistics, or give another cache path"
        if not os.path.isfile(path):
            raise QCError("no such calibration cache file", where=path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"][()]))
                if meta.get("format") != "qc-calibration":
                    raise ValueError("not a qc calibration file")
                if meta.get("version") != FORMAT_VERSION:
                    raise QCError(f"calibration cache format version {meta.get('version')}, this qc reads "
                                  f"version {FORMAT_VERSION}", where=path, hint=hint)
                stats = cls(samples=int(meta["samples"]), key=str(meta["key"]), method=str(meta["method"]),
                            options=dict(meta.get("options", {})))
                for i, (name, tmeta) in enumerate(zip(meta["names"], meta["tensors"])):
                    prefix = f"t{i}."
                    arrays = {k[len(prefix):]: z[k] for k in z.files if k.startswith(prefix)}
                    stats.tensors[name] = TensorStats._restore(tmeta, arrays)
        except QCError:
            raise
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, json.JSONDecodeError, EOFError) as e:
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise QCError(f"not a readable qc calibration cache ({detail})", where=path, hint=hint) from None
        return stats


# -- ranges -------------------------------------------------------------------------------------
def choose_range(stats: TensorStats, method: str, *, qmin: int, qmax: int, symmetric: bool,
                 percentile: float = 99.99) -> tuple[float, float]:
    """The float range [lo, hi] to quantize the tensor into [qmin, qmax].

    - ``minmax``: everything seen;
    - ``percentile``: the ``percentile`` of |x| (symmetric) or of each tail (asymmetric);
    - ``entropy``: TensorRT's threshold minimizing KL(P || Q) between the |x| histogram clipped
      at the threshold and its quantized version; the range is [-t, t], or [0, t] for
      non-negative data quantized asymmetrically (mixed-sign asymmetric: each side clipped at t);
    - ``mse``: the thresholds minimizing the expected squared error (uniform rounding noise
      inside the range, clipping error outside), from the histogram.

    Symmetric ranges are ``(-t, t)``; the result always contains 0 when the data does.
    """
    if method not in METHODS:
        raise QCError(f"unknown calibration method '{method}'", hint="use one of " + ", ".join(METHODS))
    if qmax <= qmin:
        raise ValueError(f"qmax ({qmax}) must exceed qmin ({qmin})")
    if stats.count == 0:
        return 0.0, 0.0
    lo, hi = min(stats.min, 0.0), max(stats.max, 0.0)
    if method == "minmax" or stats.absmax == 0.0:
        return _finish(lo, hi, symmetric)
    hist = stats.hist
    if hist is None or hist.exponent is None:
        raise QCError(f"the '{method}' range method needs a histogram, which was not collected",
                      hint="run calibrate{histogram=true} (the default), or use --calib-method minmax")
    if method == "percentile":
        if not 0.0 < percentile <= 100.0:
            raise QCError(f"percentile must be in (0, 100], got {percentile}")
        if symmetric or stats.min >= 0.0:
            t = _folded_quantile(hist, percentile / 100.0)
            return _clip_sides(stats, t, symmetric)
        p = percentile / 100.0
        lo_q, hi_q = _signed_quantile(hist, 1.0 - p), _signed_quantile(hist, p)
        return _finish(max(min(lo_q, 0.0), stats.min), min(max(hi_q, 0.0), stats.max), symmetric)
    levels = _levels(qmin, qmax, symmetric, nonnegative=stats.min >= 0.0)
    if method == "entropy":
        t = _entropy_threshold(hist, levels)
        return _clip_sides(stats, t, symmetric)
    # mse
    if symmetric or stats.min >= 0.0:
        t = _mse_threshold(hist, levels, stats.zeros)
        return _clip_sides(stats, t, symmetric)
    lo_t, hi_t = _mse_asymmetric(hist, qmax - qmin, stats.zeros)
    return _finish(max(lo_t, stats.min), min(hi_t, stats.max), symmetric)


def _finish(lo: float, hi: float, symmetric: bool) -> tuple[float, float]:
    lo, hi = float(min(lo, 0.0)), float(max(hi, 0.0))
    if symmetric:
        t = max(-lo, hi)
        return -t, t
    return lo, hi


def _clip_sides(stats: TensorStats, t: float, symmetric: bool) -> tuple[float, float]:
    t = float(min(t, stats.absmax))
    if symmetric:
        return -t, t
    return _finish(max(stats.min, -t), min(stats.max, t), False)


def _levels(qmin: int, qmax: int, symmetric: bool, nonnegative: bool) -> int:
    """Quantization steps available to |x| (symmetric) or to [0, t] (asymmetric, non-negative)."""
    if symmetric:
        zp = (qmin + qmax + 1) // 2
        return min(qmax - zp, zp - qmin)
    return qmax - qmin if nonnegative else (qmax - qmin) // 2


def _folded_quantile(hist: Histogram, q: float) -> float:
    counts, width = hist.folded()
    return _quantile(counts, 0.0, width, q)


def _signed_quantile(hist: Histogram, q: float) -> float:
    return _quantile(hist.counts, -hist.limit, hist.width, q)


def _quantile(counts: np.ndarray, start: float, width: float, q: float) -> float:
    """The value below which a fraction q of the counts lie (linear within a bin)."""
    cdf = np.cumsum(counts, dtype=np.float64)
    total = cdf[-1]
    target = q * total
    k = int(np.searchsorted(cdf, target, side="left"))
    k = min(k, len(counts) - 1)
    below = cdf[k - 1] if k > 0 else 0.0
    inside = counts[k]
    frac = 1.0 if inside == 0 else (target - below) / inside
    return start + (k + min(max(frac, 0.0), 1.0)) * width


def _smooth(p: np.ndarray, eps: float = 1e-4) -> np.ndarray | None:
    """TensorRT / onnxruntime smoothing: move a little mass (eps per bin) onto the empty bins,
    taken evenly from the others; eps shrinks so that no bin goes negative."""
    zero = p == 0
    n_zero = int(zero.sum())
    n_nonzero = p.size - n_zero
    if n_nonzero == 0:
        return None
    if n_zero == 0:
        return p
    eps = min(eps, 0.5 * float(p[~zero].min()) * n_nonzero / n_zero)
    eps1 = eps * n_zero / n_nonzero
    return p + eps * zero - eps1 * (~zero)


def _kl_for(counts: np.ndarray, i: int, levels: int) -> float:
    """KL(P || Q) for the threshold at bin i (TensorRT's entropy calibration)."""
    p = counts[:i].astype(np.float64)
    p[i - 1] += counts[i:].sum()
    sliced = counts[:i].astype(np.float64)
    nonzero = sliced > 0
    group = np.minimum(np.arange(i) // (i // levels), levels - 1)       # the last group takes the remainder
    merged = np.bincount(group, weights=sliced, minlength=levels)
    used = np.bincount(group, weights=nonzero, minlength=levels)
    q = np.where(nonzero, merged[group] / np.maximum(used[group], 1), 0.0)
    p /= p.sum()
    qs = q.sum()
    if qs == 0:
        return math.inf
    q /= qs
    ps, qs_ = _smooth(p), _smooth(q)
    if ps is None or qs_ is None:
        return math.inf
    mask = ps > 0
    return float(np.sum(ps[mask] * np.log(ps[mask] / qs_[mask])))


def _entropy_threshold(hist: Histogram, levels: int) -> float:
    counts, width = hist.folded()
    levels = max(levels, 1) + 1    # TensorRT: 128 quantized bins for int8's |x|
    nonzero = np.flatnonzero(counts)
    last = int(nonzero[-1]) + 1 if nonzero.size else 0
    if last <= levels:
        return last * width          # the data fits without clipping at this resolution
    stride = max(1, (last - levels) // 256)
    candidates = list(range(levels, last + 1, stride))
    if candidates[-1] != last:
        candidates.append(last)
    kl = [_kl_for(counts, i, levels) for i in candidates]
    best = candidates[int(np.argmin(kl))]
    if stride > 1:   # refine around the coarse optimum
        fine = range(max(levels, best - stride + 1), min(last, best + stride - 1) + 1)
        kl_fine = [(_kl_for(counts, i, levels), i) for i in fine]
        best = min(kl_fine)[1]
    return best * width


def _mse_threshold(hist: Histogram, levels: int, zeros: int = 0) -> float:
    """argmin over t of E[(x - q(x))^2] with |x| clipped at t and `levels` steps of t / levels
    (exact zeros, always representable, add no rounding noise)."""
    counts, width = hist.folded()
    n = counts.astype(np.float64)
    centers = (np.arange(len(n)) + 0.5) * width
    t = np.arange(1, len(n) + 1) * width                        # candidate thresholds: the bin edges
    # tail sums over bins whose center lies above t: bins j >= k where t = k * width
    s0 = np.cumsum(n[::-1])[::-1]
    s1 = np.cumsum((n * centers)[::-1])[::-1]
    s2 = np.cumsum((n * centers * centers)[::-1])[::-1]
    tail0, tail1, tail2 = (np.append(s[1:], 0.0) for s in (s0, s1, s2))
    clip = tail2 - 2 * t * tail1 + t * t * tail0 + tail0 * width * width / 12.0
    inside = s0[0] - tail0 - zeros
    step = t / levels
    error = inside * step * step / 12.0 + clip
    return float(t[int(np.argmin(error))])


def _mse_asymmetric(hist: Histogram, steps: int, zeros: int = 0) -> tuple[float, float]:
    """argmin over (lo, hi) of the expected squared error, on a grid of at most 512 x 512 edges."""
    n = hist.counts.astype(np.float64)
    width, start = hist.width, -hist.limit
    centers = start + (np.arange(len(n)) + 0.5) * width
    half = len(n) // 2
    edges = start + np.arange(len(n) + 1) * width
    stride = max(1, half // 512)
    lo_idx = np.arange(0, half + 1, stride)                      # lo = edges[i], i <= half (lo <= 0)
    hi_idx = np.arange(len(n), half - 1, -stride)[::-1]          # hi = edges[j], j >= half (hi >= 0)
    c0, c1, c2 = (np.concatenate([[0.0], np.cumsum(v)]) for v in (n, n * centers, n * centers * centers))
    total0, total1, total2 = c0[-1], c1[-1], c2[-1]
    lo, hi = edges[lo_idx], edges[hi_idx]
    # below lo: bins with index < i; above hi: bins with index >= j
    b0, b1, b2 = c0[lo_idx], c1[lo_idx], c2[lo_idx]
    a0, a1, a2 = total0 - c0[hi_idx], total1 - c1[hi_idx], total2 - c2[hi_idx]
    below = b2 - 2 * lo * b1 + lo * lo * b0 + b0 * width * width / 12.0
    above = a2 - 2 * hi * a1 + hi * hi * a0 + a0 * width * width / 12.0
    inside = total0 - b0[:, None] - a0[None, :] - zeros
    step = (hi[None, :] - lo[:, None]) / steps
    error = inside * step * step / 12.0 + below[:, None] + above[None, :]
    i, j = np.unravel_index(int(np.argmin(error)), error.shape)
    return float(lo[i]), float(hi[j])


def expected_mse(stats: TensorStats, lo: float, hi: float, *, qmin: int, qmax: int, symmetric: bool) -> float:
    """The expected squared quantization error per element for the range [lo, hi], from the histogram."""
    if stats.hist is None or stats.hist.exponent is None or stats.count == 0:
        raise QCError("the expected error needs a histogram, which was not collected")
    scale, zp = scale_zero_point(lo, hi, qmin=qmin, qmax=qmax, symmetric=symmetric)
    low, high = (qmin - zp) * float(scale), (qmax - zp) * float(scale)
    h = stats.hist
    n = h.counts.astype(np.float64)
    c = -h.limit + (np.arange(h.bins) + 0.5) * h.width
    clipped = np.clip(c, low, high)
    err = np.where(c == clipped, float(scale) ** 2 / 12.0, (c - clipped) ** 2 + h.width ** 2 / 12.0)
    return float(((n * err).sum() - stats.zeros * float(scale) ** 2 / 12.0) / n.sum())


def scale_zero_point(lo: float, hi: float, *, qmin: int, qmax: int, symmetric: bool) -> tuple[np.float32, int]:
    """The affine parameters (real = (q - zp) * scale) whose grid covers [lo, hi] and 0.

    Symmetric: zp is the middle of [qmin, qmax] (0 for signed, 128 for u8) and
    ``scale = max(|lo|, |hi|) / min(qmax - zp, zp - qmin)``. Asymmetric:
    ``scale = (hi - lo) / (qmax - qmin)`` and zp rounds ``qmin - lo / scale`` (so 0 is exact).
    An empty range gives scale 1.
    """
    if qmax <= qmin:
        raise ValueError(f"qmax ({qmax}) must exceed qmin ({qmin})")
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise QCError(f"cannot quantize the range [{lo}, {hi}]: it is not finite")
    if symmetric:
        zp = (qmin + qmax + 1) // 2
        t = max(-lo, hi)
        scale = t / min(qmax - zp, zp - qmin)
    else:
        scale = (hi - lo) / (qmax - qmin)
        zp = 0 if scale == 0 else int(np.clip(round(qmin - lo / scale), qmin, qmax))
    if scale == 0.0:
        return np.float32(1.0), (zp if symmetric else int(np.clip(0, qmin, qmax)))
    scale32 = np.float32(scale)
    if scale32 == 0 or not np.isfinite(scale32):
        scale32 = np.float32(np.finfo(np.float32).tiny) if scale32 == 0 else np.float32(np.finfo(np.float32).max)
    return scale32, int(zp)
