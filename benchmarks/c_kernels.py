"""Instructions per multiply-accumulate of qc_gemm_s8 (backends/c/runtime) under qemu.

    python benchmarks/c_kernels.py --check               # 128x576x1536, all rows (~5 min)
    python benchmarks/c_kernels.py --shape 32x576x384 --variants portable,neon --check

Method: Debian's qemu has no TCG plugins, so the count comes from QEMU's own logs. A small
program (below) fills A and W in-process and calls qc_gemm_s8 once. It runs under
`qemu-aarch64 -cpu <cpu> -d in_asm,exec,nochain`: `in_asm` prints every translated block with
its instructions, `exec` (with chaining off, so every execution of a block is logged) prints
one line per executed block with the block's address and symbol. The executed instructions of
qc_gemm_s8 are the sum, over the exec lines whose symbol is qc_gemm_s8, of the length of that
block. A block left early by an exception would be over-counted; a GEMM takes none. `--check`
repeats the count with `-singlestep` (one instruction per block, so the count is the
number of lines) on a small shape and asserts both methods agree. The portable kernel does the
same work for every row of A, so it is counted at M=8 (--portable-rows) and scaled to the full
M: a full-size run would log about 10^8 blocks.

The Cortex-M rows (M4: portable, DSP; M55: portable, Helium) run under qemu-system-arm with
semihosting, at M=4 (--mcu-rows), and are always counted with -singlestep: there, block
counting disagreed with single-stepping (QEMU retranslates some M-profile blocks with other
flags: low-overhead loops, tail predication), so block lengths are not unique per address.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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

PROGRAM = r"""
#include <stdlib.h>
#include "qc_kernels.h"
/* argv: M N K packed_size. Fills A and the packed W with an LCG, one qc_gemm_s8 call. */
int main(int argc, char **argv)
{
    int M, N, K;
    size_t i, wlen;
    uint32_t s = 12345u;
    int8_t *A, *W;
    int32_t *C;
    if (argc != 5) {
        return 2;
    }
    M = atoi(argv[1]); N = atoi(argv[2]); K = atoi(argv[3]); wlen = (size_t)atol(argv[4]);
    A = malloc((size_t)M * K); W = malloc(wlen); C = malloc((size_t)M * N * 4);
    if (!A || !W || !C) {
        return 3;
    }
    for (i = 0; i < (size_t)M * K; ++i) { s = s * 1664525u + 1013904223u; A[i] = (int8_t)(s >> 24); }
    for (i = 0; i < wlen; ++i) { s = s * 1664525u + 1013904223u; W[i] = (int8_t)(s >> 24); }
    qc_gemm_s8(M, N, K, A, W, C);
    return C[0] == 0x7fffffff ? 1 : 0;   /* keeps the call; never true for int8 sums this size */
}
"""

_IN = re.compile(r"^0x([0-9a-f]+):\s+[0-9a-f]{4}")
_TRACE = re.compile(r"^Trace \d+: 0x[0-9a-f]+ \[[0-9a-f]+/([0-9a-f]+)/[0-9a-f]+/[0-9a-f]+\] (\S*)")


def build(row: str, workdir: Path) -> Path:
    kind, variant, cpu = VARIANTS[row]
    src = workdir / "bench_gemm.c"
    src.write_text(PROGRAM)
    sources = [src, *sorted(toolchain.RUNTIME.glob("qc_gemm_s8*.c"))]
    return toolchain.build(sources, workdir / f"bench-{row}", kind, cpu,
                           extra_flags=packing.variant_macros(variant))


def count(exe: Path, row: str, M: int, N: int, K: int, single_step: bool = False) -> int:
    """Executed instructions inside qc_gemm_s8 for one M x N x K call."""
    kind, variant, cpu = VARIANTS[row]
    args = [str(M), str(N), str(K), str(packing.packed_size_s8(K, N, variant))]
    flags = ["-singlestep", "-d", "exec,nochain"] if single_step else ["-d", "in_asm,exec,nochain"]
    base = toolchain.run_command(exe, kind, cpu, args)
    cmd = [base[0], *flags, *base[1:]]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sizes: dict[int, int] = {}
    execs: Counter = Counter()
    block_start: int | None = None
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("Trace"):
            m = _TRACE.match(line)
            if m and m.group(2) == "qc_gemm_s8":
                execs[int(m.group(1), 16)] += 1
            block_start = None
        elif line.startswith("IN:"):
            block_start = -1
        elif block_start is not None:
            m = _IN.match(line)
            if m:
                pc = int(m.group(1), 16)
                if block_start == -1:
                    block_start = pc
                    sizes[block_start] = 0
                sizes[block_start] += 1
    if proc.wait() != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with {proc.returncode}")
    if single_step:
        return sum(execs.values())
    return sum(n * sizes[pc] for pc, n in execs.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="128x576x1536", help="MxKxN (default 128x576x1536)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"rows, from {','.join(VARIANTS)}")
    ap.add_argument("--mcu-rows", type=int, default=4,
                    help="M used for the Cortex-M rows (their tiles are 1 or 4 rows high); 0 = the full M")
    ap.add_argument("--portable-rows", type=int, default=8,
                    help="M used for the portable variant (its cost per row is the same for every "
                         "row, and a full-size run logs ~10^8 blocks); 0 = the full M")
    ap.add_argument("--check", action="store_true",
                    help="cross-check the block count against -singlestep on 8x64x32")
    args = ap.parse_args(argv)
    M, K, N = (int(x) for x in args.shape.lower().split("x"))
    rows_wanted = args.variants.split(",")
    for kind in sorted({VARIANTS[r][0] for r in rows_wanted}):
        if toolchain.find_tools(kind) is None:
            print(toolchain.missing_reason(kind), file=sys.stderr)
            return 2
    macs = M * N * K
    print(f"qc_gemm_s8, M={M} K={K} N={N} ({macs:,} MACs), instructions counted under qemu")
    print("| row | variant | runs on | instructions | instructions / MAC | MACs / instruction |")
    print("|---|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows_wanted:
            kind, variant, cpu = VARIANTS[row]
            exe = build(row, Path(tmp))
            single = kind == "cortex-m"
            if args.check and not single:
                a, b = count(exe, row, 8, 32, 64), count(exe, row, 8, 32, 64, single_step=True)
                assert a == b, f"{row}: block count {a} != single-step count {b}"
            rows = M
            if kind == "cortex-m" and args.mcu_rows:
                rows = args.mcu_rows
            elif row == "portable" and args.portable_rows:
                rows = args.portable_rows
            n = count(exe, row, rows, N, K, single_step=single)
            per_mac = n / (rows * N * K)
            note = f" (measured at M={rows})" if rows != M else ""
            where = "qemu-aarch64 -cpu" if kind == "aarch64" else "qemu-system-arm, cpu"
            print(f"| {row}{note} | {variant} | {where} {cpu} | {round(per_mac * macs):,} "
                  f"| {per_mac:.4f} | {1 / per_mac:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
