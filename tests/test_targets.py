"""Target descriptions as data: every built-in target loads, lookups follow the tables,
user files with mistakes get errors naming the key and the line, and `qc targets` prints them."""
from __future__ import annotations

import os

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

import pytest

from qc.errors import QCError
from qc.targets import DEVICES, Kernel, builtin_targets, load_target
from tests.conftest import run_qc

BUILTIN = ["armv8.6-i8mm", "cortex-a53", "cortex-a76", "cortex-m4", "cortex-m55", "cuda", "ethos-u55",
           "ethos-u65", "ethos-u85", "mali-gpu", "x86-avx2"]
ETHOS = ("ethos-u55", "ethos-u65", "ethos-u85")


def test_builtin_list():
    assert builtin_targets() == BUILTIN


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_target_loads_with_a_float_matmul(name):
    t = load_target(name)
    assert t.name == name and t.description
    assert t.preferred_device in t.devices and set(t.devices) <= set(DEVICES)
    assert all(isinstance(k, Kernel) and k.source for ks in t.kernels.values() for k in ks)
    hits = t.kernel_for("MatMul", "float32", "float32", "float32", const_weight=False)
    # Ethos-U55 has no float on the NPU (Vela: feature maps are integer): float runs on the host.
    want = "cpu" if name in ETHOS else t.preferred_device
    assert want in {dev for dev, _ in hits}
    assert t.backend == ("onnx" if name in ("x86-avx2", "cuda") else "tflite" if name in ETHOS else "c")
    if t.backend == "c" or name == "ethos-u55":  # the U55's Cortex-M55 host: --emit c
        assert t.cc and t.cflags and t.qemu
    if t.backend == "tflite":
        assert t.vela is not None and t.vela.accelerator_config.startswith(name)


_PRIVATE = ("shared/", "notes §", "anchors-", "§")


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_target_cites_only_public_sources(name):
    """`qc targets NAME` prints each kernel's source to users: it must name a document they can open
    (an ISA manual, a library's docs, a compiler's tables), never the project's private notes."""
    import qc.targets

    path = os.path.join(os.path.dirname(qc.targets.__file__), f"{name}.toml")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for lineno, line in enumerate(text.splitlines(), 1):
        assert not any(p in line for p in _PRIVATE), f"{name}.toml:{lineno}: {line}"
    kernels = [k for ks in tomllib.loads(text).get("kernels", {}).values() for k in ks]
    assert kernels and all(isinstance(k.get("source"), str) and k["source"].strip() for k in kernels)

def test_arm_compiler_flags_and_qemu():
    a76 = load_target("cortex-a76")
    assert "-mcpu=cortex-a76" in a76.cflags and a76.qemu[:3] == ("qemu-aarch64", "-cpu", "cortex-a76")
    assert load_target("cortex-m4").qemu[:3] == ("qemu-system-arm", "-M", "mps2-an386")
    assert load_target("cortex-m55").qemu[:3] == ("qemu-system-arm", "-M", "mps3-an547")
    assert load_target("armv8.6-i8mm").qemu[:3] == ("qemu-aarch64", "-cpu", "max")
    assert set(load_target("cortex-a53").features) == {"neon"}
    assert "i8mm" not in load_target("cortex-a76").features
    assert {"mve", "dsp"} <= set(load_target("cortex-m55").features)


def test_x86_int8_matmul_u8s8_and_no_s8u8():
    t = load_target("x86-avx2")
    assert t.features == ("avx2", "fma", "f16c")  # qc.quant.schemes reads these
    hits = t.kernel_for("MatMul", "uint8", "int8", "uint8", "tensor", "asymmetric", True)
    assert [dev for dev, _ in hits] == ["cpu"] and "QLinearMatMul" in hits[0][1].source
    # QDQ units with int8 activations x uint8 weights: onnxruntime moves the activations to uint8
    # first, then fuses (tests/test_check_kernels.py::test_x86_table_agrees_with_onnxruntime)
    assert "QLinearMatMul" in t.kernel_for("MatMul", "int8", "uint8", "int8")[0][1].source
    assert "QLinearConv" in t.kernel_for("Conv", "int8", "uint8", "int8", "channel")[0][1].source
    # a Conv whose output is not quantized is not fused: dequantize + float Conv
    assert t.kernel_for("Conv", "uint8", "int8", "float32", "channel") == []
    assert t.kernel_for("MatMulNBits", "float32", "int4", "float32", "block")
    assert t.kernel_for("MatMulNBits", "float32", "int8", "float32", "channel")


def test_cuda_table():
    t = load_target("cuda")
    # MatMulInteger: int8 x int8 only on the GPU; uint8 activations fall back to the CPU
    assert [d for d, _ in t.kernel_for("MatMul", "int8", "int8", "int32", "tensor")][0] == "gpu"
    assert [d for d, _ in t.kernel_for("MatMul", "uint8", "int8", "int32", "tensor")] == ["cpu"]
    # no QLinearConv / ConvInteger on CUDA: int8 Conv only on the CPU
    assert {d for d, _ in t.kernel_for("Conv", "uint8", "int8", "uint8", "channel")} == {"cpu"}
    # MatMulNBits (weight-only int4) is registered on CUDA with fp16 activations
    assert t.kernel_for("MatMulNBits", "float16", "int4", "float16", "block")[0][0] == "gpu"
    # the cheapest fp32 MatMul is on the GPU
    assert t.kernel_for("MatMul", "float32", "float32", "float32")[0][0] == "gpu"


def test_mali_and_ethos_have_no_int4_on_the_accelerator():
    mali = load_target("mali-gpu")
    assert not [d for d, _ in mali.kernel_for("MatMul", "float16", "int4", "float16", "block") if d == "gpu"]
    assert not [d for d, _ in mali.kernel_for("MatMul", "float16", "int8", "float16", "channel") if d == "gpu"]
    u55 = load_target("ethos-u55")
    assert u55.kernel_for("MatMul", "int8", "int8", "int8", "channel", "symmetric", True)[0][0] == "npu"
    assert {d for d, _ in u55.kernel_for("MatMul", "int8", "int4", "int8", "channel", "symmetric")} == {"cpu"}
    assert not [d for d, _ in u55.kernel_for("MatMul", "float32", "float32", "float32") if d == "npu"]
    # dynamic weights (BATCH_MATMUL) are int8-only on U55
    assert u55.kernel_for("MatMul", "int16", "int8", "int16", "channel", "symmetric", False) == []


def test_cortex_m4_has_no_fp16():
    assert load_target("cortex-m4").kernel_for("MatMul", "float16", "float16", "float16") == []
    assert load_target("cortex-m55").kernel_for("MatMul", "float16", "float16", "float16")


GOOD = '''name = "my-soc"
description = "a test SoC"
features = ["neon"]
devices = ["cpu", "npu"]
preferred_device = "npu"
backend = "c"

[compiler]
cc = "aarch64-linux-gnu-gcc"
flags = ["-O2"]

[[kernels.cpu]]
op = "MatMul"
act = "float32"
weight = "float32"
out = "float32"
cost = 1.0
source = "a test"

[[kernels.npu]]
op = "MatMul"
act = "int8"
weight = "int8"
out = "int8"
granularity = "channel"
zero_point = "symmetric"
const_weight = true
cost = 0.1
source = "a test"
'''


def _write(tmp_path, text):
    p = tmp_path / "my-soc.toml"
    p.write_text(text)
    return str(p)


def test_user_target_loads(tmp_path):
    t = load_target(_write(tmp_path, GOOD))
    assert t.name == "my-soc" and t.preferred_device == "npu"
    assert t.kernel_for("MatMul", "int8", "int8", "int8", "channel", "symmetric", True)[0][0] == "npu"
    assert t.kernel_for("MatMul", "int8", "int8", "int8", "channel", "symmetric", False) == []


def _line(text, needle, nth=1):
    lines = [i + 1 for i, line in enumerate(text.splitlines()) if line.startswith(needle)]
    return lines[nth - 1]


@pytest.mark.parametrize("old,new,key,needle,nth,what", [
    ('cost = 0.1', 'cost = "cheap"', "kernels.npu[0].cost", "cost =", 2, "expected a number"),
    ('weight = "int8"', 'weight = "int7"', "kernels.npu[0].weight", "weight =", 2, "unknown dtype 'int7'"),
    ('granularity = "channel"', 'granularity = "row"', "kernels.npu[0].granularity", "granularity", 1,
     "unknown granularity 'row'"),
    ('const_weight = true', 'const_weights = true', "kernels.npu[0].const_weights", "const_weights", 1,
     "unknown key"),
    ('devices = ["cpu", "npu"]', 'devices = ["cpu", "tpu"]', "devices", "devices", 1, "unknown device 'tpu'"),
    ('flags = ["-O2"]', 'flags = "-O2"', "compiler.flags", "flags", 1, "expected an array"),
    ('features = ["neon"]', 'features = ["neon"]\nspeed = 3', "speed", "speed", 1, "unknown key"),
])
def test_user_target_errors_name_key_and_line(tmp_path, old, new, key, needle, nth, what):
    text = GOOD.replace(old, new, 1)
    path = _write(tmp_path, text)
    with pytest.raises(QCError) as e:
        load_target(path)
    msg = str(e.value)
    assert f"{path}:{_line(text, needle, nth)}: {key}: {what}" in msg, msg


def test_user_target_kernel_on_undeclared_device(tmp_path):
    text = GOOD.replace("[[kernels.npu]]", "[[kernels.gpu]]")
    with pytest.raises(QCError, match=r"my-soc.toml:\d+: kernels.gpu: 'gpu' is not one of the target's devices"):
        load_target(_write(tmp_path, text))


def test_qc_targets_lists_and_shows_the_table():
    r = run_qc("targets")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines() if not line.startswith("(")]
    assert [row[0] for row in rows] == BUILTIN
    assert ["cuda", "onnx", "cpu,gpu*"] == rows[BUILTIN.index("cuda")][:3]
    r = run_qc("targets", "cortex-a76")
    assert r.returncode == 0, r.stderr
    assert "compiler: aarch64-linux-gnu-gcc -O2 -static -mcpu=cortex-a76" in r.stdout
    assert "qemu: qemu-aarch64 -cpu cortex-a76" in r.stdout
    assert "kernels on cpu (" in r.stdout
    assert "MatMul float32 x float32 -> float32 cost 1 native  -- " in r.stdout
    r = run_qc("targets", "x86-avx2")
    assert ("MatMul uint8 x int8 -> uint8 cost 0.35 native  -- "
            "onnxruntime 1.32.0 CPU EP fuses this QDQ unit into QLinearMatMul") in r.stdout


def test_qc_targets_user_file_error_exits_2(tmp_path):
    path = _write(tmp_path, GOOD.replace('out = "int8"', 'out = "int9"'))
    r = run_qc("targets", path)
    assert r.returncode == 2 and "kernels.npu[0].out: unknown dtype 'int9'" in r.stderr
