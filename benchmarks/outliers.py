"""Outlier handling for static W8A8 on a real model: plain, split-outliers (threshold and budget
modes), SmoothQuant, both, and onnxruntime's quantize_static, side by side in one run.

    python benchmarks/outliers.py --model smollm2-135m --samples 32
    python benchmarks/outliers.py --model minilm-l6 --samples 64

Every row is static W8A8 with per-tensor activations and per-channel weights (qc's x86 defaults:
uint8 activations, uint8 weights). Data, quality and latency are measured exactly as in
vs_ort.py (same calibration file, evaluation text and latency input; each quantization in its
own process). The float16 column is the share of the MatMul activation columns that
split-outliers kept in float16, from qc's --report-json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import vs_ort  # noqa: E402  (the shared machinery: workers, data, quality, latency)

ROWS = {
    "qc w8a8 plain": ["--outliers", "none"],
    "qc + split (threshold 6.0)": ["--outliers", "split", "--outlier-mode", "threshold"],
    "qc + split (budget 1%)": ["--outliers", "split", "--outlier-mode", "budget", "--outlier-fraction", "0.01"],
    "qc + split (error <= 1%)": ["--outliers", "split", "--outlier-mode", "error", "--outlier-fraction", "0.01"],
    "qc + smooth-quant (0.5)": ["--outliers", "smooth"],
    "qc + both": ["--outliers", "both"],
}
ORT_ROWS = ("ort-static-channel", "ort-static-channel-rr")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=vs_ort.MODELS, required=True)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument("--sentences", type=int, default=128)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--rows", default=",".join(ROWS), help="comma list of the qc rows to run")
    p.add_argument("--out", default=os.path.join(vs_ort.REPO, "out", "bench"))
    args = p.parse_args(argv)

    import onnxruntime

    import qc.models
    from qc.data.text import default_evaluation_text, sentences, token_windows

    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()
    fp32 = vs_ort.build_fp32(args.model, args.out)
    tok = qc.models.tokenizer(args.model)
    calib, _ = vs_ort.calibration_data(args.model, tok, args.seq_len, args.samples, args.out)
    ev: dict = {}
    eval_text = default_evaluation_text()
    if args.model == "smollm2-135m":
        ev["windows"] = token_windows(eval_text, tok, args.seq_len, samples=args.eval_windows)
        lat_feeds = {"input_ids": ev["windows"][:1]}
    else:
        import numpy as np

        ev["sentences"] = sentences(eval_text, args.sentences)
        ids = vs_ort.encoder_windows(eval_text, tok, args.seq_len, 1)
        lat_feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    ref = vs_ort.quality(args.model, fp32, ev, optimize=False)[1] if args.model == "minilm-l6" else None

    def measure(name: str, path: str, quantize_s: str, rss: str, fraction: str) -> tuple:
        q_off, _ = vs_ort.quality(args.model, path, ev, optimize=False, ref_emb=ref)
        q_on, _ = vs_ort.quality(args.model, path, ev, optimize=True, ref_emb=ref)
        lat = vs_ort.latency(args.model, path, lat_feeds, args.runs)
        row = (name, quantize_s, rss, fraction, f"{vs_ort.model_size_mb(path):.1f}", q_off, q_on, f"{lat:.1f}")
        print(" | ".join(row), file=sys.stderr)
        return row

    rows = [measure("fp32", fp32, "-", "-", "-")]
    for name in [r.strip() for r in args.rows.split(",") if r.strip()]:
        slug = name.replace(" ", "_").replace("(", "").replace(")", "").replace("%", "pct").replace("+", "p")
        out_path = os.path.join(args.out, f"{args.model}-outliers-{slug}.onnx")
        report = out_path + ".json"
        spec = {"kind": "qc", "args": ["--quant", "w8a8", *ROWS[name]], "fp32": fp32, "output": out_path,
                "calib": calib, "report": report}
        r = vs_ort.run_worker(spec, 3600)
        if "error" in r:
            rows.append((name, "failed", "-", "-", "-", r["error"], "-", "-"))
            continue
        outliers = json.load(open(report)).get("outliers")
        fraction = f"{100 * outliers['fraction']:.2f}%" if outliers else "0%"
        rows.append(measure(name, out_path, f"{r['quantize_s']:.1f}", f"{r['peak_rss_mb']:.0f}", fraction))
    for name in ORT_ROWS:
        out_path = os.path.join(args.out, f"{args.model}-{name}.onnx")
        spec = dict(vs_ort.METHODS[name][1], fp32=fp32, output=out_path, calib=calib)
        r = vs_ort.run_worker(spec, 3600)
        if "error" in r:
            rows.append((name, "failed", "-", "-", "-", r["error"], "-", "-"))
            continue
        rows.append(measure(name, out_path, f"{r['quantize_s']:.1f}", f"{r['peak_rss_mb']:.0f}", "-"))

    header = ("method", "quantize s", "peak RSS MB", "float16 cols", "size MB", "quality (ORT opt off)",
              "quality (ORT opt on)", f"latency ms ({args.seq_len} tok)")
    what = (f"perplexity over {args.eval_windows} windows x {args.seq_len} tokens"
            if args.model == "smollm2-135m" else f"mean / min cosine vs FP32 over {args.sentences} sentences")
    print(f"outliers: {args.model}, {datetime.date.today().isoformat()}, onnxruntime {onnxruntime.__version__}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs")
    print(f"static W8A8 (per-tensor activations, per-channel weights); calibration: {args.samples} windows of the "
          f"licence texts; quality: {what} of the Python Language Reference")
    vs_ort.print_table(header, rows)
    for name, flags in ROWS.items():
        print(f"  {name}: qc compile --quant w8a8 {' '.join(flags)}")
    print(f"Total {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
