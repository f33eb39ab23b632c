"""split-outliers in the C backend: fold-outlier-gather (the int8 part reads x itself) and
qc_outlier_acc_f16 (the float16 part in one call, runtime/qc_outliers.c) give the bits of the
unfused C, on the host and under qemu (cortex-a53, a76, max; Cortex-M4, M55 for the kernel),
and stay within the w8a8 bound of onnxruntime.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from qc.backends.c import emit_c, toolchain
from qc.backends.c.prepare import c_prepare_pipeline
from qc.backends.c.runner import build_model, load_report, run_model
from qc.frontend.onnx import import_onnx
from qc.onnx.evaluator import ort_session
from qc.pm import PassManager
from qc.quant import schemes
from qc.quant.schemes import QuantOptions
from qc.targets import load_target

T, K, H, N2 = 16, 64, 96, 40
OUTLIERS = (5, 40)
SHAPES = {"x": (1, T, K)}
QUANT = QuantOptions("w8a8", outlier_fraction=0.04)  # 2 of x's 64 columns, 3 of h's 96


def _model(path: Path) -> Path:
    """x -> (x @ wa + ba -> Gelu -> @ w2 + b2 -> Gelu tanh) and x @ wb + bb: three split MatMuls
    share x's outlier Gathers; two with their bias Add and Gelu after them, one with its bias Add
    writing a graph output."""
    rng = np.random.RandomState(7)
    wa, wb = (rng.randn(K, H) / 8).astype(np.float32), (rng.randn(K, N2) / 8).astype(np.float32)
    w2 = (rng.randn(H, N2) / 10).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "wa"], ["a"]), helper.make_node("Add", ["a", "ba"], ["ab"]),
             helper.make_node("Gelu", ["ab"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["h"]),
             helper.make_node("Add", ["b2", "h"], ["hb"]), helper.make_node("Gelu", ["hb"], ["y"], approximate="tanh"),
             helper.make_node("MatMul", ["x", "wb"], ["z0"]), helper.make_node("Add", ["z0", "bb"], ["z"])]
    g = helper.make_graph(nodes, "outl", [helper.make_tensor_value_info("x", TP.FLOAT, [1, T, K])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [1, T, N2]),
                           helper.make_tensor_value_info("z", TP.FLOAT, [1, T, N2])],
                          [numpy_helper.from_array(wa, "wa"), numpy_helper.from_array(wb, "wb"),
                           numpy_helper.from_array(w2, "w2"),
                           numpy_helper.from_array((rng.randn(H) * 0.1).astype(np.float32), "ba"),
                           numpy_helper.from_array((rng.randn(N2) * 0.1).astype(np.float32), "b2"),
                           numpy_helper.from_array((rng.randn(N2) * 0.1).astype(np.float32), "bb")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]), path)
    return path


def _x(rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((1, T, K)).astype(np.float32)
    x[..., list(OUTLIERS)] *= 40.0
    return x


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """(the float model, its w8a8 ONNX as qc compile --emit onnx writes it but with the rest Gathers
    unfolded, the compile result)."""
    import qc

    tmp = tmp_path_factory.mktemp("outl")
    src = _model(tmp / "m.onnx")
    rng = np.random.default_rng(3)
    np.savez(tmp / "calib.npz", x=np.stack([_x(rng) for _ in range(8)]))
    with pytest.MonkeyPatch.context() as m:   # the scheme folds the rest Gathers itself: here the C does
        m.setattr(schemes, "folds_outlier_gather", lambda opts, s: False)
        res = qc.compile(str(src), target="cortex-a76", quant=QUANT, calibration=str(tmp / "calib.npz"), holdout=0,
                         emit="onnx")
    res.write(str(tmp / "q.onnx"))
    return src, tmp / "q.onnx", res


def _emit(q_onnx: Path, out: Path, monkeypatch, *, fold: bool, fuse: bool, variant: str | None = None) -> dict:
    """The quantized ONNX through the C preparation and emit_c, with either step turned off."""
    from qc.backends.c import lower

    module = import_onnx(str(q_onnx))
    PassManager.parse(c_prepare_pipeline({}, fold_outliers=fold)).run(module)
    with monkeypatch.context() as m:
        if not fuse:
            m.setattr(lower, "plan_outliers", lambda lw: None)
        return emit_c(module, out, load_target("cortex-a76"), harness=True, variant=variant)


# the three split MatMuls' kernel calls: wa's bias Add + Gelu + smooth-quant's Mul of r, w2's bias Add +
# Gelu tanh, wb's bias Add
FOLDED = {"outlier acc f16 + bias + gelu * scale": 1, "outlier acc f16 + bias + gelu_tanh": 1,
          "outlier acc f16 + bias": 1}


def _outlier_calls(report: dict) -> dict:
    return {k: v for k, v in report["kernels"].items() if k.startswith("outlier acc")}


def _gathers(out: Path) -> int:
    return (out / "model.c").read_text().count("qc_gather")


def test_split_outliers_ran(quantized):
    _, _, res = quantized
    assert "split-outliers{" in res.pipeline
    splits = {s.activation: s.columns for s in res.context.outlier_splits}
    # smooth-quant (w8a8's default --outliers both) runs first: x.smooth = x * s, per column
    assert splits["x.smooth"] == sorted(OUTLIERS) and len(splits["r.smooth"]) == 3, splits


def test_fold_and_kernel_bit_identical_on_the_host(quantized, tmp_path, monkeypatch):
    """Portable kernels on the host: no fold + no kernel, fold only, fold + kernel give the same
    output bytes; the fused C has no Gather left and one qc_outlier_acc_f16 per split MatMul."""
    toolchain.require_tools("host")
    src, q_onnx, res = quantized
    x = _x(np.random.default_rng(11))
    outs, reports = {}, {}
    for name, fold, fuse in (("none", False, False), ("fold", True, False), ("both", True, True)):
        rep = _emit(q_onnx, tmp_path / name, monkeypatch, fold=fold, fuse=fuse, variant="portable")
        outs[name] = [o.tobytes() for o in run_model(build_model(rep, "host"), rep, {"x": x}, "host")]
        reports[name] = rep
    assert outs["fold"] == outs["none"] and outs["both"] == outs["none"]
    splits = sum(len(s.ops) for s in res.context.outlier_splits)
    assert splits == 3 and _outlier_calls(reports["both"]) == FOLDED, reports["both"]["kernels"]
    # the bias Adds and the Gelus ran in the outlier kernel: no pass of their own is left
    for kernel in ("matmul f16", "add f32", "gelu f32", "gelu_tanh f32"):
        assert kernel not in reports["both"]["kernels"], (kernel, reports["both"]["kernels"])
    assert {"add f32", "gelu f32", "gelu_tanh f32"} <= set(reports["fold"]["kernels"]), reports["fold"]["kernels"]
    # x.smooth = x * s stays; r.smooth = r * s ran in wa's outlier call
    assert reports["both"]["kernels"].get("mul f32") == reports["fold"]["kernels"]["mul f32"] - 1 == 1
    assert _gathers(tmp_path / "none") > 0 and _gathers(tmp_path / "both") == 0
    # x and r stay live until their outlier Adds (MiniLM's arena shrinks; here it may grow by them)
    assert reports["both"]["arena_bytes"] <= reports["none"]["arena_bytes"] + 4 * T * (K + H)
    assert reports["both"]["weight_bytes"] <= 1.1 * reports["none"]["weight_bytes"]
    # onnxruntime on the quantized ONNX (its CPU float16 MatMul rounds differently, and a changed
    # level of the second layer's int8 input moves y by one step times a weight)
    refs = ort_session(str(q_onnx)).run(None, {"x": x})
    got = [np.frombuffer(b, np.float32).reshape(r.shape) for b, r in zip(outs["both"], refs)]
    for g, r in zip(got, refs):
        scale = np.abs(r).max()
        assert np.abs(g - r).max() <= 5e-3 * scale and np.abs(g - r).mean() <= 1e-3 * scale


def test_float32_outlier_form_is_one_kernel_call_and_matches_onnxruntime(tmp_path, monkeypatch):
    """--outlier-dtype float32: the chain is Gather + MatMul (float32 rows) + Add, lowered to
    qc_outlier_acc_f32 with the same epilogue folds; the fused C equals the unfused C within float32
    rounding and onnxruntime on the same ONNX within the int8 steps, as the float16 form does."""
    import dataclasses

    import qc

    toolchain.require_tools("host")
    src = _model(tmp_path / "m.onnx")
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "calib.npz", x=np.stack([_x(rng) for _ in range(8)]))
    res = qc.compile(str(src), target="cortex-a76", quant=dataclasses.replace(QUANT, outlier_dtype="float32"),
                     calibration=str(tmp_path / "calib.npz"), holdout=0, emit="onnx")
    assert "dtype=f32" in res.pipeline
    res.write(str(tmp_path / "q32.onnx"))
    q32 = onnx.load(str(tmp_path / "q32.onnx"))
    assert not any(n.op_type == "Cast" for n in q32.graph.node)
    assert {t.data_type for t in q32.graph.initializer if t.name.endswith(".outliers")} == {TP.FLOAT}
    x = _x(np.random.default_rng(11))
    got = {}
    for name, fuse in (("fused", True), ("plain", False)):
        rep = _emit(tmp_path / "q32.onnx", tmp_path / name, monkeypatch, fold=True, fuse=fuse, variant="portable")
        if fuse:
            assert _outlier_calls(rep) == {k.replace("f16", "f32"): v for k, v in FOLDED.items()}, rep["kernels"]
        got[name] = run_model(build_model(rep, "host"), rep, {"x": x}, "host")
    refs = ort_session(str(tmp_path / "q32.onnx")).run(None, {"x": x})
    for f, p, r in zip(got["fused"], got["plain"], refs):
        scale = np.abs(r).max()
        np.testing.assert_allclose(f, p, rtol=1e-5, atol=1e-5 * scale)
        assert np.abs(f - r).max() <= 5e-3 * scale and np.abs(f - r).mean() <= 1e-3 * scale


def test_qc_compile_cortex_a76_under_qemu_matches_unfused(quantized, tmp_path, monkeypatch):
    """qc compile --emit c for cortex-a76 (dotprod, native float16) under qemu: the bytes of the
    unfused C built the same way, and the folded ONNX still matches onnxruntime on the unfolded one."""
    import qc

    toolchain.require_tools("aarch64")
    src, q_onnx, _ = quantized
    qc.compile(str(src), target="cortex-a76", quant=QUANT, calibration=str(q_onnx.parent / "calib.npz"),
               holdout=0, emit="c").write(str(tmp_path / "fused"), harness=True)
    fused = load_report(tmp_path / "fused")
    assert _outlier_calls(fused) == FOLDED and _gathers(tmp_path / "fused") == 0
    plain = _emit(q_onnx, tmp_path / "plain", monkeypatch, fold=False, fuse=False)
    x = _x(np.random.default_rng(12))
    got = {}
    for name, rep in (("fused", fused), ("plain", plain)):
        exe = build_model(rep, "aarch64", "cortex-a76")
        got[name] = run_model(exe, rep, {"x": x}, "aarch64", "cortex-a76", timeout=120)
    assert [g.tobytes() for g in got["fused"]] == [g.tobytes() for g in got["plain"]]
    folded = ort_session(str(tmp_path / "fused" / "model.onnx")).run(None, {"x": x})
    for a, b in zip(folded, ort_session(str(q_onnx)).run(None, {"x": x})):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


# -- the kernel against the route it replaces: qc_cast, qc_matmul_f16, qc_cast, Add ------------------
DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "qc_kernels.h"
#include "qc_ops.h"
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
        int M = word(), N = word(), K = word(), nc = word(), hb = word(), act = word(), hs = word(), m, j;
        float *x = take((size_t)M * K * 4), *yr = take((size_t)M * N * 4);
        int32_t *cols = take((size_t)nc * 4);
        qc_f16 *w = take((size_t)nc * N * 2);
        float *bias = take((size_t)N * 4), *scale = take((size_t)N * 4);
        float *g = malloc((size_t)M * nc * 4 + 4), *o32 = malloc((size_t)M * N * 4 + 4);
        float *ref = malloc((size_t)M * N * 4 + 4), *fused = malloc((size_t)M * N * 4 + 4);
        float *a = malloc((size_t)nc * 16 + 4), *w32 = malloc((size_t)nc * N * 4 + 4);
        uint16_t *g16 = malloc((size_t)M * nc * 2 + 2), *o16 = malloc((size_t)M * N * 2 + 2);
        for (m = 0; m < M; ++m)
            for (j = 0; j < nc; ++j) g[m * nc + j] = x[m * K + cols[j]];
        qc_cast((size_t)M * nc, 1, g, 10, g16);
        qc_matmul_f16(M, N, nc, (const qc_f16 *)g16, w, (qc_f16 *)o16);
        qc_cast((size_t)M * N, 10, o16, 1, o32);
        for (j = 0; j < M * N; ++j) ref[j] = yr[j] + o32[j];
        if (hb)  /* the bias Add: qc_binary's float addition */
            for (j = 0; j < M * N; ++j) ref[j] = ref[j] + bias[j % N];
        if (act)  /* the standalone Gelu over the whole tensor */
            qc_unary_f32(act == QC_OUTL_GELU ? QC_GELU : QC_GELU_TANH, (size_t)M * N, ref, 0.0f, 0.0f, ref);
        if (hs)  /* the smooth-quant Mul after it */
            for (j = 0; j < M * N; ++j) ref[j] = ref[j] * scale[j % N];
        for (j = 0; j < nc * N; ++j) w32[j] = qc_f16_to_f32(w[j]);
        qc_outlier_acc_f16(M, N, nc, x, K, cols, w32, yr, hb ? bias : NULL, act, hs ? scale : NULL, fused, a);
        qc_outlier_acc_f16(M, N, nc, x, K, cols, w32, yr, hb ? bias : NULL, act, hs ? scale : NULL, yr, a);
        /* (the second call in place) */
        fwrite(ref, 4, (size_t)M * N, fout);
        fwrite(fused, 4, (size_t)M * N, fout);
        fwrite(yr, 4, (size_t)M * N, fout);
        free(x); free(yr); free(cols); free(w); free(g); free(o32); free(ref); free(fused); free(a);
        free(g16); free(o16); free(w32); free(bias); free(scale);
    }
    fclose(fout);
    return 0;
}
"""

# (M, N, K, outlier columns, bias, act: 0 none, 1 GELU erf, 2 GELU tanh, scale): N off the 16- and
# 4-wide NEON blocks, M off the 4-row tile, one column, many columns; with and without the epilogue
KSHAPES = [(1, 1, 8, 1, 0, 0, 0), (3, 5, 16, 2, 0, 0, 0), (4, 16, 32, 3, 0, 0, 0), (5, 37, 64, 4, 0, 0, 0),
           (16, 384, 384, 3, 0, 0, 0), (2, 20, 100, 25, 0, 0, 0), (9, 53, 64, 4, 1, 0, 0), (7, 21, 32, 3, 0, 1, 0),
           (6, 39, 48, 5, 1, 1, 0), (5, 22, 16, 2, 1, 2, 0), (12, 96, 128, 6, 1, 1, 0), (1, 19, 8, 1, 1, 2, 0),
           (10, 45, 64, 3, 1, 1, 1), (3, 23, 32, 2, 0, 2, 1), (8, 40, 16, 2, 1, 0, 1)]
KCONFIGS = [("host", None, [None]), ("aarch64", "cortex-a53", ["cortex-a53"]),
            ("aarch64", "cortex-a76", ["cortex-a76", "max"]), ("aarch64", "max", ["max"]),
            ("cortex-m", "cortex-m4", ["cortex-m4"]), ("cortex-m", "cortex-m55", ["cortex-m55"])]


def _kernel_cases() -> tuple[bytes, list[tuple]]:
    rng = np.random.default_rng(5)
    data, shapes = bytearray(struct.pack("<i", len(KSHAPES))), []
    for M, N, K, nc, hb, act, hs in KSHAPES:
        x = (rng.standard_normal((M, K)) * 3).astype(np.float32)
        cols = np.sort(rng.choice(K, nc, replace=False)).astype(np.int32)
        x[:, cols] *= 300.0
        # float16 edges in the outlier columns: ties of the rounding, subnormals, near the top
        edge = np.array([1 + 2 ** -11, 1 + 3 * 2 ** -11, 2 ** -20, -3e-6, 60000.0, -65500.0, 0.0, -0.0],
                        np.float32)
        flat = x[:, cols].reshape(-1)
        flat[:min(edge.size, flat.size)] = edge[:flat.size]
        x[:, cols] = flat.reshape(M, nc)
        w = (rng.standard_normal((nc, N)) * 0.01).astype(np.float16)
        yr = rng.standard_normal((M, N)).astype(np.float32)
        if act:  # GELU's edges in y.rest: the saturated tails, subnormal and signed-zero sums
            yr.reshape(-1)[:6] = np.array([-12.0, 11.0, 3e-39, -3e-39, -0.0, 0.0], np.float32)[:yr.size]
        bias = (rng.standard_normal(N) * 0.5).astype(np.float32)
        scale = np.exp(rng.standard_normal(N)).astype(np.float32)
        data += struct.pack("<7i", M, N, K, nc, hb, act, hs) + x.tobytes() + yr.tobytes() + cols.tobytes() \
            + w.tobytes() + bias.tobytes() + scale.tobytes()
        shapes.append((M, N))
    return bytes(data), shapes


@pytest.mark.parametrize("kind,build_cpu,run_cpus", KCONFIGS, ids=[f"{k}-{c or 'native'}" for k, c, _ in KCONFIGS])
def test_kernel_bit_exact_with_the_unfused_route(kind, build_cpu, run_cpus, tmp_path):
    toolchain.require_tools(kind)
    drv = tmp_path / "outl_driver.c"
    drv.write_text(DRIVER)
    rt = toolchain.RUNTIME
    exe = toolchain.build([drv, rt / "qc_outliers.c", rt / "qc_f16.c", rt / "qc_ops.c"], tmp_path / "drv", kind,
                          build_cpu)
    data, shapes = _kernel_cases()
    (tmp_path / "in").write_bytes(data)
    for cpu in run_cpus:
        proc = toolchain.run(exe, kind, cpu, [str(tmp_path / "in"), str(tmp_path / "out")], timeout=180)
        assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
        raw, off = (tmp_path / "out").read_bytes(), 0
        for M, N in shapes:
            n = M * N * 4
            ref, fused, inplace = (raw[off + i * n:off + (i + 1) * n] for i in range(3))
            off += 3 * n
            assert fused == ref and inplace == ref, (build_cpu, cpu, M, N)
            assert np.all(np.isfinite(np.frombuffer(ref, np.float32)))
        assert off == len(raw)
