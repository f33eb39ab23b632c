/* qc_gemm_s8 for aarch64 with the int8 matrix multiply extension (QC_KERNEL_I8MM, SMMLA,
   Armv8.6-A / -march=...+i8mm). Packing: columns in pairs (N padded to even); for each pair
   and each block of 8 k (K padded to 8), 16 bytes = 8 k of column 2p then 8 k of column
   2p+1, zeros in the padding. SMMLA multiplies a 2x8 block of A (two rows) by the 8x2 block
   of a column pair into a 2x2 int32 tile. Tiles of 4 rows x 4 columns (2 pairs); at the edges
   the tile repeats the last valid row or pair and stores only the valid results. Exact integer
   sums: bit-exact with the portable kernel. */
#include "qc_kernels.h"

#if defined(QC_KERNEL_I8MM)
#if !defined(__ARM_FEATURE_MATMUL_INT8)
#error "QC_KERNEL_I8MM needs -march=armv8.6-a (or +i8mm)"
#endif
#include <arm_neon.h>
#include <string.h>

void qc_gemm_s8(int M, int N, int K, const int8_t *A, const int8_t *Wp, int32_t *C)
{
    const int Kb = (K + 7) / 8, full = K / 8, rem = K - full * 8, pairs = (N + 1) / 2;
    int m, n, r, b;
    for (m = 0; m < M; m += 4) {
        const int rows = M - m < 4 ? M - m : 4;
        const int8_t *a[4];
        int8_t t[4][8];
        for (r = 0; r < 4; ++r) {
            a[r] = A + (size_t)(m + (r < rows ? r : rows - 1)) * K;
            memset(t[r], 0, sizeof t[r]);
            if (rem) {
                memcpy(t[r], a[r] + full * 8, (size_t)rem);
            }
        }
        for (n = 0; n < N; n += 4) {
            const int p0 = n / 2, p1 = p0 + 1 < pairs ? p0 + 1 : p0;
            const int8_t *w0 = Wp + (size_t)p0 * Kb * 16, *w1 = Wp + (size_t)p1 * Kb * 16;
            int32x4_t c00 = vdupq_n_s32(0), c01 = c00, c10 = c00, c11 = c00;
            int32_t out[4][4];
            int cols = N - n < 4 ? N - n : 4, j;
            for (b = 0; b < full; ++b) {
                int8x16_t a01 = vcombine_s8(vld1_s8(a[0] + b * 8), vld1_s8(a[1] + b * 8));
                int8x16_t a23 = vcombine_s8(vld1_s8(a[2] + b * 8), vld1_s8(a[3] + b * 8));
                int8x16_t x0 = vld1q_s8(w0 + b * 16), x1 = vld1q_s8(w1 + b * 16);
                c00 = vmmlaq_s32(c00, a01, x0);
                c01 = vmmlaq_s32(c01, a01, x1);
                c10 = vmmlaq_s32(c10, a23, x0);
                c11 = vmmlaq_s32(c11, a23, x1);
            }
            if (rem) {
                int8x16_t a01 = vcombine_s8(vld1_s8(t[0]), vld1_s8(t[1]));
                int8x16_t a23 = vcombine_s8(vld1_s8(t[2]), vld1_s8(t[3]));
                int8x16_t x0 = vld1q_s8(w0 + b * 16), x1 = vld1q_s8(w1 + b * 16);
                c00 = vmmlaq_s32(c00, a01, x0);
                c01 = vmmlaq_s32(c01, a01, x1);
                c10 = vmmlaq_s32(c10, a23, x0);
                c11 = vmmlaq_s32(c11, a23, x1);
            }
            /* cXY = [row 2X col 2Y, row 2X col 2Y+1, row 2X+1 col 2Y, row 2X+1 col 2Y+1] */
            vst1_s32(&out[0][0], vget_low_s32(c00));
            vst1_s32(&out[0][2], vget_low_s32(c01));
            vst1_s32(&out[1][0], vget_high_s32(c00));
            vst1_s32(&out[1][2], vget_high_s32(c01));
            vst1_s32(&out[2][0], vget_low_s32(c10));
            vst1_s32(&out[2][2], vget_low_s32(c11));
            vst1_s32(&out[3][0], vget_high_s32(c10));
            vst1_s32(&out[3][2], vget_high_s32(c11));
            for (r = 0; r < rows; ++r) {
                for (j = 0; j < cols; ++j) {
                    C[(size_t)(m + r) * N + n + j] = out[r][j];
                }
            }
        }
    }
}
#else
typedef int qc_gemm_s8_i8mm_not_compiled; /* ISO C: no empty translation unit */
#endif
