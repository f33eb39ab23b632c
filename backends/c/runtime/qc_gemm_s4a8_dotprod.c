/* qc_gemm_s4a8 with SDOT (QC_KERNEL_DOTPROD; packing_s4 "dotprod" layout): per group of 4
   columns and block of 32 k, four 16-byte loads give the eight SDOT operands (v << 4 and
   v & 0xF0, 16 x the nibbles); SDOT by element multiplies them with 4 k of an activation row.
   The int32 sums stay 16 x the products (zero points are packed as 16 zp') until SCVTF with 4
   fraction bits divides by 16 exactly. Tiles of 4 rows x 4 columns; single rows (M = 1 decode,
   M % 4 tails) take 8 columns at a time and stream the weights once. Bit-exact with the portable
   qc_gemm_s4a8 (same int32 sums, same float32 steps). */
#include "qc_kernels.h"

#if defined(QC_KERNEL_DOTPROD) && !defined(QC_KERNEL_I8MM)
#if !defined(__ARM_FEATURE_DOTPROD)
#error "QC_KERNEL_DOTPROD needs a compiler target with the dot-product extension (e.g. -mcpu=cortex-a76)"
#endif
#include <arm_neon.h>
#include <string.h>

#define QC_LO(v) vreinterpretq_s8_u8(vshlq_n_u8(v, 4))
#define QC_HI(v) vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0xF0)))

/* 16 x the int32 sums of one row's block (a0: k 0..15, a1: k 16..31) with one group */
static inline int32x4_t qc_s4a8_dot(const uint8_t *w, int8x16_t a0, int8x16_t a1)
{
    const uint8x16x4_t v = vld1q_u8_x4(w);
    int32x4_t s0 = vdotq_laneq_s32(vdupq_n_s32(0), QC_LO(v.val[0]), a0, 0);
    int32x4_t s1 = vdotq_laneq_s32(vdupq_n_s32(0), QC_HI(v.val[0]), a1, 0);
    s0 = vdotq_laneq_s32(s0, QC_LO(v.val[1]), a0, 1);
    s1 = vdotq_laneq_s32(s1, QC_HI(v.val[1]), a1, 1);
    s0 = vdotq_laneq_s32(s0, QC_LO(v.val[2]), a0, 2);
    s1 = vdotq_laneq_s32(s1, QC_HI(v.val[2]), a1, 2);
    s0 = vdotq_laneq_s32(s0, QC_LO(v.val[3]), a0, 3);
    s1 = vdotq_laneq_s32(s1, QC_HI(v.val[3]), a1, 3);
    return vaddq_s32(s0, s1);
}

static inline int32x4_t qc_s4a8_zp(const int8_t *zp)
{
    int32_t z4;
    memcpy(&z4, zp, 4);
    return vmovl_s16(vget_low_s16(vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(z4)))));
}

/* acc + float(d / 16) * (sa * ws): the portable code's float32 steps */
#define QC_ACC(acc, d, sa, ws) vaddq_f32(acc, vmulq_f32(vcvtq_n_f32_s32(d, 4), vmulq_n_f32(ws, sa)))

static void qc_s4a8_store(float *o, int n0, int N, float32x4_t acc, const float *bias)
{
    float t[4];
    int c;
    if (n0 + 4 <= N) {
        vst1q_f32(o + n0, bias ? vaddq_f32(acc, vld1q_f32(bias + n0)) : acc);
        return;
    }
    vst1q_f32(t, acc);
    for (c = 0; n0 + c < N; ++c) {
        o[n0 + c] = bias ? t[c] + bias[n0 + c] : t[c];
    }
}

/* one row, groups g0 .. G-1, two groups per step where there are two */
static void qc_s4a8_row(int N, int nb, const int8_t *qa, const float *sa, const int32_t *suma, const uint8_t *Wp,
                        const float *ws, const int8_t *wzp, const float *bias, float *out)
{
    const int G = (N + 3) / 4;
    const size_t gs = (size_t)nb * 64;
    int g, b;
    for (g = 0; g + 2 <= G; g += 2) {
        const uint8_t *w = Wp + (size_t)g * gs;
        const float *s = ws + (size_t)g * nb * 4;
        const int8_t *z = wzp ? wzp + (size_t)g * nb * 4 : NULL;
        float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
        for (b = 0; b < nb; ++b) {
            const int8x16_t a0 = vld1q_s8(qa + 32 * b), a1 = vld1q_s8(qa + 32 * b + 16);
            int32x4_t d0 = qc_s4a8_dot(w + 64 * b, a0, a1), d1 = qc_s4a8_dot(w + gs + 64 * b, a0, a1);
            if (z) {
                d0 = vmlsq_n_s32(d0, qc_s4a8_zp(z + 4 * b), suma[b]);
                d1 = vmlsq_n_s32(d1, qc_s4a8_zp(z + (size_t)nb * 4 + 4 * b), suma[b]);
            }
            acc0 = QC_ACC(acc0, d0, sa[b], vld1q_f32(s + 4 * b));
            acc1 = QC_ACC(acc1, d1, sa[b], vld1q_f32(s + (size_t)nb * 4 + 4 * b));
        }
        qc_s4a8_store(out, 4 * g, N, acc0, bias);
        qc_s4a8_store(out, 4 * g + 4, N, acc1, bias);
    }
    for (; g < G; ++g) {
        const uint8_t *w = Wp + (size_t)g * gs;
        const float *s = ws + (size_t)g * nb * 4;
        const int8_t *z = wzp ? wzp + (size_t)g * nb * 4 : NULL;
        float32x4_t acc = vdupq_n_f32(0.0f);
        for (b = 0; b < nb; ++b) {
            int32x4_t d = qc_s4a8_dot(w + 64 * b, vld1q_s8(qa + 32 * b), vld1q_s8(qa + 32 * b + 16));
            if (z) {
                d = vmlsq_n_s32(d, qc_s4a8_zp(z + 4 * b), suma[b]);
            }
            acc = QC_ACC(acc, d, sa[b], vld1q_f32(s + 4 * b));
        }
        qc_s4a8_store(out, 4 * g, N, acc, bias);
    }
}

/* 16 x the sums of one row with the unpacked operands: one SDOT chain */
#define QC_DOT_ROW(p) \
    vdotq_laneq_s32(vdotq_laneq_s32(vdotq_laneq_s32(vdotq_laneq_s32(vdotq_laneq_s32(vdotq_laneq_s32( \
    vdotq_laneq_s32(vdotq_laneq_s32(vdupq_n_s32(0), l0, a0_##p, 0), h0, a1_##p, 0), l1, a0_##p, 1), h1, a1_##p, 1), \
    l2, a0_##p, 2), h2, a1_##p, 2), l3, a0_##p, 3), h3, a1_##p, 3)

static void qc_s4a8_rows4(int N, int nb, const int8_t *qa, const float *sa, const int32_t *suma, const uint8_t *Wp,
                          const float *ws, const int8_t *wzp, const float *bias, float *out)
{
    const int G = (N + 3) / 4;
    const size_t as = (size_t)nb * 32;
    int g, b;
    for (g = 0; g < G; ++g) {
        const uint8_t *w = Wp + (size_t)g * nb * 64;
        const float *s = ws + (size_t)g * nb * 4;
        const int8_t *z = wzp ? wzp + (size_t)g * nb * 4 : NULL;
        const int8_t *q0 = qa, *q1 = qa + as, *q2 = qa + 2 * as, *q3 = qa + 3 * as;
        float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0, acc2 = acc0, acc3 = acc0;
        for (b = 0; b < nb; ++b) {
            const uint8x16x4_t v = vld1q_u8_x4(w + 64 * b);
            const int8x16_t l0 = QC_LO(v.val[0]), h0 = QC_HI(v.val[0]), l1 = QC_LO(v.val[1]), h1 = QC_HI(v.val[1]);
            const int8x16_t l2 = QC_LO(v.val[2]), h2 = QC_HI(v.val[2]), l3 = QC_LO(v.val[3]), h3 = QC_HI(v.val[3]);
            const int8x16_t a0_0 = vld1q_s8(q0 + 32 * b), a1_0 = vld1q_s8(q0 + 32 * b + 16);
            const int8x16_t a0_1 = vld1q_s8(q1 + 32 * b), a1_1 = vld1q_s8(q1 + 32 * b + 16);
            const int8x16_t a0_2 = vld1q_s8(q2 + 32 * b), a1_2 = vld1q_s8(q2 + 32 * b + 16);
            const int8x16_t a0_3 = vld1q_s8(q3 + 32 * b), a1_3 = vld1q_s8(q3 + 32 * b + 16);
            const float32x4_t wv = vld1q_f32(s + 4 * b);
            int32x4_t d0 = QC_DOT_ROW(0), d1 = QC_DOT_ROW(1), d2 = QC_DOT_ROW(2), d3 = QC_DOT_ROW(3);
            if (z) {
                const int32x4_t zv = qc_s4a8_zp(z + 4 * b);
                d0 = vmlsq_n_s32(d0, zv, suma[b]);
                d1 = vmlsq_n_s32(d1, zv, suma[nb + b]);
                d2 = vmlsq_n_s32(d2, zv, suma[2 * nb + b]);
                d3 = vmlsq_n_s32(d3, zv, suma[3 * nb + b]);
            }
            acc0 = QC_ACC(acc0, d0, sa[b], wv);
            acc1 = QC_ACC(acc1, d1, sa[nb + b], wv);
            acc2 = QC_ACC(acc2, d2, sa[2 * nb + b], wv);
            acc3 = QC_ACC(acc3, d3, sa[3 * nb + b], wv);
        }
        qc_s4a8_store(out, 4 * g, N, acc0, bias);
        qc_s4a8_store(out + N, 4 * g, N, acc1, bias);
        qc_s4a8_store(out + 2 * (size_t)N, 4 * g, N, acc2, bias);
        qc_s4a8_store(out + 3 * (size_t)N, 4 * g, N, acc3, bias);
    }
}

void qc_gemm_s4a8(int M, int N, int K, const int8_t *qa, const float *sa, const int32_t *suma,
                  const uint8_t *Wp, const float *ws, const int8_t *wzp, const float *bias, float *out)
{
    const int nb = (K + 31) / 32;
    int m = 0;
    for (; m + 4 <= M; m += 4) {
        const size_t i = (size_t)m * nb;
        qc_s4a8_rows4(N, nb, qa + i * 32, sa + i, suma + i, Wp, ws, wzp, bias, out + (size_t)m * N);
    }
    for (; m < M; ++m) {
        const size_t i = (size_t)m * nb;
        qc_s4a8_row(N, nb, qa + i * 32, sa + i, suma + i, Wp, ws, wzp, bias, out + (size_t)m * N);
    }
}
#endif
