"""Host latency of a model compiled by qc's C backend against onnxruntime on the same ONNX.

    python benchmarks/c_model.py                       # MiniLM-L6 float32 and w8a8, seq 16 and 128
    python benchmarks/c_model.py --model M.onnx --shape input_ids=1x128,attention_mask=1x128

The C model is emitted for the host with the portable kernels (the Arm variants need an Arm
CPU), built with the host gcc -O2 and timed by its harness (`-r RUNS`, CPU time of RUNS calls).
onnxruntime runs the same ONNX on one thread, with graph optimizations off (what the C
computes, op for op) and on (its fused kernels). Times are per inference, best of three.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qc.backends.c import emit_c, parse_shapes, prepare  # noqa: E402
from qc.backends.c.runner import build_model, run_model  # noqa: E402
from qc.frontend.onnx import import_onnx  # noqa: E402
from qc.onnx.evaluator import ort_session  # noqa: E402
from qc.targets import load_target  # noqa: E402


def _inputs(report: dict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    out = {}
    for name, dt, shape in report["inputs"]:
        if dt.startswith("i"):
            out[name] = (np.ones(shape) if "mask" in name else rng.randint(0, 1000, shape)).astype(np.int64)
        else:
            out[name] = rng.randn(*shape).astype(np.float32)
    return out


def c_model_latency(model: str | Path, shapes: dict, runs: int = 20, work: Path | None = None) -> dict:
    """{'c_ms', 'ort_ms', 'ort_opt_ms', 'arena_bytes', 'weight_bytes'} for *model* at *shapes* on the host."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(work or tmp) / "c"
        module = import_onnx(str(model))
        prepare(module, shapes)
        report = emit_c(module, out, load_target("cortex-a76"), harness=True, variant="portable")
        exe = build_model(report, "host")
        inputs = _inputs(report)
        c = []
        for _ in range(3):
            run_model(exe, report, inputs, "host", runs=runs)
            c.append(run_model.seconds)
    result = {"c_ms": 1e3 * min(c), "arena_bytes": report["arena_bytes"], "weight_bytes": report["weight_bytes"]}
    for key, optimize in (("ort_ms", False), ("ort_opt_ms", True)):
        sess = ort_session(str(model), optimize=optimize, threads=1)
        sess.run(None, inputs)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(runs):
                sess.run(None, inputs)
            best = min(best, (time.perf_counter() - t0) / runs)
        result[key] = 1e3 * best
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="an .onnx file (default: MiniLM-L6 fp32 and w8a8)")
    ap.add_argument("--shape", action="append", help="NAME=AxB,... per --model (default: seq 16 and 128)")
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    rows = []
    if args.model:
        jobs = list(zip(args.model, args.shape or [""] * len(args.model)))
    else:
        jobs = [(str(ROOT / "out/bench" / f), f"input_ids=1x{s},attention_mask=1x{s}")
                for f in ("minilm-l6-fp32.onnx", "minilm-l6-a76-w8a8.onnx") for s in (16, 128)]
    for model, shape in jobs:
        if not Path(model).exists():
            print(f"skipped {model}: missing", file=sys.stderr)
            continue
        r = c_model_latency(model, parse_shapes(shape), args.runs)
        rows.append((Path(model).name, shape, f"{r['c_ms']:.2f}", f"{r['ort_ms']:.2f}", f"{r['ort_opt_ms']:.2f}",
                     r["arena_bytes"], r["weight_bytes"]))
    from vs_ort import print_table

    print_table(("model", "shape", "C ms", "ORT ms (no opt)", "ORT ms (opt)", "arena B", "weights B"), rows)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
