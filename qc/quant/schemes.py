"""Quantization schemes: ``qc compile --quant NAME`` -> a pipeline of registered passes.

A scheme is a recipe, not code: it only chooses passes and their options, so every step is
visible in ``--print-ir-after-all`` and can be rerun by hand with ``qc opt -p``. ``pipeline``
returns the pipeline string; ``qc passes`` lists the schemes' default pipelines as named
pipelines (``w8a8``, ``dyn8``, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from qc.errors import QCError


@dataclass(frozen=True)
class QuantOptions:
    """The user's choices; None means "the scheme's default"."""

    scheme: str
    weights: str | None = None          # tensor | channel | block
    weight_symmetric: bool | None = None
    weight_algo: str | None = None      # rtn | gptq | awq | awq+gptq (None: rtn, or INT4_CALIBRATED with data)
    weight_search: bool | None = None   # per-block scale / clip search weighted by E[x^2] (needs calibration)
    act_order: bool | None = None       # GPTQ: inputs in order of decreasing E[x^2] (static groups)
    block_size: int | None = None       # 32 | 64 | 128
    activations: str | None = None      # int8 | uint8 | int16 | uint16 | int4 | uint4
    calib_method: str | None = None     # minmax | percentile | entropy | mse
    ops: str | None = None              # op types to quantize, e.g. "MatMul,Gemm"
    exclude: str = ""                   # regex on op names
    form: str = "qdq"                   # qdq | qop
    activation_pairs: bool = False      # also quantize activation x activation MatMuls (attention)
    reduce_range: bool | None = None    # 7-bit codes in 8-bit weights (None: reduces_range's default)
    outliers: str | None = None         # none | split | smooth | both (static schemes)
    outlier_mode: str = "budget"        # split-outliers mode: threshold | budget | error
    outlier_threshold: float = 6.0      # threshold mode
    outlier_fraction: float = 0.01      # budget / error modes: most columns per matmul in float16
    outlier_dtype: str | None = None    # split-outliers' outlier part: float16 | float32 (None: by target)
    smooth_alpha: float = 0.5
    rotate: str = ""                    # rotate first (the rotate pass); its online Hadamards: down | all | none
    act_granularity: str | None = None  # dyn8: token (default) | tensor; w4a8: block (default) | token
    kv_cache_dtype: str = "float32"     # KV-cache decoders: float32 | int8 (quantize-kv-cache)
    target_features: tuple[str, ...] = ()


@dataclass(frozen=True)
class Scheme:
    name: str
    description: str
    weight_bits: int | None         # None: weights stay float (fp16 converts them instead)
    weights: str                    # default granularity
    activations: str | None         # default activation type; None = float activations
    dynamic: bool = False           # activations quantized at run time
    calibrated: bool = False        # needs calibration data


SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("w8a8", "int8 weights (per channel), int8 activations with calibrated static scales",
           8, "channel", "int8", calibrated=True),
    Scheme("w8a16", "int8 weights (per channel), int16 activations with calibrated static scales",
           8, "channel", "int16", calibrated=True),
    Scheme("dyn8", "int8 weights (per channel), int8 activations quantized at run time per token "
           "(LLM.int8() vector-wise; MatMulInteger)", 8, "channel", "uint8", dynamic=True),
    Scheme("w8", "int8 weights (per channel) only; float activations", 8, "channel", None),
    Scheme("w4", "int4 weights in blocks of 32 along the input dimension; float activations",
           4, "block", None),
    Scheme("w4a8", "int4 block weights with int8 activations quantized at run time",
           4, "block", "uint8", dynamic=True),
    Scheme("w4a4", "int4 block weights with int4 calibrated activations (research: how much 4-bit "
           "activations cost)", 4, "block", "int4", calibrated=True),
    Scheme("fp16", "float16 weights and compute", None, "tensor", None),
)}

_ACT_DTYPES = {"int8": "i8", "uint8": "u8", "int16": "i16", "uint16": "u16", "int4": "i4", "uint4": "u4"}
DEFAULT_OPS = "MatMul,Gemm,Conv"


def scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise QCError(f"unknown quantization scheme '{name}'", hint="one of " + ", ".join(SCHEMES))
    return SCHEMES[name]


def weight_dtype(opts: QuantOptions, s: Scheme) -> str:
    """The weight storage type.

    On x86 CPUs without VNNI onnxruntime's u8 x s8 kernels add pairs of products in int16 and
    saturate on full-range int8 weights; its u8 x u8 kernels do not, but run at about FP32's speed.
    With ``reduces_range`` (the default of the static schemes there) 8-bit weights are int8 with
    7-bit codes (-63..63), onnxruntime's own remedy, which its fast u8 x s8 kernels take without
    saturating; without it (``--no-reduce-range``) they are stored u8 (zero point 128 when
    symmetric), all 8 bits, next to u8 activations.
    """
    bits = s.weight_bits
    symmetric = _weight_symmetric(opts, s)
    if bits == 8 and _x86_without_vnni(opts) and activation_dtype(opts, s) == "u8" and not reduces_range(opts, s):
        return "u8"
    if bits == 4:
        return "i4" if symmetric else "u4"
    return "i8" if symmetric else "u8"


def reduces_range(opts: QuantOptions, s: Scheme) -> bool:
    """7-bit codes in 8-bit weights: ``--reduce-range`` / ``--no-reduce-range``, else on for the
    static schemes with uint8 activations on x86 without VNNI. Measured there (benchmarks/README.md,
    "x86 defaults"): SmolLM2 w8a8 0.54x FP32's latency instead of 0.85x for +0.7% perplexity,
    MiniLM 0.57x instead of 0.97x for mean cosine 0.9984 instead of 0.9989."""
    if opts.reduce_range is not None:
        return opts.reduce_range
    return (s.calibrated and s.weight_bits == 8 and _x86_without_vnni(opts)
            and activation_dtype(opts, s) == "u8")


ACT_GRANULARITIES = ("token", "tensor")


def per_token(opts: QuantOptions, s: Scheme) -> bool:
    """dyn8's activations one scale per row (``dynamic-per-token``), unless ``act_granularity``
    is "tensor" (DynamicQuantizeLinear, one scale per tensor) or the weights are not symmetric int8."""
    if s.name == "w4a8":
        return False   # its per-token form is w4a8_per_token's
    g = opts.act_granularity or ("token" if s.name == "dyn8" else "tensor")
    if g not in ACT_GRANULARITIES:
        raise QCError(f"unknown activation granularity '{g}'", hint="one of " + ", ".join(ACT_GRANULARITIES))
    if g == "token" and s.name != "dyn8":
        raise QCError(f"per-token activations apply to dyn8 and w4a8, not {s.name}")
    return g == "token" and _weight_symmetric(opts, s) and not reduces_range(opts, s) and opts.form != "qop"


W4A8_GRANULARITIES = ("block", "token")


def w4a8_per_token(opts: QuantOptions, s: Scheme) -> bool:
    """w4a8 with ``--act-granularity token``: one activation scale per row and block scales as
    ws x wsi (the ``w4a8-per-token`` pass, after lower-qop); the default, "block", leaves A to
    MatMulNBits' accuracy_level 4 (per block of 32)."""
    if s.name != "w4a8":
        return False
    g = opts.act_granularity or "block"
    if g not in W4A8_GRANULARITIES:
        raise QCError(f"unknown w4a8 activation granularity '{g}'", hint="one of " + ", ".join(W4A8_GRANULARITIES))
    return g == "token"


def _weight_symmetric(opts: QuantOptions, s: Scheme) -> bool:
    if opts.weight_symmetric is not None:
        return opts.weight_symmetric
    return s.weight_bits != 4   # int4 blocks: asymmetric (a zero point per block costs 4 bits, gains a level)


def _x86(opts: QuantOptions) -> bool:
    return bool({"avx2", "avx512", "sse4.1"} & set(opts.target_features))


def _x86_without_vnni(opts: QuantOptions) -> bool:
    f = set(opts.target_features)
    return ("avx2" in f or "avx512" in f) and "vnni" not in f and "avx512vnni" not in f


def activation_dtype(opts: QuantOptions, s: Scheme) -> str | None:
    name = opts.activations or s.activations
    if opts.activations is None and name == "int8" and _x86(opts):
        name = "uint8"   # onnxruntime's x86 integer kernels take u8 activations
    if name is None:
        return None
    if name not in _ACT_DTYPES:
        raise QCError(f"unknown activation type '{name}'", hint="one of " + ", ".join(_ACT_DTYPES))
    return _ACT_DTYPES[name]


WEIGHT_ALGOS = ("rtn", "gptq", "awq", "awq+gptq")
# The 4-bit default given calibration data (with_calibration): the best of the measured
# combinations on SmolLM2 and MiniLM (docs/quantization.md, "int4 with calibration data").
INT4_CALIBRATED = {"weight_algo": "awq+gptq", "weight_search": True, "act_order": True}


def needs_calibration(opts: QuantOptions) -> bool:
    s = scheme(opts.scheme)
    return (s.calibrated or (opts.weight_algo or "rtn") != "rtn" or bool(opts.weight_search)
            or (s.dynamic and (opts.outliers or "none") != "none"))


def with_calibration(opts: QuantOptions) -> QuantOptions:
    """The options when calibration data is given: dyn8 then keeps its outlier columns in
    float16 (``--outliers split``, LLM.int8()'s decomposition with the columns chosen from the
    data) unless ``--outliers`` says otherwise."""
    s = scheme(opts.scheme)
    if s.name in DYNAMIC_SPLIT and opts.outliers is None:
        opts = replace(opts, outliers="split")
    if s.weight_bits == 4 and opts.weight_algo is None:
        fill = {k: v for k, v in INT4_CALIBRATED.items() if getattr(opts, k) is None}
        opts = replace(opts, **fill)
    return opts


# The optimization pipeline `qc compile` runs before the backend (registered as `default`).
OPTIMIZATION_PIPELINE = "propagate-shapes,remove-identity,fold-constants,fold-batchnorm,cse,dce"


def needs_opset(opts: QuantOptions) -> int:
    """The default-domain opset the scheme's ops need (int4 / int16 / blocked Q/DQ: 21)."""
    s = scheme(opts.scheme)
    act = activation_dtype(opts, s)
    granularity = opts.weights or s.weights
    if s.weight_bits == 4 or granularity == "block" or (act is not None and act[-2:] in ("16", "i4", "u4")):
        return 21
    return 13


ROTATE_ONLINE_OPS = r"rotate\.hadamard$"
"""The ops of rotate's online Hadamards (passes/rotate.py ONLINE_OP): left float, their output is quantized."""


def pipeline(opts: QuantOptions) -> str:
    """The pipeline string for ``opts`` (the default optimization pipeline first)."""
    s = scheme(opts.scheme)
    if opts.rotate:
        opts = replace(opts, exclude=f"{opts.exclude}|{ROTATE_ONLINE_OPS}" if opts.exclude else ROTATE_ONLINE_OPS)
    passes = [OPTIMIZATION_PIPELINE]
    if opts.rotate:
        if opts.rotate not in ("down", "all", "none"):
            raise QCError(f"unknown rotate online Hadamards '{opts.rotate}'", hint="one of down, all, none")
        passes.append(f"rotate{{online={opts.rotate}}}")   # before calibrate: the rotated activations' statistics
    if s.name == "fp16":
        return ",".join(passes + ["to-fp16", "dce"])
    ops = opts.ops or DEFAULT_OPS
    algo = opts.weight_algo or "rtn"
    if algo not in WEIGHT_ALGOS:
        raise QCError(f"unknown weight algorithm '{algo}'", hint="one of " + ", ".join(WEIGHT_ALGOS))
    granularity = opts.weights or s.weights
    if granularity not in ("tensor", "channel", "block"):
        raise QCError(f"unknown weight granularity '{granularity}'", hint="one of tensor, channel, block")
    block = opts.block_size or 32
    act = activation_dtype(opts, s)
    method = opts.calib_method or "minmax"
    if _requantizes_conv(opts, s):
        passes.append("equalize")
    if needs_calibration(opts):
        collect = []
        if "gptq" in algo or opts.weight_search:
            collect.append("hessian=true")
        if "awq" in algo:
            collect.append("rows=512")
        if (s.calibrated or s.dynamic) and not opts.activation_pairs:
            collect.append("activation-pairs=false")
        if _requantizes_conv(opts, s):
            collect.append("output-ops=Conv")
        passes.append(f"calibrate{{method={method},ops={ops}" + "".join("," + c for c in collect) + "}")
    bits = s.weight_bits - 1 if reduces_range(opts, s) and s.weight_bits == 8 else s.weight_bits
    passes.extend(outlier_passes(opts, s))
    qw = [f"bits={bits}", f"granularity={granularity}", f"symmetric={str(_weight_symmetric(opts, s)).lower()}",
          f"dtype={weight_dtype(opts, s)}", f"algo={algo}", f"ops={ops}"]
    if granularity == "block":
        qw.append(f"block-size={block}")
    if opts.weight_search:
        qw.append("search=true")
    if opts.act_order and "gptq" in algo:
        qw.append("act-order=true")
    if opts.exclude:
        qw.append(f"exclude={opts.exclude}")
    conv7 = _conv_weights_7bit(opts, s, ops)
    if _requantizes_conv(opts, s) and granularity in ("tensor", "channel") and algo == "rtn":
        # the Conv weights' rounding error, as the quantize-weights below rounds them
        sym = "true" if conv7 else str(_weight_symmetric(opts, s)).lower()
        bc = [f"bits={7 if conv7 else bits}", f"granularity={granularity}", f"symmetric={sym}",
              f"dtype={'i8' if conv7 else weight_dtype(opts, s)}"]
        bc += [f"exclude={opts.exclude}"] if opts.exclude else []
        passes.append("bias-correction{" + ",".join(bc) + "}")
    if conv7:
        rest = ",".join(o for o in ops.split(",") if o != "Conv")
        qw[qw.index(f"ops={ops}")] = f"ops={rest}"
        if rest:
            passes.append("quantize-weights{" + ",".join(qw) + "}")
        c7 = ["bits=7", f"granularity={granularity}", "symmetric=true", "dtype=i8", f"algo={algo}", "ops=Conv"]
        passes.append("quantize-weights{" + ",".join(c7 + [f"exclude={opts.exclude}"] * bool(opts.exclude)) + "}")
    else:
        passes.append("quantize-weights{" + ",".join(qw) + "}")
    if per_token(opts, s):
        passes.append("dynamic-per-token")  # the ops it does not take keep the per-tensor form below
    if act is not None:
        qa = [f"ops={ops}", f"dtype={act}"]
        if s.dynamic:
            qa.append("dynamic=true")
        else:
            qa.append(f"method={method}")
        if not opts.activation_pairs:
            qa.append("activation-pairs=false")
        if opts.exclude:
            qa.append(f"exclude={opts.exclude}")
        passes.append("insert-qdq{" + ",".join(qa) + "}")
        if _requantizes_conv(opts, s):
            rq = [f"dtype={act}", f"method={method}"] + ([f"exclude={opts.exclude}"] if opts.exclude else [])
            passes.append("requantize-outputs{" + ",".join(rq) + "}")
        passes.append("fold-qdq")
        if folds_outlier_gather(opts, s):
            passes.append("fold-outlier-gather")
    if opts.form == "qop" or s.dynamic or s.weight_bits == 4 and act is None:
        lower = ["accuracy-level=4"] if s.name == "w4a8" else []
        passes.append("lower-qop" + ("{" + ",".join(lower) + "}" if lower else ""))
        if w4a8_per_token(opts, s):
            passes.append("w4a8-per-token")
    if opts.kv_cache_dtype == "int8":
        passes.append("quantize-kv-cache")
    elif opts.kv_cache_dtype != "float32":
        raise QCError(f"unknown KV cache type '{opts.kv_cache_dtype}'", hint="float32 or int8")
    passes.append("dce")
    return ",".join(passes)



def _conv_weights_7bit(opts: QuantOptions, s: Scheme, ops: str) -> bool:
    """Conv weights int8 with 7-bit codes (-63..63) where ``weight_dtype`` would store them u8 (x86
    without VNNI, u8 activations): onnxruntime's u8 x u8 QLinearConv is many times slower than its
    u8 x s8 one there (MobileNet-v2: 13x FP32's latency, benchmarks/cnn_w8a8.py), and 7-bit codes keep
    the u8 x s8 pairwise int16 sums from saturating (onnxruntime's ``reduce_range`` advice)."""
    return (s.weight_bits == 8 and "Conv" in ops.split(",") and (opts.weights or s.weights) != "block"
            and weight_dtype(opts, s) == "u8" and _x86_without_vnni(opts) and activation_dtype(opts, s) == "u8")


def _requantizes_conv(opts: QuantOptions, s: Scheme) -> bool:
    """Static schemes quantizing Convs give each Conv an output QuantizeLinear (requantize-outputs):
    the Conv, its Relu / Clip and the requantization are then one integer unit."""
    return s.calibrated and s.activations is not None and "Conv" in (opts.ops or DEFAULT_OPS).split(",")


OUTLIER_CHOICES = ("none", "split", "smooth", "both")
OUTLIER_DTYPES = ("float16", "float32")
DEFAULT_OUTLIERS = "both"
DYNAMIC_SPLIT = ("dyn8",)   # dynamic schemes that take float16 outlier columns (from calibration data)


def outlier_dtype(opts: QuantOptions) -> str:
    """The outlier part's float type: ``--outlier-dtype``, else float32 on x86 (onnxruntime's x86 CPU
    provider has no float16 GEMM: it would run a float16 MatMul through a slow generic path) and
    float16 elsewhere (LLM.int8()'s choice; Arm's float16 arithmetic)."""
    return opts.outlier_dtype or ("float32" if _x86(opts) else "float16")


def folds_outlier_gather(opts: QuantOptions, s: Scheme) -> bool:
    """Static schemes with float outlier columns run ``fold-outlier-gather`` after fold-qdq: the
    int8 part quantizes the whole activation (zero weight rows at the outlier columns) instead of
    a Gather copying nearly all of it (the C backend's preparation pipeline runs the same pass).
    MiniLM 1x128 w8a8 in onnxruntime's arm64 build: 340.9 M guest instructions with the Gather,
    238.6 M without (benchmarks/README.md); SmolLM2 on x86: 1.17x FP32's latency -> 0.88x."""
    choice = opts.outliers or (DEFAULT_OUTLIERS if s.calibrated else "none")
    return s.calibrated and activation_dtype(opts, s) is not None and choice in ("split", "both")


def outlier_passes(opts: QuantOptions, s: Scheme) -> list[str]:
    """smooth-quant and / or split-outliers for static schemes, after calibrate; split-outliers
    for dyn8 given calibration data (``with_calibration``)."""
    choice = opts.outliers or (DEFAULT_OUTLIERS if s.calibrated else "none")
    if choice not in OUTLIER_CHOICES:
        raise QCError(f"unknown --outliers '{choice}'", hint="one of " + ", ".join(OUTLIER_CHOICES))
    if choice != "none" and not s.calibrated and not (choice == "split" and s.name in DYNAMIC_SPLIT):
        raise QCError(f"--outliers {choice} applies to static schemes (w8a8, w8a16, w4a4)"
                      + (" and --outliers split to dyn8" if choice != "split" or s.name not in DYNAMIC_SPLIT else "")
                      + f", not {s.name}", hint="its activations are not calibrated")
    out = []
    exclude = f",exclude={opts.exclude}" if opts.rotate else ""
    if choice in ("smooth", "both"):
        out.append(f"smooth-quant{{alpha={opts.smooth_alpha:g}{exclude}}}")
    if choice in ("split", "both"):
        split = [f"mode={opts.outlier_mode}"] + ([exclude[1:]] if exclude else [])
        split.append(f"threshold={opts.outlier_threshold:g}" if opts.outlier_mode == "threshold"
                     else f"max-fraction={opts.outlier_fraction:g}")
        dtype = outlier_dtype(opts)
        if dtype not in OUTLIER_DTYPES:
            raise QCError(f"unknown --outlier-dtype '{dtype}'", hint="float16 or float32")
        if dtype == "float32":
            split.append("dtype=f32")
        out.append("split-outliers{" + ",".join(split) + "}")
    return out
