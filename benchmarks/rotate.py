"""Outliers before and after the ``rotate`` pass: max |x| and max |x| / mean |x| of every
activation a linear reads, from calibration statistics of the float model and of the rotated one.

    python benchmarks/rotate.py --model smollm2-135m --samples 8
    python benchmarks/rotate.py --model minilm-l6 --samples 16 --online all

The float32 model and the calibration windows are those of benchmarks/vs_ort.py (out/bench/).
Both models are calibrated (minmax) on the same windows. Per activation, read by the MatMuls named
(q, k and v read one), the table gives max |x| and the crest factor max |x| / mean |x| (what
per-tensor int8 pays for: the step is max / 127, the typical value is the mean) before and after;
the rotation also moves the norms' gains into the weights, so the crest factor is the fair
comparison. Then a summary per kind of activation (layer numbers folded). The int8 accuracy
the rotation buys is measured beside onnxruntime's quantizers by vs_ort.py
(``--methods qc-w8a8,qc-w8a8-rotate,qc-w8a8-rotate-all,ort-static-channel``).
"""
from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

CLEANUP = "propagate-shapes,remove-identity,fold-constants,fold-batchnorm,cse,dce"


def activation_stats(fp32: str, calib: str, rotate: str | None) -> dict[str, tuple[float, float]]:
    """MatMul name -> (max |x|, crest factor) of its activation input."""
    import onnx

    import qc
    from qc.calib.data import from_npz
    from qc.pm import PassContext, PassManager

    ctx = PassContext(calibration_data=from_npz(calib), quiet=True)
    module = qc.import_onnx(onnx.load(fp32))
    spec = CLEANUP + (f",rotate{{online={rotate}}}" if rotate else "") + ",calibrate{activation-pairs=false}"
    PassManager.parse(spec, ctx=ctx).run(module)
    out = {}
    for op in module.graph:
        if op.op_type != "MatMul" or op.name.endswith("rotate.hadamard") or op.operands[1].const is None:
            continue
        s = ctx.calibration.tensors.get(op.operands[0].name)
        if s is None or s.channel_absmax is None:
            continue
        mean = s.channel_abssum.sum() / (s.rows * s.features)
        out[op.name] = (float(s.channel_absmax.max()), float(s.channel_absmax.max() / mean))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("smollm2-135m", "minilm-l6"), required=True)
    p.add_argument("--samples", type=int, default=8, help="calibration windows (default %(default)s)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per window (default %(default)s)")
    p.add_argument("--online", choices=("down", "all", "none"), default="down",
                   help="rotate's online Hadamards (default %(default)s)")
    p.add_argument("--rows", type=int, default=0, help="print only the N activations with the largest crest "
                   "factor before (default: all)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "out", "bench"))
    args = p.parse_args(argv)

    from vs_ort import build_fp32, calibration_data

    import qc.models

    os.makedirs(args.out, exist_ok=True)
    fp32 = build_fp32(args.model, args.out)
    calib, _ = calibration_data(args.model, qc.models.tokenizer(args.model), args.seq_len, args.samples, args.out)
    before = activation_stats(fp32, calib, None)
    after = activation_stats(fp32, calib, args.online)
    names = [n for n in before if n in after]
    print(f"{args.model}: rotate{{online={args.online}}}, minmax statistics over {args.samples} x {args.seq_len} "
          f"tokens of the calibration text; {len(names)} linears")
    shown = sorted(names, key=lambda n: -before[n][1])[:args.rows] if args.rows else names
    width = max(len(n) for n in shown)
    print(f"{'linear (its activation)':<{width}}  {'max|x| before':>13}  {'after':>9}  "
          f"{'crest before':>12}  {'after':>7}")
    for n in shown:
        (mb, cb), (ma, ca) = before[n], after[n]
        print(f"{n:<{width}}  {mb:13.4g}  {ma:9.4g}  {cb:12.1f}  {ca:7.1f}")
    kinds: dict[str, list[str]] = {}
    for n in names:
        kinds.setdefault(re.sub(r"\d+", "*", n), []).append(n)
    print("\nper kind: median (max) crest factor before -> after, median max |x| before -> after")
    width = max(len(k) for k in kinds)
    for k, ns in kinds.items():
        cb = np.array([before[n][1] for n in ns])
        ca = np.array([after[n][1] for n in ns])
        mb = np.median([before[n][0] for n in ns])
        ma = np.median([after[n][0] for n in ns])
        print(f"{k:<{width}}  x{len(ns):<3} crest {np.median(cb):7.1f} ({cb.max():7.1f}) -> {np.median(ca):6.1f} "
              f"({ca.max():6.1f})   max|x| {mb:9.4g} -> {ma:8.4g}")
    shrunk = sum(after[n][1] < before[n][1] for n in names)
    print(f"\ncrest factor smaller after rotation for {shrunk} of {len(names)} linears")
    return 0


if __name__ == "__main__":
    sys.exit(main())
