"""Guest instructions under qemu-aarch64 (user mode), in total and by class, as the deterministic
stand-in for speed on Arm (there is no Arm board here; see benchmarks/arm/README.md).

    python benchmarks/arm_speed.py --selftest            # build the plugin, check it on a known mix
    python benchmarks/arm_speed.py --c-model DIR         # a qc C output dir (--emit-harness, Arm target)
    python benchmarks/arm_speed.py --c-model DIR --cpu cortex-a76 --json OUT.json

The counter is the qemu TCG plugin benchmarks/arm/insn_count.c (built here with the host gcc).
Instructions are not cycles: an SDOT and a scalar add count one each, so the classes (dot,
mmla, fmla_vec, fmadd_scalar, ldst, simd_fp_other, other) are always printed with the totals.

For a C model the harness runs with -r 2 and -r 3 under the plugin with marksys=113: qemu 7.2
gives aarch64 guests no vDSO, so the harness's clock() calls around its loop of runs are real
clock_gettime syscalls, and the counts between the first and the last one differ between the
two runs by exactly one inference.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ARM = Path(__file__).resolve().parent / "arm"
BUILD = ARM / "build"
PLUGIN_SRC = ARM / "insn_count.c"
CLASSES = ("dot", "mmla", "fmla_vec", "fmadd_scalar", "ldst", "simd_fp_other", "other")
SYS_CLOCK_GETTIME = 113
# report.json's kernel variant -> the qemu -cpu that has its instructions
VARIANT_CPU = {"dotprod": "cortex-a76", "i8mm": "max", "neon": "cortex-a53"}


def _newer(out: Path, *srcs: Path) -> bool:
    return out.exists() and all(out.stat().st_mtime >= s.stat().st_mtime for s in srcs)


def build_plugin(out: Path | None = None) -> Path:
    """Compile insn_count.c into a host shared object (cached in benchmarks/arm/build/)."""
    out = Path(out or BUILD / "insn_count.so")
    if not _newer(out, PLUGIN_SRC):
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
                        "-fvisibility=hidden", str(PLUGIN_SRC), "-o", str(out)], check=True)
    return out


def build_marker_test(out: Path | None = None) -> Path:
    """Cross-compile marker_test.c (static, armv8.2-a+dotprod)."""
    src = ARM / "marker_test.c"
    out = Path(out or BUILD / "marker_test")
    if not _newer(out, src):
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["aarch64-linux-gnu-gcc", "-O2", "-Wall", "-Wextra", "-static",
                        "-march=armv8.2-a+dotprod", str(src), "-o", str(out)], check=True)
    return out


def count(argv: list[str], cpu: str = "max", marksys: int | None = None, timeout: float = 3600,
          plugin: Path | None = None) -> dict:
    """Run `qemu-aarch64 -cpu CPU -plugin insn_count.so ... argv` and return the plugin's JSON
    ({"exit": counts, "marks": [{"label", "at": counts}]}, counts = {"total", "classes"}), with
    the guest's returncode, stdout and stderr added."""
    plugin = plugin or build_plugin()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "counts.json"
        opts = f"{plugin},out={out}" + (f",marksys={marksys}" if marksys is not None else "")
        proc = subprocess.run(["qemu-aarch64", "-cpu", cpu, "-plugin", opts, *argv],
                              capture_output=True, text=True, timeout=timeout)
        if not out.exists():
            raise RuntimeError(f"no counts from the plugin (exit {proc.returncode}): {proc.stderr}")
        res = json.loads(out.read_text())
    res.update(returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)
    return res


def delta(a: dict, b: dict) -> dict:
    """Counts b - a (each {"total", "classes"})."""
    return {"total": b["total"] - a["total"],
            "classes": {c: b["classes"][c] - a["classes"][c] for c in CLASSES}}


def marks_between(res: dict, first: int, last: int) -> dict:
    """The counts between the marks labelled *first* and *last* (their first occurrences)."""
    at = {}
    for m in res["marks"]:
        at.setdefault(m["label"], m["at"])
    return delta(at[first], at[last])


def fmt(c: dict) -> str:
    tot = c["total"]
    parts = [f"{k} {v:,} ({100 * v / tot:.1f}%)" for k, v in c["classes"].items() if v] if tot else []
    return f"{tot:,} instructions: " + ", ".join(parts)


def selftest(n: int = 1000, verbose: bool = True) -> bool:
    """Check the counts of marker_test N mmla against what its loops execute."""
    exe = build_marker_test()
    res = count([str(exe), str(n), "mmla"], cpu="max")
    if res["returncode"] != 0:
        raise RuntimeError(f"marker_test failed: {res['stderr']}")
    got1, got2 = marks_between(res, 1, 2), marks_between(res, 3, 4)
    want1 = {"total": 17 * n + 10, "classes": {"dot": 10 * n, "mmla": 0, "fmla_vec": 3 * n, "fmadd_scalar": n,
                                               "ldst": n, "simd_fp_other": 0, "other": 2 * n + 10}}
    want2 = {"total": 6 * n + 10, "classes": {"dot": n, "mmla": 3 * n, "fmla_vec": 0, "fmadd_scalar": 0,
                                              "ldst": 0, "simd_fp_other": 0, "other": 2 * n + 10}}
    ok = got1 == want1 and got2 == want2
    if verbose:
        print(f"marks 1-2 (N={n}): {fmt(got1)}")
        print(f"marks 3-4 (N={n}): {fmt(got2)}")
        print("selftest", "OK: exact" if ok else f"FAILED: expected {want1} and {want2}")
    return ok


def _inputs(report: dict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    out = {}
    for name, dt, shape in report["inputs"]:
        if dt.startswith(("i", "u")):
            out[name] = (np.ones(shape) if "mask" in name else rng.randint(0, 100, shape)).astype(np.int64)
        else:
            out[name] = rng.randn(*shape).astype(np.float32)
    return out


def c_model(out_dir: Path, cpu: str | None = None, timeout: float = 3600,
            feeds: dict[str, np.ndarray] | None = None, extra_flags: tuple[str, ...] = ()) -> dict:
    """Build OUT_DIR's harness for aarch64 and count one inference (see the module docstring);
    the inputs are FEEDS (default: _inputs), the outputs of the last run are left in OUT_DIR/io.
    EXTRA_FLAGS go to the compiler (e.g. -DQC_PROFILE)."""
    sys.path.insert(0, str(ROOT))
    from qc.backends.c.runner import build_model, load_report

    report = load_report(out_dir)
    if not (Path(out_dir) / "harness.c").exists():
        raise SystemExit(f"{out_dir}: no harness.c (compile with --emit-harness)")
    cpu = cpu or VARIANT_CPU.get(report.get("variant", ""), "max")
    exe = build_model(report, "aarch64", cpu, extra_flags=extra_flags,
                      exe=Path(out_dir) / f"harness-aarch64-{cpu}{'-x' if extra_flags else ''}")
    args = _write_inputs(report, Path(out_dir).resolve() / "io", feeds)
    loops = {}
    for runs in (2, 3):
        res = count([str(exe), "-r", str(runs), *args], cpu=cpu, marksys=SYS_CLOCK_GETTIME, timeout=timeout)
        if res["returncode"] != 0:
            raise RuntimeError(f"{exe} exited with {res['returncode']}: {res['stderr']}")
        clocks = [m["at"] for m in res["marks"] if m["label"] == SYS_CLOCK_GETTIME]
        if len(clocks) < 2:
            raise RuntimeError(f"expected 2 clock_gettime syscalls around the runs, saw {len(clocks)} "
                               "(a qemu with a vDSO for aarch64?)")
        loops[runs] = delta(clocks[0], clocks[-1])
        loops[f"exit{runs}"] = res["exit"]
    one = delta(loops[2], loops[3])
    # the same from the whole-program totals: cancels all but printf's digits of the seconds
    by_exit = loops["exit3"]["total"] - loops["exit2"]["total"]
    return {"dir": str(out_dir), "cpu": cpu, "variant": report.get("variant"),
            "kernels": report.get("kernels"), "per_inference": one,
            "loop_overhead": loops[2]["total"] - 2 * one["total"],
            "per_inference_from_exit_totals": by_exit,
            "whole_program_r2": loops["exit2"]["total"]}


def _write_inputs(report: dict, work: Path, feeds: dict[str, np.ndarray] | None = None) -> list[str]:
    """The harness's arguments: inputs written as raw files under WORK (FEEDS or _inputs), then
    the output paths."""
    from qc.ir import DType

    feeds = feeds if feeds is not None else _inputs(report)
    work.mkdir(parents=True, exist_ok=True)
    args = []
    for i, (name, dt, shape) in enumerate(report["inputs"]):
        arr = np.ascontiguousarray(np.asarray(feeds[name]).astype(DType.parse(dt).numpy).reshape(shape))
        (work / f"in{i}.bin").write_bytes(arr.tobytes())
        args.append(str(work / f"in{i}.bin"))
    return args + [str(work / f"out{i}.bin") for i in range(len(report["outputs"]))]


def c_profile(out_dir: Path, cpu: str | None = None, timeout: float = 3600, runs: int = 2) -> dict:
    """Per-call counts of one inference of a qc C model: OUT_DIR's harness rebuilt with
    -DQC_PROFILE, where model.c issues the marker labelled i before its kernel call i (the index
    into report.json's "calls", i.e. (node, kernel)) and one labelled len(calls) before returning.
    Call i's counts are those from its mark to the next one, taken from the last of RUNS
    inferences (the earlier ones must agree: the counts are deterministic). Control-flow
    statements (if/loop) count with the call before them; the marks' own instructions (about 9
    each) are included."""
    sys.path.insert(0, str(ROOT))
    from qc.backends.c.runner import build_model, load_report

    report = load_report(out_dir)
    cpu = cpu or VARIANT_CPU.get(report.get("variant", ""), "max")
    exe = build_model(report, "aarch64", cpu, exe=Path(out_dir) / f"harness-profile-{cpu}",
                      extra_flags=["-DQC_PROFILE"])
    args = _write_inputs(report, Path(out_dir).resolve() / "io")
    res = count([str(exe), "-r", str(runs), *args], cpu=cpu, marksys=SYS_CLOCK_GETTIME, timeout=timeout)
    if res["returncode"] != 0:
        raise RuntimeError(f"{exe} exited with {res['returncode']}: {res['stderr']}")
    if res.get("lost_marks"):
        raise RuntimeError(f"the plugin dropped {res['lost_marks']} marks (MAX_MARKS in insn_count.c)")
    calls = report["calls"]
    end = len(calls)
    marks = [m for m in res["marks"] if m["label"] != SYS_CLOCK_GETTIME]
    starts = [k for k, m in enumerate(marks) if m["label"] == end]
    if len(starts) != runs:
        raise RuntimeError(f"expected {runs} end-of-inference marks, saw {len(starts)} (built without -DQC_PROFILE?)")
    per_run = []
    lo = 0
    for hi in starts:
        seg: dict[int, dict] = {}
        for a, b in zip(marks[lo:hi], marks[lo + 1:hi + 1]):
            d = delta(a["at"], b["at"])
            if a["label"] in seg:  # a call inside a loop body: its iterations add up
                d = {"total": seg[a["label"]]["total"] + d["total"],
                     "classes": {c: seg[a["label"]]["classes"][c] + d["classes"][c] for c in CLASSES}}
            seg[a["label"]] = d
        per_run.append({"calls": seg, "total": delta(marks[lo]["at"], marks[hi]["at"])})
        lo = hi + 1
    last = per_run[-1]
    rows = [{"index": i, "node": calls[i][0], "kernel": calls[i][1], **c} for i, c in sorted(last["calls"].items())]
    return {"dir": str(out_dir), "cpu": cpu, "variant": report.get("variant"), "calls": rows,
            "marked_total": last["total"], "n_marks": len(marks), "runs_agree": all(r == last for r in per_run)}


def group_profile(rows: list[dict], key: str) -> list[dict]:
    """Rows summed by *key* ("kernel" or "node"), largest total first."""
    acc: dict[str, dict] = {}
    for r in rows:
        a = acc.setdefault(r[key], {key: r[key], "calls": 0, "total": 0, "classes": dict.fromkeys(CLASSES, 0)})
        a["calls"] += 1
        a["total"] += r["total"]
        for c in CLASSES:
            a["classes"][c] += r["classes"][c]
    return sorted(acc.values(), key=lambda a: -a["total"])


def profile_table(rows: list[dict], total: int, key: str, top: int = 15) -> str:
    """A markdown table of the top rows (grouped by key, or per call with key="call")."""
    if key == "call":
        items = sorted(rows, key=lambda r: -r["total"])[:top]
        head = "| # | node | kernel |"
    else:
        items = group_profile(rows, key)[:top]
        head = f"| {key} | calls |"
    lines = [head + " instructions | share | " + " | ".join(CLASSES) + " |",
             "|" + "---|" * (head.count("|") - 1) + "---:|---:|" + "---:|" * len(CLASSES)]
    for r in items:
        first = (f"| {r['index']} | {r['node']} | {r['kernel']} |" if key == "call"
                 else f"| {r[key]} | {r['calls']} |")
        lines.append(first + f" {r['total']:,} | {100 * r['total'] / max(total, 1):.1f}% | "
                     + " | ".join(f"{r['classes'][c]:,}" for c in CLASSES) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--selftest", action="store_true", help="check the plugin's counts on a known mix")
    ap.add_argument("-n", type=int, default=1000, help="--selftest loop iterations")
    ap.add_argument("--c-model", type=Path, metavar="DIR", help="qc C output directory with harness.c")
    ap.add_argument("--cpu", help="qemu -cpu (default: from report.json's kernel variant)")
    ap.add_argument("--profile", action="store_true",
                    help="with --c-model: per-call counts (rebuilt with -DQC_PROFILE), top kernels and calls")
    ap.add_argument("--top", type=int, default=15, help="--profile: rows per table")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    if not args.selftest and not args.c_model:
        ap.error("give --selftest or --c-model DIR")
    if args.profile and not args.c_model:
        ap.error("--profile needs --c-model DIR")
    rc = 0
    if args.selftest:
        rc |= 0 if selftest(args.n) else 1
    if args.c_model:
        r = c_model(args.c_model, args.cpu)
        print(f"{r['dir']} (variant {r['variant']}, -cpu {r['cpu']})")
        print(f"  per inference: {fmt(r['per_inference'])}")
        print(f"  (from whole-program totals: {r['per_inference_from_exit_totals']:,}; "
              f"harness loop overhead {r['loop_overhead']:,}; whole program with -r 2 "
              f"{r['whole_program_r2']:,})")
        if args.profile:
            p = c_profile(args.c_model, args.cpu)
            tot = p["marked_total"]["total"]
            print(f"  profile (-DQC_PROFILE, {p['n_marks']:,} marks, runs agree: {p['runs_agree']}): "
                  f"{fmt(p['marked_total'])}")
            print(f"  marks cost {tot - r['per_inference']['total']:,} instructions over the plain build")
            print(f"\ntop {args.top} kernels:\n" + profile_table(p["calls"], tot, "kernel", args.top))
            print(f"\ntop {args.top} calls:\n" + profile_table(p["calls"], tot, "call", args.top))
            r["profile"] = p
        if args.json:
            args.json.write_text(json.dumps(r, indent=1) + "\n")
    return rc


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
