"""Small models shaped like quantization-aware-training exports (PyTorch / TensorFlow to ONNX).

What such an export contains, and what these builders reproduce:

- activations: ``QuantizeLinear -> DequantizeLinear`` with learned per-tensor scales and zero
  points (uint8 with a fitted zero point as PyTorch's default ``quint8``, or int8);
- weights: ``DequantizeLinear`` of constant int8 codes, per output channel and symmetric
  (``axis = 0`` for a Conv's [M, C, kh, kw], ``axis = 1`` for a MatMul's [K, N]), or the
  fake-quant form ``QuantizeLinear(float W) -> DequantizeLinear`` ("QDQ on weights");
- biases: ``DequantizeLinear`` of int32 codes with scale ``s_x * s_w`` and zero point 0.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class _Builder:
    def __init__(self, seed: int, weight_max: int = 127):
        self.rng = np.random.default_rng(seed)
        self.weight_max = weight_max        # 63: 7-bit codes, as reduce_range trains them
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def qdq(self, x: str, scale: float, zp: int, dtype=np.uint8) -> str:
        """A learned activation fake-quant pair on ``x``."""
        s = self.const(f"{x}.qat_scale", np.array(scale, np.float32))
        z = self.const(f"{x}.qat_zp", np.array(zp, dtype))
        self.nodes.append(helper.make_node("QuantizeLinear", [x, s, z], [f"{x}.qat_q"], name=f"{x}.Q"))
        self.nodes.append(helper.make_node("DequantizeLinear", [f"{x}.qat_q", s, z], [f"{x}.qat_dq"], name=f"{x}.DQ"))
        return f"{x}.qat_dq"

    def int8_weight(self, name: str, w: np.ndarray, axis: int) -> tuple[str, np.ndarray]:
        """int8 per-channel symmetric codes (-127..127, or +-weight_max) + DequantizeLinear along
        ``axis``; returns (the DQ output, the per-channel scale)."""
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        scale = (np.abs(w).max(axis=reduce) / self.weight_max).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        codes = np.clip(np.round(w / scale.reshape(shape)), -self.weight_max, self.weight_max).astype(np.int8)
        q = self.const(f"{name}.qat_q", codes)
        s = self.const(f"{name}.qat_scale", scale)
        z = self.const(f"{name}.qat_zp", np.zeros(scale.shape, np.int8))
        self.nodes.append(helper.make_node("DequantizeLinear", [q, s, z], [f"{name}.qat_dq"], axis=axis,
                                           name=f"{name}.DQ"))
        return f"{name}.qat_dq", scale

    def fake_quant_weight(self, name: str, w: np.ndarray, axis: int) -> str:
        """Float weight -> QuantizeLinear -> DequantizeLinear, per channel along ``axis``."""
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        scale = (np.abs(w).max(axis=reduce) / self.weight_max).astype(np.float32)
        f = self.const(name, w.astype(np.float32))
        s = self.const(f"{name}.qat_scale", scale)
        z = self.const(f"{name}.qat_zp", np.zeros(scale.shape, np.int8))
        self.nodes.append(helper.make_node("QuantizeLinear", [f, s, z], [f"{name}.qat_q"], axis=axis, name=f"{name}.Q"))
        self.nodes.append(helper.make_node("DequantizeLinear", [f"{name}.qat_q", s, z], [f"{name}.qat_dq"], axis=axis,
                                           name=f"{name}.DQ"))
        return f"{name}.qat_dq"

    def int32_bias(self, name: str, b: np.ndarray, scale: np.ndarray) -> str:
        codes = np.round(b / scale).astype(np.int32)
        q = self.const(f"{name}.qat_q", codes)
        s = self.const(f"{name}.qat_scale", scale.astype(np.float32))
        z = self.const(f"{name}.qat_zp", np.zeros(scale.shape, np.int32))
        self.nodes.append(helper.make_node("DequantizeLinear", [q, s, z], [f"{name}.qat_dq"], axis=0,
                                           name=f"{name}.DQ"))
        return f"{name}.qat_dq"

    def model(self, name: str, inputs, outputs) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="pytorch")
        onnx.checker.check_model(model, full_check=True)
        return model


def qat_cnn(act_dtype=np.uint8, fake_quant_fc: bool = False, seed: int = 0, weight_max: int = 127) -> onnx.ModelProto:
    """x[1, 3, 8, 8] -> Q/DQ -> Conv 3->8 3x3 (int8 per-channel axis 0, int32 bias) -> Relu -> Q/DQ
    -> Flatten -> MatMul 512x10 (int8 per-channel axis 1, or fake-quant float) -> Add -> y[1, 10]."""
    b = _Builder(seed, weight_max)
    signed = act_dtype == np.int8
    sx, zx = 0.0235, (0 if signed else 128)
    xin = b.qdq("x", sx, zx, act_dtype)
    wc = (b.rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    wc_dq, sw = b.int8_weight("conv.weight", wc, axis=0)
    bias = b.int32_bias("conv.bias", (b.rng.standard_normal(8) * 0.1).astype(np.float32), sx * sw)
    b.nodes.append(helper.make_node("Conv", [xin, wc_dq, bias], ["conv"], pads=[1, 1, 1, 1], name="conv"))
    b.nodes.append(helper.make_node("Relu", ["conv"], ["relu"], name="relu"))
    relu = b.qdq("relu", 0.0173, -128 if signed else 0, act_dtype)
    b.nodes.append(helper.make_node("Flatten", [relu], ["flat"], axis=1, name="flatten"))
    wf = (b.rng.standard_normal((512, 10)) * 0.05).astype(np.float32)
    wf_dq = b.fake_quant_weight("fc.weight", wf, axis=1) if fake_quant_fc else b.int8_weight("fc.weight", wf, axis=1)[0]
    b.nodes.append(helper.make_node("MatMul", ["flat", wf_dq], ["fc"], name="fc"))
    b.const("fc.bias", (b.rng.standard_normal(10) * 0.1).astype(np.float32))
    b.nodes.append(helper.make_node("Add", ["fc", "fc.bias"], ["y"], name="fc.add"))
    return b.model("qat_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])])


def qat_mlp(mixed: bool = False, seed: int = 1, weight_max: int = 127) -> onnx.ModelProto:
    """x[1, 16, 64] -> Q/DQ (u8) -> MatMul 64x128 'up' (int8 per-channel axis 1) -> Relu -> Q/DQ ->
    MatMul 128x64 'down' (fake-quant weight) -> y[1, 16, 64].

    ``mixed``: then -> Relu -> Q/DQ -> MatMul 64x64 'mid' (learned activation scale, float
    weight) -> Relu -> MatMul 64x32 'head' (all float) -> y[1, 16, 32]: a model only partly
    trained with fake quantization, where PTQ has to fill in the float parts."""
    b = _Builder(seed, weight_max)
    xin = b.qdq("x", 0.05, 128)
    w1 = (b.rng.standard_normal((64, 128)) / 8).astype(np.float32)
    w1_dq, _ = b.int8_weight("up.weight", w1, axis=1)
    b.nodes.append(helper.make_node("MatMul", [xin, w1_dq], ["up"], name="up"))
    b.nodes.append(helper.make_node("Relu", ["up"], ["up.relu"], name="up.relu"))
    h = b.qdq("up.relu", 0.031, 0)
    w2 = (b.rng.standard_normal((128, 64)) / 11).astype(np.float32)
    w2_dq = b.fake_quant_weight("down.weight", w2, axis=1)
    b.nodes.append(helper.make_node("MatMul", [h, w2_dq], ["down"], name="down"))
    out = "down"
    if mixed:
        b.nodes.append(helper.make_node("Relu", ["down"], ["down.relu"], name="down.relu"))
        h2 = b.qdq("down.relu", 0.019, 2)
        b.const("mid.weight", (b.rng.standard_normal((64, 64)) / 8).astype(np.float32))
        b.nodes.append(helper.make_node("MatMul", [h2, "mid.weight"], ["mid"], name="mid"))
        b.nodes.append(helper.make_node("Relu", ["mid"], ["mid.relu"], name="mid.relu"))
        b.const("head.weight", (b.rng.standard_normal((64, 32)) / 8).astype(np.float32))
        b.nodes.append(helper.make_node("MatMul", ["mid.relu", "head.weight"], ["head"], name="head"))
        out = "head"
    b.nodes.append(helper.make_node("Identity", [out], ["y"], name="out"))
    width = 32 if mixed else 64
    return b.model("qat_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 64])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, width])])


def mlp_inputs(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, 1, 16, 64] activations with two outlier features (3 and 60), 40x the rest."""
    x = rng.standard_normal((n, 1, 16, 64)).astype(np.float32)
    x[..., 3] *= 40.0
    x[..., 60] *= 40.0
    return x
