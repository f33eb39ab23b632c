/* qc C backend: float32 GEMM for MatMul, Gemm and Conv (declarations and contract in qc_ops.h,
 * layout and tolerance in docs/c-kernels.md).
 *
 * Y is computed in register tiles of 4 rows x 16 columns. B is read as panels of 16 columns:
 * either packed (qc_sgemm_pack_b / backends/c/packing_f32.py: panel p = K rows of w floats at
 * B + 16*p*K, w = 16, or the last panel's width rounded up to 4, zero padded) or, when its rows
 * are contiguous and N % 4 == 0, straight from the row-major matrix. A is read in place (row
 * stride lda, k contiguous). Variants by compiler macro: aarch64 NEON (FMLA by element, 16
 * accumulators), Cortex-M Helium float (VFMA by scalar), scalar otherwise (4x4 blocks, fmaf).
 * All variants give the same bits (see QC_FMA). */
#include "qc_ops.h"

#include <string.h>

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define QC_SGEMM_NEON 1
#elif defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 2)
#include <arm_mve.h>
#define QC_SGEMM_MVE 1
#endif

#include <math.h>

/* Every variant computes each output as the same chain of fused multiply-adds in k order
 * (fmaf here, FMLA / VFMA there), so all of them give the same bits whatever the compiler's
 * FP contraction; fmaf is one instruction where the FPU has FMA (Cortex-M4F, M55, aarch64). */
#define QC_FMA(a, b, c) fmaf((a), (b), (c))

#define QC_NR 16 /* panel width */
#define QC_MR 4  /* rows per tile */

static int qc_min(int a, int b) { return a < b ? a : b; }

/* width of the panel starting at column j0 as stored (a multiple of 4) */
static int qc_panel_width(int N, int j0)
{
    const int left = N - j0;
    return left >= QC_NR ? QC_NR : (left + 3) & ~3;
}

size_t qc_sgemm_packed_size(int K, int N)
{
    return (size_t)K * (size_t)((N + 3) & ~3);
}

void qc_sgemm_pack_b(int K, int N, const float *B, int brs, int bcs, float *Bp)
{
    int j0, k, j;
    for (j0 = 0; j0 < N; j0 += QC_NR) {
        const int w = qc_panel_width(N, j0), n = qc_min(QC_NR, N - j0);
        float *dst = Bp + (size_t)j0 * (size_t)K;
        for (k = 0; k < K; ++k) {
            const float *src = B + (ptrdiff_t)k * brs + (ptrdiff_t)j0 * bcs;
            for (j = 0; j < n; ++j) dst[j] = src[(ptrdiff_t)j * bcs];
            for (; j < w; ++j) dst[j] = 0.0f;
            dst += w;
        }
    }
}

/* One tile's result: t (mr x 16, row stride 16) -> Y rows: t + bias[n] (alpha 1), else
 * fmaf(alpha, t, bias[n] or 0): one rounding either way. */
static void qc_sgemm_store(int mr, int nc, const float *t, float alpha, const float *bias, float *y, int ldy)
{
    int i, j;
    for (i = 0; i < mr; ++i) {
        for (j = 0; j < nc; ++j) {
            const float v = t[i * QC_NR + j], b = bias ? bias[j] : 0.0f;
            y[(ptrdiff_t)i * ldy + j] = alpha == 1.0f ? (bias ? v + b : v) : QC_FMA(alpha, v, b);
        }
    }
}

#if defined(QC_SGEMM_NEON)
/* Y[0..mr)[0..nc) of the 4 x 16 tile: a (rows at lda), b (16 floats per k at stride bks). */
static void qc_sgemm_tile(int mr, int nc, int K, const float *a, int lda, const float *b, int bks, float alpha,
                          const float *bias, float *y, int ldy)
{
    const float *a0 = a, *a1 = a + (mr > 1 ? lda : 0), *a2 = a + (mr > 2 ? 2 * lda : 0),
                *a3 = a + (mr > 3 ? 3 * lda : 0);
    float32x4_t c00 = vdupq_n_f32(0.0f), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00,
                c13 = c00, c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00, c33 = c00;
    float32x4_t b0, b1, b2, b3;
    int k = 0;
#define QC_SGEMM_STEP(L)                                                                              \
    b0 = vld1q_f32(b); b1 = vld1q_f32(b + 4); b2 = vld1q_f32(b + 8); b3 = vld1q_f32(b + 12); b += bks; \
    c00 = vfmaq_laneq_f32(c00, b0, x0, L); c01 = vfmaq_laneq_f32(c01, b1, x0, L);                     \
    c02 = vfmaq_laneq_f32(c02, b2, x0, L); c03 = vfmaq_laneq_f32(c03, b3, x0, L);                     \
    c10 = vfmaq_laneq_f32(c10, b0, x1, L); c11 = vfmaq_laneq_f32(c11, b1, x1, L);                     \
    c12 = vfmaq_laneq_f32(c12, b2, x1, L); c13 = vfmaq_laneq_f32(c13, b3, x1, L);                     \
    c20 = vfmaq_laneq_f32(c20, b0, x2, L); c21 = vfmaq_laneq_f32(c21, b1, x2, L);                     \
    c22 = vfmaq_laneq_f32(c22, b2, x2, L); c23 = vfmaq_laneq_f32(c23, b3, x2, L);                     \
    c30 = vfmaq_laneq_f32(c30, b0, x3, L); c31 = vfmaq_laneq_f32(c31, b1, x3, L);                     \
    c32 = vfmaq_laneq_f32(c32, b2, x3, L); c33 = vfmaq_laneq_f32(c33, b3, x3, L);
    for (; k + 4 <= K; k += 4) {
        const float32x4_t x0 = vld1q_f32(a0 + k), x1 = vld1q_f32(a1 + k), x2 = vld1q_f32(a2 + k),
                          x3 = vld1q_f32(a3 + k);
        QC_SGEMM_STEP(0)
        QC_SGEMM_STEP(1)
        QC_SGEMM_STEP(2)
        QC_SGEMM_STEP(3)
    }
    for (; k < K; ++k) {
        const float32x4_t x0 = vdupq_n_f32(a0[k]), x1 = vdupq_n_f32(a1[k]), x2 = vdupq_n_f32(a2[k]),
                          x3 = vdupq_n_f32(a3[k]);
        QC_SGEMM_STEP(0)
    }
#undef QC_SGEMM_STEP
    if (mr == QC_MR && nc == QC_NR) {
        float *y0 = y, *y1 = y + ldy, *y2 = y1 + ldy, *y3 = y2 + ldy;
        if (alpha != 1.0f) { /* fmaf(alpha, c, bias or 0), as qc_sgemm_store */
            const float32x4_t z = vdupq_n_f32(0.0f);
            b0 = bias ? vld1q_f32(bias) : z; b1 = bias ? vld1q_f32(bias + 4) : z;
            b2 = bias ? vld1q_f32(bias + 8) : z; b3 = bias ? vld1q_f32(bias + 12) : z;
            c00 = vfmaq_n_f32(b0, c00, alpha); c01 = vfmaq_n_f32(b1, c01, alpha); c02 = vfmaq_n_f32(b2, c02, alpha);
            c03 = vfmaq_n_f32(b3, c03, alpha); c10 = vfmaq_n_f32(b0, c10, alpha); c11 = vfmaq_n_f32(b1, c11, alpha);
            c12 = vfmaq_n_f32(b2, c12, alpha); c13 = vfmaq_n_f32(b3, c13, alpha); c20 = vfmaq_n_f32(b0, c20, alpha);
            c21 = vfmaq_n_f32(b1, c21, alpha); c22 = vfmaq_n_f32(b2, c22, alpha); c23 = vfmaq_n_f32(b3, c23, alpha);
            c30 = vfmaq_n_f32(b0, c30, alpha); c31 = vfmaq_n_f32(b1, c31, alpha); c32 = vfmaq_n_f32(b2, c32, alpha);
            c33 = vfmaq_n_f32(b3, c33, alpha);
        } else if (bias) {
            b0 = vld1q_f32(bias); b1 = vld1q_f32(bias + 4); b2 = vld1q_f32(bias + 8); b3 = vld1q_f32(bias + 12);
            c00 = vaddq_f32(c00, b0); c01 = vaddq_f32(c01, b1); c02 = vaddq_f32(c02, b2); c03 = vaddq_f32(c03, b3);
            c10 = vaddq_f32(c10, b0); c11 = vaddq_f32(c11, b1); c12 = vaddq_f32(c12, b2); c13 = vaddq_f32(c13, b3);
            c20 = vaddq_f32(c20, b0); c21 = vaddq_f32(c21, b1); c22 = vaddq_f32(c22, b2); c23 = vaddq_f32(c23, b3);
            c30 = vaddq_f32(c30, b0); c31 = vaddq_f32(c31, b1); c32 = vaddq_f32(c32, b2); c33 = vaddq_f32(c33, b3);
        }
        vst1q_f32(y0, c00); vst1q_f32(y0 + 4, c01); vst1q_f32(y0 + 8, c02); vst1q_f32(y0 + 12, c03);
        vst1q_f32(y1, c10); vst1q_f32(y1 + 4, c11); vst1q_f32(y1 + 8, c12); vst1q_f32(y1 + 12, c13);
        vst1q_f32(y2, c20); vst1q_f32(y2 + 4, c21); vst1q_f32(y2 + 8, c22); vst1q_f32(y2 + 12, c23);
        vst1q_f32(y3, c30); vst1q_f32(y3 + 4, c31); vst1q_f32(y3 + 8, c32); vst1q_f32(y3 + 12, c33);
    } else {
        float t[QC_MR * QC_NR];
        vst1q_f32(t, c00); vst1q_f32(t + 4, c01); vst1q_f32(t + 8, c02); vst1q_f32(t + 12, c03);
        vst1q_f32(t + 16, c10); vst1q_f32(t + 20, c11); vst1q_f32(t + 24, c12); vst1q_f32(t + 28, c13);
        vst1q_f32(t + 32, c20); vst1q_f32(t + 36, c21); vst1q_f32(t + 40, c22); vst1q_f32(t + 44, c23);
        vst1q_f32(t + 48, c30); vst1q_f32(t + 52, c31); vst1q_f32(t + 56, c32); vst1q_f32(t + 60, c33);
        qc_sgemm_store(mr, nc, t, alpha, bias, y, ldy);
    }
}

/* the same for a strip of 4 columns (the last panel when it is 4, 8 or 12 wide) */
static void qc_sgemm_strip(int mr, int nc, int K, const float *a, int lda, const float *b, int bks, float alpha,
                           const float *bias, float *y, int ldy)
{
    const float *a0 = a, *a1 = a + (mr > 1 ? lda : 0), *a2 = a + (mr > 2 ? 2 * lda : 0),
                *a3 = a + (mr > 3 ? 3 * lda : 0);
    float32x4_t c0 = vdupq_n_f32(0.0f), c1 = c0, c2 = c0, c3 = c0, b0;
    float t[QC_MR * QC_NR];
    int k = 0;
    for (; k + 4 <= K; k += 4) {
        const float32x4_t x0 = vld1q_f32(a0 + k), x1 = vld1q_f32(a1 + k), x2 = vld1q_f32(a2 + k),
                          x3 = vld1q_f32(a3 + k);
        b0 = vld1q_f32(b); b += bks;
        c0 = vfmaq_laneq_f32(c0, b0, x0, 0); c1 = vfmaq_laneq_f32(c1, b0, x1, 0);
        c2 = vfmaq_laneq_f32(c2, b0, x2, 0); c3 = vfmaq_laneq_f32(c3, b0, x3, 0);
        b0 = vld1q_f32(b); b += bks;
        c0 = vfmaq_laneq_f32(c0, b0, x0, 1); c1 = vfmaq_laneq_f32(c1, b0, x1, 1);
        c2 = vfmaq_laneq_f32(c2, b0, x2, 1); c3 = vfmaq_laneq_f32(c3, b0, x3, 1);
        b0 = vld1q_f32(b); b += bks;
        c0 = vfmaq_laneq_f32(c0, b0, x0, 2); c1 = vfmaq_laneq_f32(c1, b0, x1, 2);
        c2 = vfmaq_laneq_f32(c2, b0, x2, 2); c3 = vfmaq_laneq_f32(c3, b0, x3, 2);
        b0 = vld1q_f32(b); b += bks;
        c0 = vfmaq_laneq_f32(c0, b0, x0, 3); c1 = vfmaq_laneq_f32(c1, b0, x1, 3);
        c2 = vfmaq_laneq_f32(c2, b0, x2, 3); c3 = vfmaq_laneq_f32(c3, b0, x3, 3);
    }
    for (; k < K; ++k) {
        b0 = vld1q_f32(b); b += bks;
        c0 = vfmaq_n_f32(c0, b0, a0[k]); c1 = vfmaq_n_f32(c1, b0, a1[k]);
        c2 = vfmaq_n_f32(c2, b0, a2[k]); c3 = vfmaq_n_f32(c3, b0, a3[k]);
    }
    vst1q_f32(t, c0); vst1q_f32(t + QC_NR, c1); vst1q_f32(t + 2 * QC_NR, c2); vst1q_f32(t + 3 * QC_NR, c3);
    qc_sgemm_store(mr, nc, t, alpha, bias, y, ldy);
}

#elif defined(QC_SGEMM_MVE)
/* Helium has 8 vector registers: 2 rows x 8 columns per pass, twice per 4 x 16 tile. */
static void qc_sgemm_tile(int mr, int nc, int K, const float *a, int lda, const float *b, int bks, float alpha,
                          const float *bias, float *y, int ldy)
{
    float t[QC_MR * QC_NR];
    int r, h, k;
    for (r = 0; r < mr; r += 2) {
        const float *a0 = a + (ptrdiff_t)r * lda, *a1 = r + 1 < mr ? a0 + lda : a0;
        for (h = 0; h < QC_NR && h < nc; h += 8) {
            const float *bp = b + h;
            float32x4_t c00 = vdupq_n_f32(0.0f), c01 = c00, c10 = c00, c11 = c00;
            for (k = 0; k < K; ++k) {
                const float32x4_t b0 = vld1q_f32(bp), b1 = vld1q_f32(bp + 4);
                const float x0 = a0[k], x1 = a1[k];
                bp += bks;
                c00 = vfmaq_n_f32(c00, b0, x0);
                c01 = vfmaq_n_f32(c01, b1, x0);
                c10 = vfmaq_n_f32(c10, b0, x1);
                c11 = vfmaq_n_f32(c11, b1, x1);
            }
            vst1q_f32(t + r * QC_NR + h, c00);
            vst1q_f32(t + r * QC_NR + h + 4, c01);
            if (r + 1 < QC_MR) {
                vst1q_f32(t + (r + 1) * QC_NR + h, c10);
                vst1q_f32(t + (r + 1) * QC_NR + h + 4, c11);
            }
        }
    }
    qc_sgemm_store(mr, nc, t, alpha, bias, y, ldy);
}

static void qc_sgemm_strip(int mr, int nc, int K, const float *a, int lda, const float *b, int bks, float alpha,
                           const float *bias, float *y, int ldy)
{
    float t[QC_MR * QC_NR];
    int r, k;
    for (r = 0; r < mr; ++r) {
        const float *ar = a + (ptrdiff_t)r * lda;
        const float *bp = b;
        float32x4_t c0 = vdupq_n_f32(0.0f);
        for (k = 0; k < K; ++k) {
            c0 = vfmaq_n_f32(c0, vld1q_f32(bp), ar[k]);
            bp += bks;
        }
        vst1q_f32(t + r * QC_NR, c0);
    }
    qc_sgemm_store(mr, nc, t, alpha, bias, y, ldy);
}

#else
/* scalar: a 4 x 4 block of accumulators, k in order, one (fused where available) multiply-add */
static void qc_sgemm_strip(int mr, int nc, int K, const float *a, int lda, const float *b, int bks, float alpha,
                           const float *bias, float *y, int ldy)
{
    const float *a0 = a, *a1 = a + (mr > 1 ? lda : 0), *a2 = a + (mr > 2 ? 2 * lda : 0),
                *a3 = a + (mr > 3 ? 3 * lda : 0);
    float c00 = 0.0f, c01 = 0.0f, c02 = 0.0f, c03 = 0.0f, c10 = 0.0f, c11 = 0.0f, c12 = 0.0f, c13 = 0.0f,
          c20 = 0.0f, c21 = 0.0f, c22 = 0.0f, c23 = 0.0f, c30 = 0.0f, c31 = 0.0f, c32 = 0.0f, c33 = 0.0f;
    float t[QC_MR * QC_NR];
    int k;
    for (k = 0; k < K; ++k) {
        const float b0 = b[0], b1 = b[1], b2 = b[2], b3 = b[3];
        const float x0 = a0[k], x1 = a1[k], x2 = a2[k], x3 = a3[k];
        b += bks;
        c00 = QC_FMA(x0, b0, c00); c01 = QC_FMA(x0, b1, c01); c02 = QC_FMA(x0, b2, c02); c03 = QC_FMA(x0, b3, c03);
        c10 = QC_FMA(x1, b0, c10); c11 = QC_FMA(x1, b1, c11); c12 = QC_FMA(x1, b2, c12); c13 = QC_FMA(x1, b3, c13);
        c20 = QC_FMA(x2, b0, c20); c21 = QC_FMA(x2, b1, c21); c22 = QC_FMA(x2, b2, c22); c23 = QC_FMA(x2, b3, c23);
        c30 = QC_FMA(x3, b0, c30); c31 = QC_FMA(x3, b1, c31); c32 = QC_FMA(x3, b2, c32); c33 = QC_FMA(x3, b3, c33);
    }
    t[0] = c00; t[1] = c01; t[2] = c02; t[3] = c03;
    t[QC_NR] = c10; t[QC_NR + 1] = c11; t[QC_NR + 2] = c12; t[QC_NR + 3] = c13;
    t[2 * QC_NR] = c20; t[2 * QC_NR + 1] = c21; t[2 * QC_NR + 2] = c22; t[2 * QC_NR + 3] = c23;
    t[3 * QC_NR] = c30; t[3 * QC_NR + 1] = c31; t[3 * QC_NR + 2] = c32; t[3 * QC_NR + 3] = c33;
    qc_sgemm_store(mr, nc, t, alpha, bias, y, ldy);
}

static void qc_sgemm_tile(int mr, int nc, int K, const float *a, int lda, const float *b, int bks, float alpha,
                          const float *bias, float *y, int ldy)
{
    int s;
    for (s = 0; s < nc; s += 4)
        qc_sgemm_strip(mr, qc_min(4, nc - s), K, a, lda, b + s, bks, alpha, bias ? bias + s : NULL, y + s, ldy);
}
#endif

/* Y (rows at ldy) = alpha * A B (+ bias[n]); B is packed when ldb == 0, else row-major with row
 * stride ldb and N % 4 == 0 */
static void qc_sgemm_core(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float alpha,
                          const float *bias, float *Y, int ldy)
{
    int j0, m0, s;
    for (j0 = 0; j0 < N; j0 += QC_NR) {
        const int w = qc_panel_width(N, j0), nc = qc_min(QC_NR, N - j0);
        const float *panel = ldb ? B + j0 : B + (size_t)j0 * (size_t)K;
        const int bks = ldb ? ldb : w;
        const float *bj = bias ? bias + j0 : NULL;
        for (m0 = 0; m0 < M; m0 += QC_MR) {
            const int mr = qc_min(QC_MR, M - m0);
            const float *a = A + (ptrdiff_t)m0 * lda;
            float *y = Y + (ptrdiff_t)m0 * ldy + j0;
            if (w == QC_NR) {
                qc_sgemm_tile(mr, nc, K, a, lda, panel, bks, alpha, bj, y, ldy);
            } else {
                for (s = 0; s < nc; s += 4)
                    qc_sgemm_strip(mr, qc_min(4, nc - s), K, a, lda, panel + s, bks, alpha, bj ? bj + s : NULL,
                                   y + s, ldy);
            }
        }
    }
}

void qc_sgemm(int M, int N, int K, const float *A, int lda, const float *B, int brs, int bcs, float alpha,
              const float *C, int crs, int ccs, float beta, const float *bias, float *Y, int ldy, float *work)
{
    int m, n;
    if (M <= 0 || N <= 0) return;
    if (brs == 0 && bcs == 0) {
        qc_sgemm_core(M, N, K, A, lda, B, 0, alpha, bias, Y, ldy);
    } else if (bcs == 1 && N % 4 == 0) {
        qc_sgemm_core(M, N, K, A, lda, B, brs, alpha, bias, Y, ldy);
    } else {
        qc_sgemm_pack_b(K, N, B, brs, bcs, work);
        qc_sgemm_core(M, N, K, A, lda, work, 0, alpha, bias, Y, ldy);
    }
    if (C == NULL) return;
    for (m = 0; m < M; ++m) {
        float *y = Y + (ptrdiff_t)m * ldy;
        const float *c = C + (ptrdiff_t)m * crs;
        for (n = 0; n < N; ++n) y[n] = QC_FMA(beta, c[(ptrdiff_t)n * ccs], y[n]);
    }
}

void qc_sgemm_batch(int batch, const int *aoff, const int *boff, const int *yoff, int M, int N, int K,
                    const float *A, int lda, const float *B, int brs, int bcs, float alpha, const float *bias,
                    float *Y, int ldy, float *work)
{
    int b;
    for (b = 0; b < batch; ++b)
        qc_sgemm(M, N, K, A + aoff[b], lda, B + boff[b], brs, bcs, alpha, NULL, 0, 0, 0.0f, bias, Y + yoff[b], ldy,
                 work);
}

/* the K x np block of im2col columns for output pixels q0 .. q0+np-1 of one group (cg input
 * channels at x), written as packed panels (the layout of qc_sgemm_pack_b) */
static void qc_im2col_pack_f32(int cg, int H, int W, int KH, int KW, const int *p, int OW, int q0, int np,
                               const float *x, float *dst)
{
    const int sh = p[0], sw = p[1], pt = p[2], pl = p[3], dh = p[4], dw = p[5];
    int ih0[QC_NR], iw0[QC_NR];
    int j0, j, c, kh, kw;
    for (j0 = 0; j0 < np; j0 += QC_NR) {
        const int w = qc_panel_width(np, j0), nc = qc_min(QC_NR, np - j0);
        for (j = 0; j < nc; ++j) {
            const int q = q0 + j0 + j;
            ih0[j] = (q / OW) * sh - pt;
            iw0[j] = (q % OW) * sw - pl;
        }
        for (c = 0; c < cg; ++c) {
            const float *xc = x + (size_t)c * (size_t)H * (size_t)W;
            for (kh = 0; kh < KH; ++kh) {
                for (kw = 0; kw < KW; ++kw) {
                    for (j = 0; j < nc; ++j) {
                        const int ih = ih0[j] + kh * dh, iw = iw0[j] + kw * dw;
                        dst[j] = ih >= 0 && ih < H && iw >= 0 && iw < W ? xc[(size_t)ih * (size_t)W + (size_t)iw] : 0.0f;
                    }
                    for (; j < w; ++j) dst[j] = 0.0f;
                    dst += w;
                }
            }
        }
    }
}

void qc_conv2d_sgemm_f32(int N, int C, int H, int W, int OC, int OH, int OW, int KH, int KW, int group,
                         const int *p, const float *x, const float *w, const float *bias, float *y, float *work,
                         int nb)
{
    const int cg = C / group, ocg = OC / group, K = cg * KH * KW, P = OH * OW;
    const int direct = KH == 1 && KW == 1 && p[0] == 1 && p[1] == 1 && p[2] == 0 && p[3] == 0 && H == OH &&
                       W == OW && P % 4 == 0;
    int n, g, q0, oc, q;
    for (n = 0; n < N; ++n) {
        for (g = 0; g < group; ++g) {
            const float *xg = x + ((size_t)n * (size_t)C + (size_t)g * (size_t)cg) * (size_t)H * (size_t)W;
            const float *wg = w + (size_t)g * (size_t)ocg * (size_t)K;
            float *yg = y + ((size_t)n * (size_t)OC + (size_t)g * (size_t)ocg) * (size_t)P;
            for (q0 = 0; q0 < P; q0 += nb) {
                const int np = direct ? P : qc_min(nb, P - q0);
                if (direct) {
                    qc_sgemm_core(ocg, P, K, wg, K, xg, P, 1.0f, NULL, yg, P);
                } else {
                    qc_im2col_pack_f32(cg, H, W, KH, KW, p, OW, q0, np, xg, work);
                    qc_sgemm_core(ocg, np, K, wg, K, work, 0, 1.0f, NULL, yg + q0, P);
                }
                if (bias) {
                    for (oc = 0; oc < ocg; ++oc) {
                        float *yr = yg + (size_t)oc * (size_t)P + q0;
                        const float b = bias[g * ocg + oc];
                        for (q = 0; q < np; ++q) yr[q] += b;
                    }
                }
                if (direct) break;
            }
        }
    }
}
