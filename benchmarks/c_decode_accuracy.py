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
    from qc.backends.c.decode import open_stepper
    from qc.data import text as textdata
    from qc.models import smollm2
    from qc.tools.generate import OrtStepper, generate

    tok = smollm2.tokenizer()
    prompts = [tok.encode(smollm2.chat_prompt(p)).ids for p in PROMPTS]
    texts = textdata.token_windows(textdata.resolve_text(None), tok, seq_len, samples=windows)
    c = open_stepper(str(directory))
    try:
        c_greedy = [generate(c, ids, new_tokens).generated_ids for ids in prompts]  # once, for both settings
        c_ppl = _decode_perplexity(c, texts)
        out: dict = {"c_decode_perplexity": c_ppl}
        for opt in ("off", "on"):
            ort = OrtStepper.load(str(directory / "model.onnx"), optimize=opt == "on")
            agree = _agreement(ort, c, prompts, new_tokens, c_greedy)
            ort_ppl = _decode_perplexity(ort, texts)
            out[opt] = dict(agree, ort_decode_perplexity=ort_ppl, c_vs_ort_perplexity=c_ppl / ort_ppl - 1)
            print(f"  {directory.name} vs onnxruntime (optimizations {opt}): greedy "
                  f"{100 * agree['greedy_same']:.1f}% of {agree['tokens']} tokens (first divergence "
                  f"{agree['first_divergence']}), teacher-forced {100 * agree['teacher_forced_same']:.1f}%, "
                  f"decode-path perplexity C {c_ppl:.3f} vs {ort_ppl:.3f} ({100 * (c_ppl / ort_ppl - 1):+.2f}%)",
                  flush=True)
        path = str(directory / "model.onnx")
        self_agree = _agreement(OrtStepper.load(path, optimize=False), OrtStepper.load(path, optimize=True), prompts,
                                new_tokens)
        print(f"  {directory.name}: onnxruntime optimizations on vs off: greedy "
              f"{100 * self_agree['greedy_same']:.1f}%, teacher-forced "
              f"{100 * self_agree['teacher_forced_same']:.1f}%", flush=True)
        out["ort_on_vs_off"] = self_agree
        return out
    finally:
        c.close()


def _agreement(ref, other, prompts: list[list[int]], new_tokens: int,
               other_greedy: list[list[int]] | None = None) -> dict:
    """Greedy tokens of ``other`` against ``ref``'s (each from its own history; ``other_greedy``:
    already generated), and ``other``'s argmax along ``ref``'s greedy continuation."""
    from qc.tools.generate import generate

    same = forced = total = 0
    first = []
    for index, ids in enumerate(prompts):
        want = generate(ref, ids, new_tokens).generated_ids
        got = other_greedy[index] if other_greedy is not None else generate(other, ids, new_tokens).generated_ids
        same += sum(a == b for a, b in zip(got, want))
        total += len(want)
        first.append(next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(want)))
        history = ids + want[:-1]
        ref.reset()
        other.reset()
        a = ref.step(history, all_logits=True)[len(ids) - 1:]
        b = other.step(history, all_logits=True)[len(ids) - 1:]
        forced += int((a.argmax(1) == b.argmax(1)).sum())
    return {"greedy_same": same / total, "first_divergence": first, "teacher_forced_same": forced / total,
            "tokens": total}


def _decode_perplexity(stepper, texts) -> float:
    """Perplexity through the decode path (qc.tools.metrics.decode_perplexity for any stepper)."""
    import math

    from qc.tools.generate import decode_nll

    nll, count = 0.0, 0
    for window in texts:
        value, n = decode_nll(stepper, [int(t) for t in window])
        nll, count = nll + value, count + n
    return math.exp(nll / count)


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
