"""The C backend's LSTM / GRU and control flow (If, Loop): built for cortex-a76, run under qemu,
compared with onnxruntime (graph optimizations off) on the same ONNX; and the refusals."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from qc.backends.c import emit_c, prepare, toolchain
from qc.backends.c.runner import build_model, run_model
from qc.errors import QCError
from qc.frontend.onnx import import_onnx
from qc.ir import DType
from qc.onnx.evaluator import ort_session
from qc.targets import load_target

A76 = load_target("cortex-a76")


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, dt=TP.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, dt, shape)


def _init(rng, name, *shape, scale=0.5):
    return numpy_helper.from_array((rng.randn(*shape) * scale).astype(np.float32), name)


def _prepared(model, shapes=None):
    module = import_onnx(model)
    prepare(module, shapes or {})
    return module


def _a76(model, out, feeds_list, shapes=None):
    """Emit for cortex-a76, build, run every feed under qemu-aarch64; returns (report, [outputs per feed])."""
    report = emit_c(_prepared(model, shapes), out, A76, harness=True)
    exe = build_model(report, "aarch64", "cortex-a76")
    return report, [run_model(exe, report, f, "aarch64", "cortex-a76", timeout=120) for f in feeds_list]


def _ort(model, feeds):
    return ort_session(model).run(None, feeds)


# -- LSTM / GRU ---------------------------------------------------------------------------------------
def test_rnn_node_cases_under_qemu(tmp_path):
    """onnx's lstm_* / gru_* node tests (defaults, initial bias, peepholes, sequence lengths,
    batchwise layout 1) in one cortex-a76 binary under qemu, against the expected outputs."""
    toolchain.require_tools("aarch64")
    sys.path.insert(0, str(Path(__file__).parent))
    from c_backend.nodecases import build_and_run, emit_cases, node_cases

    cases = [c for c in node_cases({"LSTM", "GRU"}) if c[0].startswith(("test_lstm", "test_gru"))]
    assert len(cases) >= 8, [c[0] for c in cases]
    emitted, failed = emit_cases(cases, tmp_path, A76)
    assert not failed, failed
    assert "qc_rnn.c" in {s for _, _, r, _, _ in emitted for s in r["sources"]}
    build_and_run(emitted, tmp_path, "aarch64", "cortex-a76")
    for i, name, r, _, outs in emitted:
        for j, (expected, (_, dt, shape)) in enumerate(zip(outs, r["outputs"])):
            got = np.frombuffer((tmp_path / f"case{i}_out{j}.bin").read_bytes(), DType.parse(dt).numpy).reshape(shape)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=name)


def _rnn_model(rng, T=6, B=2, IN=128):
    """Silero-sized recurrences side by side on one input: a bidirectional LSTM (H 128, bias,
    peepholes, initial states, all three outputs), a reverse GRU with linear_before_reset (Y_h
    only) and a forward GRU (Y only)."""
    H, Hg = 128, 64
    inits = [_init(rng, "W", 2, 4 * H, IN, scale=0.1), _init(rng, "R", 2, 4 * H, H, scale=0.1),
             _init(rng, "B", 2, 8 * H, scale=0.1), _init(rng, "P", 2, 3 * H, scale=0.1),
             _init(rng, "Wg", 1, 3 * Hg, IN, scale=0.1), _init(rng, "Rg", 1, 3 * Hg, Hg, scale=0.1),
             _init(rng, "Bg", 1, 6 * Hg, scale=0.1)]
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0", "P"], ["y", "yh", "yc"], hidden_size=H,
                              direction="bidirectional"),
             helper.make_node("GRU", ["x", "Wg", "Rg", "Bg"], ["", "gh"], hidden_size=Hg, direction="reverse",
                              linear_before_reset=1),
             helper.make_node("GRU", ["x", "Wg", "Rg", "", "", "g0"], ["gy"], hidden_size=Hg)]
    m = _model(nodes, [_vi("x", shape=[T, B, IN]), _vi("h0", shape=[2, B, H]), _vi("c0", shape=[2, B, H]),
                       _vi("g0", shape=[1, B, Hg])],
               [_vi("y"), _vi("yh"), _vi("yc"), _vi("gh"), _vi("gy")], inits, opset=14)
    feeds = {"x": rng.randn(T, B, IN).astype(np.float32), "h0": rng.randn(2, B, H).astype(np.float32) * 0.5,
             "c0": rng.randn(2, B, H).astype(np.float32) * 0.5, "g0": rng.randn(1, B, Hg).astype(np.float32) * 0.5}
    return m, feeds


def test_silero_sized_lstm_gru_under_qemu(tmp_path):
    toolchain.require_tools("aarch64")
    rng = np.random.RandomState(0)
    m, feeds = _rnn_model(rng)
    report, (got,) = _a76(m, tmp_path / "c", [feeds])
    assert report["kernels"] == {"lstm f32 forward": 1, "lstm f32 reverse": 1, "gru f32 reverse": 1,
                                 "gru f32 forward": 1}
    for g, r in zip(got, _ort(m, feeds)):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=2e-6)


def test_rnn_layout_1_matches_the_reference():
    """layout 1 (batch first; onnxruntime refuses it): the C strides against onnx's reference
    evaluator, host build."""
    from onnx.reference import ReferenceEvaluator

    toolchain.require_tools("host")
    rng = np.random.RandomState(1)
    H, T, B, IN = 8, 5, 3, 4
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["y", "yh", "yc"], hidden_size=H,
                              direction="bidirectional", layout=1),
             helper.make_node("GRU", ["x", "Wg", "Rg"], ["gy", "gh"], hidden_size=H, direction="bidirectional",
                              layout=1)]
    inits = [_init(rng, "W", 2, 4 * H, IN), _init(rng, "R", 2, 4 * H, H), _init(rng, "B", 2, 8 * H),
             _init(rng, "Wg", 2, 3 * H, IN), _init(rng, "Rg", 2, 3 * H, H)]
    m = _model(nodes, [_vi("x", shape=[B, T, IN]), _vi("h0", shape=[B, 2, H]), _vi("c0", shape=[B, 2, H])],
               [_vi(n) for n in ("y", "yh", "yc", "gy", "gh")], inits, opset=14)
    feeds = {"x": rng.randn(B, T, IN).astype(np.float32), "h0": rng.randn(B, 2, H).astype(np.float32),
             "c0": rng.randn(B, 2, H).astype(np.float32)}
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        report = emit_c(_prepared(m), Path(d), A76, harness=True, variant="portable")
        got = run_model(build_model(report, "host"), report, feeds)
    for g, r in zip(got, ReferenceEvaluator(m).run(None, feeds)):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attrs,extra,message", [
    ({"activations": ["Relu", "Tanh", "Tanh"]}, {}, r"activations \['relu', 'tanh', 'tanh'\]; only the defaults"),
    ({}, {"lens": np.array([3, 2], np.int32)}, r"sequence_lens \[3, 2\] shorter than the sequence \(3\)"),
])
def test_rnn_refusals(tmp_path, attrs, extra, message):
    rng = np.random.RandomState(2)
    inits = [_init(rng, "W", 1, 16, 2), _init(rng, "R", 1, 16, 4)]
    names = ["x", "W", "R"]
    if "lens" in extra:
        inits.append(numpy_helper.from_array(extra["lens"], "lens"))
        names += ["", "lens"]
    m = _model([helper.make_node("LSTM", names, ["y"], hidden_size=4, name="rnn", **attrs)],
               [_vi("x", shape=[3, 2, 2])], [_vi("y")], inits, opset=14)
    with pytest.raises(QCError, match=r"node 'rnn': LSTM is not supported by the C backend \(" + message):
        emit_c(_prepared(m), tmp_path / "c", A76)


# -- If -----------------------------------------------------------------------------------------------
def _if_lstm_model(rng):
    """y, h = If(mode > 0) {then: LSTM(x) (silero's decoder: the LSTM inside a branch), Y_h;
    else: Tanh(x) summed over time and scaled, its first row}: a run-time condition."""
    H, IN, T = 16, 8, 4
    then_g = helper.make_graph(
        [helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["ly", "lh", "lc"], hidden_size=H),
         helper.make_node("Squeeze", ["ly", "ax1"], ["t_y"]), helper.make_node("Identity", ["lh"], ["t_h"])],
        "then", [], [_vi("t_y", shape=[T, 1, H]), _vi("t_h", shape=[1, 1, H])],
        [numpy_helper.from_array(np.array([1], np.int64), "ax1")])
    else_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "Wx"], ["m"]), helper.make_node("Tanh", ["m"], ["e_y"]),
         helper.make_node("ReduceSum", ["e_y", "ax0"], ["e_h"], keepdims=1)],
        "else", [], [_vi("e_y", shape=[T, 1, H]), _vi("e_h", shape=[1, 1, H])],
        [numpy_helper.from_array(np.array([0], np.int64), "ax0")])
    inits = [_init(rng, "W", 1, 4 * H, IN), _init(rng, "R", 1, 4 * H, H), _init(rng, "B", 1, 8 * H),
             _init(rng, "Wx", IN, H), numpy_helper.from_array(np.array(0, np.int64), "zero")]
    nodes = [helper.make_node("Greater", ["mode", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y", "h"], then_branch=then_g, else_branch=else_g, name="branchy")]
    m = _model(nodes, [_vi("x", shape=[T, 1, IN]), _vi("h0", shape=[1, 1, H]), _vi("c0", shape=[1, 1, H]),
                       _vi("mode", TP.INT64, [])], [_vi("y", shape=[T, 1, H]), _vi("h", shape=[1, 1, H])], inits)
    feeds = {"x": rng.randn(T, 1, IN).astype(np.float32), "h0": rng.randn(1, 1, H).astype(np.float32),
             "c0": rng.randn(1, 1, H).astype(np.float32)}
    return m, feeds


def test_if_runtime_condition_under_qemu(tmp_path):
    """Both branches in the C code behind `if (cond)`; each value of the condition input gives
    onnxruntime's outputs."""
    toolchain.require_tools("aarch64")
    m, feeds = _if_lstm_model(np.random.RandomState(3))
    runs = [{**feeds, "mode": np.array(v, np.int64)} for v in (1, -1)]
    report, got = _a76(m, tmp_path / "c", runs)
    text = (tmp_path / "c" / "model.c").read_text()
    assert "    if (*(const uint8_t *)" in text and "    else {" in text and "qc_lstm_f32(" in text
    assert report["kernels"]["if"] == 1
    for g, f in zip(got, runs):
        for a, r in zip(g, _ort(m, f)):
            np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got[0][0], got[1][0])  # the two branches differ


def test_if_constant_condition_is_inlined(tmp_path):
    """A condition that folds (here: from a static shape, as exporters write it) inlines the taken
    branch in the preparation pipeline: no If is left, no `if` in the C."""
    toolchain.require_tools("host")
    rng = np.random.RandomState(4)
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [], [_vi("t", shape=[2, 3])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [_vi("e", shape=[2, 3])])
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i0"], ["d0"]),
             helper.make_node("Equal", ["d0", "two"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    m = _model(nodes, [_vi("x", shape=["N", 3])], [_vi("y", shape=["N", 3])],
               [numpy_helper.from_array(np.array(0, np.int64), "i0"),
                numpy_helper.from_array(np.array(2, np.int64), "two")])
    module = _prepared(m, {"x": (2, 3)})
    assert [op.op_type for op in module.graph.walk()] == ["Relu"]
    report = emit_c(module, tmp_path / "c", A76, harness=True, variant="portable")
    assert [k for _, k in report["calls"]] == ["relu f32"]
    x = rng.randn(2, 3).astype(np.float32)
    (y,) = run_model(build_model(report, "host"), report, {"x": x})
    np.testing.assert_array_equal(y, _ort(m, {"x": x})[0])


def test_if_branches_of_different_shapes_is_an_error(tmp_path):
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [], [_vi("t", shape=[2, 3])])
    else_g = helper.make_graph([helper.make_node("Slice", ["x", "b", "e", "a"], ["u"])], "else", [],
                               [_vi("u", shape=[1, 3])],
                               [numpy_helper.from_array(np.array([v], np.int64), n)
                                for n, v in (("b", 0), ("e", 1), ("a", 0))])
    m = _model([helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g, name="pick")],
               [_vi("x", shape=[2, 3]), _vi("c", TP.BOOL, [])], [_vi("y")])
    with pytest.raises(QCError, match=r"node 'pick': If output 0 \('y'\) has different shapes in its branches: "
                                      r"then_branch f32\[2, 3\], else_branch f32\[1, 3\]; the condition 'c' is a "
                                      r"run-time value"):
        emit_c(_prepared(m), tmp_path / "c", A76)


# -- Loop ---------------------------------------------------------------------------------------------
def _loop_model():
    """Loop(M=5): carried acc (a recurrence on the iteration number) and a swapped pair (p, q),
    a scan output; the body's condition passes its input through (a static trip count)."""
    body = helper.make_graph(
        [helper.make_node("Cast", ["i"], ["fi"], to=TP.FLOAT), helper.make_node("Add", ["acc", "fi"], ["a1"]),
         helper.make_node("Mul", ["a1", "x"], ["a2"]), helper.make_node("Tanh", ["a2"], ["a3"]),
         helper.make_node("Identity", ["cin"], ["cout"]), helper.make_node("Sigmoid", ["a3"], ["sc"])],
        "body", [_vi("i", TP.INT64, []), _vi("cin", TP.BOOL, []), _vi("acc", shape=[3]), _vi("p", shape=[3]),
                 _vi("q", shape=[3])],
        [_vi("cout", TP.BOOL, []), _vi("a3", shape=[3]), _vi("q", shape=[3]), _vi("p", shape=[3]),
         _vi("sc", shape=[3])])
    return _model([helper.make_node("Loop", ["M", "", "a0", "p0", "q0"], ["af", "pf", "qf", "scan"], body=body)],
                  [_vi("x", shape=[3]), _vi("a0", shape=[3]), _vi("p0", shape=[3]), _vi("q0", shape=[3])],
                  [_vi("af", shape=[3]), _vi("pf", shape=[3]), _vi("qf", shape=[3]), _vi("scan", shape=[5, 3])],
                  [numpy_helper.from_array(np.array(5, np.int64), "M")])


def test_loop_static_trip_count_under_qemu(tmp_path):
    toolchain.require_tools("aarch64")
    rng = np.random.RandomState(5)
    m = _loop_model()
    feeds = {k: rng.randn(3).astype(np.float32) for k in ("x", "a0", "p0", "q0")}
    report, (got,) = _a76(m, tmp_path / "c", [feeds])
    assert "for (int qc_i0 = 0; qc_i0 < 5; ++qc_i0) {" in (tmp_path / "c" / "model.c").read_text()
    for g, r in zip(got, _ort(m, feeds)):
        np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-7)
    assert report["kernels"]["loop x5"] == 1


def test_loop_that_stops_early(tmp_path):
    """A body condition computed at run time (no scan outputs): `break` when it turns false."""
    toolchain.require_tools("host")
    body = helper.make_graph(
        [helper.make_node("Mul", ["v", "two"], ["v2"]), helper.make_node("ReduceSum", ["v2"], ["s"], keepdims=0),
         helper.make_node("Less", ["s", "limit"], ["cout"])],
        "body", [_vi("i", TP.INT64, []), _vi("cin", TP.BOOL, []), _vi("v", shape=[2])],
        [_vi("cout", TP.BOOL, []), _vi("v2", shape=[2])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
         numpy_helper.from_array(np.array(100.0, np.float32), "limit")])
    m = _model([helper.make_node("Loop", ["M", "", "v0"], ["vf"], body=body)], [_vi("v0", shape=[2])],
               [_vi("vf", shape=[2])], [numpy_helper.from_array(np.array(20, np.int64), "M")])
    report = emit_c(_prepared(m), tmp_path / "c", A76, harness=True, variant="portable")
    exe = build_model(report, "host")
    for v in ([1.0, 2.0], [30.0, 40.0], [1e-3, 0.0]):
        feeds = {"v0": np.array(v, np.float32)}
        np.testing.assert_array_equal(run_model(exe, report, feeds)[0], _ort(m, feeds)[0])


def test_loop_dynamic_trip_count_is_refused(tmp_path):
    from qc.cli import main

    body = helper.make_graph([helper.make_node("Identity", ["cin"], ["cout"]), helper.make_node("Neg", ["v"], ["w"])],
                             "body", [_vi("i", TP.INT64, []), _vi("cin", TP.BOOL, []), _vi("v", shape=[2])],
                             [_vi("cout", TP.BOOL, []), _vi("w", shape=[2])])
    m = _model([helper.make_node("Loop", ["n", "", "v0"], ["vf"], body=body, name="steps")],
               [_vi("n", TP.INT64, []), _vi("v0", shape=[2])], [_vi("vf", shape=[2])])
    with pytest.raises(QCError, match=r"node 'steps': Loop is not supported by the C backend \(a trip count M that "
                                      r"is not a constant \(after folding\); the C backend needs a static number"):
        emit_c(_prepared(m), tmp_path / "c", A76)
    onnx.save(m, tmp_path / "m.onnx")
    assert main(["compile", str(tmp_path / "m.onnx"), "--target", "cortex-a76", "-o", str(tmp_path / "out")]) == 2
