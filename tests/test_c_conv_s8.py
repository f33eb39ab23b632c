"""The int8 depthwise and pointwise convolutions and the transpose (runtime/qc_conv_s8*.c) against numpy, on the
host (portable) and under qemu-aarch64 (neon on cortex-a53, dotprod on cortex-a76, i8mm on max),
and a small int8 MobileNet-style CNN compiled end to end against onnxruntime.

Integer paths are bit-exact (the numpy model of qc_requant_s8 is packing.requantize_ref); the
float output (float)acc * scale + fbias is one float32 multiply and one add, so numpy's float32
arithmetic gives the same bits too.
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
from qc.onnx.evaluator import ort_session

DRIVER = Path(__file__).parent / "c_conv_s8" / "driver.c"
SOURCES = [DRIVER, toolchain.RUNTIME / "qc_conv_s8.c", toolchain.RUNTIME / "qc_conv_s8_1x1.c",
           toolchain.RUNTIME / "qc_quant.c"]

CONFIGS = [("host", None, "portable", None), ("aarch64", "cortex-a53", "neon", "cortex-a53"),
           ("aarch64", "cortex-a76", "dotprod", "cortex-a76"), ("aarch64", "max", "i8mm", "max")]

# C, H, W, KH, KW, stride, pads (t, l, b, r), dilation: 3x3 stride 1 / 2 as MobileNet, odd widths
# (vector tails), asymmetric pads, dilation, 5x5 and 7x7 (two tap quads), 1x3, and strides whose
# TBL window does not fit 16 bytes (3*sw + 3*dw > 15: the NEON / scalar path in SDOT builds).
CASES = [(5, 9, 19, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)), (3, 16, 16, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1)),
         (4, 11, 13, 3, 3, (2, 2), (0, 0, 1, 1), (1, 1)), (2, 12, 23, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2)),
         (3, 10, 37, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1)), (2, 14, 20, 7, 7, (2, 1), (3, 3, 3, 3), (1, 1)),
         (2, 6, 40, 1, 3, (1, 2), (0, 1, 0, 1), (1, 1)), (2, 9, 50, 3, 3, (1, 5), (1, 1, 1, 1), (1, 1)),
         (1, 5, 33, 3, 3, (1, 1), (0, 0, 0, 0), (1, 4)), (6, 1, 1, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
         (7, 4, 4, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)), (3, 12, 25, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1)),
         (4, 5, 12, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1))]
# qc_conv_dw3x3_s8_q8_nhwc (channels x 16, small planes; C % 16 != 0 falls back): C, H, W, stride, pads
NHWC_CASES = [(16, 8, 8, 1, (1, 1, 1, 1)), (32, 8, 8, 2, (1, 1, 1, 1)), (48, 4, 4, 1, (1, 1, 1, 1)),
              (16, 5, 7, 1, (1, 1, 1, 1)), (16, 7, 7, 2, (0, 0, 1, 1)), (24, 4, 4, 1, (1, 1, 1, 1))]
# qc_conv1x1_s8 (K input channels, P pixels, OC output channels): one 16-pixel block with and
# without a pixel tail, K and OC not multiples of 4, one pixel, many blocks, a deep K (all -128 in
# the first case: the largest sums)
POINTWISE = [(160, 16, 33), (3, 5, 1), (8, 16, 4), (17, 37, 10), (16, 64, 48), (1, 1, 1), (5, 100, 7)]


def _ref_acc(x, w, bias, stride, pads, dil, zx):
    """int64 depthwise convolution, padding with the zero point, by explicit output loops."""
    C, H, W = x.shape
    _, KH, KW = w.shape
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = stride, pads, dil
    xp = np.full((C, H + pt + pb, W + pl + pr), zx, np.int64)
    xp[:, pt:pt + H, pl:pl + W] = x
    OH = (H + pt + pb - dh * (KH - 1) - 1) // sh + 1
    OW = (W + pl + pr - dw * (KW - 1) - 1) // sw + 1
    acc = np.zeros((C, OH, OW), np.int64) + bias[:, None, None]
    for kh in range(KH):
        for kw in range(KW):
            win = xp[:, kh * dh:kh * dh + sh * (OH - 1) + 1:sh, kw * dw:kw * dw + sw * (OW - 1) + 1:sw]
            acc += w[:, kh, kw][:, None, None].astype(np.int64) * win
    return acc


def _stream(rng):
    data, want = bytearray(), []
    for i, (C, H, W, KH, KW, st, pads, dil) in enumerate(CASES):
        extreme = i == 1  # all -128: the largest sums
        x = np.full((C, H, W), -128, np.int8) if extreme else rng.integers(-128, 128, (C, H, W), dtype=np.int8)
        w = np.full((C, KH, KW), -128, np.int8) if extreme else rng.integers(-128, 128, (C, KH, KW), dtype=np.int8)
        zx = int(rng.integers(-128, 128))
        bias = rng.integers(-2**16, 2**16, C).astype(np.int32)
        acc = _ref_acc(x, w, bias.astype(np.int64), st, pads, dil, zx)
        OH, OW = acc.shape[1:]
        geo = [C, H, W, KH, KW, st[0], st[1], pads[0], pads[1], dil[0], dil[1], OH, OW, zx]
        # int8 output: per-channel requantization, clamps of a plain Q and of a ReLU6-like range
        qm = [packing.quantize_multiplier(float(r)) for r in np.exp(rng.uniform(np.log(1e-5), np.log(0.5), C))]
        mult = np.array([m for m, _ in qm], np.int32)
        shift = np.array([s for _, s in qm], np.int32)
        zy, lo, hi = int(rng.integers(-20, 20)), (-128, -3)[i % 2], (127, 90)[i % 2]
        exp_q = np.stack([packing.requantize_ref(acc[c], mult[c], shift[c], zy, lo, hi) for c in range(C)])
        data += struct.pack("<20i", *geo, 0, zy, lo, hi, 1, 0)
        for a in (x, w, bias, mult, shift):
            data += a.tobytes()
        want.append(("q8", exp_q))
        # float output, per-channel scale with a float bias (and per-tensor without on odd cases)
        per_channel, has_fb = (1, 1) if i % 2 == 0 else (0, 0)
        scale = rng.uniform(1e-5, 1e-2, C if per_channel else 1).astype(np.float32)
        fb = rng.standard_normal(C).astype(np.float32)
        exp_f = acc.astype(np.float32) * scale[:, None, None]  # exact int32 -> float32, then one rounding
        if has_fb:
            exp_f = (exp_f + fb[:, None, None]).astype(np.float32)
        data += struct.pack("<20i", *geo, 1, 0, 0, 0, per_channel, has_fb)
        for a in (x, w, bias, scale) + ((fb,) if has_fb else ()):
            data += a.tobytes()
        want.append(("f32", exp_f.astype(np.float32)))
    for i, (K, P, OC) in enumerate(POINTWISE):
        _pointwise_case(rng, i, K, P, OC, data, want)
    for i, (C, H, W, st, pads) in enumerate(NHWC_CASES):
        x = rng.integers(-128, 128, (C, H, W), dtype=np.int8) if i else np.full((C, H, W), -128, np.int8)
        w = rng.integers(-128, 128, (C, 3, 3), dtype=np.int8) if i else np.full((C, 3, 3), -128, np.int8)
        zx = int(rng.integers(-128, 128))
        bias = rng.integers(-2**16, 2**16, C).astype(np.int32)
        acc = _ref_acc(x, w, bias.astype(np.int64), (st, st), pads, (1, 1), zx)
        OH, OW = acc.shape[1:]
        qm = [packing.quantize_multiplier(float(r)) for r in np.exp(rng.uniform(np.log(1e-5), np.log(0.5), C))]
        mult = np.array([m for m, _ in qm], np.int32)
        shift = np.array([s for _, s in qm], np.int32)
        zy, lo, hi = int(rng.integers(-20, 20)), (-128, 0)[i % 2], (127, 100)[i % 2]
        want.append(("q8", np.stack([packing.requantize_ref(acc[c], mult[c], shift[c], zy, lo, hi)
                                     for c in range(C)])))
        data += struct.pack("<20i", C, H, W, 3, 3, st, st, pads[0], pads[1], 1, 1, OH, OW, zx, 6, zy, lo, hi, 1, 0)
        for a in (x, w, bias, mult, shift):
            data += a.tobytes()
    _quantize_cases(rng, data, want)
    for R, Cn, ld in [(8, 8, 8), (17, 33, 40), (96, 1024, 1024), (3, 5, 5), (64, 9, 9)]:
        x = rng.integers(-128, 128, (R, ld), dtype=np.int8)
        data += struct.pack("<20i", R, Cn, ld, *[0] * 11, 2, *[0] * 5) + x.tobytes()
        want.append(("q8", np.ascontiguousarray(x[:, :Cn].T)))
    return bytes(data), want


def _quantize_cases(rng, data, want) -> None:
    """qc_quantize_s8 (the conv units' standalone Q; NEON on aarch64) on ties at .5, out of range,
    +-inf, NaN, 41 values (a vector tail), against numpy: clamp(rint(x / s), -128 - z, 127 - z) + z."""
    for scale, zp in ((0.05, 3), (1.0, -128), (0.0123, 0)):
        x = np.concatenate([rng.standard_normal(20) * 8, (np.arange(-8, 8) + 0.5) * scale,
                            [np.inf, -np.inf, np.nan, 1e30, -1e30]]).astype(np.float32)
        v = x / np.float32(scale)
        v = np.where(np.isnan(v), np.float32(-128 - zp), v)
        exp = (np.rint(np.clip(v, -128 - zp, 127 - zp)) + zp).astype(np.int8)
        data += struct.pack("<20i", x.size, *struct.unpack("<i", struct.pack("<f", scale)), *[0] * 12, 5, zp,
                            0, 0, 0, 0) + x.tobytes()
        want.append(("q8", exp))


def _pointwise_case(rng, i, K, P, OC, data, want) -> None:
    """A qc_conv1x1_s8_q8 and a _f32 case: acc = bias + w @ x in int64, packed as lower_conv_s8 does."""
    from qc.backends.c.lower_conv_s8 import pack_pointwise

    extreme = i == 0
    x = np.full((K, P), -128, np.int8) if extreme else rng.integers(-128, 128, (K, P), dtype=np.int8)
    w = np.full((OC, K), -128, np.int8) if extreme else rng.integers(-128, 128, (OC, K), dtype=np.int8)
    bias = rng.integers(-2**16, 2**16, OC).astype(np.int32)
    acc = bias.astype(np.int64)[:, None] + w.astype(np.int64) @ x.astype(np.int64)
    qm = [packing.quantize_multiplier(float(r)) for r in np.exp(rng.uniform(np.log(1e-6), np.log(3.0), OC))]
    mult = np.array([m for m, _ in qm], np.int32)
    shift = np.array([s for _, s in qm], np.int32)
    zy, lo, hi = int(rng.integers(-20, 20)), (-128, 0)[i % 2], (127, 100)[i % 2]
    want.append(("q8", np.stack([packing.requantize_ref(acc[c], mult[c], shift[c], zy, lo, hi) for c in range(OC)])))
    data += struct.pack("<20i", K, P, OC, *[0] * 11, 3, zy, lo, hi, 1, 0)
    for a in (x, pack_pointwise(w), bias, mult, shift):
        data += a.tobytes()
    per_channel, has_fb = (1, 1) if i % 2 == 0 else (0, 0)
    scale = rng.uniform(1e-5, 1e-2, OC if per_channel else 1).astype(np.float32)
    fb = rng.standard_normal(OC).astype(np.float32)
    exp_f = acc.astype(np.float32) * scale[:, None]
    if has_fb:
        exp_f = (exp_f + fb[:, None]).astype(np.float32)
    # a fused Relu / ReLU6 clamp (lower_conv_s8): bounds inside the range on every other case
    clip = np.array([0.0, np.float32(np.median(exp_f))], np.float32) if i % 4 < 2 else None
    if clip is not None:
        exp_f = np.minimum(np.maximum(exp_f, clip[0]), clip[1]).astype(np.float32)
    data += struct.pack("<20i", K, P, OC, *[0] * 11, 4, int(clip is not None), 0, 0, per_channel, has_fb)
    for a in (x, pack_pointwise(w), bias, scale) + ((fb,) if has_fb else ()) + ((clip,) if clip is not None else ()):
        data += a.tobytes()
    want.append(("f32", exp_f.astype(np.float32)))


@pytest.mark.parametrize("kind,cpu,variant,qemu_cpu", CONFIGS)
def test_depthwise_kernel_bit_exact(tmp_path, kind, cpu, variant, qemu_cpu):
    """qc_conv_dw_s8_q8 / _f32 (the 3x3 requantize-in-registers path on SDOT builds too),
    qc_conv1x1_s8_q8 / _f32 and qc_quantize_s8 of every variant equal the numpy model bit for bit, and
    qc_transpose_s8 (8 x 8 NEON blocks, edges, row strides) equals numpy's transpose."""
    toolchain.require_tools(kind)
    data, want = _stream(np.random.default_rng(11))
    exe = toolchain.build(SOURCES, tmp_path / f"dw-{variant}", kind, cpu,
                          extra_flags=packing.variant_macros(variant))
    (tmp_path / "in.bin").write_bytes(data)
    proc = toolchain.run(exe, kind, qemu_cpu, [str(tmp_path / "in.bin"), str(tmp_path / "out.bin")], timeout=120)
    assert proc.returncode == 0, proc.stderr
    out, pos = (tmp_path / "out.bin").read_bytes(), 0
    for i, (what, exp) in enumerate(want):
        n = exp.size * (1 if what == "q8" else 4)
        got = np.frombuffer(out[pos:pos + n], np.int8 if what == "q8" else "<f4").reshape(exp.shape)
        pos += n
        np.testing.assert_array_equal(got.view(np.uint8 if what == "q8" else np.uint32),
                                      exp.view(np.uint8 if what == "q8" else np.uint32),
                                      err_msg=f"{variant} on {qemu_cpu}: case {i}: {what}")
    assert pos == len(out)


# -- a small int8 MobileNet-style CNN end to end ----------------------------------------------------
def _mobile_block_model(path: Path) -> Path:
    """stem 3x3/2 + ReLU6, inverted residual (1x1 expand + ReLU6, 3x3 depthwise + ReLU6, 1x1
    project, residual Add), depthwise 3x3/2 + Relu, GlobalAveragePool, Gemm: 1x3x20x20 -> 1x10."""
    rng = np.random.RandomState(3)

    def t(name, *shape, scale=None):
        fan = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        a = rng.randn(*shape) * (np.sqrt(2.0 / fan) if scale is None else scale)
        return numpy_helper.from_array(a.astype(np.float32), name)
    inits = [t("w0", 8, 3, 3, 3), t("b0", 8, scale=0.1), t("w1", 24, 8, 1, 1), t("b1", 24, scale=0.1),
             t("w2", 24, 1, 3, 3), t("b2", 24, scale=0.1), t("w3", 8, 24, 1, 1), t("b3", 8, scale=0.1),
             t("w4", 8, 1, 3, 3), t("wf", 10, 8), t("bf", 10, scale=0.1),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w0", "b0"], ["c0"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             n("Clip", ["c0", "lo", "hi"], ["r0"]),
             n("Conv", ["r0", "w1", "b1"], ["c1"], kernel_shape=[1, 1]), n("Clip", ["c1", "lo", "hi"], ["r1"]),
             n("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=24),
             n("Clip", ["c2", "lo", "hi"], ["r2"]),
             n("Conv", ["r2", "w3", "b3"], ["c3"], kernel_shape=[1, 1]), n("Add", ["r0", "c3"], ["a3"]),
             n("Conv", ["a3", "w4"], ["c4"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], group=8),
             n("Relu", ["c4"], ["r4"]), n("GlobalAveragePool", ["r4"], ["g"]), n("Flatten", ["g"], ["f"]),
             n("Gemm", ["f", "wf", "bf"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "mobile_block", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 3, 20, 20])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [1, 10])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_mobile_block_w8a8_matches_onnxruntime(tmp_path):
    """qc compile --quant w8a8 of a MobileNet-style CNN: depthwise convs on qc_conv_dw_s8, the
    ReLU6 / Relu before each Q folded into the requantization; the cortex-a76 build under qemu
    gives the same bytes as the portable host build, and both stay within 2% of the output range
    of onnxruntime on qc's QDQ ONNX (the per-layer difference is TFLite requantization rounding:
    at most 1 LSB of an activation, compounding over five layers)."""
    import qc
    from qc.backends.c.runner import build_model, load_report, run_model

    toolchain.require_tools("host")
    model = _mobile_block_model(tmp_path / "m.onnx")
    rng = np.random.RandomState(0)
    np.savez(tmp_path / "calib.npz", x=rng.rand(8, 1, 3, 20, 20).astype(np.float32))
    out = tmp_path / "c"
    qc.compile(str(model), target="cortex-a76", quant="w8a8", calibration=str(tmp_path / "calib.npz"),
               emit="c").write(str(out), harness=True)
    report = load_report(out)
    kernels = report["kernels"]
    # every conv requantizes to int8 (w8a8's requantize-outputs), its ReLU6 / Relu the clamp: the
    # block's depthwise conv, the last one (a Relu -> GlobalAveragePool after it), the stem (its
    # ReLU6 read by the Add too, which reads the next conv's int8 input dequantized)
    assert kernels.get("conv dw s8 -> s8 (clip)") == 1 and kernels.get("conv dw s8 -> s8 (relu)") == 1, kernels
    # its 1x1 convs run qc_conv1x1_s8 (SDOT, NCHW in and out), the expand one with ReLU6 as its clamp
    assert kernels.get("conv 1x1 s8 -> s8 (clip)") == 1 and kernels.get("conv 1x1 s8 -> s8") == 1, kernels
    assert kernels.get("conv im2row s8 -> s8 (clip)") == 1, kernels
    assert "clip f32" not in kernels and "transpose s8" not in kernels, kernels
    assert not any(k.startswith("conv") and "-> f32" in k or k.startswith("conv2d f32") for k in kernels), kernels
    # float only between the units: the residual Add's and the pooling's inputs
    assert kernels.get("dequantize i8") == 3 and kernels.get("add f32") == 1, kernels
    xs = [np.random.RandomState(s).rand(1, 3, 20, 20).astype(np.float32) for s in (5, 6)]
    from qc.backends.c import emit_c, prepare
    from qc.frontend.onnx import import_onnx
    from qc.targets import load_target

    module = import_onnx(str(out / "model.onnx"))
    prepare(module, {})
    host_report = emit_c(module, tmp_path / "host", load_target("cortex-a76"), harness=True, variant="portable")
    host_exe = build_model(host_report, "host")
    a76 = None
    if toolchain.find_tools("aarch64") is not None or __import__("os").environ.get("QC_REQUIRE_ARM") == "1":
        toolchain.require_tools("aarch64")
        a76 = build_model(report, "aarch64", "cortex-a76")
    sess = ort_session(str(out / "model.onnx"))
    for x in xs:
        (host,) = run_model(host_exe, host_report, {"x": x})
        ref = sess.run(None, {"x": x})[0]
        assert np.abs(host - ref).max() <= 0.02 * (ref.max() - ref.min()), (host, ref)
        assert host.argmax() == ref.argmax()
        if a76 is not None:
            (got,) = run_model(a76, report, {"x": x}, "aarch64", "cortex-a76", timeout=120)
            assert got.tobytes() == host.tobytes()
