"""A small MNIST-shaped CNN (Conv, Relu, MaxPool, Conv, Relu, GlobalAveragePool, Flatten, Gemm,
Softmax) with random weights: a whole model that fits a Cortex-M's RAM."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper, numpy_helper


def tiny_cnn(path: Path, seed: int = 0) -> Path:
    rng = np.random.RandomState(seed)

    def w(name, *shape):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        return numpy_helper.from_array((rng.randn(*shape) * np.sqrt(2.0 / fan_in)).astype(np.float32), name)

    inits = [w("w1", 8, 1, 3, 3), numpy_helper.from_array((rng.rand(8) * 0.1).astype(np.float32), "b1"),
             w("w2", 16, 8, 3, 3), numpy_helper.from_array((rng.rand(16) * 0.1).astype(np.float32), "b2"),
             w("w3", 10, 16), numpy_helper.from_array((rng.rand(10) * 0.1).astype(np.float32), "b3")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1),
             helper.make_node("Softmax", ["logits"], ["prob"], axis=-1)]
    g = helper.make_graph(nodes, "tiny_cnn", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 1, 28, 28])],
                          [helper.make_tensor_value_info("prob", TP.FLOAT, [1, 10])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path
