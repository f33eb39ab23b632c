/* qc_gemm_s8 for Cortex-M55 Helium (QC_KERNEL_MVE, -mcpu=cortex-m55). Portable packing
   Packing (packing.py pack_s8 "mve"): N padded to 4; per group of 4 columns, for each 16 k the
   4 columns' 16 bytes in turn, then the K tail (K % 16 bytes) of each column in turn; so one
   pointer walks a group. Three rows of A against 2 columns per step: VMLADAVA.S8
   multiplies 16 int8 pairs and adds them to a scalar int32 accumulator (6 of them); the K
   tail (K % 16) uses predicated loads (VCTP8: zeroing loads never touch memory past K). At
   the bottom edge the tile repeats the last row; padding columns are zeros; only valid results
   are stored (the
   epilogue of qc_gemm_s8_tile.h). Exact integer sums: bit-exact with the portable kernel. */
#include "qc_kernels.h"

#if defined(QC_KERNEL_MVE)
#if !defined(__ARM_FEATURE_MVE)
#error "QC_KERNEL_MVE needs -mcpu=cortex-m55 (Helium)"
#endif
#include <arm_mve.h>
#include "qc_gemm_s8_tile.h"

/* Three rows x one column pair: 6 VMLADAVA per 16 k for 3 A and 2 W loads. VMLADAVA needs
   its accumulator in an even register: 6 of the 7 even core registers hold them. */
#define QC_MVE_STEP(x0, x1, x2, y0, y1)                                                  \
    do {                                                                                 \
        const int8x16_t qa0 = (x0), qa1 = (x1), qa2 = (x2), qw0 = (y0), qw1 = (y1);      \
        c00 = vmladavaq_s8(c00, qa0, qw0); c10 = vmladavaq_s8(c10, qa1, qw0);            \
        c20 = vmladavaq_s8(c20, qa2, qw0); c01 = vmladavaq_s8(c01, qa0, qw1);            \
        c11 = vmladavaq_s8(c11, qa1, qw1); c21 = vmladavaq_s8(c21, qa2, qw1);            \
    } while (0)

/* Rows a0..a2 x columns h, h+1 of the group at g (4 columns, layout above). */
static inline void qc_mve_pair(const int8_t *a0, const int8_t *a1, const int8_t *a2,
                               const int8_t *g, int h, int K, int32_t c[3][4])
{
    const int rem = K & 15;
    const int8_t *pw = g + 16 * h;
    int32_t c00 = 0, c01 = 0, c10 = 0, c11 = 0, c20 = 0, c21 = 0;
    int k;
    for (k = K >> 4; k > 0; --k) {
        QC_MVE_STEP(vldrbq_s8(a0), vldrbq_s8(a1), vldrbq_s8(a2), vldrbq_s8(pw), vldrbq_s8(pw + 16));
        a0 += 16; a1 += 16; a2 += 16; pw += 64;
    }
    if (rem) {   /* tail: zeroing loads stop at K; the group's column tails are rem apart */
        const mve_pred16_t p = vctp8q((uint32_t)rem);
        pw = g + (size_t)(K - rem) * 4 + (size_t)(h * rem);
        QC_MVE_STEP(vldrbq_z_s8(a0, p), vldrbq_z_s8(a1, p), vldrbq_z_s8(a2, p), vldrbq_z_s8(pw, p),
                    vldrbq_z_s8(pw + rem, p));
    }
    c[0][h] = c00; c[0][h + 1] = c01;
    c[1][h] = c10; c[1][h + 1] = c11;
    c[2][h] = c20; c[2][h + 1] = c21;
}

void qc_gemm_s8_run(int M, int N, int K, const int8_t *A, int lda, const int8_t *Wp,
                    const struct qc_ep_ctx *ctx)
{
    int m, n;
    for (m = 0; m < M; m += 3) {
        const int rows = M - m < 3 ? M - m : 3;
        const int8_t *a0 = A + (size_t)m * (size_t)lda;
        const int8_t *a1 = a0 + (rows > 1 ? lda : 0), *a2 = a0 + (size_t)(rows - 1) * (size_t)lda;
        for (n = 0; n < N; n += 4) {
            const int cols = N - n < 4 ? N - n : 4;
            const int8_t *g = Wp + (size_t)n * K;
            int32_t c[3][4];
            qc_mve_pair(a0, a1, a2, g, 0, K, c);
            if (cols > 2) {
                qc_mve_pair(a0, a1, a2, g, 2, K, c);
            }
            if (ctx->mode == QC_OUT_I32 && cols == 4) {
                int32_t *o = (int32_t *)ctx->out + (size_t)m * (size_t)ctx->ldo + (size_t)n;
                int r;
                for (r = 0; r < rows; ++r, o += ctx->ldo) {
                    vstrwq_s32(o, vldrwq_s32(c[r]));
                }
            } else {
                qc_ep_tile(ctx, &c[0][0], 4, rows, cols, m, n);
            }
        }
    }
}
#else
typedef int qc_gemm_s8_mve_not_compiled; /* ISO C: no empty translation unit */
#endif
