"""Latency of already-built models, measured interleaved so that load from other processes hits
every model alike.

    python benchmarks/latency.py --model smollm2-135m                 # every out/bench/smollm2-135m-*.onnx
    python benchmarks/latency.py --model minilm-l6 --rounds 5 --runs 10

vs_ort.py and outliers.py measure each model right after building it, one after the other; on
a shared machine a burst of load lands on whichever model is being timed. Here every model's
session is opened first, then ``--rounds`` rounds each time every model in turn (``--runs``
runs after 2 warm-up runs; onnxruntime CPU, all graph optimizations, default threads); the
table gives each model's median over rounds and its ratio to fp32.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import vs_ort  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=vs_ort.MODELS, required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--out", default=os.path.join(vs_ort.REPO, "out", "bench"))
    args = p.parse_args(argv)

    import qc.models
    from qc.data.text import default_evaluation_text, token_windows
    from qc.tools import metrics

    paths = sorted(glob.glob(os.path.join(args.out, f"{args.model}-*.onnx")))
    fp32 = os.path.join(args.out, f"{args.model}-fp32.onnx")
    if fp32 not in paths:
        p.error(f"no {fp32}: run vs_ort.py first")
    paths.remove(fp32)
    paths.insert(0, fp32)
    tok = qc.models.tokenizer(args.model)
    text = default_evaluation_text()
    if args.model == "smollm2-135m":
        feeds = {"input_ids": token_windows(text, tok, args.seq_len, samples=1)}
    else:
        ids = vs_ort.encoder_windows(text, tok, args.seq_len, 1)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    sessions = {path: metrics.session(path, optimize=True) for path in paths}
    times: dict[str, list[float]] = {path: [] for path in paths}
    for _ in range(args.rounds):
        for path in paths:
            times[path].append(metrics.latency_ms(sessions[path], feeds, runs=args.runs, warmup=2))
    base = float(np.median(times[fp32]))
    name = lambda path: os.path.basename(path)[len(args.model) + 1:-len(".onnx")]  # noqa: E731
    width = max(len(name(p)) for p in paths)
    print(f"latency: {args.model}, {args.seq_len} tokens, "
          f"median of {args.rounds} interleaved rounds x {args.runs} runs")
    print(f"| {'model':<{width}} | median ms | vs fp32 | rounds (ms) |")
    print(f"|{'-' * (width + 2)}|-----------|---------|-------------|")
    for path in paths:
        med = float(np.median(times[path]))
        rounds = " ".join(f"{t:.0f}" for t in times[path])
        print(f"| {name(path):<{width}} | {med:9.1f} | {med / base:7.2f} | {rounds} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
