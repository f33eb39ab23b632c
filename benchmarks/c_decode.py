"""qc's C decode runtime against llama.cpp: guest instructions per prefill token and per decoded
token of SmolLM2-135M (KV cache) under qemu-aarch64 -cpu cortex-a76, one thread, counted by qc's
insn_count plugin with the same marks and the same prompt as benchmarks/llama_cpp.py.

    python benchmarks/c_decode.py                       # qc w8a8 vs llama.cpp Q8_0, qc w4a8 vs Q4_0
    python benchmarks/c_decode.py --schemes w8a8 --no-llama --work /tmp/cdec

Each qc row compiles the KV-cache SmolLM2 (`qc models build smollm2-135m --kv-cache`) with
`qc compile --target cortex-a76 --quant SCHEME --calib-text licenses --samples 8 --emit-harness
--max-context 256` (prefill chunks of 16), builds the step harness with harness.c alone under
-DQC_PROFILE (the marks; the model's own per-call marks stay off) and runs `harness --bench N
PROMPT...`: prefill between marks 1 and 2, then N greedy steps. Weight bytes per token are the
bytes of the GEMM weights each decode step reads (report.json's weight blob less the float
embedding table, of which a step reads one row); cache bytes per token from report.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import arm_speed
import llama_cpp

ROOT = arm_speed.ROOT
PAIRS = {"w8a8": "Q8_0", "w4a8": "Q4_0"}


def qc(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "qc.cli", *args], check=True, cwd=ROOT)


def build(scheme: str, work: Path, context: int) -> Path:
    kv = work / "smollm2-kv.onnx"
    if not kv.exists():
        qc("models", "build", "smollm2-135m", "--kv-cache", "-o", str(kv))
    out = work / f"c-{scheme}"
    if not (out / "report.json").exists():
        qc("compile", str(kv), "--target", "cortex-a76", "--quant", scheme, "--calib-text", "licenses",
           "--samples", "8", "--holdout", "0", "-o", str(out), "--emit-harness", "--max-context", str(context),
           "--quiet")
    flags = next(line.split("=", 1)[1].strip() for line in (out / "Makefile").read_text().splitlines()
                 if line.startswith("CFLAGS ="))
    subprocess.run(["make", "-s", "-C", str(out), "libmodel.a"], check=True)
    (out / "harness.o").unlink(missing_ok=True)
    subprocess.run(["make", "-s", "-C", str(out), "harness.o", f"CFLAGS={flags} -DQC_PROFILE"], check=True)
    (out / "harness").unlink(missing_ok=True)
    subprocess.run(["make", "-s", "-C", str(out), "harness"], check=True)
    return out


def measure(out: Path, prompt: list[int], decode_tokens: int, cpu: str = "cortex-a76") -> dict:
    res = arm_speed.count([str(out / "harness"), "--bench", str(decode_tokens), *map(str, prompt)], cpu=cpu)
    if res["returncode"] != 0:
        raise RuntimeError(f"harness exited with {res['returncode']}: {res['stderr'][-2000:]}")
    at = {m["label"]: m["at"] for m in res["marks"]}
    prefill = arm_speed.delta(at[1], at[2])
    steps = [arm_speed.delta(at[i], at[i + 1]) for i in range(2, decode_tokens + 2)]
    report = json.loads((out / "report.json").read_text())
    embed = 49152 * 576 * 4  # the float32 token embedding table: one row read per token
    n = len(prompt)
    return {"prefill_per_token": llama_cpp._scaled(prefill, 1 / n), "decode_per_token": llama_cpp._mean(steps),
            "weights": report["weight_bytes"], "weights_read_per_token": report["weight_bytes"] - embed,
            "kv_bytes_per_token": report["decode"]["kv_cache_bytes"] // report["decode"]["max_context"],
            "generated": [int(t) for t in res["stdout"].strip().split(",") if t]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--schemes", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--decode-tokens", type=int, default=8)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "c-decode")
    ap.add_argument("--no-llama", action="store_true", help="qc's rows only")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    prompt = llama_cpp.prompt_ids(a.prompt_tokens)
    rows = []
    for scheme in a.schemes:
        r = {"qc": scheme, **measure(build(scheme, a.work, a.context), prompt, a.decode_tokens)}
        if not a.no_llama:
            r["llama"] = llama_cpp.measure(PAIRS[scheme], prompt, a.decode_tokens)
        rows.append(r)
    print(f"SmolLM2-135M, prompt {len(prompt)} tokens, {a.decode_tokens} decode steps, qemu-aarch64 -cpu cortex-a76, "
          "guest instructions per token (dot = SDOT)")
    print(f"{'':22} {'prefill/token':>14} {'decode/token':>14} {'dot/decode':>11} {'weights MB':>11} "
          f"{'read/token MB':>13} {'KV B/token':>10}")
    for r in rows:
        lines = [(f"qc C {r['qc']}", r)]
        if "llama" in r:
            ll = r["llama"]
            lines.append((f"llama.cpp {ll['quant']}", {
                "prefill_per_token": ll["prefill_per_token"], "decode_per_token": ll["decode_per_token"],
                "weights": ll["weights"]["total"], "weights_read_per_token": ll["weights"]["total"],
                "kv_bytes_per_token": ll["kv_bytes_per_token"]}))
        for name, x in lines:
            pre, dec = x["prefill_per_token"]["total"] / 1e6, x["decode_per_token"]["total"] / 1e6
            print(f"{name:22} {pre:13.2f}M {dec:13.2f}M "
                  f"{x['decode_per_token']['classes']['dot'] / 1e6:10.2f}M {x['weights'] / 1e6:11.1f} "
                  f"{x['weights_read_per_token'] / 1e6:13.1f} {x['kv_bytes_per_token']:10}")
        if "llama" in r:
            ll = r["llama"]
            print(f"{'  qc / llama.cpp':22} {r['prefill_per_token']['total'] / ll['prefill_per_token']['total']:14.2f} "
                  f"{r['decode_per_token']['total'] / ll['decode_per_token']['total']:14.2f}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
