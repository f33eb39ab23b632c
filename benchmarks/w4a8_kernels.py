"""Guest instructions per MAC of the W4A8 kernels (qc_quantize_q8b32 + qc_gemm_s4a8) against the
int8 GEMM (qc_gemm_s8, + qc_dequant_acc_f32) and the weight-only int4 kernel (qc_matmul_f32_s4)
under qemu-aarch64, with the instruction classes.

    python benchmarks/w4a8_kernels.py                       # 32x576x1536 and 1x576x1536, a76 + max
    python benchmarks/w4a8_kernels.py --shape 1x576x1536 --cpu max
    python benchmarks/w4a8_kernels.py --zero-points     # asymmetric blocks, as --quant w4a8 writes

One static binary per variant (dotprod for cortex-a76, i8mm for max) runs each kernel once between
getpid() syscalls; benchmarks/arm_speed.py's plugin counts between them (marksys=172).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from arm_speed import count, delta, fmt  # noqa: E402

from qc.backends.c import packing, packing_s4, toolchain  # noqa: E402

SYS_GETPID = 172
CPU_VARIANT = {"cortex-a76": "dotprod", "max": "i8mm", "cortex-a53": "neon"}

DRIVER = r"""
#define _DEFAULT_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
#include "qc_kernels.h"
static void *load(const char *path, size_t n) {
    FILE *f = fopen(path, "rb"); void *p = malloc(n ? n : 1);
    if (!f || fread(p, 1, n, f) != n) { fprintf(stderr, "%s\n", path); exit(3); }
    fclose(f); return p;
}
#define MARK() syscall(SYS_getpid)
int main(int argc, char **argv) {
    int M, N, K;
    if (argc < 14) return 2;
    M = atoi(argv[1]); N = atoi(argv[2]); K = atoi(argv[3]);
    int nb = (K + 31) / 32;
    size_t wlen = (size_t)atol(argv[4]), s8len = (size_t)atol(argv[5]), nws = (size_t)atol(argv[13]);
    float *A = load(argv[6], (size_t)M * K * 4);
    uint8_t *W = load(argv[7], wlen);
    float *ws = load(argv[8], nws * 4);
    int8_t *W8 = load(argv[9], s8len), *A8 = malloc((size_t)M * K);
    uint8_t *W4 = load(argv[10], (size_t)K * N / 2), *Z4 = load(argv[11], (size_t)nb * N / 2);
    float *S4 = load(argv[12], (size_t)nb * N * 4);
    int8_t *zp = argc > 14 ? load(argv[14], nws) : NULL;
    /* room for every variant's layout (i8mm: row pairs, sa / suma twice) */
    int8_t *qa = malloc((size_t)(M + 1) * nb * 32);
    float *sa = malloc((size_t)(M + 1) * nb * 8), *out = malloc((size_t)M * N * 4), *scale = malloc((size_t)N * 4);
    int32_t *suma = malloc((size_t)(M + 1) * nb * 8), *C = malloc((size_t)M * N * 4), *bias = calloc((size_t)N, 4);
    int i;
    for (i = 0; i < M * K; ++i) A8[i] = (int8_t)(i * 7 % 255 - 127);
    for (i = 0; i < N; ++i) scale[i] = 0.001f;
    MARK();
    qc_quantize_q8b32(M, K, A, qa, sa, suma);
    MARK();
    qc_gemm_s4a8(M, N, K, qa, sa, suma, W, ws, zp, NULL, out);
    MARK();
    qc_gemm_s8(M, N, K, A8, W8, C);
    MARK();
    qc_dequant_acc_f32(M, N, C, bias, scale, 1, NULL, out);
    MARK();
    qc_matmul_f32_s4(M, N, K, A, W4, S4, Z4, 32, out);
    MARK();
    printf("%g %d\n", (double)out[0], C[0]);
    return 0;
}
"""


def measure(M: int, N: int, K: int, cpu: str, work: Path, zero_points: bool = False) -> dict:
    variant = CPU_VARIANT[cpu]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K)).astype(np.float32)
    q = rng.integers(0, 16, (K, N)).astype(np.uint8)
    s = (rng.random((-(-K // 32), N)) * 0.01).astype(np.float32)
    z = rng.integers(0, 16, s.shape).astype(np.uint8) if zero_points else None
    packed, ws, wzp = packing_s4.pack_s4a8(q, s, z, variant)
    w8 = packing.pack_s8(rng.integers(-127, 128, (K, N)).astype(np.int8), variant)
    files = {"a": a.tobytes(), "w": packed, "ws": ws.tobytes(), "w8": w8,
             "w4": packing.pack_s4(q, variant), "z4": packing.pack_s4_zero_points(np.full(s.shape, 8, np.uint8)),
             "s4": s.tobytes()}
    names = ["a", "w", "ws", "w8", "w4", "z4", "s4"]
    if wzp is not None:
        files["zp"] = wzp.tobytes()
        names.append("zp")
    for k, v in files.items():
        (work / f"{k}.bin").write_bytes(v)
    src = work / "bench.c"
    src.write_text(DRIVER)
    exe = work / f"bench-{variant}"
    if not exe.exists():
        srcs = sorted(toolchain.RUNTIME.glob("qc_gemm_s*.c")) + [toolchain.RUNTIME / "qc_quant.c"]
        toolchain.build([src, *srcs], exe, "aarch64", cpu, extra_flags=packing.variant_macros(variant))
    paths = [str(work / f"{k}.bin") for k in names]
    res = count([str(exe), str(M), str(N), str(K), str(len(packed)), str(len(w8)), *paths[:7], str(ws.size),
                 *paths[7:]],
                cpu=cpu, marksys=SYS_GETPID)
    if res["returncode"] != 0:
        raise RuntimeError(res["stderr"])
    labels = [m["label"] for m in res["marks"]]
    assert labels.count(SYS_GETPID) >= 6, labels
    at = [m["at"] for m in res["marks"] if m["label"] == SYS_GETPID]
    return {"quantize": delta(at[0], at[1]), "gemm_s4a8": delta(at[1], at[2]), "gemm_s8": delta(at[2], at[3]),
            "dequant_acc": delta(at[3], at[4]), "matmul_f32_s4": delta(at[4], at[5]), "macs": M * N * K,
            "variant": variant}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", action="append", help="MxKxN (default: 32x576x1536 and 1x576x1536)")
    ap.add_argument("--cpu", action="append", choices=sorted(CPU_VARIANT), help="default: cortex-a76 and max")
    ap.add_argument("--zero-points", action="store_true", help="qc_gemm_s4a8 with random block zero points")
    args = ap.parse_args(argv)
    shapes = [tuple(int(d) for d in s.split("x")) for s in (args.shape or ["32x576x1536", "1x576x1536"])]
    with tempfile.TemporaryDirectory() as tmp:
        for cpu in args.cpu or ["cortex-a76", "max"]:
            for M, K, N in shapes:
                r = measure(M, N, K, cpu, Path(tmp), args.zero_points)
                print(f"{cpu} ({r['variant']}) M={M} K={K} N={N}: {r['macs']:,} MACs"
                      + (", qc_gemm_s4a8 with zero points" if args.zero_points else ""))
                for part in ("quantize", "gemm_s4a8", "gemm_s8", "dequant_acc", "matmul_f32_s4"):
                    c = r[part]
                    print(f"  {part:12s} {c['total'] / r['macs']:.4f} insn/MAC  {fmt(c)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
