"""Binding an input to a constant (bind-inputs, ``--bind``, ``qc.compile(bind=...)``) on a
silero-vad-like model: an If on the sample rate ``sr`` whose branches are the 16 kHz and 8 kHz
networks (reflect Pad, Conv STFT, Conv encoder, LSTM on the carried state, Conv + Sigmoid
decoder), weights as Constant nodes inside the branches, as torch exports them. With ``sr`` a
run-time input the C backend refuses (the branches give different shapes); bound to 16000, it
compiles for cortex-a76 and matches onnxruntime on the original model with sr=16000 under qemu.
The pass's rewrites and its errors are in tests/filecheck/bind-inputs.qir."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import qc
from qc.backends.c import toolchain
from qc.backends.c.runner import build_model, load_report, run_model
from qc.onnx.evaluator import ort_session

H = 16  # LSTM hidden size (silero: 128)


def _const(name, array):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))


def _branch(tag: str, rng, hop: int) -> onnx.GraphProto:
    """One sample rate's network: STFT by a strided Conv over the reflect-padded signal (window
    2*hop, the padding computed the way torch exports F.pad), two Conv+Relu, the LSTM from
    `state`, a k=1 Conv + Sigmoid decoder. Outputs: per-frame probabilities [B, T], the state."""
    p = f"{tag}_"
    n: list = []
    n.append(_const(p + "pad_amount", np.array([0, hop // 2], np.int64)))
    n.append(_const(p + "zeros_len", np.array([2], np.int64)))
    n.append(helper.make_node("ConstantOfShape", [p + "zeros_len"], [p + "zeros"],
                              value=numpy_helper.from_array(np.array([0], np.int64))))
    n.append(helper.make_node("Concat", [p + "pad_amount", p + "zeros"], [p + "pads4"], axis=0))
    n.append(_const(p + "m1x2", np.array([-1, 2], np.int64)))
    n.append(helper.make_node("Reshape", [p + "pads4", p + "m1x2"], [p + "pads2d"]))
    for k, v in (("s", [-1]), ("e", [-(2 ** 63)]), ("a", [0]), ("st", [-1])):
        n.append(_const(p + "sl_" + k, np.array(v, np.int64)))
    n.append(helper.make_node("Slice", [p + "pads2d", p + "sl_s", p + "sl_e", p + "sl_a", p + "sl_st"], [p + "rev"]))
    n.append(helper.make_node("Transpose", [p + "rev"], [p + "revt"], perm=[1, 0]))
    n.append(_const(p + "m1", np.array([-1], np.int64)))
    n.append(helper.make_node("Reshape", [p + "revt", p + "m1"], [p + "pads_flat"]))
    n.append(helper.make_node("Cast", [p + "pads_flat"], [p + "pads"], to=TP.INT64))
    n.append(helper.make_node("Pad", ["input", p + "pads"], [p + "padded"], mode="reflect"))
    n.append(_const(p + "ax1", np.array([1], np.int64)))
    n.append(helper.make_node("Unsqueeze", [p + "padded", p + "ax1"], [p + "x3"]))
    n.append(_const(p + "basis", (rng.randn(8, 1, 2 * hop) * 0.2).astype(np.float32)))
    n.append(helper.make_node("Conv", [p + "x3", p + "basis"], [p + "spec"], kernel_shape=[2 * hop], strides=[hop],
                              pads=[0, 0], dilations=[1], group=1))
    n.append(helper.make_node("Abs", [p + "spec"], [p + "mag"]))
    prev = p + "mag"
    for i, (cin, cout, stride) in enumerate(((8, 12, 1), (12, H, 2))):
        n.append(_const(f"{p}enc{i}_w", (rng.randn(cout, cin, 3) * 0.3).astype(np.float32)))
        n.append(_const(f"{p}enc{i}_b", (rng.randn(cout) * 0.1).astype(np.float32)))
        n.append(helper.make_node("Conv", [prev, f"{p}enc{i}_w", f"{p}enc{i}_b"], [f"{p}enc{i}"], kernel_shape=[3],
                                  pads=[1, 1], strides=[stride]))
        n.append(helper.make_node("Relu", [f"{p}enc{i}"], [f"{p}enc{i}_r"]))
        prev = f"{p}enc{i}_r"
    n.append(helper.make_node("Transpose", [prev], [p + "seq"], perm=[2, 0, 1]))  # [T, B, H]
    for k in (0, 1):
        n.append(_const(f"{p}i{k}", np.array(k, np.int64)))
        n.append(helper.make_node("Gather", ["state", f"{p}i{k}"], [f"{p}s{k}"], axis=0))
        n.append(_const(f"{p}ax0_{k}", np.array([0], np.int64)))
        n.append(helper.make_node("Unsqueeze", [f"{p}s{k}", f"{p}ax0_{k}"], [f"{p}s{k}u"]))
    n.append(_const(p + "W", (rng.randn(1, 4 * H, H) * 0.3).astype(np.float32)))
    n.append(_const(p + "R", (rng.randn(1, 4 * H, H) * 0.3).astype(np.float32)))
    n.append(_const(p + "B", (rng.randn(1, 8 * H) * 0.1).astype(np.float32)))
    n.append(helper.make_node("LSTM", [p + "seq", p + "W", p + "R", p + "B", "", p + "s0u", p + "s1u"],
                              [p + "Y", p + "Yh", p + "Yc"], hidden_size=H))
    n.append(helper.make_node("Concat", [p + "Yh", p + "Yc"], [p + "state_out"], axis=0))
    n.append(_const(p + "ax1b", np.array([1], np.int64)))
    n.append(helper.make_node("Squeeze", [p + "Y", p + "ax1b"], [p + "Ys"]))  # [T, B, H]
    n.append(helper.make_node("Transpose", [p + "Ys"], [p + "Yt"], perm=[1, 2, 0]))  # [B, H, T]
    n.append(helper.make_node("Relu", [p + "Yt"], [p + "Yr"]))
    n.append(_const(p + "dec_w", (rng.randn(1, H, 1) * 0.5).astype(np.float32)))
    n.append(_const(p + "dec_b", np.array([0.1], np.float32)))
    n.append(helper.make_node("Conv", [p + "Yr", p + "dec_w", p + "dec_b"], [p + "logit"], kernel_shape=[1]))
    n.append(helper.make_node("Sigmoid", [p + "logit"], [p + "prob3"]))
    n.append(_const(p + "ax1c", np.array([1], np.int64)))
    n.append(helper.make_node("Squeeze", [p + "prob3", p + "ax1c"], [p + "prob"]))
    return helper.make_graph(n, f"{tag}_branch", [], [helper.make_tensor_value_info(p + "prob", TP.FLOAT, None),
                                                      helper.make_tensor_value_info(p + "state_out", TP.FLOAT, None)])


def silero_like() -> onnx.ModelProto:
    rng = np.random.RandomState(0)
    nodes = [_const("sr16k", np.array(16000, np.int64)),
             helper.make_node("Equal", ["sr", "sr16k"], ["is16k"]),
             helper.make_node("If", ["is16k"], ["prob", "stateN"], then_branch=_branch("r16k", rng, 16),
                              else_branch=_branch("r8k", rng, 8)),
             helper.make_node("Identity", ["prob"], ["output"]),
             helper.make_node("Identity", ["stateN"], ["stateN_out"])]
    g = helper.make_graph(nodes, "silero_like",
                          [helper.make_tensor_value_info("input", TP.FLOAT, ["?", "?"]),
                           helper.make_tensor_value_info("state", TP.FLOAT, [2, "?", H]),
                           helper.make_tensor_value_info("sr", TP.INT64, [])],
                          [helper.make_tensor_value_info("output", TP.FLOAT, ["?", "?"]),
                           helper.make_tensor_value_info("stateN_out", TP.FLOAT, ["?", "?", "?"])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 16)])


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "silero_like.onnx"
    onnx.save(silero_like(), path)
    return path


def _chunks(n=2, length=512):
    rng = np.random.RandomState(1)
    t = np.arange(n * length) / 16000.0
    audio = (0.4 * np.sin(2 * np.pi * 330 * t) + 0.1 * rng.randn(len(t))).astype(np.float32)
    return [audio[k * length:(k + 1) * length][None] for k in range(n)]


def test_runtime_sr_is_refused_and_bound_sr_compiles_to_c(model_path, tmp_path, qc_cli):
    """Without --bind the If stays a run-time choice between branches of different shapes (a
    correct refusal); with --bind sr=16000 the 16 kHz branch is inlined (no C `if`) and the C
    computes what onnxruntime computes on the original model with sr=16000, state carried."""
    shape = ["--shape", "input=1x512,state=2x1x16"]
    proc = qc_cli("compile", str(model_path), "--target", "cortex-a76", *shape, "-o", str(tmp_path / "c0"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("qc: error: ") and "Traceback" not in proc.stderr
    assert "If output 0 ('output') has different shapes in its branches: then_branch f32[1, 16], else_branch " \
           "f32[1, 32]; the condition 'is16k' is a run-time value" in proc.stderr, proc.stderr
    assert "make the condition a constant (--bind sr=VALUE: the taken branch is then inlined)" in proc.stderr

    out = tmp_path / "c1"
    proc = qc_cli("compile", str(model_path), "--target", "cortex-a76", "--bind", "sr=16000", *shape,
                  "--emit-harness", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "pipeline: bind-inputs{values=sr:16000},propagate-shapes," in proc.stdout
    report = load_report(out)
    assert [n for n, _, _ in report["inputs"]] == ["input", "state"]
    assert {"pad reflect", "lstm f32 forward", "sigmoid f32"} <= set(report["kernels"]), report["kernels"]
    assert "if (" not in (out / "model.c").read_text()
    oracle = onnx.load(out / "model.onnx")  # what the C computes: sr is a constant there too
    assert [i.name for i in oracle.graph.input] == ["input", "state"]

    toolchain.require_tools("aarch64")
    exe = build_model(report, "aarch64", "cortex-a76")
    sess = ort_session(str(model_path))
    state = cstate = np.zeros((2, 1, H), np.float32)
    for x in _chunks():
        want = sess.run(None, {"input": x, "state": state, "sr": np.array(16000, np.int64)})
        got = run_model(exe, report, {"input": x, "state": cstate}, "aarch64", "cortex-a76", timeout=120)
        assert want[0].shape == (1, 16) and got[0].shape == want[0].shape  # (512 + 8 - 32) / 16 + 1 = 31, stride 2
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5)
        state, cstate = want[1], got[1]


def test_compile_api_bind(model_path, tmp_path):
    """qc.compile(bind=...) is --bind: the pass first in the pipeline, sr gone from the inputs;
    the ONNX output runs in onnxruntime without sr and gives the sr=16000 result."""
    result = qc.compile(model_path, target="x86-avx2", bind={"sr": 16000})
    assert result.pipeline.startswith("bind-inputs{values=sr:16000},")
    assert [v.name for v in result.module.graph.inputs] == ["input", "state"]
    path = tmp_path / "bound.onnx"
    result.write(path)
    x, state = _chunks(1)[0], np.zeros((2, 1, H), np.float32)
    got = ort_session(str(path)).run(None, {"input": x, "state": state})
    want = ort_session(str(model_path)).run(None, {"input": x, "state": state, "sr": np.array(16000, np.int64)})
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


def test_bind_errors_on_the_command_line(model_path, tmp_path, qc_cli):
    """One `qc: error:` line, exit 2, nothing written: an unknown input (listing the inputs), a
    value the dtype cannot hold, a malformed --bind; qc check takes --bind too."""
    for bind, message in (("rate=16000", "bind-inputs: 'rate' is not a model input; inputs: input, sr, state"),
                          ("sr=16k", "input 'sr': bind-inputs: '16k' is not an integer, the input is i64"),
                          ("sr", "--bind: cannot read 'sr'; write NAME=VALUE")):
        out = tmp_path / f"c-{bind}"
        proc = qc_cli("compile", str(model_path), "--target", "cortex-a76", "--bind", bind,
                      "--shape", "input=1x512,state=2x1x16", "-o", str(out))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("qc: error: ") and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and not (out / "model.c").exists()
    proc = qc_cli("check", str(model_path), "--target", "cortex-a76", "--bind", "sr=16000", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["target"] == "cortex-a76"
    proc = qc_cli("check", str(model_path), "--target", "cortex-a76", "--bind", "sr=1e9")
    assert proc.returncode == 2 and "'1e9' is not an integer" in proc.stderr, proc.stderr


def test_bind_with_calibration_data(tmp_path):
    """Calibration samples are made for the model as read (they hold `sr`): the bound model is fed
    the inputs it still has, a sample whose `sr` differs from the bound value is an error naming
    it, and the report's SQNR compares the bound output with the original on the same samples."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array((rng.standard_normal((4, 2)) / 2).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Cast", ["sr"], ["srf"], to=TP.FLOAT),
             helper.make_node("Mul", ["y", "srf"], ["z"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 4]),
                                       helper.make_tensor_value_info("sr", TP.INT64, [])],
                          [helper.make_tensor_value_info("z", TP.FLOAT, [1, 2])], [w])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = rng.standard_normal((8, 1, 4)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=x, sr=np.full((8,), 16000, np.int64))
    result = qc.compile(path, target="cortex-a76", emit="onnx", quant="w8a8", calibration=tmp_path / "cal.npz",
                        bind={"sr": 16000})
    out = tmp_path / "q.onnx"
    result.write(out)
    assert result.context.calibration.samples == 7 and result.report["accuracy"]["held_aside"] == 1
    q = onnx.load(out)
    assert [i.name for i in q.graph.input] == ["x"]
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    unbound = qc.compile(path, target="cortex-a76", emit="onnx", quant="w8a8", calibration=tmp_path / "cal.npz")
    unbound.write(tmp_path / "u.onnx")  # the same ranges, the same measurement: sr is 16000 in every sample
    assert result.report["accuracy"] == unbound.report["accuracy"]
    got = ort_session(str(out)).run(None, {"x": x[0]})[0]
    want = ort_session(str(tmp_path / "u.onnx")).run(None, {"x": x[0], "sr": np.array(16000, np.int64)})[0]
    np.testing.assert_array_equal(got, want)

    sr = np.full((8,), 16000, np.int64)
    sr[5] = 8000
    np.savez(tmp_path / "mixed.npz", x=x, sr=sr)
    with pytest.raises(qc.QCError, match=r"mixed\.npz: calibration sample 5 gives input 'sr' \[8000\], but --bind "
                                         r"sets it to \[16000\]; calibrate with samples made for sr=16000"):
        qc.compile(path, target="cortex-a76", emit="onnx", quant="w8a8", calibration=tmp_path / "mixed.npz",
                   bind={"sr": 16000})
    result = qc.compile(path, target="cortex-a76", emit="onnx", quant="w8", bind={"sr": 2})  # no calibration
    assert result.pipeline.startswith("bind-inputs{values=sr:2},")
