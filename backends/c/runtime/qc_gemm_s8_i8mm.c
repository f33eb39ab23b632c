/* qc_gemm_s8 for aarch64 with the int8 matrix multiply extension (QC_KERNEL_I8MM, SMMLA,
   Armv8.6-A / -march=...+i8mm). SMMLA multiplies a 2x8 block of A (two rows, 8 k) by an 8x2
   block of W (8 k, two columns) into a 2x2 int32 tile: 32 MACs per instruction.
   Packing (packing.py pack_s8 "i8mm"): N padded to 2, K to Kp (16); panels of 16 columns
   (8 pairs; the last one narrower); per k-block b of 8, the panel's pairs side by side, each
   16 bytes = W[8b..8b+7][2p] then W[8b..8b+7][2p+1].
   A is packed per block of 4 rows into a stack buffer (4 x Kp bytes; rows past M and k past K
   are zeros): per 16 k, [rows 0,1 | k 0-7], [rows 2,3 | k 0-7], [rows 0,1 | k 8-15],
   [rows 2,3 | k 8-15], so the inner loop loads A with one LD1 of 64 bytes and each weight
   vector once: register tile 4 rows x 16 columns (16 accumulators), 32 SMMLA per 16 k.
   The epilogue runs on the accumulators (2x2 tiles zipped into 4-column rows). Exact integer
   sums: bit-exact with the portable kernel. */
#include "qc_kernels.h"

#if defined(QC_KERNEL_I8MM)
#if !defined(__ARM_FEATURE_MATMUL_INT8)
#error "QC_KERNEL_I8MM needs -march=armv8.6-a (or +i8mm)"
#endif
#include <arm_neon.h>
#include "qc_gemm_s8_tile.h"

/* Load NP (1..8) consecutive weight vectors into w0..w7 (one or two LD1 of up to 64 bytes). */
#define QC_LD4V(p, n, a, b, c_, d)                                                    \
    do {                                                                              \
        if ((n) >= 4) {                                                               \
            int8x16x4_t v = vld1q_s8_x4(p); a = v.val[0]; b = v.val[1]; c_ = v.val[2]; d = v.val[3]; \
        } else if ((n) == 3) {                                                        \
            int8x16x3_t v = vld1q_s8_x3(p); a = v.val[0]; b = v.val[1]; c_ = v.val[2];   \
        } else if ((n) == 2) {                                                        \
            int8x16x2_t v = vld1q_s8_x2(p); a = v.val[0]; b = v.val[1];               \
        } else if ((n) == 1) {                                                        \
            a = vld1q_s8(p);                                                          \
        }                                                                             \
    } while (0)

#define QC_LDW()                                                                      \
    do {                                                                              \
        QC_LD4V(w, NP, w0, w1, w2, w3);                                               \
        if (NP > 4) { QC_LD4V(w + 64, NP - 4, w4, w5, w6, w7); }                      \
        w += 16 * NP;                                                                 \
    } while (0)

#define QC_MM(i, a)                                                                   \
    do {                                                                              \
        if (MP > i) {                                                                 \
            c##i##0 = vmmlaq_s32(c##i##0, a, w0);                                     \
            if (NP > 1) { c##i##1 = vmmlaq_s32(c##i##1, a, w1); }                     \
            if (NP > 2) { c##i##2 = vmmlaq_s32(c##i##2, a, w2); }                     \
            if (NP > 3) { c##i##3 = vmmlaq_s32(c##i##3, a, w3); }                     \
            if (NP > 4) { c##i##4 = vmmlaq_s32(c##i##4, a, w4); }                     \
            if (NP > 5) { c##i##5 = vmmlaq_s32(c##i##5, a, w5); }                     \
            if (NP > 6) { c##i##6 = vmmlaq_s32(c##i##6, a, w6); }                     \
            if (NP > 7) { c##i##7 = vmmlaq_s32(c##i##7, a, w7); }                     \
        }                                                                             \
    } while (0)

/* Rows 2i, 2i+1 of columns 4q..4q+3 from the 2x2 tiles of pairs 2q, 2q+1. */
#define QC_EPQ(i, q, lo, hi)                                                          \
    do {                                                                              \
        if (MP > i && NP > 2 * q) {                                                   \
            int64x2_t l = vreinterpretq_s64_s32(lo), h = vreinterpretq_s64_s32(hi);   \
            qc_ep_part4(c, vreinterpretq_s32_s64(vzip1q_s64(l, h)), m + 2 * i, n + 4 * q, cols - 4 * q); \
            if (rows > 2 * i + 1) {                                                   \
                qc_ep_part4(c, vreinterpretq_s32_s64(vzip2q_s64(l, h)), m + 2 * i + 1, \
                            n + 4 * q, cols - 4 * q);                                 \
            }                                                                         \
        }                                                                             \
    } while (0)

#define QC_EPI(i)                                                                     \
    do {                                                                              \
        QC_EPQ(i, 0, c##i##0, c##i##1); QC_EPQ(i, 1, c##i##2, c##i##3);               \
        QC_EPQ(i, 2, c##i##4, c##i##5); QC_EPQ(i, 3, c##i##6, c##i##7);               \
    } while (0)

#if defined(__GNUC__) && defined(__aarch64__)
/* The full tile (2 row pairs x 8 column pairs) in assembly, as for SDOT (qc_gemm_s8_dot.c):
   accumulators v16-v31 (pair i, column pair j in v(16 + 8i + j)), the packed A step in
   v0-v3 (one LD1 of 64 bytes), the weights of a k-block in v4-v11 (two LD1 of 64 bytes);
   32 SMMLA per 16 k; the accumulators go to t[64] (2x2 tiles in that order). */
#define QC_MMQ(a0, a1)                                                                   \
    "smmla v16.4s, " a0 ".16b, v4.16b\n\tsmmla v17.4s, " a0 ".16b, v5.16b\n\t"            \
    "smmla v18.4s, " a0 ".16b, v6.16b\n\tsmmla v19.4s, " a0 ".16b, v7.16b\n\t"            \
    "smmla v20.4s, " a0 ".16b, v8.16b\n\tsmmla v21.4s, " a0 ".16b, v9.16b\n\t"            \
    "smmla v22.4s, " a0 ".16b, v10.16b\n\tsmmla v23.4s, " a0 ".16b, v11.16b\n\t"          \
    "smmla v24.4s, " a1 ".16b, v4.16b\n\tsmmla v25.4s, " a1 ".16b, v5.16b\n\t"            \
    "smmla v26.4s, " a1 ".16b, v6.16b\n\tsmmla v27.4s, " a1 ".16b, v7.16b\n\t"            \
    "smmla v28.4s, " a1 ".16b, v8.16b\n\tsmmla v29.4s, " a1 ".16b, v9.16b\n\t"            \
    "smmla v30.4s, " a1 ".16b, v10.16b\n\tsmmla v31.4s, " a1 ".16b, v11.16b\n\t"
#define QC_MSTEP                                                                         \
    "ld1 {v0.16b-v3.16b}, [%[ap]], #64\n\t"                                               \
    "ld1 {v4.16b-v7.16b}, [%[w]], #64\n\tld1 {v8.16b-v11.16b}, [%[w]], #64\n\t"          \
    QC_MMQ("v0", "v1")                                                                    \
    "ld1 {v4.16b-v7.16b}, [%[w]], #64\n\tld1 {v8.16b-v11.16b}, [%[w]], #64\n\t"          \
    QC_MMQ("v2", "v3")
#define QC_MZ4(a, b, c_, d) "movi " a ".4s, #0\n\tmovi " b ".4s, #0\n\tmovi " c_ ".4s, #0\n\tmovi " d ".4s, #0\n\t"
#define QC_MM_ASM(steps, tile)                                                           \
    do {                                                                                 \
        long qc_n = (steps);                                                             \
        int32_t *qc_t = (tile);                                                          \
        __asm__ volatile(QC_MZ4("v16", "v17", "v18", "v19") QC_MZ4("v20", "v21", "v22", "v23") \
                         QC_MZ4("v24", "v25", "v26", "v27") QC_MZ4("v28", "v29", "v30", "v31") \
                         "1:\n\t" QC_MSTEP "subs %[n], %[n], #1\n\tb.ne 1b\n\t"          \
                         "st1 {v16.4s-v19.4s}, [%[t]], #64\n\t"                           \
                         "st1 {v20.4s-v23.4s}, [%[t]], #64\n\t"                           \
                         "st1 {v24.4s-v27.4s}, [%[t]], #64\n\t"                           \
                         "st1 {v28.4s-v31.4s}, [%[t]], #64\n\t"                           \
                         : [ap] "+r"(ap), [w] "+r"(w), [n] "+r"(qc_n), [t] "+r"(qc_t)    \
                         :                                                               \
                         : "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9",   \
                           "v10", "v11", "v16", "v17", "v18", "v19", "v20", "v21", "v22", \
                           "v23", "v24", "v25", "v26", "v27", "v28", "v29", "v30", "v31", \
                           "memory", "cc");                                              \
    } while (0)
#endif

/* MP row pairs (1, 2) x NP column pairs (1..8) over `steps` blocks of 16 k; ap: the packed A
   block, wp: the panel. MP and NP are constants at every call. */
QC_INLINE void qc_mm_tile(const int MP, const int NP, int steps, const int8_t *ap,
                          const int8_t *wp, const struct qc_ep_ctx *cin, int m, int n, int rows,
                          int cols)
{
    const struct qc_ep_ctx cl = *cin, *c = &cl;   /* a local copy: stays in registers */
    const int32x4_t z = vdupq_n_s32(0);
    int32x4_t c00 = z, c01 = z, c02 = z, c03 = z, c04 = z, c05 = z, c06 = z, c07 = z;
    int32x4_t c10 = z, c11 = z, c12 = z, c13 = z, c14 = z, c15 = z, c16 = z, c17 = z;
    const int8x16_t zb = vdupq_n_s8(0);
    int8x16_t a0, a1 = zb, a2, a3 = zb;
    int8x16_t w0, w1 = zb, w2 = zb, w3 = zb, w4 = zb, w5 = zb, w6 = zb, w7 = zb;
    const int8_t *w = wp;
    int s;
#if defined(QC_MM_ASM)
    if (MP == 2 && NP == 8 && rows == 4) {
        /* t: the 2x2 tiles; rows 2i, 2i+1 of columns 4q..4q+3 = tiles (i, 2q), (i, 2q+1) */
        int32_t t[64], u[4][16];
        int i, q;
        QC_MM_ASM(steps, t);
        if (cols == 16 && c->mode == QC_OUT_I32) {   /* zip the 2x2 tiles straight into C */
            const size_t ldo = (size_t)c->ldo;
            int32_t *o = (int32_t *)c->out + (size_t)m * ldo + (size_t)n;
            for (i = 0; i < 2; ++i, o += 2 * ldo) {
                for (q = 0; q < 4; ++q) {
                    const int64x2_t l = vreinterpretq_s64_s32(vld1q_s32(t + 32 * i + 8 * q));
                    const int64x2_t h = vreinterpretq_s64_s32(vld1q_s32(t + 32 * i + 8 * q + 4));
                    vst1q_s32(o + 4 * q, vreinterpretq_s32_s64(vzip1q_s64(l, h)));
                    vst1q_s32(o + ldo + 4 * q, vreinterpretq_s32_s64(vzip2q_s64(l, h)));
                }
            }
            return;
        }
        for (i = 0; i < 2; ++i) {
            for (q = 0; q < 4; ++q) {
                const int32x4_t l = vld1q_s32(t + 32 * i + 8 * q), h = vld1q_s32(t + 32 * i + 8 * q + 4);
                vst1q_s32(&u[2 * i][4 * q], vreinterpretq_s32_s64(vzip1q_s64(vreinterpretq_s64_s32(l),
                                                                          vreinterpretq_s64_s32(h))));
                vst1q_s32(&u[2 * i + 1][4 * q], vreinterpretq_s32_s64(vzip2q_s64(vreinterpretq_s64_s32(l),
                                                                              vreinterpretq_s64_s32(h))));
            }
        }
        qc_ep_tile(c, &u[0][0], 16, 4, cols, m, n);
        return;
    }
#endif
    for (s = steps; s > 0; --s) {
        if (MP == 2) {
            int8x16x4_t v = vld1q_s8_x4(ap);
            a0 = v.val[0]; a1 = v.val[1]; a2 = v.val[2]; a3 = v.val[3];
        } else {
            int8x16x2_t v = vld1q_s8_x2(ap);
            a0 = v.val[0]; a2 = v.val[1];
        }
        ap += 32 * MP;
        QC_LDW();
        QC_MM(0, a0); QC_MM(1, a1);
        QC_LDW();
        QC_MM(0, a2); QC_MM(1, a3);
    }
    QC_EPI(0);
    QC_EPI(1);
}

#define QC_PAIRS(mp)                                                                  \
    do {                                                                              \
        switch (np) {                                                                 \
        case 8: qc_mm_tile(mp, 8, steps, ap, wp, c, m, n, rows, cols); break;         \
        case 7: qc_mm_tile(mp, 7, steps, ap, wp, c, m, n, rows, cols); break;         \
        case 6: qc_mm_tile(mp, 6, steps, ap, wp, c, m, n, rows, cols); break;         \
        case 5: qc_mm_tile(mp, 5, steps, ap, wp, c, m, n, rows, cols); break;         \
        case 4: qc_mm_tile(mp, 4, steps, ap, wp, c, m, n, rows, cols); break;         \
        case 3: qc_mm_tile(mp, 3, steps, ap, wp, c, m, n, rows, cols); break;         \
        case 2: qc_mm_tile(mp, 2, steps, ap, wp, c, m, n, rows, cols); break;         \
        default: qc_mm_tile(mp, 1, steps, ap, wp, c, m, n, rows, cols); break;        \
        }                                                                             \
    } while (0)

/* Pack rows m .. m+rows-1 (rows <= 4) of A into the layout above (mp = 1: rows 0,1 only). */
static void qc_pack_a(const int8_t *A, int lda, int K, int m, int rows, int mp, int8_t *ap)
{
    const int full = K & ~15;
    const int8x16_t zb = vdupq_n_s8(0);
    const int8_t *r[4];
    int i, k;
    for (i = 0; i < 4; ++i) {
        r[i] = i < rows ? A + (size_t)(m + i) * (size_t)lda : NULL;
    }
    for (k = 0; k <= full; k += 16) {
        int8x16_t v[4];
        int64x2_t q[4];
        if (k == full && k == K) {
            break;
        }
        for (i = 0; i < 4; ++i) {
            if (!r[i]) {
                v[i] = zb;
            } else if (k < full) {
                v[i] = vld1q_s8(r[i] + k);
            } else {   /* the K tail, zero-padded */
                int8_t t[16];
                memset(t, 0, sizeof t);
                memcpy(t, r[i] + k, (size_t)(K - k));
                v[i] = vld1q_s8(t);
            }
            q[i] = vreinterpretq_s64_s8(v[i]);
        }
        vst1q_s8(ap, vreinterpretq_s8_s64(vzip1q_s64(q[0], q[1])));
        if (mp == 2) {
            vst1q_s8(ap + 16, vreinterpretq_s8_s64(vzip1q_s64(q[2], q[3])));
            vst1q_s8(ap + 32, vreinterpretq_s8_s64(vzip2q_s64(q[0], q[1])));
            vst1q_s8(ap + 48, vreinterpretq_s8_s64(vzip2q_s64(q[2], q[3])));
        } else {
            vst1q_s8(ap + 16, vreinterpretq_s8_s64(vzip2q_s64(q[0], q[1])));
        }
        ap += 32 * mp;
    }
}

void qc_gemm_s8_run(int M, int N, int K, const int8_t *A, int lda, const int8_t *Wp,
                    const struct qc_ep_ctx *c)
{
    const int Kp = (K + 15) & ~15, steps = Kp / 16;
    int8_t ap[4 * Kp + 1];   /* C99 VLA on the stack: the packed A block (+1: never size 0) */
    int m, n;
    for (m = 0; m < M; m += 4) {
        const int rows = M - m < 4 ? M - m : 4, mp = rows > 2 ? 2 : 1;
        qc_pack_a(A, lda, K, m, rows, mp, ap);
        for (n = 0; n < N; n += 16) {
            const int cols = N - n < 16 ? N - n : 16, np = (cols + 1) / 2;
            const int8_t *wp = Wp + (size_t)n * (size_t)Kp;
            if (mp == 2) {
                QC_PAIRS(2);
            } else {
                QC_PAIRS(1);
            }
        }
    }
}
#else
typedef int qc_gemm_s8_i8mm_not_compiled; /* ISO C: no empty translation unit */
#endif
