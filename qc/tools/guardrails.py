"""Guardrails: warnings, in the compile report, about quantization choices that the literature
(or onnxruntime's own documentation) says are likely to cost accuracy on this model and target.

:func:`check` looks at the compiled module (what was actually quantized, in QDQ or QOperator
form), the scheme's options, the calibration statistics of the pass context and the
target, and returns :class:`Guardrail` warnings, each with a code, the layer, what was seen,
why it matters (with its source) and what to do. Nothing is changed; a warning never stops the
compile.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from qc.ir.core import Module, Op, Value
from qc.ir.dtypes import DType
from qc.ir.types import TensorType
from qc.quant.outliers import MIN_ROW_LEVELS, int8_row_ops, row_levels

OUTLIER_FACTOR = 20.0
"""max |x| over the median per-feature max |x| above which a per-tensor activation scale is
set by a few outlier features (SmoothQuant: outlier channels are ~100x the others)."""
WEIGHT_RANGE_FACTOR = 10.0
"""largest over smallest per-output-channel max |W| above which one weight scale is too coarse"""
MIN_CALIBRATION_SAMPLES = 16
MAX_INT4_BLOCK = 128

WU_2023 = ("Wu et al. 2023, 'Understanding INT4 Quantization for Transformer Models' (arXiv 2301.12017): "
           "W4A4 keeps accuracy on encoder and encoder-decoder models but drops significantly on decoder-only ones")
DETTMERS_2022 = ("Dettmers et al. 2022, LLM.int8() (arXiv 2208.07339) and Xiao et al. 2022, SmoothQuant "
                 "(arXiv 2211.10438): a few activation features are far larger than the rest and, with one "
                 "scale per tensor, round every ordinary value to a handful of levels")
PER_CHANNEL = ("Krishnamoorthi 2018 (arXiv 1806.08342) and Nagel et al. 2019, data-free quantization "
               "(arXiv 1906.04721): with one scale for the whole weight, channels with small ranges "
               "round to a few levels or to zero; per-channel scales avoid it")
FEW_SAMPLES = ("static ranges are extremes of the calibration data; the usual sets are 100-500 samples "
               "(TFLite's representative dataset) or 300 (NNCF's subset_size); with few samples the "
               "ranges miss values the model meets later, which then clip")
ORT_VNNI = ("onnxruntime's quantization guide: on x86 CPUs without VNNI the u8 x s8 kernels add pairs of "
            "products in int16 and saturate with full-range int8 weights (its remedy: reduce_range, 7-bit "
            "weights); measured here on a QAT-style CNN: 19.7 dB instead of 133 dB with 7-bit weights")
INT8_ROWS = ("onnxruntime's arm64 MatMulNBits with accuracy_level 4 and symmetric int4 weights runs "
             "KleidiAI's qai8dxp kernels, which quantize each row of A to int8 with one scale over all K, "
             "where its per-block path (weights with zero points, and x86) takes one scale per 32 values; "
             "measured under qemu (16 x 576 A, one feature 300x the others): 30.9 dB against 39.8 dB")
INT4_BLOCKS = ("GPTQ and AWQ report int4 results with groups of 128 (g128) and degrade with larger groups; "
               "onnxruntime's MatMulNBits quantizer defaults to block 128, NNCF to group 128; one scale "
               "for more weights lets one large weight coarsen all the others")


@dataclass(frozen=True)
class Guardrail:
    """One warning: ``code`` (stable, for scripts), the ``layer`` it concerns (an op or tensor,
    or ``model``), ``what`` was seen, ``why`` it matters (with the source), and what ``to_do``."""

    code: str
    layer: str
    what: str
    why: str
    to_do: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def check(module: Module, opts: Any | None, calib: Any | None, target: Any | None = None,
          source_ops: Mapping[str, int] | None = None) -> list[Guardrail]:
    """Every guardrail warning for the compiled ``module`` (``opts``: the QuantOptions; ``calib``:
    the calibration statistics when the scheme calibrated; ``target``: a Target, or None to take
    the features from ``opts.target_features``; ``source_ops``: op counts of the input model, by
    qualified type, to tell whether the scheme changed anything)."""
    features = set(getattr(target, "features", None) or getattr(opts, "target_features", ()) or ())
    out: list[Guardrail] = []
    if source_ops is not None:
        out += _nothing_quantized(module, opts, source_ops)
    out += _four_bit_activations_on_decoder(module, opts)
    out += _activation_outliers(module, calib)
    out += _per_tensor_weights(module)
    out += _few_samples(opts, calib)
    out += _u8s8_saturation(module, features)
    out += _int4_blocks(module)
    if calib is not None:
        out += int8_rows(module, calib.tensors, target)
    return out


# -- the checks -----------------------------------------------------------------------------------
QUANTIZED_FORMS = frozenset({
    "onnx.QuantizeLinear", "onnx.DequantizeLinear", "onnx.DynamicQuantizeLinear", "onnx.MatMulInteger",
    "onnx.ConvInteger", "onnx.QLinearConv", "onnx.QLinearMatMul", "com.microsoft.MatMulNBits",
    "com.microsoft.DynamicQuantizeMatMul",
    "com.microsoft.MatMulIntegerToFloat", "com.microsoft.DynamicQuantizeLSTM", "com.microsoft.QGemm",
    "com.microsoft.QAttention", "com.microsoft.QuantizeLinear", "com.microsoft.DequantizeLinear",
    "com.microsoft.QLinearAdd", "com.microsoft.QLinearMul", "com.microsoft.QLinearConcat",
    "com.microsoft.QLinearSigmoid", "com.microsoft.QLinearLeakyRelu", "com.microsoft.QLinearGlobalAveragePool",
    "com.microsoft.QLinearAveragePool", "com.microsoft.QLinearSoftmax", "com.microsoft.GatherBlockQuantized"})
"""op types (qualified: ``domain.type`` outside the default domain) that hold quantized tensors"""


def _nothing_quantized(module: Module, opts: Any | None, source_ops: Mapping[str, int]) -> list[Guardrail]:
    if opts is None:
        return []
    after = Counter(op.qualified_type for op in module.walk())
    marker = ("onnx.Cast",) if getattr(opts, "scheme", None) == "fp16" else tuple(QUANTIZED_FORMS)
    if any(after.get(t, 0) > source_ops.get(t, 0) for t in marker):
        return []
    from qc.quant.schemes import DEFAULT_OPS

    wanted = (getattr(opts, "ops", None) or DEFAULT_OPS).split(",")
    present = {t: n for t, n in source_ops.items() if t in QUANTIZED_FORMS}
    if present:
        seen = ", ".join(f"{short(t)} x{n}" for t, n in sorted(present.items()))
        why = f"the model is already quantized ({seen}); qc leaves quantized ops as they are"
        to_do = "compile the float model it was made from, or compile this one without --quant"
    elif getattr(opts, "scheme", None) == "fp16":
        why = "no float32 weight or compute op was converted"
        to_do = "check that the model computes in float32 (qc show --summary)"
    else:
        compute = sorted(short(t) for t in source_ops if t in RECURRENT_OPS)
        why = f"no {'/'.join(wanted)} op outside the excluded layers"
        if compute:
            why += f"; its compute is in {', '.join(compute)}, which --quant does not quantize"
        to_do = "choose the op types with --quant-ops, or check --exclude"
    return [Guardrail("nothing-quantized", "model", f"--quant {opts.scheme} changed no op: {why}",
                      "a compile that quantizes nothing gives a model as large and as slow as the input",
                      to_do)]


RECURRENT_OPS = frozenset({"onnx.LSTM", "onnx.GRU", "onnx.RNN", "onnx.Scan", "onnx.Loop"})


def short(op_type: str) -> str:
    """A qualified op type as the user wrote it: ``LSTM``, ``com.microsoft.MatMulNBits``."""
    return op_type.removeprefix("onnx.")


def _four_bit_activations_on_decoder(module: Module, opts: Any | None) -> list[Guardrail]:
    layers = [q for q in _activation_quantizers(module) if _dtype(q.results[0]) in (DType.i4, DType.u4)]
    if not layers:
        return []
    why_decoder = decoder_only(module)
    if why_decoder is None:
        return []
    return [Guardrail("decoder-4bit-activations", "model",
                      f"{len(layers)} activations quantized to 4 bits in a decoder-only model ({why_decoder})",
                      WU_2023 + "; activations cause most of the quantization error (LLM.int8(), SmoothQuant)",
                      "use 8-bit activations (--quant w8a8, or w4a8: 4-bit weights, 8-bit activations), or keep "
                      "the sensitive layers in higher precision (--exclude REGEX)")]


def _activation_outliers(module: Module, calib: Any | None) -> list[Guardrail]:
    if calib is None:
        return []
    out = []
    for q in _activation_quantizers(module):
        x = q.operands[0]
        stats = calib.tensors.get(x.name) if x is not None else None
        absmax = getattr(stats, "channel_absmax", None)
        if absmax is None or absmax.size < 8 or not _scalar(q.operands[1]):
            continue
        if "qc.read_columns" in q.meta:      # fold-outlier-gather: only these columns meet nonzero weights
            absmax = absmax[q.meta["qc.read_columns"]]
        median = float(np.median(absmax))
        peak = float(absmax.max())
        if median <= 0 or peak / median <= OUTLIER_FACTOR:
            continue
        big = int(np.count_nonzero(absmax > OUTLIER_FACTOR * median))
        out.append(Guardrail(
            "activation-outliers", f"%{x.name} -> {_users(q)}",
            f"one scale for %{x.name}, whose max |x| {peak:.4g} is {peak / median:.0f}x its median per-feature "
            f"max |x| {median:.4g} ({big} of {absmax.size} features above {OUTLIER_FACTOR:g}x)",
            DETTMERS_2022,
            "--outliers split|smooth|both (the default for static schemes keeps these columns in float16 or "
            "moves them into the weights), or --exclude the layer"))
    return out


def _per_tensor_weights(module: Module) -> list[Guardrail]:
    out = []
    for op, codes, zp, axis in _integer_weights(module):
        if _scalar_array(zp) is None or codes.ndim < 2:
            continue
        centered = np.abs(codes.astype(np.int64) - int(_scalar_array(zp)))
        per_channel = np.moveaxis(centered, axis, 0).reshape(centered.shape[axis], -1).max(axis=1)
        nonzero = per_channel[per_channel > 0]
        if nonzero.size < 2:
            continue
        ratio = float(nonzero.max() / nonzero.min())
        zeros = int(per_channel.size - nonzero.size)
        if ratio <= WEIGHT_RANGE_FACTOR and not zeros:
            continue
        out.append(Guardrail(
            "weight-per-tensor", _name(op),
            f"one weight scale for {per_channel.size} output channels whose ranges differ {ratio:.0f}x "
            f"(largest |code| per channel {int(nonzero.max())} .. {int(nonzero.min())})"
            + (f"; {zeros} channels round to all zeros" if zeros else ""),
            PER_CHANNEL, "--weights channel (one scale per output channel; the default of the 8-bit schemes)"))
    return out


def _few_samples(opts: Any | None, calib: Any | None) -> list[Guardrail]:
    if calib is None or opts is None:
        return []
    from qc.quant.schemes import needs_calibration

    samples = int(getattr(calib, "samples", 0))
    if not needs_calibration(opts) or not getattr(calib, "tensors", None) or samples >= MIN_CALIBRATION_SAMPLES:
        return []
    return [Guardrail("few-calibration-samples", "calibration",
                      f"ranges from {samples} calibration samples (fewer than {MIN_CALIBRATION_SAMPLES})",
                      FEW_SAMPLES,
                      f"give at least {MIN_CALIBRATION_SAMPLES} samples, better 100 or more (--samples N with "
                      "--calib-text, or more arrays in --calib); samples held aside for the SQNR check "
                      "(--holdout) do not count")]


def _u8s8_saturation(module: Module, features: set[str]) -> list[Guardrail]:
    x86 = bool({"avx2", "avx512"} & features)
    if not x86 or {"vnni", "avx512vnni", "avxvnni"} & features:
        return []
    out = []
    for op, act_dtype, codes in _integer_products(module):
        if act_dtype is not DType.u8 or codes is None or codes.dtype != np.int8:
            continue
        peak = int(np.abs(codes.astype(np.int16)).max()) if codes.size else 0
        if peak <= 63:
            continue
        out.append(Guardrail(
            "x86-u8s8-saturation", _name(op),
            f"uint8 activations x int8 weights with codes up to |{peak}| (more than 7 bits) on an x86 target "
            "without VNNI", ORT_VNNI,
            "train the weights with 7-bit codes (QAT with reduce_range; qc's own quantization does it by default "
            "on this target, and --no-reduce-range stores uint8 weights, which do not saturate either), use int8 "
            "activations, or run on a VNNI or Arm target"))
    return out


def _int4_blocks(module: Module) -> list[Guardrail]:
    out = []
    for op in module.graph:
        if op.op_type == "MatMulNBits" and op.domain == "com.microsoft":
            bits, block = op.attr("bits", 4), op.attr("block_size", 0)
        elif op.op_type == "DequantizeLinear" and op.domain in ("", "ai.onnx") and op.operands[0].const is not None:
            if _dtype(op.operands[0]) not in (DType.i4, DType.u4):
                continue
            bits, block = 4, op.attr("block_size", 0)
            if not block:
                block = None       # per tensor / per channel: one scale for a whole row or more
        else:
            continue
        if bits != 4 or (block is not None and block <= MAX_INT4_BLOCK):
            continue
        what = (f"4-bit weights with blocks of {block}" if block
                else "4-bit weights without blocks (per channel or per tensor)")
        layer = _name(op) if op.op_type == "MatMulNBits" else ", ".join(_name(u) for u in op.results[0].users())
        out.append(Guardrail("int4-large-blocks", layer, what, INT4_BLOCKS,
                             f"--block-size 32, 64 or 128 (at most {MAX_INT4_BLOCK}) with --weights block"))
    return out


def int8_rows(module: Module, stats_by_name: Mapping[str, Any], target: Any | None) -> list[Guardrail]:
    """``int8-rows-outliers`` for :func:`int8_row_ops` whose A's statistics (``stats_by_name``,
    by value name: calibration statistics with a row sample or per-feature ranges) show rows where
    an outlier feature coarsens the others."""
    out = []
    for op in int8_row_ops(module, target):
        a = op.operands[0]
        levels = row_levels(stats_by_name.get(a.name))
        if levels is None:
            continue
        low = levels < MIN_ROW_LEVELS
        if not low.any():
            continue
        k = op.attr("K", 0)
        seen = (f"{int(low.sum())} of {low.size} calibration rows" if low.size > 1
                else "the calibrated per-feature ranges")
        out.append(Guardrail(
            "int8-rows-outliers", _name(op),
            f"the runtime quantizes %{a.name} to int8 per row over K = {k}; in {seen} an outlier feature "
            f"leaves the other values' rms {float(levels.min()):.2g} int8 steps (fewer than {MIN_ROW_LEVELS:g})",
            INT8_ROWS,
            "store the weights with zero points (--asymmetric, qc's int4 default: the runtime then quantizes "
            "A per block of 32), or keep this layer's A in float (accuracy_level 1: qc compile --emit onnx "
            "for this target does it given calibration data, the guard-int8-rows pass; --exclude keeps the "
            "whole layer float); qc's C backend quantizes A per block of 32 and is not affected"))
    return out


# -- decoder-only detection -----------------------------------------------------------------------
def decoder_only(module: Module) -> str | None:
    """Why the module looks like a decoder-only (causal) language model, or None: a ``qc models``
    producer that is a decoder, a Trilu, or a Where selecting on a causal mask (a triangular
    constant, or a comparison of two position ranges)."""
    producer = getattr(module, "producer_name", "") or ""
    if producer.startswith("qc.models."):
        from qc.models import MODELS

        for name, (mod, description) in MODELS.items():
            if producer == f"qc.models.{mod}" and "decoder" in description:
                return f"{name}, a decoder"
    for op in module.walk():
        if op.op_type == "Trilu":
            return f"a Trilu ('{_name(op)}') builds a causal mask"
        if op.op_type == "Where" and op.operands and op.operands[0] is not None:
            cond = op.operands[0]
            if _triangular(cond):
                return f"Where '{_name(op)}' selects on a triangular constant (a causal mask)"
            p = cond.producer
            if p is not None and p.op_type in ("Less", "Greater", "LessOrEqual", "GreaterOrEqual") \
                    and all(_from_range(v) for v in p.operands):
                return f"Where '{_name(op)}' selects on a comparison of positions (a causal mask)"
    return None


def _triangular(v: Value) -> bool:
    if v.const is None:
        return False
    try:
        a = np.asarray(v.const.numpy())
    except Exception:
        return False
    if a.ndim < 2 or a.shape[-1] != a.shape[-2] or a.shape[-1] < 2:
        return False
    m = a.reshape(-1, a.shape[-2], a.shape[-1])[0] != 0
    return bool((np.array_equal(m, np.tril(m)) or np.array_equal(m, np.triu(m))) and m.any() and not m.all())


def _from_range(v: Value | None, depth: int = 4) -> bool:
    """``v`` is a Range (positions), possibly through Unsqueeze / Reshape / Cast / Add."""
    p = v.producer if v is not None else None
    if p is None or depth == 0:
        return False
    if p.op_type == "Range":
        return True
    return p.op_type in ("Unsqueeze", "Reshape", "Cast", "Add", "Expand") and _from_range(p.operands[0], depth - 1)


# -- reading the quantized module -----------------------------------------------------------------
def _activation_quantizers(module: Module) -> Iterator[Op]:
    """QuantizeLinear ops of activations (not of constants) in the main graph."""
    for op in module.graph:
        if op.op_type == "QuantizeLinear" and op.domain in ("", "ai.onnx") and op.operands[0] is not None \
                and op.operands[0].const is None:
            yield op


_INTEGER_OPS = {   # op type -> (activation operand, weight codes operand, weight zero point operand, out axis)
    "MatMulInteger": (0, 1, 3, -1), "QLinearMatMul": (0, 3, 5, -1), "QLinearConv": (0, 3, 5, 0),
    "DynamicQuantizeMatMul": (None, 1, 3, -1), "MatMulIntegerToFloat": (0, 1, 5, -1),
}


def _integer_products(module: Module) -> Iterator[tuple[Op, DType | None, np.ndarray | None]]:
    """(op, activation dtype, constant weight codes) of every integer product: QDQ compute ops
    with a dequantized activation and weight, and onnxruntime's integer ops."""
    for op, codes, _zp, _axis in _integer_weights(module):
        if op.op_type in _INTEGER_OPS:
            a = _INTEGER_OPS[op.op_type][0]
            act = DType.u8 if a is None else _dtype(op.operands[a])
        else:
            dq = op.operands[0].producer if op.operands[0] is not None else None
            if dq is None or dq.op_type != "DequantizeLinear" or dq.operands[0].const is not None:
                continue
            act = _dtype(dq.operands[0])
        yield op, act, codes


def _integer_weights(module: Module) -> Iterator[tuple[Op, np.ndarray, np.ndarray | None, int]]:
    """(op, weight codes, zero point, output-channel axis) of compute ops whose weight is stored
    as integers: ``DequantizeLinear(@codes)`` feeding MatMul / Gemm / Conv, or the weight operand
    of an integer op."""
    for op in module.graph:
        if op.domain in ("", "ai.onnx") and op.op_type in ("MatMul", "Gemm", "Conv") and len(op.operands) > 1:
            dq = op.operands[1].producer if op.operands[1] is not None else None
            if (dq is None or dq.op_type != "DequantizeLinear" or dq.operands[0].const is None
                    or dq.attr("block_size", 0)):
                continue
            codes = np.asarray(dq.operands[0].const.numpy())
            zp = dq.operands[2].const.numpy() if len(dq.operands) > 2 and dq.operands[2] is not None \
                and dq.operands[2].const is not None else np.zeros((), codes.dtype)
            axis = 0 if op.op_type == "Conv" or (op.op_type == "Gemm" and op.attr("transB", 0)) else codes.ndim - 1
            yield op, codes, zp, axis
        elif op.op_type in _INTEGER_OPS:
            _a, w, z, axis = _INTEGER_OPS[op.op_type]
            wv = op.operands[w] if w < len(op.operands) else None
            if wv is None or wv.const is None:
                continue
            codes = np.asarray(wv.const.numpy())
            zv = op.operands[z] if z < len(op.operands) else None
            zp = np.asarray(zv.const.numpy()) if zv is not None and zv.const is not None else np.zeros((), codes.dtype)
            yield op, codes, zp, axis % codes.ndim if codes.ndim else 0


def _scalar_array(a: np.ndarray | None) -> int | None:
    """The value of a one-element zero point (per-tensor quantization), else None."""
    if a is None:
        return None
    a = np.asarray(a)
    return int(a.reshape(-1)[0]) if a.size == 1 else None


def _scalar(v: Value | None) -> bool:
    return v is not None and isinstance(v.type, TensorType) and v.type.shape in ((), (1,))


def _dtype(v: Value | None) -> DType | None:
    return v.type.dtype if v is not None and isinstance(v.type, TensorType) else None


def _users(q: Op) -> str:
    """The compute ops reading a quantized activation (through its DequantizeLinear), by name."""
    names = []
    for user in q.results[0].users():
        targets = user.results[0].users() if user.op_type == "DequantizeLinear" and user.results else [user]
        names.extend(_name(t) for t in targets)
    return ", ".join(dict.fromkeys(names)) or "?"


def _name(op: Op) -> str:
    return op.name or (op.results[0].name if op.results and op.results[0] is not None else op.op_type)


def format_warnings(warnings: list[dict[str, str]], per_layer: bool = False) -> list[str]:
    """Report lines for :func:`check`'s warnings (as dicts, the JSON report's form): grouped by
    code, each layer on a line (the first 3 unless ``per_layer``), then why and what to do once."""
    if not warnings:
        return []
    lines = [f"  warnings ({len(warnings)}):"]
    groups: dict[str, list[dict[str, str]]] = {}
    for w in warnings:
        groups.setdefault(w["code"], []).append(w)
    for code, group in groups.items():
        shown = group if per_layer else group[:3]
        lines.append(f"    [{code}]" + (f" {len(group)} layers" if len(group) > 1 else ""))
        lines.extend(f"      {w['layer']}: {w['what']}" for w in shown)
        if len(shown) < len(group):
            lines.append(f"      ... {len(group) - len(shown)} more (--report lists them)")
        lines.append(f"      why: {group[0]['why']}")
        lines.append(f"      to do: {group[0]['to_do']}")
    return lines
