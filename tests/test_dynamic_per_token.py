"""dyn8 per token (dynamic-per-token): the ONNX computes LLM.int8()'s vector-wise int8 MatMul
exactly (numpy reference), beats per-tensor dynamic scales on a token with an outlier, and C
targets keep the per-tensor form their backend lowers."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import qc
from qc.quant.schemes import QuantOptions


def _model(path, k=64, n=32):
    rng = np.random.RandomState(0)
    w = (rng.randn(k, n) * 0.1).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                          [helper.make_tensor_value_info("x", TP.FLOAT, [1, 8, k])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [1, 8, n])], [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return w


def _run(path, x, optimize=False):
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _x():
    x = np.random.RandomState(1).randn(1, 8, 64).astype(np.float32)
    x[0, 3, 5] = 200.0  # one token with an outlier feature
    return x


@pytest.mark.parametrize("target", ["x86-avx2", "cuda"])
def test_matches_the_numpy_reference(tmp_path, target):
    w = _model(tmp_path / "m.onnx")
    out = tmp_path / "q.onnx"
    qc.compile(str(tmp_path / "m.onnx"), target=target, quant="dyn8", emit="onnx").write(str(out))
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" not in ops and "MatMul" not in ops
    x = _x()
    ws = np.abs(w).max(axis=0) / 127
    wq = np.round(w / ws).astype(np.int64)
    s = np.maximum(np.abs(x).max(axis=-1, keepdims=True), np.float32(1e-30)) / np.float32(127)
    xq = np.round(x / s).astype(np.int64)
    ref = (xq @ wq).astype(np.float32) * ws.astype(np.float32) * s
    np.testing.assert_allclose(_run(out, x), ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_run(out, x, optimize=True), ref, rtol=1e-5, atol=1e-5)


def test_per_token_beats_per_tensor(tmp_path):
    _model(tmp_path / "m.onnx")
    x = _x()
    fp = _run(tmp_path / "m.onnx", x)
    err = {}
    for g in ("token", "tensor"):
        out = tmp_path / f"{g}.onnx"
        opts = QuantOptions("dyn8", act_granularity=g)
        qc.compile(str(tmp_path / "m.onnx"), target="x86-avx2", quant=opts, emit="onnx").write(str(out))
        got = _run(out, x)
        rows = [r for r in range(8) if r != 3]  # the tokens without the outlier
        err[g] = np.linalg.norm(got[0, rows] - fp[0, rows]) / np.linalg.norm(fp[0, rows])
    assert err["token"] < 0.02 < err["tensor"], err


def test_c_target_keeps_the_per_tensor_form(tmp_path):
    """The C backend lowers neither form of dyn8: C targets keep the per-tensor form (a remark),
    and `qc compile --quant dyn8` for C says which nodes it cannot lower, exit 2."""
    import subprocess
    import sys

    _model(tmp_path / "m.onnx")
    res = qc.compile(str(tmp_path / "m.onnx"), target="cortex-a76", quant="dyn8", emit="onnx")
    assert any("keeps the per-tensor dynamic form" in r for r in res.remarks)
    ops = [op.op_type for op in res.module.graph.ops]
    assert "MatMulInteger" not in ops and "DynamicQuantizeMatMul" in ops
    r = subprocess.run([sys.executable, "-m", "qc.cli", "compile", str(tmp_path / "m.onnx"), "--target", "cortex-a76",
                        "--quant", "dyn8", "-o", str(tmp_path / "c")], capture_output=True, text=True)
    assert r.returncode == 2 and "DynamicQuantizeMatMul" in r.stderr and "not supported by the C backend" in r.stderr, \
        r.stderr


def _feature_outlier_x(rows: int, seed: int) -> np.ndarray:
    """Activations whose feature 5 is an outlier in every token (LLM.int8()'s systematic
    outlier dimension), at 50x the others' scale."""
    x = np.random.RandomState(seed).randn(1, rows, 64).astype(np.float32)
    x[..., 5] *= 50.0
    return x


def test_calibration_data_gives_dyn8_float16_outlier_columns(tmp_path):
    """With calibration data dyn8 splits the outlier feature columns off in float16 (the
    split-outliers pass before the per-token int8 MatMul); they cut its error on a systematic
    outlier feature; `--outliers none` keeps the plain form."""
    _model(tmp_path / "m.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.stack([_feature_outlier_x(8, s) for s in range(4)]))   # 4 samples of [1, 8, 64]
    x = _feature_outlier_x(8, 9)
    fp = _run(tmp_path / "m.onnx", x)
    err, ops = {}, {}
    for outliers in (None, "none"):
        out = tmp_path / f"{outliers}.onnx"
        res = qc.compile(str(tmp_path / "m.onnx"), target="x86-avx2", emit="onnx", calibration=str(calib),
                         holdout=0, quant=QuantOptions("dyn8", outliers=outliers))
        res.write(str(out))
        ops[outliers] = [n.op_type for n in onnx.load(str(out)).graph.node]
        got = _run(out, x)
        err[outliers] = np.linalg.norm(got - fp) / np.linalg.norm(fp)
    assert "MatMulInteger" in ops[None] and "Gather" in ops[None] and "MatMul" in ops[None]   # the f16 part
    assert "Gather" not in ops["none"] and "MatMul" not in ops["none"]
    assert err[None] < 0.5 * err["none"], err


def test_dyn8_outlier_choices():
    from qc.errors import QCError
    from qc.quant import schemes

    opts = schemes.with_calibration(QuantOptions("dyn8"))
    assert opts.outliers == "split" and schemes.needs_calibration(opts)
    spec = schemes.pipeline(opts)
    assert spec.index("calibrate{") < spec.index("split-outliers{") < spec.index("quantize-weights{") \
        < spec.index("dynamic-per-token")
    assert "split-outliers" not in schemes.pipeline(QuantOptions("dyn8"))   # no data: no columns
    assert not schemes.needs_calibration(QuantOptions("dyn8"))
    assert schemes.with_calibration(QuantOptions("dyn8", outliers="none")).outliers == "none"
    with pytest.raises(QCError, match="--outliers smooth applies to static schemes .* and --outliers split to dyn8"):
        schemes.pipeline(QuantOptions("dyn8", outliers="smooth"))
    with pytest.raises(QCError, match="--outliers split applies to static schemes"):
        schemes.pipeline(QuantOptions("w4a8", outliers="split"))
