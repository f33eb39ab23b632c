/* qc_gemm_s8, portable C reference (no QC_KERNEL_* macro), the shared variant name, the
   public entry points (qc_gemm_s8, qc_gemm_s8_f32, qc_gemm_s8_q8: one qc_gemm_s8_run per
   variant, qc_gemm_s8_tile.h) and the panel / slice rules.
   Portable packing: W transposed, N rows of K bytes (Wp[n * K + k] = W[k][n]).
   Plain C with a 4 x 4 register tile (16 scalar int32 accumulators; at the edges the tile repeats
   the last valid row or column and stores only valid results): each A and W byte loaded
   serves four multiply-adds, and compilers that vectorize -O2 code (clang) do so here. */
#include "qc_gemm_s8_tile.h"

const char *qc_kernel_variant(void)
{
#if defined(QC_KERNEL_I8MM)
    return "i8mm";
#elif defined(QC_KERNEL_DOTPROD)
    return "dotprod";
#elif defined(QC_KERNEL_NEON)
    return "neon";
#elif defined(QC_KERNEL_MVE)
    return "mve";
#elif defined(QC_KERNEL_DSP)
    return "dsp";
#else
    return "portable";
#endif
}

int qc_gemm_s8_panel(void)
{
#if defined(QC_KERNEL_I8MM) || defined(QC_KERNEL_DOTPROD)
    return 16;
#elif defined(QC_KERNEL_MVE)
    return 4;
#else
    return 1;
#endif
}

size_t qc_gemm_s8_wp_offset(int n0, int K)
{
#if defined(QC_KERNEL_I8MM) || defined(QC_KERNEL_DOTPROD) || defined(QC_KERNEL_NEON)
    return (size_t)n0 * (size_t)((K + 15) & ~15);
#else
    return (size_t)n0 * (size_t)K;
#endif
}

void qc_epilogue_slice(const struct qc_epilogue *ep, int n0, struct qc_epilogue *out)
{
    const int c = ep->per_channel ? n0 : 0;
    *out = *ep;
    out->bias = ep->bias ? ep->bias + n0 : NULL;
    out->fbias = ep->fbias ? ep->fbias + n0 : NULL;
    out->scale = ep->scale ? ep->scale + c : NULL;
    out->mult = ep->mult ? ep->mult + c : NULL;
    out->shift = ep->shift ? ep->shift + c : NULL;
}

void qc_gemm_s8(int M, int N, int K, const int8_t *A, const int8_t *Wp, int32_t *C)
{
    struct qc_ep_ctx c;
    c.ep = NULL;
    c.mode = QC_OUT_I32;
    c.out = C;
    c.ldo = N;
    qc_gemm_s8_run(M, N, K, A, K, Wp, &c);
}

void qc_gemm_s8_f32(int M, int N, int K, const int8_t *A, int lda, const int8_t *Wp,
                    const struct qc_epilogue *ep, float *out, int ldo)
{
    struct qc_ep_ctx c;
    c.ep = ep;
    c.mode = QC_OUT_F32;
    c.out = out;
    c.ldo = ldo;
    qc_gemm_s8_run(M, N, K, A, lda, Wp, &c);
}

void qc_gemm_s8_q8(int M, int N, int K, const int8_t *A, int lda, const int8_t *Wp,
                   const struct qc_epilogue *ep, int8_t *out, int ldo)
{
    struct qc_ep_ctx c;
    c.ep = ep;
    c.mode = QC_OUT_Q8;
    c.out = out;
    c.ldo = ldo;
    qc_gemm_s8_run(M, N, K, A, lda, Wp, &c);
}

#if !defined(QC_KERNEL_I8MM) && !defined(QC_KERNEL_DOTPROD) && !defined(QC_KERNEL_NEON) && \
    !defined(QC_KERNEL_MVE) && !defined(QC_KERNEL_DSP)
void qc_gemm_s8_run(int M, int N, int K, const int8_t *A, int lda, const int8_t *Wp,
                    const struct qc_ep_ctx *ctx)
{
    int m, n, k, r, j;
    for (m = 0; m < M; m += 4) {
        const int rows = M - m < 4 ? M - m : 4;
        const int8_t *a0 = A + (size_t)m * lda;
        const int8_t *a1 = A + (size_t)(m + (rows > 1 ? 1 : 0)) * lda;
        const int8_t *a2 = A + (size_t)(m + (rows > 2 ? 2 : rows - 1)) * lda;
        const int8_t *a3 = A + (size_t)(m + (rows > 3 ? 3 : rows - 1)) * lda;
        for (n = 0; n < N; n += 4) {
            const int cols = N - n < 4 ? N - n : 4;
            const int8_t *w0 = Wp + (size_t)n * K;
            const int8_t *w1 = Wp + (size_t)(n + (cols > 1 ? 1 : 0)) * K;
            const int8_t *w2 = Wp + (size_t)(n + (cols > 2 ? 2 : cols - 1)) * K;
            const int8_t *w3 = Wp + (size_t)(n + (cols > 3 ? 3 : cols - 1)) * K;
            int32_t c00 = 0, c01 = 0, c02 = 0, c03 = 0, c10 = 0, c11 = 0, c12 = 0, c13 = 0;
            int32_t c20 = 0, c21 = 0, c22 = 0, c23 = 0, c30 = 0, c31 = 0, c32 = 0, c33 = 0;
            int32_t c[4][4];
            for (k = 0; k < K; ++k) {
                const int32_t x0 = a0[k], x1 = a1[k], x2 = a2[k], x3 = a3[k];
                const int32_t y0 = w0[k], y1 = w1[k], y2 = w2[k], y3 = w3[k];
                c00 += x0 * y0; c01 += x0 * y1; c02 += x0 * y2; c03 += x0 * y3;
                c10 += x1 * y0; c11 += x1 * y1; c12 += x1 * y2; c13 += x1 * y3;
                c20 += x2 * y0; c21 += x2 * y1; c22 += x2 * y2; c23 += x2 * y3;
                c30 += x3 * y0; c31 += x3 * y1; c32 += x3 * y2; c33 += x3 * y3;
            }
            c[0][0] = c00; c[0][1] = c01; c[0][2] = c02; c[0][3] = c03;
            c[1][0] = c10; c[1][1] = c11; c[1][2] = c12; c[1][3] = c13;
            c[2][0] = c20; c[2][1] = c21; c[2][2] = c22; c[2][3] = c23;
            c[3][0] = c30; c[3][1] = c31; c[3][2] = c32; c[3][3] = c33;
            for (r = 0; r < rows; ++r) {
                for (j = 0; j < cols; ++j) {
                    qc_ep_one(ctx, c[r][j], m + r, n + j);
                }
            }
        }
    }
}
#endif
