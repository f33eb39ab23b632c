"""Guest instructions per call of the float kernels (qc_ops.c / qc_ops_nn.c) at MiniLM-L6 1x128 and
SmolLM2 1x32 sizes under qemu-aarch64, for the runtime of this tree and of a git revision.

    python benchmarks/c_vmath.py                      # this tree vs main, -cpu cortex-a76
    python benchmarks/c_vmath.py --base REV --cpu cortex-a53

The driver (benchmarks/c_vmath/kernels_bench.c) separates the calls with clock_gettime syscalls;
the counts between consecutive ones come from the insn_count plugin (benchmarks/arm_speed.py).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import arm_speed  # noqa: E402

from qc.backends.c import toolchain  # noqa: E402

DRIVER = Path(__file__).resolve().parent / "c_vmath" / "kernels_bench.c"
CALLS = ["Erf 128x1536", "Gelu 128x1536", "Div scalar 128x1536", "Mul 128x1536", "Add row-bcast 1536x128",
         "Softmax 1536x128", "ReduceMean 128x384", "Sub column-bcast 128x384", "Pow 2 128x384",
         "LayerNorm 128x384", "Sigmoid 32x1536", "Cast f32->f16 128x1536", "Exp 128x1536", "Tanh 128x1536",
         "SiLU 32x1536", "RMSNorm 32x576"]
FILES = ("qc_ops.c", "qc_ops_nn.c", "qc_ops.h", "qc_vmath.h")


def _runtime(rev: str | None, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        if rev is None:
            (into / f).write_bytes((toolchain.RUNTIME / f).read_bytes())
            continue
        show = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:backends/c/runtime/{f}"],
                              capture_output=True)
        if show.returncode == 0:
            (into / f).write_bytes(show.stdout)
    return into


def counts(rev: str | None, cpu: str, tmp: Path) -> list[dict]:
    """Per-call counts (in CALLS order) for the runtime at *rev* (None: this tree)."""
    rt = _runtime(rev, tmp / (rev or "tree"))
    new = (rt / "qc_vmath.h").exists() and "qc_rmsnorm_f32" in (rt / "qc_ops.h").read_text()
    srcs = [DRIVER, rt / "qc_ops.c", rt / "qc_ops_nn.c"]
    exe = toolchain.build(srcs, tmp / f"bench-{rev or 'tree'}", "aarch64", cpu,
                          extra_flags=["-DQC_BENCH_NEW"] if new else [], include_dirs=[rt])
    res = arm_speed.count([str(exe)], cpu=cpu, marksys=arm_speed.SYS_CLOCK_GETTIME)
    at = [m["at"] for m in res["marks"]]
    return [arm_speed.delta(a, b) for a, b in zip(at, at[1:])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="main", help="git revision to compare with (default main)")
    ap.add_argument("--cpu", default="cortex-a76")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        old = counts(args.base, args.cpu, Path(tmp))
        new = counts(None, args.cpu, Path(tmp))
    print(f"guest instructions per call, qemu-aarch64 -cpu {args.cpu}: {args.base} -> this tree")
    for i, name in enumerate(CALLS):
        if i >= len(new):
            break
        before = f"{old[i]['total']:>13,}" if i < len(old) else f"{'-':>13}"
        ratio = f"{old[i]['total'] / new[i]['total']:6.1f}x" if i < len(old) and new[i]["total"] else ""
        print(f"  {name:<26} {before} -> {new[i]['total']:>11,} {ratio}  ({arm_speed.fmt(new[i])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
