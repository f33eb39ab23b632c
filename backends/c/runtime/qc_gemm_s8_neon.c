/* qc_gemm_s8 for aarch64 NEON (QC_KERNEL_NEON, Armv8.0; the dot-product variant is
   qc_gemm_s8_dot.c). Packing: W transposed, N rows of Kp = K rounded up to 16 bytes,
   zero-padded. Tiles of 4 rows x 4 columns; at the edges the tile repeats the last valid row
   or column (never reads out of bounds) and stores only the valid results.
   SMULL/SMULL2 (int8 x int8 -> int16, exact) then SADALP (pairwise add into int32): no
   int16 accumulation, so -128 * -128 sums cannot overflow. Integer sums are exact, so it
   equals the portable kernel bit for bit. The epilogue (qc_gemm_s8_tile.h) runs on the
   reduced 4-column row vectors. */
#include "qc_kernels.h"

#if defined(QC_KERNEL_NEON)
#if !defined(__ARM_NEON)
#error "QC_KERNEL_NEON needs an aarch64 compiler with NEON"
#endif
#include <arm_neon.h>
#include "qc_gemm_s8_tile.h"

static inline int32x4_t qc_mac16(int32x4_t acc, int8x16_t a, int8x16_t w)
{
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(w)));
    return vpadalq_s16(acc, vmull_high_s8(a, w));
}
#define QC_MAC(acc, a, w) qc_mac16((acc), (a), (w))

#define QC_ROW(c0, c1, c2, c3, a)                                        \
    do {                                                                 \
        c0 = QC_MAC(c0, a, w0); c1 = QC_MAC(c1, a, w1);                  \
        c2 = QC_MAC(c2, a, w2); c3 = QC_MAC(c3, a, w3);                  \
    } while (0)

#define QC_STEP(p0, p1, p2, p3, koff)                                    \
    do {                                                                 \
        int8x16_t w0 = vld1q_s8(w[0] + (koff)), w1 = vld1q_s8(w[1] + (koff)); \
        int8x16_t w2 = vld1q_s8(w[2] + (koff)), w3 = vld1q_s8(w[3] + (koff)); \
        int8x16_t x0 = vld1q_s8(p0), x1 = vld1q_s8(p1);                  \
        int8x16_t x2 = vld1q_s8(p2), x3 = vld1q_s8(p3);                  \
        QC_ROW(c00, c01, c02, c03, x0);                                  \
        QC_ROW(c10, c11, c12, c13, x1);                                  \
        QC_ROW(c20, c21, c22, c23, x2);                                  \
        QC_ROW(c30, c31, c32, c33, x3);                                  \
    } while (0)

#if defined(__GNUC__) && defined(__aarch64__)
/* The full 4 x 4 tile's 16-k steps in assembly (GCC's allocation of the intrinsic form adds
   register copies): A rows in v0-v3, W columns in v4-v7, products in v8-v15, accumulators
   v16-v31 (row r, column j in v(16 + 4r + j)); at the end ADDP reduces each row's four
   accumulators into one vector of 4 column sums, stored to t[r * 4]. */
#define QC_NM(acc, a, w, t0, t1)                                                       \
    "smull " t0 ".8h, " a ".8b, " w ".8b\n\tsmull2 " t1 ".8h, " a ".16b, " w ".16b\n\t" \
    "sadalp " acc ".4s, " t0 ".8h\n\tsadalp " acc ".4s, " t1 ".8h\n\t"
#define QC_NROW(a, c0, c1, c2, c3)                                                     \
    QC_NM(c0, a, "v4", "v8", "v9") QC_NM(c1, a, "v5", "v10", "v11")                    \
    QC_NM(c2, a, "v6", "v12", "v13") QC_NM(c3, a, "v7", "v14", "v15")
#define QC_NZ4(a, b, c_, d) "movi " a ".4s, #0\n\tmovi " b ".4s, #0\n\tmovi " c_ ".4s, #0\n\tmovi " d ".4s, #0\n\t"
#endif

/* Row r's 4 column sums (pairwise adds of the 4 accumulators), then its epilogue. */
#define QC_SUMS(r, c0, c1, c2, c3)                                               \
    do {                                                                         \
        if (r < rows) {                                                          \
            qc_ep_part4(ctx, vpaddq_s32(vpaddq_s32(c0, c1), vpaddq_s32(c2, c3)), \
                        m + r, n, cols);                                         \
        }                                                                        \
    } while (0)

void qc_gemm_s8_run(int M, int N, int K, const int8_t *A, int lda, const int8_t *Wp,
                    const struct qc_ep_ctx *ctx)
{
    const int Kp = (K + 15) & ~15, full = K & ~15, rem = K - full;
    int m, n, j, k;
    for (m = 0; m < M; m += 4) {
        const int8_t *a[4];
        int8_t t[4][16];
        const int rows = qc_tile_rows(A, lda, M, K, m, full, a, t);
        for (n = 0; n < N; n += 4) {
            const int cols = N - n < 4 ? N - n : 4;
            const int8_t *w[4];
            int32x4_t c00 = vdupq_n_s32(0), c01 = c00, c02 = c00, c03 = c00;
            int32x4_t c10 = c00, c11 = c00, c12 = c00, c13 = c00;
            int32x4_t c20 = c00, c21 = c00, c22 = c00, c23 = c00;
            int32x4_t c30 = c00, c31 = c00, c32 = c00, c33 = c00;
            for (j = 0; j < 4; ++j) {
                w[j] = Wp + (size_t)(n + (j < cols ? j : cols - 1)) * Kp;
            }
#if defined(QC_NROW)
            if (rows == 4 && cols == 4 && full && !rem) {
                int32_t tt[16];
                const int8_t *p0 = a[0], *p1 = a[1], *p2 = a[2], *p3 = a[3], *pw0 = w[0], *pw1 = w[1];
                const int8_t *pw2 = w[2], *pw3 = w[3];
                long steps = full >> 4;
                int32_t *pt = tt;
                __asm__ volatile(QC_NZ4("v16", "v17", "v18", "v19") QC_NZ4("v20", "v21", "v22", "v23")
                                 QC_NZ4("v24", "v25", "v26", "v27") QC_NZ4("v28", "v29", "v30", "v31")
                                 "1:\n\tldr q0, [%[p0]], #16\n\tldr q1, [%[p1]], #16\n\t"
                                 "ldr q2, [%[p2]], #16\n\tldr q3, [%[p3]], #16\n\t"
                                 "ldr q4, [%[w0]], #16\n\tldr q5, [%[w1]], #16\n\t"
                                 "ldr q6, [%[w2]], #16\n\tldr q7, [%[w3]], #16\n\t"
                                 QC_NROW("v0", "v16", "v17", "v18", "v19")
                                 QC_NROW("v1", "v20", "v21", "v22", "v23")
                                 QC_NROW("v2", "v24", "v25", "v26", "v27")
                                 QC_NROW("v3", "v28", "v29", "v30", "v31")
                                 "subs %[n], %[n], #1\n\tb.ne 1b\n\t"
                                 "addp v16.4s, v16.4s, v17.4s\n\taddp v18.4s, v18.4s, v19.4s\n\t"
                                 "addp v16.4s, v16.4s, v18.4s\n\t"
                                 "addp v20.4s, v20.4s, v21.4s\n\taddp v22.4s, v22.4s, v23.4s\n\t"
                                 "addp v17.4s, v20.4s, v22.4s\n\t"
                                 "addp v24.4s, v24.4s, v25.4s\n\taddp v26.4s, v26.4s, v27.4s\n\t"
                                 "addp v18.4s, v24.4s, v26.4s\n\t"
                                 "addp v28.4s, v28.4s, v29.4s\n\taddp v30.4s, v30.4s, v31.4s\n\t"
                                 "addp v19.4s, v28.4s, v30.4s\n\t"
                                 "st1 {v16.4s-v19.4s}, [%[t]]\n\t"
                                 : [p0] "+r"(p0), [p1] "+r"(p1), [p2] "+r"(p2), [p3] "+r"(p3),
                                   [w0] "+r"(pw0), [w1] "+r"(pw1), [w2] "+r"(pw2), [w3] "+r"(pw3),
                                   [n] "+r"(steps)
                                 : [t] "r"(pt)
                                 : "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9",
                                   "v10", "v11", "v12", "v13", "v14", "v15", "v16", "v17", "v18",
                                   "v19", "v20", "v21", "v22", "v23", "v24", "v25", "v26", "v27",
                                   "v28", "v29", "v30", "v31", "memory", "cc");
                qc_ep_tile(ctx, tt, 4, 4, 4, m, n);
                continue;
            }
#endif
            for (k = 0; k < full; k += 16) {
                QC_STEP(a[0] + k, a[1] + k, a[2] + k, a[3] + k, k);
            }
            if (rem) {
                QC_STEP(t[0], t[1], t[2], t[3], full);
            }
            QC_SUMS(0, c00, c01, c02, c03);
            QC_SUMS(1, c10, c11, c12, c13);
            QC_SUMS(2, c20, c21, c22, c23);
            QC_SUMS(3, c30, c31, c32, c33);
        }
    }
}
#else
typedef int qc_gemm_s8_neon_not_compiled; /* ISO C: no empty translation unit */
#endif
