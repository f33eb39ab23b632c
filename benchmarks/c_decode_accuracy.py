"""qc's C decode runtime against onnxruntime on the same quantized ONNX (issue 16, point 4):
SmolLM2-135M with a KV cache under qemu-aarch64 -cpu cortex-a76, token agreement and perplexity
through the decode path.

    python benchmarks/c_decode_accuracy.py --work /tmp/cdec              # builds w8a8 and w4a8 (c_decode.py)
    python benchmarks/c_decode_accuracy.py --dirs /tmp/c-w8a8 /tmp/c-w4a8  # C output directories

For each C directory (its model.onnx is the quantized ONNX the C was lowered from) and each
onnxruntime setting (graph optimizations off: the QDQ arithmetic in float; on: its fused integer
kernels):

- greedy: 64 new tokens from each of 3 chat prompts, C and onnxruntime each from its own
  history; the share of the 64 positions where they agree and the first divergence;
- teacher-forced: along onnxruntime's greedy continuation, the share of those 64 positions where
  the C's argmax equals onnxruntime's (every step sees the same history);
- perplexity through the decode path (one token per step through the cache) on ``--windows``
  windows of the default evaluation text, C against onnxruntime.

The same greedy and teacher-forced figures for onnxruntime against itself (optimizations on vs
off) show how far two correct runtimes of one quantized model drift apart: a quantized decoder
turns float rounding differences (summation order, float16 accumulation, exp) into one-step
code flips that grow through the layers.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
PROMPTS = ("What is the capital of France?", "Write a haiku about the sea.",
           "Explain what a compiler does in two sentences.")


def compare(directory: Path, new_tokens: int, windows: int, seq_len: int) -> dict:
    import math

    from qc.backends.c.decode import open_stepper
    from qc.data import text as textdata
    from qc.models import smollm2
    from qc.tools.generate import OrtStepper, decode_nll, generate

    tok = smollm2.tokenizer()
    prompts = [tok.encode(smollm2.chat_prompt(p)).ids for p in PROMPTS]
    texts = textdata.token_windows(textdata.resolve_text(None), tok, seq_len, samples=windows)
    c = open_stepper(str(directory))
    try:
        c_greedy = [generate(c, ids, new_tokens).generated_ids for ids in prompts]
        nll, count = 0.0, 0
        for window in texts:
            value, n = decode_nll(c, [int(t) for t in window])
            nll, count = nll + value, count + n
        c_ppl = math.exp(nll / count)
        out: dict = {"c_decode_perplexity": c_ppl}
        for opt in ("off", "on"):
            ort = OrtStepper.load(str(directory / "model.onnx"), optimize=opt == "on")
            same = forced = total = 0
            first = []
            for ids, got in zip(prompts, c_greedy):
                want = generate(ort, ids, new_tokens).generated_ids
                same += sum(a == b for a, b in zip(got, want))
                total += len(want)
                first.append(next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(want)))
                history = ids + want[:-1]
                ort.reset()
                c.reset()
                a = ort.step(history, all_logits=True)[len(ids) - 1:]
                b = c.step(history, all_logits=True)[len(ids) - 1:]
                forced += int((a.argmax(1) == b.argmax(1)).sum())
            nll, count = 0.0, 0
            for window in texts:
                value, n = decode_nll(ort, [int(t) for t in window])
                nll, count = nll + value, count + n
            ort_ppl = math.exp(nll / count)
            out[opt] = {"greedy_same": same / total, "first_divergence": first, "teacher_forced_same": forced / total,
                        "ort_decode_perplexity": ort_ppl, "c_vs_ort_perplexity": c_ppl / ort_ppl - 1}
            print(f"  {directory.name} vs onnxruntime (optimizations {opt}): greedy {100 * same / total:.1f}% of "
                  f"{total} tokens (first divergence {first}), teacher-forced {100 * forced / total:.1f}%, "
                  f"decode-path perplexity C {c_ppl:.3f} vs {ort_ppl:.3f} ({100 * (c_ppl / ort_ppl - 1):+.2f}%)",
                  flush=True)
        out["ort_on_vs_off"] = _ort_self(directory, prompts, new_tokens)
        return out
    finally:
        c.close()


def _ort_self(directory: Path, prompts: list[list[int]], new_tokens: int) -> dict:
    from qc.tools.generate import OrtStepper, generate

    off = OrtStepper.load(str(directory / "model.onnx"), optimize=False)
    on = OrtStepper.load(str(directory / "model.onnx"), optimize=True)
    same = forced = total = 0
    for ids in prompts:
        want = generate(off, ids, new_tokens).generated_ids
        got = generate(on, ids, new_tokens).generated_ids
        same += sum(a == b for a, b in zip(got, want))
        total += len(want)
        history = ids + want[:-1]
        off.reset()
        on.reset()
        a = off.step(history, all_logits=True)[len(ids) - 1:]
        b = on.step(history, all_logits=True)[len(ids) - 1:]
        forced += int((a.argmax(1) == b.argmax(1)).sum())
    print(f"  {directory.name}: onnxruntime optimizations on vs off: greedy {100 * same / total:.1f}%, "
          f"teacher-forced {100 * forced / total:.1f}%", flush=True)
    return {"greedy_same": same / total, "teacher_forced_same": forced / total}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dirs", nargs="+", type=Path, help="C output directories (default: build with c_decode.py)")
    ap.add_argument("--schemes", nargs="+", default=["w8a8", "w4a8"])
    ap.add_argument("--work", type=Path, default=Path("out/c-decode"))
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    dirs = args.dirs
    if not dirs:
        import c_decode

        dirs = [c_decode.build(s, args.work, 320) for s in args.schemes]
    result = {str(d): compare(d, args.new_tokens, args.windows, args.seq_len) for d in dirs}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
