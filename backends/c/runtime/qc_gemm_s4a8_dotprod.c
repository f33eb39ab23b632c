/* qc_gemm_s4a8 with SDOT (QC_KERNEL_DOTPROD; packing_s4 "dotprod" layout): per group of 4
   columns and block of 32 k, one 64-byte load gives the eight SDOT operands (v << 4 and
   v & 0xF0, 16 x the nibbles); SDOT by element multiplies them with 4 k of an activation row.
   The int32 sums stay 16 x the products (zero points are packed as 16 zp') until SCVTF with 4
   fraction bits divides by 16 exactly. One SDOT chain per row, block and group, started at
   -16 zp' * suma (one SMULL; the quantizer stores -suma as int16) instead of zero, so the zero
   point costs no extra instruction in the chain; then SCVTF, FMUL (ws), FMLA (sa by element):
   acc = fmaf(float(d) * ws, sa, acc). The activations come in qc_quantize_q8b32's dotprod
   layout (tiles of 8 rows, block-major within a tile): two whole tiles at a time (16 rows, a prefill chunk) x 4 columns
   unpack each weight block once for 16 rows, one row's 32 activation bytes per load (16
   accumulators + 8 operands + the row's registers fill the 32 vector registers); a last tile
   of 8 rows x 4 columns loads its 8 rows' activations in pairs and scales and sums as vectors; a
   last partial tile takes 4 rows, then single rows; a single row (M = 1 decode) takes 4 groups
   (16 columns) per step. Bit-exact with the portable qc_gemm_s4a8 (same int32 sums, same
   float32 steps). */
#include "qc_kernels.h"

#if defined(QC_KERNEL_DOTPROD) && !defined(QC_KERNEL_I8MM)
#if !defined(__ARM_FEATURE_DOTPROD)
#error "QC_KERNEL_DOTPROD needs a compiler target with the dot-product extension (e.g. -mcpu=cortex-a76)"
#endif
#include <arm_neon.h>
#include <string.h>

#define QC_INLINE static inline __attribute__((always_inline))
/* gcc's first scheduling pass interleaves the tile's 8 SDOT chains and spills the accumulators */
#if defined(__GNUC__) && !defined(__clang__)
#define QC_NO_SCHED1 __attribute__((optimize("no-schedule-insns")))
#else
#define QC_NO_SCHED1
#endif
#define QC_LO(v) vreinterpretq_s8_u8(vshlq_n_u8(v, 4))
#define QC_HI(v) vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0xF0)))

/* d + 16 x the sums of one row's block (a0: k 0..15, a1: k 16..31) with one group: one chain */
QC_INLINE int32x4_t qc_s4a8_dot(int32x4_t d, const uint8_t *w, int8x16_t a0, int8x16_t a1)
{
    const uint8x16x4_t v = vld1q_u8_x4(w);
    d = vdotq_laneq_s32(d, QC_LO(v.val[0]), a0, 0);
    d = vdotq_laneq_s32(d, QC_HI(v.val[0]), a1, 0);
    d = vdotq_laneq_s32(d, QC_LO(v.val[1]), a0, 1);
    d = vdotq_laneq_s32(d, QC_HI(v.val[1]), a1, 1);
    d = vdotq_laneq_s32(d, QC_LO(v.val[2]), a0, 2);
    d = vdotq_laneq_s32(d, QC_HI(v.val[2]), a1, 2);
    d = vdotq_laneq_s32(d, QC_LO(v.val[3]), a0, 3);
    return vdotq_laneq_s32(d, QC_HI(v.val[3]), a1, 3);
}

/* the 4 values 16 zp' of one (group, block), int16 */
QC_INLINE int16x4_t qc_s4a8_zp(const int8_t *zp)
{
    uint32_t z4;
    memcpy(&z4, zp, 4);
    return vget_low_s16(vmovl_s8(vcreate_s8((uint64_t)z4))); /* LDR S, SXTL (vdup_n_s32 added a DUP) */
}

/* fmaf(float(d / 16) * ws, sa, acc): the portable code's float32 steps (SCVTF, FMUL, FMLA; sa
   a scalar, or lane l of the vector sv) */
#define QC_ACC(acc, d, wv, sa) vfmaq_n_f32(acc, vmulq_f32(vcvtq_n_f32_s32(d, 4), wv), sa)
#define QC_ACC_LANE(acc, d, wv, sv, l) vfmaq_laneq_f32(acc, vmulq_f32(vcvtq_n_f32_s32(d, 4), wv), sv, l)

static void qc_s4a8_store_tail(float *o, int n0, int N, float32x4_t acc, const float *bias)
{
    float t[4];
    int c;
    vst1q_f32(t, acc);
    for (c = 0; n0 + c < N; ++c) {
        o[n0 + c] = bias ? t[c] + bias[n0 + c] : t[c];
    }
}

/* columns n0..n0+3 of a row (those < N) = acc (+ bias) */
QC_INLINE void qc_s4a8_store(float *o, int n0, int N, float32x4_t acc, const float *bias)
{
    if (n0 + 4 <= N) {
        vst1q_f32(o + n0, bias ? vaddq_f32(acc, vld1q_f32(bias + n0)) : acc);
    } else {
        qc_s4a8_store_tail(o, n0, N, acc, bias);
    }
}

/* one row whose block b is at qa + 32 r b, sa[r b], nu[r b] (r: the rows of its tile), one
   super-group (16 columns) per step: per block, the 4 groups' weights, scales (one 64-byte load)
   and zero points (one 16-byte load, two SXTL) */
#define QC_COL(c, zc) do { \
        const int32x4_t d_ = qc_s4a8_dot(zc, w + 256 * b + 64 * (c), a.val[0], a.val[1]); \
        acc##c = QC_ACC(acc##c, d_, sw.val[c], f); \
    } while (0)

QC_INLINE void qc_s4a8_row_z(const int hz, int N, int nb, int r, const int8_t *qa, const float *sa,
                             const int16_t *nu, const uint8_t *Wp, const float *ws, const int8_t *wzp,
                             const float *bias, float *out)
{
    const int S = (N + 15) / 16;
    int sg, b;
    for (sg = 0; sg < S; ++sg) {
        const uint8_t *w = Wp + (size_t)sg * nb * 256;
        const float *s = ws + (size_t)sg * nb * 16;
        const int8_t *z = hz ? wzp + (size_t)sg * nb * 16 : NULL;
        float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0, acc2 = acc0, acc3 = acc0;
        for (b = 0; b < nb; ++b) {
            const int8x16x2_t a = vld1q_s8_x2(qa + (size_t)32 * r * b);
            const float f = sa[(size_t)r * b];
            const float32x4x4_t sw = vld1q_f32_x4(s + 16 * b);
            int32x4_t z0 = vdupq_n_s32(0), z1 = z0, z2 = z0, z3 = z0;
            if (hz) {
                const int8x16_t zz = vld1q_s8(z + 16 * b);
                const int16x8_t z01 = vmovl_s8(vget_low_s8(zz)), z23 = vmovl_high_s8(zz);
                const int16x8_t n8 = vdupq_n_s16(nu[(size_t)r * b]);
                z0 = vmull_s16(vget_low_s16(z01), vget_low_s16(n8));
                z1 = vmull_high_s16(z01, n8);
                z2 = vmull_s16(vget_low_s16(z23), vget_low_s16(n8));
                z3 = vmull_high_s16(z23, n8);
            }
            QC_COL(0, z0);
            QC_COL(1, z1);
            QC_COL(2, z2);
            QC_COL(3, z3);
        }
        qc_s4a8_store(out, 16 * sg, N, acc0, bias);
        qc_s4a8_store(out, 16 * sg + 4, N, acc1, bias);
        qc_s4a8_store(out, 16 * sg + 8, N, acc2, bias);
        qc_s4a8_store(out, 16 * sg + 12, N, acc3, bias);
    }
}

QC_NO_SCHED1 static void qc_s4a8_row(int N, int nb, int r, const int8_t *qa, const float *sa, const int16_t *nu,
                        const uint8_t *Wp, const float *ws, const int8_t *wzp, const float *bias, float *out)
{
    if (wzp) {
        qc_s4a8_row_z(1, N, nb, r, qa, sa, nu, Wp, ws, wzp, bias, out);
    } else {
        qc_s4a8_row_z(0, N, nb, r, qa, sa, nu, Wp, ws, wzp, bias, out);
    }
}

/* one row i of a tile: the chain started at -16 zp' * suma (lane i of nu = -suma) or at zero,
   the block's 8 SDOT with the unpacked weights, then acc_i = fmaf(float(d / 16) * ws, sa, acc_i) */
#define QC_DOT_ROW(d, a0, a1) \
    vdotq_laneq_s32(vdotq_laneq_s32(vdotq_laneq_s32(vdotq_laneq_s32(vdotq_laneq_s32(vdotq_laneq_s32( \
    vdotq_laneq_s32(vdotq_laneq_s32(d, l0, a0, 0), h0, a1, 0), l1, a0, 1), h1, a1, 1), \
    l2, a0, 2), h2, a1, 2), l3, a0, 3), h3, a1, 3)
#define QC_TROW(acc, a0, a1, z0, sv, lane) \
    acc = QC_ACC_LANE(acc, QC_DOT_ROW(z0, a0, a1), wv, sv, lane)
/* rows i and j = i + 1: their 64 activation bytes in one load */
#define QC_TPAIR(i, j, zi, zj, sv, lane) do { \
        const int8x16x4_t a_ = vld1q_s8_x4(q + 32 * (i)); \
        QC_TROW(acc##i, a_.val[0], a_.val[1], zi, sv, lane); \
        QC_TROW(acc##j, a_.val[2], a_.val[3], zj, sv, (lane) + 1); \
    } while (0)
#define QC_Z8(i) (hz ? vmull_laneq_s16(z16, nu, i) : vdupq_n_s32(0))
#define QC_Z4(i) (hz ? vmull_lane_s16(z16, nu4, i) : vdupq_n_s32(0))

/* rows 0..R-1 (R = 8 or 4) of a tile of r rows (block b of row i at qa + 32 (r b + i), sa / nu
   [r b + i]): each group's block unpacked once for the R rows */
QC_INLINE void qc_s4a8_tile(const int R, const int hz, int N, int nb, int r, const int8_t *qa, const float *sa,
                            const int16_t *nv, const uint8_t *Wp, const float *ws, const int8_t *wzp,
                            const float *bias, float *out)
{
    const int G = (N + 15) / 16 * 4;
    int g, b;
    for (g = 0; g < G; ++g) {
        const size_t t = (size_t)(g / 4) * nb * 4 + (size_t)(g % 4); /* block b: t + 4 b */
        const uint8_t *w = Wp + t * 64;
        const float *s = ws + t * 4;
        const int8_t *z = hz ? wzp + t * 4 : NULL;
        float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0, acc2 = acc0, acc3 = acc0;
        float32x4_t acc4 = acc0, acc5 = acc0, acc6 = acc0, acc7 = acc0;
        for (b = 0; b < nb; ++b) {
            const uint8x16x4_t v = vld1q_u8_x4(w + 256 * b);
            const int8x16_t l0 = QC_LO(v.val[0]), h0 = QC_HI(v.val[0]), l1 = QC_LO(v.val[1]), h1 = QC_HI(v.val[1]);
            const int8x16_t l2 = QC_LO(v.val[2]), h2 = QC_HI(v.val[2]), l3 = QC_LO(v.val[3]), h3 = QC_HI(v.val[3]);
            const float32x4_t wv = vld1q_f32(s + 16 * b);
            const int8_t *q = qa + (size_t)32 * r * b;
            const float *f = sa + (size_t)r * b;
            const int16_t *u = nv + (size_t)r * b;
            const int16x4_t z16 = hz ? qc_s4a8_zp(z + 16 * b) : vdup_n_s16(0);
            const float32x4_t f0 = vld1q_f32(f);
            if (R == 8) {
                const float32x4_t f1 = vld1q_f32(f + 4);
                const int16x8_t nu = hz ? vld1q_s16(u) : vdupq_n_s16(0);
                (void)nu;
                QC_TPAIR(0, 1, QC_Z8(0), QC_Z8(1), f0, 0);
                QC_TPAIR(2, 3, QC_Z8(2), QC_Z8(3), f0, 2);
                QC_TPAIR(4, 5, QC_Z8(4), QC_Z8(5), f1, 0);
                QC_TPAIR(6, 7, QC_Z8(6), QC_Z8(7), f1, 2);
            } else {
                const int16x4_t nu4 = hz ? vld1_s16(u) : vdup_n_s16(0);
                (void)nu4;
                QC_TPAIR(0, 1, QC_Z4(0), QC_Z4(1), f0, 0);
                QC_TPAIR(2, 3, QC_Z4(2), QC_Z4(3), f0, 2);
            }
        }
        qc_s4a8_store(out, 4 * g, N, acc0, bias);
        qc_s4a8_store(out + N, 4 * g, N, acc1, bias);
        qc_s4a8_store(out + 2 * (size_t)N, 4 * g, N, acc2, bias);
        qc_s4a8_store(out + 3 * (size_t)N, 4 * g, N, acc3, bias);
        if (R == 8) {
            qc_s4a8_store(out + 4 * (size_t)N, 4 * g, N, acc4, bias);
            qc_s4a8_store(out + 5 * (size_t)N, 4 * g, N, acc5, bias);
            qc_s4a8_store(out + 6 * (size_t)N, 4 * g, N, acc6, bias);
            qc_s4a8_store(out + 7 * (size_t)N, 4 * g, N, acc7, bias);
        }
    }
}

QC_NO_SCHED1 static void qc_s4a8_tile8(int N, int nb, const int8_t *qa, const float *sa, const int16_t *nu, const uint8_t *Wp,
                          const float *ws, const int8_t *wzp, const float *bias, float *out)
{
    if (wzp) {
        qc_s4a8_tile(8, 1, N, nb, 8, qa, sa, nu, Wp, ws, wzp, bias, out);
    } else {
        qc_s4a8_tile(8, 0, N, nb, 8, qa, sa, nu, Wp, ws, wzp, bias, out);
    }
}

QC_NO_SCHED1 static void qc_s4a8_tile4(int N, int nb, int r, const int8_t *qa, const float *sa, const int16_t *nu,
                          const uint8_t *Wp, const float *ws, const int8_t *wzp, const float *bias, float *out)
{
    if (wzp) {
        qc_s4a8_tile(4, 1, N, nb, r, qa, sa, nu, Wp, ws, wzp, bias, out);
    } else {
        qc_s4a8_tile(4, 0, N, nb, r, qa, sa, nu, Wp, ws, wzp, bias, out);
    }
}

/* rows 0..15 of two whole 8-row tiles (the second's blocks at q1 / f1 / u1): each group's block
   unpacked once for 16 rows; one row at a time (its 32 activation bytes in one load) so that the
   16 accumulators, the 8 operands and the row's registers fit the 32 vector registers */
#define QC_T16ROW(acc, q, fv, lane, nv) do { \
        const int8x16_t a0_ = vld1q_s8((q) + 32 * (lane)), a1_ = vld1q_s8((q) + 32 * (lane) + 16); \
        acc = QC_ACC_LANE(acc, QC_DOT_ROW(hz ? vmull_laneq_s16(z16, nv, lane) : vdupq_n_s32(0), a0_, a1_), \
                          wv, fv, (lane) & 3); \
    } while (0)

QC_INLINE void qc_s4a8_tile16_z(const int hz, int N, int nb, const int8_t *qa, const float *sa, const int16_t *nv,
                                const uint8_t *Wp, const float *ws, const int8_t *wzp, const float *bias, float *out)
{
    const int G = (N + 15) / 16 * 4;
    const int8_t *qa1 = qa + (size_t)8 * nb * 32;
    const float *sa1 = sa + (size_t)8 * nb;
    const int16_t *nv1 = nv + (size_t)16 * nb;
    int g, b;
    for (g = 0; g < G; ++g) {
        const size_t t = (size_t)(g / 4) * nb * 4 + (size_t)(g % 4); /* block b: t + 4 b */
        const uint8_t *w = Wp + t * 64;
        const float *s = ws + t * 4;
        const int8_t *z = hz ? wzp + t * 4 : NULL;
        float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0, acc2 = acc0, acc3 = acc0;
        float32x4_t acc4 = acc0, acc5 = acc0, acc6 = acc0, acc7 = acc0;
        float32x4_t acc8 = acc0, acc9 = acc0, acc10 = acc0, acc11 = acc0;
        float32x4_t acc12 = acc0, acc13 = acc0, acc14 = acc0, acc15 = acc0;
        const int8_t *q0 = qa, *q1 = qa1;
        const float *f0 = sa, *f1 = sa1;
        const int16_t *u0 = nv, *u1 = nv1;
        /* every pointer steps once per block (post-indexed loads), no shared index */
        for (b = nb; b > 0; --b, w += 256, s += 16, q0 += 256, q1 += 256, f0 += 8, f1 += 8, u0 += 8, u1 += 8) {
            /* two LDP, not one LD1 of 4 consecutive registers: that pinned v28-v31 and spilled 2 accumulators */
            const uint8x16_t v0 = vld1q_u8(w), v1 = vld1q_u8(w + 16), v2 = vld1q_u8(w + 32), v3 = vld1q_u8(w + 48);
            const int8x16_t l0 = QC_LO(v0), h0 = QC_HI(v0), l1 = QC_LO(v1), h1 = QC_HI(v1);
            const int8x16_t l2 = QC_LO(v2), h2 = QC_HI(v2), l3 = QC_LO(v3), h3 = QC_HI(v3);
            const float32x4_t wv = vld1q_f32(s);
            const int16x4_t z16 = hz ? qc_s4a8_zp(z) : vdup_n_s16(0);
            int16x8_t nu = hz ? vld1q_s16(u0) : vdupq_n_s16(0);
            float32x4_t fv = vld1q_f32(f0);
            QC_T16ROW(acc0, q0, fv, 0, nu);
            QC_T16ROW(acc1, q0, fv, 1, nu);
            QC_T16ROW(acc2, q0, fv, 2, nu);
            QC_T16ROW(acc3, q0, fv, 3, nu);
            fv = vld1q_f32(f0 + 4);
            QC_T16ROW(acc4, q0, fv, 4, nu);
            QC_T16ROW(acc5, q0, fv, 5, nu);
            QC_T16ROW(acc6, q0, fv, 6, nu);
            QC_T16ROW(acc7, q0, fv, 7, nu);
            nu = hz ? vld1q_s16(u1) : vdupq_n_s16(0);
            fv = vld1q_f32(f1);
            QC_T16ROW(acc8, q1, fv, 0, nu);
            QC_T16ROW(acc9, q1, fv, 1, nu);
            QC_T16ROW(acc10, q1, fv, 2, nu);
            QC_T16ROW(acc11, q1, fv, 3, nu);
            fv = vld1q_f32(f1 + 4);
            QC_T16ROW(acc12, q1, fv, 4, nu);
            QC_T16ROW(acc13, q1, fv, 5, nu);
            QC_T16ROW(acc14, q1, fv, 6, nu);
            QC_T16ROW(acc15, q1, fv, 7, nu);
            if (hz) {
                z += 16;
            }
        }
        if (4 * g + 4 <= N) { /* one pointer down the rows (16 row pointers went to the stack) */
            float *o = out + 4 * g;
            const float32x4_t vb = bias ? vld1q_f32(bias + 4 * g) : vdupq_n_f32(0.0f);
#define QC_ST16(a) do { vst1q_f32(o, bias ? vaddq_f32(a, vb) : (a)); o += N; } while (0)
            QC_ST16(acc0); QC_ST16(acc1); QC_ST16(acc2); QC_ST16(acc3);
            QC_ST16(acc4); QC_ST16(acc5); QC_ST16(acc6); QC_ST16(acc7);
            QC_ST16(acc8); QC_ST16(acc9); QC_ST16(acc10); QC_ST16(acc11);
            QC_ST16(acc12); QC_ST16(acc13); QC_ST16(acc14); QC_ST16(acc15);
#undef QC_ST16
        } else {
            const float32x4_t r[16] = {acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7,
                                       acc8, acc9, acc10, acc11, acc12, acc13, acc14, acc15};
            int i;
            for (i = 0; i < 16; ++i) {
                qc_s4a8_store_tail(out + (size_t)i * N, 4 * g, N, r[i], bias);
            }
        }
    }
}

QC_NO_SCHED1 static void qc_s4a8_tile16(int N, int nb, const int8_t *qa, const float *sa, const int16_t *nu,
                                        const uint8_t *Wp, const float *ws, const int8_t *wzp, const float *bias,
                                        float *out)
{
    if (wzp) {
        qc_s4a8_tile16_z(1, N, nb, qa, sa, nu, Wp, ws, wzp, bias, out);
    } else {
        qc_s4a8_tile16_z(0, N, nb, qa, sa, nu, Wp, ws, wzp, bias, out);
    }
}

void qc_gemm_s4a8(int M, int N, int K, const int8_t *qa, const float *sa, const int32_t *suma,
                  const uint8_t *Wp, const float *ws, const int8_t *wzp, const float *bias, float *out)
{
    const int nb = (K + 31) / 32;
    int t, i;
    for (t = 0; t < M; t += 8) {
        const int r = M - t < 8 ? M - t : 8;
        const size_t o = (size_t)t * nb;
        const int16_t *nu = (const int16_t *)(suma + o); /* the tile's -suma (qc_quantize_q8b32) */
        float *y = out + (size_t)t * N;
        if (M - t >= 16) {
            qc_s4a8_tile16(N, nb, qa + o * 32, sa + o, nu, Wp, ws, wzp, bias, y);
            t += 8;
            continue;
        }
        if (r == 8) {
            qc_s4a8_tile8(N, nb, qa + o * 32, sa + o, nu, Wp, ws, wzp, bias, y);
            continue;
        }
        i = 0;
        if (r >= 4) {
            qc_s4a8_tile4(N, nb, r, qa + o * 32, sa + o, nu, Wp, ws, wzp, bias, y);
            i = 4;
        }
        for (; i < r; ++i) {
            qc_s4a8_row(N, nb, r, qa + (o + i) * 32, sa + o + i, nu + i, Wp, ws, wzp, bias, y + (size_t)i * N);
        }
    }
}
#endif
