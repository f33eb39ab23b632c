"""Reductions over a run of middle axes (qc_ops_nn.c qc_reduce_middle: MiniLM's mean pooling over
the sequence): the NEON build under qemu-aarch64 gives the portable host build's bits, and both
match onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper

from conftest import c_outputs_portable_and_neon
from qc.onnx.evaluator import ort_session

# (op, input shape, axes, keepdims): middle runs, a trailing run kept, a run of two, an odd inner
CASES = [("ReduceSum", (2, 7, 12), [1], 0), ("ReduceMean", (1, 128, 20), [1], 1),
         ("ReduceSumSquare", (3, 4, 5, 8), [1, 2], 0), ("ReduceMean", (2, 3, 9, 6), [2], 1),
         ("ReduceSum", (5, 2, 3), [0], 0)]


def _model(op: str, shape, axes, keepdims: int):
    ax = helper.make_tensor("axes", TP.INT64, [len(axes)], axes)
    nodes = [helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("y", TP.FLOAT, None)], [ax])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("op,shape,axes,keepdims", CASES)
def test_middle_axis_reductions(tmp_path, op, shape, axes, keepdims):
    model = _model(op, shape, axes, keepdims)
    x = np.random.RandomState(3).randn(*shape).astype(np.float32)
    ref = ort_session(model).run(None, {"x": x})[0]
    outs = c_outputs_portable_and_neon(model, {"x": x}, tmp_path)
    assert outs["neon"][0].tobytes() == outs["portable"][0].tobytes()
    np.testing.assert_allclose(outs["portable"][0].reshape(ref.shape), ref, rtol=1e-5, atol=1e-5)
