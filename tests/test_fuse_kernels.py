"""The fused-op kernels (runtime/qc_attention.c, qc_ops_fused.c: attention, Add + LayerNorm, SiLU * Mul,
Add + RMSNorm)
against a float64 numpy reference, on the host (portable C), under qemu-aarch64 (NEON:
cortex-a53, cortex-a76, max) and on Cortex-M4 (portable) / Cortex-M55 (Helium) under
qemu-system-arm.

One small driver (below) reads kernel calls from a file and writes their outputs. Q and K are
given in the merged-heads layout [B, L, H, d] and read through strides, V in [B, H, L, dv],
the output written merged [B, Lq, H, dv]: the strides the C lowering passes for a BERT head
split. Float paths, so a tolerance: |y - ref| <= ATT_TOL * max|V| (float32 dot products of
length d <= 40, qc_vmath's exp and sums of <= 33 terms), Add + LayerNorm (also written over its
first input) within LN_TOL * max|ref|. The variants do the same fused multiply-adds in the
same order and take exp from qc_vmath.h, so they are bit-identical: every aarch64 (NEON) build
gives the host's portable bytes, the Cortex-M55 Helium build those of the same core's build
without MVE; Cortex-M4 (portable) is checked against the reference.
"""
from __future__ import annotations

import struct

import numpy as np
import pytest

from qc.backends.c import toolchain

ATT_TOL = 1e-6
LN_TOL = 1e-6
SILU_TOL = 1e-6
OP_ATTENTION, OP_ADD_LN, OP_SILU_MUL, OP_ADD_RMS = 1, 3, 4, 5

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "qc_ops.h"

static FILE *fin, *fout;

static int word(int *v) { return fread(v, 4, 1, fin) == 1; }

static int need(void)
{
    int v;
    if (!word(&v)) { fprintf(stderr, "short input\n"); exit(3); }
    return v;
}

static float *floats(int n)
{
    float *p = malloc((size_t)(n ? n : 1) * sizeof(float));
    if (!p || fread(p, sizeof(float), (size_t)n, fin) != (size_t)n) { fprintf(stderr, "short\n"); exit(3); }
    return p;
}

int main(int argc, char **argv)
{
    int op;
    if (argc < 3 || !(fin = fopen(argv[1], "rb")) || !(fout = fopen(argv[2], "wb"))) return 2;
    while (word(&op)) {
        if (op == 1) {
            /* B H Hkv Lq Lk d dv causal has_mask, qs[3] ks[3] vs[3] ms[4] ys[3], nq nk nv nm ny */
            int h[30], i, nw;
            float scale, *q, *k, *v, *m, *y, *work;
            for (i = 0; i < 30; ++i) h[i] = need();
            i = need();
            memcpy(&scale, &i, 4);
            q = floats(h[25]); k = floats(h[26]); v = floats(h[27]); m = floats(h[28]);
            y = malloc((size_t)h[29] * sizeof(float));
            /* the lowering's scratch size (lower_fused.py) */
            nw = h[7] ? 4 * h[4] : (8 + h[5]) * ((h[4] + 7) & ~7) + (h[6] & ~7) * h[4];
            work = malloc((size_t)nw * sizeof(float));
            if (!y || !work) return 5;
            for (i = 0; i < h[29]; ++i) y[i] = 12345.0f;   /* every element must be written */
            qc_attention_f32(h[0], h[1], h[2], h[3], h[4], h[5], h[6], scale, h[7], q, h + 9, k, h + 12,
                             v, h + 15, h[8] ? m : NULL, h + 18, y, h + 22, work);
            fwrite(y, sizeof(float), (size_t)h[29], fout);
            free(q); free(k); free(v); free(m); free(y); free(work);
        } else if (op == 3) {
            int outer = need(), n = need(), e = need(), has_bias = need();
            float eps, *a, *b, *s, *bias, *y;
            memcpy(&eps, &e, 4);
            a = floats(outer * n); b = floats(outer * n); s = floats(n); bias = floats(has_bias ? n : 0);
            y = malloc((size_t)(outer * n) * sizeof(float));
            if (!y) return 5;
            qc_add_layernorm_f32(outer, n, eps, a, b, s, has_bias ? bias : NULL, y);
            fwrite(y, sizeof(float), (size_t)(outer * n), fout);
            qc_add_layernorm_f32(outer, n, eps, a, b, s, has_bias ? bias : NULL, a);  /* in place */
            fwrite(a, sizeof(float), (size_t)(outer * n), fout);
            free(a); free(b); free(s); free(bias); free(y);
        } else if (op == 4) {
            int outer = need(), n = need(), has_c = need();
            float *g, *u, *c, *y;
            g = floats(outer * n); u = floats(outer * n); c = floats(has_c ? n : 0);
            y = malloc((size_t)(outer * n) * sizeof(float));
            if (!y) return 5;
            qc_silu_mul_f32(outer, n, g, u, has_c ? c : NULL, y);
            fwrite(y, sizeof(float), (size_t)(outer * n), fout);
            free(g); free(u); free(c); free(y);
        } else if (op == 5) {
            int outer = need(), n = need(), e = need();
            float eps, *a, *b, *sc, *s, *y;
            memcpy(&eps, &e, 4);
            a = floats(outer * n); b = floats(outer * n); sc = floats(n);
            s = malloc((size_t)(outer * n) * sizeof(float));
            y = malloc((size_t)(outer * n) * sizeof(float));
            if (!s || !y) return 5;
            qc_add_rmsnorm_f32(outer, n, eps, a, b, sc, s, y);
            fwrite(y, sizeof(float), (size_t)(outer * n), fout);
            fwrite(s, sizeof(float), (size_t)(outer * n), fout);
            qc_rmsnorm_f32(outer, n, eps, s, sc, y);              /* unfused: the same bits */
            fwrite(y, sizeof(float), (size_t)(outer * n), fout);
            qc_add_rmsnorm_f32(outer, n, eps, a, b, sc, a, y);   /* the sum over a */
            fwrite(y, sizeof(float), (size_t)(outer * n), fout);
            free(a); free(b); free(sc); free(s); free(y);
        } else {
            return 4;
        }
    }
    fclose(fout);
    printf("done\n");
    return 0;
}
"""

# (kind, cpu the driver is compiled for, qemu cpus it runs on)
CONFIGS = [
    ("host", None, [None]),
    ("aarch64", "cortex-a53", ["cortex-a53", "cortex-a76", "max"]),
    ("aarch64", "cortex-a76", ["cortex-a76", "max"]),
    ("cortex-m", "cortex-m4", ["cortex-m4"]),
    ("cortex-m", "cortex-m55", ["cortex-m55"]),
]
# the portable build each SIMD build must match bit for bit: (kind, cpu, extra flags)
PORTABLE = {"aarch64": ("host", None, ()), "cortex-m55": ("cortex-m", "cortex-m55", ("-mcpu=cortex-m55+nomve",))}

# (B, H, Hkv, Lq, Lk, d, dv, causal, mask shape or None)
ATT_CASES = [
    (1, 2, 2, 7, 7, 32, 32, 0, (1, 1, 1, 7)),     # BERT: key-padding mask over [B, 1, 1, Lk]
    (1, 3, 3, 9, 10, 32, 64, 1, (1, 3, 9, 10)),   # d 32 (the query row in registers), dv 64, causal
    (2, 4, 2, 5, 9, 16, 16, 0, (5, 9)),           # grouped-query heads, a [Lq, Lk] mask
    (1, 3, 1, 6, 6, 8, 8, 1, None),               # causal, one K/V head
    (1, 2, 2, 4, 3, 5, 7, 0, (1, 2, 4, 3)),       # d, dv off the vector width
    (1, 1, 1, 3, 33, 12, 12, 0, (1, 1, 3, 33)),   # dv = 8 + 4, Lk off 4
    (1, 2, 1, 9, 13, 32, 40, 0, (1, 1, 9, 13)),   # 4 query rows at a time (+ 1), Lk and dv off 4 / 16
    (1, 1, 1, 8, 8, 12, 36, 0, None),             # d = 12 in the 4-row scores, dv = 32 + 4
    (1, 2, 1, 2, 1, 40, 24, 1, None),             # one key
    (1, 3, 1, 10, 10, 16, 20, 1, None),           # causal, dv off 16
    (1, 2, 2, 9, 9, 8, 16, 1, (1, 2, 9, 9)),      # causal and a mask
    (1, 3, 1, 32, 32, 40, 64, 1, None),           # SmolLM2-like GQA heads at 32 tokens, causal
    (1, 3, 1, 32, 32, 40, 64, "mask", None),      # the same as a constant causal mask (float32 min)
    (1, 2, 2, 16, 16, 32, 32, 0, (1, 1, 1, 16)),  # MiniLM at 1x16: 8-row tiles, one mask row for all rows
    (1, 1, 1, 11, 9, 6, 8, 0, (11, 9)),           # 8 rows (+ 3) with d off 4, Lk off 8
    (1, 1, 1, 8, 5, 16, 12, 0, (1, 1, 1, 5)),     # 8 rows, all keys past the 8-key tiles, dv = 8 + 4
]
# a case whose causal flag is "mask" runs the previous case's data with causal = 0 and the mask a
# causal model builds (0 on and below the diagonal, float32's min above), which the C lowering
# gives to the causal path instead (lower_fused._is_causal_mask): both within ATT_TOL of the
# reference (not the same bits: the non-causal path's exp clamps at -86, its tiles sum in 8s)


def _attention_ref(q, k, v, mask, scale, causal):
    """float64 softmax(scale * q k^T + mask) v over [B, H, L, d] (K/V heads repeated)."""
    H, Hkv = q.shape[1], k.shape[1]
    k = np.repeat(k, H // Hkv, axis=1).astype(np.float64)
    v = np.repeat(v, H // Hkv, axis=1).astype(np.float64)
    s = scale * (q.astype(np.float64) @ np.swapaxes(k, -1, -2))
    if mask is not None:
        s = s + mask
    if causal:
        lq, lk = s.shape[-2:]
        s = np.where(np.tril(np.ones((lq, lk), bool)), s, -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    return (s / s.sum(-1, keepdims=True)) @ v


def _bstrides(shape, out):
    st = [int(np.prod(shape[i + 1:])) for i in range(len(shape))]
    pad = len(out) - len(shape)
    return [0 if i < pad or shape[i - pad] == 1 and out[i] != 1 else st[i - pad] for i in range(len(out))]


def _stream(rng):
    data = bytearray()
    checks = []
    last = None
    for B, H, Hkv, Lq, Lk, d, dv, causal, mshape in ATT_CASES:
        as_mask = causal == "mask"
        if as_mask:   # the previous case's data, the causal pattern as a mask
            q, k, v = last
            causal, mshape = 0, (Lq, Lk)
        else:
            q = rng.standard_normal((B, H, Lq, d)).astype(np.float32)
            k = rng.standard_normal((B, Hkv, Lk, d)).astype(np.float32)
            v = rng.standard_normal((B, Hkv, Lk, dv)).astype(np.float32)
        last = (q, k, v)
        mask = None
        if as_mask:
            mask = np.where(np.tril(np.ones((Lq, Lk), bool)), 0.0, np.finfo(np.float32).min).astype(np.float32)
        elif mshape is not None:
            mask = np.where(rng.random(mshape) < 0.25, -10000.0, rng.standard_normal(mshape)).astype(np.float32)
            mask[..., 0] = 0.0   # no row fully masked: float32 cannot resolve scores near -10000
        scale = np.float32(1.0 / np.sqrt(d))
        qm = np.ascontiguousarray(q.transpose(0, 2, 1, 3))   # [B, Lq, H, d]
        km = np.ascontiguousarray(k.transpose(0, 2, 1, 3))   # [B, Lk, Hkv, d]
        qs, ks, vs = [Lq * H * d, d, H * d], [Lk * Hkv * d, d, Hkv * d], [Hkv * Lk * dv, Lk * dv, dv]
        ys = [Lq * H * dv, dv, H * dv]
        ms = _bstrides(mshape, (B, H, Lq, Lk)) if mask is not None else [0, 0, 0, 0]
        marr = mask if mask is not None else np.zeros(0, np.float32)
        ny = B * Lq * H * dv
        hdr = [B, H, Hkv, Lq, Lk, d, dv, causal, int(mask is not None), *qs, *ks, *vs, *ms, *ys,
               qm.size, km.size, v.size, marr.size, ny]
        data += struct.pack(f"<{1 + len(hdr)}i", OP_ATTENTION, *hdr) + struct.pack("<f", scale)
        for a in (qm, km, v, marr):
            data += np.ascontiguousarray(a, np.float32).tobytes()
        ref = _attention_ref(q, k, v, None if as_mask else mask, float(scale), causal or as_mask)
        ref = ref.transpose(0, 2, 1, 3)   # [B, Lq, H, dv]
        what = f"attention {B, H, Hkv, Lq, Lk, d, dv, causal}" + (" causal mask" if as_mask else "")
        checks.append((ny, ref, ATT_TOL * float(np.abs(v).max()), what, None))
    for outer, n, with_bias in ((3, 384, True), (2, 13, True), (1, 6, False)):
        a = (rng.standard_normal((outer, n)) * 2 + 1).astype(np.float32)
        b = rng.standard_normal((outer, n)).astype(np.float32)
        s = rng.standard_normal(n).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        eps = np.float32(1e-12)
        data += struct.pack("<5i", OP_ADD_LN, outer, n, struct.unpack("<i", struct.pack("<f", eps))[0],
                            int(with_bias))
        data += a.tobytes() + b.tobytes() + s.tobytes() + (bias.tobytes() if with_bias else b"")
        x64 = a.astype(np.float64) + b
        x64 = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + float(eps))
        ref = x64 * s + (bias if with_bias else 0.0)
        for where in ("", " in place"):
            checks.append((outer * n, ref, LN_TOL * float(np.abs(ref).max()), f"add+layernorm {outer}x{n}{where}",
                           None))
    for outer, n, with_c in ((3, 1536, True), (2, 13, True), (1, 6, False)):
        g = (rng.standard_normal((outer, n)) * 4).astype(np.float32)
        g.flat[:3] = (-120.0, 95.0, 0.0)   # exp's clamps
        u = rng.standard_normal((outer, n)).astype(np.float32)
        c = rng.uniform(0.25, 4.0, n).astype(np.float32)
        data += struct.pack("<4i", OP_SILU_MUL, outer, n, int(with_c))
        data += g.tobytes() + u.tobytes() + (c.tobytes() if with_c else b"")
        g64 = g.astype(np.float64)
        ref = g64 / (1.0 + np.exp(-g64)) * u * (c if with_c else 1.0)
        checks.append((outer * n, ref, SILU_TOL * float(np.abs(ref).max()), f"silu*mul {outer}x{n}", None))
    for outer, n in ((3, 576), (2, 13), (1, 3)):
        a = (rng.standard_normal((outer, n)) * 2 + 1).astype(np.float32)
        b = rng.standard_normal((outer, n)).astype(np.float32)
        sc = rng.standard_normal(n).astype(np.float32)
        eps = np.float32(1e-5)
        data += struct.pack("<4i", OP_ADD_RMS, outer, n, struct.unpack("<i", struct.pack("<f", eps))[0])
        data += a.tobytes() + b.tobytes() + sc.tobytes()
        s64 = a.astype(np.float64) + b
        ref = s64 / np.sqrt((s64 * s64).mean(-1, keepdims=True) + float(eps)) * sc
        checks.append((outer * n, ref, LN_TOL * float(np.abs(ref).max()), f"add+rmsnorm {outer}x{n}", None))
        checks.append((outer * n, (a + b).astype(np.float64), 0.0, f"add+rmsnorm {outer}x{n}: the sum", None))
        checks.append((outer * n, ref, LN_TOL * float(np.abs(ref).max()), f"add+rmsnorm {outer}x{n}: unfused",
                       len(checks) - 2))
        checks.append((outer * n, ref, LN_TOL * float(np.abs(ref).max()), f"add+rmsnorm {outer}x{n} over a",
                       len(checks) - 3))
    return bytes(data), checks


def _run(kind: str, build_cpu: str | None, cpu: str | None, tmp_path, extra=()) -> bytes:
    src = tmp_path / "fused_driver.c"
    src.write_text(DRIVER)
    sources = [src, toolchain.RUNTIME / "qc_attention.c", toolchain.RUNTIME / "qc_ops_fused.c",
               toolchain.RUNTIME / "qc_ops_nn.c"]
    exe = toolchain.build(sources, tmp_path / f"ref-{kind}-{build_cpu}", kind, build_cpu, extra_flags=extra)
    data, _ = _stream(np.random.default_rng(3))
    inp, out = tmp_path / f"{cpu}.in", tmp_path / f"{cpu}.out"
    inp.write_bytes(data)
    proc = toolchain.run(exe, kind, cpu, [str(inp), str(out)], timeout=120)
    assert proc.returncode == 0 and "done" in proc.stdout, f"{cpu}: exit {proc.returncode}\n{proc.stderr}"
    return out.read_bytes()


def _portable(kind: str, build_cpu: str | None, tmp_path) -> bytes | None:
    """The bytes of the portable build a SIMD build must reproduce (None: no bit check)."""
    ref = PORTABLE.get(kind) or PORTABLE.get(build_cpu or "")
    if ref is None:
        return None
    toolchain.require_tools(ref[0])
    return _run(ref[0], ref[1], ref[1], tmp_path, ref[2])


@pytest.mark.parametrize("kind,build_cpu,run_cpus", CONFIGS, ids=[f"{k}-{c or 'native'}" for k, c, _ in CONFIGS])
def test_fused_kernels_match_reference(kind, build_cpu, run_cpus, tmp_path):
    toolchain.require_tools(kind)
    src = tmp_path / "fused_driver.c"
    src.write_text(DRIVER)
    sources = [src, toolchain.RUNTIME / "qc_attention.c", toolchain.RUNTIME / "qc_ops_fused.c",
               toolchain.RUNTIME / "qc_ops_nn.c"]
    exe = toolchain.build(sources, tmp_path / f"driver-{kind}-{build_cpu}", kind, build_cpu)
    data, checks = _stream(np.random.default_rng(3))
    portable = _portable(kind, build_cpu, tmp_path)
    for cpu in run_cpus:
        inp, out = tmp_path / f"{cpu}.in", tmp_path / f"{cpu}.out"
        inp.write_bytes(data)
        proc = toolchain.run(exe, kind, cpu, [str(inp), str(out)], timeout=120)
        assert proc.returncode == 0 and "done" in proc.stdout, f"{cpu}: exit {proc.returncode}\n{proc.stderr}"
        got = np.frombuffer(out.read_bytes(), np.float32)
        pos = 0
        starts = []
        for n, ref, tol, what, same_as in checks:
            y = got[pos:pos + n].reshape(ref.shape)
            starts.append(pos)
            pos += n
            err = float(np.abs(y - ref).max())
            assert err <= tol, f"{what} on {kind} {cpu}: max error {err:.3g} > {tol:.3g}"
            if same_as is not None:
                a = starts[same_as]
                assert got[a:a + n].tobytes() == y.tobytes(), f"{what} on {kind} {cpu}: not the bits of check {same_as}"
        assert pos == got.size
        assert portable is None or out.read_bytes() == portable, \
            f"{kind} {build_cpu} on {cpu}: not bit-identical to the portable build"
