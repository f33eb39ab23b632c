"""The qemu instruction-counting plugin of benchmarks/arm (insn_count.c): exact counts on a known
instruction mix between markers, and its opcode decoder against objdump's mnemonics."""
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import arm_speed  # noqa: E402

needs = pytest.mark.skipif(not all(shutil.which(t) for t in ("gcc", "aarch64-linux-gnu-gcc", "qemu-aarch64",
                                                               "aarch64-linux-gnu-objdump")),
                           reason="needs gcc, aarch64-linux-gnu-gcc/objdump and qemu-aarch64")


@needs
@pytest.mark.parametrize("n", [1, 250])
def test_marker_counts_exact(n):
    assert arm_speed.selftest(n, verbose=False)


def _expected(mnemonic: str, operands: str) -> str | None:
    base = mnemonic.split(".")[0]
    if base in ("sdot", "udot", "usdot", "sudot"):
        return "dot"
    if base in ("smmla", "ummla", "usmmla", "bfmmla"):
        return "mmla"
    if base in ("fmla", "fmls"):
        return "fmla_vec" if operands.startswith("v") else "simd_fp_other"
    if base in ("fmadd", "fmsub", "fnmadd", "fnmsub"):
        return "fmadd_scalar"
    if re.match(r"(ld|st|prfm|cas|swp)", base):
        return "ldst"
    return None


@needs
def test_decoder_matches_objdump(tmp_path):
    """Every instruction of the static marker_test (glibc included, ~90k) gets the class its
    mnemonic says; nothing else lands in the named classes."""
    exe = arm_speed.build_marker_test()
    cls_exe = tmp_path / "classify"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", str(arm_speed.ARM / "classify_main.c"),
                    "-o", str(cls_exe)], check=True)
    dis = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(exe)], capture_output=True, text=True,
                         check=True).stdout
    rows = [m.groups() for m in re.finditer(r"^\s*[0-9a-f]+:\s+([0-9a-f]{8})\s+(\S+)[ \t]*(.*)$", dis, re.M)]
    got = subprocess.run([str(cls_exe)], input="\n".join(r[0] for r in rows) + "\n", capture_output=True,
                         text=True, check=True).stdout.split()
    assert len(got) == len(rows) > 10000
    bad = Counter()
    for (_, mn, ops), c in zip(rows, got):
        if mn in (".inst", ".word", "udf"):
            continue
        want = _expected(mn, ops)
        if (want is not None and want != c) or (want is None and c in ("dot", "mmla", "fmla_vec",
                                                                          "fmadd_scalar", "ldst")):
            bad[(mn, c, want)] += 1
    assert not bad, bad.most_common(10)
    seen = Counter(got)
    assert seen["dot"] >= 10 and seen["fmla_vec"] >= 3 and seen["ldst"] > 1000


@needs
def test_many_marks():
    """20,000 marks in a row (a -DQC_PROFILE build marks every kernel call): none lost, each
    exactly the next mark's 9 instructions plus the loop's 3 after the previous one."""
    n = 20000
    res = arm_speed.count([str(arm_speed.build_marker_test()), str(n), "marks"], cpu="cortex-a76")
    assert res["returncode"] == 0 and res["lost_marks"] == 0
    at = [m["at"]["total"] for m in res["marks"] if m["label"] == 5]
    assert len(at) == n
    steps = {b - a for a, b in zip(at, at[1:])}
    assert steps == {12}  # the mark's 9 (its SVC included) and the loop's add, cmp, b.ne


@needs
def test_percpu_counts_the_marking_thread_only():
    """percpu=1: another thread spins from before mark 1 to after mark 2 (it ran 100,000 loops
    before them), and the marks still see exactly the main thread's known mix; the whole-program
    total is the sum of the threads'."""
    n = 2000
    exe = str(arm_speed.build_marker_test())
    want = 17 * n + 10
    per = arm_speed.count([exe, str(n), "thread"], cpu="cortex-a76", percpu=True)
    assert per["returncode"] == 0 and "spins" in per["stdout"], per["stderr"]
    assert arm_speed.marks_between(per, 1, 2)["total"] == want
    assert len(per["vcpus"]) == 2 and per["vcpus"][1]["total"] > 100000
    assert per["exit"]["total"] == sum(v["total"] for v in per["vcpus"])
