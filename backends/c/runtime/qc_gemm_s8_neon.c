/* qc_gemm_s8 for aarch64 NEON (QC_KERNEL_NEON, Armv8.0) and dot-product (QC_KERNEL_DOTPROD,
   SDOT, Armv8.2-A+dotprod). Packing: W transposed, N rows of Kp = K rounded up to 16 bytes,
   zero-padded. Tiles of 2 rows x 4 columns; at the edges the tile repeats the last valid row
   or column (never reads out of bounds) and stores only the valid results.
   NEON: SMULL/SMULL2 (int8 x int8 -> int16, exact) then SADALP (pairwise add into int32): no
   int16 accumulation, so -128 * -128 sums cannot overflow. DOTPROD: SDOT (4 products into each
   int32 lane). Integer sums are exact, so both equal the portable kernel bit for bit. */
#include "qc_kernels.h"

#if defined(QC_KERNEL_NEON) || defined(QC_KERNEL_DOTPROD)
#if !defined(__ARM_NEON)
#error "QC_KERNEL_NEON / QC_KERNEL_DOTPROD need an aarch64 compiler with NEON"
#endif
#if defined(QC_KERNEL_DOTPROD) && !defined(__ARM_FEATURE_DOTPROD)
#error "QC_KERNEL_DOTPROD needs -march=armv8.2-a+dotprod (or a -mcpu with dotprod)"
#endif
#include <arm_neon.h>
#include <string.h>

#if defined(QC_KERNEL_DOTPROD)
#define QC_MAC(acc, a, w) vdotq_s32((acc), (a), (w))
#else
static inline int32x4_t qc_mac16(int32x4_t acc, int8x16_t a, int8x16_t w)
{
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(w)));
    return vpadalq_s16(acc, vmull_high_s8(a, w));
}
#define QC_MAC(acc, a, w) qc_mac16((acc), (a), (w))
#endif

#define QC_STEP(a0, a1, koff)                                              \
    do {                                                                   \
        int8x16_t w0 = vld1q_s8(w[0] + (koff)), w1 = vld1q_s8(w[1] + (koff)); \
        int8x16_t w2 = vld1q_s8(w[2] + (koff)), w3 = vld1q_s8(w[3] + (koff)); \
        c00 = QC_MAC(c00, a0, w0); c01 = QC_MAC(c01, a0, w1);             \
        c02 = QC_MAC(c02, a0, w2); c03 = QC_MAC(c03, a0, w3);             \
        c10 = QC_MAC(c10, a1, w0); c11 = QC_MAC(c11, a1, w1);             \
        c12 = QC_MAC(c12, a1, w2); c13 = QC_MAC(c13, a1, w3);             \
    } while (0)

void qc_gemm_s8(int M, int N, int K, const int8_t *A, const int8_t *Wp, int32_t *C)
{
    const int Kp = (K + 15) & ~15, full = K & ~15, rem = K - full;
    int m, n, j, k;
    for (m = 0; m < M; m += 2) {
        const int rows = M - m < 2 ? M - m : 2;
        const int8_t *a0p = A + (size_t)m * K, *a1p = A + (size_t)(m + rows - 1) * K;
        int8_t t0[16] = {0}, t1[16] = {0};
        if (rem) {
            memcpy(t0, a0p + full, (size_t)rem);
            memcpy(t1, a1p + full, (size_t)rem);
        }
        for (n = 0; n < N; n += 4) {
            const int cols = N - n < 4 ? N - n : 4;
            const int8_t *w[4];
            int32x4_t c00 = vdupq_n_s32(0), c01 = c00, c02 = c00, c03 = c00;
            int32x4_t c10 = c00, c11 = c00, c12 = c00, c13 = c00;
            int32_t r[2][4];
            for (j = 0; j < 4; ++j) {
                w[j] = Wp + (size_t)(n + (j < cols ? j : cols - 1)) * Kp;
            }
            for (k = 0; k < full; k += 16) {
                QC_STEP(vld1q_s8(a0p + k), vld1q_s8(a1p + k), k);
            }
            if (rem) {
                QC_STEP(vld1q_s8(t0), vld1q_s8(t1), full);
            }
            r[0][0] = vaddvq_s32(c00); r[0][1] = vaddvq_s32(c01);
            r[0][2] = vaddvq_s32(c02); r[0][3] = vaddvq_s32(c03);
            r[1][0] = vaddvq_s32(c10); r[1][1] = vaddvq_s32(c11);
            r[1][2] = vaddvq_s32(c12); r[1][3] = vaddvq_s32(c13);
            for (j = 0; j < cols; ++j) {
                C[(size_t)m * N + n + j] = r[0][j];
                if (rows == 2) {
                    C[(size_t)(m + 1) * N + n + j] = r[1][j];
                }
            }
        }
    }
}
#else
typedef int qc_gemm_s8_neon_not_compiled; /* ISO C: no empty translation unit */
#endif
