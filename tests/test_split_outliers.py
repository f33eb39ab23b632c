"""split-outliers: columns chosen per mode, the rewrite's numerics in onnxruntime, the error
bound of the int8 part, and models without outliers left alone."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qc
from qc.calib.stats import CalibrationStats, TensorStats
from qc.errors import QCError
from qc.onnx.evaluator import ort_session
from qc.pm import PassContext, PassManager

K, N, T = 64, 16, 32
OUTLIERS = (5, 40)
RNG = np.random.default_rng(11)
W = (RNG.standard_normal((K, N)) / 8).astype(np.float32)


def activations(count: int, scale: float = 100.0) -> list[np.ndarray]:
    xs = []
    for _ in range(count):
        x = RNG.standard_normal((1, T, K)).astype(np.float32)
        x[..., list(OUTLIERS)] *= scale
        xs.append(x)
    return xs


def model() -> onnx.ModelProto:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")]
    graph = helper.make_graph(nodes, "proj", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, N])],
                              [numpy_helper.from_array(W, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def compile_with(spec: str, samples: list[np.ndarray]):
    stats = TensorStats(histogram=False)
    for s in samples:
        stats.update(s)
    ctx = PassContext(calibration=CalibrationStats(tensors={"x": stats}, samples=len(samples)))
    module = qc.import_onnx(model())
    PassManager.parse(spec, ctx=ctx).run(module)
    return module, ctx


def test_budget_mode_moves_the_planted_columns_to_float16():
    module, ctx = compile_with("split-outliers{mode=budget,max-fraction=0.04}", activations(4))
    (split,) = ctx.outlier_splits
    assert split.columns == list(OUTLIERS) and split.features == K
    consts = {n: v.const.numpy() for n, v in module.graph.consts.items()}
    np.testing.assert_array_equal(consts["x.outlier_cols"], OUTLIERS)
    assert consts["w.outliers"].dtype == np.float16 and consts["w.rest"].shape == (K - 2, N)
    assert "w" not in consts
    proto = qc.export_onnx(module)
    onnx.checker.check_model(proto, full_check=True)
    x = activations(1)[0]
    (y,) = ort_session(proto).run(None, {"x": x})
    # only the float16 rounding of the outlier part differs from the float model
    bound = 2.0 ** -9 * (np.abs(x[..., list(OUTLIERS)]) @ np.abs(W[list(OUTLIERS)])) + 1e-5
    assert np.all(np.abs(y - x @ W) <= bound)


def test_float32_outliers_keep_the_float_model_and_stay_float_through_quantization():
    """dtype=f32: no Cast, the outlier rows stay float32, so the split model is the float model up
    to float32 summation order; quantize-weights, insert-qdq and dynamic-per-token leave the
    outlier MatMul in float (its weight is named @w.outliers) and quantize the rest."""
    module, _ = compile_with("split-outliers{mode=budget,max-fraction=0.04,dtype=f32}", activations(4))
    consts = {n: v.const.numpy() for n, v in module.graph.consts.items()}
    assert consts["w.outliers"].dtype == np.float32 and consts["w.rest"].shape == (K - 2, N)
    assert not any(op.op_type == "Cast" for op in module.graph)
    x = activations(1)[0]
    (y,) = ort_session(qc.export_onnx(module)).run(None, {"x": x})
    np.testing.assert_allclose(y, x @ W, rtol=1e-5, atol=1e-4)
    for quantize in ("quantize-weights,insert-qdq{dtype=u8}", "quantize-weights,dynamic-per-token,"
                     "insert-qdq{dtype=u8,dynamic=true}"):
        module, _ = compile_with("split-outliers{mode=budget,max-fraction=0.04,dtype=f32}," + quantize, activations(4))
        outlier = next(op for op in module.graph if op.name == "proj.outliers")
        assert outlier.op_type == "MatMul"
        assert outlier.operands[1].name == "w.outliers" and outlier.operands[0].producer.op_type == "Gather"
        assert any(v.name == "w.rest.q" for v in module.graph.consts.values()) or "MatMulInteger" in {
            op.op_type for op in module.graph}
    with pytest.raises(QCError, match="dtype must be f16 or f32"):
        compile_with("split-outliers{dtype=f8}", activations(1))


def test_error_of_the_split_int8_model_is_bounded_by_the_int8_scales():
    calib = activations(8)
    pipeline = "split-outliers{mode=budget,max-fraction=0.04},quantize-weights,insert-qdq{dtype=u8}"
    module, _ = compile_with(pipeline, calib)
    consts = {n: v.const.numpy() for n, v in module.graph.consts.items()}
    assert "w.rest.q" in consts
    s_x, s_w = float(consts["x.rest.scale"]), consts["w.rest.scale"]
    x = calib[0]
    (y,) = ort_session(qc.export_onnx(module)).run(None, {"x": x})
    rest = np.setdiff1d(np.arange(K), OUTLIERS)
    xr, wr = np.abs(x[..., rest].astype(np.float64)), np.abs(W[rest].astype(np.float64))
    int8_bound = ((s_x / 2) * wr.sum(axis=0) + xr @ (np.broadcast_to(s_w / 2, wr.shape))
                  + (s_x / 2) * (s_w / 2) * len(rest))
    fp16_bound = 2.0 ** -9 * (np.abs(x[..., list(OUTLIERS)]) @ np.abs(W[list(OUTLIERS)]))
    assert np.all(np.abs(y - x @ W) <= int8_bound + fp16_bound + 1e-4)
    # without the split the activation step covers the outliers: far worse
    plain, _ = compile_with("quantize-weights,insert-qdq{dtype=u8}", calib)
    (y_plain,) = ort_session(qc.export_onnx(plain)).run(None, {"x": x})
    assert np.abs(y_plain - x @ W).mean() > 10 * np.abs(y - x @ W).mean()
    assert s_x < float({n: v.const.numpy() for n, v in plain.graph.consts.items()}["x.scale"]) / 20


def test_threshold_and_error_modes():
    samples = activations(4, scale=10.0)
    _, ctx = compile_with("split-outliers{mode=threshold,threshold=6}", samples)
    (split,) = ctx.outlier_splits
    assert set(OUTLIERS) <= set(split.columns)            # Gaussian columns rarely pass 6.0 over 128 rows
    _, ctx = compile_with("split-outliers{mode=error,max-fraction=0.25}", samples)
    (split,) = ctx.outlier_splits
    assert set(OUTLIERS) <= set(split.columns) and len(split.columns) <= K // 4


def test_error_mode_shares_one_budget_where_the_error_is():
    """Two activations, outliers in one only: the error mode spends the shared budget there."""
    w2 = (RNG.standard_normal((K, N)) / 8).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="a"),
             helper.make_node("MatMul", ["z", "w2"], ["v"], name="b")]
    graph = helper.make_graph(nodes, "two",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, T, K]) for n in "xz"],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, T, N]) for n in "yv"],
                              [numpy_helper.from_array(W, "w"), numpy_helper.from_array(w2, "w2")])
    module = qc.import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    sx, sz = TensorStats(histogram=False), TensorStats(histogram=False)
    for x in activations(4):
        sx.update(x)
        sz.update(RNG.standard_normal((1, T, K)).astype(np.float32))
    ctx = PassContext(calibration=CalibrationStats(tensors={"x": sx, "z": sz}, samples=4))
    PassManager.parse("split-outliers{mode=error,max-fraction=0.016}", ctx=ctx).run(module)   # 2 of 128 columns
    splits = {sp.activation: sp for sp in ctx.outlier_splits}
    assert set(splits) == {"x"} and splits["x"].columns == list(OUTLIERS)


def test_a_model_without_outliers_is_left_unchanged():
    samples = activations(4, scale=1.0)
    for s in samples:
        np.clip(s, -5.0, 5.0, out=s)
    module, ctx = compile_with("split-outliers{mode=threshold}", samples)
    assert [op.op_type for op in module.graph] == ["MatMul"] and not ctx.outlier_splits
    assert any("not split" in r for r in ctx.remarks)


def test_needs_calibration():
    with pytest.raises(QCError, match="split-outliers needs calibration statistics"):
        PassManager.parse("split-outliers").run(qc.import_onnx(model()))
