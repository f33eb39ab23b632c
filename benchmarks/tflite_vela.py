"""Issue 19's figures: qc's int8 TFLite through Arm's Vela, and LiteRT against onnxruntime.

    python benchmarks/tflite_vela.py [--models mobilenetv2,resnet,smollm2_mlp] [--targets ethos-u55,ethos-u65]
    python benchmarks/tflite_vela.py --models minilm --calib-samples 16

For each model and Ethos-U target: `qc compile --quant w8a8 --emit tflite` (8 calibration samples),
then Vela's summary (operators and MACs on the NPU, cycles, SRAM, flash) and how qc's table and
Vela place the node units; once per model, LiteRT's interpreter on the TFLite against
onnxruntime on qc's ONNX (the .qdq.onnx beside it), on a sample the calibration did not see:
end to end against qc's ONNX and against its twin (qc's ONNX with the int32 biases and the
requantization points the TFLite model adds, backends/tflite/oracle.py), and each TFLite operator
alone on onnxruntime's int8 inputs (backends/tflite/check.py).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from npu_models import build, calibration_npz


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mobilenetv2,resnet,smollm2_mlp")
    ap.add_argument("--targets", default="ethos-u55,ethos-u65")
    ap.add_argument("--calib-samples", type=int, default=8, help="calibration samples (MiniLM: 16, as "
                    "--calib-text licenses --samples 16)")
    args = ap.parse_args(argv)
    import qc
    from qc.backends.tflite import onnx_twin, to_tflite
    from qc.backends.tflite.check import end_to_end, per_op

    with tempfile.TemporaryDirectory(prefix="qc-tflite-bench-") as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            n = args.calib_samples
            path, samples = build(name, work, samples=n + 1)
            calib = calibration_npz(samples[:n], work / f"{name}_calib.npz")
            for target in args.targets.split(","):
                result = qc.compile(str(path), target=target, quant="w8a8", calibration=str(calib), emit="tflite",
                                    holdout=0)
                out = work / f"{name}-{target}.tflite"
                oracle = result.write(str(out), measure=False)
                v = result.vela
                assert v is not None
                diff = v["disagreements"]
                print(f"{name:<12} {target:<10} NPU ops {v['npu_operators']}/{v['npu_operators'] + v['cpu_operators']}"
                      f"  NPU MACs {100 * v['npu_mac_share']:.1f}% ({v['npu_macs']:,} of "
                      f"{v['npu_macs'] + v['cpu_macs']:,})  cycles {v['cycles_total']:,} "
                      f"({1e3 * v['inference_seconds']:.2f} ms)  SRAM {v['sram_kib']:.0f} KiB  "
                      f"flash {v['flash_kib']:.0f} KiB  DRAM {v['dram_kib']:.0f} KiB  "
                      f"CPU ops: {', '.join(sorted({c['op'] for c in v['cpu']})) or 'none'}  "
                      f"qc table vs Vela: {len(diff)} of {v['units']} units differ")
                result.close()
            model = onnx.load(oracle)
            lowering = to_tflite(model, samples[:n])
            e2e = end_to_end(model, lowering, samples[n])
            twin = end_to_end(onnx_twin(model, lowering), lowering, samples[n])
            ops = per_op(model, lowering, samples[n])
            worst = max(ops, key=lambda m: m.over_one)
            ref, qdq, tfl = _outputs(path, model, lowering, samples[n])
            print(f"{name:<12} SQNR against the float model: onnxruntime on qc's ONNX {_sqnr(ref, qdq):.2f} dB, "
                  f"LiteRT on qc's TFLite {_sqnr(ref, tfl):.2f} dB")
            for m in e2e:
                print(f"{name:<12} LiteRT vs onnxruntime on qc's ONNX, end to end: {m.row()}")
            for m in twin:
                print(f"{name:<12} LiteRT vs onnxruntime on the twin (TFLite's requantization points), end to end: "
                      f"{m.row()}")
            print(f"{name:<12} LiteRT vs onnxruntime, per operator ({len(ops)} compared): worst "
                  f"{worst.row()}; median >1 LSB "
                  f"{100 * float(np.median([m.over_one for m in ops])):.2f}%")
            if name == "minilm":
                _sentences(path, model, lowering)
                _bias_only(model, lowering, samples[n])
    return 0


SENTENCES = ["The cat sits on the mat.", "A man is playing a guitar on the stage.",
             "Quantization maps floating-point values to small integers.",
             "The weather in Lisbon is sunny today.", "Neural processing units accelerate inference on devices.",
             "She reads a book in the garden every evening."]


def _sentences(float_path, model, lowering, seq: int = 128) -> None:
    """Cosine of LiteRT's (and onnxruntime's on qc's ONNX) sentence embedding against the float
    model's, on SENTENCES (each [CLS] ... [SEP], padded to ``seq`` with the mask 0)."""
    import onnxruntime as ort

    from qc.backends.tflite.check import run_tflite
    from qc.data.text import load_tokenizer

    tok = load_tokenizer("minilm-l6")
    flt = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"])
    qdq = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    cos_t, cos_q, cos_tq = [], [], []
    for text in SENTENCES:
        ids = tok.encode(text).ids[:seq]
        feed = {"input_ids": np.zeros((1, seq), np.int64), "attention_mask": np.zeros((1, seq), np.int64)}
        feed["input_ids"][0, :len(ids)] = ids
        feed["attention_mask"][0, :len(ids)] = 1
        f = flt.run(["sentence_embedding"], feed)[0].ravel()
        q = qdq.run(["sentence_embedding"], feed)[0].ravel()
        it = run_tflite(lowering, feed)
        t = {d["name"]: it.get_tensor(d["index"]) for d in it.get_output_details()}["sentence_embedding"].ravel()
        cos_t.append(_cos(t, f))
        cos_q.append(_cos(q, f))
        cos_tq.append(_cos(t, q))
    print(f"minilm       sentence embedding cosine on {len(SENTENCES)} sentences (mean, min): LiteRT vs float "
          f"{np.mean(cos_t):.4f}, {min(cos_t):.4f}; onnxruntime on qc's ONNX vs float {np.mean(cos_q):.4f}, "
          f"{min(cos_q):.4f}; LiteRT vs qc's ONNX {np.mean(cos_tq):.4f}, {min(cos_tq):.4f}")


def _bias_only(model, lowering, sample) -> None:
    """onnxruntime on qc's ONNX against onnxruntime on its twin with only TFLite's int32 biases
    (no requantization point): how far rounding the biases alone moves the outputs, in the steps
    end_to_end uses for a float32 output (max |x| / 127)."""
    from qc.backends.tflite import onnx_twin
    from qc.backends.tflite.check import _compare, _ort

    kept = lowering.requantized
    lowering.requantized = {}
    try:
        twin = onnx_twin(model, lowering)
    finally:
        lowering.requantized = kept
    names = [o.name for o in model.graph.output]
    ref = _ort(model, []).run(names, sample)
    got = _ort(twin, []).run(names, sample)
    for name, r, g in zip(names, ref, got):
        step = max(float(np.abs(r).max()), 1e-30) / 127.0
        print(f"minilm       onnxruntime, qc's ONNX vs its int32 biases alone: "
              f"{_compare(name, 'output', g / step, r / step).row()}  cosine {_cos(g.ravel(), r.ravel()):.4f}")


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def _sqnr(ref: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / max(np.sum((ref - x) ** 2), 1e-30)))


def _outputs(float_path, model, lowering, sample):
    """The first output of the float model and of qc's ONNX (onnxruntime, optimizations off), and
    of the TFLite (LiteRT, dequantized, back in the ONNX layout)."""
    import onnxruntime as ort

    from qc.backends.tflite.check import run_tflite

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(str(float_path), so).run(None, sample)[0]
    qdq = ort.InferenceSession(model.SerializeToString(), so).run(None, sample)[0]
    it = run_tflite(lowering, sample)
    first = lowering.out.tensors[lowering.out.outputs[0]].name
    d = next(d for d in it.get_output_details() if d["name"] == first)
    s, zp = d["quantization"]
    out = it.get_tensor(d["index"]).astype(np.float32)
    if s:  # an int8 output (a float32 one, after float32 ops, is as it is)
        out = (out - zp) * s
    if out.ndim == 4:
        out = out.transpose(0, 3, 1, 2)
    return ref, qdq, out.reshape(ref.shape)


if __name__ == "__main__":
    sys.exit(main())
