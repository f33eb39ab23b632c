/* qc_gemm_s4a8 with SMMLA (QC_KERNEL_I8MM; packing_s4 "i8mm" layout): per group of 4 columns
   and block of 32 k, four 16-byte loads give the eight 2 x 8 weight operands (v << 4 and
   v & 0xF0, 16 x the nibbles); the activations come as row pairs already in 2 x 8 operand
   order (qc_quantize_q8b32's i8mm layout, with sa and suma as [r0 r0 r1 r1]), and one SMMLA
   adds a 2 x 2 tile of 8-k dot products. The int32 sums stay 16 x the products (zero points
   packed as 16 zp') until SCVTF with 4 fraction bits divides by 16 exactly. Tiles of 4 rows
   (two pairs) x 4 columns; a last odd row (M = 1 decode) takes two groups per step. Bit-exact
   with the portable qc_gemm_s4a8. */
#include "qc_kernels.h"

#if defined(QC_KERNEL_I8MM)
#if !defined(__ARM_FEATURE_MATMUL_INT8)
#error "QC_KERNEL_I8MM needs a compiler target with the int8 matrix multiply extension (e.g. -march=armv8.6-a+i8mm)"
#endif
#include <arm_neon.h>
#include <string.h>

#define QC_LO(v) vreinterpretq_s8_u8(vshlq_n_u8(v, 4))
#define QC_HI(v) vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0xF0)))

/* the 2 x 2 sums of one column pair (operands lA, hA: k 0..7 / 16..23, lB, hB: 8..15 / 24..31)
   with a row pair's operands c0..c3 (k 0..7, 8..15, 16..23, 24..31) */
#define QC_MMLA(lA, hA, lB, hB, c0, c1, c2, c3) \
    vmmlaq_s32(vmmlaq_s32(vmmlaq_s32(vmmlaq_s32(vdupq_n_s32(0), c0, lA), c2, hA), c1, lB), c3, hB)

/* fmaf(float(d / 16) * ws, sa, acc): the portable code's float32 steps (SCVTF, FMUL, FMLA) */
#define QC_ACC(acc, d, wv, sv) vfmaq_f32(acc, vmulq_f32(vcvtq_n_f32_s32(d, 4), wv), sv)

/* [c0 c1 c2 c3] of a pair's first row from its two 2 x 2 tiles */
#define QC_ROW0(d0, d1) vreinterpretq_s32_s64(vzip1q_s64(vreinterpretq_s64_s32(d0), vreinterpretq_s64_s32(d1)))

static inline int32x4_t qc_s4a8_zp4(const int8_t *zp)
{
    int32_t z4;
    memcpy(&z4, zp, 4);
    return vmovl_s16(vget_low_s16(vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(z4)))));
}

static void qc_s4a8_store(float *o, int n0, int N, float32x4_t v, const float *bias)
{
    float t[4];
    int c;
    if (n0 + 4 <= N) {
        vst1q_f32(o + n0, bias ? vaddq_f32(v, vld1q_f32(bias + n0)) : v);
        return;
    }
    vst1q_f32(t, v);
    for (c = 0; n0 + c < N; ++c) {
        o[n0 + c] = bias ? t[c] + bias[n0 + c] : t[c];
    }
}

/* the 2 x 2 tiles d0 (columns 0, 1) and d1 (2, 3) of one group's block with a row pair */
#define QC_PAIR(w, q, d0, d1) do { \
        const uint8x16x4_t v_ = vld1q_u8_x4(w); \
        const int8x16_t c0_ = vld1q_s8(q), c1_ = vld1q_s8((q) + 16), c2_ = vld1q_s8((q) + 32), c3_ = vld1q_s8((q) + 48); \
        d0 = QC_MMLA(QC_LO(v_.val[0]), QC_HI(v_.val[0]), QC_LO(v_.val[2]), QC_HI(v_.val[2]), c0_, c1_, c2_, c3_); \
        d1 = QC_MMLA(QC_LO(v_.val[1]), QC_HI(v_.val[1]), QC_LO(v_.val[3]), QC_HI(v_.val[3]), c0_, c1_, c2_, c3_); \
    } while (0)

/* the first row of pair p alone (the last row of an odd M): two groups per step */
static void qc_s4a8_row(int N, int nb, const int8_t *qa, const float *sa, const int32_t *suma, const uint8_t *Wp,
                        const float *ws, const int8_t *wzp, const float *bias, float *out)
{
    const int G = (N + 3) / 4;
    const size_t gs = (size_t)nb * 64, zs = (size_t)nb * 4;
    int g, b;
    for (g = 0; g < G; g += 2) {
        const int two = g + 1 < G;
        const uint8_t *w = Wp + (size_t)g * gs;
        const float *s = ws + (size_t)g * zs;
        const int8_t *z = wzp ? wzp + (size_t)g * zs : NULL;
        float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0;
        for (b = 0; b < nb; ++b) {
            int32x4_t t0, t1, d;
            QC_PAIR(w + 64 * b, qa + 64 * b, t0, t1);
            d = QC_ROW0(t0, t1);
            if (z) {
                d = vmlsq_n_s32(d, qc_s4a8_zp4(z + 4 * b), suma[4 * b]);
            }
            acc0 = QC_ACC(acc0, d, vld1q_f32(s + 4 * b), vdupq_n_f32(sa[4 * b]));
            if (two) {
                QC_PAIR(w + gs + 64 * b, qa + 64 * b, t0, t1);
                d = QC_ROW0(t0, t1);
                if (z) {
                    d = vmlsq_n_s32(d, qc_s4a8_zp4(z + zs + 4 * b), suma[4 * b]);
                }
                acc1 = QC_ACC(acc1, d, vld1q_f32(s + zs + 4 * b), vdupq_n_f32(sa[4 * b]));
            }
        }
        qc_s4a8_store(out, 4 * g, N, acc0, bias);
        if (two) {
            qc_s4a8_store(out, 4 * g + 4, N, acc1, bias);
        }
    }
}

/* one pair (q2 == NULL) or two pairs of rows; o0 .. o3 the rows' outputs */
static void qc_s4a8_pairs(int N, int nb, const int8_t *q0, const float *s0, const int32_t *u0, const int8_t *q2,
                          const float *s2, const int32_t *u2, const uint8_t *Wp, const float *ws, const int8_t *wzp,
                          const float *bias, float *o0, float *o1, float *o2, float *o3)
{
    const int G = (N + 3) / 4;
    int g, b;
    for (g = 0; g < G; ++g) {
        const uint8_t *w = Wp + (size_t)g * nb * 64;
        const float *s = ws + (size_t)g * nb * 4;
        const int8_t *z = wzp ? wzp + (size_t)g * nb * 4 : NULL;
        float32x4_t f00 = vdupq_n_f32(0.0f), f01 = f00, f10 = f00, f11 = f00;
        for (b = 0; b < nb; ++b) {
            const uint8x16x4_t v = vld1q_u8_x4(w + 64 * b);
            const int8x16_t l0 = QC_LO(v.val[0]), h0 = QC_HI(v.val[0]), l1 = QC_LO(v.val[1]), h1 = QC_HI(v.val[1]);
            const int8x16_t l2 = QC_LO(v.val[2]), h2 = QC_HI(v.val[2]), l3 = QC_LO(v.val[3]), h3 = QC_HI(v.val[3]);
            /* ws in the 2 x 2 layout: [w0 w1 w0 w1] and [w2 w3 w2 w3] (sa: [sa0 sa0 sa1 sa1]) */
            const float32x4_t wv = vld1q_f32(s + 4 * b);
            const float32x4_t w01 = vcombine_f32(vget_low_f32(wv), vget_low_f32(wv));
            const float32x4_t w23 = vcombine_f32(vget_high_f32(wv), vget_high_f32(wv));
            int32x4_t z01 = vdupq_n_s32(0), z23 = z01;
            {
                const int8_t *q = q0 + 64 * b;
                const int8x16_t c0 = vld1q_s8(q), c1 = vld1q_s8(q + 16), c2 = vld1q_s8(q + 32), c3 = vld1q_s8(q + 48);
                const float32x4_t sp = vld1q_f32(s0 + 4 * b);
                int32x4_t d0 = QC_MMLA(l0, h0, l2, h2, c0, c1, c2, c3), d1 = QC_MMLA(l1, h1, l3, h3, c0, c1, c2, c3);
                if (z) {
                    const int32x4_t u = vld1q_s32(u0 + 4 * b), zz = qc_s4a8_zp4(z + 4 * b);
                    z01 = vreinterpretq_s32_s64(vdupq_laneq_s64(vreinterpretq_s64_s32(zz), 0));
                    z23 = vreinterpretq_s32_s64(vdupq_laneq_s64(vreinterpretq_s64_s32(zz), 1));
                    d0 = vmlsq_s32(d0, z01, u);
                    d1 = vmlsq_s32(d1, z23, u);
                }
                f00 = QC_ACC(f00, d0, w01, sp);
                f01 = QC_ACC(f01, d1, w23, sp);
            }
            if (q2) {
                const int8_t *q = q2 + 64 * b;
                const int8x16_t c0 = vld1q_s8(q), c1 = vld1q_s8(q + 16), c2 = vld1q_s8(q + 32), c3 = vld1q_s8(q + 48);
                const float32x4_t sp = vld1q_f32(s2 + 4 * b);
                int32x4_t d0 = QC_MMLA(l0, h0, l2, h2, c0, c1, c2, c3), d1 = QC_MMLA(l1, h1, l3, h3, c0, c1, c2, c3);
                if (z) {
                    const int32x4_t u = vld1q_s32(u2 + 4 * b);
                    d0 = vmlsq_s32(d0, z01, u);
                    d1 = vmlsq_s32(d1, z23, u);
                }
                f10 = QC_ACC(f10, d0, w01, sp);
                f11 = QC_ACC(f11, d1, w23, sp);
            }
        }
        qc_s4a8_store(o0, 4 * g, N, vcombine_f32(vget_low_f32(f00), vget_low_f32(f01)), bias);
        qc_s4a8_store(o1, 4 * g, N, vcombine_f32(vget_high_f32(f00), vget_high_f32(f01)), bias);
        if (q2) {
            qc_s4a8_store(o2, 4 * g, N, vcombine_f32(vget_low_f32(f10), vget_low_f32(f11)), bias);
            qc_s4a8_store(o3, 4 * g, N, vcombine_f32(vget_high_f32(f10), vget_high_f32(f11)), bias);
        }
    }
}

void qc_gemm_s4a8(int M, int N, int K, const int8_t *qa, const float *sa, const int32_t *suma,
                  const uint8_t *Wp, const float *ws, const int8_t *wzp, const float *bias, float *out)
{
    const int nb = (K + 31) / 32, P = M / 2;
    const size_t qs = (size_t)nb * 64, ss = (size_t)nb * 4;
    int p = 0;
    for (; p + 2 <= P; p += 2) {
        float *o = out + (size_t)(2 * p) * N;
        qc_s4a8_pairs(N, nb, qa + p * qs, sa + p * ss, suma + p * ss, qa + (p + 1) * qs, sa + (p + 1) * ss,
                      suma + (p + 1) * ss, Wp, ws, wzp, bias, o, o + N, o + 2 * (size_t)N, o + 3 * (size_t)N);
    }
    if (p < P) {
        float *o = out + (size_t)(2 * p) * N;
        qc_s4a8_pairs(N, nb, qa + p * qs, sa + p * ss, suma + p * ss, NULL, NULL, NULL, Wp, ws, wzp, bias, o, o + N,
                      NULL, NULL);
        ++p;
    }
    if (M & 1) {
        qc_s4a8_row(N, nb, qa + P * qs, sa + P * ss, suma + P * ss, Wp, ws, wzp, bias, out + (size_t)(M - 1) * N);
    }
}
#endif
