/* qc_gemm_s8 for Cortex-M55 Helium (QC_KERNEL_MVE, -mcpu=cortex-m55). Portable packing
   (W transposed, N rows of K bytes). One row of A against 4 columns per step: VMLADAVA.S8
   multiplies 16 int8 pairs and adds them to a scalar int32 accumulator; the K tail (K % 16)
   uses predicated loads (VCTP8: zeroing loads never touch memory past K). At the right edge
   the tile repeats the last column and stores only valid results. Exact integer sums:
   bit-exact with the portable kernel. */
#include "qc_kernels.h"

#if defined(QC_KERNEL_MVE)
#if !defined(__ARM_FEATURE_MVE)
#error "QC_KERNEL_MVE needs -mcpu=cortex-m55 (Helium)"
#endif
#include <arm_mve.h>
#include "qc_gemm_s8_tile.h"

void qc_gemm_s8_run(int M, int N, int K, const int8_t *A, int lda, const int8_t *Wp,
                    const struct qc_ep_ctx *ctx)
{
    int m, n, j, k;
    for (m = 0; m < M; ++m) {
        const int8_t *a = A + (size_t)m * (size_t)lda;
        for (n = 0; n < N; n += 4) {
            const int cols = N - n < 4 ? N - n : 4;
            const int8_t *w[4];
            int32_t c[4] = {0, 0, 0, 0};
            for (j = 0; j < 4; ++j) {
                w[j] = Wp + (size_t)(n + (j < cols ? j : cols - 1)) * K;
            }
            {
                const int8_t *pa = a, *p0 = w[0], *p1 = w[1], *p2 = w[2], *p3 = w[3];
                int32_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;
                for (k = K >> 4; k > 0; --k) {
                    int8x16_t av = vldrbq_s8(pa);
                    c0 = vmladavaq_s8(c0, av, vldrbq_s8(p0));
                    c1 = vmladavaq_s8(c1, av, vldrbq_s8(p1));
                    c2 = vmladavaq_s8(c2, av, vldrbq_s8(p2));
                    c3 = vmladavaq_s8(c3, av, vldrbq_s8(p3));
                    pa += 16; p0 += 16; p1 += 16; p2 += 16; p3 += 16;
                }
                if (K & 15) {   /* tail: zeroing loads stop at K */
                    mve_pred16_t p = vctp8q((uint32_t)(K & 15));
                    int8x16_t av = vldrbq_z_s8(pa, p);
                    c0 = vmladavaq_s8(c0, av, vldrbq_z_s8(p0, p));
                    c1 = vmladavaq_s8(c1, av, vldrbq_z_s8(p1, p));
                    c2 = vmladavaq_s8(c2, av, vldrbq_z_s8(p2, p));
                    c3 = vmladavaq_s8(c3, av, vldrbq_z_s8(p3, p));
                }
                c[0] = c0; c[1] = c1; c[2] = c2; c[3] = c3;
            }
            qc_ep_tile(ctx, c, 4, 1, cols, m, n);
        }
    }
}
#else
typedef int qc_gemm_s8_mve_not_compiled; /* ISO C: no empty translation unit */
#endif
