"""insert-qdq (static and dynamic) and fold-qdq: numerics in onnxruntime against a numpy model of
the quantization, error bounds from the scales, and the error messages."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import qc
from qc.calib.stats import CalibrationStats, TensorStats
from qc.errors import QCError
from qc.onnx.evaluator import ort_session
from qc.pm import PassContext, PassManager

RNG = np.random.default_rng(7)
W = RNG.standard_normal((16, 8)).astype(np.float32)


def matmul_model(opset: int = 21) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 8])],
                              [onnx.numpy_helper.from_array(W, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def calibrated(samples: list[np.ndarray], **options) -> CalibrationStats:
    stats = TensorStats(**options)
    for s in samples:
        stats.update(s)
    return CalibrationStats(tensors={"x": stats}, samples=len(samples))


def run_pass(spec: str, model: onnx.ModelProto, calib: CalibrationStats | None = None):
    module = qc.import_onnx(model)
    ctx = PassContext(calibration=calib)
    PassManager.parse(spec, ctx=ctx).run(module)
    return module, ctx


def consts(module) -> dict[str, np.ndarray]:
    return {name: v.const.numpy() for name, v in module.graph.consts.items()}


@pytest.mark.parametrize("dtype,qmin,qmax", [("u8", 0, 255), ("i8", -128, 127), ("i16", -32768, 32767),
                                             ("u16", 0, 65535), ("i4", -8, 7), ("u4", 0, 15)])
def test_static_activation_quantization_matches_numpy(dtype, qmin, qmax):
    samples = [3 * RNG.standard_normal((8, 16)).astype(np.float32) + 1 for _ in range(4)]
    module, ctx = run_pass(f"insert-qdq{{dtype={dtype}}}", matmul_model(), calibrated(samples))
    c = consts(module)
    scale, zp = c["x.scale"], c["x.zp"]
    stats = ctx.calibration.tensors["x"]
    # minmax: the range covers every calibration value to within half a step (the zero point is
    # an integer, so the range moves by up to half a step to make zero exact)
    assert (qmin - int(zp)) * scale <= min(stats.min, 0) + scale / 2
    assert (qmax - int(zp)) * scale >= stats.max - scale / 2
    proto = qc.export_onnx(module)
    onnx.checker.check_model(proto, full_check=True)
    sess = ort_session(proto, optimize=False)
    x = samples[0]
    (y,) = sess.run(None, {"x": x})
    xq = np.clip(np.rint(x / scale) + int(zp), qmin, qmax)  # QuantizeLinear rounds half to even, as np.rint
    expected = ((xq - int(zp)) * scale).astype(np.float32) @ W
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    # and the quantization error itself is bounded by half a step per input element
    bound = (scale / 2) * np.abs(W).sum(axis=0)
    assert np.all(np.abs(y - x @ W) <= bound + 1e-5)


def test_percentile_range_clips_a_lone_outlier():
    samples = [RNG.standard_normal((8, 16)).astype(np.float32) for _ in range(8)]
    samples[3][2, 5] = 400.0
    minmax, _ = run_pass("insert-qdq{dtype=u8,method=minmax}", matmul_model(), calibrated(samples))
    pct, _ = run_pass("insert-qdq{dtype=u8,method=percentile,percentile=99.9}", matmul_model(), calibrated(samples))
    assert consts(pct)["x.scale"] < consts(minmax)["x.scale"] / 10


def test_dynamic_quantization_runs_and_is_bounded():
    module, _ = run_pass("insert-qdq{dynamic=true}", matmul_model())
    assert [op.op_type for op in module.graph] == ["DynamicQuantizeLinear", "DequantizeLinear", "MatMul"]
    proto = qc.export_onnx(module)
    onnx.checker.check_model(proto, full_check=True)
    x = RNG.standard_normal((8, 16)).astype(np.float32)
    (y,) = ort_session(proto, optimize=False).run(None, {"x": x})
    lo, hi = min(x.min(), 0), max(x.max(), 0)
    scale = (hi - lo) / 255
    assert np.all(np.abs(y - x @ W) <= (scale / 2) * np.abs(W).sum(axis=0) + 1e-5)


def test_calibration_statistics_are_required_for_static():
    with pytest.raises(QCError, match="insert-qdq needs calibration statistics for static quantization"):
        run_pass("insert-qdq", matmul_model())


def test_unknown_activation_type_is_refused():
    with pytest.raises(QCError, match="dtype 'f8' is not an activation type"):
        run_pass("insert-qdq{dtype=f8,dynamic=true}", matmul_model())
    with pytest.raises(QCError, match="dynamic quantization produces u8"):
        run_pass("insert-qdq{dtype=i8,dynamic=true}", matmul_model())


def test_16_bit_activations_need_opset_21():
    samples = [RNG.standard_normal((8, 16)).astype(np.float32)]
    with pytest.raises(QCError, match="i16 activations need opset 21, the model has opset 17") as e:
        run_pass("insert-qdq{dtype=i16}", matmul_model(17), calibrated(samples))
    assert "recompile with --upgrade-opset 21" in str(e.value)


def test_value_without_statistics_is_left_float_with_a_remark():
    stats = CalibrationStats(tensors={}, samples=1)
    module, ctx = run_pass("insert-qdq", matmul_model(), stats)
    assert [op.op_type for op in module.graph] == ["MatMul"]
    assert any("no calibration statistics for %x" in r for r in ctx.remarks)


def test_printed_ir_shows_the_quantization_parameters():
    samples = [RNG.standard_normal((8, 16)).astype(np.float32)]
    module, _ = run_pass("insert-qdq{dtype=u8}", matmul_model(), calibrated(samples))
    text = qc.print_ir(module)
    scale = float(consts(module)["x.scale"])
    assert f"%x.q = onnx.QuantizeLinear(%x, @x.scale, @x.zp) : u8[8, 16] q(scale = {scale!r}" in text


def test_conv_input_behind_a_channel_shuffle_is_quantized_before_it():
    """A Conv reading Relu -> Reshape -> Transpose -> Reshape (ShuffleNet's channel shuffle): the
    pair goes on the Relu's output with the Conv input's statistics and fold-qdq runs the three
    shape ops on the int8 values, so the op before them can produce int8; the result in
    onnxruntime is the numpy model of quantizing the shuffled tensor (the same values)."""
    wc = RNG.standard_normal((4, 6, 1, 1)).astype(np.float32)
    shapes = [onnx.numpy_helper.from_array(np.array(s, np.int64), n)
              for s, n in (([1, 2, 3, 4, 4], "s5"), ([1, 6, 4, 4], "s4"))]
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "s5"], ["a"]),
             helper.make_node("Transpose", ["a"], ["b"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["b", "s4"], ["s"]), helper.make_node("Conv", ["s", "wc"], ["y"])]
    graph = helper.make_graph(nodes, "shuffle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
                              [onnx.numpy_helper.from_array(wc, "wc"), *shapes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    samples = [RNG.standard_normal((1, 6, 4, 4)).astype(np.float32) for _ in range(3)]
    stats = TensorStats()
    for x in samples:
        stats.update(np.maximum(x, 0).reshape(1, 2, 3, 4, 4).transpose(0, 2, 1, 3, 4).reshape(1, 6, 4, 4))
    module, _ = run_pass("insert-qdq{dtype=i8},fold-qdq,dce", model,
                         CalibrationStats(tensors={"s": stats}, samples=len(samples)))
    ops = [op.op_type for op in module.graph]
    assert ops == ["Relu", "QuantizeLinear", "Reshape", "Transpose", "Reshape", "DequantizeLinear", "Conv"], ops
    assert [op.results[0].type.dtype.name for op in module.graph if op.op_type in ("Reshape", "Transpose")] \
        == ["i8"] * 3
    q = next(op for op in module.graph if op.op_type == "QuantizeLinear")
    scale, zp = float(q.operands[1].const.numpy()), int(q.operands[2].const.numpy())
    proto = qc.export_onnx(module)
    onnx.checker.check_model(proto, full_check=True)
    sess = ort_session(proto, optimize=False)
    for x in samples:
        (y,) = sess.run(None, {"x": x})
        s = np.maximum(x, 0).reshape(1, 2, 3, 4, 4).transpose(0, 2, 1, 3, 4).reshape(6, 16)
        sq = ((np.clip(np.rint(s / np.float32(scale)) + zp, -128, 127) - zp) * np.float32(scale)).astype(np.float32)
        np.testing.assert_allclose(y.reshape(4, 16), wc.reshape(4, 6) @ sq, rtol=1e-5, atol=1e-5)
