"""w4a8-per-token: onnxruntime computes the rewritten MatMulNBits bit for bit as the numpy model of
the integer kernel (backends/c/packing_s4r.py), one row at a time as in one batch, its block
scales are the integers wsi and ws x wsi stays exact, one chain serves every MatMulNBits of the
same input, and other MatMulNBits are left alone."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import qc
from qc.backends.c.packing_s4r import matmul_s4a8r_ref

K, N, BS = 96, 20, 32


def _model(level: int) -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    nb = K // BS
    inits, nodes = [], []
    for i in range(2):
        q = rng.integers(0, 16, (N, K)).astype(np.uint8)
        z = rng.integers(0, 16, (N, nb + nb % 2)).astype(np.uint8)
        inits += [numpy_helper.from_array((q[:, 0::2] | (q[:, 1::2] << 4)).reshape(N, nb, BS // 2), f"B{i}"),
                  numpy_helper.from_array((rng.random((N, nb)) * 0.02 + 0.001).astype(np.float32), f"S{i}"),
                  numpy_helper.from_array((z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8), f"Z{i}")]
        nodes.append(helper.make_node("MatMulNBits", ["x", f"B{i}", f"S{i}", f"Z{i}"], [f"y{i}"],
                                      domain="com.microsoft", K=K, N=N, bits=4, block_size=BS,
                                      accuracy_level=level if i == 0 else 0))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, ["M", K])],
                          [helper.make_tensor_value_info(f"y{i}", TP.FLOAT, ["M", N]) for i in range(2)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
                             ir_version=10)


def _run(m: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_onnxruntime_computes_the_integer_kernels_result():
    module = qc.import_onnx(_model(4))
    qc.run_pipeline(module, "w4a8-per-token,dce")
    out = qc.export_onnx(module)
    nodes = [n for n in out.graph.node if n.op_type == "MatMulNBits"]
    levels = [next(a.i for a in n.attribute if a.name == "accuracy_level") for n in nodes]
    assert levels == [1, 0]                                  # the level-0 node is left alone
    assert [n.op_type for n in out.graph.node].count("Round") == 1
    init = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    b, wsi, zp = (init[i] for i in nodes[0].input[1:4])
    assert np.array_equal(wsi, np.rint(wsi)) and wsi.max() == 127 and wsi.min() >= 1
    (cols,) = [n for n in out.graph.node if n.op_type == "Mul" and nodes[0].output[0] in n.input]
    ws = next(init[i] for i in cols.input if i in init)
    wsi = wsi.reshape(N, -1).T
    assert np.array_equal((ws[None, :] * wsi).astype(np.float32) / ws[None, :], wsi)   # ws x wsi exact
    q = np.stack([b & 15, b >> 4], -1).reshape(N, K).T.astype(np.uint8)
    z = np.stack([zp & 15, zp >> 4], -1).reshape(N, -1)[:, :K // BS].T
    x = np.random.default_rng(1).standard_normal((3, K)).astype(np.float32) * 3
    x[2] = 0
    got = _run(out, x)[0]
    want = matmul_s4a8r_ref(x, q, ws, wsi, z)
    np.testing.assert_array_equal(got, want)                 # integer products and sums: exact in float32
    rows = np.concatenate([_run(out, x[i:i + 1])[0] for i in range(3)])
    np.testing.assert_array_equal(rows, got)                 # one row at a time gives the batch's result
    before = _run(_model(4), x)[0]
    assert np.abs(got - before).max() < 0.05 * np.abs(before).max()   # the same product, re-quantized
