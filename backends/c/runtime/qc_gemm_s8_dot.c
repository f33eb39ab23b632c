/* qc_gemm_s8 for aarch64 with the dot-product extension (QC_KERNEL_DOTPROD, SDOT,
   Armv8.2-A+dotprod). Packing (packing.py pack_s8 "dotprod"): N padded to 4, K to Kp (16);
   panels of 16 columns (the last one 4, 8 or 12 wide); inside a panel of width w, for each
   k-quad q, w/4 vectors of 16 bytes, vector g byte 4j + i = W[4q + i][panel + 4g + j].
   So a lane-indexed SDOT (vdotq_laneq_s32(acc, wvec, a16, lane)) multiplies 4 columns by 4 k
   of an A row read straight from row-major A (no A packing): 4 bytes of A broadcast by lane.
   Register tile 4 rows x 16 columns: 16 accumulators (each 4 consecutive columns of a row),
   4 A rows of 16 k and 4 weight vectors (one LD1 of 64 bytes per k-quad) live; 64 SDOT per 16 k.
   M = 1..3 (decode) runs the same code with 1..3 rows: weight-bound, one LD1 per 64 weight
   bytes and one SDOT per 16. The K tail (K % 16) goes through a zero-padded copy of the A rows.
   The epilogue runs on the accumulators before the store. Exact integer sums: bit-exact with
   the portable kernel. */
#include "qc_kernels.h"

#if defined(QC_KERNEL_DOTPROD)
#if !defined(__ARM_NEON) || !defined(__ARM_FEATURE_DOTPROD)
#error "QC_KERNEL_DOTPROD needs -march=armv8.2-a+dotprod (or a -mcpu with dotprod)"
#endif
#include <arm_neon.h>
#include "qc_gemm_s8_tile.h"

/* Load the NG weight vectors of one k-quad (LD1 of 16 * NG bytes). */
#define QC_LDW()                                                                      \
    do {                                                                              \
        if (NG == 4) {                                                                \
            int8x16x4_t v = vld1q_s8_x4(w);                                           \
            w0 = v.val[0]; w1 = v.val[1]; w2 = v.val[2]; w3 = v.val[3];               \
        } else if (NG == 3) {                                                         \
            int8x16x3_t v = vld1q_s8_x3(w);                                           \
            w0 = v.val[0]; w1 = v.val[1]; w2 = v.val[2];                              \
        } else if (NG == 2) {                                                         \
            int8x16x2_t v = vld1q_s8_x2(w);                                           \
            w0 = v.val[0]; w1 = v.val[1];                                             \
        } else {                                                                      \
            w0 = vld1q_s8(w);                                                         \
        }                                                                             \
        w += 16 * NG;                                                                 \
    } while (0)

#define QC_DOTR(r, a, l)                                                              \
    do {                                                                              \
        if (MR > r) {                                                                 \
            c##r##0 = vdotq_laneq_s32(c##r##0, w0, a, l);                             \
            if (NG > 1) { c##r##1 = vdotq_laneq_s32(c##r##1, w1, a, l); }             \
            if (NG > 2) { c##r##2 = vdotq_laneq_s32(c##r##2, w2, a, l); }             \
            if (NG > 3) { c##r##3 = vdotq_laneq_s32(c##r##3, w3, a, l); }             \
        }                                                                             \
    } while (0)

#define QC_QUAD(l)                                                                    \
    do {                                                                              \
        QC_LDW();                                                                     \
        QC_DOTR(0, x0, l); QC_DOTR(1, x1, l); QC_DOTR(2, x2, l); QC_DOTR(3, x3, l);  \
    } while (0)

/* 16 k: one 16-byte load per A row, 4 k-quads of weights. */
#define QC_STEP(p0, p1, p2, p3)                                                       \
    do {                                                                              \
        x0 = vld1q_s8(p0);                                                            \
        if (MR > 1) { x1 = vld1q_s8(p1); }                                            \
        if (MR > 2) { x2 = vld1q_s8(p2); }                                            \
        if (MR > 3) { x3 = vld1q_s8(p3); }                                            \
        QC_QUAD(0); QC_QUAD(1); QC_QUAD(2); QC_QUAD(3);                               \
    } while (0)

#if defined(__GNUC__) && defined(__aarch64__)
/* The full tile's 16-k steps in assembly (GCC's register allocation of the intrinsic form
   spills accumulators and copies registers): accumulators in v16-v31 (row r, group g in
   v(16 + 4r + g)); per loop turn 48 k: each A row's 48 bytes in one LD1 of three registers
   (row r in v(3r) .. v(3r + 2)), so 4 A loads serve 192 SDOT; each weight k-quad in v12-v15 (one
   LD1 of 64 bytes), 16 lane-indexed SDOT per k-quad; post-indexed loads. The steps left over
   (steps % 3) take one 16-byte load per row (v0, v3, v6, v9), then the K tail. */
#define QC_DQ(a0, a1, a2, a3, l)                                                        \
    "ld1 {v12.16b-v15.16b}, [%[w]], #64\n\t"                                             \
    "sdot v16.4s, v12.16b, " a0 ".4b[" l "]\n\tsdot v17.4s, v13.16b, " a0 ".4b[" l "]\n\t" \
    "sdot v18.4s, v14.16b, " a0 ".4b[" l "]\n\tsdot v19.4s, v15.16b, " a0 ".4b[" l "]\n\t" \
    "sdot v20.4s, v12.16b, " a1 ".4b[" l "]\n\tsdot v21.4s, v13.16b, " a1 ".4b[" l "]\n\t" \
    "sdot v22.4s, v14.16b, " a1 ".4b[" l "]\n\tsdot v23.4s, v15.16b, " a1 ".4b[" l "]\n\t" \
    "sdot v24.4s, v12.16b, " a2 ".4b[" l "]\n\tsdot v25.4s, v13.16b, " a2 ".4b[" l "]\n\t" \
    "sdot v26.4s, v14.16b, " a2 ".4b[" l "]\n\tsdot v27.4s, v15.16b, " a2 ".4b[" l "]\n\t" \
    "sdot v28.4s, v12.16b, " a3 ".4b[" l "]\n\tsdot v29.4s, v13.16b, " a3 ".4b[" l "]\n\t" \
    "sdot v30.4s, v14.16b, " a3 ".4b[" l "]\n\tsdot v31.4s, v15.16b, " a3 ".4b[" l "]\n\t"
/* 16 k of the four rows held in a0..a3 */
#define QC_D16(a0, a1, a2, a3)                                                          \
    QC_DQ(a0, a1, a2, a3, "0") QC_DQ(a0, a1, a2, a3, "1")                              \
    QC_DQ(a0, a1, a2, a3, "2") QC_DQ(a0, a1, a2, a3, "3")
#define QC_D48                                                                          \
    "ld1 {v0.16b-v2.16b}, [%[p0]], #48\n\tld1 {v3.16b-v5.16b}, [%[p1]], #48\n\t"         \
    "ld1 {v6.16b-v8.16b}, [%[p2]], #48\n\tld1 {v9.16b-v11.16b}, [%[p3]], #48\n\t"        \
    QC_D16("v0", "v3", "v6", "v9") QC_D16("v1", "v4", "v7", "v10")                      \
    QC_D16("v2", "v5", "v8", "v11")
#define QC_D16LD                                                                        \
    "ldr q0, [%[p0]], #16\n\tldr q3, [%[p1]], #16\n\tldr q6, [%[p2]], #16\n\t"          \
    "ldr q9, [%[p3]], #16\n\t" QC_D16("v0", "v3", "v6", "v9")
/* The K tail (tl = K % 16 > 0 bytes): the 16 bytes ending at the row's end, moved down by
   16 - tl with TBL (index >= 16 gives 0): the tail at bytes 0 .. tl-1, zeros above (the
   packed weights are zero there too). In bounds: it reads inside the row. */
#define QC_DTAIL                                                                       \
    "ldr q1, [%[ix]]\n\tsub %[p0], %[p0], %[bk]\n\tsub %[p1], %[p1], %[bk]\n\t"         \
    "sub %[p2], %[p2], %[bk]\n\tsub %[p3], %[p3], %[bk]\n\t"                             \
    "ldr q0, [%[p0]]\n\tldr q3, [%[p1]]\n\tldr q6, [%[p2]]\n\tldr q9, [%[p3]]\n\t"        \
    "tbl v0.16b, {v0.16b}, v1.16b\n\ttbl v3.16b, {v3.16b}, v1.16b\n\t"                   \
    "tbl v6.16b, {v6.16b}, v1.16b\n\ttbl v9.16b, {v9.16b}, v1.16b\n\t"                   \
    QC_D16("v0", "v3", "v6", "v9")
#define QC_Z4(a, b, c_, d) "movi " a ".4s, #0\n\tmovi " b ".4s, #0\n\tmovi " c_ ".4s, #0\n\tmovi " d ".4s, #0\n\t"
#define QC_OP16(op, r0, r1, r2, r3)                                                     \
    op " v16.4s, v16.4s, " r0 ".4s\n\t" op " v17.4s, v17.4s, " r1 ".4s\n\t"             \
    op " v18.4s, v18.4s, " r2 ".4s\n\t" op " v19.4s, v19.4s, " r3 ".4s\n\t"             \
    op " v20.4s, v20.4s, " r0 ".4s\n\t" op " v21.4s, v21.4s, " r1 ".4s\n\t"             \
    op " v22.4s, v22.4s, " r2 ".4s\n\t" op " v23.4s, v23.4s, " r3 ".4s\n\t"             \
    op " v24.4s, v24.4s, " r0 ".4s\n\t" op " v25.4s, v25.4s, " r1 ".4s\n\t"             \
    op " v26.4s, v26.4s, " r2 ".4s\n\t" op " v27.4s, v27.4s, " r3 ".4s\n\t"             \
    op " v28.4s, v28.4s, " r0 ".4s\n\t" op " v29.4s, v29.4s, " r1 ".4s\n\t"             \
    op " v30.4s, v30.4s, " r2 ".4s\n\t" op " v31.4s, v31.4s, " r3 ".4s\n\t"
#define QC_SCVTF4(a, b, c_, d)                                                          \
    "scvtf " a ".4s, " a ".4s\n\tscvtf " b ".4s, " b ".4s\n\t"                          \
    "scvtf " c_ ".4s, " c_ ".4s\n\tscvtf " d ".4s, " d ".4s\n\t"
/* The full 4 x 16 tile stored from registers, one ST1 of 64 bytes per output row at fo: the
   int32 sums (f32 = 0), or after the float32 epilogue (f32 = 1; act none; the same operations in
   the same order as qc_ep_f32_one: int32 bias, convert, times scale, plus fbias). With fo NULL
   the sums go to tile[4][16] instead. */
#define QC_DEPF32                                                                       \
    "cbz %[fo], 20f\n\tcbz %[f32], 24f\n\t"                                              \
    "cbz %[bias], 21f\n\tld1 {v0.4s-v3.4s}, [%[bias]]\n\t"                               \
    QC_OP16("add", "v0", "v1", "v2", "v3") "21:\n\t"                                     \
    QC_SCVTF4("v16", "v17", "v18", "v19") QC_SCVTF4("v20", "v21", "v22", "v23")         \
    QC_SCVTF4("v24", "v25", "v26", "v27") QC_SCVTF4("v28", "v29", "v30", "v31")         \
    "cbz %[pc], 22f\n\tld1 {v0.4s-v3.4s}, [%[scale]]\n\tb 23f\n"                         \
    "22:\n\tld1r {v0.4s}, [%[scale]]\n\tmov v1.16b, v0.16b\n\tmov v2.16b, v0.16b\n\t"    \
    "mov v3.16b, v0.16b\n"                                                               \
    "23:\n\t" QC_OP16("fmul", "v0", "v1", "v2", "v3")                                   \
    "cbz %[fbias], 24f\n\tld1 {v0.4s-v3.4s}, [%[fbias]]\n\t"                             \
    QC_OP16("fadd", "v0", "v1", "v2", "v3") "24:\n\t"                                    \
    "st1 {v16.4s-v19.4s}, [%[fo]], %[ldo]\n\tst1 {v20.4s-v23.4s}, [%[fo]], %[ldo]\n\t"   \
    "st1 {v24.4s-v27.4s}, [%[fo]], %[ldo]\n\tst1 {v28.4s-v31.4s}, [%[fo]]\n\tb 25f\n"    \
    "20:\n\tst1 {v16.4s-v19.4s}, [%[t]], #64\n\tst1 {v20.4s-v23.4s}, [%[t]], #64\n\t"    \
    "st1 {v24.4s-v27.4s}, [%[t]], #64\n\tst1 {v28.4s-v31.4s}, [%[t]], #64\n"             \
    "25:\n\t"

/* steps >= 1 full 16-k steps of the 4 x 16 tile from zero, then the K tail of `tail` bytes
   (0: none; index: its TBL indices, see qc_gemm_s8_run); advances p0..p3 and w. With fout
   (the output at row m, column n; row stride ldo_bytes) the tile is stored there: int32 sums,
   or with f32_ the float32 epilogue ep_bias / ep_scale (per channel: pc_) / ep_fbias run in
   registers (QC_DEPF32). Without fout the int32 sums go to tile. */
#define QC_DOT_ASM(steps, tail, index, tile, fout, ldo_bytes, f32_, ep_bias, ep_scale, pc_, ep_fbias) \
    do {                                                                               \
        long qc_tri = (steps) / 3, qc_one = (steps) % 3, qc_tl = (tail), qc_bk = 16 - (tail); \
        const uint8_t *qc_ix = (index);                                                \
        int32_t *qc_t = (tile);                                                        \
        float *qc_fo = (fout);                                                         \
        __asm__ volatile(QC_Z4("v16", "v17", "v18", "v19") QC_Z4("v20", "v21", "v22", "v23") \
                         QC_Z4("v24", "v25", "v26", "v27") QC_Z4("v28", "v29", "v30", "v31") \
                         "cbz %[n], 2f\n"                                              \
                         "1:\n\t" QC_D48 "subs %[n], %[n], #1\n\tb.ne 1b\n"            \
                         "2:\n\tcbz %[one], 4f\n"                                       \
                         "5:\n\t" QC_D16LD "subs %[one], %[one], #1\n\tb.ne 5b\n"      \
                         "4:\n\tcbz %[tl], 3f\n\t" QC_DTAIL                              \
                         "3:\n\t" QC_DEPF32                                             \
                         : [p0] "+r"(p0), [p1] "+r"(p1), [p2] "+r"(p2), [p3] "+r"(p3), \
                           [w] "+r"(w), [n] "+r"(qc_tri), [one] "+r"(qc_one), [t] "+r"(qc_t), \
                           [fo] "+r"(qc_fo)                                            \
                         : [tl] "r"(qc_tl), [bk] "r"(qc_bk), [ix] "r"(qc_ix),           \
                           [ldo] "r"((long)(ldo_bytes)), [f32] "r"((long)(f32_)),       \
                           [bias] "r"(ep_bias),                                         \
                           [scale] "r"(ep_scale), [pc] "r"((long)(pc_)), [fbias] "r"(ep_fbias) \
                         : "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", \
                           "v10", "v11", "v12", "v13", "v14", "v15", "v16", "v17", "v18", \
                           "v19", "v20", "v21", "v22", "v23", "v24", "v25", "v26", "v27", \
                           "v28", "v29", "v30", "v31", "memory", "cc");                \
    } while (0)
#endif

#define QC_EPROW(r)                                                                   \
    do {                                                                              \
        if (MR > r) {                                                                 \
            qc_ep_part4(c, c##r##0, m + r, n, cols);                                  \
            if (NG > 1) { qc_ep_part4(c, c##r##1, m + r, n + 4, cols - 4); }          \
            if (NG > 2) { qc_ep_part4(c, c##r##2, m + r, n + 8, cols - 8); }          \
            if (NG > 3) { qc_ep_part4(c, c##r##3, m + r, n + 12, cols - 12); }        \
        }                                                                             \
    } while (0)

/* Rows m .. m+MR-1 x the panel at wp (NG groups of 4 columns, cols of them valid). MR and NG
   are constants at every call, so the unused accumulators and branches fold away. */
QC_INLINE void qc_dot_tile(const int MR, const int NG, int K, const int8_t *A, int lda,
                           const int8_t *wp, const struct qc_ep_ctx *cin, int m, int n, int cols,
                           const uint8_t *ix)
{
    const struct qc_ep_ctx cl = *cin, *c = &cl;   /* a local copy: stays in registers */
    const int full = K & ~15;
    const int32x4_t z = vdupq_n_s32(0);
    int32x4_t c00 = z, c01 = z, c02 = z, c03 = z, c10 = z, c11 = z, c12 = z, c13 = z;
    int32x4_t c20 = z, c21 = z, c22 = z, c23 = z, c30 = z, c31 = z, c32 = z, c33 = z;
    int8x16_t x0, x1 = vdupq_n_s8(0), x2 = x1, x3 = x1, w0, w1 = x1, w2 = x1, w3 = x1;
    const int8_t *w = wp;
    const int8_t *p0 = A + (size_t)m * (size_t)lda, *p1 = p0 + lda, *p2 = p1 + lda;
    const int8_t *p3 = p2 + lda;
    int k;
    (void)ix;
#if defined(QC_DOT_ASM)
    if (MR == 4 && NG == 4 && full) {
        int32_t t[64];
        const struct qc_epilogue *ep = c->ep;
        const int f32 = c->mode == QC_OUT_F32;
        void *direct = NULL;   /* the tile goes straight to the output from registers */
        if (cols == 16 && (c->mode == QC_OUT_I32 || (f32 && ep->act == QC_ACT_NONE))) {
            direct = f32 ? (void *)((float *)c->out + (size_t)m * (size_t)c->ldo + (size_t)n)
                         : (void *)((int32_t *)c->out + (size_t)m * (size_t)c->ldo + (size_t)n);
        }
        QC_DOT_ASM(full >> 4, K - full, ix, t, direct, (long)c->ldo * 4, f32,
                   f32 && ep->bias ? ep->bias + n : NULL,
                   f32 ? ep->scale + (ep->per_channel ? n : 0) : NULL, f32 && ep->per_channel,
                   f32 && ep->fbias ? ep->fbias + n : NULL);
        if (direct) {
            return;
        }
        qc_ep_tile(c, t, 16, 4, cols, m, n);
        return;
    } else
#endif
    {
        for (k = full >> 4; k > 0; --k) {
            QC_STEP(p0, p1, p2, p3);
            p0 += 16; p1 += 16; p2 += 16; p3 += 16;
        }
    }
    if (K > full) {   /* the tail through zero-padded copies (the packed weights are zero there) */
        int8_t t[4][16];
        memset(t, 0, sizeof t);
        memcpy(t[0], p0, (size_t)(K - full));
        if (MR > 1) { memcpy(t[1], p1, (size_t)(K - full)); }
        if (MR > 2) { memcpy(t[2], p2, (size_t)(K - full)); }
        if (MR > 3) { memcpy(t[3], p3, (size_t)(K - full)); }
        QC_STEP(t[0], t[1], t[2], t[3]);
    }
    QC_EPROW(0); QC_EPROW(1); QC_EPROW(2); QC_EPROW(3);
}

#define QC_ROWS(mr)                                                                   \
    do {                                                                              \
        switch (ng) {                                                                 \
        case 4: qc_dot_tile(mr, 4, K, A, lda, wp, c, m, n, cols, ix); break;              \
        case 3: qc_dot_tile(mr, 3, K, A, lda, wp, c, m, n, cols, ix); break;              \
        case 2: qc_dot_tile(mr, 2, K, A, lda, wp, c, m, n, cols, ix); break;              \
        default: qc_dot_tile(mr, 1, K, A, lda, wp, c, m, n, cols, ix); break;             \
        }                                                                             \
    } while (0)

void qc_gemm_s8_run(int M, int N, int K, const int8_t *A, int lda, const int8_t *Wp,
                    const struct qc_ep_ctx *c)
{
    const size_t Kp = (size_t)((K + 15) & ~15);
    const int tl = K & 15;
    uint8_t ix[16];   /* the K tail's TBL indices (QC_DTAIL): byte i <- byte i + 16 - tl */
    int m, n;
    for (m = 0; m < 16; ++m) {
        ix[m] = (uint8_t)(m < tl ? m + 16 - tl : 255);
    }
    for (n = 0; n < N; n += 16) {   /* one weight panel (16 x Kp bytes) against every row */
        const int cols = N - n < 16 ? N - n : 16, ng = (cols + 3) / 4;
        const int8_t *wp = Wp + (size_t)n * Kp;
        for (m = 0; m + 4 <= M; m += 4) {
            QC_ROWS(4);
        }
        if (M - m == 3) {
            QC_ROWS(3);
        } else if (M - m == 2) {
            QC_ROWS(2);
        } else if (M - m == 1) {
            QC_ROWS(1);
        }
    }
}
#else
typedef int qc_gemm_s8_dot_not_compiled; /* ISO C: no empty translation unit */
#endif
