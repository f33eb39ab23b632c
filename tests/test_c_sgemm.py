"""qc_sgemm (backends/c/runtime/qc_sgemm.c) against a float64 numpy reference, on the host
(scalar), under qemu-aarch64 (NEON: cortex-a53, cortex-a76, max) and on Cortex-M4 (scalar,
fused multiply-add) / Cortex-M55 (Helium) under qemu-system-arm.

One driver (tests/c_sgemm/driver.c) per build reads a stream of calls and writes their outputs.
Every result must lie within the bound docs/c-kernels.md states for the float32 GEMM:
|Y - Y64| <= (K + 4) u (|alpha| sum_k |a_k b_k| + |beta c| + |bias|), u = 2^-24, and the
elements Y's row stride skips must be untouched. All variants must give the same bits (each
output is the same chain of fused multiply-adds in k order). The run-time packing
(qc_sgemm_pack_b) must equal backends/c/packing_f32.pack_b bit for bit.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from qc.backends.c import packing_f32, toolchain

DRIVER = Path(__file__).parent / "c_sgemm" / "driver.c"
SOURCES = [DRIVER, toolchain.RUNTIME / "qc_sgemm.c"]
U = 2.0 ** -24
SENTINEL = np.float32(-7.25)  # what the driver's Y holds before the call
RESULTS: dict = {}  # the first configuration's output bytes, which every other one must equal

# (kind, cpu the driver is compiled for, qemu cpus it runs on)
CONFIGS = [
    ("host", None, [None]),
    ("aarch64", "cortex-a53", ["cortex-a53", "cortex-a76", "max"]),
    ("aarch64", "cortex-a76", ["cortex-a76"]),
    ("aarch64", "max", ["max"]),
    ("cortex-m", "cortex-m4", ["cortex-m4"]),
    ("cortex-m", "cortex-m55", ["cortex-m55"]),
]

# M, N, K off the 4 x 16 tile and the 4-wide k steps, plus small attention shapes
SHAPES = [(1, 1, 1), (3, 17, 33), (17, 3, 65), (5, 16, 4), (4, 16, 7), (9, 50, 31), (8, 12, 9),
          (2, 4, 0), (16, 16, 32), (16, 32, 16), (6, 33, 18), (13, 8, 5)]


def _record(op: int, M: int, N: int, K: int, lda: int, brs: int, bcs: int, a, b, *, bias=None, c=None,
            crs: int = 0, ccs: int = 0, ldy: int = 0, alpha: float = 1.0, beta: float = 0.0,
            offs=None, ylen: int = 0) -> bytes:
    batch = len(offs[0]) if offs else 1
    head = [M, N, K, lda, brs, bcs, int(bias is not None), int(c is not None), crs, ccs, ldy, batch,
            a.size, b.size, 0 if c is None else c.size, ylen]
    out = struct.pack(f"<{1 + len(head)}i2f", op, *head, alpha, beta)
    for arr in [a, b] + ([bias] if bias is not None else []) + ([c] if c is not None else []):
        out += np.ascontiguousarray(arr, np.float32).tobytes()
    if offs:
        for o in offs:
            out += np.asarray(o, "<i4").tobytes()
    return out + np.full(ylen, SENTINEL, np.float32).tobytes()


class Cases:
    """The records of one stream and, per record, the float32 output count and its check."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.checks: list = []

    def add(self, record: bytes, nout: int, check) -> None:
        self.data += record
        self.checks.append((nout, check))

    def verify(self, raw: bytes, where: str) -> None:
        out = np.frombuffer(raw, "<f4")
        pos = 0
        for n, check in self.checks:
            check(out[pos:pos + n], where)
            pos += n
        assert pos == out.size, f"{where}: driver wrote {out.size} floats, expected {pos}"


def _check_gemm(got, want64, mag, K, ldy, N, where, what):
    """got: the driver's Y (rows of ldy); want64 / mag: M x N reference and sum of |terms|."""
    M = want64.shape[0]
    y = got.reshape(M, ldy) if M else got.reshape(0, ldy)
    np.testing.assert_array_equal(y[:, N:], SENTINEL, err_msg=f"{where}: {what} wrote past N")
    err = np.abs(y[:, :N].astype(np.float64) - want64)
    bound = (K + 4) * U * mag + 1e-37
    assert np.all(err <= bound), f"{where}: {what}: max error {err.max()} (bound {bound.ravel()[err.argmax()]})"


def _gemm_check(want64, mag, K: int, ldy: int, N: int, what: str):
    return lambda got, where: _check_gemm(got, want64, mag, K, ldy, N, where, what)


def _pack_check(want, shape):
    return lambda got, where: np.testing.assert_array_equal(got, want, err_msg=f"{where}: qc_sgemm_pack_b {shape}")


def _gemm_cases(cases: Cases, rng: np.random.Generator) -> None:
    for i, (M, N, K) in enumerate(SHAPES):
        a = rng.standard_normal((M, K)).astype(np.float32)
        b = rng.standard_normal((K, N)).astype(np.float32)
        bias = rng.standard_normal(N).astype(np.float32)
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        prod, mag = a64 @ b64, np.abs(a64) @ np.abs(b64)
        # packed B (compile-time layout), alpha and bias, Y rows padded
        alpha, ldy = (0.5 if i % 2 else 1.0), N + (i % 3)
        cases.add(_record(1, M, N, K, K, 0, 0, a, packing_f32.pack_b(b), bias=bias, ldy=ldy, alpha=alpha,
                          ylen=M * ldy), M * ldy,
                  _gemm_check(alpha * prod + bias, abs(alpha) * mag + np.abs(bias), K, ldy, N, f"packed {(M, N, K)}"))
        # B transposed in memory (b^T stored N x K: brs 1, bcs K), A rows strided: packed at run time
        lda = K + 3
        ap = np.zeros((M, lda), np.float32)
        ap[:, :K] = a
        cases.add(_record(1, M, N, K, lda, 1, K, ap, np.ascontiguousarray(b.T), ldy=N, ylen=M * N), M * N,
                  _gemm_check(prod, mag, K, N, N, f"transposed B {(M, N, K)}"))
        # B row-major with a row stride: read in place when N % 4 == 0, else packed first
        ldb = N + 4
        bp = np.zeros((K, ldb), np.float32)
        bp[:, :N] = b
        c = rng.standard_normal((M, N)).astype(np.float32)
        for crs, ccs, cv in [(N, 1, c), (0, 1, c[:1]), (1, 0, c[:, :1].ravel())]:
            cfull = np.broadcast_to(c[:1] if crs == 0 else (c[:, :1] if ccs == 0 else c), (M, N))
            cases.add(_record(1, M, N, K, K, ldb, 1, a, bp.ravel(), c=np.ascontiguousarray(cv).ravel(),
                              crs=crs, ccs=ccs, ldy=N, alpha=1.5, beta=0.75, ylen=M * N), M * N,
                      _gemm_check(1.5 * prod + 0.75 * cfull.astype(np.float64), 1.5 * mag + 0.75 * np.abs(cfull),
                                  K, N, N, f"strided B + C {(M, N, K)} C strides {(crs, ccs)}"))
        # run-time packing is the compile-time layout, bit for bit
        cases.add(_record(3, M, N, K, K, N, 1, a, b, ylen=0), packing_f32.packed_size(K, N),
                  _pack_check(packing_f32.pack_b(b), (M, N, K)))


def _batch_cases(cases: Cases, rng: np.random.Generator) -> None:
    """Attention-like heads: Q (S x H*D) and K (S x H*D) read as per-head views, Q K^T written
    per head; P V with V a per-head view, written into (S, H*D) (the transposes as strides)."""
    for S, H, D in [(16, 3, 8), (9, 2, 5), (20, 4, 16)]:
        q = rng.standard_normal((S, H * D)).astype(np.float32)
        k = rng.standard_normal((S, H * D)).astype(np.float32)
        v = rng.standard_normal((S, H * D)).astype(np.float32)
        heads = list(range(H))
        q3, k3, v3 = (x.reshape(S, H, D).transpose(1, 0, 2).astype(np.float64) for x in (q, k, v))
        want = q3 @ k3.transpose(0, 2, 1)
        mag = np.abs(q3) @ np.abs(k3).transpose(0, 2, 1)
        offs = ([h * D for h in heads], [h * D for h in heads], [h * S * S for h in heads])
        cases.add(_record(2, S, S, D, H * D, 1, H * D, q, k, offs=offs, ldy=S, ylen=H * S * S), H * S * S,
                  lambda got, where, w=want, m=mag, D=D, S=S, H=H:
                  _check_gemm(got, w.reshape(H * S, S), m.reshape(H * S, S), D, S, S, where, f"QK^T {(S, H, D)}"))
        p = rng.random((H, S, S)).astype(np.float32)
        p64 = p.astype(np.float64)
        want = np.einsum("hst,htd->shd", p64, v3).reshape(S, H * D)
        mag = np.einsum("hst,htd->shd", p64, np.abs(v3)).reshape(S, H * D)
        offs = ([h * S * S for h in heads], [h * D for h in heads], [h * D for h in heads])
        cases.add(_record(2, S, D, S, S, H * D, 1, p, v, offs=offs, ldy=H * D, ylen=S * H * D), S * H * D,
                  lambda got, where, w=want, m=mag, S=S, H=H, D=D:
                  _check_gemm(got, w, m, S, H * D, H * D, where, f"PV {(S, H, D)}"))


# N, C, H, W, OC, KH, KW, group, (stride h, w, pad top, left, bottom, right, dil h, w), nb
CONVS = [(1, 3, 9, 11, 8, 3, 3, 1, (1, 1, 1, 1, 1, 1, 1, 1), 16),
         (2, 4, 7, 6, 6, 3, 2, 2, (2, 1, 0, 1, 1, 0, 1, 2), 32),
         (1, 5, 8, 8, 5, 1, 1, 1, (1, 1, 0, 0, 0, 0, 1, 1), 64),  # 1x1: x read in place
         (1, 6, 5, 7, 4, 1, 1, 1, (1, 1, 0, 0, 0, 0, 1, 1), 16),  # 1x1, 35 pixels: packed
         (1, 8, 10, 10, 12, 5, 5, 4, (2, 2, 2, 2, 2, 2, 1, 1), 16)]


def _conv64(x, w, group, st, dil, pads):
    """float64 NCHW conv and the same with |x|, |w| (the magnitude for the bound)."""
    N, C, H, W = x.shape
    OC, cg, KH, KW = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    OH = (H + pads[0] + pads[2] - dil[0] * (KH - 1) - 1) // st[0] + 1
    OW = (W + pads[1] + pads[3] - dil[1] * (KW - 1) - 1) // st[1] + 1
    y, mag = np.zeros((N, OC, OH, OW)), np.zeros((N, OC, OH, OW))
    ocg = OC // group
    for oc in range(OC):
        g = oc // ocg
        for kh in range(KH):
            for kw in range(KW):
                patch = xp[:, g * cg:(g + 1) * cg, kh * dil[0]:kh * dil[0] + st[0] * (OH - 1) + 1:st[0],
                           kw * dil[1]:kw * dil[1] + st[1] * (OW - 1) + 1:st[1]]
                wv = w[oc, :, kh, kw][None, :, None, None]
                y[:, oc] += (patch * wv).sum(1)
                mag[:, oc] += (np.abs(patch) * np.abs(wv)).sum(1)
    return y, mag


def _conv_cases(cases: Cases, rng: np.random.Generator) -> None:
    for N, C, H, W, OC, KH, KW, group, (sh, sw, pt, pl, pb, pr, dh, dw), nb in CONVS:
        x = rng.standard_normal((N, C, H, W)).astype(np.float32)
        w = rng.standard_normal((OC, C // group, KH, KW)).astype(np.float32)
        bias = rng.standard_normal(OC).astype(np.float32)
        y64, mag = _conv64(x.astype(np.float64), w.astype(np.float64), group, (sh, sw), (dh, dw), (pt, pl, pb, pr))
        y64 += bias[None, :, None, None]
        mag += np.abs(bias)[None, :, None, None]
        OH, OW = y64.shape[2:]
        K = C // group * KH * KW
        rec = struct.pack("<17i", 4, N, C, H, W, OC, OH, OW, KH, KW, group, sh, sw, pt, pl, dh, dw)
        rec += struct.pack("<2i", 1, nb) + x.tobytes() + w.tobytes() + bias.tobytes()

        def check(got, where, y64=y64, mag=mag, K=K, shape=(N, C, H, W, OC, KH, KW, group)):
            err = np.abs(got.reshape(y64.shape).astype(np.float64) - y64)
            bound = (K + 4) * U * mag + 1e-37
            assert np.all(err <= bound), f"{where}: conv {shape}: max error {err.max()}"
        cases.add(rec, y64.size, check)


@pytest.fixture(scope="module")
def stream() -> Cases:
    rng = np.random.default_rng(15)
    cases = Cases()
    _gemm_cases(cases, rng)
    _batch_cases(cases, rng)
    _conv_cases(cases, rng)
    return cases


def test_packing_layout():
    """packing_f32.pack_b: panels of 16 columns, the last one rounded up to 4 and zero padded."""
    b = np.arange(3 * 21, dtype=np.float32).reshape(3, 21)
    p = packing_f32.pack_b(b)
    assert p.size == packing_f32.packed_size(3, 21) == 3 * 24
    np.testing.assert_array_equal(p[:48].reshape(3, 16), b[:, :16])
    tail = p[48:].reshape(3, 8)
    np.testing.assert_array_equal(tail[:, :5], b[:, 16:])
    assert not tail[:, 5:].any()


@pytest.mark.parametrize("kind,cpu,runs", CONFIGS, ids=[f"{k}-{c or 'host'}" for k, c, _ in CONFIGS])
def test_sgemm_within_bound(tmp_path, stream, kind, cpu, runs):
    toolchain.require_tools(kind)
    exe = toolchain.build(SOURCES, tmp_path / "driver", kind, cpu)
    inp, out = tmp_path / "in.bin", tmp_path / "out.bin"
    inp.write_bytes(bytes(stream.data))
    for run_cpu in runs:
        out.unlink(missing_ok=True)
        proc = toolchain.run(exe, kind, run_cpu or cpu, [str(inp), str(out)], timeout=180)
        where = f"{kind} {cpu} on {run_cpu or cpu}"
        assert proc.returncode == 0 and "ok" in proc.stdout, f"{where}: {proc.returncode} {proc.stdout}{proc.stderr}"
        raw = out.read_bytes()
        stream.verify(raw, where)
        # every variant is the same chain of fused multiply-adds in k order: the same bits
        first = RESULTS.setdefault("bytes", (where, raw))
        assert raw == first[1], f"{where}: differs from {first[0]}"


def _attention_cnn(path: Path) -> Path:
    """A float32 model with every path of the lowering: Conv 3x3 (im2col) and 1x1 (in place),
    a depthwise Conv (direct), Gemm with transB and a constant C, and one attention block as an
    HF export writes it (MatMul + bias Add, Reshape / Transpose to heads, K transposed, Softmax,
    P V, Transpose back)."""
    import onnx
    from onnx import TensorProto as TP
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(3)
    S, H, D, C = 16, 2, 8, 16

    def t(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    def i64(name, vals):
        return numpy_helper.from_array(np.array(vals, np.int64), name)

    inits = [t("wc", C, 3, 3, 3), t("bc", C), t("wd", C, 1, 3, 3), t("w1", C, C, 1, 1), t("b1", C),
             t("wq", C, C), t("bq", C), t("wk", C, C), t("bk", C), t("wv", C, C), t("bv", C),
             t("wg", 5, C), t("bg", 5), i64("heads", [1, S, H, D]), i64("flat", [1, S, C]), i64("seq", [S, C]),
             numpy_helper.from_array(np.array(np.sqrt(D), np.float32), "scale")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "wc", "bc"], ["c1"], pads=[1, 1, 1, 1]), n("Relu", ["c1"], ["r1"]),
             n("Conv", ["r1", "wd"], ["c2"], pads=[1, 1, 1, 1], group=C),
             n("Conv", ["c2", "w1", "b1"], ["c3"]),  # 1 x C x 4 x 4: 16 pixels, the sequence
             n("Reshape", ["c3", "seq"], ["cs"]), n("Transpose", ["cs"], ["h"], perm=[1, 0]),  # S x C
             n("MatMul", ["h", "wq"], ["q0"]), n("Add", ["q0", "bq"], ["q1"]),
             n("MatMul", ["h", "wk"], ["k0"]), n("Add", ["k0", "bk"], ["k1"]),
             n("MatMul", ["h", "wv"], ["v0"]), n("Add", ["v0", "bv"], ["v1"]),
             n("Reshape", ["q1", "heads"], ["q2"]), n("Transpose", ["q2"], ["q"], perm=[0, 2, 1, 3]),
             n("Reshape", ["k1", "heads"], ["k2"]), n("Transpose", ["k2"], ["kt"], perm=[0, 2, 3, 1]),
             n("Reshape", ["v1", "heads"], ["v2"]), n("Transpose", ["v2"], ["v"], perm=[0, 2, 1, 3]),
             n("MatMul", ["q", "kt"], ["s0"]), n("Div", ["s0", "scale"], ["s1"]), n("Softmax", ["s1"], ["p"], axis=-1),
             n("MatMul", ["p", "v"], ["o0"]), n("Transpose", ["o0"], ["o1"], perm=[0, 2, 1, 3]),
             n("Reshape", ["o1", "flat"], ["o2"]), n("ReduceMean", ["o2"], ["m"], axes=[1], keepdims=0),
             n("Gemm", ["m", "wg", "bg"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "attention_cnn", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [1, 5])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("target", ["cortex-a76", "cortex-m4", "cortex-m55"])
def test_float_model_matches_onnxruntime(tmp_path, target):
    """The whole float32 model compiled for *target* under qemu against onnxruntime (graph
    optimizations off): the schedule uses qc_sgemm, the conv GEMM and the direct depthwise conv,
    single-use Transposes are views, and the outputs agree within float32 rounding."""
    from qc.backends.c import emit_c, prepare
    from qc.backends.c.runner import build_model, run_model
    from qc.frontend.onnx import import_onnx
    from qc.onnx.evaluator import ort_session
    from qc.targets import load_target

    kind = "aarch64" if target.startswith("cortex-a") else "cortex-m"
    toolchain.require_tools(kind)
    path = _attention_cnn(tmp_path / "m.onnx")
    module = import_onnx(str(path))
    prepare(module, {})
    report = emit_c(module, tmp_path / "c", load_target(target), harness=True)
    text = (tmp_path / "c" / "model.c").read_text()
    # only the Transpose read by three MatMuls is copied; the projections are qc_sgemm calls and
    # the heads' QK^T / softmax / PV one fused qc_attention_f32 reading their Transposes as strides
    assert text.count(": transpose */") == 1 and text.count("qc_sgemm(") == 4, text
    assert text.count("qc_attention_f32(") == 1 and "qc_sgemm_batch(" not in text
    assert "qc_conv2d_sgemm_f32(" in text and "qc_conv2d_f32(" in text
    x = np.random.default_rng(4).standard_normal((1, 3, 4, 4)).astype(np.float32)
    exe = build_model(report, kind, target)
    (got,) = run_model(exe, report, {"x": x}, kind, target, timeout=120)
    (want,) = ort_session(str(path)).run(None, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
