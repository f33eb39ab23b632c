"""Schemes -> pipelines: the defaults per target, and each option's effect on the pipeline."""
import pytest

from qc.errors import QCError
from qc.pm import PassManager
from qc.quant.schemes import SCHEMES, QuantOptions, needs_calibration, needs_opset, pipeline

X86 = ("avx2", "fma", "f16c")
ARM = ("neon", "dotprod")


def passes(opts: QuantOptions) -> dict[str, str]:
    """pass name -> its spec, for the passes after the default pipeline."""
    return {p.name: p.spec() for p in PassManager.parse(pipeline(opts)).passes[6:]}


@pytest.mark.parametrize("name", list(SCHEMES))
def test_every_scheme_parses_into_registered_passes(name):
    spec = pipeline(QuantOptions(name, target_features=X86))
    assert spec.startswith("propagate-shapes,remove-identity,fold-constants,fold-batchnorm,cse,dce,")
    PassManager.parse(spec)


def test_x86_without_vnni_defaults_to_7bit_int8_weights_for_static_schemes():
    """onnxruntime's fast u8 x s8 kernels with 7-bit weight codes by default; --no-reduce-range
    keeps uint8 on both sides (all 8 bits); dyn8 keeps its per-token int8 weights."""
    p = passes(QuantOptions("w8a8", ops="MatMul,Gemm", target_features=X86))
    assert "bits=7" in p["quantize-weights"] and "dtype=i8" in p["quantize-weights"] and "dtype=u8" in p["insert-qdq"]
    full = passes(QuantOptions("w8a8", reduce_range=False, ops="MatMul,Gemm", target_features=X86))
    assert "bits=8" in full["quantize-weights"] and "dtype=u8" in full["quantize-weights"]
    dyn = passes(QuantOptions("dyn8", ops="MatMul,Gemm", target_features=X86))
    assert "bits=8" in dyn["quantize-weights"] and "dynamic-per-token" in dyn
    assert "bits=8" in passes(QuantOptions("w8a8", target_features=ARM))["quantize-weights"]


def test_arm_uses_int8_on_both_sides():
    p = passes(QuantOptions("w8a8", target_features=ARM))
    assert "dtype=i8" in p["quantize-weights"] and "dtype=i8" in p["insert-qdq"]


def test_static_schemes_calibrate_what_they_quantize():
    p = passes(QuantOptions("w8a8", ops="MatMul", calib_method="mse", target_features=ARM))
    assert p["calibrate"] == "calibrate{method=mse,ops=MatMul,activation-pairs=false}"
    assert "method=mse" in p["insert-qdq"] and "activation-pairs=false" in p["insert-qdq"]
    pairs = passes(QuantOptions("w8a8", activation_pairs=True, target_features=ARM))
    assert "activation-pairs" not in pairs["calibrate"] and "activation-pairs" not in pairs["insert-qdq"]


def test_weight_algorithms_collect_what_they_need():
    assert "hessian=true" in passes(QuantOptions("w4", weight_algo="gptq"))["calibrate"]
    assert "rows=512" in passes(QuantOptions("w4", weight_algo="awq"))["calibrate"]
    assert "calibrate" not in passes(QuantOptions("w4"))
    assert needs_calibration(QuantOptions("w4", weight_algo="gptq")) and not needs_calibration(QuantOptions("dyn8"))


def test_lowering_and_opsets():
    assert "lower-qop" in passes(QuantOptions("dyn8")) and "lower-qop" in passes(QuantOptions("w4"))
    assert passes(QuantOptions("w4a8"))["lower-qop"] == "lower-qop{accuracy-level=4}"
    assert "lower-qop" not in passes(QuantOptions("w8a8")) and "lower-qop" in passes(QuantOptions("w8a8", form="qop"))
    assert needs_opset(QuantOptions("w4")) == 21 and needs_opset(QuantOptions("w8a16")) == 21
    assert needs_opset(QuantOptions("w8a8")) == 13


def test_unknown_choices_are_errors():
    with pytest.raises(QCError, match="unknown quantization scheme 'w3'"):
        pipeline(QuantOptions("w3"))
    with pytest.raises(QCError, match="unknown weight algorithm 'hqq'"):
        pipeline(QuantOptions("w4", weight_algo="hqq"))


def test_static_schemes_close_integer_conv_units():
    """w8a8 with Convs: equalize before calibrating (the Conv results observed too), bias correction
    right before the Conv weights are rounded, with their options, and an output QuantizeLinear per Conv;
    on x86 without VNNI all weights are int8 with 7-bit codes (with --no-reduce-range the Conv
    weights keep them, the other weights are u8)."""
    spec = pipeline(QuantOptions("w8a8", target_features=X86))
    names = [p.name for p in PassManager.parse(spec).passes]
    assert names.index("equalize") < names.index("calibrate") < names.index("bias-correction")
    assert names[names.index("bias-correction") + 1] == "quantize-weights"
    assert names.index("insert-qdq") + 1 == names.index("requantize-outputs") < names.index("fold-qdq")
    assert "output-ops=Conv" in spec and "requantize-outputs{dtype=u8,method=minmax}" in spec
    assert ("bias-correction{bits=7,granularity=channel,symmetric=true,dtype=i8},quantize-weights{bits=7,"
            "granularity=channel,symmetric=true,dtype=i8,algo=rtn,ops=MatMul,Gemm,Conv}") in spec
    full = pipeline(QuantOptions("w8a8", reduce_range=False, target_features=X86))
    assert ("bias-correction{bits=7,granularity=channel,symmetric=true,dtype=i8},"
            "quantize-weights{bits=8,granularity=channel,symmetric=true,dtype=u8,algo=rtn,ops=MatMul,Gemm},"
            "quantize-weights{bits=7,granularity=channel,symmetric=true,dtype=i8,algo=rtn,ops=Conv}") in full
    arm = pipeline(QuantOptions("w8a8", target_features=ARM))
    assert "bias-correction{bits=8,granularity=channel,symmetric=true,dtype=i8},quantize-weights{bits=8," in arm
    assert "requantize-outputs{dtype=i8" in arm
    for opts in (QuantOptions("w8a8", ops="MatMul,Gemm", target_features=ARM), QuantOptions("dyn8"),
                 QuantOptions("w4")):
        assert "requantize-outputs" not in pipeline(opts) and "equalize" not in pipeline(opts)
