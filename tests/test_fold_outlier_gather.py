"""fold-outlier-gather in qc compile's x86 pipeline: float32 outlier columns, the int8 part reads
the whole activation (no full-width Gather), and onnxruntime computes what the unfolded model
computes, for u8 weights with zero point 128 (AVX2 without VNNI) and for 7-bit int8 ones (--reduce-range)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import qc
from qc.onnx.evaluator import ort_session
from qc.quant import schemes
from qc.quant.schemes import QuantOptions

T, K, N = 16, 64, 48
OUTLIERS = (3, 50)


def _model(path) -> str:
    rng = np.random.RandomState(2)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    g = helper.make_graph(nodes, "fold", [helper.make_tensor_value_info("x", TP.FLOAT, [1, T, K])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [1, T, N])],
                          [numpy_helper.from_array((rng.randn(K, K) / 8).astype(np.float32), "w1"),
                           numpy_helper.from_array((rng.randn(K, N) / 8).astype(np.float32), "w2")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


def _x(rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((1, T, K)).astype(np.float32)
    x[..., list(OUTLIERS)] *= 40.0
    return x


def warning_codes(src: str, tmp_path, outliers: str) -> set[str]:
    res = qc.compile(src, target="x86-avx2", quant=QuantOptions("w8a8", outlier_fraction=0.04, outliers=outliers),
                     calibration=str(tmp_path / "calib.npz"), holdout=0)
    res.write(str(tmp_path / f"{outliers}.onnx"))       # the report is made when the model is written
    return {w["code"] for w in res.report["warnings"]}


def test_saturated_outlier_columns_are_no_activation_outliers(tmp_path):
    """After fold-outlier-gather the quantized activation holds the outlier columns, which
    saturate against zero weight rows: the activation-outliers guardrail judges the columns the
    int8 part reads (without split-outliers, the same activation is flagged)."""
    src = _model(tmp_path / "m.onnx")
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "calib.npz", x=np.stack([_x(rng) for _ in range(16)]))
    assert "activation-outliers" in warning_codes(src, tmp_path, "none")
    assert "activation-outliers" not in warning_codes(src, tmp_path, "split")


def _run(path, x: np.ndarray) -> np.ndarray:
    return ort_session(str(path)).run(None, {"x": x})[0]


@pytest.mark.parametrize("reduce_range,weight_dtype", [(False, TP.UINT8), (True, TP.INT8)])
def test_x86_w8a8_folds_the_rest_gather_and_computes_the_unfolded_result(tmp_path, monkeypatch, reduce_range,
                                                                         weight_dtype):
    src = _model(tmp_path / "m.onnx")
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "calib.npz", x=np.stack([_x(rng) for _ in range(16)]))
    quant = QuantOptions("w8a8", outlier_fraction=0.04, reduce_range=reduce_range)
    target = "x86-avx2"
    folded = qc.compile(src, target=target, quant=quant, calibration=str(tmp_path / "calib.npz"), holdout=0)
    folded.write(str(tmp_path / "folded.onnx"))
    assert "split-outliers{mode=budget,max-fraction=0.04,dtype=f32}" in folded.pipeline
    assert "fold-qdq,fold-outlier-gather" in folded.pipeline

    monkeypatch.setattr(schemes, "folds_outlier_gather", lambda opts, s: False)
    plain = qc.compile(src, target=target, quant=quant, calibration=str(tmp_path / "calib.npz"), holdout=0)
    plain.write(str(tmp_path / "plain.onnx"))
    assert "fold-outlier-gather" not in plain.pipeline

    proto = onnx.load(tmp_path / "folded.onnx")
    gathers = [n for n in proto.graph.node if n.op_type == "Gather"]
    sizes = {init.name: init.dims[0] for init in proto.graph.initializer if init.data_type == TP.INT64}
    assert gathers and all(sizes[n.input[1]] <= 4 for n in gathers)     # outlier columns only: no rest copy
    weights = [i for i in proto.graph.initializer if len(i.dims) == 2 and i.dims[0] == K]
    assert weights and {w.data_type for w in weights} == {weight_dtype}
    assert not any(n.op_type == "Cast" for n in proto.graph.node)      # float32 outlier part: no float16 casts

    x = _x(np.random.default_rng(9))
    y_folded, y_plain = _run(tmp_path / "folded.onnx", x), _run(tmp_path / "plain.onnx", x)
    np.testing.assert_allclose(y_folded, y_plain, rtol=1e-4, atol=1e-4 * float(np.abs(y_plain).max()))
    y_float = _run(src, x)
    sqnr = 10 * np.log10(np.sum(y_float ** 2) / np.sum((y_folded - y_float) ** 2))
    assert sqnr > 25, sqnr


def test_outlier_dtype_follows_the_target_unless_given():
    x86, arm = ("avx2",), ("neon", "dotprod")
    assert schemes.outlier_dtype(QuantOptions("w8a8", target_features=x86)) == "float32"
    assert schemes.outlier_dtype(QuantOptions("w8a8", target_features=arm)) == "float16"
    assert schemes.outlier_dtype(QuantOptions("w8a8", outlier_dtype="float16", target_features=x86)) == "float16"
    arm_pipeline = schemes.pipeline(QuantOptions("w8a8", target_features=arm))
    assert "dtype=f32" not in arm_pipeline and "fold-qdq,fold-outlier-gather" in arm_pipeline
    assert "fold-outlier-gather" not in schemes.pipeline(QuantOptions("w8a8", outliers="smooth", target_features=arm))
    dyn = schemes.pipeline(schemes.with_calibration(replace(QuantOptions("dyn8"), target_features=x86)))
    assert "fold-outlier-gather" not in dyn                              # dynamic: no Q/DQ pair to fold
