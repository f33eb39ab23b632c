"""The benchmark CNNs of issue 15 (point 3) as ONNX files, with random He-scaled weights.

    python benchmarks/cnn_models.py OUT_DIR        # writes both models and their calibration .npz

- ``shufflenet``: onnx's light ShuffleNet (onnx/backend/test/data/light/light_shufflenet.onnx:
  grouped 1x1 convs, 3x3 depthwise convs, BatchNormalization, channel shuffle, Sum, AveragePool)
  with its ConstantOfShape weights replaced by He-scaled random ones (fixed seed), 1x3x224x224.
  In both, every BatchNormalization's mean and variance are then set to the statistics of its
  input on one random image (``recalibrate_batchnorm``), so activations keep a realistic scale.
- ``mobilenetv2``: a MobileNet-v2 (width 0.5, 1x3x128x128) built with onnx.helper: stem 3x3/2,
  inverted residuals (1x1 expand, 3x3 depthwise, 1x1 project, residual Add), BatchNormalization
  after every Conv (not folded here: qc's fold-batchnorm does it), ReLU6 as Clip(0, 6), 1x1 to
  1280, GlobalAveragePool, Flatten, Gemm to 1000 classes.

``cnn_model(name, out_dir)`` returns (model path, input shape, calibration samples); the
samples are uniform [0, 1) images, as the C backend's tests use (``calibration_npz`` writes
them for ``qc compile --calib``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("shufflenet", "mobilenetv2")
INPUT_NAME = {"shufflenet": "gpu_0/data_0", "mobilenetv2": "input"}
SHAPES = {"shufflenet": (1, 3, 224, 224), "mobilenetv2": (1, 3, 128, 128)}
SEED = 0
CALIB_SAMPLES = 8


def _he(rng: np.random.RandomState, shape: tuple[int, ...]) -> np.ndarray:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return (rng.randn(*shape) * np.sqrt(2.0 / max(fan_in, 1))).astype(np.float32)


def recalibrate_batchnorm(model: onnx.ModelProto, input_name: str, x: np.ndarray) -> onnx.ModelProto:
    """Set every BatchNormalization's mean and variance to the per-channel statistics of its input
    on x (in graph order, each after the ones before it), as trained running statistics would be:
    activations then stay near unit scale through the random network instead of growing."""
    import onnxruntime as ort

    inits = {t.name: t for t in model.graph.initializer}
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    for node in [n for n in model.graph.node if n.op_type == "BatchNormalization"]:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        del probe.graph.output[:]
        probe.graph.output.append(helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT, None))
        (h,) = ort.InferenceSession(probe.SerializeToString(), so).run(None, {input_name: x})
        axes = (0,) + tuple(range(2, h.ndim))
        for idx, value in ((3, h.mean(axis=axes)), (4, h.var(axis=axes))):
            inits[node.input[idx]].CopyFrom(numpy_helper.from_array(value.astype(np.float32), node.input[idx]))
    return model


def _unshare_initializers(model: onnx.ModelProto) -> None:
    """Give every use of an initializer its own copy (fold-constants stores equal constants once:
    the zero-filled weights of the light models would otherwise share their random values)."""
    inits = {t.name: t for t in model.graph.initializer}
    seen: set[str] = set()
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name not in inits:
                continue
            if name in seen:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__{node.name or len(seen)}_{i}"
                model.graph.initializer.append(copy)
                node.input[i] = copy.name
            seen.add(node.input[i])


LIGHT = ("squeezenet", "resnet50", "shufflenet", "vgg19", "densenet121", "inception_v1", "inception_v2",
         "bvlc_alexnet", "zfnet512")
"""onnx/backend/test/data/light/light_NAME.onnx"""


def light_input(name: str) -> str:
    src = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"
    model = onnx.load(str(src), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def light_shufflenet(out: Path, seed: int = SEED) -> Path:
    return light_model("shufflenet", out, seed)


def light_model(name: str, out: Path, seed: int = SEED) -> Path:
    """light_NAME.onnx with its constant-folded weights replaced by He-scaled random ones
    (BatchNormalization: scale 1 +- 0.1, bias +- 0.1, mean +- 0.1, variance 1 +- 0.1; other 1-D
    constants, biases: +- 0.1), each BatchNormalization's statistics then set from one image."""
    sys.path.insert(0, str(ROOT))
    from qc.backends.onnx import save_onnx
    from qc.frontend.onnx import import_onnx
    from qc.pm import PassManager

    src = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"
    module = import_onnx(str(src))
    PassManager.parse("fold-constants{max-size=100000000,max-growth=100000000},dce").run(module)
    tmp = out.with_suffix(".folded.onnx")
    save_onnx(module, str(tmp))
    model = onnx.load(str(tmp))
    tmp.unlink()
    _unshare_initializers(model)
    rng = np.random.RandomState(seed)
    role = {n.input[i]: i for n in model.graph.node if n.op_type == "BatchNormalization" for i in range(1, 5)}
    for k, t in enumerate(model.graph.initializer):
        a = numpy_helper.to_array(t)
        if a.dtype != np.float32 or a.size < 2:
            continue
        if t.name in role:  # 1 scale, 2 bias, 3 mean, 4 variance
            r = rng.uniform(-0.1, 0.1, a.shape).astype(np.float32) + (1.0 if role[t.name] in (1, 4) else 0.0)
        elif a.ndim == 1:
            r = rng.uniform(-0.1, 0.1, a.shape).astype(np.float32)
        else:
            r = _he(rng, a.shape)
        model.graph.initializer[k].CopyFrom(numpy_helper.from_array(r.astype(np.float32), t.name))
    names = {t.name for t in model.graph.initializer}  # IR 3 lists initializers as inputs
    keep = [i for i in model.graph.input if i.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    model.ir_version = max(model.ir_version, 7)
    recalibrate_batchnorm(model, light_input(name), calibration((1, 3, 224, 224), 1, seed + 1)[0])
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def _divisible(v: float, d: int = 8) -> int:
    """torchvision's _make_divisible: round to a multiple of d, never below 90% of v."""
    n = max(d, int(v + d / 2) // d * d)
    return n + d if n < 0.9 * v else n


# (expansion t, output channels c, repeats n, first stride s): MobileNetV2's table
MBV2_BLOCKS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 2), (6, 320, 1, 1)]


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.RandomState(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def const(self, prefix: str, a: np.ndarray) -> str:
        nm = self.name(prefix)
        self.inits.append(numpy_helper.from_array(a, nm))
        return nm

    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int, group: int, relu6: bool) -> str:
        w = self.const("w", _he(self.rng, (cout, cin // group, k, k)))
        c = self.name("conv")
        p = k // 2
        self.nodes.append(helper.make_node("Conv", [x, w], [c], kernel_shape=[k, k], strides=[stride, stride],
                                           pads=[p, p, p, p], group=group))
        u = lambda lo, hi: self.rng.uniform(lo, hi, cout).astype(np.float32)  # noqa: E731
        bn = self.name("bn")
        self.nodes.append(helper.make_node(
            "BatchNormalization", [c, self.const("g", u(0.9, 1.1)), self.const("b", u(-0.1, 0.1)),
                                   self.const("m", u(-0.1, 0.1)), self.const("v", u(0.9, 1.1))], [bn]))
        if not relu6:
            return bn
        y = self.name("relu6")
        self.nodes.append(helper.make_node("Clip", [bn, "zero", "six"], [y]))
        return y


def mobilenetv2(out: Path, width: float = 0.5, hw: int = 128, seed: int = SEED) -> Path:
    """A MobileNet-v2 (see the module docstring), input 'input' 1x3xHWxHW, output 'logits' 1x1000."""
    b = _Builder(seed)
    b.inits += [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
                numpy_helper.from_array(np.array(6.0, np.float32), "six")]
    cin = _divisible(32 * width)
    x = b.conv_bn("input", 3, cin, 3, 2, 1, True)
    for t, c, n, s in MBV2_BLOCKS:
        cout = _divisible(c * width)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            h = b.conv_bn(x, cin, hidden, 1, 1, 1, True) if t != 1 else x
            h = b.conv_bn(h, hidden, hidden, 3, stride, hidden, True)
            h = b.conv_bn(h, hidden, cout, 1, 1, 1, False)
            if stride == 1 and cin == cout:
                y = b.name("add")
                b.nodes.append(helper.make_node("Add", [x, h], [y]))
                h = y
            x, cin = h, cout
    last = 1280 if width <= 1.0 else _divisible(1280 * width)
    x = b.conv_bn(x, cin, last, 1, 1, 1, True)
    return classifier(b, x, last, "mobilenetv2", hw, out, seed)


def classifier(b: _Builder, x: str, channels: int, name: str, hw: int, out: Path, seed: int) -> Path:
    """End a CNN body *x* of *channels* with GlobalAveragePool, Flatten and a 1000-class Gemm
    (random He weights), recalibrate its BatchNorms on one image, check and save it to *out*."""
    b.nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]),
                helper.make_node("Flatten", ["gap"], ["flat"]),
                helper.make_node("Gemm", ["flat", b.const("fc_w", _he(b.rng, (1000, channels))),
                                          b.const("fc_b", b.rng.uniform(-0.1, 0.1, 1000).astype(np.float32))],
                                 ["logits"], transB=1)]
    g = helper.make_graph(b.nodes, name,
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, hw, hw])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], b.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    recalibrate_batchnorm(model, "input", calibration((1, 3, hw, hw), 1, seed + 1)[0])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out))
    return out


def calibration(shape: tuple[int, ...], samples: int = CALIB_SAMPLES, seed: int = SEED) -> np.ndarray:
    """samples x shape uniform [0, 1) float32 images."""
    return np.random.RandomState(seed).rand(samples, *shape).astype(np.float32)


def calibration_npz(name: str, samples: np.ndarray, path: Path) -> Path:
    """The samples as `qc compile --calib` reads them: an .npz keyed by the input name."""
    np.savez(path, **{INPUT_NAME[name]: samples})
    return path


def cnn_model(name: str, out_dir: Path) -> tuple[Path, tuple[int, ...], np.ndarray]:
    """(model path, input shape, calibration samples) of benchmark CNN *name* (see MODELS),
    writing OUT_DIR/NAME.onnx (rebuilt every call: deterministic for the fixed seed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.onnx"
    if name == "shufflenet":
        light_shufflenet(path)
    elif name == "mobilenetv2":
        mobilenetv2(path)
    else:
        raise ValueError(f"unknown CNN {name!r}: one of {', '.join(MODELS)}")
    return path, SHAPES[name], calibration(SHAPES[name])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--model", choices=MODELS, action="append", help="default: all")
    args = ap.parse_args(argv)
    for name in args.model or MODELS:
        path, shape, samples = cnn_model(name, args.out_dir)
        calib = calibration_npz(name, samples, args.out_dir / f"{name}_calib.npz")
        print(f"{path}  input {INPUT_NAME[name]}={'x'.join(map(str, shape))}  calibration {calib}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
