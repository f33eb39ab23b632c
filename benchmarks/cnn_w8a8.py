"""Integer CNNs (issue 17, point 4): w8a8 on onnx's light model architectures and a MobileNet-v2,
side by side with onnxruntime's own static quantization.

    python benchmarks/cnn_w8a8.py                          # the default models
    python benchmarks/cnn_w8a8.py --model squeezenet --model mobilenetv2 --rounds 5

Per model (random He-scaled weights, BatchNormalization statistics set from one image:
benchmarks/cnn_models.py; calibration ``--calib`` uniform [0, 1) images, evaluation ``--eval``
other ones):

- **float Conv units** on x86-avx2, cortex-a76 and ethos-u55: the Conv units ``qc check`` reports
  as "dequantize + float" on the target's preferred device (no integer kernel, no speed-up), of
  all Conv units; for ethos-u55 also how many Conv units are placed on the NPU;
- **SQNR** (dB) of the output vs FP32 in onnxruntime (graph optimizations off; of the logits,
  the input of the final Softmax, where the model ends in one), qc's x86 ONNX
  and onnxruntime's ``quantize_static`` (QDQ, u8 activations, s8 per-channel weights, MinMax,
  the same calibration images, ``op_types_to_quantize`` Conv / MatMul / Gemm like qc's: with
  its default op list it also quantizes the Softmax output to u8, which ruins the probabilities);
- **latency**: onnxruntime CPU (all optimizations, ``--threads``), every model's session
  opened first, then ``--rounds`` interleaved rounds of ``--runs`` runs (benchmarks/latency.py's
  method); median ms and ratio to FP32.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import cnn_models  # noqa: E402

DEFAULT = ("squeezenet", "resnet50", "shufflenet", "vgg19", "densenet121", "inception_v1", "inception_v2",
           "mobilenetv2")
TARGETS = ("x86-avx2", "cortex-a76", "ethos-u55")


def build(name: str, out: Path) -> tuple[Path, str, tuple[int, ...]]:
    if name == "mobilenetv2":
        return cnn_models.mobilenetv2(out / "mobilenetv2.onnx"), "input", cnn_models.SHAPES["mobilenetv2"]
    return cnn_models.light_model(name, out / f"{name}.onnx"), cnn_models.light_input(name), (1, 3, 224, 224)


def conv_placement(placement: dict, preferred: str) -> tuple[int, int, int]:
    """(Conv units, those run as dequantize + float on the preferred device, those on an NPU)."""
    convs = [p for p in placement["placement"] if p["op"].split(".")[-1] in ("Conv", "QLinearConv", "ConvInteger")]
    floats = [p for p in convs if p["to"] == preferred and not p["kernel"]]
    npu = [p for p in convs if p["to"] == "npu"]
    return len(convs), len(floats), len(npu)


def _with_logits(path: Path, dst: Path) -> Path:
    """The model with the input of the Softmax that makes its first output as a last output (a
    saturated Softmax hides the error: its SQNR says nothing), or the model itself."""
    import onnx

    model = onnx.load(str(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer.get(model.graph.output[0].name)
    if node is None or node.op_type != "Softmax":
        return path
    model.graph.output.append(onnx.ValueInfoProto(name=node.input[0]))
    onnx.save(model, str(dst))
    return dst


def ort_static(src: Path, dst: Path, input_name: str, calib: np.ndarray) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{input_name: x} for x in calib])

        def get_next(self):
            return next(self.it, None)

    import onnx
    from onnx import version_converter

    model = onnx.load(str(src))
    if model.opset_import[0].version < 13:  # per-channel DequantizeLinear needs opset 13
        model = version_converter.convert_version(model, 13)
    up = dst.with_suffix(".fp32-opset13.onnx")
    onnx.save(model, str(up))
    quantize_static(str(up), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return dst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", choices=DEFAULT + ("bvlc_alexnet", "zfnet512"), help="default: " +
                    ", ".join(DEFAULT))
    ap.add_argument("--calib", type=int, default=16, help="calibration images")
    ap.add_argument("--eval", type=int, default=8, help="evaluation images (SQNR)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None,
                    help="onnxruntime intra-op threads (default: its own; 1 is steadier on a loaded machine)")
    ap.add_argument("--no-ort", action="store_true", help="skip onnxruntime's quantize_static")
    ap.add_argument("--out", type=Path, default=None, help="keep the models here (default: a temporary directory)")
    args = ap.parse_args(argv)

    import qc
    from qc.tools import metrics

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for name in args.model or DEFAULT:
            src, input_name, shape = build(name, out)
            calib = cnn_models.calibration(shape, args.calib, seed=10)
            evals = cnn_models.calibration(shape, args.eval, seed=20)
            npz = out / f"{name}_calib.npz"
            np.savez(npz, **{input_name: calib})
            row: dict = {"model": name}
            paths = {"fp32": src}
            for target in TARGETS:
                res = qc.compile(str(src), target=target, quant="w8a8", calibration=str(npz), emit="onnx")
                row[target] = conv_placement(res.placement, res.placement["preferred_device"])
                if target == "x86-avx2":
                    paths["qc"] = Path(res.write(out / f"{name}-qc-w8a8.onnx", measure=False))
            if not args.no_ort:
                paths["ort"] = ort_static(src, out / f"{name}-ort-s8.onnx", input_name, calib)
            ref = metrics.session(str(_with_logits(src, out / f"{name}-fp32-logits.onnx")))
            for key in ("qc", "ort"):
                if key not in paths:
                    continue
                sess = metrics.session(str(_with_logits(paths[key], out / f"{name}-{key}-logits.onnx")))
                sig = noise = 0.0
                for x in evals:
                    a = ref.run(None, {input_name: x})[-1]
                    b = sess.run(None, {input_name: x})[-1]
                    sig += float(np.sum(a.astype(np.float64) ** 2))
                    noise += float(np.sum((a.astype(np.float64) - b) ** 2))
                row[f"sqnr_{key}"] = metrics.sqnr_from(sig, noise)
            sessions = {k: metrics.session(str(p), optimize=True, threads=args.threads) for k, p in paths.items()}
            times: dict[str, list[float]] = {k: [] for k in paths}
            feeds = {input_name: evals[0]}
            for _ in range(args.rounds):
                for k in paths:
                    times[k].append(metrics.latency_ms(sessions[k], feeds, runs=args.runs, warmup=2))
            for k in paths:
                row[f"ms_{k}"] = float(np.median(times[k]))
            rows.append(row)
            print(_line(row), flush=True)
    print()
    print(f"w8a8, {args.calib} calibration / {args.eval} evaluation images, latency median of {args.rounds} "
          f"interleaved rounds x {args.runs} runs (onnxruntime CPU, {os.cpu_count()} cores, "
          f"{args.threads or 'default'} threads)")
    print("| model | float Conv units x86 / a76 / u55 | on NPU (u55) | SQNR qc | SQNR ort | fp32 ms | qc ms (vs fp32) "
          "| ort ms (vs fp32) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(_line(r))
    return 0


def _line(r: dict) -> str:
    n = r["x86-avx2"][0]
    floats = " / ".join(str(r[t][1]) for t in TARGETS)
    fp = r["ms_fp32"]
    ort = f"{r['ms_ort']:.1f} ({r['ms_ort'] / fp:.2f}x)" if "ms_ort" in r else "-"
    sq_ort = f"{r['sqnr_ort']:.1f}" if "sqnr_ort" in r else "-"
    return (f"| {r['model']} | {floats} of {n} | {r['ethos-u55'][2]} of {r['ethos-u55'][0]} | {r['sqnr_qc']:.1f} | "
            f"{sq_ort} | {fp:.1f} | {r['ms_qc']:.1f} ({r['ms_qc'] / fp:.2f}x) | {ort} |")


if __name__ == "__main__":
    sys.exit(main())
