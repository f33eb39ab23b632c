/* qc_gemm_s4a8 with SDOT (QC_KERNEL_DOTPROD; packing_s4 "dotprod" layout): per group of 4
   columns and block of 32 k, four 16-byte loads give the eight SDOT operands (v << 4 and
   v & 0xF0, 16 x the nibbles); SDOT by element multiplies them with 4 k of an activation row.
   Tiles of 4 rows x 4 columns; single rows (M = 1 decode, M % 4 tails) stream the weights once
   per row. Bit-exact with the portable qc_gemm_s4a8 (same int32 sums, same float32 steps). */
#include "qc_kernels.h"

#if defined(QC_KERNEL_DOTPROD) && !defined(QC_KERNEL_I8MM)
#if !defined(__ARM_FEATURE_DOTPROD)
#error "QC_KERNEL_DOTPROD needs a compiler target with the dot-product extension (e.g. -mcpu=cortex-a76)"
#endif
#include <arm_neon.h>
#include <string.h>

#define QC_SDOT(acc, w, a, lane) vdotq_laneq_s32(acc, w, a, lane)

/* int32 sums of one row's block (a0: k 0..15, a1: k 16..31) with the group's 4 columns */
static inline int32x4_t qc_s4a8_dot1(const uint8_t *w, int8x16_t a0, int8x16_t a1)
{
    const uint8x16x4_t v = vld1q_u8_x4(w);
    const uint8x16_t hi = vdupq_n_u8(0xF0);
    int32x4_t s0 = vdupq_n_s32(0), s1 = vdupq_n_s32(0);
    s0 = QC_SDOT(s0, vreinterpretq_s8_u8(vshlq_n_u8(v.val[0], 4)), a0, 0);
    s1 = QC_SDOT(s1, vreinterpretq_s8_u8(vandq_u8(v.val[0], hi)), a1, 0);
    s0 = QC_SDOT(s0, vreinterpretq_s8_u8(vshlq_n_u8(v.val[1], 4)), a0, 1);
    s1 = QC_SDOT(s1, vreinterpretq_s8_u8(vandq_u8(v.val[1], hi)), a1, 1);
    s0 = QC_SDOT(s0, vreinterpretq_s8_u8(vshlq_n_u8(v.val[2], 4)), a0, 2);
    s1 = QC_SDOT(s1, vreinterpretq_s8_u8(vandq_u8(v.val[2], hi)), a1, 2);
    s0 = QC_SDOT(s0, vreinterpretq_s8_u8(vshlq_n_u8(v.val[3], 4)), a0, 3);
    s1 = QC_SDOT(s1, vreinterpretq_s8_u8(vandq_u8(v.val[3], hi)), a1, 3);
    return vshrq_n_s32(vaddq_s32(s0, s1), 4);
}

/* acc + float(d - zp' * suma) * (sa * ws), elementwise in the portable order */
static inline float32x4_t qc_s4a8_acc(float32x4_t acc, int32x4_t d, const int8_t *zp, int32_t suma, float sa,
                                      float32x4_t ws)
{
    if (zp) {
        int32_t z4;
        int16x8_t z;
        memcpy(&z4, zp, 4);
        z = vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(z4)));
        d = vmlsq_n_s32(d, vmovl_s16(vget_low_s16(z)), suma);
    }
    return vaddq_f32(acc, vmulq_f32(vcvtq_f32_s32(d), vmulq_n_f32(ws, sa)));
}

static void qc_s4a8_store(float *o, int n0, int N, float32x4_t acc, const float *bias)
{
    float t[4];
    int c;
    if (bias) {
        if (n0 + 4 <= N) {
            acc = vaddq_f32(acc, vld1q_f32(bias + n0));
        } else {
            vst1q_f32(t, acc);
            for (c = 0; n0 + c < N; ++c) {
                t[c] = t[c] + bias[n0 + c];
            }
            acc = vld1q_f32(t);
        }
    }
    if (n0 + 4 <= N) {
        vst1q_f32(o + n0, acc);
        return;
    }
    vst1q_f32(t, acc);
    for (c = 0; n0 + c < N; ++c) {
        o[n0 + c] = t[c];
    }
}

static void qc_s4a8_row(int m, int N, int nb, const int8_t *qa, const float *sa, const int32_t *suma,
                        const uint8_t *Wp, const float *ws, const int8_t *wzp, const float *bias, float *out)
{
    const int G = (N + 3) / 4;
    int g, b;
    for (g = 0; g < G; ++g) {
        float32x4_t acc = vdupq_n_f32(0.0f);
        for (b = 0; b < nb; ++b) {
            const size_t t = (size_t)g * nb + b, i = (size_t)m * nb + b;
            const int8_t *a = qa + i * 32;
            const int32x4_t d = qc_s4a8_dot1(Wp + t * 64, vld1q_s8(a), vld1q_s8(a + 16));
            acc = qc_s4a8_acc(acc, d, wzp ? wzp + t * 4 : NULL, suma[i], sa[i], vld1q_f32(ws + t * 4));
        }
        qc_s4a8_store(out + (size_t)m * N, 4 * g, N, acc, bias);
    }
}

static void qc_s4a8_rows4(int m, int N, int nb, const int8_t *qa, const float *sa, const int32_t *suma,
                          const uint8_t *Wp, const float *ws, const int8_t *wzp, const float *bias, float *out)
{
    const int G = (N + 3) / 4;
    const uint8x16_t hi = vdupq_n_u8(0xF0);
    int g, b, r;
    for (g = 0; g < G; ++g) {
        float32x4_t acc[4];
        for (r = 0; r < 4; ++r) {
            acc[r] = vdupq_n_f32(0.0f);
        }
        for (b = 0; b < nb; ++b) {
            const size_t t = (size_t)g * nb + b;
            const uint8x16x4_t v = vld1q_u8_x4(Wp + t * 64);
            const float32x4_t wsv = vld1q_f32(ws + t * 4);
            const int8x16_t l0 = vreinterpretq_s8_u8(vshlq_n_u8(v.val[0], 4)), h0 = vreinterpretq_s8_u8(vandq_u8(v.val[0], hi));
            const int8x16_t l1 = vreinterpretq_s8_u8(vshlq_n_u8(v.val[1], 4)), h1 = vreinterpretq_s8_u8(vandq_u8(v.val[1], hi));
            const int8x16_t l2 = vreinterpretq_s8_u8(vshlq_n_u8(v.val[2], 4)), h2 = vreinterpretq_s8_u8(vandq_u8(v.val[2], hi));
            const int8x16_t l3 = vreinterpretq_s8_u8(vshlq_n_u8(v.val[3], 4)), h3 = vreinterpretq_s8_u8(vandq_u8(v.val[3], hi));
            for (r = 0; r < 4; ++r) {
                const size_t i = (size_t)(m + r) * nb + b;
                const int8x16_t a0 = vld1q_s8(qa + i * 32), a1 = vld1q_s8(qa + i * 32 + 16);
                int32x4_t s0 = vdupq_n_s32(0), s1 = vdupq_n_s32(0);
                s0 = QC_SDOT(s0, l0, a0, 0);
                s1 = QC_SDOT(s1, h0, a1, 0);
                s0 = QC_SDOT(s0, l1, a0, 1);
                s1 = QC_SDOT(s1, h1, a1, 1);
                s0 = QC_SDOT(s0, l2, a0, 2);
                s1 = QC_SDOT(s1, h2, a1, 2);
                s0 = QC_SDOT(s0, l3, a0, 3);
                s1 = QC_SDOT(s1, h3, a1, 3);
                acc[r] = qc_s4a8_acc(acc[r], vshrq_n_s32(vaddq_s32(s0, s1), 4), wzp ? wzp + t * 4 : NULL, suma[i],
                                     sa[i], wsv);
            }
        }
        for (r = 0; r < 4; ++r) {
            qc_s4a8_store(out + (size_t)(m + r) * N, 4 * g, N, acc[r], bias);
        }
    }
}

void qc_gemm_s4a8(int M, int N, int K, const int8_t *qa, const float *sa, const int32_t *suma,
                  const uint8_t *Wp, const float *ws, const int8_t *wzp, const float *bias, float *out)
{
    const int nb = (K + 31) / 32;
    int m = 0;
    for (; m + 4 <= M; m += 4) {
        qc_s4a8_rows4(m, N, nb, qa, sa, suma, Wp, ws, wzp, bias, out);
    }
    for (; m < M; ++m) {
        qc_s4a8_row(m, N, nb, qa, sa, suma, Wp, ws, wzp, bias, out);
    }
}
#endif
