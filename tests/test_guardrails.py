"""Guardrail warnings in the compile report (qc.quant.guardrails): each one is triggered by a
small model built here, and absent when its condition does not hold."""
import json
import re
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_qc
from qat_models import mlp_inputs, qat_mlp
from qc.frontend.onnx import import_onnx
from qc.tools import guardrails

RNG = np.random.default_rng(5)


def save(path, nodes, inits, x_shape, y_shape, opset=17, producer=""):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(np.asarray(a), n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name=producer)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return str(path)


def mlp(path, k=64, spread_columns=False):
    """x[1, 16, k] -> MatMul k x 128 'up' -> Relu -> MatMul 128 x 64 'down' -> y; ``spread_columns``:
    the first 8 output channels of 'up' are 60x larger than the others."""
    w1 = (RNG.standard_normal((k, 128)) / 8).astype(np.float32)
    if spread_columns:
        w1[:, :8] *= 60.0
    w2 = (RNG.standard_normal((128, 64)) / 11).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="up"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="down")]
    return save(path, nodes, {"w1": w1, "w2": w2}, [1, 16, k], [1, 16, 64])


def causal_attention(path, mask: str = "tril", producer=""):
    """x[1, 8, 32] -> q = x Wq, k = x Wk, v = x Wv -> softmax(masked q k^T) v -> MatMul Wo -> y.
    mask: 'tril' (Where on a triangular constant), 'trilu' (a Trilu op), 'range' (Less of two
    position ranges, as qc.models.smollm2 builds it) or 'none' (no mask: an encoder)."""
    w = {n: (RNG.standard_normal((32, 32)) / 6).astype(np.float32) for n in ("wq", "wk", "wv", "wo")}
    inits = dict(w)
    nodes = [helper.make_node("MatMul", ["x", n], [n[1]], name=n[1]) for n in ("wq", "wk", "wv")]
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
              helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk")]
    inits["neg"] = np.array(-1e4, np.float32)
    if mask == "tril":
        inits["causal"] = np.tril(np.ones((8, 8), bool))
        nodes.append(helper.make_node("Where", ["causal", "scores", "neg"], ["masked"], name="mask"))
    elif mask == "trilu":
        inits["ones"] = np.ones((8, 8), np.float32)
        nodes += [helper.make_node("Trilu", ["ones"], ["tri"], upper=0, name="tri"),
                  helper.make_node("Cast", ["tri"], ["causal"], to=TensorProto.BOOL),
                  helper.make_node("Where", ["causal", "scores", "neg"], ["masked"], name="mask")]
    elif mask == "range":
        inits.update({"zero": np.array(0, np.int64), "eight": np.array(8, np.int64), "one": np.array(1, np.int64),
                      "ax0": np.array([0], np.int64), "ax1": np.array([1], np.int64)})
        nodes += [helper.make_node("Range", ["zero", "eight", "one"], ["pos"]),
                  helper.make_node("Unsqueeze", ["pos", "ax1"], ["rows"]),
                  helper.make_node("Unsqueeze", ["pos", "ax0"], ["cols"]),
                  helper.make_node("Less", ["rows", "cols"], ["future"]),
                  helper.make_node("Where", ["future", "neg", "scores"], ["masked"], name="mask")]
    else:
        nodes.append(helper.make_node("Identity", ["scores"], ["masked"]))
    nodes += [helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "v"], ["ctx"], name="pv"),
              helper.make_node("MatMul", ["ctx", "wo"], ["y"], name="o")]
    return save(path, nodes, inits, [1, 8, 32], [1, 8, 32], producer=producer)


def compile_report(tmp_path, model, *args):
    out, report = str(tmp_path / "out.onnx"), str(tmp_path / "report.json")
    r = run_qc("compile", model, "--target", "x86-avx2", "-o", out, "--report-json", report, *args)
    assert r.returncode == 0, r.stderr
    with open(report) as f:
        return r.stdout, json.load(f)["warnings"]


def codes(warnings):
    return sorted({w["code"] for w in warnings})


def calib(tmp_path, x):
    path = str(tmp_path / f"calib{x.shape[0]}.npz")
    np.savez(path, x=x)
    return path


# -- decoder-only + 4-bit activations ------------------------------------------------------------
@pytest.mark.parametrize("mask", ["tril", "trilu", "range"])
def test_decoder_only_is_recognised_by_its_causal_mask(tmp_path, mask):
    module = import_onnx(onnx.load(causal_attention(tmp_path / "m.onnx", mask)))
    why = guardrails.decoder_only(module)
    assert why is not None and ("causal mask" in why or "Trilu" in why)


def test_an_encoder_and_a_qc_models_encoder_are_not_decoders(tmp_path):
    assert guardrails.decoder_only(import_onnx(onnx.load(causal_attention(tmp_path / "e.onnx", "none")))) is None
    enc = import_onnx(onnx.load(causal_attention(tmp_path / "m.onnx", "none", producer="qc.models.minilm")))
    assert guardrails.decoder_only(enc) is None
    dec = import_onnx(onnx.load(causal_attention(tmp_path / "s.onnx", "none", producer="qc.models.smollm2")))
    assert guardrails.decoder_only(dec) == "smollm2-135m, a decoder"


def test_4bit_activations_on_a_decoder_warn(tmp_path):
    data = calib(tmp_path, RNG.standard_normal((20, 1, 8, 32)).astype(np.float32))
    decoder = causal_attention(tmp_path / "dec.onnx", "tril")
    stdout, warnings = compile_report(tmp_path, decoder, "--quant", "w4a4", "--calib", data)
    w = next(w for w in warnings if w["code"] == "decoder-4bit-activations")
    assert w["layer"] == "model" and "4 bits in a decoder-only model" in w["what"]
    assert "arXiv 2301.12017" in w["why"] and "w4a8" in w["to_do"]
    assert "[decoder-4bit-activations]" in stdout and "why: Wu et al. 2023" in stdout
    # 8-bit activations on the decoder, and 4-bit activations on an encoder: no warning
    _, w8 = compile_report(tmp_path, decoder, "--quant", "w8a8", "--calib", data)
    encoder = causal_attention(tmp_path / "enc.onnx", "none")
    _, enc = compile_report(tmp_path, encoder, "--quant", "w4a4", "--calib", data)
    assert "decoder-4bit-activations" not in codes(w8) + codes(enc)


# -- per-tensor activations with outliers ---------------------------------------------------------
def test_activation_outliers_warn_without_split_or_smooth(tmp_path):
    model = mlp(tmp_path / "m.onnx")
    data = calib(tmp_path, mlp_inputs(RNG, 20))        # features 3 and 60 are 40x the others
    _, warnings = compile_report(tmp_path, model, "--quant", "w8a8", "--calib", data, "--outliers", "none")
    w = [w for w in warnings if w["code"] == "activation-outliers"]
    assert len(w) == 1 and w[0]["layer"] == "%x -> up", warnings
    assert "(2 of 64 features above 20x)" in w[0]["what"] and "LLM.int8()" in w[0]["why"]
    assert "--outliers" in w[0]["to_do"]
    # the default (smooth + split) quantizes activations whose scale the outliers no longer set
    _, default = compile_report(tmp_path, model, "--quant", "w8a8", "--calib", data)
    assert "activation-outliers" not in codes(default)
    # no outliers in the data: nothing to warn about, even without the outlier passes
    plain = calib(tmp_path, RNG.standard_normal((21, 1, 16, 64)).astype(np.float32))
    _, none = compile_report(tmp_path, model, "--quant", "w8a8", "--calib", plain, "--outliers", "none")
    assert "activation-outliers" not in codes(none)


# -- per-tensor weights with channel ranges far apart ---------------------------------------------
def test_per_tensor_weights_with_spread_channel_ranges_warn(tmp_path):
    model = mlp(tmp_path / "m.onnx", spread_columns=True)
    _, warnings = compile_report(tmp_path, model, "--quant", "w8", "--weights", "tensor")
    w = [w for w in warnings if w["code"] == "weight-per-tensor"]
    assert [x["layer"] for x in w] == ["up"], warnings
    assert "output channels whose ranges differ" in w[0]["what"] and "arXiv 1806.08342" in w[0]["why"]
    assert w[0]["to_do"].startswith("--weights channel")
    _, channel = compile_report(tmp_path, model, "--quant", "w8")
    assert "weight-per-tensor" not in codes(channel)
    _, even = compile_report(tmp_path, mlp(tmp_path / "even.onnx"), "--quant", "w8", "--weights", "tensor")
    assert "weight-per-tensor" not in codes(even)


# -- too few calibration samples ------------------------------------------------------------------
def test_few_calibration_samples_warn(tmp_path):
    model = mlp(tmp_path / "m.onnx")
    few = calib(tmp_path, RNG.standard_normal((7, 1, 16, 64)).astype(np.float32))   # under 8: none held aside
    _, warnings = compile_report(tmp_path, model, "--quant", "w8a8", "--calib", few)
    w = [w for w in warnings if w["code"] == "few-calibration-samples"]
    assert len(w) == 1 and "from 7 calibration samples" in w[0]["what"]
    enough = calib(tmp_path, RNG.standard_normal((20, 1, 16, 64)).astype(np.float32))  # 18 + 2 held aside
    _, ok = compile_report(tmp_path, model, "--quant", "w8a8", "--calib", enough)
    assert "few-calibration-samples" not in codes(ok)
    _, weights_only = compile_report(tmp_path, model, "--quant", "w8")      # no calibration at all
    assert "few-calibration-samples" not in codes(weights_only)


# -- uint8 x full-range int8 on x86 without VNNI ---------------------------------------------------
@pytest.mark.parametrize("form", ["qdq", "qop"])
def test_u8_activations_with_8bit_int8_weights_warn_on_x86_without_vnni(tmp_path, form):
    """A torch-style QAT model (quint8 activations, qint8 weights up to 127) on x86-avx2."""
    model, model7 = str(tmp_path / "qat.onnx"), str(tmp_path / "qat7.onnx")
    onnx.save(qat_mlp(), model)
    onnx.save(qat_mlp(weight_max=63), model7)
    data = calib(tmp_path, mlp_inputs(RNG, 20))
    _, warnings = compile_report(tmp_path, model, "--quant", "w8a8", "--calib", data, "--format", form)
    w = [w for w in warnings if w["code"] == "x86-u8s8-saturation"]
    assert sorted(x["layer"] for x in w) == ["down", "up"], warnings
    assert "codes up to |127|" in w[0]["what"] and "VNNI" in w[0]["why"]
    _, seven = compile_report(tmp_path, model7, "--quant", "w8a8", "--calib", data, "--format", form)
    assert "x86-u8s8-saturation" not in codes(seven)
    # the same module on a target with VNNI, or on Arm: no warning
    module = import_onnx(onnx.load(model))
    assert guardrails.check(module, None, None, SimpleNamespace(features=("avx2", "vnni"))) == []
    assert guardrails.check(module, None, None, SimpleNamespace(features=("neon", "dotprod"))) == []
    assert codes(g.as_dict() for g in guardrails.check(module, None, None, SimpleNamespace(features=("avx2",)))) \
        == ["x86-u8s8-saturation"]


@pytest.mark.parametrize("extra", [[], ["--no-reduce-range"]])
def test_qc_own_w8a8_on_x86_does_not_warn_about_saturation(tmp_path, extra):
    """qc's weights next to uint8 activations on x86 without VNNI: int8 with 7-bit codes by default,
    uint8 (u8 x u8 kernels) with --no-reduce-range; neither saturates."""
    data = calib(tmp_path, RNG.standard_normal((20, 1, 16, 64)).astype(np.float32))
    _, warnings = compile_report(tmp_path, mlp(tmp_path / "m.onnx"), "--quant", "w8a8", "--calib", data, *extra)
    assert warnings == [], warnings


# -- int4 weights with large blocks ----------------------------------------------------------------
@pytest.mark.parametrize("extra", [[], ["--format", "qop"]])
def test_int4_blocks_over_128_warn(tmp_path, extra):
    model = mlp(tmp_path / "m.onnx", k=512)
    stdout, warnings = compile_report(tmp_path, model, "--quant", "w4", "--block-size", "256", *extra)
    w = [w for w in warnings if w["code"] == "int4-large-blocks"]
    assert [x["layer"] for x in w] and all("blocks of 256" in x["what"] for x in w), warnings
    assert "--block-size" in w[0]["to_do"]
    _, ok = compile_report(tmp_path, model, "--quant", "w4", "--block-size", "128", *extra)
    assert "int4-large-blocks" not in codes(ok)


def test_int4_per_channel_weights_warn(tmp_path):
    _, warnings = compile_report(tmp_path, mlp(tmp_path / "m.onnx"), "--quant", "w4", "--weights", "channel")
    w = [w for w in warnings if w["code"] == "int4-large-blocks"]
    assert sorted(x["layer"] for x in w) == ["down", "up"] and "without blocks" in w[0]["what"]


def test_report_groups_repeated_warnings(tmp_path):
    lines = guardrails.format_warnings([{"code": "c", "layer": f"l{i}", "what": "w", "why": "y", "to_do": "t"}
                                        for i in range(5)])
    assert lines == ["  warnings (5):", "    [c] 5 layers", "      l0: w", "      l1: w", "      l2: w",
                     "      ... 2 more (--report lists them)", "      why: y", "      to do: t"]
    assert len(guardrails.format_warnings([{"code": "c", "layer": "l", "what": "w", "why": "y", "to_do": "t"}] * 5,
                                          per_layer=True)) == 2 + 5 + 2


# -- a scheme that changed nothing -----------------------------------------------------------------
def lstm_only(path):
    """x[4, 1, 8] -> LSTM (hidden 16) -> y: all the compute in an op --quant does not quantize."""
    w = (RNG.standard_normal((1, 64, 8)) / 4).astype(np.float32)
    r = (RNG.standard_normal((1, 64, 16)) / 4).astype(np.float32)
    nodes = [helper.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=16, name="lstm")]
    return save(path, nodes, {"w": w, "r": r}, [4, 1, 8], [4, 1, 1, 16])


@pytest.mark.parametrize("scheme", ["dyn8", "w8"])
def test_a_scheme_that_quantizes_nothing_warns_and_says_why(tmp_path, scheme):
    _, warnings = compile_report(tmp_path, lstm_only(tmp_path / "lstm.onnx"), "--quant", scheme)
    w = [w for w in warnings if w["code"] == "nothing-quantized"]
    assert len(w) == 1, warnings
    assert w[0]["what"].startswith(f"--quant {scheme} changed no op: no MatMul/Gemm/Conv op")
    assert "its compute is in LSTM" in w[0]["what"]


def test_an_already_quantized_model_is_named_as_such(tmp_path):
    """The output of onnxruntime's quantize_dynamic (MatMulInteger) compiled again with --quant dyn8."""
    from onnxruntime.quantization import quantize_dynamic

    q = tmp_path / "q.onnx"
    quantize_dynamic(mlp(tmp_path / "m.onnx"), str(q))
    _, warnings = compile_report(tmp_path, str(q), "--quant", "dyn8")
    w = [w for w in warnings if w["code"] == "nothing-quantized"]
    assert len(w) == 1 and "the model is already quantized (" in w[0]["what"], warnings
    assert "MatMulInteger x2" in w[0]["what"]


def test_a_scheme_that_quantizes_does_not_warn_nothing_quantized(tmp_path):
    for scheme in ("dyn8", "w8", "w4", "fp16"):
        _, warnings = compile_report(tmp_path, mlp(tmp_path / "m.onnx"), "--quant", scheme)
        assert "nothing-quantized" not in codes(warnings), (scheme, warnings)


# -- int8 rows: MatMulNBits accuracy_level 4 on onnxruntime arm64 ------------------------------------
def outlier_rows(n=24, k=64, feature=5, factor=100.0):
    x = RNG.standard_normal((n, 1, 16, k)).astype(np.float32)
    x[..., feature] *= factor
    return x


def accuracy_levels(path):
    return {n.name: next(a.i for a in n.attribute if a.name == "accuracy_level")
            for n in onnx.load(path).graph.node if n.op_type == "MatMulNBits"}


@pytest.mark.parametrize("target,weights,outliers,fixed", [
    ("cortex-a76", "--symmetric", True, True), ("cortex-a76", "--asymmetric", True, False),
    ("x86-avx2", "--symmetric", True, False), ("cortex-a76", "--symmetric", False, False)])
def test_guard_int8_rows_keeps_a_float_where_the_runtime_quantizes_a_per_row(tmp_path, target, weights, outliers,
                                                                            fixed):
    """qc compile --emit onnx runs guard-int8-rows on such targets: the MatMulNBits whose
    calibrated rows an outlier feature dominates get accuracy_level 1, with a remark, and the
    guardrail has nothing left to warn about; elsewhere every node keeps accuracy_level 4."""
    data = calib(tmp_path, outlier_rows(factor=100.0 if outliers else 1.0))
    stdout, warnings = compile_report(tmp_path, mlp(tmp_path / "m.onnx"), "--target", target, "--emit", "onnx",
                                      "--quant", "w4a8", weights, "--calib", data, "--remarks")
    assert not [w for w in warnings if w["code"] == "int8-rows-outliers"], warnings
    levels = accuracy_levels(tmp_path / "out.onnx")
    assert levels == ({"up": 1, "down": 4} if fixed else {"up": 4, "down": 4}), levels   # 'down' reads Relu(h)
    assert ("accuracy_level 1 (A in float)" in stdout) == fixed
    assert (",guard-int8-rows" in stdout) == (target == "cortex-a76")      # the pipeline line


def test_int8_rows_outliers_warning_names_the_matmul_its_rows_and_the_fixes(tmp_path):
    """The guardrail itself, on a model with accuracy_level 4 everywhere (compiled for x86, whose
    runtime quantizes A per block) judged for cortex-a76 with row statistics of its input."""
    from qc.targets import load_target

    out = str(tmp_path / "q.onnx")
    r = run_qc("compile", mlp(tmp_path / "m.onnx"), "--target", "x86-avx2", "--quant", "w4a8", "--symmetric", "-o", out)
    assert r.returncode == 0, r.stderr
    module = import_onnx(onnx.load(out))
    rows = {"x": SimpleNamespace(row_sample=outlier_rows(n=2)[:, 0].reshape(-1, 64))}
    warned = guardrails.int8_rows(module, rows, load_target("cortex-a76"))
    assert [w.layer for w in warned] == ["up"]
    assert re.search(r"per row over K = 64; in \d+ of 32 calibration rows an outlier feature", warned[0].what)
    assert "--asymmetric" in warned[0].to_do and "KleidiAI" in warned[0].why
    assert not guardrails.int8_rows(module, rows, load_target("x86-avx2"))
    plain = {"x": SimpleNamespace(row_sample=outlier_rows(n=2, factor=1.0)[:, 0].reshape(-1, 64))}
    assert not guardrails.int8_rows(module, plain, load_target("cortex-a76"))


def test_int8_rows_guardrail_matches_onnxruntime_arm64(tmp_path):
    """The target-table fact behind the guardrail (cortex-a76's onnx.nbits_int8_rows = "symmetric"),
    on onnxruntime's arm64 build under qemu: with one feature 300x the rest, accuracy_level 4 loses
    far more against accuracy_level 1 (float A, the same int4 weights) for symmetric weights than
    for weights with zero points, which onnxruntime quantizes per block as on x86."""
    import subprocess

    from test_arm_speed import _ort_lib

    oa = _ort_lib()
    x_cal = outlier_rows(n=4, k=576, feature=7, factor=1.0)
    model = mlp(tmp_path / "m.onnx", k=576)
    gaps = {}
    for weights in ("--symmetric", "--asymmetric"):
        out = tmp_path / f"q{weights}.onnx"
        r = run_qc("compile", model, "--target", "cortex-a76", "--emit", "onnx", "--quant", "w4a8", weights,
                   "--weight-algo", "rtn", "--calib", calib(tmp_path, x_cal), "-o", str(out))
        assert r.returncode == 0, r.stderr
        level1 = onnx.load(out)
        for node in level1.graph.node:
            for a in node.attribute:
                if a.name == "accuracy_level":
                    a.i = 1
        onnx.save(level1, tmp_path / "level1.onnx")
        for factor in (1.0, 300.0):
            x = outlier_rows(n=1, k=576, feature=7, factor=factor)[0]
            cmd, files = oa.argv(tmp_path / "level1.onnx", {"x": x}, [("y", np.zeros((1, 16, 64), np.float32))], 1,
                                 tmp_path / "w1")
            subprocess.run(["qemu-aarch64", *cmd], check=True, capture_output=True)
            ref = np.fromfile(files[0], np.float32)
            cmd, files = oa.argv(out, {"x": x}, [("y", ref)], 1, tmp_path / "w4")
            subprocess.run(["qemu-aarch64", *cmd], check=True, capture_output=True)
            y = np.fromfile(files[0], np.float32)
            gaps[weights, factor] = 10 * np.log10(np.sum(ref ** 2) / np.sum((y - ref) ** 2))
    loss = {w: gaps[w, 1.0] - gaps[w, 300.0] for w in ("--symmetric", "--asymmetric")}
    assert loss["--symmetric"] > loss["--asymmetric"] + 4.0, gaps


def test_qc_check_finds_int8_row_outliers_in_a_compiled_model(tmp_path):
    """qc check of a compiled model (no calibration statistics inside it) observes the MatMulNBits
    inputs on --calib samples in onnxruntime; without --calib it says what it could not check."""
    model = mlp(tmp_path / "m.onnx")
    q = str(tmp_path / "q.onnx")
    r = run_qc("compile", model, "--target", "cortex-a76", "--emit", "onnx", "--quant", "w4a8", "--symmetric", "-o", q)
    assert r.returncode == 0, r.stderr
    data = calib(tmp_path, outlier_rows(n=4))
    r = run_qc("check", q, "--target", "cortex-a76", "--calib", data, "--report-json", str(tmp_path / "c.json"))
    assert r.returncode == 0, r.stderr
    assert "int8 rows: 2 MatMulNBits with A quantized per row on this target's runtime, checked on 4 samples: " \
           "1 warned" in r.stdout
    assert "up: the runtime quantizes %x to int8 per row over K = 64" in r.stdout
    with open(tmp_path / "c.json") as f:
        assert [w["layer"] for w in json.load(f)["int8_rows"]["warnings"]] == ["up"]
    r = run_qc("check", q, "--target", "cortex-a76")
    assert "int8 rows: not checked: 2 MatMulNBits run with A quantized to int8 per row" in r.stdout
    r = run_qc("check", q, "--target", "x86-avx2")
    assert r.returncode == 0 and "int8 rows" not in r.stdout
