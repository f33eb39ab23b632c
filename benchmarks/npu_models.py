"""The models of issue 19 (Ethos-U through Vela) that benchmarks/cnn_models.py does not build.

- ``resnet``: a ResNet-style CNN (stem 3x3/2 + MaxPool 3x3/2, basic blocks of two 3x3 convs with
  BatchNormalization, Relu and a residual Add, 1x1/2 projection shortcuts, GlobalAveragePool,
  Flatten, Gemm to 1000 classes), random He weights, 1x3x96x96; the batch norms recalibrated
  on one random image as in cnn_models.py.
- ``minilm``: all-MiniLM-L6-v2 (qc models build minilm-l6), token windows of the licence texts.
- ``smollm2_mlp``: SmolLM2-135M's MLP block with random weights of its shapes (hidden 576,
  intermediate 1536): down(silu(gate(x)) * up(x)), x 1x16x576; SiLU as x * Sigmoid(x).

``build(name, out_dir)`` returns (model path, calibration samples as a list of feed dicts).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cnn_models import _Builder, calibration, classifier, cnn_model

SEED = 0


def resnet(out: Path, hw: int = 96, widths: tuple[int, ...] = (32, 64, 128, 256), seed: int = SEED) -> Path:
    b = _Builder(seed)

    def relu(x: str) -> str:
        y = b.name("relu")
        b.nodes.append(helper.make_node("Relu", [x], [y]))
        return y

    x = relu(b.conv_bn("input", 3, widths[0], 3, 2, 1, False))
    b.nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    x, cin = "pool", widths[0]
    for stage, cout in enumerate(widths):
        for i in range(2):
            stride = 2 if stage > 0 and i == 0 else 1
            h = relu(b.conv_bn(x, cin, cout, 3, stride, 1, False))
            h = b.conv_bn(h, cout, cout, 3, 1, 1, False)
            skip = x if stride == 1 and cin == cout else b.conv_bn(x, cin, cout, 1, stride, 1, False)
            y = b.name("add")
            b.nodes.append(helper.make_node("Add", [h, skip], [y]))
            x, cin = relu(y), cout
    return classifier(b, x, cin, "resnet", hw, out, seed)


def smollm2_mlp(out: Path, tokens: int = 16, hidden: int = 576, inner: int = 1536, seed: int = SEED) -> Path:
    rng = np.random.RandomState(seed)

    def w(k: int, n: int) -> onnx.TensorProto:
        return rng.randn(k, n).astype(np.float32) * np.float32(1 / np.sqrt(k))

    inits = [numpy_helper.from_array(w(hidden, inner), "gate_w"), numpy_helper.from_array(w(hidden, inner), "up_w"),
             numpy_helper.from_array(w(inner, hidden), "down_w")]
    nodes = [helper.make_node("MatMul", ["x", "gate_w"], ["gate"]),
             helper.make_node("Sigmoid", ["gate"], ["gate_sig"]),
             helper.make_node("Mul", ["gate", "gate_sig"], ["silu"]),
             helper.make_node("MatMul", ["x", "up_w"], ["up"]),
             helper.make_node("Mul", ["silu", "up"], ["h"]),
             helper.make_node("MatMul", ["h", "down_w"], ["y"])]
    g = helper.make_graph(nodes, "smollm2_mlp",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, hidden])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tokens, hidden])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out))
    return out


def build(name: str, out_dir: Path, samples: int = 8) -> tuple[Path, list[dict[str, np.ndarray]]]:
    out_dir = Path(out_dir)
    if name == "mobilenetv2":
        path, shape, _ = cnn_model(name, out_dir)
        return path, [{"input": x} for x in calibration(shape, samples, SEED)]
    if name == "resnet":
        path = resnet(out_dir / "resnet.onnx")
        return path, [{"input": x} for x in calibration((1, 3, 96, 96), samples, SEED)]
    if name == "smollm2_mlp":
        path = smollm2_mlp(out_dir / "smollm2_mlp.onnx")
        rng = np.random.RandomState(SEED + 2)
        return path, [{"x": rng.randn(1, 16, 576).astype(np.float32)} for _ in range(samples)]
    if name == "minilm":
        return minilm(out_dir / "minilm.onnx", samples)
    raise ValueError(f"unknown model {name}")


def minilm(out: Path, samples: int, seq_len: int = 128, pad: int = 32) -> tuple[Path, list[dict[str, np.ndarray]]]:
    """all-MiniLM-L6-v2 (float, from its installed package) and windows of the built-in licence
    texts (as --calib-text licenses); the last sample is padded (its last ``pad`` tokens masked)."""
    from qc.calib.data import from_text
    from qc.data.text import load_tokenizer, resolve_text
    from qc.models import minilm as minilm_model

    minilm_model.build_onnx(str(out))
    data = from_text(resolve_text("licenses"), load_tokenizer("minilm-l6"), seq_len=seq_len, samples=samples,
                     input_names=["input_ids", "attention_mask"])
    feeds = [{k: np.asarray(v).reshape(1, seq_len) for k, v in s.items()} for s in data]
    last = feeds[-1]
    last["input_ids"][:, -pad:] = 0
    last["attention_mask"][:, -pad:] = 0
    return out, feeds


def calibration_npz(samples: list[dict[str, np.ndarray]], path: Path) -> Path:
    np.savez(path, **{name: np.stack([s[name] for s in samples]) for name in samples[0]})
    return path
