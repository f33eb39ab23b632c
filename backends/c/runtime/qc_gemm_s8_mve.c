/* qc_gemm_s8 for Cortex-M55 Helium (QC_KERNEL_MVE, -mcpu=cortex-m55). Portable packing
   (W transposed, N rows of K bytes). One row of A against 4 columns per step: VMLADAVA.S8
   multiplies 16 int8 pairs and adds them to a scalar int32 accumulator; the K tail uses
   tail-predicated loads (VCTP8, zeroing loads never touch memory past K). At the right edge
   the tile repeats the last column and stores only valid results. Exact integer sums:
   bit-exact with the portable kernel. */
#include "qc_kernels.h"

#if defined(QC_KERNEL_MVE)
#if !defined(__ARM_FEATURE_MVE)
#error "QC_KERNEL_MVE needs -mcpu=cortex-m55 (Helium)"
#endif
#include <arm_mve.h>

void qc_gemm_s8(int M, int N, int K, const int8_t *A, const int8_t *Wp, int32_t *C)
{
    int m, n, j, k;
    for (m = 0; m < M; ++m) {
        const int8_t *a = A + (size_t)m * K;
        for (n = 0; n < N; n += 4) {
            const int cols = N - n < 4 ? N - n : 4;
            const int8_t *w[4];
            int32_t c[4] = {0, 0, 0, 0};
            for (j = 0; j < 4; ++j) {
                w[j] = Wp + (size_t)(n + (j < cols ? j : cols - 1)) * K;
            }
            for (k = 0; k < K; k += 16) {
                mve_pred16_t p = vctp8q((uint32_t)(K - k));
                int8x16_t av = vldrbq_z_s8(a + k, p);
                c[0] = vmladavaq_s8(c[0], av, vldrbq_z_s8(w[0] + k, p));
                c[1] = vmladavaq_s8(c[1], av, vldrbq_z_s8(w[1] + k, p));
                c[2] = vmladavaq_s8(c[2], av, vldrbq_z_s8(w[2] + k, p));
                c[3] = vmladavaq_s8(c[3], av, vldrbq_z_s8(w[3] + k, p));
            }
            for (j = 0; j < cols; ++j) {
                C[(size_t)m * N + n + j] = c[j];
            }
        }
    }
}
#else
typedef int qc_gemm_s8_mve_not_compiled; /* ISO C: no empty translation unit */
#endif
