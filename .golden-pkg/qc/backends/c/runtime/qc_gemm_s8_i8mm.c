/* qc_gemm_s8 for aarch64 with the int8 matrix multiply extension (QC_KERNEL_I8MM, SMMLA,
   Armv8.6-A / -march=...+i8mm). Packing: columns in pairs (N padded to even); for each pair
   and each block of 8 k (K padded to 8), 16 bytes = 8 k of column 2p then 8 k of column
   2p+1, zeros in the padding. SMMLA multiplies a 2x8 block of A (two rows) by the 8x2 block
   of a column pair into a 2x2 int32 tile. Tiles of 4 rows x 8 columns (4 pairs), 16 k per step; at the
   edges the tile repeats the last valid row or pair and stores only the valid results. Exact integer
   sums: bit-exact with the portable kernel. */
#include "qc_kernels.h"

#if defined(QC_KERNEL_I8MM)
#if !defined(__ARM_FEATURE_MATMUL_INT8)
#error "QC_KERNEL_I8MM needs -march=armv8.6-a (or +i8mm)"
#endif
#include <arm_neon.h>
#include "qc_gemm_s8_tile.h"

/* Two k-blocks of 8 for rows (r0, r1) from two 16-byte row loads: lo = r0[0:8] r1[0:8],
   hi = r0[8:16] r1[8:16] (the 2x8 operands of SMMLA). */
#define QC_PAIR(lo, hi, p0, p1)                                             \
    do {                                                                    \
        int64x2_t q0 = vreinterpretq_s64_s8(vld1q_s8(p0));                  \
        int64x2_t q1 = vreinterpretq_s64_s8(vld1q_s8(p1));                  \
        lo = vreinterpretq_s8_s64(vzip1q_s64(q0, q1));                      \
        hi = vreinterpretq_s8_s64(vzip2q_s64(q0, q1));                      \
    } while (0)

#define QC_MMLA(j, x)                                                       \
    do {                                                                    \
        c0##j = vmmlaq_s32(c0##j, lo01, x);                                 \
        c1##j = vmmlaq_s32(c1##j, lo23, x);                                 \
    } while (0)

#define QC_MMLA_HI(j, x)                                                    \
    do {                                                                    \
        c0##j = vmmlaq_s32(c0##j, hi01, x);                                 \
        c1##j = vmmlaq_s32(c1##j, hi23, x);                                 \
    } while (0)

/* Store the 2x2 tile c (rows 2R, 2R+1; columns 2J, 2J+1) into out. */
#define QC_TILE(R, J, c)                                                    \
    do {                                                                    \
        vst1_s32(&out[2 * (R)][2 * (J)], vget_low_s32(c));                 \
        vst1_s32(&out[2 * (R) + 1][2 * (J)], vget_high_s32(c));            \
    } while (0)

void qc_gemm_s8(int M, int N, int K, const int8_t *A, const int8_t *Wp, int32_t *C)
{
    const int Kb = (K + 7) / 8, full = K & ~15, rem = K - full, pairs = (N + 1) / 2;
    const size_t pair_bytes = (size_t)Kb * 16;
    int m, n, j, k;
    for (m = 0; m < M; m += 4) {
        const int8_t *a[4];
        int8_t t[4][16];
        const int rows = qc_tile_rows(A, M, K, m, full, a, t);
        for (n = 0; n < N; n += 8) {
            const int cols = N - n < 8 ? N - n : 8;
            const int8_t *w[4];
            int32x4_t c00 = vdupq_n_s32(0), c01 = c00, c02 = c00, c03 = c00;
            int32x4_t c10 = c00, c11 = c00, c12 = c00, c13 = c00;
            int8x16_t lo01, hi01, lo23, hi23;
            int32_t out[4][8];
            for (j = 0; j < 4; ++j) {
                int p = n / 2 + j;
                w[j] = Wp + (size_t)(p < pairs ? p : pairs - 1) * pair_bytes;
            }
            for (k = 0; k < full; k += 16) {
                /* k-block k/8 of a pair starts at byte 2k */
                QC_PAIR(lo01, hi01, a[0] + k, a[1] + k);
                QC_PAIR(lo23, hi23, a[2] + k, a[3] + k);
                QC_MMLA(0, vld1q_s8(w[0] + 2 * k));
                QC_MMLA(1, vld1q_s8(w[1] + 2 * k));
                QC_MMLA(2, vld1q_s8(w[2] + 2 * k));
                QC_MMLA(3, vld1q_s8(w[3] + 2 * k));
                QC_MMLA_HI(0, vld1q_s8(w[0] + 2 * k + 16));
                QC_MMLA_HI(1, vld1q_s8(w[1] + 2 * k + 16));
                QC_MMLA_HI(2, vld1q_s8(w[2] + 2 * k + 16));
                QC_MMLA_HI(3, vld1q_s8(w[3] + 2 * k + 16));
            }
            if (rem) {   /* 1..15 k left: one or two packed k-blocks exist */
                QC_PAIR(lo01, hi01, t[0], t[1]);
                QC_PAIR(lo23, hi23, t[2], t[3]);
                QC_MMLA(0, vld1q_s8(w[0] + 2 * full));
                QC_MMLA(1, vld1q_s8(w[1] + 2 * full));
                QC_MMLA(2, vld1q_s8(w[2] + 2 * full));
                QC_MMLA(3, vld1q_s8(w[3] + 2 * full));
                if (rem > 8) {
                    QC_MMLA_HI(0, vld1q_s8(w[0] + 2 * full + 16));
                    QC_MMLA_HI(1, vld1q_s8(w[1] + 2 * full + 16));
                    QC_MMLA_HI(2, vld1q_s8(w[2] + 2 * full + 16));
                    QC_MMLA_HI(3, vld1q_s8(w[3] + 2 * full + 16));
                }
            }
            QC_TILE(0, 0, c00); QC_TILE(0, 1, c01); QC_TILE(0, 2, c02); QC_TILE(0, 3, c03);
            QC_TILE(1, 0, c10); QC_TILE(1, 1, c11); QC_TILE(1, 2, c12); QC_TILE(1, 3, c13);
            qc_tile_store(C, N, m, n, rows, cols, &out[0][0], 8);
        }
    }
}
#else
typedef int qc_gemm_s8_i8mm_not_compiled; /* ISO C: no empty translation unit */
#endif
