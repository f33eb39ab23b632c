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


def compile_to(cmd: list[str], out: Path) -> Path:
    """Run the compiler command ``cmd`` with ``-o`` a temporary beside ``out``, then rename it
    into place: processes that build the same cached tool at once (parallel tests) never see
    a half-written file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    try:
        subprocess.run([*cmd, "-o", str(tmp)], check=True)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def build_plugin(out: Path | None = None) -> Path:
    """Compile insn_count.c into a host shared object (cached in benchmarks/arm/build/)."""
    out = Path(out or BUILD / "insn_count.so")
    if not _newer(out, PLUGIN_SRC):
        compile_to(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
                    "-fvisibility=hidden", str(PLUGIN_SRC)], out)
    return out


def build_marker_test(out: Path | None = None) -> Path:
    """Cross-compile marker_test.c (static, armv8.2-a+dotprod)."""
    src = ARM / "marker_test.c"
    out = Path(out or BUILD / "marker_test")
    if not _newer(out, src):
        compile_to(["aarch64-linux-gnu-gcc", "-O2", "-Wall", "-Wextra", "-static",
                    "-march=armv8.2-a+dotprod", str(src)], out)
    return out


def count(argv: list[str], cpu: str = "max", marksys: int | None = None, timeout: float = 3600,
          plugin: Path | None = None, percpu: bool = False) -> dict:
    """Run `qemu-aarch64 -cpu CPU -plugin insn_count.so ... argv` and return the plugin's JSON
    ({"exit": counts, "marks": [{"label", "vcpu", "at": counts}]}, counts = {"total", "classes"}),
    with the guest's returncode, stdout and stderr added. PERCPU: counts per guest thread, a mark
    sees its own thread's (exact with helper threads; slower)."""
    plugin = plugin or build_plugin()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "counts.json"
        opts = f"{plugin},out={out}" + (f",marksys={marksys}" if marksys is not None else "") \
            + (",percpu=1" if percpu else "")
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


def _is_statement(kernel: str) -> bool:
    """A control-flow statement of lower_control.py (report.json's kernel name): no QC_PROF before it."""
    return kernel in STATEMENTS or kernel.startswith("loop x")


STATEMENTS = {"if", "else", "end if", "end loop", "iteration number", "loop condition", "scan output"}


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
    # no marksys here: a syscall mark would be labelled with its number, like the call of that index
    res = count([str(exe), "-r", str(runs), *args], cpu=cpu, timeout=timeout)
    if res["returncode"] != 0:
        raise RuntimeError(f"{exe} exited with {res['returncode']}: {res['stderr']}")
    if res.get("lost_marks"):
        raise RuntimeError(f"the plugin dropped {res['lost_marks']} marks (MAX_MARKS in insn_count.c)")
    calls = report["calls"]
    end = len(calls)
    marks = res["marks"]
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
    missing = sorted(set(range(end)) - set(last["calls"]))
    if any(not _is_statement(calls[i][1]) for i in missing):
        raise RuntimeError(f"no mark for calls {missing[:10]} (model.c older than the QC_PROF hook?)")
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


# -- onnxruntime's arm64 build (benchmarks/arm/ort_run.c, ort_arm.py) ---------------------------

SYS_CLONE = 220


def _ort_arm():
    sys.path.insert(0, str(ARM))
    import ort_arm

    return ort_arm


def ort_model(model: Path, feeds: dict[str, np.ndarray], outputs: list[tuple[str, np.ndarray]], runs: int = 2,
              cpu: str = "cortex-a76", work: Path | None = None, timeout: float = 3600,
              optimized: Path | None = None, extra: tuple[str, ...] = ()) -> dict:
    """Count onnxruntime (linux-arm64, one thread, sequential, ORT_ENABLE_ALL) on MODEL under qemu:
    RUNS inferences, one inference = the counts between the marks around the last one, of the main
    thread alone (the plugin's percpu mode: onnxruntime starts helper threads even with one intra-op
    thread; their instructions are returned apart). OUTPUTS: (name, an array of its dtype and
    size) for the outputs to return (those of the last run). Also returns the whole-program total
    and the threads the process started (clone syscalls). EXTRA: more ort_run options (-G LEVEL, -T N)."""
    oa = _ort_arm()
    work = work or Path(tempfile.mkdtemp(prefix="ort_arm_"))
    cmd, files = oa.argv(model, feeds, outputs, runs, work, optimized)
    res = count(cmd + list(extra), cpu=cpu, marksys=SYS_CLONE, timeout=timeout, percpu=True)
    if res["returncode"] != 0:
        raise RuntimeError(f"ort_run on {model} exited with {res['returncode']}: {res['stderr'][-2000:]}")
    runs_counts = [marks_between(res, 2 * r + 1, 2 * r + 2) for r in range(runs)]
    outs = [np.fromfile(f, ref.dtype).reshape(ref.shape) for f, (_, ref) in zip(files, outputs)]
    return {"model": str(model), "cpu": cpu, "runs": runs, "per_inference": runs_counts[-1],
            "run_totals": [c["total"] for c in runs_counts], "whole_program": res["exit"]["total"],
            "session_create": marks_between(res, 101, 102)["total"],
            "threads": sum(1 for m in res["marks"] if m["label"] == SYS_CLONE),
            "helper_thread_instructions": sum(v["total"] for v in res["vcpus"][1:]),
            "outputs": outs, "log": res["stderr"]}


def ort_agreement(model: Path, feeds: dict[str, np.ndarray], outputs: list[tuple[str, np.ndarray]],
                  cpu: str = "cortex-a76") -> dict:
    """The check of the marks: (whole program with 3 runs - with 1 run) / 2 against the marks of
    the last of the 3 runs."""
    three = ort_model(model, feeds, outputs, 3, cpu)
    one = ort_model(model, feeds, outputs, 1, cpu)
    by_exit = (three["whole_program"] - one["whole_program"]) / 2
    return {"marks_last_run": three["per_inference"]["total"], "by_exit_totals": by_exit,
            "relative_difference": by_exit / three["per_inference"]["total"] - 1, "run_totals": three["run_totals"]}


# -- accuracy ---------------------------------------------------------------------------------

def accuracy(kind: str, ref: np.ndarray, got: np.ndarray) -> dict:
    """embedding: cosine; logits: mean cosine of the rows and top-1 agreement; cnn: SQNR (dB)
    and top-1 agreement (argmax of the last axis)."""
    r = np.asarray(ref, np.float64).reshape(-1, ref.shape[-1])
    g = np.asarray(got, np.float64).reshape(-1, ref.shape[-1])
    cos = (r * g).sum(1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1), 1e-30)
    out = {"cos": float(cos.mean()), "cos_min": float(cos.min()),
           "top1": float((r.argmax(1) == g.argmax(1)).mean())}
    noise = float(np.square(r - g).sum())
    out["sqnr_db"] = float(10 * np.log10(np.square(r).sum() / noise)) if noise > 0 else float("inf")
    return out


def fmt_acc(kind: str, a: dict | None) -> str:
    if not a:
        return "-"
    if kind == "embedding":
        return f"cos {a['cos']:.4f}" + (f" (min {a['cos_min']:.4f})" if a.get("n", 1) > 1 else "")
    if kind == "logits":
        return f"cos {a['cos']:.4f}, top-1 {100 * a['top1']:.0f}%"
    return f"SQNR {a['sqnr_db']:.1f} dB, top-1 {100 * a['top1']:.0f}%"


def _host_session(path: Path, optimize: bool):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def host_accuracy(kind: str, path: Path, output: str, inputs: list[dict], refs: list[np.ndarray]) -> dict:
    """ACCURACY of PATH (onnxruntime on the host, all optimizations) on INPUTS against REFS,
    pooled: the mean over the inputs (min of the cosines)."""
    sess = _host_session(path, True)
    accs = [accuracy(kind, r, sess.run([output], f)[0]) for f, r in zip(inputs, refs)]
    return {"cos": float(np.mean([a["cos"] for a in accs])), "cos_min": float(min(a["cos_min"] for a in accs)),
            "top1": float(np.mean([a["top1"] for a in accs])),
            "sqnr_db": float(np.mean([a["sqnr_db"] for a in accs])), "n": len(accs)}


# -- the side-by-side benchmark -----------------------------------------------------------------

def bench(model: str, shape, work_root: Path, cpu: str = "cortex-a76", check_marks: bool = True,
          variants: list[str] | None = None, log=print) -> dict:
    """Every variant of one model at one shape (see arm_models): counts, classes, accuracy."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import arm_models as am

    from qc.backends.c.runner import load_report
    from qc.ir import DType

    c = am.case(model, shape, work_root)
    oa = _ort_arm()
    oa.fetch()
    log(f"== {c.name}: {c.fp32}, counted input from the evaluation text, calibration {c.calib}")
    ref_sess = _host_session(c.fp32, False)
    ref_out = ref_sess.run([c.output], c.feeds)[0]
    held_refs = [ref_sess.run([c.output], f)[0] for f in c.holdout]
    out_spec = [(c.output, ref_out)]
    mac = am.macs(c.fp32, c.shapes)
    rows = []
    names = variants or ["ort-fp32", *am.ORT_VARIANTS, "ort-qc-onnx", "qc-c"]

    def add(name: str, what: str, path: Path | None, counts: dict, arm_out: np.ndarray | None, **extra) -> None:
        row = {"variant": name, "what": what, "counts": counts,
               "arm_accuracy": accuracy(c.kind, ref_out, arm_out) if arm_out is not None else None,
               "host_accuracy": host_accuracy(c.kind, path, c.output, c.holdout, held_refs)
               if path is not None and c.holdout else None, **extra}
        rows.append(row)
        log(f"  {name}: {fmt(counts)}; Arm output {fmt_acc(c.kind, row['arm_accuracy'])}; host "
            f"{fmt_acc(c.kind, row['host_accuracy'])}")

    notes = []
    agreement = None
    for name in names:
        if name == "qc-c":
            d = am.qc_c(c, cpu)
            r = c_model(d, cpu, feeds=c.feeds)
            report = load_report(d)
            k = [n for n, _, _ in report["outputs"]].index(c.output)
            _, dt, shp = report["outputs"][k]
            got = np.fromfile(d / "io" / f"out{k}.bin", DType.parse(dt).numpy).reshape(shp)
            add("qc-c", f"qc's C: {am.qc_command(c, cpu)}", None, r["per_inference"], got,
                arena_bytes=report["arena_bytes"], weight_bytes=report["weight_bytes"],
                by_exit_totals=r["per_inference_from_exit_totals"])
            continue
        if name == "ort-fp32":
            src, what = c.fp32, "onnxruntime, float model"
        elif name == "ort-qc-onnx":
            src, what = am.qc_c(c, cpu) / "model.onnx", "onnxruntime on qc's quantized ONNX (qc compile --quant w8a8)"
        else:
            src, what = am.ort_quantized(c, name), f"onnxruntime on its {am.ORT_VARIANTS[name]}"
        # qc writes the IR version the target's runtime loads; the float model and onnxruntime's
        # own quantized models (helper.make_model: the onnx package's IR version) get a copy
        arm_path, lowered = (src, False) if name == "ort-qc-onnx" else am.for_arm(src)
        if lowered:
            what += f" [ir_version lowered to {am.ORT_ARM_MAX_IR} on a copy: onnxruntime 1.30 loads <= 13]"
        r = ort_model(arm_path, c.feeds, out_spec, runs=2, cpu=cpu, work=c.work / "io-ort")
        add(name, what, src, r["per_inference"], r["outputs"][0], threads=r["threads"], run_totals=r["run_totals"])
        if name == "ort-fp32" and check_marks:
            agreement = ort_agreement(arm_path, c.feeds, out_spec, cpu)
            log(f"  marks check (fp32): last of 3 runs {agreement['marks_last_run']:,}, (3 runs - 1 run) / 2 = "
                f"{agreement['by_exit_totals']:,.0f} ({100 * agreement['relative_difference']:+.2f}%)")
    fp32 = next((r for r in rows if r["variant"] == "ort-fp32"), None)
    threads = sorted({r["threads"] for r in rows if "threads" in r})
    if threads:
        helpers = max(r.get("helper_thread_instructions", 0) for r in rows)
        notes.append(f"each onnxruntime process started {'/'.join(map(str, threads))} helper thread(s) (clone "
                     f"syscalls; at most {helpers:,} instructions in all of them over a whole process); the counts "
                     "are the main thread's (insn_count percpu=1), which runs the model (intra-op threads 1)")
    if agreement:
        rel = 100 * agreement["relative_difference"]
        notes.append(f"marks check on ort-fp32: the last of 3 runs {agreement['marks_last_run']:,} vs (3 runs - "
                     f"1 run) / 2 = {agreement['by_exit_totals']:,.0f} ({rel:+.2f}%); "
                     f"its runs: {', '.join(f'{t:,}' for t in agreement['run_totals'])}")
    # a model in which onnxruntime's quantizer quantized nothing runs no integer dot product
    # (ShuffleNet's and MobileNet's MatMul-only models: no MatMul) -- that is the float model
    ints = [r for r in rows if r["variant"] in am.ORT_VARIANTS
            and r["counts"]["classes"]["dot"] + r["counts"]["classes"]["mmla"] > 0]
    best = min(ints, key=lambda r: r["counts"]["total"]) if ints else None
    for r in rows:
        r["x_fp32"] = r["counts"]["total"] / fp32["counts"]["total"] if fp32 else None
        r["x_best_int8"] = r["counts"]["total"] / best["counts"]["total"] if best else None
        r["dot_macs"] = 16 * r["counts"]["classes"]["dot"] / mac["weights"] if mac["weights"] else None
    return {"case": am.describe(c), "cpu": cpu, "macs": mac, "rows": rows,
            "best_int8": best["variant"] if best else None,
            "best_rule": "fewest instructions among onnxruntime's own int8 models (quantize_dynamic / "
                         "quantize_static) that run int8 arithmetic (SDOT / SMMLA > 0), whatever their "
                         "accuracy (it is beside)",
            "marks_check": agreement, "notes": notes}


def table(res: dict) -> str:
    """The markdown table of one bench() result."""
    kind = res["case"]["kind"]
    head = ["variant", "instructions", "x ORT fp32", "x best ORT int8", *CLASSES, "16*dot/weight MACs",
            "Arm output vs fp32", f"host, {res['case']['holdout']} inputs"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 3) + "---|---|"]
    for r in res["rows"]:
        name = r["variant"] + (" (best)" if r["variant"] == res["best_int8"] else "")
        cells = [name, f"{r['counts']['total'] / 1e6:,.1f} M",
                 f"{r['x_fp32']:.2f}" if r["x_fp32"] else "-", f"{r['x_best_int8']:.2f}" if r["x_best_int8"] else "-",
                 *[f"{r['counts']['classes'][k] / 1e6:,.1f} M" for k in CLASSES],
                 f"{r['dot_macs']:.2f}" if r["dot_macs"] is not None else "-",
                 fmt_acc(kind, r["arm_accuracy"]), fmt_acc(kind, r["host_accuracy"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


SUITE = [("minilm-l6", 128), ("minilm-l6", 16), ("smollm2-135m", 32)]


def _parse_shapes(text: str | None) -> dict[str, list[int]]:
    out = {}
    for part in (text or "").split(","):
        if part.strip():
            k, v = part.split("=")
            out[k.strip()] = [int(d) for d in v.lower().split("x")]
    return out


def _json_safe(res: dict) -> dict:
    return json.loads(json.dumps(res, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--selftest", action="store_true", help="check the plugin's counts on a known mix")
    ap.add_argument("-n", type=int, default=1000, help="--selftest loop iterations")
    ap.add_argument("--c-model", type=Path, metavar="DIR", help="qc C output directory with harness.c")
    ap.add_argument("--cpu", help="qemu -cpu (default: from report.json's kernel variant)")
    ap.add_argument("--profile", action="store_true",
                    help="with --c-model: per-call counts instead (rebuilt with -DQC_PROFILE), top kernels and calls")
    ap.add_argument("--top", type=int, default=15, help="--profile: rows per table")
    ap.add_argument("--profile-runs", type=int, default=1, help="--profile: inferences (the last is reported; "
                    "with more they must agree)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    ap.add_argument("--model", help="side by side: minilm-l6, smollm2-135m or PATH.onnx")
    ap.add_argument("--seq", type=int, default=128, help="--model minilm-l6 / smollm2-135m: tokens (default 128)")
    ap.add_argument("--shape", action="append", default=[],
                    help="--model PATH.onnx: NAME=1x3x224x224,...; with --suite one per --cnn, in order")
    ap.add_argument("--suite", action="store_true", help="the acceptance rows: MiniLM 1x128, 1x16, SmolLM2 1x32 "
                    "(and --cnn PATH.onnx --shape ...), markdown tables")
    ap.add_argument("--cnn", type=Path, action="append", default=[],
                    help="--suite: also this ONNX (repeatable, each with its --shape)")
    ap.add_argument("--variants", help="comma list (default all): ort-fp32, " + ", ".join(
        ["ort-dynamic", "ort-dynamic-matmul", "ort-static-s8s8", "ort-static-s8s8-matmul"]) + ", ort-qc-onnx, qc-c")
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "armbench",
                    help="models and data (default out/armbench)")
    ap.add_argument("--fetch", action="store_true", help="download onnxruntime-node's arm64 library now "
                    "(else fetched when missing, with a message)")
    ap.add_argument("--no-marks-check", action="store_true", help="skip the (3 runs - 1 run) / 2 check")
    args = ap.parse_args(argv)
    if args.fetch:
        print(_ort_arm().fetch())
    if args.model or args.suite:
        if args.model and args.model.endswith(".onnx") and len(args.shape) != 1:
            ap.error("--model PATH.onnx needs one --shape NAME=DIMS,...")
        if args.suite and len(args.cnn) != len(args.shape):
            ap.error(f"--suite: give one --shape per --cnn ({len(args.cnn)} --cnn, {len(args.shape)} --shape)")
        rows = [(args.model, args.seq if not args.model.endswith(".onnx") else _parse_shapes(args.shape[0]))] \
            if args.model else list(SUITE)
        if args.suite:
            rows += [(str(cnn), _parse_shapes(shape)) for cnn, shape in zip(args.cnn, args.shape)]
        results = []
        for model, shape in rows:
            res = bench(model, shape, args.work, check_marks=not args.no_marks_check,
                        variants=args.variants.split(",") if args.variants else None)
            results.append(res)
            print(f"\n### {res['case']['name']} (qemu-aarch64 -cpu {res['cpu']}, one thread; guest instructions "
                  f"per inference; weight MACs {res['macs']['weights']:,})\n")
            print(table(res))
            print()
            for r in res["rows"]:
                print(f"- {r['variant']}: {r['what']}")
            print(f"- best ORT int8: {res['best_int8']} ({res['best_rule']})")
            for n in res["notes"]:
                print(f"- {n}")
            sys.stdout.flush()
        if args.json:
            args.json.write_text(json.dumps(_json_safe({"results": results}), indent=1) + "\n")
        return 0
    if not args.selftest and not args.c_model:
        if args.fetch:
            return 0
        ap.error("give --selftest, --c-model DIR, --model or --suite")
    if args.profile and not args.c_model:
        ap.error("--profile needs --c-model DIR")
    rc = 0
    if args.selftest:
        rc |= 0 if selftest(args.n) else 1
    if args.c_model and args.profile:
        p = c_profile(args.c_model, args.cpu, runs=args.profile_runs)
        tot = p["marked_total"]["total"]
        print(f"{p['dir']} (variant {p['variant']}, -cpu {p['cpu']}), built with -DQC_PROFILE: {p['n_marks']:,} marks"
              + (f", the {args.profile_runs} runs agree: {p['runs_agree']}" if args.profile_runs > 1 else ""))
        print(f"  one inference between the first and the last mark: {fmt(p['marked_total'])}")
        print(f"\ntop {args.top} kernels:\n" + profile_table(p["calls"], tot, "kernel", args.top))
        print(f"\ntop {args.top} calls:\n" + profile_table(p["calls"], tot, "call", args.top))
        if args.json:
            args.json.write_text(json.dumps(_json_safe(p), indent=1) + "\n")
        return rc
    if args.c_model:
        r = c_model(args.c_model, args.cpu)
        print(f"{r['dir']} (variant {r['variant']}, -cpu {r['cpu']})")
        print(f"  per inference: {fmt(r['per_inference'])}")
        print(f"  (from whole-program totals: {r['per_inference_from_exit_totals']:,}; "
              f"harness loop overhead {r['loop_overhead']:,}; whole program with -r 2 "
              f"{r['whole_program_r2']:,})")
        if args.json:
            args.json.write_text(json.dumps(_json_safe(r), indent=1) + "\n")
    return rc


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
