/* qc_gemm_s8 for Cortex-M55 Helium (QC_KERNEL_MVE, -mcpu=cortex-m55). Portable packing
   Packing (packing.py pack_s8 "mve"): N padded to 4; per group of 4 columns, for each 16 k the
   4 columns' 16 bytes in turn, then the K tail (K % 16 bytes) of each column in turn; so a
   column's 16-k blocks are 64 bytes apart and one pointer walks a group.
   Tiles of 6 dot products: VMLADAVA.S8 multiplies 16 int8 pairs and adds them to a scalar int32
   accumulator, which must be an even core register (7 exist): 3 rows x 2 columns (3 A and 2 W
   loads per 16 k; two such pairs make a 3 x 4 tile over one group) while 3 or more rows remain,
   else 2 rows x 3 columns (2 A and 3 W loads; four triples make a 2 x 12 tile over three
   groups). The 16-k loop is inline asm (GCC: post-incremented VLDRB, two steps per turn of a
   WLS / LE low-overhead loop; else the same steps in intrinsics); the K tail (K % 16) uses
   predicated loads (VCTP8: zeroing loads never touch memory past K). At the bottom edge the
   tile repeats the last row, past N it repeats the last (padding) column of the group; only
   valid results are stored (the epilogue of qc_gemm_s8_tile.h; int32 output of a full tile
   from vector stores). Exact integer sums: bit-exact with the portable kernel. */
#include "qc_kernels.h"

#if defined(QC_KERNEL_MVE)
#if !defined(__ARM_FEATURE_MVE)
#error "QC_KERNEL_MVE needs -mcpu=cortex-m55 (Helium)"
#endif
#include <arm_mve.h>
#include "qc_gemm_s8_tile.h"

/* One 16-k step of a 3 x 2 tile: rows x0..x2 (16 bytes each), columns y0, y1. */
#define QC_MVE_STEP32(x0, x1, x2, y0, y1)                                                \
    do {                                                                                 \
        const int8x16_t qa0 = (x0), qa1 = (x1), qa2 = (x2), qw0 = (y0), qw1 = (y1);      \
        c0 = vmladavaq_s8(c0, qa0, qw0); c1 = vmladavaq_s8(c1, qa1, qw0);                \
        c2 = vmladavaq_s8(c2, qa2, qw0); c3 = vmladavaq_s8(c3, qa0, qw1);                \
        c4 = vmladavaq_s8(c4, qa1, qw1); c5 = vmladavaq_s8(c5, qa2, qw1);                \
    } while (0)

/* One 16-k step of a 2 x 3 tile: rows x0, x1, columns y0..y2. */
#define QC_MVE_STEP23(x0, x1, y0, y1, y2)                                                \
    do {                                                                                 \
        const int8x16_t qa0 = (x0), qa1 = (x1), qw0 = (y0), qw1 = (y1), qw2 = (y2);      \
        c0 = vmladavaq_s8(c0, qa0, qw0); c1 = vmladavaq_s8(c1, qa1, qw0);                \
        c2 = vmladavaq_s8(c2, qa0, qw1); c3 = vmladavaq_s8(c3, qa1, qw1);                \
        c4 = vmladavaq_s8(c4, qa0, qw2); c5 = vmladavaq_s8(c5, qa1, qw2);                \
    } while (0)

#if defined(__GNUC__)
/* "Te": an even core register (the VMLADAVA accumulator). An odd block count runs one step
   before the loop; the loop does two per turn. */
#define QC_MVE_LOOP(STEP, ...)                                                      \
    __asm__ volatile("lsrs %[nb], %[nb], #1\n\t"                                         \
                     "bcc 3f\n\t"                                                        \
                     STEP                                                                \
                     "3:\n\t"                                                            \
                     "wls lr, %[nb], 2f\n"                                               \
                     "1:\n\t"                                                            \
                     STEP STEP                                                           \
                     "le lr, 1b\n"                                                       \
                     "2:\n"                                                              \
                     : [c0] "+Te"(c0), [c1] "+Te"(c1), [c2] "+Te"(c2), [c3] "+Te"(c3),   \
                       [c4] "+Te"(c4), [c5] "+Te"(c5), [nb] "+r"(nb), __VA_ARGS__        \
                     :                                                                   \
                     : "q0", "q1", "q2", "q3", "q4", "lr", "memory", "cc")
#define QC_MVE_ASM32                                                                     \
    "vldrb.8 q0, [%[a0]], #16\n\t"                                                       \
    "vldrb.8 q3, [%[w], #16]\n\t"                                                        \
    "vldrb.8 q4, [%[w]], #64\n\t"                                                        \
    "vldrb.8 q1, [%[a1]], #16\n\t"                                                       \
    "vmladava.s8 %[c0], q0, q4\n\t"                                                      \
    "vldrb.8 q2, [%[a2]], #16\n\t"                                                       \
    "vmladava.s8 %[c1], q1, q4\n\t"                                                      \
    "vmladava.s8 %[c2], q2, q4\n\t"                                                      \
    "vmladava.s8 %[c3], q0, q3\n\t"                                                      \
    "vmladava.s8 %[c4], q1, q3\n\t"                                                      \
    "vmladava.s8 %[c5], q2, q3\n\t"
#define QC_MVE_ASM23                                                                     \
    "vldrb.8 q0, [%[a0]], #16\n\t"                                                       \
    "vldrb.8 q2, [%[w0]], #64\n\t"                                                       \
    "vldrb.8 q1, [%[a1]], #16\n\t"                                                       \
    "vmladava.s8 %[c0], q0, q2\n\t"                                                      \
    "vldrb.8 q3, [%[w1]], #64\n\t"                                                       \
    "vmladava.s8 %[c1], q1, q2\n\t"                                                      \
    "vldrb.8 q4, [%[w2]], #64\n\t"                                                       \
    "vmladava.s8 %[c2], q0, q3\n\t"                                                      \
    "vmladava.s8 %[c3], q1, q3\n\t"                                                      \
    "vmladava.s8 %[c4], q0, q4\n\t"                                                      \
    "vmladava.s8 %[c5], q1, q4\n\t"
#endif

/* Rows a0..a2 x columns h, h+1 of the group at g (layout above): c[r][h], c[r][h + 1]. */
static inline void qc_mve_3x2(const int8_t *a0, const int8_t *a1, const int8_t *a2,
                              const int8_t *g, int h, int K, int32_t c[3][4])
{
    const int rem = K & 15;
    const int8_t *pw = g + 16 * h;
    int32_t c0 = 0, c1 = 0, c2 = 0, c3 = 0, c4 = 0, c5 = 0;
    int nb = K >> 4;
#if defined(__GNUC__)
    QC_MVE_LOOP(QC_MVE_ASM32, [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2)
               , [w] "+r"(pw));
#else
    for (; nb > 0; --nb) {
        QC_MVE_STEP32(vldrbq_s8(a0), vldrbq_s8(a1), vldrbq_s8(a2), vldrbq_s8(pw), vldrbq_s8(pw + 16));
        a0 += 16; a1 += 16; a2 += 16; pw += 64;
    }
#endif
    if (rem) {   /* tail: zeroing loads stop at K; the group's column tails are rem apart */
        const mve_pred16_t p = vctp8q((uint32_t)rem);
        pw = g + (size_t)(K - rem) * 4 + (size_t)(h * rem);
        QC_MVE_STEP32(vldrbq_z_s8(a0, p), vldrbq_z_s8(a1, p), vldrbq_z_s8(a2, p),
                      vldrbq_z_s8(pw, p), vldrbq_z_s8(pw + rem, p));
    }
    c[0][h] = c0; c[1][h] = c1; c[2][h] = c2;
    c[0][h + 1] = c3; c[1][h + 1] = c4; c[2][h + 1] = c5;
}

/* Column n of the packing (n < N padded to 4): its first 16-k block, and its K tail. */
#define QC_MVE_COL(Wp, n, K) ((Wp) + (size_t)((n) & ~3) * (size_t)(K) + 16 * ((n) & 3))
#define QC_MVE_TAIL(Wp, n, K, rem)                                                       \
    ((Wp) + (size_t)((n) & ~3) * (size_t)(K) + (size_t)((K) - (rem)) * 4 + (size_t)((n) & 3) * (rem))

/* Rows a0, a1 x columns n..n+2 (each clamped to last, the last padded column): c[r][j..j+2]. */
static inline void qc_mve_2x3(const int8_t *a0, const int8_t *a1, const int8_t *Wp, int n,
                              int last, int K, int32_t c[2][12], int j)
{
    const int rem = K & 15;
    const int n1 = n + 1 < last ? n + 1 : last, n2 = n + 2 < last ? n + 2 : last;
    const int8_t *w0 = QC_MVE_COL(Wp, n, K), *w1 = QC_MVE_COL(Wp, n1, K);
    const int8_t *w2 = QC_MVE_COL(Wp, n2, K);
    int32_t c0 = 0, c1 = 0, c2 = 0, c3 = 0, c4 = 0, c5 = 0;
    int nb = K >> 4;
#if defined(__GNUC__)
    QC_MVE_LOOP(QC_MVE_ASM23, [a0] "+r"(a0), [a1] "+r"(a1), [w0] "+r"(w0)
               , [w1] "+r"(w1), [w2] "+r"(w2));
#else
    for (; nb > 0; --nb) {
        QC_MVE_STEP23(vldrbq_s8(a0), vldrbq_s8(a1), vldrbq_s8(w0), vldrbq_s8(w1), vldrbq_s8(w2));
        a0 += 16; a1 += 16; w0 += 64; w1 += 64; w2 += 64;
    }
#endif
    if (rem) {
        const mve_pred16_t p = vctp8q((uint32_t)rem);
        QC_MVE_STEP23(vldrbq_z_s8(a0, p), vldrbq_z_s8(a1, p),
                      vldrbq_z_s8(QC_MVE_TAIL(Wp, n, K, rem), p),
                      vldrbq_z_s8(QC_MVE_TAIL(Wp, n1, K, rem), p),
                      vldrbq_z_s8(QC_MVE_TAIL(Wp, n2, K, rem), p));
    }
    c[0][j] = c0; c[1][j] = c1;
    c[0][j + 1] = c2; c[1][j + 1] = c3;
    c[0][j + 2] = c4; c[1][j + 2] = c5;
}

/* int32 output of a full tile: rows x (4 * q) values from t (row stride ld) by vector stores. */
static inline void qc_mve_store_i32(const struct qc_ep_ctx *ctx, const int32_t *t, int ld,
                                    int rows, int q, int m, int n)
{
    int32_t *o = (int32_t *)ctx->out + (size_t)m * (size_t)ctx->ldo + (size_t)n;
    int r, j;
    for (r = 0; r < rows; ++r, o += ctx->ldo, t += ld) {
        for (j = 0; j < q; ++j) {
            vstrwq_s32(o + 4 * j, vldrwq_s32(t + 4 * j));
        }
    }
}

void qc_gemm_s8_run(int M, int N, int K, const int8_t *A, int lda, const int8_t *Wp,
                    const struct qc_ep_ctx *ctx)
{
    const int last = ((N + 3) & ~3) - 1;   /* the last (padded) column of the packing */
    int m = 0, n;
    for (; M - m >= 3 && M - m != 4; m += 3) {   /* 4 rows go as 2 + 2 */
        const int8_t *a0 = A + (size_t)m * (size_t)lda, *a1 = a0 + lda, *a2 = a1 + lda;
        for (n = 0; n < N; n += 4) {
            const int cols = N - n < 4 ? N - n : 4;
            const int8_t *g = Wp + (size_t)n * K;
            int32_t c[3][4];
            qc_mve_3x2(a0, a1, a2, g, 0, K, c);
            if (cols > 2) {
                qc_mve_3x2(a0, a1, a2, g, 2, K, c);
            }
            if (ctx->mode == QC_OUT_I32 && cols == 4) {
                qc_mve_store_i32(ctx, &c[0][0], 4, 3, 1, m, n);
            } else {
                qc_ep_tile(ctx, &c[0][0], 4, 3, cols, m, n);
            }
        }
    }
    for (; m < M; m += 2) {   /* the last 1, 2 or 4 rows: 2 x 3 tiles, 4 of them per 12 columns */
        const int rows = M - m < 2 ? 1 : 2;
        const int8_t *a0 = A + (size_t)m * (size_t)lda, *a1 = a0 + (size_t)(rows - 1) * lda;
        for (n = 0; n < N; n += 12) {
            const int cols = N - n < 12 ? N - n : 12;
            int32_t c[2][12];
            int j;
            for (j = 0; j < cols; j += 3) {
                qc_mve_2x3(a0, a1, Wp, n + j, last, K, c, j);
            }
            if (ctx->mode == QC_OUT_I32 && cols == 12) {
                qc_mve_store_i32(ctx, &c[0][0], 12, rows, 3, m, n);
            } else {
                qc_ep_tile(ctx, &c[0][0], 12, rows, cols, m, n);
            }
        }
    }
}
#else
typedef int qc_gemm_s8_mve_not_compiled; /* ISO C: no empty translation unit */
#endif
