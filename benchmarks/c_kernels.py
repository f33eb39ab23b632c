"""Instructions per multiply-accumulate of the int8 GEMM (backends/c/runtime) under qemu.

    python benchmarks/c_kernels.py                        # 128x576x1536, every row (~1 min)
    python benchmarks/c_kernels.py --shape 1x576x1536 --variants dotprod,i8mm --epilogue f32
    python benchmarks/c_kernels.py --check                # also cross-check the counter

Method: the qemu TCG plugin benchmarks/arm/insn_count.c (built by benchmarks/arm_speed.py)
counts every executed guest instruction, by class on aarch64 (dot, mmla, fmla_vec,
fmadd_scalar, ldst, simd_fp_other, other). A small program (below) fills A, W and the
epilogue arrays in-process with an LCG and calls the kernel once; it runs twice, with and
without the call, and the difference of the two counts is the kernel's (the rest of the
program is the same instructions both times: qemu is deterministic). The Cortex-M rows run
the same way under qemu-system-arm, which takes the same plugin; there only the total is
meaningful (the classes decode A64 opcodes). `--check` compares the plugin's difference with
one from `-singlestep -d exec,nochain` (one logged line per instruction) on 8x64x32.

--epilogue: i32 = qc_gemm_s8 (int32 out), f32 = qc_gemm_s8_f32 with per-column scale and
int32 bias, q8 = qc_gemm_s8_q8 per-column requantization; the epilogue is part of the count.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from arm_speed import CLASSES, build_plugin  # noqa: E402

from qc.backends.c import packing, toolchain  # noqa: E402

# row name -> (toolchain kind, kernel variant, cpu the binary is compiled for and runs on)
VARIANTS = {"portable": ("aarch64", "portable", "cortex-a53"),
            "neon": ("aarch64", "neon", "cortex-a53"),
            "dotprod": ("aarch64", "dotprod", "cortex-a76"),
            "i8mm": ("aarch64", "i8mm", "max"),
            "m4-portable": ("cortex-m", "portable", "cortex-m4"),
            "m4-dsp": ("cortex-m", "dsp", "cortex-m4"),
            "m55-portable": ("cortex-m", "portable", "cortex-m55"),
            "m55-mve": ("cortex-m", "mve", "cortex-m55")}
EPILOGUES = {"i32": 0, "f32": 1, "q8": 2}

PROGRAM = r"""
#include <stdlib.h>
#include "qc_kernels.h"
/* argv: M N K packed_size epilogue(0 i32, 1 f32, 2 q8) call(0/1). Fills A, the packed W and
   per-column epilogue arrays with an LCG, then one GEMM call when call = 1. */
int main(int argc, char **argv)
{
    int M, N, K, kind, call;
    size_t i, wlen;
    uint32_t s = 12345u;
    int8_t *A, *W, *Q;
    int32_t *C, *bias, *mult, *shift;
    float *scale, *F;
    struct qc_epilogue ep = {0};
    if (argc != 7) {
        return 2;
    }
    M = atoi(argv[1]); N = atoi(argv[2]); K = atoi(argv[3]); wlen = (size_t)atol(argv[4]);
    kind = atoi(argv[5]); call = atoi(argv[6]);
    A = malloc((size_t)M * K); W = malloc(wlen); C = calloc((size_t)M * N, 4);
    F = calloc((size_t)M * N, 4); Q = calloc((size_t)M * N, 1);
    bias = malloc((size_t)N * 4); mult = malloc((size_t)N * 4); shift = malloc((size_t)N * 4);
    scale = malloc((size_t)N * 4);
    if (!A || !W || !C || !F || !Q || !bias || !mult || !shift || !scale) {
        return 3;
    }
    for (i = 0; i < (size_t)M * K; ++i) { s = s * 1664525u + 1013904223u; A[i] = (int8_t)(s >> 24); }
    for (i = 0; i < wlen; ++i) { s = s * 1664525u + 1013904223u; W[i] = (int8_t)(s >> 24); }
    for (i = 0; i < (size_t)N; ++i) {
        s = s * 1664525u + 1013904223u;
        bias[i] = (int32_t)(s >> 16) - 32768; mult[i] = 1073741824 + (int32_t)(s >> 4);
        shift[i] = -8 - (int32_t)(s >> 30); scale[i] = 1e-4f * (float)(1 + (s >> 28));
    }
    ep.bias = bias; ep.per_channel = 1; ep.scale = scale; ep.mult = mult; ep.shift = shift;
    ep.out_zp = 3; ep.qmin = -128; ep.qmax = 127;
    if (call && kind == 0) {
        qc_gemm_s8(M, N, K, A, W, C);
    } else if (call && kind == 1) {
        qc_gemm_s8_f32(M, N, K, A, K, W, &ep, F, N);
    } else if (call) {
        qc_gemm_s8_q8(M, N, K, A, K, W, &ep, Q, N);
    }
    /* keeps the call; never true for int8 sums this size */
    return (C[0] == 0x7fffffff || F[0] == 1e30f || Q[0] == 99) ? 1 : 0;
}
"""


def build(row: str, workdir: Path) -> Path:
    kind, variant, cpu = VARIANTS[row]
    src = workdir / "bench_gemm.c"
    src.write_text(PROGRAM)
    sources = [src, *sorted(toolchain.RUNTIME.glob("qc_gemm_s8*.c")), toolchain.RUNTIME / "qc_quant.c"]
    return toolchain.build(sources, workdir / f"bench-{row}", kind, cpu,
                           extra_flags=packing.variant_macros(variant))


def _args(row: str, M: int, N: int, K: int, epilogue: str, call: bool) -> list[str]:
    variant = VARIANTS[row][1]
    return [str(M), str(N), str(K), str(packing.packed_size_s8(K, N, variant)),
            str(EPILOGUES[epilogue]), str(int(call))]


def _plugin_run(exe: Path, row: str, args: list[str], plugin: Path) -> dict:
    kind, _, cpu = VARIANTS[row]
    base = toolchain.run_command(exe, kind, cpu, args)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "counts.json"
        cmd = [base[0], "-plugin", f"{plugin},out={out}", *base[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"{' '.join(cmd)} failed with {proc.returncode}: {proc.stderr}")
        return json.loads(out.read_text())["exit"]


def count(exe: Path, row: str, M: int, N: int, K: int, epilogue: str = "i32",
          plugin: Path | None = None) -> dict:
    """{"total", "classes"}: the instructions of one M x N x K kernel call (run with the call
    minus run without)."""
    plugin = plugin or build_plugin()
    a = _plugin_run(exe, row, _args(row, M, N, K, epilogue, True), plugin)
    b = _plugin_run(exe, row, _args(row, M, N, K, epilogue, False), plugin)
    return {"total": a["total"] - b["total"],
            "classes": {c: a["classes"][c] - b["classes"][c] for c in CLASSES}}


def count_single_step(exe: Path, row: str, M: int, N: int, K: int, epilogue: str = "i32") -> int:
    """The same difference from qemu's own log: -singlestep makes every block one instruction
    and -d exec,nochain logs each execution."""
    kind, _, cpu = VARIANTS[row]
    totals = []
    for call in (True, False):
        base = toolchain.run_command(exe, kind, cpu, _args(row, M, N, K, epilogue, call))
        cmd = [base[0], "-singlestep", "-d", "exec,nochain", *base[1:]]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        totals.append(sum(1 for line in proc.stderr if line.startswith("Trace")))
        if proc.wait() != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed with {proc.returncode}")
    return totals[0] - totals[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="128x576x1536", help="MxKxN (default 128x576x1536)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"rows, from {','.join(VARIANTS)}")
    ap.add_argument("--epilogue", default="i32", choices=sorted(EPILOGUES))
    ap.add_argument("--mcu-rows", type=int, default=8,
                    help="M used for the Cortex-M rows (cost per row is the same for every row); 0 = the full M")
    ap.add_argument("--portable-rows", type=int, default=8,
                    help="M used for the aarch64 portable row; 0 = the full M")
    ap.add_argument("--check", action="store_true",
                    help="cross-check the plugin against -singlestep on 8x64x32")
    args = ap.parse_args(argv)
    M, K, N = (int(x) for x in args.shape.lower().split("x"))
    rows_wanted = args.variants.split(",")
    for kind in sorted({VARIANTS[r][0] for r in rows_wanted}):
        if toolchain.find_tools(kind) is None:
            print(toolchain.missing_reason(kind), file=sys.stderr)
            return 2
    plugin = build_plugin()
    macs = M * N * K
    print(f"int8 GEMM ({args.epilogue} out), M={M} K={K} N={N} ({macs:,} MACs), guest instructions "
          "counted by the insn_count plugin")
    print("| row | variant | runs on | instructions | instructions / MAC | classes (aarch64) |")
    print("|---|---|---|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows_wanted:
            kind, variant, cpu = VARIANTS[row]
            exe = build(row, Path(tmp))
            if args.check:
                a = count(exe, row, 8, 32, 64, args.epilogue, plugin)["total"]
                b = count_single_step(exe, row, 8, 32, 64, args.epilogue)
                assert a == b, f"{row}: plugin count {a} != single-step count {b}"
            rows = M
            if kind == "cortex-m" and args.mcu_rows:
                rows = min(M, args.mcu_rows)
            elif row == "portable" and args.portable_rows:
                rows = min(M, args.portable_rows)
            c = count(exe, row, rows, N, K, args.epilogue, plugin)
            per_mac = c["total"] / (rows * N * K)
            note = f" (measured at M={rows})" if rows != M else ""
            where = "qemu-aarch64 -cpu" if kind == "aarch64" else "qemu-system-arm, cpu"
            cls = ", ".join(f"{k} {v / (rows * N * K):.4f}" for k, v in c["classes"].items() if v) \
                if kind == "aarch64" else "-"
            print(f"| {row}{note} | {variant} | {where} {cpu} | {round(per_mac * macs):,} "
                  f"| {per_mac:.4f} | {cls} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
