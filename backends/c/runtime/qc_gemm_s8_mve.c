/* qc_gemm_s8 for Cortex-M55 Helium (QC_KERNEL_MVE, -mcpu=cortex-m55).
   Packing (packing.py pack_s8 "mve"): N padded to 4; per group of 4 columns, for each 16 k the
   4 columns' 16 bytes in turn, then the K tail (K % 16 bytes) of each column in turn; so a
   column's 16-k blocks are 64 bytes apart and one pointer walks a group.
   VMLADAVA.S8 multiplies 16 int8 pairs and adds them to a scalar int32 accumulator, which must
   be an even core register (7 exist), so tiles have at most 6 dot products: 3 rows x 4 columns
   (one group) as two 3 x 2 passes (3 A and 2 W loads per 16 k; columns 0-1 walk the group
   forward, 2-3 backward, so the pointers end where they started) while 3 or more rows remain
   (4 rows go as 2 + 2); 2 rows x 12 columns as four 2 x 3 triples (2 A and 3 W loads); M = 1
   as 1 x 4 tiles (1 A and 4 W loads). The 16-k loop is inline asm under GCC: post-incremented
   VLDRB, the first step VMLADAV (no zeroing), four steps per turn of a WLS / LE low-overhead
   loop; with other compilers (or -DQC_GEMM_S8_NO_ASM) the same steps in intrinsics. The K
   tail (K % 16) uses predicated loads (VCTP8: zeroing loads never touch memory past K). Past
   N a triple repeats the group's last (padding) column. int32 results of full tiles go straight
   to the output rows; the rest through the epilogue of qc_gemm_s8_tile.h (only valid results
   are stored). Exact integer sums: bit-exact with the portable kernel. */
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

#if defined(__GNUC__) && !defined(QC_GEMM_S8_NO_ASM)
/* The asm forms (GCC): "Te" is an even core register (the VMLADAVA accumulator). nb >= 1
   16-k blocks: the first step uses VMLADAV (no accumulate: no zeroing), then of the other
   n = nb - 1: n % 2 steps, 2 * (n / 2 % 2) steps, and four per turn of a WLS / LE loop. n lives in LR
   (a register variable: an "lr" clobber leaves too few registers for the operands). */
#define QC_MVE_LOOP(FIRST, STEP, L)                                                      \
    FIRST                                                                                \
    "lsrs %[n], %[n], #1\n\t"                                                            \
    "bcc " #L "1f\n\t"                                                                   \
    STEP                                                                                 \
    #L "1:\n\t"                                                                          \
    "lsrs %[n], %[n], #1\n\t"                                                            \
    "bcc " #L "4f\n\t"                                                                   \
    STEP STEP                                                                            \
    #L "4:\n\t"                                                                          \
    "wls lr, %[n], " #L "3f\n"                                                           \
    #L "2:\n\t"                                                                          \
    STEP STEP STEP STEP                                                                  \
    "le lr, " #L "2b\n"                                                                  \
    #L "3:\n\t"
/* 3 x 2, columns h, h + 1 of each 64-byte block, walking forward (h = 0, pointers at block 0). */
#define QC_MVE_FWD32(OP)                                                                 \
    "vldrb.8 q0, [%[a0]], #16\n\t"                                                       \
    "vldrb.8 q3, [%[w], #16]\n\t"                                                        \
    "vldrb.8 q4, [%[w]], #64\n\t"                                                        \
    "vldrb.8 q1, [%[a1]], #16\n\t"                                                       \
    OP " %[c0], q0, q4\n\t"                                                              \
    "vldrb.8 q2, [%[a2]], #16\n\t"                                                       \
    OP " %[c1], q1, q4\n\t"                                                              \
    OP " %[c2], q2, q4\n\t"                                                              \
    OP " %[c3], q0, q3\n\t"                                                              \
    OP " %[c4], q1, q3\n\t"                                                              \
    OP " %[c5], q2, q3\n\t"
/* The same walking backward from the end: h = 2 (w 32 bytes past the last block's end). */
#define QC_MVE_BWD32(OP)                                                                 \
    "vldrb.8 q0, [%[a0], #-16]!\n\t"                                                     \
    "vldrb.8 q4, [%[w], #-64]!\n\t"                                                      \
    "vldrb.8 q3, [%[w], #16]\n\t"                                                        \
    "vldrb.8 q1, [%[a1], #-16]!\n\t"                                                     \
    OP " %[c0], q0, q4\n\t"                                                              \
    "vldrb.8 q2, [%[a2], #-16]!\n\t"                                                     \
    OP " %[c1], q1, q4\n\t"                                                              \
    OP " %[c2], q2, q4\n\t"                                                              \
    OP " %[c3], q0, q3\n\t"                                                              \
    OP " %[c4], q1, q3\n\t"                                                              \
    OP " %[c5], q2, q3\n\t"
#define QC_MVE_ASM23(OP)                                                                 \
    "vldrb.8 q0, [%[a0]], #16\n\t"                                                       \
    "vldrb.8 q2, [%[w0]], #64\n\t"                                                       \
    "vldrb.8 q1, [%[a1]], #16\n\t"                                                       \
    OP " %[c0], q0, q2\n\t"                                                              \
    "vldrb.8 q3, [%[w1]], #64\n\t"                                                       \
    OP " %[c1], q1, q2\n\t"                                                              \
    "vldrb.8 q4, [%[w2]], #64\n\t"                                                       \
    OP " %[c2], q0, q3\n\t"                                                              \
    OP " %[c3], q1, q3\n\t"                                                              \
    OP " %[c4], q0, q4\n\t"                                                              \
    OP " %[c5], q1, q4\n\t"
/* 1 x 4: one row, the 4 columns of a group. */
#define QC_MVE_ASM14(OP)                                                                 \
    "vldrb.8 q0, [%[a0]], #16\n\t"                                                       \
    "vldrb.8 q1, [%[w], #16]\n\t"                                                        \
    "vldrb.8 q2, [%[w], #32]\n\t"                                                        \
    "vldrb.8 q3, [%[w], #48]\n\t"                                                        \
    "vldrb.8 q4, [%[w]], #64\n\t"                                                        \
    OP " %[c0], q0, q4\n\t"                                                              \
    OP " %[c1], q0, q1\n\t"                                                              \
    OP " %[c2], q0, q2\n\t"                                                              \
    OP " %[c3], q0, q3\n\t"
#endif

/* Row a0 x the 4 columns of the group at g to d[0..3] (M = 1: 5 loads per 4 VMLADAVA). */
QC_INLINE void qc_mve_1x4(const int8_t *a0, const int8_t *g, int K, int32_t *d)
{
    const int rem = K & 15, nb = K >> 4;
    const int8_t *pw = g;
    int32_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;
#if defined(__GNUC__) && !defined(QC_GEMM_S8_NO_ASM)
    register int n __asm__("lr");
    if (nb > 0) {
        n = nb - 1;
        __asm__ volatile(QC_MVE_LOOP(QC_MVE_ASM14("vmladav.s8"), QC_MVE_ASM14("vmladava.s8"), 1)
                         : [c0] "=Te"(c0), [c1] "=Te"(c1), [c2] "=Te"(c2), [c3] "=Te"(c3),
                           [a0] "+r"(a0), [w] "+r"(pw), [n] "+r"(n)
                         :
                         : "q0", "q1", "q2", "q3", "q4", "memory", "cc");
    }
#else
    int k;
    for (k = nb; k > 0; --k, a0 += 16, pw += 64) {
        const int8x16_t x = vldrbq_s8(a0);
        c0 = vmladavaq_s8(c0, x, vldrbq_s8(pw));
        c1 = vmladavaq_s8(c1, x, vldrbq_s8(pw + 16));
        c2 = vmladavaq_s8(c2, x, vldrbq_s8(pw + 32));
        c3 = vmladavaq_s8(c3, x, vldrbq_s8(pw + 48));
    }
#endif
    if (rem) {
        const mve_pred16_t p = vctp8q((uint32_t)rem);
        const int8_t *pt = g + (size_t)(K - rem) * 4;
        const int8x16_t x = vldrbq_z_s8(a0, p);
        c0 = vmladavaq_s8(c0, x, vldrbq_z_s8(pt, p));
        c1 = vmladavaq_s8(c1, x, vldrbq_z_s8(pt + rem, p));
        c2 = vmladavaq_s8(c2, x, vldrbq_z_s8(pt + 2 * rem, p));
        c3 = vmladavaq_s8(c3, x, vldrbq_z_s8(pt + 3 * rem, p));
    }
    d[0] = c0; d[1] = c1; d[2] = c2; d[3] = c3;
}

#if defined(__GNUC__) && !defined(QC_GEMM_S8_NO_ASM)
/* The 16-k loop of rows a0..a2 x one column pair (STEP: QC_MVE_FWD32 / QC_MVE_BWD32) into
   c0..c5, with the locals of qc_mve_3x4 (a0..a2, pw, n in LR). */
#define QC_MVE_3ROWS_ASM(STEP)                                                           \
    __asm__ volatile(QC_MVE_LOOP(STEP("vmladav.s8"), STEP("vmladava.s8"), 1)             \
                     : [c0] "=Te"(c0), [c1] "=Te"(c1), [c2] "=Te"(c2), [c3] "=Te"(c3),   \
                       [c4] "=Te"(c4), [c5] "=Te"(c5), [a0] "+r"(a0), [a1] "+r"(a1),     \
                       [a2] "+r"(a2), [w] "+r"(pw), [n] "+r"(n)                          \
                     :                                                                   \
                     : "q0", "q1", "q2", "q3", "q4", "memory", "cc")
#endif

/* Rows a0..a2 x the 4 columns of the group at g (layout above) to d0[0..3], d1[..], d2[..]
   (the output rows or a tile). Columns 0, 1 walk the group forward, columns 2, 3 backward, so
   every pointer ends where it started. */
QC_INLINE void qc_mve_3x4(const int8_t *a0, const int8_t *a1, const int8_t *a2,
                          const int8_t *g, int K, int32_t *d0, int32_t *d1, int32_t *d2)
{
    const int rem = K & 15, nb = K >> 4;
#if defined(__GNUC__) && !defined(QC_GEMM_S8_NO_ASM)
    int32_t c0, c1, c2, c3, c4, c5;
    const int8_t *pw = g;
    register int n __asm__("lr");
    if (nb == 0) {
        d0[0] = d0[1] = d0[2] = d0[3] = 0;
        d1[0] = d1[1] = d1[2] = d1[3] = 0;
        d2[0] = d2[1] = d2[2] = d2[3] = 0;
    } else {
        n = nb - 1;
        QC_MVE_3ROWS_ASM(QC_MVE_FWD32);
        d0[0] = c0; d1[0] = c1; d2[0] = c2; d0[1] = c3; d1[1] = c4; d2[1] = c5;
        pw += 32;
        n = nb - 1;
        QC_MVE_3ROWS_ASM(QC_MVE_BWD32);
        d0[2] = c0; d1[2] = c1; d2[2] = c2; d0[3] = c3; d1[3] = c4; d2[3] = c5;
    }
#else
    int h, k;
    for (h = 0; h < 4; h += 2) {
        const int8_t *x0 = a0, *x1 = a1, *x2 = a2, *pw = g + 16 * h;
        int32_t c0 = 0, c1 = 0, c2 = 0, c3 = 0, c4 = 0, c5 = 0;
        for (k = nb; k > 0; --k) {
            QC_MVE_STEP32(vldrbq_s8(x0), vldrbq_s8(x1), vldrbq_s8(x2), vldrbq_s8(pw),
                          vldrbq_s8(pw + 16));
            x0 += 16; x1 += 16; x2 += 16; pw += 64;
        }
        d0[h] = c0; d1[h] = c1; d2[h] = c2; d0[h + 1] = c3; d1[h + 1] = c4; d2[h + 1] = c5;
    }
#endif
    if (rem) {   /* tail: zeroing loads stop at K; the group's column tails are rem apart */
        const mve_pred16_t p = vctp8q((uint32_t)rem);
        const int8_t *pt = g + (size_t)(K - rem) * 4;
        const int8x16_t x0 = vldrbq_z_s8(a0 + (K - rem), p), x1 = vldrbq_z_s8(a1 + (K - rem), p);
        const int8x16_t x2 = vldrbq_z_s8(a2 + (K - rem), p);
        int j;
        for (j = 0; j < 4; ++j, pt += rem) {
            const int8x16_t y = vldrbq_z_s8(pt, p);
            d0[j] = vmladavaq_s8(d0[j], x0, y);
            d1[j] = vmladavaq_s8(d1[j], x1, y);
            d2[j] = vmladavaq_s8(d2[j], x2, y);
        }
    }
}

/* Column j of the packing from the group at g (j may pass the group: j / 4 groups on): its
   first 16-k block, and its K tail. */
#define QC_MVE_COL(g, j, K) ((g) + (size_t)((j) >> 2) * 4 * (size_t)(K) + 16 * ((j) & 3))
#define QC_MVE_TAIL(g, j, K, rem)                                                        \
    ((g) + (size_t)((j) >> 2) * 4 * (size_t)(K) + (size_t)((K) - (rem)) * 4 + (size_t)((j) & 3) * (rem))

/* Rows a0, a1 x columns j0, j1, j2 counted from the group at g, to d0[0..2], d1[0..2]. */
QC_INLINE void qc_mve_2x3(const int8_t *a0, const int8_t *a1, const int8_t *g, int K, int j0,
                          int j1, int j2, int32_t *d0, int32_t *d1)
{
    const int rem = K & 15, nb = K >> 4;
    const int8_t *w0 = QC_MVE_COL(g, j0, K), *w1 = QC_MVE_COL(g, j1, K);
    const int8_t *w2 = QC_MVE_COL(g, j2, K);
    int32_t c0 = 0, c1 = 0, c2 = 0, c3 = 0, c4 = 0, c5 = 0;
#if defined(__GNUC__) && !defined(QC_GEMM_S8_NO_ASM)
    register int n __asm__("lr");
    if (nb > 0) {
        n = nb - 1;
        __asm__ volatile(QC_MVE_LOOP(QC_MVE_ASM23("vmladav.s8"), QC_MVE_ASM23("vmladava.s8"), 1)
                         : [c0] "=Te"(c0), [c1] "=Te"(c1), [c2] "=Te"(c2), [c3] "=Te"(c3),
                           [c4] "=Te"(c4), [c5] "=Te"(c5), [a0] "+r"(a0), [a1] "+r"(a1),
                           [w0] "+r"(w0), [w1] "+r"(w1), [w2] "+r"(w2), [n] "+r"(n)
                         :
                         : "q0", "q1", "q2", "q3", "q4", "memory", "cc");
    }
#else
    int k;
    for (k = nb; k > 0; --k) {
        QC_MVE_STEP23(vldrbq_s8(a0), vldrbq_s8(a1), vldrbq_s8(w0), vldrbq_s8(w1), vldrbq_s8(w2));
        a0 += 16; a1 += 16; w0 += 64; w1 += 64; w2 += 64;
    }
#endif
    if (rem) {
        const mve_pred16_t p = vctp8q((uint32_t)rem);
        QC_MVE_STEP23(vldrbq_z_s8(a0, p), vldrbq_z_s8(a1, p),
                      vldrbq_z_s8(QC_MVE_TAIL(g, j0, K, rem), p),
                      vldrbq_z_s8(QC_MVE_TAIL(g, j1, K, rem), p),
                      vldrbq_z_s8(QC_MVE_TAIL(g, j2, K, rem), p));
    }
    d0[0] = c0; d1[0] = c1; d0[1] = c2; d1[1] = c3; d0[2] = c4; d1[2] = c5;
}

void qc_gemm_s8_run(int M, int N, int K, const int8_t *A, int lda, const int8_t *Wp,
                    const struct qc_ep_ctx *ctx)
{
    const size_t ldo = (size_t)ctx->ldo, gs = (size_t)4 * (size_t)K;   /* gs: bytes per group */
    const int i32 = ctx->mode == QC_OUT_I32;
    const int full4 = i32 ? N & ~3 : 0, full12 = i32 ? N / 12 * 12 : 0;   /* straight stores */
    int m = 0, n;
    if (M == 1) {   /* one row: 1 x 4 tiles */
        const int8_t *g = Wp;
        int32_t *o = (int32_t *)ctx->out;
        for (n = 0; n < full4; n += 4, g += gs) {
            qc_mve_1x4(A, g, K, o + n);
        }
        for (; n < N; n += 4, g += gs) {
            int32_t c[4];
            qc_mve_1x4(A, g, K, c);
            qc_ep_tile(ctx, c, 4, 1, N - n < 4 ? N - n : 4, 0, n);
        }
        return;
    }
    for (; M - m >= 3 && M - m != 4; m += 3) {   /* 4 rows go as 2 + 2 */
        const int8_t *a0 = A + (size_t)m * (size_t)lda, *a1 = a0 + lda, *a2 = a1 + lda;
        const int8_t *g = Wp;
        int32_t *o0 = (int32_t *)ctx->out + (size_t)m * ldo, *o1 = o0 + ldo, *o2 = o1 + ldo;
        for (n = 0; n < full4; n += 4, g += gs) {   /* int32 out: straight to the output rows */
            qc_mve_3x4(a0, a1, a2, g, K, o0 + n, o1 + n, o2 + n);
        }
        for (; n < N; n += 4, g += gs) {
            int32_t c[3][4];
            qc_mve_3x4(a0, a1, a2, g, K, c[0], c[1], c[2]);
            qc_ep_tile(ctx, &c[0][0], 4, 3, N - n < 4 ? N - n : 4, m, n);
        }
    }
    for (; m < M; m += 2) {   /* the last 2 or 4 rows: 2 x 3 tiles, 4 of them per 12 columns */
        const int rows = M - m < 2 ? 1 : 2;
        const int8_t *a0 = A + (size_t)m * (size_t)lda, *a1 = a0 + (size_t)(rows - 1) * lda;
        const int8_t *g = Wp;
        int32_t *o0 = (int32_t *)ctx->out + (size_t)m * ldo, *o1 = o0 + ldo;
        n = 0;
        if (rows == 2) {
            for (; n < full12; n += 12, g += 3 * gs) {
                qc_mve_2x3(a0, a1, g, K, 0, 1, 2, o0 + n, o1 + n);
                qc_mve_2x3(a0, a1, g, K, 3, 4, 5, o0 + n + 3, o1 + n + 3);
                qc_mve_2x3(a0, a1, g, K, 6, 7, 8, o0 + n + 6, o1 + n + 6);
                qc_mve_2x3(a0, a1, g, K, 9, 10, 11, o0 + n + 9, o1 + n + 9);
            }
        }
        for (; n < N; n += 12, g += 3 * gs) {   /* columns past the padded N repeat its last */
            const int cols = N - n < 12 ? N - n : 12, lastj = ((cols + 3) & ~3) - 1;
            int32_t c[2][12];
            int j;
            for (j = 0; j < cols; j += 3) {
                qc_mve_2x3(a0, a1, g, K, j, j + 1 < lastj ? j + 1 : lastj,
                           j + 2 < lastj ? j + 2 : lastj, c[0] + j, c[1] + j);
            }
            qc_ep_tile(ctx, &c[0][0], 12, rows, cols, m, n);
        }
    }
}
#else
typedef int qc_gemm_s8_mve_not_compiled; /* ISO C: no empty translation unit */
#endif
