"""The C backend's code generator: ONNX node tests, models against onnxruntime, errors, determinism.

Host builds need gcc or clang (toolchain.require_tools skips without, fails under QC_REQUIRE_ARM=1).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from qc.backends.c import emit_c, prepare, toolchain
from qc.backends.c.runner import build_model, load_report, run_model
from qc.errors import QCError
from qc.frontend.onnx import import_onnx
from qc.ir import DType
from qc.onnx.evaluator import ort_session
from qc.targets import load_target

ROOT = Path(__file__).resolve().parent.parent
A76 = load_target("cortex-a76")

# Why a claimed op's node test case may not compile: dtypes and modes the C backend does not
# implement. Anything else failing (or any mismatch) fails the test.
ALLOWED = re.compile(
    r"not supported by the C backend \((dtype \w+|input 0 of dtype \w+; only float32|input of dtype [iu]16|"
    r"output [iu]16|3-D|"
    r"the mask output|training (mode|outputs)|the Indices output|blocked or non-constant parameters|"
    r"antialias|output '\w+' has no static shape \(.*\): it is not known at compile time|"
    r"a non-float exponent must be a constant|starts must be a constant|a trip count M that is not a constant.*)\)"
    r"|If output 0 \('\w+'\) has no static shape: then_branch gives (seq|opt)<"
    r"|dtype \w+ is not supported by the C backend|is not a tensor")


def _ort(model, inputs):
    return ort_session(model if isinstance(model, onnx.ModelProto) else str(model)).run(None, inputs)


def _emit(module, out_dir, target=A76, shapes=None, **kw):
    """The C backend as qc compile runs it: the preparation pipeline, then emit_c."""
    prepare(module, shapes or {})
    return emit_c(module, out_dir, target, **kw)


def _compile_run(model, tmp_path, shapes, inputs, target=A76, **kw):
    module = import_onnx(model if isinstance(model, onnx.ModelProto) else str(model))
    report = _emit(module, tmp_path / "c", target, shapes, harness=True, **kw)
    exe = build_model(report, "host")
    return report, run_model(exe, report, inputs, "host")


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


# Cases whose expected outputs (onnx's reference implementation) differ from onnxruntime, the C
# backend's oracle: downsampling with align_corners, where the reference maps through the
# fractional output size (scale * in) and onnxruntime through the integer one.
ORT_IS_ORACLE = {"test_resize_downsample_scales_linear_align_corners",
                 "test_resize_downsample_scales_cubic_align_corners"}


# -- the ONNX backend node tests -------------------------------------------------------------------
def test_onnx_node_cases(tmp_path):
    """Every case of onnx's node tests whose ops the C backend claims: compiled in one binary, run
    on the host, compared with the expected outputs (floats: rtol 1e-3, atol 1e-5, the node tests'
    own rtol; integers and bools exactly; onnxruntime's outputs for ORT_IS_ORACLE)."""
    import sys

    toolchain.require_tools("host")
    sys.path.insert(0, str(Path(__file__).parent))
    from c_backend.nodecases import claimed_ops, driver_c, emit_cases, node_cases

    cases = node_cases(claimed_ops())
    emitted, failed = emit_cases(cases, tmp_path, A76)
    bad = {k: v for k, v in failed.items() if not all(ALLOWED.search(m) for m in v)}
    assert not bad, bad
    assert len(emitted) >= 621, len(emitted)
    (tmp_path / "driver.c").write_text(driver_c(emitted))
    runtime = sorted({s for _, _, r, _, _ in emitted for s in r["sources"] if s.startswith("qc_")})
    exe = toolchain.build([tmp_path / "driver.c", *[tmp_path / s for s in runtime]], tmp_path / "driver", "host",
                          extra_flags=["-O0"], include_dirs=[tmp_path])
    for i, _, _, ins, _ in emitted:
        for j, a in enumerate(ins):
            (tmp_path / f"case{i}_in{j}.bin").write_bytes(np.ascontiguousarray(a).tobytes())
    proc = toolchain.run(exe, "host", None, [str(tmp_path)], timeout=120)
    assert proc.returncode == 0, proc.stderr
    mismatches = []
    given = {c[0]: (c[1], c[2]) for c in cases}
    for i, name, r, _, outs in emitted:
        if name in ORT_IS_ORACLE:
            model, ins = given[name]
            outs = _ort(model, {v.name: a for v, a in zip(model.graph.input, ins)})
        for j, (expected, (_, dt, shape)) in enumerate(zip(outs, r["outputs"])):
            got = np.frombuffer((tmp_path / f"case{i}_out{j}.bin").read_bytes(), DType.parse(dt).numpy).reshape(shape)
            try:
                if expected.dtype.kind == "f":
                    np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64),
                                               rtol=1e-3, atol=1e-5)
                else:
                    np.testing.assert_array_equal(got, expected)
            except AssertionError as e:
                mismatches.append(f"{name}: {str(e).splitlines()[3:5]}")
    assert not mismatches, mismatches


# -- small models against onnxruntime ------------------------------------------------------------------
def test_mlp_matches_onnxruntime_and_report(tmp_path):
    toolchain.require_tools("host")
    rng = np.random.RandomState(0)
    w = rng.randn(4, 8).astype(np.float32)
    b = rng.randn(8).astype(np.float32)
    m = _model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["z"]),
                helper.make_node("Relu", ["z"], ["r"]), helper.make_node("Softmax", ["r"], ["y"], axis=-1)],
               [helper.make_tensor_value_info("x", TP.FLOAT, ["N", 4])],
               [helper.make_tensor_value_info("y", TP.FLOAT, None)],
               [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    onnx.save(m, tmp_path / "m.onnx")
    x = rng.randn(3, 4).astype(np.float32)
    report, (y,) = _compile_run(tmp_path / "m.onnx", tmp_path, {"x": (3, 4)}, {"x": x})
    np.testing.assert_allclose(y, _ort(tmp_path / "m.onnx", {"x": x})[0], rtol=1e-5, atol=1e-6)
    assert report["weight_bytes"] == 4 * 8 * 4 + 8 * 4  # both tensors, each 16-byte aligned
    # h (the MatMul with its bias) and r: the Relu overwrites h in place (memplan) -> one 96-byte slot
    assert report["arena_bytes"] == 96
    # the bias Add is fused into the MatMul's qc_sgemm call (lower_sgemm._bias_add)
    assert [k for _, k in report["calls"]] == ["matmul f32", "relu f32", "softmax f32"]
    text = (tmp_path / "c" / "model.c").read_text()
    assert "malloc" not in text and "stdio" not in text


def test_output_is_deterministic(tmp_path):
    m = _model([helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]), helper.make_node("Sigmoid", ["t"], ["y"])],
               [helper.make_tensor_value_info("x", TP.FLOAT, [2, 3])],
               [helper.make_tensor_value_info("y", TP.FLOAT, [3, 2])])
    for d in ("a", "b"):
        _emit(import_onnx(m), tmp_path / d, A76, harness=True)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_unsupported_op_names_the_node(tmp_path):
    m = _model([helper.make_node("Einsum", ["x", "x"], ["y"], equation="ij,ij->ij", name="my_einsum")],
               [helper.make_tensor_value_info("x", TP.FLOAT, [2, 2])],
               [helper.make_tensor_value_info("y", TP.FLOAT, [2, 2])])
    with pytest.raises(QCError, match=r"node 'my_einsum': Einsum is not supported by the C backend"):
        _emit(import_onnx(m), tmp_path / "c", A76)


def test_missing_shape_is_an_error(tmp_path):
    m = _model([helper.make_node("Relu", ["x"], ["y"])],
               [helper.make_tensor_value_info("x", TP.FLOAT, ["N", 4])],
               [helper.make_tensor_value_info("y", TP.FLOAT, None)])
    with pytest.raises(QCError, match=r"input 'x': input 'x' has no static shape; give it one with --shape x=Nx4"):
        _emit(import_onnx(m), tmp_path / "c", A76)
    with pytest.raises(QCError, match=r"--shape names 'z', which is not a model input"):
        _emit(import_onnx(m), tmp_path / "c", A76, shapes={"z": (1,)})
    with pytest.raises(QCError, match=r"does not fit the input's shape \[N, 4\]"):
        _emit(import_onnx(m), tmp_path / "c", A76, shapes={"x": (2, 5)})
    # emit_c runs no pass: it names the first value without a static shape
    with pytest.raises(QCError, match=r"value 'x': 'x' has no static shape .*--shape NAME=AxB"):
        emit_c(import_onnx(m), tmp_path / "c", A76)


def test_minilm_float_matches_onnxruntime(tmp_path, minilm_fp32):
    """MiniLM-L6 float32 with a static sequence length of 16 (shape arithmetic folded away)."""
    toolchain.require_tools("host")
    path = minilm_fp32
    rng = np.random.RandomState(0)
    inputs = {"input_ids": rng.randint(0, 30000, (1, 16)).astype(np.int64),
              "attention_mask": np.ones((1, 16), np.int64)}
    report, outs = _compile_run(path, tmp_path, {"input_ids": (1, 16), "attention_mask": (1, 16)}, inputs)
    assert report["incbin"]  # 90 MB of weights go through .incbin
    for got, ref in zip(outs, _ort(path, inputs)):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-5)



# -- quantized units ----------------------------------------------------------------------------------
def _qdq_model(kind: str, rng, per_channel: bool, out_q: bool):
    """x -> Q -> DQ -> MatMul/Conv(DQ(int8 weight)) [-> Q -> DQ] -> y, the shape of qc's QDQ output."""
    if kind == "matmul":
        xshape, wshape, axis = [2, 5, 48], [48, 24], 1
        w = rng.randint(-127, 128, wshape).astype(np.int8)
        nch = wshape[1]
    else:
        xshape, wshape, axis = [1, 4, 9, 9], [6, 2, 3, 3], 0
        w = rng.randint(-127, 128, wshape).astype(np.int8)
        nch = wshape[0]
    ws = (rng.rand(nch) * 0.02 + 0.005).astype(np.float32) if per_channel else np.array(0.01, np.float32)
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "sx"),
             numpy_helper.from_array(np.array(3, np.int8), "zx"),
             numpy_helper.from_array(w, "wq"), numpy_helper.from_array(ws, "sw"),
             numpy_helper.from_array(np.zeros(ws.shape, np.int8), "zw"),
             numpy_helper.from_array(np.array(0.2, np.float32), "sy"),
             numpy_helper.from_array(np.array(-5, np.int8), "zy")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=axis)]
    if kind == "matmul":
        nodes.append(helper.make_node("MatMul", ["xd", "wd"], ["h"]))
    else:
        inits.append(numpy_helper.from_array(rng.randn(6).astype(np.float32), "b"))
        nodes.append(helper.make_node("Conv", ["xd", "wd", "b"], ["h"], pads=[1, 0, 1, 2], strides=[2, 1], group=2))
    outputs = [helper.make_tensor_value_info("h", TP.FLOAT, None)]
    if out_q:
        nodes.append(helper.make_node("QuantizeLinear", ["h", "sy", "zy"], ["hq"]))
        outputs = [helper.make_tensor_value_info("hq", TP.INT8, None)]
    m = _model(nodes, [helper.make_tensor_value_info("x", TP.FLOAT, xshape)], outputs, inits, opset=21)
    return m, rng.randn(*xshape).astype(np.float32) * 2


@pytest.mark.parametrize("kind,per_channel,out_q", [("matmul", True, True), ("matmul", False, True),
                                                    ("matmul", True, False), ("conv", True, False),
                                                    ("conv", False, False)])
def test_int8_units_match_onnxruntime(tmp_path, kind, per_channel, out_q):
    """int8 units: the kernels chosen, and the numbers: float outputs within float rounding of
    onnxruntime's DQ -> float op path; int8 outputs (TFLite requantization) at most 1 LSB off
    its float rounding, and equal for nearly all elements."""
    toolchain.require_tools("host")
    m, x = _qdq_model(kind, np.random.RandomState(7), per_channel, out_q)
    report, (y,) = _compile_run(m, tmp_path, {}, {"x": x}, variant="portable")
    kernels = [k for _, k in report["calls"]]
    pc = " per-channel" if per_channel else ""
    assert ("gemm s8 requant" + pc + " (portable)" if out_q else "gemm s8 (portable)") in kernels
    assert "quantize i8" in kernels and not any(k.startswith(("dequant acc", "requant s8")) for k in kernels)
    assert not any(k.startswith(("matmul f32", "conv2d f32", "dequantize")) for k in kernels), kernels
    ref = _ort(m, {"x": x})[0]
    if out_q:
        diff = np.abs(y.astype(int) - ref.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.02, (diff.max(), (diff > 0).mean())
    else:
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4 * np.abs(ref).max())


# -- cross builds under qemu ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def portable_units(tmp_path_factory):
    """{name: (model, input, output of the portable host build)} for an int8 MatMul -> Q and a Conv unit."""
    toolchain.require_tools("host")
    out = {}
    for name, out_q in (("matmul", True), ("conv", False)):
        m, x = _qdq_model(name, np.random.RandomState(3), True, out_q)
        _, (host,) = _compile_run(m, tmp_path_factory.mktemp(name), {}, {"x": x}, variant="portable")
        out[name] = (m, x, host)
    return out


@pytest.mark.parametrize("target,kind,cpu", [("cortex-m4", "cortex-m", "cortex-m4"),
                                             ("cortex-m55", "cortex-m", "cortex-m55"),
                                             ("cortex-a53", "aarch64", "cortex-a53"),
                                             ("armv8.6-i8mm", "aarch64", "max")])
def test_int8_units_under_qemu(tmp_path, portable_units, target, kind, cpu):
    """The int8 MatMul -> Q and Conv units built with the target's kernel variant and run under
    qemu give the same bytes as the portable build on the host."""
    toolchain.require_tools(kind)
    t = load_target(target)
    for name, (m, x, host) in portable_units.items():
        report = _emit(import_onnx(m), tmp_path / f"{name}-{target}", t, harness=True)
        assert report["variant"] != "portable"
        exe = build_model(report, kind, cpu)
        (y,) = run_model(exe, report, {"x": x}, kind, cpu, timeout=120)
        assert y.tobytes() == host.tobytes(), (target, name)


# -- end to end: qc compile --emit c, run under qemu, compare with onnxruntime ----------------------------
def _compile(src, target: str, out, *, quant: str, calibration=None, shapes=None, emit=None, harness=True):
    """qc.compile + write, as `qc compile ... --emit-harness` does."""
    import qc

    qc.compile(str(src), target=target, quant=quant, calibration=calibration, shapes=shapes,
               emit=emit).write(str(out), harness=harness)


def _licenses_windows(tokenizer: str, samples: int):
    """Calibration from the built-in licence texts, as --calib-text licenses --samples N."""
    from qc.calib.data import from_text, text_input_names
    from qc.data.text import load_tokenizer, resolve_text

    return lambda module: from_text(resolve_text("licenses"), load_tokenizer(tokenizer), seq_len=128,
                                    samples=samples, input_names=text_input_names(module))


def _emit_portable(onnx_path: Path, out: Path, shapes) -> tuple[dict, Path]:
    """The same quantized ONNX emitted with the portable kernels and built for the host."""
    report = _emit(import_onnx(str(onnx_path)), out, A76, shapes, harness=True, variant="portable")
    return report, build_model(report, "host")


def _a76_run(out_dir: Path, inputs: dict, timeout: float = 300.0) -> list[np.ndarray]:
    """Build DIR (emitted by qc compile --emit c --emit-harness for cortex-a76) and run it under qemu."""
    report = load_report(out_dir)
    exe = build_model(report, "aarch64", "cortex-a76")
    return run_model(exe, report, inputs, "aarch64", "cortex-a76", timeout=timeout)


def test_minilm_w8a8_cortex_a76_under_qemu(tmp_path, minilm_fp32):
    """MiniLM-L6 w8a8 for cortex-a76 (dot-product kernels, native float16) under qemu: the same
    bytes as the portable host build, and within the stated bounds of onnxruntime on the same ONNX."""
    toolchain.require_tools("aarch64")
    src = minilm_fp32
    out = tmp_path / "c"
    _compile(src, "cortex-a76", out, quant="w8a8", calibration=_licenses_windows("minilm-l6", 8),
             shapes={"input_ids": (1, 16), "attention_mask": (1, 16)})
    rng = np.random.RandomState(0)
    inputs = {"input_ids": rng.randint(0, 30000, (1, 16)).astype(np.int64),
              "attention_mask": np.ones((1, 16), np.int64)}
    got = _a76_run(out, inputs)
    report, exe = _emit_portable(out / "model.onnx", tmp_path / "host",
                                 {"input_ids": (1, 16), "attention_mask": (1, 16)})
    host = run_model(exe, report, inputs)
    assert [g.tobytes() for g in got] == [h.tobytes() for h in host]
    hidden, emb = _ort(out / "model.onnx", inputs)
    assert np.abs(got[0] - hidden).max() < 0.25
    cos = float(np.dot(got[1].ravel(), emb.ravel()) / np.linalg.norm(got[1]) / np.linalg.norm(emb))
    assert cos > 0.999, cos


def test_light_cnn_w8a8_cortex_a76_under_qemu(tmp_path):
    """onnx's light SqueezeNet (random weights) w8a8: int8 Conv units, MaxPool, Concat,
    GlobalAveragePool, Softmax, under qemu -cpu cortex-a76, against onnxruntime."""
    import sys

    toolchain.require_tools("aarch64")
    sys.path.insert(0, str(Path(__file__).parent))
    from c_backend.models import image_calibration, light_cnn

    model = light_cnn("squeezenet", tmp_path / "squeezenet.onnx")
    calib = image_calibration(tmp_path / "calib.npz", "data_0", (1, 3, 224, 224))
    out = tmp_path / "c"
    _compile(model, "cortex-a76", out, quant="w8a8", calibration=str(calib), emit="c")
    x = np.random.RandomState(5).rand(1, 3, 224, 224).astype(np.float32)
    (got,) = _a76_run(out, {"data_0": x})
    ref = _ort(out / "model.onnx", {"data_0": x})[0]
    np.testing.assert_allclose(got, ref, atol=1e-3)
    assert got.argmax() == ref.argmax()
    kernels = (out / "model.c").read_text()
    # the 26 int8 convs run the direct SDOT conv (1x1 ones on the NCHW planes, 3x3 on qc_im2row_s8)
    assert kernels.count("qc_conv1x1_s8_") == 26 and "qc_gemm_s8(" not in kernels and "qc_conv2d_f32" not in kernels


@pytest.mark.skipif(not __import__("os").environ.get("QC_SLOW"), reason="SmolLM2 end to end: set QC_SLOW=1 (~3 min)")
def test_smollm2_w8a8_next_token_under_qemu(tmp_path):
    """SmolLM2-135M w8a8 with split outliers (float16 columns) for cortex-a76, a 15-token prompt:
    the same next-token argmax as onnxruntime on the same ONNX."""
    from qc.models import tokenizer

    toolchain.require_tools("aarch64")
    src = tmp_path / "smollm2-135m.onnx"
    from qc.models import build

    build("smollm2-135m", str(src))
    ids = np.array([tokenizer("smollm2-135m").encode(
        "The quick brown fox jumps over the lazy dog. The capital of France is").ids], np.int64)
    out = tmp_path / "c"
    _compile(src, "cortex-a76", out, quant="w8a8", calibration=_licenses_windows("smollm2-135m", 8),
             shapes={"input_ids": (1, ids.shape[1])})
    (logits,) = _a76_run(out, {"input_ids": ids}, timeout=900)
    ref = _ort(out / "model.onnx", {"input_ids": ids})[0]
    assert logits[0, -1].argmax() == ref[0, -1].argmax()


def test_minilm_w4_matmulnbits(tmp_path, minilm_fp32):
    """w4 (int4 blocks of 32, asymmetric): com.microsoft.MatMulNBits lowered to qc_matmul_f32_s4;
    shapes inferred through the contrib op; against onnxruntime's MatMulNBits."""
    toolchain.require_tools("host")
    src = minilm_fp32
    q = tmp_path / "w4.onnx"
    _compile(src, "cortex-a76", q, quant="w4", emit="onnx", harness=False)
    report, exe = _emit_portable(q, tmp_path / "c", {"input_ids": (1, 16), "attention_mask": (1, 16)})
    assert report["kernels"]["matmul f32 x s4"] == 36
    rng = np.random.RandomState(2)
    inputs = {"input_ids": rng.randint(0, 30000, (1, 16)).astype(np.int64),
              "attention_mask": np.ones((1, 16), np.int64)}
    for got, ref in zip(run_model(exe, report, inputs), _ort(q, inputs)):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=5e-5)


def test_cli_emit_c_errors(tmp_path, capsys):
    from qc.cli import main

    m = _model([helper.make_node("Einsum", ["x", "x"], ["y"], equation="ij,ij->ij", name="my_einsum")],
               [helper.make_tensor_value_info("x", TP.FLOAT, ["N", 2])],
               [helper.make_tensor_value_info("y", TP.FLOAT, None)])
    onnx.save(m, tmp_path / "m.onnx")
    assert main(["compile", str(tmp_path / "m.onnx"), "--target", "cortex-a76", "-o", str(tmp_path / "c"),
                 "--shape", "x=3x2"]) == 2
    assert "node 'my_einsum': Einsum is not supported by the C backend" in capsys.readouterr().err
    assert main(["compile", str(tmp_path / "m.onnx"), "--target", "cortex-a76", "-o", str(tmp_path / "c2")]) == 2
    assert "input 'x' has no static shape; give it one with --shape x=Nx2" in capsys.readouterr().err
    assert main(["compile", str(tmp_path / "m.onnx"), "--target", "x86-avx2", "-o", str(tmp_path / "m2.onnx"),
                 "--shape", "x=3x2"]) == 2
    assert "--shape, --max-context and --emit-harness describe C output; add --emit c" in capsys.readouterr().err
    assert main(["compile", str(tmp_path / "m.onnx"), "--target", "cortex-a76", "-o", str(tmp_path / "c3"),
                 "--shape", "x=3by2"]) == 2
    assert "--shape: cannot read 'x=3by2'; write NAME=AxB" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m55"])
def test_tiny_cnn_w8a8_cortex_m_under_qemu(tmp_path, target):
    """A whole small CNN (int8 Conv and Gemm units, MaxPool, GlobalAveragePool, Softmax) compiled
    with qc compile for a Cortex-M target (the default --emit c) runs under qemu-system-arm with
    semihosting and matches onnxruntime on the same ONNX."""
    import sys

    toolchain.require_tools("cortex-m")
    sys.path.insert(0, str(Path(__file__).parent))
    from c_backend.models import image_calibration
    from c_backend.tiny_cnn import tiny_cnn

    model = tiny_cnn(tmp_path / "tiny.onnx")
    calib = image_calibration(tmp_path / "calib.npz", "x", (1, 1, 28, 28), samples=8)
    out = tmp_path / "c"
    _compile(model, target, out, quant="w8a8", calibration=str(calib))
    report = load_report(out)
    isa = "dsp" if target == "cortex-m4" else "mve"
    # three int8 GEMMs: the second conv requantizes to int8 with its Relu as the clamp (w8a8's
    # requantize-outputs: a Q before the GlobalAveragePool), the first conv and the Gemm end in float
    assert report["kernels"][f"gemm s8 ({isa})"] == 2, report["kernels"]
    assert report["kernels"][f"gemm s8 requant per-channel (relu) ({isa})"] == 1, report["kernels"]
    assert report["arena_bytes"] <= 64 * 1024
    x = np.random.RandomState(1).rand(1, 1, 28, 28).astype(np.float32)
    exe = build_model(report, "cortex-m", target)
    (got,) = run_model(exe, report, {"x": x}, "cortex-m", target, timeout=120)
    ref = _ort(out / "model.onnx", {"x": x})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4)
