"""The C kernels (backends/c/runtime/qc_kernels.h) against numpy and onnxruntime, on the host,
under qemu-aarch64 (cortex-a53, cortex-a76, max) and on Cortex-M4 / M55 under qemu-system-arm.

One driver (tests/c_kernels/driver.c) is built per kernel variant; it reads a stream of kernel
calls from a file and writes their outputs. Integer paths must be bit-exact with the numpy
int64 model (and so with each other); qc_matmul_f16 is bit-exact with the float32-accumulation
model; float paths are checked within the tolerances stated at each assertion.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from qc.backends.c import packing, toolchain
from qc.errors import QCError
from qc.onnx.evaluator import ort_session

DRIVER = Path(__file__).parent / "c_kernels" / "driver.c"
KERNEL_SOURCES = sorted(toolchain.RUNTIME.glob("qc_gemm*.c")) + sorted(
    toolchain.RUNTIME.glob("qc_quant*.c")) + sorted(toolchain.RUNTIME.glob("qc_f16*.c"))

OP_GEMM, OP_REQUANT, OP_DEQUANT_ACC, OP_S4, OP_F16, OP_Q_S8, OP_Q_U8, OP_DQ_S8, OP_DQ_U8, \
    OP_MBQM, OP_CVT_F16, OP_IM2COL, OP_GEMM_EP, OP_GELU = range(1, 15)

# Shapes with M, N, K off every SIMD width (1, 3, 17, 33, 65) so the tails run.
# K % 16 in 9..15 reaches the second packed k-block of the i8mm tail.
GEMM_SHAPES = [(1, 1, 1), (3, 17, 33), (17, 3, 65), (1, 33, 17), (5, 65, 128), (33, 1, 3),
               (2, 16, 16), (4, 8, 64), (3, 5, 7), (7, 9, 29), (6, 13, 45), (4, 24, 11),
               (8, 32, 144), (4, 16, 208),   # the dot-product kernel's 48-k turns (+ one 16-k step)
               (8, 24, 48), (11, 36, 112),   # Helium: 16-k step counts 3 and 7, 3- and 2-row tiles
               (5, 70, 150), (9, 66, 259)]   # M4 DSP: several k chunks and column blocks, K % 4 tails

# (kind, cpu the binary is compiled for, variant, qemu cpus it must run on)
CONFIGS = [
    ("host", None, "portable", [None]),
    ("aarch64", "cortex-a53", "portable", ["cortex-a53"]),
    ("aarch64", "cortex-a53", "neon", ["cortex-a53", "cortex-a76", "max"]),
    ("aarch64", "cortex-a76", "dotprod", ["cortex-a76", "max"]),
    ("aarch64", "max", "i8mm", ["max"]),
    ("cortex-m", "cortex-m4", "portable", ["cortex-m4"]),
    ("cortex-m", "cortex-m4", "dsp", ["cortex-m4"]),
    ("cortex-m", "cortex-m55", "mve", ["cortex-m55"]),
]


@dataclass
class Stream:
    """Kernel calls for the driver plus, per call, how to read and check its output."""

    data: bytearray = field(default_factory=bytearray)
    checks: list = field(default_factory=list)

    def add(self, op: int, header: list[int], arrays: list[np.ndarray], out_bytes: int, check):
        self.data += struct.pack(f"<{1 + len(header)}i", op, *header)
        for a in arrays:
            self.data += np.ascontiguousarray(a).tobytes()
        self.checks.append((out_bytes, check))

    def verify(self, out: bytes, where: str) -> None:
        pos = 0
        for nbytes, check in self.checks:
            check(out[pos:pos + nbytes], where)
            pos += nbytes
        assert pos == len(out), f"{where}: driver wrote {len(out)} bytes, expected {pos}"


def _wrap32(x: np.ndarray) -> np.ndarray:
    return (((x.astype(np.int64) + 2**31) % 2**32) - 2**31).astype(np.int64)


def _gemm_cases(s: Stream, variant: str, rng: np.random.Generator) -> None:
    shapes = [(M, N, K, "random") for M, N, K in GEMM_SHAPES] + [(3, 17, 65, "all -128")]
    for M, N, K, kind in shapes:
        if kind == "random":
            a = rng.integers(-128, 128, (M, K), dtype=np.int8)
            w = rng.integers(-128, 128, (K, N), dtype=np.int8)
        else:   # -128 * -128 sums overflow int16: catches SMLAL-into-int16 shortcuts
            a = np.full((M, K), -128, np.int8)
            w = np.full((K, N), -128, np.int8)
        wp = np.frombuffer(packing.pack_s8(w, variant), np.int8)
        want = a.astype(np.int64) @ w.astype(np.int64)

        def check(raw, where, want=want, shape=(M, N, K, kind)):
            got = np.frombuffer(raw, "<i4").reshape(want.shape)
            np.testing.assert_array_equal(got, want, err_msg=f"{where}: qc_gemm_s8 {shape}")
        s.add(OP_GEMM, [M, N, K, wp.size], [a, wp], M * N * 4, check)


def _f32_bits(x: float) -> int:
    return int(np.float32(x).view(np.int32))


# (M, N, K, lda - K, ldo - N, kind, per_channel, bias, fbias, act, column slice start)
EP_CASES = [(1, 33, 17, 0, 0, "f32", 1, 1, 1, 0, 0), (3, 17, 65, 5, 3, "f32", 0, 1, 0, 1, 0),
            (5, 40, 48, 0, 0, "f32", 1, 0, 1, 2, 16), (9, 20, 29, 3, 1, "q8", 1, 1, 0, 0, 0),
            (2, 7, 3, 0, 2, "q8", 0, 0, 0, 0, 0), (4, 48, 64, 0, 0, "q8", 1, 1, 0, 0, 32),
            (8, 16, 32, 0, 0, "f32", 1, 1, 1, 2, 0), (8, 32, 160, 16, 4, "q8", 0, 1, 0, 0, 16),
            (4, 16, 576, 0, 0, "f32", 1, 1, 0, 1, 0), (3, 16, 576, 0, 0, "q8", 1, 1, 0, 0, 0),
            (3, 17, 65, 5, 3, "f32", 0, 1, 1, 3, 0), (8, 40, 48, 0, 0, "f32", 1, 1, 1, 3, 16),
            (5, 7, 33, 0, 1, "f32", 1, 0, 0, 3, 0), (8, 32, 45, 3, 2, "f32", 1, 1, 1, 0, 0),
            (4, 16, 381, 0, 0, "f32", 1, 1, 1, 3, 0),   # act 3: GELU; K % 16 != 0 on full 4 x 16 tiles
            # full 4 x 16 tiles with the float32 epilogue in registers: per-tensor scale without
            # bias, 48-k turns + one 16-k step; row strides, a K tail, bias + fbias, a slice
            (4, 32, 112, 0, 0, "f32", 0, 0, 0, 0, 0), (8, 48, 200, 7, 5, "f32", 1, 1, 1, 0, 16),
            (4, 16, 96, 0, 0, "f32", 0, 1, 1, 0, 0)]


def _gemm_ep_cases(s: Stream, variant: str, rng: np.random.Generator) -> None:
    """qc_gemm_s8_f32 / _q8 (fused epilogue, row strides lda / ldo, a column slice through the
    panel rule) against numpy: float32 arithmetic in the same order (bit-exact), requantize_ref.
    The GELU epilogue: the bits of the standalone GELU (qc_vmath.h, OP_GELU) of numpy's
    pre-activation values, and within 2e-6 of float64 GELU."""
    for M, N, K, xa, xo, kind, pc, hb, hf, act, n0 in EP_CASES:
        lda, ldo = K + xa, N - n0 + xo
        a = rng.integers(-128, 128, (M, lda), dtype=np.int8)
        w = rng.integers(-128, 128, (K, N), dtype=np.int8)
        if M == 4 and K == 576:
            a[:, :] = -128
            w[:, :] = -128   # 576 * 16384 > 2^23: the int32 -> float32 conversion rounds
        wp = np.frombuffer(packing.pack_s8(w, variant), np.int8)[packing.wp_offset(n0, K, variant):]
        Ns = N - n0
        acc = a[:, :K].astype(np.int64) @ w[:, n0:].astype(np.int64)
        bias = rng.integers(-2**16, 2**16, Ns, dtype=np.int32)
        total = _wrap32(acc + (bias if hb else 0))
        nc = Ns if pc else 1
        if kind == "f32":
            scale = rng.uniform(1e-5, 1e-2, nc).astype(np.float32)
            fbias = rng.standard_normal(Ns).astype(np.float32)
            lo, hi = -0.25, 0.5
            want = total.astype(np.float32) * (scale if pc else scale[0])
            if hf:
                want = (want + fbias).astype(np.float32)
            if act == 1:
                want = np.where(want > 0, want, np.float32(0)).astype(np.float32)
            elif act == 2:
                want = np.minimum(np.maximum(want, np.float32(lo)), np.float32(hi)).astype(np.float32)
            elif act == 3:
                pre, want = np.ascontiguousarray(want, np.float32), None
            arrays = [a] + [wp] + ([bias] if hb else []) + [scale] + ([fbias] if hf else [])
            hdr = [M, Ns, K, wp.size, lda, ldo, 1, pc, hb, hf, act, _f32_bits(lo), _f32_bits(hi), 0, 0, 0]
            dtype, itemsize = "<f4", 4
        else:
            reals = np.exp(rng.uniform(np.log(1e-5), np.log(0.05), nc))
            qm = [packing.quantize_multiplier(float(r)) for r in reals]
            mult = np.array([m for m, _ in qm], np.int32)
            shift = np.array([sh for _, sh in qm], np.int32)
            zp, qmin, qmax = (-7, -128, 127) if M != 9 else (5, 5, 127)   # M=9: a fused ReLU
            want = packing.requantize_ref(total, mult if pc else mult[0], shift if pc else shift[0],
                                          zp, qmin, qmax)
            arrays = [a, wp] + ([bias] if hb else []) + [mult, shift]
            hdr = [M, Ns, K, wp.size, lda, ldo, 2, pc, hb, 0, 0, 0, 0, zp, qmin, qmax]
            dtype, itemsize = np.int8, 1

        got_gelu: list[np.ndarray] = []

        def check(raw, where, want=want, dtype=dtype, M=M, Ns=Ns, ldo=ldo, case=(M, N, K, kind, n0),
                  got_gelu=got_gelu):
            got = np.frombuffer(raw, dtype).reshape(M, ldo)
            if want is None:   # GELU: compared with the standalone GELU's output below
                got_gelu.append(got[:, :Ns].copy())
            else:
                np.testing.assert_array_equal(got[:, :Ns].view(np.uint32 if dtype == "<f4" else np.uint8),
                                              want.view(np.uint32 if dtype == "<f4" else np.uint8),
                                              err_msg=f"{where}: qc_gemm_s8 epilogue {case}")
            pad = np.frombuffer(raw, np.uint8).reshape(M, -1)[:, Ns * (4 if dtype == "<f4" else 1):]
            assert np.all(pad == 0x5A), f"{where}: {case} wrote past N in the ldo padding"
        s.add(OP_GEMM_EP, hdr, arrays, M * ldo * itemsize, check)
        if kind == "f32" and act == 3:
            def check_gelu(raw, where, pre=pre, got_gelu=got_gelu, case=(M, N, K, n0)):
                ref = np.frombuffer(raw, "<f4").reshape(pre.shape)
                np.testing.assert_array_equal(got_gelu.pop().view(np.uint32), ref.view(np.uint32),
                                              err_msg=f"{where}: GELU epilogue {case} vs the standalone GELU")
                x = pre.astype(np.float64)
                exact = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
                assert np.abs(ref - exact).max() <= 2e-6 * max(1.0, np.abs(exact).max()), (where, case)
                assert np.abs(pre).max() > 2 and pre.min() < -1, case   # both tails of GELU reached
            s.add(OP_GELU, [pre.size], [pre], pre.size * 4, check_gelu)


def _requant_cases(s: Stream, rng: np.random.Generator) -> None:
    for M, N, per_channel, has_bias, zp, lo, hi in [(3, 17, 1, 1, -5, -128, 127),
                                                    (5, 33, 0, 1, 3, -128, 127),
                                                    (1, 65, 1, 0, -128, -128, 127),
                                                    (4, 7, 1, 1, 0, 0, 127)]:
        acc = rng.integers(-2**20, 2**20, (M, N), dtype=np.int32)
        acc[0, :2] = [2**31 - 1, -2**31]
        bias = rng.integers(-2**16, 2**16, N, dtype=np.int32)
        nc = N if per_channel else 1
        reals = np.exp(rng.uniform(np.log(1e-6), np.log(4.0), nc))
        qm = [packing.quantize_multiplier(float(r)) for r in reals]
        mult = np.array([m for m, _ in qm], np.int32)
        shift = np.array([sh for _, sh in qm], np.int32)
        total = _wrap32(acc.astype(np.int64) + (bias if has_bias else 0))
        want = packing.requantize_ref(total, mult if per_channel else mult[0],
                                      shift if per_channel else shift[0], zp, lo, hi)

        def check(raw, where, want=want):
            got = np.frombuffer(raw, np.int8).reshape(want.shape)
            np.testing.assert_array_equal(got, want, err_msg=f"{where}: qc_requant_s8")
        arrays = [acc] + ([bias] if has_bias else []) + [mult, shift]
        s.add(OP_REQUANT, [M, N, per_channel, zp, lo, hi, has_bias], arrays, M * N, check)


    # Ties, signs and shifts of both signs with results inside int8 (rows: accumulators,
    # columns: (multiplier, shift)), so the clamp hides none of the rounding.
    xs = np.array(list(range(-300, 301, 7)) + [1, -1, 3, -3, 5, -5, 127, -129], np.int32)
    cols = [(2**30, 0), (2**30, -1), (2**31 - 1, -1), (2**31 - 1, -2), (2**31 - 1, 0),
            (1518500250, -3), (2**30 + 1, -2), (2**30, 1), (3 << 28, -4), (2**31 - 2, -31),
            (1, 0), (0, 0), (2**30, -30), (1431655765, -1)]
    mult = np.array([c[0] for c in cols], np.int32)
    shift = np.array([c[1] for c in cols], np.int32)
    acc = np.repeat(xs[:, None], len(cols), 1).astype(np.int32)
    want = packing.requantize_ref(acc.astype(np.int64), mult, shift, 0)

    def check_ties(raw, where, want=want):
        got = np.frombuffer(raw, np.int8).reshape(want.shape)
        np.testing.assert_array_equal(got, want, err_msg=f"{where}: qc_requant_s8 ties and shifts")
    s.add(OP_REQUANT, [acc.shape[0], acc.shape[1], 1, 0, -128, 127, 0], [acc, mult, shift],
          acc.size, check_ties)


def _dequant_acc_cases(s: Stream, rng: np.random.Generator) -> None:
    for M, N, per_channel, has_bias, has_fbias in [(3, 17, 1, 1, 1), (2, 5, 0, 0, 0),
                                                   (1, 33, 0, 1, 1)]:
        acc = rng.integers(-2**24, 2**24, (M, N), dtype=np.int32)
        bias = rng.integers(-2**16, 2**16, N, dtype=np.int32)
        scale = rng.uniform(1e-5, 1e-2, N if per_channel else 1).astype(np.float32)
        fbias = rng.standard_normal(N).astype(np.float32)
        total = acc.astype(np.int64) + (bias if has_bias else 0)
        want = total.astype(np.float64) * scale.astype(np.float64) + (fbias if has_fbias else 0)

        def check(raw, where, want=want):
            got = np.frombuffer(raw, "<f4").reshape(want.shape)
            # float32 rounding of the int32 sum, the product and the add: < 3 ulp of float32
            np.testing.assert_allclose(got, want, rtol=4e-7, atol=1e-6,
                                       err_msg=f"{where}: qc_dequant_acc_f32")
        arrays = [acc] + ([bias] if has_bias else []) + [scale] + ([fbias] if has_fbias else [])
        s.add(OP_DEQUANT_ACC, [M, N, per_channel, has_bias, has_fbias], arrays, M * N * 4, check)


def _s4_cases(s: Stream, variant: str, rng: np.random.Generator) -> None:
    for M, N, K, block, signed, with_zp in [(3, 17, 33, 16, True, False), (1, 5, 64, 32, False, True),
                                            (2, 3, 65, 8, True, True), (5, 1, 17, 17, False, True)]:
        nb = -(-K // block)
        if signed:
            q = rng.integers(-8, 8, (K, N), dtype=np.int8)
            zp = rng.integers(-8, 8, (nb, N), dtype=np.int8)
        else:
            q = rng.integers(0, 16, (K, N), dtype=np.uint8)
            zp = rng.integers(0, 16, (nb, N), dtype=np.uint8)
        scale = rng.uniform(0.01, 0.1, (nb, N)).astype(np.float32)
        a = rng.standard_normal((M, K)).astype(np.float32)
        zp_full = np.repeat(zp.astype(np.float64) if with_zp else np.zeros((nb, N)), block, 0)[:K]
        w = (q.astype(np.float64) - zp_full) * np.repeat(scale.astype(np.float64), block, 0)[:K]
        want = a.astype(np.float64) @ w
        bound = np.abs(a.astype(np.float64)) @ np.abs(w)
        wp = np.frombuffer(packing.pack_s4(q, variant), np.uint8)
        zps = np.frombuffer(packing.pack_s4_zero_points(zp), np.uint8) if with_zp else np.zeros(0, np.uint8)

        def check(raw, where, want=want, bound=bound, K=K):
            got = np.frombuffer(raw, "<f4").reshape(want.shape).astype(np.float64)
            # float32 accumulation over K terms: |error| <= K * 2^-23 * sum |a w| (loose bound)
            err = np.abs(got - want)
            assert np.all(err <= 1e-6 * K * bound + 1e-30), f"{where}: qc_matmul_f32_s4 max error {err.max()}"
        s.add(OP_S4, [M, N, K, block, wp.size, zps.size], [a, wp, scale, zps], M * N * 4, check)


def _f16_model(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """float32 accumulation over k in ascending order, one rounding to binary16 (the contract)."""
    acc = np.zeros((a.shape[0], w.shape[1]), np.float32)
    a32, w32 = a.astype(np.float32), w.astype(np.float32)
    for k in range(a.shape[1]):
        acc = (acc + a32[:, k:k + 1] * w32[k:k + 1, :]).astype(np.float32)
    with np.errstate(over="ignore"):
        return acc.astype(np.float16)


def _f16_cases(s: Stream, rng: np.random.Generator) -> None:
    for M, N, K in [(3, 17, 33), (1, 8, 16), (17, 9, 5), (2, 65, 1)]:
        a = rng.standard_normal((M, K)).astype(np.float16)
        w = rng.standard_normal((K, N)).astype(np.float16)
        if K > 1:   # overflow to inf, subnormal operands
            a[0, 0], w[0, 0] = np.float16(60000), np.float16(4)
            w[1, min(1, N - 1)] = np.float16(1e-7)
        want = _f16_model(a, w)
        ref64 = a.astype(np.float64) @ w.astype(np.float64)

        def check(raw, where, want=want, ref64=ref64):
            got = np.frombuffer(raw, "<f2").reshape(want.shape)
            np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16),
                                          err_msg=f"{where}: qc_matmul_f16 bits")
            finite = np.isfinite(ref64) & (np.abs(ref64) < 65504)
            # one binary16 rounding of a float32 sum: within 2^-10 relative (+ float32 error)
            np.testing.assert_allclose(got[finite].astype(np.float64), ref64[finite],
                                       rtol=2**-10, atol=1e-3)
        s.add(OP_F16, [M, N, K], [a.view(np.uint16), w.view(np.uint16)], M * N * 2, check)
    x = np.array([0.0, -0.0, 1.0, 65504.0, 65519.99, 65520.0, 1e9, -1e9, np.inf, -np.inf,
                  2.0**-24, 2.0**-25, 2.0**-25 * 1.0001, 3 * 2.0**-25, 2.0**-14, 2.0**-14 * 0.75,
                  1 + 2.0**-11, 1 + 3 * 2.0**-11, 0.1, -1 / 3], np.float32)
    x = np.concatenate([x, rng.standard_normal(64).astype(np.float32) * 1000])

    with np.errstate(over="ignore"):
        x16 = x.astype(np.float16)

    def check_cvt(raw, where, x16=x16):
        h = np.frombuffer(raw[:2 * x16.size], "<u2")
        back = np.frombuffer(raw[2 * x16.size:], "<f4")
        np.testing.assert_array_equal(h, x16.view(np.uint16),
                                      err_msg=f"{where}: qc_f32_to_f16 (round to nearest even)")
        np.testing.assert_array_equal(back, x16.astype(np.float32), err_msg=f"{where}: qc_f16_to_f32")
    s.add(OP_CVT_F16, [x.size], [x], x.size * 6, check_cvt)


def _edge_floats(scale: float, zp: int, rng: np.random.Generator) -> np.ndarray:
    ks = np.arange(-300, 300, dtype=np.float32)
    ties = ((ks + np.float32(0.5)) * np.float32(scale) - np.float32(zp) * 0).astype(np.float32)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, 1e30, -1e30, 3.4e38], np.float32)
    return np.concatenate([ties, specials, rng.standard_normal(200).astype(np.float32) * 100 * scale])


def _ort_qdq(op: str, x: np.ndarray, scale: float, zp: int, zp_type: int) -> np.ndarray:
    """QuantizeLinear / DequantizeLinear in onnxruntime (no graph optimizations)."""
    in_type = TensorProto.FLOAT if op == "QuantizeLinear" else zp_type
    out_type = zp_type if op == "QuantizeLinear" else TensorProto.FLOAT
    node = helper.make_node(op, ["x", "s", "z"], ["y"])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", in_type, [x.size])],
        [helper.make_tensor_value_info("y", out_type, [x.size])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [scale]),
         helper.make_tensor("z", zp_type, [], [zp])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return ort_session(model).run(None, {"x": x})[0]


def _qdq_cases(s: Stream, rng: np.random.Generator, ort_cache: dict) -> None:
    for scale, zp_s8, zp_u8 in [(0.1, -3, 128), (0.5, 0, 0), (1 / 3, 127, 255), (0.0123, -128, 7)]:
        x = _edge_floats(scale, 0, rng)
        for op, dtype, zp, zp_type in [(OP_Q_S8, np.int8, zp_s8, TensorProto.INT8),
                                       (OP_Q_U8, np.uint8, zp_u8, TensorProto.UINT8)]:
            key = ("q", scale, zp, zp_type)
            if key not in ort_cache:
                ort_cache[key] = _ort_qdq("QuantizeLinear", x, scale, zp, zp_type)
            want = ort_cache[key]

            def check(raw, where, want=want, dtype=dtype, scale=scale):
                got = np.frombuffer(raw, dtype)
                np.testing.assert_array_equal(got, want, err_msg=f"{where}: quantize {dtype} scale {scale}")
            s.add(op, [x.size, int(np.float32(scale).view(np.int32)), zp], [x], x.size, check)
        for op, dtype, zp, zp_type in [(OP_DQ_S8, np.int8, zp_s8, TensorProto.INT8),
                                       (OP_DQ_U8, np.uint8, zp_u8, TensorProto.UINT8)]:
            q = np.arange(np.iinfo(dtype).min, np.iinfo(dtype).max + 1).astype(dtype)
            key = ("dq", scale, zp, zp_type)
            if key not in ort_cache:
                ort_cache[key] = _ort_qdq("DequantizeLinear", q, scale, zp, zp_type)
            want = ort_cache[key]

            def check(raw, where, want=want, dtype=dtype):
                got = np.frombuffer(raw, "<f4")
                np.testing.assert_array_equal(got, want, err_msg=f"{where}: dequantize {dtype}")
            s.add(op, [q.size, int(np.float32(scale).view(np.int32)), zp], [q], q.size * 4, check)


# Edge cases for the requantization step: ties, negative values, shifts of both signs,
# multipliers near 2^31 and the SaturatingRoundingDoublingHighMul overflow case.
MBQM_X = [0, 1, -1, 2, -2, 3, -3, 5, -5, 2**30, -2**30, 2**31 - 1, -2**31, 12345, -12345,
          1 << 20, -(1 << 20), 3 << 19, -(3 << 19), 255, -255, 1 << 16, -(1 << 16), 7, -7]
MBQM_MULT = [0, 1, 2**30, 2**30 + 1, 2**31 - 1, 2**31 - 2, 1518500250, -2**31]
MBQM_SHIFT = [-31, -20, -3, -1, 0, 1, 3, 30]


def _tflite_mbqm(x: int, mult: int, shift: int) -> int:
    """TFLite's MultiplyByQuantizedMultiplier transcribed literally (Python ints, int32 wrap)."""
    def wrap(v: int) -> int:
        return ((v + 2**31) % 2**32) - 2**31

    def srdhm(a: int, b: int) -> int:
        if a == b == -2**31:
            return 2**31 - 1
        ab = a * b
        nudge = (1 << 30) if ab >= 0 else (1 - (1 << 30))
        num = ab + nudge
        return int(num / 2**31) if abs(num) < 2**52 else (abs(num) >> 31) * (1 if num >= 0 else -1)

    def rdbpot(v: int, exponent: int) -> int:
        mask = (1 << exponent) - 1
        remainder = v & mask
        threshold = (mask >> 1) + (1 if v < 0 else 0)
        return (v >> exponent) + (1 if remainder > threshold else 0)

    left, right = max(shift, 0), max(-shift, 0)
    return rdbpot(srdhm(wrap(x * (1 << left)), mult), right)


def _mbqm_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = np.array([(x, m, s) for x in MBQM_X for m in MBQM_MULT for s in MBQM_SHIFT], np.int64)
    return g[:, 0], g[:, 1], g[:, 2]


def _mbqm_cases(s: Stream) -> None:
    x, m, sh = _mbqm_grid()
    want = np.array([_tflite_mbqm(int(a), int(b), int(c)) for a, b, c in zip(x, m, sh)], np.int64)

    def check(raw, where, want=want):
        got = np.frombuffer(raw, "<i4")
        np.testing.assert_array_equal(got, want, err_msg=f"{where}: MultiplyByQuantizedMultiplier")
    s.add(OP_MBQM, [x.size], [x.astype(np.int32), m.astype(np.int32), sh.astype(np.int32)],
          x.size * 4, check)


def _direct_conv(x, w, stride, pads, dil, pad_value):
    """int64 convolution of one image (C x H x W) with weights (OC x C x KH x KW), padding with
    pad_value, by explicit loops over the output: the reference for im2col + GEMM."""
    C, H, W = x.shape
    OC, _, KH, KW = w.shape
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = stride, pads, dil
    xp = np.full((C, H + pt + pb, W + pl + pr), pad_value, np.int64)
    xp[:, pt:pt + H, pl:pl + W] = x
    OH = (H + pt + pb - dh * (KH - 1) - 1) // sh + 1
    OW = (W + pl + pr - dw * (KW - 1) - 1) // sw + 1
    out = np.zeros((OC, OH, OW), np.int64)
    for oh in range(OH):
        for ow in range(OW):
            patch = xp[:, oh * sh:oh * sh + dh * (KH - 1) + 1:dh, ow * sw:ow * sw + dw * (KW - 1) + 1:dw]
            out[:, oh, ow] = np.tensordot(w.astype(np.int64), patch, axes=3)
    return out


IM2COL_CASES = [  # C, H, W, KH, KW, stride, pads (t, l, b, r), dilation, group (c0, cg)
    (3, 7, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), (0, 3)),
    (4, 9, 8, 3, 2, (2, 1), (2, 0, 1, 1), (2, 1), (2, 2)),
    (1, 1, 5, 1, 3, (1, 2), (0, 1, 0, 2), (1, 1), (0, 1)),
    (5, 4, 4, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), (1, 3)),
]


def _im2col_cases(s: Stream, rng: np.random.Generator) -> None:
    for C, H, W, KH, KW, (sh, sw), (pt, pl, pb, pr), (dh, dw), (c0, cg) in IM2COL_CASES:
        x = rng.integers(-128, 128, (C, H, W), dtype=np.int8)
        pad = int(rng.integers(-128, 128))
        OH = (H + pt + pb - dh * (KH - 1) - 1) // sh + 1
        OW = (W + pl + pr - dw * (KW - 1) - 1) // sw + 1
        wts = rng.integers(-128, 128, (6, cg, KH, KW), dtype=np.int8)
        want = _direct_conv(x[c0:c0 + cg], wts, (sh, sw), (pt, pl, pb, pr), (dh, dw), pad)

        def check(raw, where, want=want, wts=wts, shape=(OH * OW, cg * KH * KW)):
            cols = np.frombuffer(raw, np.int8).reshape(shape).astype(np.int64)
            # the contract: cols x (ONNX weights reshaped OC x K, transposed) = the convolution
            got = cols @ wts.reshape(wts.shape[0], -1).T.astype(np.int64)
            np.testing.assert_array_equal(got.T.reshape(want.shape), want,
                                          err_msg=f"{where}: qc_im2col_s8 {shape}")
        s.add(OP_IM2COL, [C, H, W, KH, KW, sh, sw, pt, pl, dh, dw, OH, OW, c0, cg, pad], [x],
              OH * OW * cg * KH * KW, check)


_ORT_CACHE: dict = {}


def _stream(variant: str) -> Stream:
    rng = np.random.default_rng(7)
    s = Stream()
    _gemm_cases(s, variant, rng)
    _gemm_ep_cases(s, variant, rng)
    _requant_cases(s, rng)
    _dequant_acc_cases(s, rng)
    _s4_cases(s, variant, rng)
    _f16_cases(s, rng)
    _qdq_cases(s, rng, _ORT_CACHE)
    _mbqm_cases(s)
    _im2col_cases(s, rng)
    return s


def _build_driver(tmp: Path, kind: str, cpu: str | None, variant: str, extra=()) -> Path:
    exe = tmp / f"driver-{kind}-{cpu}-{variant}"
    return toolchain.build([DRIVER, *KERNEL_SOURCES], exe, kind, cpu,
                           extra_flags=[*packing.variant_macros(variant), *extra])


def _run_stream(exe: Path, kind: str, cpu: str | None, s: Stream, tmp: Path) -> tuple[str, bytes]:
    tag = f"{exe.name}-on-{cpu}"
    inp, out = tmp / f"{tag}.in", tmp / f"{tag}.out"
    inp.write_bytes(bytes(s.data))
    proc = toolchain.run(exe, kind, cpu, [str(inp), str(out)], timeout=180)
    assert proc.returncode == 0, f"{tag}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout, out.read_bytes()


# ---------------------------------------------------------------- the kernels on every target

SANITIZERS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]


def _host_sanitizers(tmp: Path) -> list[str]:
    """ASan + UBSan flags when the host compiler can link them (gcc here; clang needs
    libclang-rt-dev), else none: the numerical checks run either way."""
    probe = tmp / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    try:
        toolchain.build([probe], tmp / "probe", "host", extra_flags=SANITIZERS)
    except QCError:
        return []
    return SANITIZERS


@pytest.mark.parametrize("kind,build_cpu,variant,run_cpus", CONFIGS,
                         ids=[f"{k}-{c or 'native'}-{v}" for k, c, v, _ in CONFIGS])
def test_kernels_match_reference(kind, build_cpu, variant, run_cpus, tmp_path):
    toolchain.require_tools(kind)
    extra = _host_sanitizers(tmp_path) if kind == "host" else []
    exe = _build_driver(tmp_path, kind, build_cpu, variant, extra)
    s = _stream(variant)
    want_fp16 = int(kind == "aarch64" and build_cpu in ("cortex-a76", "max"))
    for cpu in run_cpus:
        stdout, out = _run_stream(exe, kind, cpu, s, tmp_path)
        assert f"variant={variant} fp16={want_fp16}" in stdout, stdout
        s.verify(out, f"{variant} built for {build_cpu}, run on {cpu or 'host'}")


def _c_targets() -> list[str]:
    from qc.targets import builtin_targets, load_target

    return [n for n in builtin_targets() if load_target(n).backend == "c"]


@pytest.mark.parametrize("name", _c_targets())
def test_kernels_with_each_targets_own_flags_and_qemu(name, tmp_path):
    """Each C target's TOML (features, compiler flags, qemu command) as the code generator uses
    it: variant_for(features) compiles with the target's own flags and runs bit-exact on the
    target's qemu; 'fp16' in the features of an aarch64 target means native __fp16."""
    from qc.targets import load_target

    t = load_target(name)
    kind = "cortex-m" if t.cc == "arm-none-eabi-gcc" else "aarch64"
    toolchain.require_tools(kind)
    qemu = list(t.qemu)
    cpu = qemu[qemu.index("-M" if kind == "cortex-m" else "-cpu") + 1]
    variant = packing.variant_for(t.features)
    exe = toolchain.build([DRIVER, *KERNEL_SOURCES], tmp_path / f"driver-{name}", kind,
                          cpu if kind == "cortex-m" else None,
                          extra_flags=[*t.cflags, *packing.variant_macros(variant)])
    s = _stream(variant)
    stdout, out = _run_stream(exe, kind, cpu, s, tmp_path)
    want_fp16 = int(kind == "aarch64" and "fp16" in t.features)
    assert f"variant={variant} fp16={want_fp16}" in stdout, stdout
    s.verify(out, f"target {name} ({variant}, {' '.join(t.cflags)}, {cpu})")


@pytest.mark.parametrize("variant,build_cpu,weaker_cpu", [("dotprod", "cortex-a76", "cortex-a53"),
                                                          ("i8mm", "max", "cortex-a76")])
def test_variant_traps_on_a_cpu_without_the_feature(variant, build_cpu, weaker_cpu, tmp_path):
    """SDOT raises SIGILL on cortex-a53 and SMMLA on cortex-a76: the target tables' claims hold,
    and the variants really execute those instructions."""
    toolchain.require_tools("aarch64")
    exe = _build_driver(tmp_path, "aarch64", build_cpu, variant)
    s = Stream()
    _gemm_cases(s, variant, np.random.default_rng(1))
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.write_bytes(bytes(s.data))
    proc = toolchain.run(exe, "aarch64", weaker_cpu, [str(inp), str(out)], timeout=60)
    assert proc.returncode in (-4, 132), (proc.returncode, proc.stderr)   # SIGILL


def test_cortex_m_fault_exits_with_code(tmp_path):
    """A fault on Cortex-M ends qemu with 0xF0 | fault number instead of hanging."""
    toolchain.require_tools("cortex-m")
    src = tmp_path / "fault.c"
    src.write_text("#include <stdint.h>\nint main(void) {\n"
                   "    void (*f)(void) = (void (*)(void))(uintptr_t)0xFFFFFFF1u;\n"
                   "    f();\n    return 0;\n}\n")
    exe = toolchain.build([src], tmp_path / "fault.elf", "cortex-m", "cortex-m4")
    proc = toolchain.run(exe, "cortex-m", "cortex-m4", [], timeout=30)
    assert proc.returncode & 0xF0 == 0xF0 and proc.returncode in (0xF3, 0xF4, 0xF5, 0xF6), proc.returncode


# ---------------------------------------------------------------- the Python side

def test_requantize_ref_matches_tflite_on_edge_cases():
    x, m, sh = _mbqm_grid()
    got = packing.multiply_by_quantized_multiplier(x, m, sh)
    want = np.array([_tflite_mbqm(int(a), int(b), int(c)) for a, b, c in zip(x, m, sh)])
    np.testing.assert_array_equal(got, want)
    # SaturatingRoundingDoublingHighMul rounds ties up (x * 0.5: 2.5 -> 3, -2.5 -> -2) ...
    x = np.array([5, -5, 3, -3])
    assert list(packing.multiply_by_quantized_multiplier(x, 2**30, 0)) == [3, -2, 2, -1]
    # ... RoundingDivideByPOT rounds them away from zero (x * ~1.0 / 2: 2.5 -> 3, -2.5 -> -3)
    assert list(packing.multiply_by_quantized_multiplier(x, 2**31 - 1, -1)) == [3, -3, 2, -2]
    # Saturation and zero point in requantize_ref
    acc = np.array([2**31 - 1, -2**31, 0, 100])
    assert list(packing.requantize_ref(acc, 2**31 - 1, 0, 10)) == [127, -128, 10, 110]
    assert list(packing.requantize_ref(acc, 2**31 - 1, 0, 10, 0, 127)) == [127, 0, 10, 110]


@pytest.mark.parametrize("real,want", [(0.5, (2**30, 0)), (1.0, (2**30, 1)), (0.75, (3 << 29, 0)),
                                       (0.0, (0, 0)), (2.0**-40, (0, 0)),
                                       (1 - 2.0**-33, (2**30, 1)), (0.1, (1717986918, -3))])
def test_quantize_multiplier_matches_tflite(real, want):
    assert packing.quantize_multiplier(real) == want


def test_quantize_multiplier_round_trip_and_errors():
    rng = np.random.default_rng(3)
    for real in np.exp(rng.uniform(-20, 3, 200)):
        mult, shift = packing.quantize_multiplier(float(real))
        assert 2**30 <= mult < 2**31
        assert abs(mult * 2.0 ** (shift - 31) - real) <= real * 2.0**-30
    with pytest.raises(QCError, match="must be finite and >= 0"):
        packing.quantize_multiplier(-1.0)
    with pytest.raises(QCError, match="too large"):
        packing.quantize_multiplier(2.0**40)


def test_variant_for_target_features():
    from qc.targets import load_target

    want = {"cortex-a53": "neon", "cortex-a76": "dotprod", "armv8.6-i8mm": "i8mm",
            "cortex-m4": "dsp", "cortex-m55": "mve", "x86-avx2": "portable"}
    for name, variant in want.items():
        assert packing.variant_for(load_target(name).features) == variant, name
    assert packing.variant_macros("dotprod") == ["-DQC_KERNEL_DOTPROD"]
    with pytest.raises(QCError, match="unknown C kernel variant 'sve'"):
        packing.variant_macros("sve")


def test_packing_layouts_and_errors():
    w = np.arange(3 * 5, dtype=np.int8).reshape(3, 5)   # K=3, N=5
    assert packing.pack_s8(w, "portable") == w.T.tobytes()
    neon = np.frombuffer(packing.pack_s8(w, "neon"), np.int8).reshape(5, 16)
    np.testing.assert_array_equal(neon[:, :3], w.T)
    assert not neon[:, 3:].any()
    # dotprod: one panel of 8 columns (N padded to 4), 4 k-quads, 2 groups of 4 columns x 4 k
    dot = np.frombuffer(packing.pack_s8(w, "dotprod"), np.int8).reshape(4, 2, 4, 4)   # q, g, j, i
    np.testing.assert_array_equal(dot[0, 1, 0, :3], w[:, 4])
    np.testing.assert_array_equal(dot[0, 0, 2, :3], w[:, 2])
    assert not dot[1:].any() and not dot[0, 1, 1:].any() and not dot[:, :, :, 3].any()
    # i8mm: one panel of 3 pairs (N padded to 2), 2 k-blocks of 8
    i8 = np.frombuffer(packing.pack_s8(w, "i8mm"), np.int8).reshape(2, 3, 2, 8)   # b, pair, j, i
    np.testing.assert_array_equal(i8[0, 1, 0, :3], w[:, 2])
    np.testing.assert_array_equal(i8[0, 1, 1, :3], w[:, 3])
    assert not i8[0, 2, 1].any() and not i8[1].any()   # column 5 and k >= 8 are padding
    # mve: groups of 4 columns; K=3 < 16, so only each column's tail, column after column
    mve = np.frombuffer(packing.pack_s8(w, "mve"), np.int8).reshape(2, 4, 3)
    np.testing.assert_array_equal(mve[1, 0], w[:, 4])
    assert not mve[1, 1:].any()
    w2 = np.arange(20 * 4, dtype=np.int8).reshape(20, 4)   # K=20: one block of 16, tail of 4
    mve2 = np.frombuffer(packing.pack_s8(w2, "mve"), np.int8)
    np.testing.assert_array_equal(mve2[16:32], w2[:16, 1])
    np.testing.assert_array_equal(mve2[64 + 4:64 + 8], w2[16:, 1])
    # column slices start at panels: the bytes of columns n0.. are the packing of those columns
    wide = np.random.default_rng(0).integers(-128, 128, (29, 40), dtype=np.int8)
    for v in packing.VARIANTS:
        n0 = 2 * packing.panel_width(v) if packing.panel_width(v) > 1 else 7
        off = packing.wp_offset(n0, 29, v)
        assert packing.pack_s8(wide, v)[off:] == packing.pack_s8(np.ascontiguousarray(wide[:, n0:]), v), v
    with pytest.raises(QCError, match="not a multiple of the dotprod panel width 16"):
        packing.wp_offset(8, 29, "dotprod")
    for v in packing.VARIANTS:
        assert len(packing.pack_s8(w, v)) == packing.packed_size_s8(3, 5, v)
    assert packing.pack_s4(np.array([[-8, 7, 1]], np.int8), "portable") == bytes([0xF0, 0x09])
    assert packing.pack_s4(np.array([[15, 0]], np.uint8), "portable") == bytes([0x0F])
    with pytest.raises(QCError, match="-8..7"):
        packing.pack_s4(np.array([[8]], np.int8), "portable")
    with pytest.raises(QCError, match="2-D int8"):
        packing.pack_s8(np.zeros((2, 2), np.int16), "portable")


def test_toolchain_errors(tmp_path):
    with pytest.raises(QCError, match="unknown Cortex-M cpu or machine 'cortex-m7'"):
        toolchain.machine_for("cortex-m7")
    with pytest.raises(QCError, match="unknown toolchain kind"):
        toolchain.find_tools("riscv")
    toolchain.require_tools("host")
    with pytest.raises(QCError, match="C compilation failed"):
        toolchain.build([DRIVER], tmp_path / "x", "host", extra_flags=["-DQC_KERNEL_NEON"])


def test_benchmark_instruction_counts(tmp_path):
    """benchmarks/c_kernels.py: the plugin's count equals single-step counting, the SIMD
    variants do exactly one SDOT per 16 MACs / one SMMLA per 32, and they rank as their
    instructions promise (i8mm < dotprod < NEON < portable per MAC)."""
    import importlib.util

    toolchain.require_tools("aarch64")
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "c_kernels.py"
    spec = importlib.util.spec_from_file_location("bench_c_kernels", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    counts = {}
    for row in ("portable", "neon", "dotprod", "i8mm"):
        exe = bench.build(row, tmp_path)
        if row != "portable":
            small = bench.count(exe, row, 8, 32, 64)["total"]
            assert small == bench.count_single_step(exe, row, 8, 32, 64), row
        # the benchmark's K: at small K and N the i8mm tile's fixed costs (A packing) dominate
        c = bench.count(exe, row, 8, 64, 576)
        counts[row] = c["total"]
        if row == "dotprod":
            assert c["classes"]["dot"] == 8 * 64 * 576 // 16, c
        if row == "i8mm":
            assert c["classes"]["mmla"] == 8 * 64 * 576 // 32, c
    assert counts["i8mm"] < counts["dotprod"] < counts["neon"] < counts["portable"], counts
    assert counts["neon"] < 0.75 * 8 * 64 * 576, counts   # NEON: well under one instruction per MAC


def test_cortex_m_command_line(tmp_path):
    """argv reaches a Cortex-M program through semihosting (long lines, commas), the exit code
    comes back, and arguments the startup code cannot split are refused up front."""
    toolchain.require_tools("cortex-m")
    src = tmp_path / "args.c"
    src.write_text('#include <stdio.h>\nint main(int argc, char **argv) {\n'
                   '    printf("argc=%d last=%s\\n", argc, argv[argc - 1]);\n    return argc;\n}\n')
    exe = toolchain.build([src], tmp_path / "args.elf", "cortex-m", "cortex-m55")
    args = [f"/tmp/{i:02d}/" + "x" * 60 for i in range(40)] + ["a,b"]
    proc = toolchain.run(exe, "cortex-m", "mps3-an547", args, timeout=30)
    assert proc.returncode == 42 and "argc=42 last=a,b" in proc.stdout, (proc.returncode, proc.stdout)
    with pytest.raises(QCError, match="contains a space"):
        toolchain.run(exe, "cortex-m", "cortex-m55", ["/tmp/my dir/x"], timeout=30)


def test_require_tools_skips_or_fails(monkeypatch):
    monkeypatch.setattr(toolchain, "find_tools", lambda kind: None)
    monkeypatch.delenv("QC_REQUIRE_ARM", raising=False)
    with pytest.raises(pytest.skip.Exception, match="aarch64 toolchain not found"):
        toolchain.require_tools("aarch64")
    monkeypatch.setenv("QC_REQUIRE_ARM", "1")
    with pytest.raises(pytest.fail.Exception, match=r"cortex-m toolchain not found.*QC_REQUIRE_ARM=1"):
        toolchain.require_tools("cortex-m")
