"""`qc compile --quant`: every scheme end to end on a small two-layer model, the report, the
calibration cache, determinism, and the errors a user can cause (one line, exit 2)."""
import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_qc
from qc.onnx.evaluator import ort_session
from qc.tools import metrics

RNG = np.random.default_rng(3)


def mlp(path: str, opset: int = 17) -> str:
    """x[1, 16, 64] -> MatMul 64x128 -> Relu -> MatMul 128x64 -> y (the shape of a transformer MLP)."""
    w1 = (RNG.standard_normal((64, 128)) / 8).astype(np.float32)
    w2 = (RNG.standard_normal((128, 64)) / 11).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="up"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="down")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 64])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    return path


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("quant")
    model = mlp(str(d / "mlp.onnx"))
    calib = str(d / "calib.npz")
    np.savez(calib, x=RNG.standard_normal((16, 1, 16, 64)).astype(np.float32))
    return model, calib, d


@pytest.mark.parametrize("scheme,ops", [
    ("w8a8", {"QuantizeLinear", "DequantizeLinear"}), ("w8a16", {"QuantizeLinear"}),
    ("dyn8", {"MatMulInteger", "ReduceMax"}), ("w8", {"DequantizeLinear"}), ("w4", {"MatMulNBits"}),
    ("w4a8", {"MatMulNBits"}), ("w4a4", {"QuantizeLinear"}), ("fp16", {"Cast"}),
    ("w8a8 --format qop", {"MatMulInteger"})])
def test_every_scheme_compiles_checks_and_runs(model_and_data, scheme, ops):
    model, calib, d = model_and_data
    scheme, *extra = scheme.split()
    out = str(d / f"{scheme}{len(extra)}.onnx")
    r = run_qc("compile", model, "--target", "x86-avx2", "--quant", scheme, "--calib", calib, "-o", out,
               "--report-json", str(d / f"{scheme}.json"), *extra)
    assert r.returncode == 0, r.stderr
    assert f"quantization: {scheme}" in r.stdout
    proto = onnx.load(out)
    onnx.checker.check_model(proto, full_check=True)
    assert ops <= {n.op_type for n in proto.graph.node}
    x = RNG.standard_normal((1, 16, 64)).astype(np.float32)
    got = ort_session(out).run(None, {"x": x})[0]
    want = ort_session(model).run(None, {"x": x})[0]
    floor = {"w4a4": 0.0, "w4": 15.0, "w4a8": 15.0}.get(scheme, 25.0)
    assert metrics.sqnr_db(want, got) > floor
    report = json.load(open(d / f"{scheme}.json"))
    assert report["scheme"] == scheme and report["size_bytes"]["after"] < report["size_bytes"]["before"]
    assert report["accuracy"]["held_aside"] == 2     # 16 samples: the last 2 held aside,
    assert report["accuracy"]["samples"] == 16       # 14 more generated like them
    assert set(report["accuracy"]["sqnr_db"]) == {"y"}


def test_calibration_cache_is_reused(model_and_data):
    model, calib, d = model_and_data
    cache = str(d / "stats.npz")
    first = run_qc("compile", model, "--target", "x86-avx2", "--quant", "w8a8", "--outliers", "none", "--calib", calib,
                   "--calib-cache", cache, "-o", str(d / "c1.onnx"), "--remarks")
    assert first.returncode == 0, first.stderr
    assert os.path.isfile(cache)
    second = run_qc("compile", model, "--target", "x86-avx2", "--quant", "w8a8", "--outliers", "none", "--calib", calib,
                    "--calib-method", "mse", "--calib-cache", cache, "-o", str(d / "c2.onnx"), "--remarks")
    assert second.returncode == 0, second.stderr
    assert "calibration: minmax over 14 samples, 2 tensors\n" in first.stdout   # computed, then saved
    assert f"(from cache {cache})" in second.stdout and f"loaded from {cache}" in second.stdout
    assert "from mse range" in second.stdout        # the new method applies to the cached statistics


def test_same_input_and_options_give_identical_bytes(model_and_data):
    model, calib, d = model_and_data
    outs = []
    for i in range(2):
        out = str(d / f"det{i}.onnx")
        assert run_qc("compile", model, "--target", "x86-avx2", "--quant", "w4", "--weight-algo", "gptq",
                      "--calib", calib, "-o", out, "--quiet").returncode == 0
        outs.append(open(out, "rb").read())
    assert outs[0] == outs[1]


@pytest.mark.parametrize("args,message", [
    (["--quant", "w8a8"], "--quant w8a8 needs calibration data"),
    (["--quant", "w4", "--weight-algo", "gptq"], "with --weight-algo gptq needs calibration data"),
    (["--quant", "w8a8", "-p", "dce"], "give either --quant or -p, not both"),
    (["--calib", "CALIB"], "calibration data is only used with --quant"),
    (["--quant", "w4", "--block-size", "48"], "--block-size must be a power of two"),
])
def test_usage_errors(model_and_data, args, message):
    model, calib, d = model_and_data
    args = [calib if a == "CALIB" else a for a in args]
    r = run_qc("compile", model, "--target", "x86-avx2", "-o", str(d / "bad.onnx"), *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("arrays,message", [
    ({"input": np.zeros((4, 1, 16, 64), np.float32)}, "the calibration data has no array for the model input 'x'"),
    ({"x": np.zeros((4, 1, 16, 64), np.float64)}, "input 'x' expects float32, the calibration data has float64"),
    ({"x": np.zeros((4, 1, 16, 32), np.float32)}, "input 'x' expects shape [1, 16, 64], sample 0 has [1, 16, 32]"),
    ({"x": np.zeros((0, 1, 16, 64), np.float32)}, "the calibration data has no samples"),
    ({"x": np.full((4, 1, 16, 64), np.nan, np.float32)}, "input 'x' of sample 0 contains 1024 NaN value(s)"),
])
def test_bad_calibration_data(model_and_data, arrays, message, tmp_path):
    model, _, d = model_and_data
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, **arrays)
    r = run_qc("compile", model, "--target", "x86-avx2", "--quant", "w8a8", "--calib", bad,
               "-o", str(tmp_path / "o.onnx"))
    assert r.returncode == 2 and message in r.stderr and bad in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not os.path.exists(tmp_path / "o.onnx")


def test_report_lists_and_draws_the_outlier_columns(tmp_path):
    model = mlp(str(tmp_path / "m.onnx"))
    x = RNG.standard_normal((8, 1, 16, 64)).astype(np.float32)
    x[..., 7] *= 50                                   # one planted outlier column of the first MatMul's input
    calib = str(tmp_path / "c.npz")
    np.savez(calib, x=x)
    page = str(tmp_path / "r.html")
    r = run_qc("report", model, "--calib", calib, "--html", page, "--outlier-fraction", "0.02")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[3:]
            if line and not line.startswith("charts")}
    assert rows["x"][-3:] == ["1", "of", "64"] and float(rows["x"][1]) > 50
    html = open(page).read()
    assert html.count("<svg") == 2 and "column 7: max |x|" in html
    bad = run_qc("report", model, "--html", page)
    assert bad.returncode == 2 and "qc report needs calibration data" in bad.stderr
