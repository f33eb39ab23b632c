"""LLM generation through the KV cache in onnxruntime (x86 host): exactness, speed by context, and
the accuracy of each scheme through the decode path.

    python benchmarks/generate.py --exact          # cached greedy == recomputed greedy, 5 prompts x 64 tokens
    python benchmarks/generate.py --speed          # decode tokens/s at 16, 256 and 1024 tokens of context
    python benchmarks/generate.py --schemes        # w8a8 / dyn8 / w4a8 / w4a8-token, float and int8
                                                   # cache, and onnxruntime's quantizers: perplexity
                                                   # in one pass vs through the decode path
    python benchmarks/generate.py --schemes --only w4a8-token   # those rows only (FP32 beside them)
    python benchmarks/generate.py --all --work DIR --json OUT.json

Models are SmolLM2-135M-Instruct as ``qc models build smollm2-135m --kv-cache`` writes it,
cached in ``--work``. Speed figures are wall-clock on this machine (one run, interleaved by
context); the deterministic Arm figures live in arm_speed.py and llama_cpp.py.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROMPTS = ("What is the capital of France?", "Write a haiku about the sea.",
           "Explain what a compiler does in two sentences.", "List three uses of a raspberry pi.",
           "Tell me a short story about a robot who learns to paint.")
# qc's schemes: name -> qc compile flags
SCHEMES = {"w8a8": ["--quant", "w8a8"], "dyn8": ["--quant", "dyn8"], "w4a8": ["--quant", "w4a8"],
           "w4a8-token": ["--quant", "w4a8", "--act-granularity", "token"]}
# onnxruntime.quantization on the same KV-cache model (benchmarks/vs_ort.py's workers)
ORT_METHODS = {"ort-dynamic-channel": {"kind": "dynamic", "per_channel": True},
               "ort-static-channel": {"kind": "static", "per_channel": True},
               "ort-int4-b32": {"kind": "int4", "block_size": 32}}


def build(work: Path) -> Path:
    path = work / "smollm2-kv.onnx"
    if not path.exists():
        import qc.models

        qc.models.build("smollm2-135m", str(path), kv_cache=True)
    return path


def exact(model: Path, tokens: int = 64) -> dict:
    """Greedy tokens through the cache vs recomputed from the whole prefix, per prompt."""
    from qc.models import smollm2
    from qc.tools.generate import OrtStepper, generate

    tok = smollm2.tokenizer()
    cached, recomputed = OrtStepper.load(str(model)), OrtStepper.load(str(model), recompute=True)
    rows = []
    for prompt in PROMPTS:
        ids = tok.encode(smollm2.chat_prompt(prompt)).ids
        a = generate(cached, ids, tokens).generated_ids       # no eos stop: all 64 tokens compared
        b = generate(recomputed, ids, tokens).generated_ids
        rows.append({"prompt": prompt, "tokens": len(a), "identical": a == b,
                     "first_difference": next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None),
                     "text": tok.decode(a, skip_special_tokens=True)})
        print(f"  {'same' if a == b else 'DIFFERENT'} {len(a)} tokens: {prompt!r} -> {rows[-1]['text'][:60]!r}",
              flush=True)
    return {"prompts": rows, "all_identical": all(r["identical"] for r in rows)}


def speed(model: Path, contexts: tuple[int, ...] = (16, 256, 1024), steps: int = 16, rounds: int = 3) -> dict:
    """Decode tokens/s after prefilling ``context`` tokens; rounds interleave the contexts."""
    from qc.tools.generate import OrtStepper

    stepper = OrtStepper.load(str(model), threads=1)
    rng = np.random.default_rng(0)
    best: dict[int, float] = {}
    for _ in range(rounds):
        for context in contexts:
            stepper.reset()
            stepper.step(rng.integers(100, 40000, context).tolist())
            t0 = time.perf_counter()
            for token in rng.integers(100, 40000, steps).tolist():
                stepper.step([token])
            rate = steps / (time.perf_counter() - t0)
            best[context] = max(best.get(context, 0.0), rate)
    for context in contexts:
        print(f"  context {context:5d}: {best[context]:7.2f} decode tokens/s (1 thread, best of {rounds})", flush=True)
    return {"decode_tokens_per_s": best, "threads": 1, "steps": steps}


def schemes(model: Path, work: Path, windows: int, seq_len: int, samples: int,
            only: list[str] | None = None, cache_windows: int = 32) -> dict:
    """Per scheme and cache type (qc's, calibrated on `licenses`, and onnxruntime's quantizers):
    perplexity on the evaluation text in one pass and through the decode path, with onnxruntime's
    graph optimizations off (the QDQ arithmetic as written, in float) and on (its fused integer
    kernels, what a deployment runs). The int8 cache's cost is also measured in one pass over
    ``cache_windows`` windows, with its standard error across windows: on 8 windows one
    window's swing moves the mean by +-0.7%, more than the 1% it is judged against."""
    from qc.data import text as textdata
    from qc.models import smollm2

    tok = smollm2.tokenizer()
    ids = textdata.token_windows(textdata.resolve_text(None), tok, seq_len, samples=windows)
    many = textdata.token_windows(textdata.resolve_text(None), tok, seq_len, samples=cache_windows)
    qc_bin = str(Path(sys.executable).parent / "qc")
    rows: dict[str, dict] = {"fp32": evaluate(model, ids, "fp32")}
    for scheme, flags in SCHEMES.items():
        if only and scheme not in only:
            continue
        path = work / f"smollm2-kv-{scheme}.onnx"
        if not path.exists():
            subprocess.run([qc_bin, "compile", str(model), "--target", "x86-avx2", *flags, "--calib-text",
                            "licenses", "--samples", str(samples), "-o", str(path)], check=True,
                           stdout=subprocess.DEVNULL)
        rows[scheme] = evaluate(path, ids, scheme)
        # the int8 cache: the same compile's last passes (quantize-kv-cache runs after everything else)
        kv8 = work / f"smollm2-kv-{scheme}-kv8.onnx"
        if not kv8.exists():
            subprocess.run([qc_bin, "opt", str(path), "-p", "quantize-kv-cache,dce", "-o", str(kv8)], check=True,
                           stdout=subprocess.DEVNULL)
        rows[f"{scheme}-kv8"] = evaluate(kv8, ids, f"{scheme}-kv8")
        for opt in ("off", "on"):
            cost = rows[f"{scheme}-kv8"][opt]["decode"] / rows[scheme][opt]["decode"] - 1
            rows[f"{scheme}-kv8"][opt]["kv8_cost"] = cost
            print(f"  {scheme}: int8 KV cache costs {100 * cost:+.2f}% perplexity (decode path, optimizations {opt})")
            rows[f"{scheme}-kv8"][opt]["kv8_cost_one_pass"] = one = kv8_cost(path, kv8, many, opt == "on")
            print(f"  {scheme}: int8 KV cache costs {100 * one['cost']:+.2f}% +- {100 * one['stderr']:.2f}% perplexity "
                  f"(one pass, {cache_windows} windows, optimizations {opt})", flush=True)
    calib = None
    for name, kwargs in ORT_METHODS.items():
        if only and name not in only:
            continue
        import vs_ort

        path = work / f"smollm2-kv-{name}.onnx"
        if kwargs["kind"] == "static" and calib is None:
            calib = kv_calibration_npz(model, work, samples)
        if not path.exists():
            done = vs_ort.run_worker(dict(kwargs, fp32=str(model), output=str(path), calib=calib), timeout=3600)
            if "error" in done:
                rows[name] = {"error": done["error"]}
                print(f"  {name:22s} failed: {done['error']}", flush=True)
                continue
        rows[name] = evaluate(path, ids, name)
    return {"windows": windows, "seq_len": seq_len, "calibration_windows": samples, "text": "default eval text",
            "rows": rows}


def evaluate(path: Path, ids: np.ndarray, name: str) -> dict:
    """Perplexity in one pass and through the decode path, optimizations off and on."""
    from qc.tools import metrics

    out = {}
    for opt in ("off", "on"):
        one_pass = metrics.perplexity(str(path), ids, progress=False, optimize=opt == "on")
        decode = metrics.decode_perplexity(str(path), ids, progress=False, optimize=opt == "on")
        out[opt] = {"one_pass": one_pass, "decode": decode, "decode_vs_one_pass": decode / one_pass - 1}
        print(f"  {name:22s} optimizations {opt:3s}: perplexity {one_pass:8.3f} one pass, {decode:8.3f} decode path "
              f"({100 * (decode / one_pass - 1):+.2f}%)", flush=True)
    return out


def kv8_cost(path: Path, kv8: Path, ids: np.ndarray, optimize: bool) -> dict:
    """Perplexity of *kv8* over *path*'s, minus 1, in one pass per window, and the standard error
    of that cost across windows (the same windows for both)."""
    from qc.tools.generate import OrtStepper, window_nll

    per_window = []
    for p in (path, kv8):
        stepper = OrtStepper.load(str(p), optimize=optimize)
        per_window.append(np.array([window_nll(stepper, [int(t) for t in w]).mean() for w in ids]))
    diff = per_window[1] - per_window[0]
    return {"cost": float(np.exp(diff.mean()) - 1), "stderr": float(diff.std(ddof=1) / np.sqrt(len(diff))),
            "windows": len(diff)}


def kv_calibration_npz(model: Path, work: Path, samples: int, seq_len: int = 128) -> str:
    """The calibration feeds qc's text calibration uses for a KV-cache decoder (per window of
    ``licenses``, a prefill and 4 decode steps against the float cache: qc.calib.data.kv_from_text),
    written as ``{i}/{input}`` arrays for onnxruntime's quantize_static."""
    path = work / f"kv-calib-{samples}x{seq_len}.npz"
    if not path.exists():
        import onnx

        from qc.calib.data import kv_from_text
        from qc.models import smollm2
        from qc.onnx.kv_layout import recognize
        from qc.onnx.reader import import_model

        proto = onnx.load(str(model))
        data = kv_from_text(import_model(proto), recognize(proto), "licenses", smollm2.tokenizer(),
                            seq_len=seq_len, samples=samples)
        arrays = {f"{i}/{k}": v for i in range(len(data)) for k, v in data.sample(i).items()}
        np.savez(path, **arrays)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exact", action="store_true")
    p.add_argument("--speed", action="store_true")
    p.add_argument("--schemes", action="store_true")
    p.add_argument("--all", action="store_true")
    p.add_argument("--work", type=Path, default=Path("out/generate"))
    p.add_argument("--windows", type=int, default=8, help="evaluation windows (default %(default)s)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--samples", type=int, default=16, help="calibration windows (default %(default)s)")
    p.add_argument("--cache-windows", type=int, default=32,
                   help="windows of the int8 cache's one-pass cost (default %(default)s)")
    p.add_argument("--only", nargs="+", choices=[*SCHEMES, *ORT_METHODS],
                   help="--schemes: these qc schemes and onnxruntime methods only (default: all)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    model = build(args.work)
    result: dict = {}
    if args.exact or args.all:
        print("greedy through the cache vs recomputed from the whole prefix (FP32):")
        result["exact"] = exact(model)
    if args.speed or args.all:
        print("decode speed by context (onnxruntime, x86):")
        result["speed"] = speed(model)
    if args.schemes or args.all:
        print(f"perplexity, {args.windows} windows x {args.seq_len} tokens:")
        result["schemes"] = schemes(model, args.work, args.windows, args.seq_len, args.samples, args.only,
                                    args.cache_windows)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
