"""smooth-quant: the float function is unchanged, 1/s folds into a norm's weight or becomes a
Mul, the statistics follow the scaling, and the int8 error drops on outlier activations."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qc
from qc.calib.stats import CalibrationStats, TensorStats
from qc.errors import QCError
from qc.onnx.evaluator import ort_session
from qc.pm import PassContext, PassManager

K, N, T = 32, 8, 16
RNG = np.random.default_rng(5)
G = (1 + RNG.random(K)).astype(np.float32)
W1 = (RNG.standard_normal((K, N)) / 6).astype(np.float32)
W2 = (RNG.standard_normal((K, N)) / 6).astype(np.float32)


def model(residual: bool) -> onnx.ModelProto:
    """h -> Mul(g) (an RMSNorm's last op) -> x -> two MatMuls (+ x read by a residual Add)."""
    nodes = [helper.make_node("Mul", ["h", "g"], ["x"], name="norm_weight"),
             helper.make_node("MatMul", ["x", "w1"], ["y1"], name="q"),
             helper.make_node("MatMul", ["x", "w2"], ["y2"], name="k")]
    outputs = [helper.make_tensor_value_info("y1", TensorProto.FLOAT, [1, T, N]),
               helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, T, N])]
    if residual:
        nodes.append(helper.make_node("Add", ["x", "h"], ["r"]))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, T, K]))
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, T, K])],
                              outputs, [numpy_helper.from_array(G, "g"), numpy_helper.from_array(W1, "w1"),
                                        numpy_helper.from_array(W2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def samples(count: int = 4) -> list[np.ndarray]:
    out = []
    for _ in range(count):
        h = RNG.standard_normal((1, T, K)).astype(np.float32)
        h[..., 3] *= 80.0
        out.append(h)
    return out


def run(spec: str, residual: bool, hs: list[np.ndarray]):
    stats = TensorStats(histogram=False)
    for h in hs:
        stats.update(h * G)
    ctx = PassContext(calibration=CalibrationStats(tensors={"x": stats}, samples=len(hs)))
    module = qc.import_onnx(model(residual))
    PassManager.parse(spec, ctx=ctx).run(module)
    return module, ctx


@pytest.mark.parametrize("residual", [False, True])
def test_float_function_is_unchanged(residual):
    hs = samples()
    module, ctx = run("smooth-quant{alpha=0.5}", residual, hs)
    types = [op.op_type for op in module.graph]
    assert types.count("Mul") == (2 if residual else 1)      # folded into the norm's Mul, or a new Mul
    smoothed = ctx.calibration.tensors["x.smooth" if residual else "x"]
    proto = qc.export_onnx(module)
    onnx.checker.check_model(proto, full_check=True)
    got = ort_session(proto).run(None, {"h": hs[0]})
    want = ort_session(model(residual)).run(None, {"h": hs[0]})
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max())
    # the outlier feature shrank by s; the statistics followed it
    x = hs[0] * G
    s = x.reshape(-1, K)
    assert smoothed.channel_absmax[3] < np.abs(s[:, 3]).max() / 4


def test_folds_into_the_norm_weight_when_only_the_matmuls_read_x():
    module, _ = run("smooth-quant", False, samples())
    mul = next(op for op in module.graph if op.op_type == "Mul")
    assert mul.operands[1].name == "g.smooth" and "g" not in module.graph.consts


def test_int8_error_drops_with_outliers():
    hs = samples(8)
    tail = "quantize-weights,insert-qdq{dtype=u8}"
    errors = {}
    for name, spec in (("plain", tail), ("smooth", "smooth-quant," + tail)):
        module, _ = run(spec, False, hs)
        (y1, _) = ort_session(qc.export_onnx(module)).run(None, {"h": hs[0]})
        errors[name] = np.abs(y1 - (hs[0] * G) @ W1).mean()
    assert errors["smooth"] < errors["plain"] / 3


def test_needs_calibration_and_a_valid_alpha():
    with pytest.raises(QCError, match="smooth-quant needs calibration statistics"):
        PassManager.parse("smooth-quant").run(qc.import_onnx(model(False)))
    with pytest.raises(QCError, match="alpha must be in"):
        run("smooth-quant{alpha=2}", False, samples(1))
