"""MaxPool / AveragePool in the C backend (qc_ops_nn.c qc_pool2d_f32: bounds-free interior
columns, 4 outputs a vector for strides 1 and 2): the NEON build under qemu-aarch64 gives the
portable host build's bits, and both match onnxruntime; a NaN in a window wins, as in the
bounds-checked reference."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto as TP
from onnx import helper

from conftest import c_outputs_portable_and_neon
from qc.onnx.evaluator import ort_session

# (op, input, attributes): ShuffleNet's stem and stride-2 units, stride 1, dilation, ceil_mode,
# a stride the vector path does not take, a window wider than the padded edge
POOLS = [("MaxPool", "x", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
         ("AveragePool", "x", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
         ("AveragePool", "x", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                               "count_include_pad": 1}),
         ("MaxPool", "x", {"kernel_shape": [2, 2], "strides": [1, 1]}),
         ("MaxPool", "x", {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [2, 2, 2, 2], "dilations": [2, 2]}),
         ("AveragePool", "x", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
         ("MaxPool", "x", {"kernel_shape": [3, 3], "strides": [3, 3], "pads": [0, 1, 0, 1]}),
         ("AveragePool", "x", {"kernel_shape": [5, 5], "strides": [1, 1], "pads": [2, 2, 2, 2]}),
         ("MaxPool", "xn", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]})]
SHAPE = (1, 3, 17, 37)


def _model():
    nodes = [helper.make_node(op, [src], [f"y{i}"], **attrs) for i, (op, src, attrs) in enumerate(POOLS)]
    inputs = [helper.make_tensor_value_info(n, TP.FLOAT, list(SHAPE)) for n in ("x", "xn")]
    outputs = [helper.make_tensor_value_info(f"y{i}", TP.FLOAT, None) for i in range(len(POOLS))]
    return helper.make_model(helper.make_graph(nodes, "pools", inputs, outputs),
                             opset_imports=[helper.make_opsetid("", 18)])


def test_pools_neon_bits_equal_portable_and_match_onnxruntime(tmp_path):
    model = _model()
    rng = np.random.RandomState(5)
    x = rng.randn(*SHAPE).astype(np.float32)
    xn = rng.randn(*SHAPE).astype(np.float32)
    xn[0, 0, 3, 5] = np.nan                      # an interior window (vector path)
    xn[0, 1, 0, 0] = np.nan                      # a border window (bounds-checked path)
    xn[0, 2, 7:10, 7:13] = np.minimum(xn[0, 2, 7:10, 7:13], -1.0)
    xn[0, 2, 8, 8:12] = [0.0, -0.0, -0.0, 0.0]   # ties of signed zeros: the first one stays
    feeds = {"x": x, "xn": xn}
    outs = c_outputs_portable_and_neon(model, feeds, tmp_path)
    ref = ort_session(model).run(None, feeds)
    for i, (op, src, attrs) in enumerate(POOLS):
        neon, portable = outs["neon"][i], outs["portable"][i]
        assert neon.tobytes() == portable.tobytes(), f"pool {i} {op} {attrs}: NEON bits differ"
        got = portable.reshape(ref[i].shape)
        if src == "xn":
            assert np.isnan(got[0, 0]).any() and np.isnan(got[0, 1, 0, 0])
            finite = ~np.isnan(got)
            np.testing.assert_array_equal(got[finite], ref[i][finite], err_msg=f"pool {i} {op} {attrs}")
        else:
            np.testing.assert_allclose(got, ref[i], rtol=1e-6, atol=1e-6, err_msg=f"pool {i} {op} {attrs}")
