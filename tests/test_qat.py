"""QAT model import: models that already hold QuantizeLinear / DequantizeLinear pairs (as PyTorch
and TensorFlow quantization-aware training export them) keep their learned scales and zero
points through `qc compile`, with and without `--quant`; `--format qop` lowers them; in a model
only partly trained that way, `--quant w8a8` quantizes only the float layers."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import run_qc
from qat_models import mlp_inputs, qat_cnn, qat_mlp
from qc.onnx.evaluator import ort_session
from qc.tools import metrics

MODELS = {
    "cnn-u8": lambda: qat_cnn(np.uint8),                          # torch: quint8 activations, qint8 weights
    "cnn-i8-fakequant": lambda: qat_cnn(np.int8, fake_quant_fc=True),   # int8 activations, Q->DQ on a float weight
    "mlp": lambda: qat_mlp(),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("qat")
    rng = np.random.default_rng(7)
    paths = {}
    extra = {"mixed": lambda: qat_mlp(mixed=True), "cnn-u8-7bit": lambda: qat_cnn(np.uint8, weight_max=63),
             "mlp-7bit": lambda: qat_mlp(weight_max=63)}
    for name, build in {**MODELS, **extra}.items():
        paths[name] = str(d / f"{name}.onnx")
        onnx.save(build(), paths[name])
    np.savez(d / "cnn.npz", x=rng.standard_normal((16, 1, 3, 8, 8)).astype(np.float32))
    np.savez(d / "mlp.npz", x=mlp_inputs(rng, 16))
    return d, paths


def calib_for(d, name: str) -> str:
    return str(d / ("cnn.npz" if name.startswith("cnn") else "mlp.npz"))


def learned(path: str) -> dict[str, bytes]:
    """The QAT model's learned parameters (scales, zero points, integer weight codes) by name."""
    model = onnx.load(path)
    return {i.name: (i.data_type, numpy_helper.to_array(i).tobytes()) for i in model.graph.initializer
            if i.name.endswith((".qat_scale", ".qat_zp", ".qat_q"))}


def assert_learned_kept(src: str, out: str) -> None:
    """Every learned scale / zero point / code tensor is in the output, byte for byte (a Q->DQ
    on a float weight may become its int8 codes under another name: only its scale and zero
    point are required)."""
    want, got = learned(src), learned(out)
    missing = [n for n in want if n not in got and not n.endswith(".weight.qat_q")]
    assert not missing, f"learned tensors gone from {out}: {missing}"
    changed = [n for n in want if n in got and got[n] != want[n]]
    assert not changed, f"learned tensors changed: {changed}"


def outputs(path: str, x: np.ndarray) -> np.ndarray:
    return ort_session(path).run(None, {"x": x})[0]


def sample(name: str) -> np.ndarray:
    rng = np.random.default_rng(11)
    if name.startswith("cnn"):
        return rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    return mlp_inputs(rng, 1)[0]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_compile_without_quant_keeps_learned_params_bit_exact(files, name):
    d, paths = files
    out = str(d / f"{name}.plain.onnx")
    r = run_qc("compile", paths[name], "--target", "x86-avx2", "-o", out)
    assert r.returncode == 0, r.stderr
    assert_learned_kept(paths[name], out)
    x = sample(name)
    np.testing.assert_array_equal(outputs(out, x), outputs(paths[name], x))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_w8a8_does_not_requantize_a_qat_model(files, name):
    d, paths = files
    out = str(d / f"{name}.w8a8.onnx")
    r = run_qc("compile", paths[name], "--target", "x86-avx2", "--quant", "w8a8", "--calib", calib_for(d, name),
               "-o", out, "--remarks")
    assert r.returncode == 0, r.stderr
    assert_learned_kept(paths[name], out)
    # nothing new was calibrated, smoothed, split or quantized: every Q/DQ scale is a learned one
    proto = onnx.load(out)
    scales = {n.input[1] for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    assert all(s.endswith(".qat_scale") for s in scales), scales
    assert "already quantized" in r.stdout and "its scale and zero point are kept" in r.stdout
    assert "[smooth-quant] onnx.MatMul" not in r.stdout.replace("not smoothed", "")
    # the graph computes what the QAT model computes (Flatten moved onto the integers: exact)
    x = sample(name)
    np.testing.assert_array_equal(outputs(out, x), outputs(paths[name], x))


def test_flatten_between_learned_pair_and_matmul_keeps_the_learned_scale(files):
    """DQ -> Flatten -> MatMul: the MatMul's input is quantized with the learned pair's own scale
    (not a calibrated one), and fold-qdq moves the Flatten onto the integers."""
    d, paths = files
    out = str(d / "cnn-u8.flatten.onnx")
    r = run_qc("compile", paths["cnn-u8"], "--target", "x86-avx2", "--quant", "w8a8", "--calib", calib_for(d, "cnn"),
               "-o", out, "--remarks")
    assert r.returncode == 0, r.stderr
    assert "%flat comes from the quantized %relu.qat_dq through shape-only ops" in r.stdout
    assert "Flatten now runs on the quantized %relu.qat_q" in r.stdout
    graph = onnx.load(out).graph
    producers = {o: n for n in graph.node for o in n.output}
    fc = next(n for n in graph.node if n.name == "fc")
    dq = producers[fc.input[0]]
    assert dq.op_type == "DequantizeLinear" and dq.input[1] == "relu.qat_scale"
    assert producers[dq.input[0]].op_type == "Flatten"


# uint8 activations x full-range int8 weights saturate in onnxruntime's x86 AVX2 kernels without
# VNNI (19.7 dB instead of 133 dB on the CNN here: lower-qop's remark and the compile report's
# x86-u8s8-saturation warning say so, tests/test_guardrails.py checks it); the uint8 models are
# lowered here with 7-bit weight codes, as QAT with reduce_range trains them, which is exact everywhere
@pytest.mark.parametrize("name", ["cnn-i8-fakequant", "cnn-u8-7bit", "mlp-7bit"])
def test_format_qop_lowers_the_learned_pairs(files, name):
    d, paths = files
    out = str(d / f"{name}.qop.onnx")
    r = run_qc("compile", paths[name], "--target", "x86-avx2", "--quant", "w8a8", "--format", "qop",
               "--calib", calib_for(d, name), "-o", out, "--remarks")
    assert r.returncode == 0, r.stderr
    proto = onnx.load(out)
    ops = [n.op_type for n in proto.graph.node]
    assert "DequantizeLinear" not in ops, ops
    assert ops.count("MatMulInteger") == (1 if name.startswith("cnn") else 2)
    if name.startswith("cnn"):
        assert "QLinearConv" in ops and "Relu" not in ops     # Conv -> Relu -> Q (zp at the bottom) folded
        assert "lowered to QLinearConv (the Relu folded in)" in r.stdout
    # the integer ops read the learned codes themselves (and QLinearConv the learned scales;
    # MatMulInteger's rescale folds x_scale * w_scale into one constant)
    inputs = {i for n in proto.graph.node for i in n.input}
    want = {"conv.weight.qat_q", "conv.weight.qat_scale", "conv.bias.qat_q", "x.qat_scale", "relu.qat_scale"} \
        if name.startswith("cnn") else {"up.weight.qat_q", "x.qat_scale", "up.relu.qat_scale"}
    assert want <= inputs, want - inputs
    kept, src = learned(out), learned(paths[name])
    assert all(kept[n] == src[n] for n in want), "a learned tensor changed"
    x = sample(name)
    want_y, got_y = outputs(paths[name], x), outputs(out, x)
    # exact integer products: float rounding, QLinearConv's requantization within one output step
    assert metrics.sqnr_db(want_y, got_y) > 60.0


def test_mixed_model_quantizes_only_the_float_layers(files):
    d, paths = files
    src, out = paths["mixed"], str(d / "mixed.w8a8.onnx")
    r = run_qc("compile", src, "--target", "x86-avx2", "--quant", "w8a8", "--calib", str(d / "mlp.npz"),
               "-o", out, "--remarks")
    assert r.returncode == 0, r.stderr
    assert_learned_kept(src, out)
    assert "%down.relu.qat_dq is already quantized (QAT or an earlier pass); not smoothed" in r.stdout
    assert "%down.relu.qat_dq is already quantized (QAT or an earlier pass); not split" in r.stdout
    graph = onnx.load(out).graph
    producers = {o: n for n in graph.node for o in n.output}
    by_name = {n.name: n for n in graph.node}
    # QAT layers: inputs are the learned pairs, weights the learned codes
    assert producers[by_name["up"].input[0]].input[1] == "x.qat_scale"
    assert producers[by_name["down"].input[0]].input[1] == "up.relu.qat_scale"
    # 'mid' (learned activation, float weight): the activation keeps its learned pair, the weight is quantized
    mid = by_name["mid"]
    assert producers[mid.input[0]].input[1] == "down.relu.qat_scale"
    wdq = producers[mid.input[1]]
    assert wdq.op_type == "DequantizeLinear" and wdq.input[0].startswith("mid.weight")
    # 'head' (all float): smoothed, split, and its int8 part quantized with calibrated scales
    rest = by_name["head.rest"]
    act_dq = producers[rest.input[0]]
    assert act_dq.op_type == "DequantizeLinear" and not act_dq.input[1].endswith(".qat_scale")
    assert "head.outliers" in by_name
    calib_line = next(line for line in r.stdout.splitlines() if "keep their scales; not observed" in line)
    assert "%x.qat_dq, %up.relu.qat_dq, %down.relu.qat_dq" in calib_line
    x = mlp_inputs(np.random.default_rng(3), 1)[0]
    assert metrics.sqnr_db(outputs(src, x), outputs(out, x)) > 25.0


def test_gptq_on_a_mixed_model_rounds_the_qat_activation_layer_to_nearest(files):
    """GPTQ needs the statistics of a layer's input; a learned (not observed) input gets RTN,
    and the split int8 part of the float layer carries its Hessian over from split-outliers."""
    d, paths = files
    out = str(d / "mixed.gptq.onnx")
    r = run_qc("compile", paths["mixed"], "--target", "x86-avx2", "--quant", "w8a8", "--weight-algo", "gptq",
               "--calib", str(d / "mlp.npz"), "-o", out, "--remarks")
    assert r.returncode == 0, r.stderr
    assert ("%down.relu.qat_dq is already quantized (QAT): no calibration statistics for gptq; "
            "round to nearest") in r.stdout
    # x86's default: 7-bit int8 weights (onnxruntime's u8 x s8 kernels)
    assert "'head.rest': weight @head.weight.smooth.rest [63, 32] -> i8 per-channel sym gptq" in r.stdout
    assert_learned_kept(paths["mixed"], out)


# -- the C backend ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,quant", [("cnn-i8-fakequant", True), ("cnn-u8", False)])
def test_c_backend_runs_a_qat_model_under_qemu(files, name, quant):
    """qc compile --target cortex-a76 --emit c on a QAT model, built for aarch64 and run under
    qemu -cpu cortex-a76, against onnxruntime on the input model. int8 activations become the
    backend's int8 units (the direct int8 conv and the fused int8 GEMM, with the learned scales); uint8 ones (PyTorch's
    default) run as dequantize + float there (no integer kernel for u8 x s8 on this target)."""
    from qc.backends.c import toolchain
    from qc.backends.c.runner import build_model, load_report, run_model

    toolchain.require_tools("aarch64")
    d, paths = files
    out = d / f"{name}.c{int(quant)}"
    args = ["--quant", "w8a8", "--calib", calib_for(d, name)] if quant else []
    r = run_qc("compile", paths[name], "--target", "cortex-a76", *args, "--emit", "c", "--emit-harness",
               "-o", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    schedule = (out / "model.c").read_text()
    if name == "cnn-i8-fakequant":
        # the conv: im2row + the direct SDOT conv requantizing to int8; the FC: the fused int8 GEMM
        assert schedule.count("qc_im2row_s8(") == 1 and schedule.count("qc_conv1x1_s8_q8(") == 1
        assert schedule.count("qc_gemm_s8_f32(") == 1
        assert "qc_conv2d_f32" not in schedule
    else:
        assert "qc_gemm_s8" not in schedule and "qc_conv2d_f32(" in schedule
    report = load_report(out)
    exe = build_model(report, "aarch64", "cortex-a76")
    x = sample(name)
    (got,) = run_model(exe, report, {"x": x}, "aarch64", "cortex-a76", timeout=120)
    want = outputs(paths[name], x)
    # int8: Conv -> Relu -> Q is one requantizing GEMM (int32 fixed point, TFLite rounding: ties
    # away from zero) where onnxruntime's reference rounds the float value half to even, so an
    # activation code may differ by one step; the 10 outputs move by about 1e-3 of their range then
    atol = (5e-3 if quant else 1e-5) * float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)


def test_relu_is_not_folded_when_the_zero_point_is_inside_the_range(files):
    """Conv -> Relu -> Q with a u8 zero point of 3: Q's clamp does not do the Relu's work, so
    lower-qop leaves the Conv in QDQ form (and the model still computes the same)."""
    d, _ = files
    model = qat_cnn(np.uint8, weight_max=63)
    for init in model.graph.initializer:
        if init.name == "relu.qat_zp":
            init.CopyFrom(numpy_helper.from_array(np.array(3, np.uint8), init.name))
    src, out = str(d / "relu-zp3.onnx"), str(d / "relu-zp3.qop.onnx")
    onnx.save(model, src)
    r = run_qc("compile", src, "--target", "x86-avx2", "--quant", "w8a8", "--format", "qop",
               "--calib", calib_for(d, "cnn"), "-o", out, "--remarks")
    assert r.returncode == 0, r.stderr
    assert "'conv': left in QDQ form: no QuantizeLinear after the Conv" in r.stdout
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert "Relu" in ops and "Conv" in ops and "QLinearConv" not in ops
    x = sample("cnn")
    assert metrics.sqnr_db(outputs(src, x), outputs(out, x)) > 60.0
