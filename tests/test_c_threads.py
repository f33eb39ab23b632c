"""The C backend's worker pool (qc compile --threads): the pool itself, results identical for any
thread count, the split plan, the options.

Arm runs need aarch64-linux-gnu-gcc and qemu-aarch64 (toolchain.require_tools skips without them,
fails under QC_REQUIRE_ARM=1).
"""
from __future__ import annotations

import os
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from qc.backends.c import emit_c, prepare, split, toolchain
from qc.backends.c.runner import build_model, load_report, run_model
from qc.errors import QCError
from qc.frontend.onnx import import_onnx
from qc.onnx.evaluator import ort_session
from qc.targets import load_target

A76 = load_target("cortex-a76")
S, D, H = 61, 128, 4  # 61 rows: not a multiple of the 8-row granule nor of a 4-row tile: a short last slice


def _model() -> onnx.ModelProto:
    """x f32[S, D] -> int8 MatMul (requantized, an int8 output) -> Erf -> int8 MatMul (dequantized)
    -> LayerNorm -> H heads: softmax(q k^T) q (batched float MatMuls) -> float MatMul -> y; and x
    seen as NCHW 1 x D x S x 1 -> int8 1x1 Conv (transposes, requantized) -> c."""
    rng = np.random.RandomState(0)

    def q8(a):
        s = float(np.abs(a).max() / 127)
        return np.clip(np.round(a / s), -127, 127).astype(np.int8), np.float32(s)

    w1, s1 = q8(rng.randn(D, D) / np.sqrt(D))
    w2, s2 = q8(rng.randn(D, D) / np.sqrt(D))
    wc, swc = q8(rng.randn(64, D, 1, 1) / np.sqrt(D))
    arrays = {"w1": w1, "s1": s1, "w2": w2, "s2": s2, "sx": np.float32(0.03), "z0": np.int8(0),
              "sh": np.float32(0.05), "sr": np.float32(0.02), "w3": (rng.randn(D, 64) / np.sqrt(D)).astype(np.float32),
              "g": np.full(D, 1.1, np.float32), "b": np.full(D, 0.1, np.float32),
              "heads": np.array([S, H, D // H], np.int64), "rows": np.array([S, D], np.int64),
              "wc": wc, "swc": swc, "nchw": np.array([1, D, S, 1], np.int64)}
    N = helper.make_node
    nodes = [N("QuantizeLinear", ["x", "sx", "z0"], ["xq"]), N("DequantizeLinear", ["xq", "sx", "z0"], ["xd"]),
             N("DequantizeLinear", ["w1", "s1"], ["w1d"]), N("MatMul", ["xd", "w1d"], ["h1"]),
             N("QuantizeLinear", ["h1", "sh", "z0"], ["h1q"]), N("DequantizeLinear", ["h1q", "sh", "z0"], ["h1d"]),
             N("Erf", ["h1d"], ["e"]),
             N("QuantizeLinear", ["e", "sr", "z0"], ["eq"]), N("DequantizeLinear", ["eq", "sr", "z0"], ["ed"]),
             N("DequantizeLinear", ["w2", "s2"], ["w2d"]), N("MatMul", ["ed", "w2d"], ["h2"]),
             N("LayerNormalization", ["h2", "g", "b"], ["ln"], axis=-1, epsilon=1e-5),
             N("Reshape", ["ln", "heads"], ["r"]), N("Transpose", ["r"], ["q"], perm=[1, 0, 2]),
             N("Transpose", ["r"], ["k"], perm=[1, 2, 0]),
             N("MatMul", ["q", "k"], ["sc"]), N("Softmax", ["sc"], ["p"], axis=-1),
             N("MatMul", ["p", "q"], ["o"]), N("Transpose", ["o"], ["ot"], perm=[1, 0, 2]),
             N("Reshape", ["ot", "rows"], ["of"]), N("MatMul", ["of", "w3"], ["y"]),
             N("Transpose", ["xq"], ["xt"], perm=[1, 0]), N("Reshape", ["xt", "nchw"], ["xi"]),
             N("DequantizeLinear", ["xi", "sx", "z0"], ["xid"]), N("DequantizeLinear", ["wc", "swc"], ["wcd"]),
             N("Conv", ["xid", "wcd"], ["cf"]), N("QuantizeLinear", ["cf", "sh", "z0"], ["c"])]
    g = helper.make_graph(nodes, "threads", [helper.make_tensor_value_info("x", TP.FLOAT, [S, D])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [S, 64]),
                           helper.make_tensor_value_info("h1q", TP.INT8, [S, D]),
                           helper.make_tensor_value_info("c", TP.INT8, [1, 64, S, 1])],
                          [numpy_helper.from_array(np.asarray(a), n) for n, a in arrays.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _emit(out, threads, target=A76):
    module = import_onnx(_model())
    prepare(module, {})
    return emit_c(module, out, target, harness=True, threads=threads)


@pytest.fixture
def split_everything(monkeypatch):
    """Every call with a splitter splits, into as many tasks as it has granules."""
    monkeypatch.setattr(split, "MIN_WORK", 1)
    monkeypatch.setattr(split, "MIN_TASK_WORK", 1)


# -- results identical for any thread count --------------------------------------------------------
def test_threads_bit_identical_under_qemu(tmp_path, split_everything):
    """The model built with --threads 4 (every call split) and run under qemu -cpu cortex-a76
    with -t 1, 2, 3, 4 and QC_THREADS=3 gives the same bytes as the build without threads, and
    matches onnxruntime."""
    toolchain.require_tools("aarch64")
    one = _emit(tmp_path / "one", None)
    four = _emit(tmp_path / "four", 4)
    kinds = {k for _, k in four["calls"]}
    assert four["split_calls"] == 10 and {"gemm s8 (dotprod)", "gemm s8 requant (dotprod)", "matmul f32",
                                          "softmax f32", "layernorm f32", "erf f32", "quantize i8",
                                          "dequantize i8"} <= kinds
    x = np.random.RandomState(1).randn(S, D).astype(np.float32)
    ref = run_model(build_model(one, "aarch64", "cortex-a76"), one, {"x": x}, "aarch64", "cortex-a76")
    exe = build_model(four, "aarch64", "cortex-a76")
    io = tmp_path / "io"
    io.mkdir()
    (io / "x.bin").write_bytes(x.tobytes())
    for n, env in [(1, None), (2, None), (3, None), (4, None), (0, "3")]:
        outs = [io / f"{name}{n}.bin" for name in ("y", "h", "c")]
        opts = ["-t", str(n)] if n else []
        cmd = toolchain.run_command(exe, "aarch64", "cortex-a76", opts + [str(io / "x.bin")] + [str(p) for p in outs])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "QC_THREADS": env} if env else None)
        assert proc.returncode == 0, proc.stderr
        assert [p.read_bytes() for p in outs] == [r.tobytes() for r in ref], (n, env)
    y, h1q, c = ort_session(_model()).run(None, {"x": x})
    assert np.abs(ref[1].astype(np.int32) - h1q).max() <= 1  # requantization rounds once, onnxruntime twice
    assert np.abs(ref[2].astype(np.int32) - c).max() <= 1
    assert np.abs(ref[0] - y).max() < 0.05 * np.abs(y).max()


def _fused_model() -> onnx.ModelProto:
    """x f32[1, S, D2] -> int8 MatMul + bias (dequantized in the GEMM's epilogue) -> GELU (erf form)
    -> int8 MatMul (requantized: an int8 output); softmax(q k^T / 4 + mask) q over H heads of x
    (fused into qc.Attention); a 4-bit MatMulNBits with accuracy_level 4 (W4A8) on x."""
    rng = np.random.RandomState(2)
    D2, F, dh = 64, 128, 16

    def q8(a):
        s = float(np.abs(a).max() / 127)
        return np.clip(np.round(a / s), -127, 127).astype(np.int8), np.float32(s)

    w1, s1 = q8(rng.randn(D2, F) / np.sqrt(D2))
    w2, s2 = q8(rng.randn(F, D2) / np.sqrt(F))
    blocks = D2 // 32
    qn = rng.randint(0, 16, (48, blocks * 32)).astype(np.uint8)
    arrays = {"w1": w1, "s1": s1, "w2": w2, "s2": s2, "sx": np.float32(0.03), "z0": np.int8(0),
              "sg": np.float32(0.02), "sy": np.float32(0.05), "b1": (rng.randn(F) * 0.1).astype(np.float32),
              "sq2": np.float32(np.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5),
              "split": np.array([1, S, H, dh], np.int64), "dk": np.float32(4),
              "mask": np.where(rng.rand(1, 1, 1, S) < 0.2, -1e4, 0).astype(np.float32),
              "B": (qn[:, 0::2] | (qn[:, 1::2] << 4)).reshape(48, blocks, 16),
              "S": (rng.rand(48, blocks) * 0.02 + 0.01).astype(np.float32)}
    N = helper.make_node
    nodes = [N("QuantizeLinear", ["x", "sx", "z0"], ["xq"]), N("DequantizeLinear", ["xq", "sx", "z0"], ["xd"]),
             N("DequantizeLinear", ["w1", "s1"], ["w1d"]), N("MatMul", ["xd", "w1d"], ["h"]),
             N("Add", ["h", "b1"], ["hb"]), N("Div", ["hb", "sq2"], ["g0"]), N("Erf", ["g0"], ["g1"]),
             N("Add", ["g1", "one"], ["g2"]), N("Mul", ["hb", "g2"], ["g3"]), N("Mul", ["g3", "half"], ["g"]),
             N("QuantizeLinear", ["g", "sg", "z0"], ["gq"]), N("DequantizeLinear", ["gq", "sg", "z0"], ["gd"]),
             N("DequantizeLinear", ["w2", "s2"], ["w2d"]), N("MatMul", ["gd", "w2d"], ["y2"]),
             N("QuantizeLinear", ["y2", "sy", "z0"], ["yq"]),
             N("Reshape", ["x", "split"], ["r"]), N("Transpose", ["r"], ["q"], perm=[0, 2, 1, 3]),
             N("Transpose", ["r"], ["kt"], perm=[0, 2, 3, 1]), N("MatMul", ["q", "kt"], ["sc"]),
             N("Div", ["sc", "dk"], ["scd"]), N("Add", ["scd", "mask"], ["scm"]),
             N("Softmax", ["scm"], ["p"], axis=-1), N("MatMul", ["p", "q"], ["att"]),
             N("MatMulNBits", ["x", "B", "S"], ["w4"], domain="com.microsoft", K=D2, N=48, bits=4,
               block_size=32, accuracy_level=4)]
    g = helper.make_graph(nodes, "fused", [helper.make_tensor_value_info("x", TP.FLOAT, [1, S, D2])],
                          [helper.make_tensor_value_info("yq", TP.INT8, [1, S, D2]),
                           helper.make_tensor_value_info("att", TP.FLOAT, [1, H, S, dh]),
                           helper.make_tensor_value_info("w4", TP.FLOAT, [1, S, 48])],
                          [numpy_helper.from_array(np.asarray(a), n) for n, a in arrays.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                             ir_version=8)


@pytest.mark.parametrize("target,cpu", [("cortex-a76", "cortex-a76"), ("armv8.6-i8mm", "max")])
def test_fused_kernels_bit_identical_under_qemu(tmp_path, split_everything, target, cpu):
    """The fused int8 GEMMs (float and int8 epilogues), qc_attention_f32 (per head, a work area
    area per slice) and W4A8 (qc_quantize_q8b32 + qc_gemm_s4a8; i8mm: row pairs) split at every
    granule: -t 1..4 give the bytes of the build without threads (61 rows: a short last slice,
    an odd row in the last i8mm pair); the results match onnxruntime."""
    toolchain.require_tools("aarch64")
    tgt = load_target(target)

    def emit(out, threads):
        module = import_onnx(_fused_model())
        prepare(module, {})
        return emit_c(module, out, tgt, harness=True, threads=threads)

    one, four = emit(tmp_path / "one", None), emit(tmp_path / "four", 4)
    calls = _lowered(_fused_model(), tgt).calls
    # the bias Add and the GELU are the float GEMM's epilogue: no call of their own
    assert [c.kernel.split(" (")[0] for c in calls if c.fn == "qc_gemm_s8_f32"] == ["gemm s8 + gelu"]
    src = (tmp_path / "one" / "model.c").read_text()
    assert src.count(".act = QC_ACT_GELU") == 1 and src.count(".fbias = NULL") == 0
    assert not any(c.fn in ("qc_unary_f32", "qc_binary") for c in calls), [c.fn for c in calls]
    split_fns = [c.fn for c in calls if split.describe(c) is not None]
    assert sorted(set(split_fns)) == ["qc_attention_f32", "qc_gemm_s4a8", "qc_gemm_s8_f32", "qc_gemm_s8_q8",
                                      "qc_quantize_q8b32", "qc_quantize_s8"], split_fns
    assert four["split_calls"] == len(split_fns)
    x = np.random.RandomState(3).randn(1, S, 64).astype(np.float32)
    ref = run_model(build_model(one, "aarch64", cpu), one, {"x": x}, "aarch64", cpu)
    exe = build_model(four, "aarch64", cpu)
    (tmp_path / "x.bin").write_bytes(x.tobytes())
    for n in (1, 2, 3, 4):
        outs = [tmp_path / f"{name}{n}.bin" for name in ("yq", "att", "w4")]
        args = ["-t", str(n), str(tmp_path / "x.bin")] + [str(p) for p in outs]
        cmd = toolchain.run_command(exe, "aarch64", cpu, args)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert [p.read_bytes() for p in outs] == [r.tobytes() for r in ref], n
    yq, att, w4 = ort_session(_fused_model()).run(None, {"x": x})
    assert np.abs(ref[0].astype(np.int32) - yq).max() <= 1
    assert np.abs(ref[1] - att).max() < 1e-5
    assert np.abs(ref[2] - w4).max() < 0.02 * np.abs(w4).max()


def _lowered(model: onnx.ModelProto, target):
    from qc.backends.c.kernels import gemm_variant
    from qc.backends.c.lower import Lowering, lower

    module = import_onnx(model)
    prepare(module, {})
    lw = Lowering(module, tuple(target.features), gemm_variant(target), tuple(target.kernels.get("cpu", ())))
    lw.threads = True  # as emit_c(threads=N) lowers: scratch sized for every slice
    return lower(lw)


_POOL_TEST = r"""
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include "qc_threads.h"

#define NT 37
static pthread_t who[NT];
static int runs[NT];

static void task(void *ctx, int t, int n)
{
    (void)ctx;
    if (n != NT) runs[t] = -1000;
    who[t] = pthread_self();
    runs[t] += 1;
}

int main(int argc, char **argv)
{
    int n, k, t, lo, hi, prev;
    (void)argc;
    (void)argv;
    /* qc_split_range: contiguous, granule-aligned, covering, never empty while ntasks <= granules */
    for (n = 1; n <= 8; ++n) { /* 61 units = 8 granules */
        prev = 0;
        for (t = 0; t < n; ++t) {
            qc_split_range(61, 8, t, n, &lo, &hi);
            if (lo != prev || lo % 8 || hi <= lo || (hi % 8 && hi != 61)) return 10;
            prev = hi;
        }
        if (prev != 61) return 11;
    }
    for (n = 1; n <= 4; ++n) {
        int distinct = 0;
        if (qc_threads_init(n) != n || qc_threads_count() != n || qc_threads_tasks(100) != n ||
            qc_threads_tasks(2) != (n < 2 ? n : 2)) return 20;
        memset(runs, 0, sizeof runs);
        for (k = 0; k < 500; ++k) qc_parallel_for(NT, task, NULL);
        for (t = 0; t < NT; ++t) {
            int seen = 0, u;
            if (runs[t] != 500) return 30;
            for (u = 0; u < t; ++u) seen |= pthread_equal(who[u], who[t]);
            distinct += !seen;
            if (t < n && pthread_equal(who[t], pthread_self()) != (t == 0)) return 31;
        }
        printf("%d threads: %d distinct\n", n, distinct);
        if (distinct != n) return 32;
    }
    qc_threads_shutdown();
    if (qc_threads_count() != 1) return 40;
    printf("env %d\n", qc_threads_env(5));
    return 0;
}
"""


@pytest.mark.parametrize("kind,cpu", [("host", None), ("aarch64", "cortex-a76")])
def test_pool(tmp_path, kind, cpu):
    """qc_threads.c alone: every task of a dispatch runs exactly once (500 dispatches of 37 tasks
    for 1-4 threads, resized in place), task t < n on thread t (the caller is thread 0), n
    distinct threads; qc_split_range's slices; QC_THREADS."""
    toolchain.require_tools(kind)
    src = tmp_path / "pool_test.c"
    src.write_text(_POOL_TEST)
    exe = toolchain.build([src, toolchain.RUNTIME / "qc_threads.c"], tmp_path / "pool_test", kind, cpu,
                          extra_flags=["-DQC_THREADS=1", "-pthread"])
    cmd = toolchain.run_command(exe, kind, cpu)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "QC_THREADS": "3"})
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout.splitlines() == [f"{n} threads: {n} distinct" for n in range(1, 5)] + ["env 3"]


# -- what is generated -----------------------------------------------------------------------------
def test_split_plan_and_determinism(tmp_path):
    """Default thresholds (split.MIN_WORK): the GEMMs, attention MatMuls, softmax and Erf split, the
    cheap element-wise calls of 61 x 128 do not; the same options give byte-identical files; no
    --threads gives no pool at all."""
    a = _emit(tmp_path / "a", 4)
    _emit(tmp_path / "b", 4)
    names = ["model.c", "model.h", "harness.c", "Makefile", "model.cmake", "report.json"]
    for f in names:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    split_kinds = sorted(k for (_, k), c in zip(a["calls"], _planned()) if c)
    # not split: quantize (4 x 7,808 work), dequant (4 x), layernorm (8 x 7,808 = 62,464), the
    # direct 1x1 int8 conv (no splitter), the q k^T qc_sgemm_batch (it packs B into a shared work buffer)
    assert split_kinds == ["erf f32", "gemm s8 (dotprod)", "gemm s8 requant (dotprod)",
                           "matmul f32", "matmul f32", "softmax f32"], split_kinds
    assert a["split_calls"] == 6 and "-DQC_THREADS=1" in a["macros"]
    assert "CFLAGS = -O2 -static -mcpu=cortex-a76 -DQC_KERNEL_DOTPROD -DQC_THREADS=1 -pthread" in \
        (tmp_path / "a" / "Makefile").read_text()
    off = _emit(tmp_path / "off", None)
    assert "threads" not in off and not (tmp_path / "off" / "qc_threads.c").exists()
    for f in ("model.c", "harness.c", "Makefile", "model.h"):
        text = (tmp_path / "off" / f).read_text()
        assert "thread" not in text.lower() and "pthread" not in text, f
    assert load_report(tmp_path / "a")["threads"] == 4


def _planned() -> list[bool]:
    """Which calls of the model split.plan splits (default thresholds)."""
    from qc.backends.c.kernels import gemm_variant
    from qc.backends.c.lower import Lowering, lower

    module = import_onnx(_model())
    prepare(module, {})
    low = lower(Lowering(module, tuple(A76.features), gemm_variant(A76), tuple(A76.kernels.get("cpu", ()))))
    split.plan(low.calls)
    return [c.split is not None for c in low.calls]


def test_threads_refused(tmp_path, capsys):
    """--threads on a Cortex-M target or below 1: `qc: error:` and exit 2, before the model is read."""
    from qc.cli import main

    onnx.save(_model(), tmp_path / "m.onnx")
    for target in ("cortex-m4", "cortex-m55"):
        assert main(["compile", str(tmp_path / "m.onnx"), "--target", target, "--threads", "2",
                     "-o", str(tmp_path / target)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("qc: error: --threads is for Cortex-A targets: "
                              f"'{target}' is a Cortex-M target"), err
        assert not (tmp_path / target).exists()
    assert main(["compile", str(tmp_path / "m.onnx"), "--target", "cortex-a76", "--threads", "0",
                 "-o", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.startswith("qc: error: --threads must be a whole number >= 1 (got 0)")
    with pytest.raises(QCError, match="Cortex-M"):
        _emit(tmp_path / "m4", 2, load_target("cortex-m4"))
