"""The C targets' kernel tables against the C backend: every entry names a C kernel that lowers it;
the gemm variant comes from the table; the loader checks c_kernel; the lowering modules import
each other without a cycle."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from qc.backends.c.kernels import gemm_variant, unlowered_entries
from qc.backends.c.packing import variant_for
from qc.errors import QCError
from qc.targets import builtin_targets, load_target

C_TARGETS = [n for n in builtin_targets() if load_target(n).backend == "c"]

# Entries the C backend has no lowering for yet (it raises "not supported by the C backend" or,
# for the NPU, emits no code at all). Listed so that a new entry without a lowering fails.
KNOWN_GAPS = {
    ("Gemm", "float16", "float16"), ("Conv", "float16", "float16"),  # only MatMul has qc_matmul_f16
    ("MatMul", "int16", "int8"), ("Conv", "int16", "int8"),          # no int16 activation path
    ("MatMul", "int8", "int4"), ("Conv", "int8", "int4"),            # QDQ int4 weights (MatMulNBits only)
    ("MatMul", "float16", "int8"),                                   # float16 DequantizeLinear output
}


@pytest.mark.parametrize("name", C_TARGETS)
def test_every_kernel_entry_has_a_c_lowering(name):
    t = load_target(name)
    bad = []
    for line in unlowered_entries(t):
        dev = line.split("kernels.", 1)[1].split("[", 1)[0]
        idx = int(line.split("[", 1)[1].split("]", 1)[0])
        k = t.kernels[dev][idx]
        if dev != "cpu":
            continue  # the C code runs on the CPU; accelerator entries describe another runtime
        if (k.op, k.act, k.weight) in KNOWN_GAPS and k.c_kernel is None:
            continue
        bad.append(line)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", C_TARGETS)
def test_gemm_variant_comes_from_the_table_and_agrees_with_the_features(name):
    t = load_target(name)
    assert gemm_variant(t) == variant_for(t.features)


def test_c_kernel_is_checked_by_the_loader(tmp_path):
    base = (Path(load_target.__code__.co_filename).parent / "cortex-a76.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(base.replace('c_kernel = "qc_gemm_s8_dotprod"', 'c_kernel = "gemm s8"', 1))
    line = next(i for i, s in enumerate(bad.read_text().splitlines(), 1) if 'c_kernel = "gemm s8"' in s)
    with pytest.raises(QCError, match=rf"bad.toml:{line}: kernels.cpu\[\d+\].c_kernel: 'gemm s8' is not a C kernel"):
        load_target(str(bad))
    onnx_target = tmp_path / "onnx.toml"
    no_compiler = re.sub(r"\[compiler\]\n(?:[^\[\n].*\n)*", "", base)  # a [compiler] allows --emit c
    onnx_target.write_text(no_compiler.replace('backend = "c"', 'backend = "onnx"'))
    with pytest.raises(QCError, match=r"c_kernel: names a C kernel, but the target's backend is 'onnx'"):
        load_target(str(onnx_target))


def test_unlowered_entries_names_target_entry_and_kernel(tmp_path):
    base = (Path(load_target.__code__.co_filename).parent / "cortex-a76.toml").read_text()
    path = tmp_path / "t.toml"
    path.write_text(base.replace('c_kernel = "qc_matmul_f32"', 'c_kernel = "qc_matmul_f99"', 1))
    (line,) = [x for x in unlowered_entries(load_target(str(path))) if "f99" in x]
    assert line.startswith("cortex-a76: kernels.cpu[0] (MatMul float32 x float32 -> float32")
    assert line.endswith("c_kernel 'qc_matmul_f99' is not a kernel of the C backend")


def test_lowering_modules_import_no_cycle():
    root = Path(__file__).resolve().parent.parent / "backends" / "c"
    deps = {}
    for p in root.glob("*.py"):
        names = set()
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.ImportFrom) and n.level == 1:
                names.update([n.module] if n.module else [a.name for a in n.names])
        deps[p.stem] = names & {q.stem for q in root.glob("*.py")}

    def reach(start, seen):
        for d in deps.get(start, ()):
            if d not in seen:
                seen.add(d)
                reach(d, seen)
        return seen

    cyclic = sorted(m for m in deps if m in reach(m, set()))
    assert not cyclic, cyclic
