"""W4A8 per token (runtime/qc_gemm_s4a8r.c): qc_quantize_q8r and qc_gemm_s4a8r bit-exact with the
numpy model (backends/c/packing_s4r.py) on the host (portable), under qemu-aarch64 (portable on
cortex-a53, SDOT on cortex-a76, the i8mm build on max) and on Cortex-M55; the scale factoring."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from qc.backends.c import packing, toolchain
from qc.backends.c.packing_s4 import BLOCK
from qc.backends.c.packing_s4r import (
    activation_layout,
    factor_scales,
    matmul_s4a8r_ref,
    pack_s4a8r,
    quantize_token_ref,
    scratch_elems,
)

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "qc_kernels.h"
static FILE *fin, *fout;
static void *take(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p || fread(p, 1, n, fin) != n) { fprintf(stderr, "short input\n"); exit(3); }
    return p;
}
static int word(void) { int32_t v; if (fread(&v, 4, 1, fin) != 1) exit(3); return v; }
int main(int argc, char **argv) {
    int cases, i;
    if (argc < 3 || !(fin = fopen(argv[1], "rb")) || !(fout = fopen(argv[2], "wb"))) return 2;
    cases = word();
    for (i = 0; i < cases; ++i) {
        int M = word(), N = word(), K = word(), hb = word(), wlen = word(), nqa = word(), nnu = word(), ncol = word();
        float *A = take((size_t)M * K * 4);
        uint8_t *W = take((size_t)wlen);
        int32_t *wsi = take((size_t)ncol * 4);
        int8_t *zp = take((size_t)ncol);
        float *ws = take((size_t)(ncol / ((K + 31) / 32 ? (K + 31) / 32 : 1)) * 4);
        float *bias = hb ? take((size_t)N * 4) : NULL;
        int8_t *qa = malloc((size_t)nqa + 1);
        float *sa = malloc((size_t)M * 4 + 4), *out = malloc((size_t)M * N * 4 + 4);
        int16_t *nu = malloc((size_t)nnu * 2 + 2);
        qc_quantize_q8r(M, K, A, qa, sa, nu);
        qc_gemm_s4a8r(M, N, K, qa, sa, nu, W, wsi, zp, ws, bias, out);
        fwrite(qa, 1, (size_t)nqa, fout);
        fwrite(sa, 4, (size_t)M, fout);
        fwrite(nu, 2, (size_t)nnu, fout);
        fwrite(out, 4, (size_t)M * N, fout);
        free(A); free(W); free(wsi); free(zp); free(ws); free(bias); free(qa); free(sa); free(out); free(nu);
    }
    fclose(fout);
    printf("variant=%s\n", qc_kernel_variant());
    return 0;
}
"""

# (M, N, K): M = 1 (decode), tiles of 16 rows (prefill chunks) and the rows after them, N off the
# 16-column super-groups, K off 32 and past 16 (the quantizer's NEON steps)
SHAPES = [(1, 1, 32), (1, 7, 64), (1, 33, 100), (2, 4, 1), (3, 5, 33), (5, 13, 96), (8, 17, 31),
          (16, 16, 64), (16, 20, 160), (21, 18, 70), (32, 40, 576), (1, 48, 1536)]

CONFIGS = [
    ("host", None, "portable", [None]),
    ("aarch64", "cortex-a53", "neon", ["cortex-a53"]),
    ("aarch64", "cortex-a76", "dotprod", ["cortex-a76", "max"]),
    ("aarch64", "max", "i8mm", ["max"]),
    ("cortex-m", "cortex-m55", "mve", ["cortex-m55"]),
]


def _case(rng: np.random.Generator, M: int, N: int, K: int, bias: bool):
    a = (rng.standard_normal((M, K)) * rng.uniform(0.1, 4)).astype(np.float32)
    if M > 1 and K >= 8:  # ties of the rounding (amax 127: x / 1.0) and an all-zero row
        a[1, :8] = [127, -2.5, 3.5, -0.5, 0.5, 126.5, -127, 1.5]
        a[0] = 0
    nb = -(-K // BLOCK)
    q = rng.integers(0, 16, (K, N)).astype(np.uint8)
    if N > 2 and K >= 32:
        q[:, 0], q[:, 1] = 15, 0      # the extreme codes against zero points 0 and 15
    wsi = rng.integers(1, 128, (nb, N)).astype(np.int32)
    wsi[:, 0] = 127
    ws = (rng.random(N) * 0.01 + 1e-4).astype(np.float32)
    z = rng.integers(0, 16, (nb, N)).astype(np.uint8)
    z[:, 0], z[:, min(1, N - 1)] = 0, 15
    b = rng.standard_normal(N).astype(np.float32) if bias else None
    return a, q, ws, wsi, z, b


def _cases():
    rng = np.random.default_rng(12)
    data, wants = bytearray(struct.pack("<i", len(SHAPES))), []
    for i, (M, N, K) in enumerate(SHAPES):
        a, q, ws, wsi, z, b = _case(rng, M, N, K, bias=i % 2 == 0)
        packed, wsi_p, zp_p, ws_p = pack_s4a8r(q, ws, wsi, z)
        nqa, _, nnu = scratch_elems(M, K)
        data += struct.pack("<8i", M, N, K, int(b is not None), len(packed), nqa, nnu, wsi_p.size)
        data += a.tobytes() + packed + wsi_p.tobytes() + zp_p.tobytes() + ws_p.tobytes()
        data += b.tobytes() if b is not None else b""
        qa, sa, suma = quantize_token_ref(a)
        qt, nu = activation_layout(qa, suma)
        wants.append(((M, N, K), qt, sa, nu, matmul_s4a8r_ref(a, q, ws, wsi, z, b)))
    return bytes(data), wants


def _verify(raw: bytes, wants, where: str) -> None:
    off = 0
    for shape, *arrays in wants:
        for want in arrays:
            n = want.nbytes
            got = np.frombuffer(raw[off:off + n], want.dtype).reshape(want.shape)
            off += n
            assert got.tobytes() == want.tobytes(), (where, shape, want.dtype, np.argwhere(got != want)[:5])
    assert off == len(raw), (where, off, len(raw))


@pytest.mark.parametrize("kind,build_cpu,variant,run_cpus", CONFIGS,
                         ids=[f"{k}-{c or 'native'}-{v}" for k, c, v, _ in CONFIGS])
def test_w4a8r_kernel_bit_exact_with_numpy(kind, build_cpu, variant, run_cpus, tmp_path):
    toolchain.require_tools(kind)
    drv = tmp_path / "drv.c"
    drv.write_text(DRIVER)
    gemm_s8 = sorted(toolchain.RUNTIME.glob("qc_gemm_s8*.c"))  # qc_kernel_variant and the variant files
    exe = toolchain.build([drv, toolchain.RUNTIME / "qc_gemm_s4a8r.c", *gemm_s8], tmp_path / f"drv-{variant}",
                          kind, build_cpu, extra_flags=packing.variant_macros(variant))
    data, wants = _cases()
    (tmp_path / "in").write_bytes(data)
    for cpu in run_cpus:
        proc = toolchain.run(exe, kind, cpu, [str(tmp_path / "in"), str(tmp_path / "out")], timeout=300)
        assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
        assert f"variant={variant}" in proc.stdout
        _verify((tmp_path / "out").read_bytes(), wants, f"{variant} built for {build_cpu}, run on {cpu}")


def test_factor_scales_recovers_the_two_levels():
    rng = np.random.default_rng(4)
    nb, N = 18, 40
    ws = (rng.random(N) * 0.01 + 1e-4).astype(np.float32)
    m, e = np.frexp(ws)
    ws = np.ldexp(np.ceil(m * 2 ** 16) / 2 ** 16, e).astype(np.float32)   # 16 significant bits: exact products
    wsi = rng.integers(1, 128, (nb, N))
    wsi[rng.integers(0, nb, N), np.arange(N)] = 127
    scales = (ws[None, :] * wsi).astype(np.float32)
    got = factor_scales(scales)
    assert got is not None
    assert np.array_equal(got[0], ws) and np.array_equal(got[1], wsi)
    assert np.array_equal((got[0][None, :] * got[1]).astype(np.float32), scales)


def test_factor_scales_refuses_unrelated_scales():
    assert factor_scales(np.array([[1.0], [0.001]], np.float32)) is None   # ratio 1000 > 127
    assert factor_scales(np.array([[1.0], [np.float32(0.7071068)]], np.float32)) is None


def test_reference_refuses_an_overflowing_sum():
    K, N = 8192 + 32 * 40, 1
    a = np.full((1, K), 1.0, np.float32)
    q = np.full((K, N), 15, np.uint8)
    nb = -(-K // BLOCK)
    with pytest.raises(Exception, match="overflows"):
        matmul_s4a8r_ref(a, q, np.ones(N, np.float32), np.full((nb, N), 127), np.zeros((nb, N), np.uint8))


@pytest.mark.parametrize("target,cpu", [("cortex-a76", "cortex-a76"), ("armv8.6-i8mm", "max")])
def test_mlp_w4a8_per_token_matches_onnxruntime_under_qemu(tmp_path, target, cpu):
    """--quant w4a8 --act-granularity token: the C (qc_gemm_s4a8r, through fuse-matmul-nbits-rows)
    matches onnxruntime on the emitted model.onnx (the chain and MatMulNBits accuracy_level 1) to
    float32 rounding, in 16-row tiles and single rows."""
    import onnx

    import qc
    from qc.backends.c.runner import build_model, load_report, run_model
    from qc.onnx.evaluator import ort_session
    from qc.quant.schemes import QuantOptions
    from test_c_w4a8 import _mlp

    toolchain.require_tools("aarch64")
    src = _mlp(tmp_path / "m.onnx")
    qc.compile(str(src), target=target, quant=QuantOptions("w4a8", act_granularity="token")).write(
        str(tmp_path / "c"), harness=True)
    report = load_report(tmp_path / "c")
    assert report["kernels"].get("gemm s4a8 per row") == 2, report["kernels"]
    ops = [n.op_type for n in onnx.load(str(tmp_path / "c" / "model.onnx")).graph.node]
    assert ops.count("Round") == 2 and ops.count("MatMulNBits") == 2
    x = np.random.RandomState(1).randn(1, 16, 64).astype(np.float32)
    x[0, 3] = 0
    exe = build_model(report, "aarch64", cpu)
    (y,) = run_model(exe, report, {"x": x}, "aarch64", cpu, timeout=120)
    ref = ort_session(str(tmp_path / "c" / "model.onnx")).run(None, {"x": x})[0]
    err = np.abs(y - ref).max() / np.abs(ref).max()
    assert err < 1e-5, err
