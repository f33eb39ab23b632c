"""qc_vmath.h (vector exp / log / erf / tanh / sigmoid / SiLU / GELU) and the float kernels built on
it, on the host (portable), under qemu-aarch64 (NEON; cortex-a53 and cortex-a76) and on Cortex-M4
(portable, FPv4) / Cortex-M55 (Helium MVE-F) under qemu-system-arm.

tests/c_vmath/ulp.c measures the max ulp error of each function against the C library's double
function rounded to float, over every 2^SHIFT-th float32 bit pattern plus the specials and the
neighbourhoods of every threshold, and counts the inputs where the SIMD lanes and the portable
lane differ. CI uses SHIFT = 16 (65,536 patterns + ~4,400 specials per function); QC_SLOW=1 runs
the dense sweep of docs/c-kernels.md (SHIFT = 12, 2^20 patterns). tests/c_vmath/kernels.c runs the
kernels on fixed calls; outputs are checked against numpy and must be the same bytes on every
target (NaN patterns aside; Helium: except results below 1e-34 that its flush-to-zero makes 0).
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from qc.backends.c import toolchain

HERE = Path(__file__).parent / "c_vmath"
RT = toolchain.RUNTIME
SHIFT = 12 if os.environ.get("QC_SLOW") == "1" else 16

# Max ulp error over the whole float range (docs/c-kernels.md); (bound over x >= lo, lo) for the
# functions whose tiny results lose precision below lo (see the docs).
BOUNDS = {"exp": 2.0, "log": 3.2, "erf": 5.5, "tanh": 4.3, "sigmoid": 3.4}
BOUNDS_LO = {"silu": 3.8, "gelu": 5.2, "gelu_tanh": 3.2}

# (kind, compile cpu, qemu cpus)
CONFIGS = [("host", None, [None]), ("aarch64", "cortex-a53", ["cortex-a53"]),
           ("aarch64", "cortex-a76", ["cortex-a76"]), ("cortex-m", "cortex-m4", ["cortex-m4"]),
           ("cortex-m", "cortex-m55", ["cortex-m55"])]
IDS = [c[1] or "host" for c in CONFIGS]


def _build(src: Path, kind: str, cpu: str | None, out: Path, extra: list[Path] = ()) -> Path:
    toolchain.require_tools(kind)
    return toolchain.build([src, *extra], out, kind, cpu)


def _parse_ulp(stdout: str) -> dict[str, tuple[float, int, float, int, int]]:
    rows = {}
    for line in stdout.split("\n"):
        f = line.split()
        if len(f) == 7:
            rows[f[0]] = (int(f[1]) / 1000, int(f[2], 16), int(f[3]) / 1000, int(f[5]), int(f[6]))
    return rows


@pytest.mark.parametrize("kind,cpu,runs", CONFIGS, ids=IDS)
def test_ulp_bounds(tmp_path, kind, cpu, runs):
    exe = _build(HERE / "ulp.c", kind, cpu, tmp_path / "ulp")
    for run_cpu in runs:
        proc = toolchain.run(exe, kind, run_cpu, [str(SHIFT)], timeout=600)
        assert proc.returncode == 0, proc.stderr
        rows = _parse_ulp(proc.stdout)
        assert set(rows) == set(BOUNDS) | set(BOUNDS_LO), proc.stdout
        for name, (worst, at, worst_lo, mism, count) in rows.items():
            where = f"{name} on {run_cpu or 'host'}: {worst} ulp at 0x{at:08x}"
            assert count >= (1 << (32 - SHIFT)), where
            assert mism == 0, f"{where}: SIMD and portable lanes differ on {mism} inputs"
            if name in BOUNDS:
                assert worst <= BOUNDS[name], where
            else:
                assert worst_lo <= BOUNDS_LO[name], f"{where}; {worst_lo} ulp in the documented range"


def test_ulp_metric_catches_errors(tmp_path):
    """The sweep fails a deliberately wrong exp (the ulp metric and the specials are live)."""
    toolchain.require_tools("host")
    src = tmp_path / "bad.c"
    bad = 'static float bad_exp(float v) { return qc_expf(v) * (1.0f + 0x1p-20f); }'
    text = (HERE / "ulp.c").read_text().replace('"qc_vmath.h"', '"qc_vmath.h"\n' + bad)
    text = text.replace('{"exp", qc_expf,', '{"exp", bad_exp,')
    assert "bad_exp," in text
    src.write_text(text)
    exe = toolchain.build([src], tmp_path / "bad", "host")
    rows = _parse_ulp(toolchain.run(exe, "host", None, ["20"]).stdout)
    assert rows["exp"][0] > 3.0 and rows["log"][0] <= BOUNDS["log"]


# -- the kernels ----------------------------------------------------------------------------------
NX, NH, R, C = 1103, 64, 17, 61
UNOPS = ["neg", "abs", "relu", "exp", "log", "sqrt", "recip", "sigmoid", "silu", "tanh", "erf", "gelu",
         "gelu_tanh"]


def _inputs():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(NX) * 3).astype(np.float32)
    x[:R * C] += np.repeat(rng.uniform(-20, 20, R), C).astype(np.float32)  # row means far from 0
    x2 = rng.uniform(0.5, 2.0, NX).astype(np.float32) * np.where(rng.random(NX) < 0.5, -1, 1).astype(np.float32)
    h = np.array([0, 0x8000, 0x7c00, 0xfc00, 0x7e00, 0x7d01, 0x0001, 0x03ff, 0x0400, 0x3c00, 0x7bff, 0xfbff]
                 + list(rng.integers(0, 1 << 16, NH - 12)), np.uint16)
    h = np.where((h & 0x7c00) == 0x7c00, np.where(h & 0x3ff, 0x7e00 | (h & 0x81ff), h), h).astype(np.uint16)
    # float32 -> float16: ties at both normal and subnormal float16 spacing, overflow, underflow
    ties = np.array([1 + 2**-11, 1 + 3 * 2**-11, 65520.0, 65519.0, 2**-25, 3 * 2**-25, 2**-26, -2**-24 * 1.5],
                    np.float32)
    x[R * C:R * C + len(ties)] = ties
    return x, x2, h


def _ulps(got, ref):
    """|got - ref| in ulps of ref rounded to float32; 0 where both overflow to the same infinity"""
    ref = np.asarray(ref, np.float64)
    rf = ref.astype(np.float32)
    inf = np.isinf(rf)
    sp = np.spacing(np.abs(np.where(inf, 1.0, rf)).astype(np.float32)).astype(np.float64)
    err = np.abs(got.astype(np.float64) - np.where(inf, 0.0, ref)) / sp
    return np.where(inf, np.where(got == rf, 0.0, np.inf), err)


def _check_kernels(raw: bytes, x, x2, h, where: str):
    import math

    pos = 0

    def take(n, dt="<f4"):
        nonlocal pos
        size = np.dtype(dt).itemsize * n
        a = np.frombuffer(raw[pos:pos + size], dt)
        pos += size
        return a

    xd = x.astype(np.float64)
    erf = np.vectorize(math.erf)
    np.seterr(all="ignore")
    refs = {"neg": -xd, "abs": np.abs(xd), "relu": np.maximum(xd, 0), "exp": np.exp(xd),
            "log": np.log(np.where(xd > 0, xd, np.nan)), "sqrt": np.sqrt(np.where(xd >= 0, xd, np.nan)),
            "recip": 1 / xd, "sigmoid": 1 / (1 + np.exp(-xd)), "silu": xd / (1 + np.exp(-xd)),
            "tanh": np.tanh(xd), "erf": erf(xd), "gelu": 0.5 * xd * (1 + erf(xd / math.sqrt(2))),
            "gelu_tanh": 0.5 * xd * (1 + np.tanh(math.sqrt(2 / math.pi) * (xd + 0.044715 * xd ** 3)))}
    bound = {"neg": 0, "abs": 0, "relu": 0, "sqrt": 0.5, "recip": 0.5, "exp": 2, "log": 3.2, "sigmoid": 3.4,
             "silu": 3.8, "tanh": 4.3, "erf": 5.5, "gelu": 5.2, "gelu_tanh": 4}
    with np.errstate(all="ignore"):
        for name in UNOPS:
            got, ref = take(NX), refs[name]
            ok = np.isnan(ref)
            assert np.isnan(got[ok]).all(), f"{where}: {name} NaN"
            keep = ~ok & (xd >= -1 if name.startswith("gelu") else True)
            err = _ulps(got[keep], ref[keep])
            assert err.max() <= bound[name], f"{where}: {name} {err.max()} ulp at x={x[keep][err.argmax()]}"
    a, b = x[:R * C].reshape(R, C), x2[:R * C].reshape(R, C)
    for name, want in [("add", a + b), ("mul scalar", a * x2[0]), ("sub row", a - x2[:C]),
                       ("div row/contig", x[:C] / b), ("div strided", a / x2[:R * C].reshape(C, R).T)]:
        np.testing.assert_array_equal(take(R * C).reshape(R, C), want, err_msg=f"{where}: {name}")
    np.testing.assert_array_equal(take(R * C).reshape(R, C), a * a, err_msg=f"{where}: pow 2")
    ad = a.astype(np.float64)
    e = np.exp(ad - ad.max(1, keepdims=True))
    np.testing.assert_allclose(take(R * C).reshape(R, C), e / e.sum(1, keepdims=True), rtol=2e-6, atol=1e-30,
                               err_msg=f"{where}: softmax")
    np.testing.assert_allclose(take(R * C).reshape(R, C), np.log(e / e.sum(1, keepdims=True)), rtol=1e-6,
                               atol=2e-6, err_msg=f"{where}: logsoftmax")
    s3 = x[:105].astype(np.float64).reshape(5, 7, 3)
    e3 = np.exp(s3 - s3.max(1, keepdims=True))
    np.testing.assert_allclose(take(105).reshape(5, 7, 3), e3 / e3.sum(1, keepdims=True), rtol=2e-6,
                               err_msg=f"{where}: softmax inner 3")
    mean, var = ad.mean(1, keepdims=True), ad.var(1, keepdims=True)
    ln = (ad - mean) / np.sqrt(var + 1e-5) * x2[:C] + x2[C:2 * C]
    np.testing.assert_allclose(take(R * C).reshape(R, C), ln, rtol=1e-5, atol=2e-6, err_msg=f"{where}: layernorm")
    stats = take(2 * R)
    np.testing.assert_allclose(stats[:R], mean[:, 0], rtol=1e-6, err_msg=f"{where}: layernorm mean")
    np.testing.assert_allclose(stats[R:], 1 / np.sqrt(var[:, 0] + 1e-5), rtol=2e-6, err_msg=f"{where}: invstd")
    rms = ad / np.sqrt((ad * ad).mean(1, keepdims=True) + 1e-6) * x2[:C]
    np.testing.assert_allclose(take(R * C).reshape(R, C), rms, rtol=2e-6, atol=1e-6, err_msg=f"{where}: rmsnorm")
    np.testing.assert_allclose(take(R), ad.mean(1), rtol=1e-6, err_msg=f"{where}: reduce mean")
    np.testing.assert_array_equal(take(R), a.max(1), err_msg=f"{where}: reduce max")
    np.testing.assert_allclose(take(C), ad.sum(0), rtol=1e-5, atol=1e-5, err_msg=f"{where}: reduce sum axis 0")
    for rows, n, c0, s0 in ((R, C - 1, 0, 30), (1, 26, 0, 26)):
        h2 = n // 2
        xr = x[:rows * C].reshape(rows, C)[:, :n] if rows > 1 else x[:n][None]
        cos, sin = x2[c0:c0 + n], x2[s0:s0 + n]
        want = xr * cos + np.concatenate([-xr[:, h2:], xr[:, :h2]], 1) * sin
        np.testing.assert_array_equal(take(rows * n).reshape(rows, n), want, err_msg=f"{where}: rope {n}")
    f = take(NH)
    np.testing.assert_array_equal(f.view(np.uint32), h.view(np.float16).astype(np.float32).view(np.uint32),
                                  err_msg=f"{where}: cast f16 -> f32")
    np.testing.assert_array_equal(take(NH, "<u2"), h, err_msg=f"{where}: cast f32 -> f16 round trip")
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(take(NX, "<u2"), x.astype(np.float16).view(np.uint16),
                                      err_msg=f"{where}: cast f32 -> f16 (round to nearest even)")
    assert pos == len(raw), f"{where}: {len(raw)} bytes, read {pos}"


@pytest.fixture(scope="module")
def kernel_outputs():
    return {}


@pytest.mark.parametrize("kind,cpu,runs", CONFIGS, ids=IDS)
def test_kernels(tmp_path, kernel_outputs, kind, cpu, runs):
    x, x2, h = _inputs()
    inp = tmp_path / "in.bin"
    inp.write_bytes(x.tobytes() + x2.tobytes() + h.astype("<u2").tobytes())
    srcs = [RT / "qc_ops.c", RT / "qc_ops_nn.c"]
    exe = _build(HERE / "kernels.c", kind, cpu, tmp_path / "kernels", srcs)
    for run_cpu in runs:
        out = tmp_path / f"out-{run_cpu}.bin"
        proc = toolchain.run(exe, kind, run_cpu, [str(inp.resolve()), str(out.resolve())], timeout=300)
        assert proc.returncode == 0, proc.stderr
        raw = out.read_bytes()
        _check_kernels(raw, x, x2, h, f"{kind} {run_cpu}")
        got = kernel_outputs[run_cpu or "host"] = _canonical_nans(raw)
        if "host" in kernel_outputs:
            want = kernel_outputs["host"]
            if run_cpu == "cortex-m55":
                got, want = _helium_flush(got, want)
            assert got == want, f"{run_cpu}: not the same bytes as the portable host build"


def _helium_flush(got: bytes, want: bytes) -> tuple[bytes, bytes]:
    """Helium's floating point flushes subnormals (inputs, results, intermediates such as
    exp(x < -87.3)): where the portable result is below 1e-34 in magnitude and Helium's is a zero
    of the same sign, take them as equal."""
    n32 = (len(want) - 2 * (NH + NX)) // 4
    g = np.frombuffer(got[:4 * n32], "<u4").copy()
    w = np.frombuffer(want[:4 * n32], "<u4").copy()
    tiny = (np.abs(w.view(np.float32)) < 1e-34) & ((g & 0x7fffffff) == 0) & ((g ^ w) < 0x80000000)
    w[tiny] = g[tiny]
    return g.tobytes() + got[4 * n32:], w.tobytes() + want[4 * n32:]


def _canonical_nans(raw: bytes) -> bytes:
    """NaNs of the float32 part as one pattern: libm's sqrt(-1) is -NaN on x86, +NaN on Arm."""
    n32 = (len(raw) - 2 * (NH + NX)) // 4
    f = np.frombuffer(raw[:4 * n32], "<u4").copy()
    f[((f & 0x7f800000) == 0x7f800000) & ((f & 0x7fffff) != 0)] = 0x7fc00000
    return f.tobytes() + raw[4 * n32:]


def test_struct_layout():
    """The driver's input layout (guards the fixed sizes shared with kernels.c)."""
    text = (HERE / "kernels.c").read_text()
    for name, value in (("NX", NX), ("NH", NH), ("R", R), ("C", C)):
        assert f"#define {name} {value}\n" in text
    assert struct.calcsize("<f") == 4
