"""qc's C decode runtime against llama.cpp: guest instructions per prefill token and per decoded
token of SmolLM2-135M (KV cache) under qemu-aarch64 -cpu cortex-a76, one thread, counted by qc's
insn_count plugin with the same marks and the same prompt as benchmarks/llama_cpp.py.

    python benchmarks/c_decode.py                       # qc w8a8 vs llama.cpp Q8_0, qc w4a8 vs Q4_0
    python benchmarks/c_decode.py --schemes w8a8 --no-llama --work /tmp/cdec
    python benchmarks/c_decode.py --schemes w4a8 --no-llama --work /tmp/cdec --profile   # per kernel

Each qc row compiles the KV-cache SmolLM2 (`qc models build smollm2-135m --kv-cache`) with
`qc compile --target cortex-a76 --quant SCHEME --calib-text licenses --samples 8 --emit-harness
--max-context 256` (prefill chunks of 16), builds the step harness with harness.c alone under
-DQC_PROFILE (the marks; the model's own per-call marks stay off) and runs `harness --bench N
PROMPT...`: prefill between marks 1 and 2 (`prefill_last_run` per chunk: the last token's
logits only, as llama.cpp), then N greedy steps. Weight bytes per token are the
bytes of the GEMM weights each decode step reads (report.json's weight blob less the float
embedding table, of which a step reads one row); cache bytes per token from report.json.
`--profile` builds model.c and prefill*.c with -DQC_PROFILE as well (a mark before each kernel
call, labelled by its index) and prints the counts per kernel per prefill / decode token.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import arm_speed
import llama_cpp

ROOT = arm_speed.ROOT
PAIRS = {"w8a8": "Q8_0", "w4a8": "Q4_0", "w4a8-token": "Q4_0"}
"""qc's scheme -> llama.cpp's type of the same weight width; w4a8-token is ``--quant w4a8
--act-granularity token`` (one activation scale per token, qc_gemm_s4a8r)."""


def qc(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "qc.cli", *args], check=True, cwd=ROOT)


def build(scheme: str, work: Path, context: int, profile: bool = False) -> Path:
    kv = work / "smollm2-kv.onnx"
    if not kv.exists():
        qc("models", "build", "smollm2-135m", "--kv-cache", "-o", str(kv))
    out = work / f"c-{scheme}"
    if not (out / "report.json").exists():
        quant = ["--quant", "w4a8", "--act-granularity", "token"] if scheme == "w4a8-token" else ["--quant", scheme]
        qc("compile", str(kv), "--target", "cortex-a76", *quant, "--calib-text", "licenses",
           "--samples", "8", "--holdout", "0", "-o", str(out), "--emit-harness", "--max-context", str(context),
           "--quiet")
    flags = next(line.split("=", 1)[1].strip() for line in (out / "Makefile").read_text().splitlines()
                 if line.startswith("CFLAGS ="))
    for f in ("model.o", "prefill.o", "prefill_last.o", "libmodel.a", "harness.o"):  # with or without the marks
        (out / f).unlink(missing_ok=True)
    subprocess.run(["make", "-s", "-C", str(out), "libmodel.a"] + ([f"CFLAGS={flags} -DQC_PROFILE"] if profile else []),
                   check=True)
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


def _call_kernels(src: Path) -> dict[int, str]:
    """label -> kernel name of the QC_PROF(i) marks of a generated model.c / prefill.c (the comment
    line after each mark: "/* node (Op): kernel */"; the last mark, before returning, is "end")."""
    lines = src.read_text().splitlines()
    names = {}
    for i, line in enumerate(lines):
        m = re.match(r"\s*QC_PROF\((\d+)\);", line)
        if m:
            c = re.search(r":\s*(.*?)\s*\*/", lines[i + 1]) if i + 1 < len(lines) else None
            names[int(m.group(1))] = c.group(1) if c else "end"
    return names


def profile(out: Path, prompt: list[int], decode_tokens: int, cpu: str = "cortex-a76") -> dict:
    """Counts per kernel per prefill token and per decode token (a build with --profile): the marks
    are harness 1, the prefill chunks' call marks, harness 2, then per step the model's call
    marks and harness 3 + k; the interval after a call mark is that call's."""
    res = arm_speed.count([str(out / "harness"), "--bench", str(decode_tokens), *map(str, prompt)], cpu=cpu)
    if res["returncode"] != 0 or res.get("lost_marks"):
        raise RuntimeError(f"harness exited with {res['returncode']} ({res.get('lost_marks')} marks lost)")
    pre = out / "prefill_last.c"  # the greedy prompt wants the last token's logits only
    pre_names, dec_names = _call_kernels(pre if pre.exists() else out / "prefill.c"), _call_kernels(out / "model.c")
    pre_end, dec_end = max(pre_names), max(dec_names)
    marks = res["marks"]
    assert marks[0]["label"] == 1, marks[0]
    # which marks are the harness's: the first; in prefill, a 2 after a chunk's end mark (the next
    # chunk starts at 0); in decode, every mark after the model's end mark
    phases, harness = [], [True]
    phase = "prefill"
    for a, b in zip(marks, marks[1:]):
        phases.append(phase)
        if harness[-1]:
            harness.append(False)
        elif phase == "prefill" and a["label"] == pre_end and b["label"] == 2:
            harness.append(True)
            phase = "decode"
        else:
            harness.append(phase == "decode" and a["label"] == dec_end)
    sums: dict[str, dict[str, dict]] = {"prefill": {}, "decode": {}}
    for k, (a, b) in enumerate(zip(marks, marks[1:])):
        ph = phases[k]
        names = pre_names if ph == "prefill" else dec_names
        key = "harness" if harness[k] else names[a["label"]]
        d = arm_speed.delta(a["at"], b["at"])
        acc = sums[ph].setdefault(key, {"total": 0, "classes": dict.fromkeys(d["classes"], 0)})
        acc["total"] += d["total"]
        for c, v in d["classes"].items():
            acc["classes"][c] += v
    n = {"prefill": len(prompt), "decode": decode_tokens}
    return {ph: {k: llama_cpp._scaled(v, 1 / n[ph]) for k, v in rows.items()} for ph, rows in sums.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--schemes", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--decode-tokens", type=int, default=8)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "c-decode")
    ap.add_argument("--no-llama", action="store_true", help="qc's rows only")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--profile", action="store_true", help="counts per kernel instead (marks before every call)")
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    prompt = llama_cpp.prompt_ids(a.prompt_tokens)
    rows = []
    if a.profile:
        for scheme in a.schemes:
            p = profile(build(scheme, a.work, a.context, profile=True), prompt, a.decode_tokens)
            for ph, items in p.items():
                tot = sum(v["total"] for v in items.values())
                print(f"qc C {scheme} {ph}: {tot / 1e6:.2f} M instructions per token (with the marks' own)")
                for k, v in sorted(items.items(), key=lambda kv: -kv[1]["total"]):
                    by = sorted(v["classes"].items(), key=lambda t: -t[1])
                    cl = ", ".join(f"{c} {x / 1e6:.2f}" for c, x in by if x)
                    print(f"  {k:34s} {v['total'] / 1e6:8.3f} M  {cl}")
            rows.append({"qc": scheme, "profile": p})
        if a.json:
            a.json.write_text(json.dumps(rows, indent=1) + "\n")
        return 0
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
