"""W4A8 (runtime/qc_gemm_s4a8*.c): the activation quantizer and qc_gemm_s4a8 bit-exact with the
numpy model (backends/c/packing_s4.py) on the host, under qemu-aarch64 (portable on cortex-a53,
SDOT on cortex-a76 and max, SMMLA on max) and on Cortex-M4 / M55; MatMulNBits models through
qc compile --target cortex-a76 against onnxruntime; the kernel choice against the target tables.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from qc.backends.c import packing, toolchain
from qc.backends.c.kernels import C_KERNELS, gemm_variant
from qc.backends.c.lower_w4 import kernel_for
from qc.backends.c.packing_s4 import (
    BLOCK,
    _order,
    activation_layout,
    layout,
    matmul_s4a8_ref,
    pack_s4a8,
    quantize_rows_ref,
    scratch_elems,
)
from qc.onnx.evaluator import ort_session
from qc.targets import builtin_targets, load_target

SOURCES = sorted(toolchain.RUNTIME.glob("qc_gemm_s4a8*.c"))

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
        int M = word(), N = word(), K = word(), hz = word(), hb = word(), wlen = word();
        int nqa = word(), nsa = word(), nws = word();
        float *A = take((size_t)M * K * 4);
        uint8_t *W = take((size_t)wlen);
        float *ws = take((size_t)nws * 4);
        int8_t *zp = hz ? take((size_t)nws) : NULL;
        float *bias = hb ? take((size_t)N * 4) : NULL;
        int8_t *qa = malloc((size_t)nqa);
        float *sa = malloc((size_t)nsa * 4), *out = malloc((size_t)M * N * 4 + 4);
        int32_t *suma = malloc((size_t)nsa * 4);
        qc_quantize_q8b32(M, K, A, qa, sa, suma);
        qc_gemm_s4a8(M, N, K, qa, sa, suma, W, ws, zp, bias, out);
        fwrite(qa, 1, (size_t)nqa, fout);
        fwrite(sa, 4, (size_t)nsa, fout);
        fwrite(suma, 4, (size_t)nsa, fout);
        fwrite(out, 4, (size_t)M * N, fout);
        free(A); free(W); free(ws); free(zp); free(bias); free(qa); free(sa); free(out); free(suma);
    }
    fclose(fout);
    printf("variant=%s\n", qc_kernel_variant());
    return 0;
}
"""

# (M, N, K): M = 1 (GEMV) and M > 1 off the 4-row tiles, N off the 4-column groups, K off 32;
# 21 = a 16-row tile (dotprod), a 4-row tile and a single row
SHAPES = [(1, 1, 32), (1, 7, 64), (1, 33, 100), (2, 4, 1), (3, 5, 33), (4, 8, 64), (5, 13, 96),
          (8, 17, 31), (7, 6, 130), (32, 12, 160), (21, 18, 70)]

# (kind, cpu the binary is compiled for, variant, qemu cpus it must run on)
CONFIGS = [
    ("host", None, "portable", [None]),
    ("aarch64", "cortex-a53", "neon", ["cortex-a53"]),
    ("aarch64", "cortex-a76", "dotprod", ["cortex-a76", "max"]),
    ("aarch64", "max", "i8mm", ["max"]),
    ("cortex-m", "cortex-m4", "dsp", ["cortex-m4"]),
    ("cortex-m", "cortex-m55", "mve", ["cortex-m55"]),
]


def _case(rng: np.random.Generator, M: int, N: int, K: int, asym: bool, bias: bool):
    a = (rng.standard_normal((M, K)) * rng.uniform(0.1, 4)).astype(np.float32)
    if M > 1 and K >= 8:  # ties of the rounding (amax 127 -> x * 1.0) and an all-zero block
        a[1, :8] = [127, -2.5, 3.5, -0.5, 0.5, 126.5, -127, 1.5]
        a[0, :min(K, BLOCK)] = 0
    nb = -(-K // BLOCK)
    q = rng.integers(0, 16, (K, N)).astype(np.uint8)
    s = (rng.standard_normal((nb, N)) * 0.05).astype(np.float32)
    z = rng.integers(0, 16, (nb, N)).astype(np.uint8) if asym else None
    b = rng.standard_normal(N).astype(np.float32) if bias else None
    return a, q, s, z, b


def _cases(variant: str):
    rng = np.random.default_rng(11)
    data, wants = bytearray(struct.pack("<i", 2 * len(SHAPES))), []
    for i, (M, N, K) in enumerate(SHAPES):
        for asym in (False, True):
            a, q, s, z, b = _case(rng, M, N, K, asym, bias=(i + asym) % 2 == 0)
            packed, ws, wzp = pack_s4a8(q, s, z, variant)
            nqa, nsa, _ = scratch_elems(M, K, variant)
            data += struct.pack("<9i", M, N, K, int(asym), int(b is not None), len(packed), nqa, nsa, ws.size)
            data += a.tobytes() + packed + ws.tobytes() + (wzp.tobytes() if wzp is not None else b"")
            data += b.tobytes() if b is not None else b""
            qa, sa, suma = activation_layout(*quantize_rows_ref(a), variant)
            wants.append(((M, N, K, asym), qa, sa, suma, matmul_s4a8_ref(a, q, s, z, b)))
    return bytes(data), wants


def _verify(raw: bytes, wants, where: str) -> None:
    off = 0
    for shape, *arrays in wants:
        for want in arrays:
            n = want.nbytes
            got = np.frombuffer(raw[off:off + n], want.dtype).reshape(want.shape)
            off += n
            # bit for bit (floats compared as their bytes: -0.0 and NaN count)
            assert got.tobytes() == want.tobytes(), (where, shape, want.dtype, np.argwhere(got != want)[:5])
    assert off == len(raw), (where, off, len(raw))


@pytest.mark.parametrize("kind,build_cpu,variant,run_cpus", CONFIGS,
                         ids=[f"{k}-{c or 'native'}-{v}" for k, c, v, _ in CONFIGS])
def test_w4a8_kernels_bit_exact_with_numpy(kind, build_cpu, variant, run_cpus, tmp_path):
    toolchain.require_tools(kind)
    drv = tmp_path / "w4a8_driver.c"
    drv.write_text(DRIVER)
    gemm_s8 = sorted(toolchain.RUNTIME.glob("qc_gemm_s8*.c"))  # the entry points and every variant file
    exe = toolchain.build([drv, *SOURCES, *gemm_s8], tmp_path / f"drv-{variant}", kind,
                          build_cpu, extra_flags=packing.variant_macros(variant))
    data, wants = _cases(variant)
    (tmp_path / "in").write_bytes(data)
    for cpu in run_cpus:
        proc = toolchain.run(exe, kind, cpu, [str(tmp_path / "in"), str(tmp_path / "out")], timeout=180)
        assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
        assert f"variant={variant}" in proc.stdout
        _verify((tmp_path / "out").read_bytes(), wants, f"{variant} built for {build_cpu}, run on {cpu}")


@pytest.mark.parametrize("variant", ["portable", "dotprod", "i8mm"])
def test_packing_holds_every_weight_once(variant):
    """Each layout is a permutation of the (column, k) slots of a 4 x 32 tile, and the nibbles
    unpack to q - 8 at those slots."""
    order = _order(layout(variant)).reshape(-1)
    assert sorted(order.tolist()) == list(range(4 * BLOCK))
    rng = np.random.default_rng(3)
    q = rng.integers(0, 16, (BLOCK, 4)).astype(np.uint8)
    packed, _, _ = pack_s4a8(q, np.ones((1, 4), np.float32), None, variant)
    b = np.frombuffer(packed, np.uint8)[:64].reshape(4, 16)   # dotprod: group 0 of a super-group
    nib = np.stack([b & 15, b >> 4], axis=1).astype(np.int16)   # v, half, byte
    nib = np.where(nib > 7, nib - 16, nib).reshape(-1)
    assert np.array_equal(nib, (q.T.reshape(-1).astype(np.int16) - 8)[order])


def _nbits_model(K: int, N: int, rng, asym: bool, level: int, M: int = 3, block: int = BLOCK,
                 bias: bool = False) -> onnx.ModelProto:
    blocks = -(-K // block)
    q = rng.integers(0, 16, (N, blocks * block)).astype(np.uint8)
    B = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(N, blocks, block // 2)
    inits = [numpy_helper.from_array(B, "B"),
             numpy_helper.from_array((rng.random((N, blocks)) * 0.02 + 0.01).astype(np.float32), "S")]
    ins = ["x", "B", "S"]
    if asym:
        z = rng.integers(0, 16, (N, blocks + blocks % 2)).astype(np.uint8)
        inits.append(numpy_helper.from_array((z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8), "Z"))
        ins.append("Z")
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(N).astype(np.float32), "bias"))
        ins += [""] if asym else ["", ""]
        ins.append("bias")
    node = helper.make_node("MatMulNBits", ins, ["y"], domain="com.microsoft", K=K, N=N, bits=4, block_size=block,
                            accuracy_level=level)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TP.FLOAT, [M, K])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [M, N])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                             ir_version=9)


@pytest.mark.parametrize("asym", [False, True], ids=["symmetric", "asymmetric"])
def test_numpy_model_is_onnxruntimes_accuracy_level_4(asym):
    """The scheme is onnxruntime's MatMulNBits with accuracy_level 4 (MLAS CompInt8: A quantized
    per block of 32, amax / 127): its float result agrees to float32 rounding of the sums, far
    tighter than the gap to the float32 (accuracy_level 0) result."""
    rng = np.random.default_rng(6)
    K, N = 96, 20
    m4 = _nbits_model(K, N, np.random.default_rng(5), asym, 4)
    m0 = _nbits_model(K, N, np.random.default_rng(5), asym, 0)
    x = rng.standard_normal((3, K)).astype(np.float32)
    w = {i.name: numpy_helper.to_array(i) for i in m4.graph.initializer}
    q = np.stack([w["B"] & 15, w["B"] >> 4], -1).reshape(N, -1)[:, :K].T.astype(np.uint8)
    z = None if not asym else np.stack([w["Z"] & 15, w["Z"] >> 4], -1).reshape(N, -1)[:, :K // BLOCK].T
    ref = matmul_s4a8_ref(x, q, w["S"].T, z)
    ort4 = ort_session(m4).run(None, {"x": x})[0]
    ort0 = ort_session(m0).run(None, {"x": x})[0]
    scale = np.abs(ort0).max()
    assert np.abs(ref - ort4).max() <= 1e-5 * scale
    assert np.abs(ort0 - ort4).max() > 10 * np.abs(ref - ort4).max()


def _two_nbits(level: int) -> onnx.ModelProto:
    """x[5, 100] -> MatMulNBits symmetric -> y0, and -> MatMulNBits asymmetric -> y1 (N = 37,
    block 64, bias), from the same seeds for every level."""
    K, N, M = 100, 37, 5
    sym, asym = (_nbits_model(K, N, np.random.default_rng(9 + a), a, level, M=M, block=64, bias=True)
                 for a in (False, True))
    nodes, inits = [], []
    for i, m in enumerate((sym, asym)):
        ren = {n: f"{n}{i}" for n in ("B", "S", "Z", "bias", "y")}
        node = m.graph.node[0]
        nodes.append(helper.make_node("MatMulNBits", [ren.get(n, n) if n else "" for n in node.input], [f"y{i}"],
                                      domain="com.microsoft", **{t.name: helper.get_attribute_value(t)
                                                                 for t in node.attribute}))
        inits += [numpy_helper.from_array(numpy_helper.to_array(t), ren[t.name]) for t in m.graph.initializer]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [M, K])],
                          [helper.make_tensor_value_info(f"y{i}", TP.FLOAT, [M, N]) for i in range(2)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                             ir_version=9)


def test_matmulnbits_w4a8_lowering_on_the_host(tmp_path):
    """The lowering's edges, portable kernels on the host: block 64 (scales and zero points
    repeated over each 32), K = 100 (a partial block), N = 37 (a partial group), M = 5, bias,
    symmetric and asymmetric: bit for bit the numpy model of the same arithmetic, and within 1%
    of onnxruntime's accuracy_level 4 (its A blocks are 64 wide here, ours 32: closer to
    level 0's float32 A)."""
    from qc.backends.c import emit_c, prepare
    from qc.backends.c.runner import build_model, run_model
    from qc.frontend.onnx import import_onnx

    toolchain.require_tools("host")
    K, N = 100, 37
    model = _two_nbits(4)
    module = import_onnx(model)
    prepare(module, {})
    report = emit_c(module, tmp_path / "c", load_target("cortex-a76"), harness=True, variant="portable")
    assert report["kernels"].get("gemm s4a8") == 2, report["kernels"]
    x = np.random.default_rng(10).standard_normal((5, K)).astype(np.float32)
    got = run_model(build_model(report, "host"), report, {"x": x}, "host")
    refs = ort_session(model).run(None, {"x": x})
    f32s = ort_session(_two_nbits(0)).run(None, {"x": x})
    w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for i, (y, ref, f32) in enumerate(zip(got, refs, f32s)):
        q = np.stack([w[f"B{i}"] & 15, w[f"B{i}"] >> 4], -1).reshape(N, -1)[:, :K].T.astype(np.uint8)
        s32 = np.repeat(w[f"S{i}"].T, 2, axis=0)[:4]
        z32 = None if i == 0 else np.repeat(np.stack([w["Z1"] & 15, w["Z1"] >> 4], -1).reshape(N, -1)[:, :2].T, 2,
                                            axis=0)[:4]
        assert y.tobytes() == matmul_s4a8_ref(x, q, s32, z32, w[f"bias{i}"]).tobytes(), i
        assert np.abs(y - ref).max() <= 1e-2 * np.abs(ref).max(), i
        assert np.abs(y - f32).mean() < np.abs(ref - f32).mean(), i


def _mlp(path: Path) -> Path:
    """x[1,16,64] -> MatMul 64x96 + bias -> Relu -> MatMul 96x40 -> Add: a transformer FFN."""
    rng = np.random.RandomState(4)
    w1 = (rng.randn(64, 96) / 8).astype(np.float32)
    w2 = (rng.randn(96, 40) / 10).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["o"]),
             helper.make_node("Add", ["o", "x40"], ["y"])]
    g = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 16, 64])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [1, 16, 40])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
                           numpy_helper.from_array(rng.randn(96).astype(np.float32) * 0.1, "b1"),
                           numpy_helper.from_array(rng.randn(40).astype(np.float32), "x40")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("target,cpu", [("cortex-a76", "cortex-a76"), ("armv8.6-i8mm", "max")])
def test_mlp_w4a8_matches_onnxruntime_under_qemu(tmp_path, target, cpu):
    """qc compile --quant w4a8 (accuracy_level 4) and --quant w4 (level 0, which the C backend
    runs as W4A8 on a dotprod / i8mm target, while onnxruntime runs it weight-only in float32)
    give the same C; run under qemu, it matches onnxruntime on each emitted model.onnx: w4a8 to
    float32 rounding (the same scheme), w4 within the activation rounding."""
    import qc
    from qc.backends.c.runner import build_model, load_report, run_model

    toolchain.require_tools("aarch64")
    src = _mlp(tmp_path / "m.onnx")
    for quant in ("w4a8", "w4"):
        qc.compile(str(src), target=target, quant=quant).write(str(tmp_path / quant), harness=True)
    report = load_report(tmp_path / "w4a8")
    assert report["variant"] == gemm_variant(load_target(target))
    assert report["kernels"].get("gemm s4a8") == 2, report["kernels"]
    for f in ("model.c", "model_weights.c"):
        assert (tmp_path / "w4a8" / f).read_bytes() == (tmp_path / "w4" / f).read_bytes(), f
    x = np.random.RandomState(1).randn(1, 16, 64).astype(np.float32)
    exe = build_model(report, "aarch64", cpu)
    (y,) = run_model(exe, report, {"x": x}, "aarch64", cpu, timeout=120)
    for quant, tol in (("w4a8", 1e-5), ("w4", 2e-2)):
        ref = ort_session(str(tmp_path / quant / "model.onnx")).run(None, {"x": x})[0]
        err = np.abs(y - ref).max() / np.abs(ref).max()
        assert err < tol, (quant, err)


@pytest.mark.parametrize("name", [n for n in builtin_targets() if load_target(n).backend == "c"])
def test_kernel_choice_follows_the_variant(name):
    """accuracy_level 4 always runs W4A8; level 0 (unset) runs it where the target's variant has
    SDOT or SMMLA; level 1 (fp32) and blocks that are not multiples of 32 stay weight-only float.
    The kernels are named in C_KERNELS for MatMulNBits."""
    v = gemm_variant(load_target(name))
    fast = v in ("dotprod", "i8mm")
    assert kernel_for(0, BLOCK, v) == ("qc_gemm_s4a8" if fast else "qc_matmul_f32_s4")
    assert kernel_for(4, 128, v) == "qc_gemm_s4a8"
    assert kernel_for(1, BLOCK, v) == kernel_for(4, 16, v) == "qc_matmul_f32_s4"
    names = {"qc_matmul_f32_s4", "qc_gemm_s4a8" + ("_" + v if fast else "")}
    assert all(("MatMulNBits", "float32", "int4") in C_KERNELS[n].covers for n in names)
