/* Pointwise (1x1, stride 1, unpadded, ungrouped) int8 convolution of one NCHW image, direct:
   the image is already K x P (channels x pixels), so
     acc[oc][p] = bias[oc] + sum_k w[oc][k] * x[k][p]
   exactly in int32, then the requantizing (_q8: qc_requant_s8's TFLite rounding, a ReLU/ReLU6
   as the clamp) or dequantizing (_f32: (float)acc * scale + fbias, as qc_dequant_acc_f32)
   epilogue, written straight into the NCHW output: no im2col, no transposes, no int32 matrix
   in memory. Contract in qc_kernels.h; docs/c-kernels.md.

   Weights (qc_conv1x1_s8_pack layout, backends/c/lower_conv_s8.py): blocks of 4 output
   channels x 4 input channels, [OC/4][K/4][4 oc][4 k], zero past OC and K.
   With SDOT (QC_KERNEL_DOTPROD / QC_KERNEL_I8MM and __ARM_FEATURE_DOTPROD): per block of 16
   pixels the 4-channel quads are interleaved once into the scratch (two ZIP stages: pixel p's
   k..k+3 in one 32-bit lane), then per 4 output channels 16 accumulators (4 oc x 16 pixels)
   take one 64-byte load of the pixels and one 16-byte load of the weights per 4 channels and
   16 SDOTs by lane. Otherwise portable C. Bit-exact with the portable loops (integer sums). */
#include <string.h>
#include "qc_kernels.h"

#if (defined(QC_KERNEL_DOTPROD) || defined(QC_KERNEL_I8MM)) && defined(__ARM_FEATURE_DOTPROD)
#include <arm_neon.h>
#define QC_PW_SDOT 1
#endif

#define QC_PW_BLOCK 16

static int8_t qc_pw_requant(int32_t acc, int32_t mult, int32_t shift, int32_t zp, int32_t qmin, int32_t qmax)
{
    int32_t v = qc_multiply_by_quantized_multiplier(acc, mult, shift);
    v = (int32_t)((uint32_t)v + (uint32_t)zp);
    v = v < qmin ? qmin : v;
    return (int8_t)(v > qmax ? qmax : v);
}

static int32_t qc_pw_acc_portable(int K, int P, int oc, int p, const int8_t *x, const int8_t *wp,
                                  const int32_t *bias)
{
    const int kq = (K + 3) / 4;
    const int8_t *wb = wp + (size_t)(oc / 4) * kq * 16 + (size_t)(oc % 4) * 4;
    int32_t s = bias ? bias[oc] : 0;
    int k;
    for (k = 0; k < K; ++k) {
        s += (int32_t)wb[(size_t)(k / 4) * 16 + k % 4] * (int32_t)x[(size_t)k * P + p];
    }
    return s;
}

#if defined(QC_PW_SDOT)
/* Pixels p0 .. p0+n-1 (n <= 16) of the K channel rows into xs: [K/4][4 groups of 4 pixels]
   [4 pixels][4 k] (64 bytes per 4 channels), zero past K and past n. */
static void qc_pw_pack(int K, int P, int p0, int n, const int8_t *x, int8_t *xs)
{
    const int kq = (K + 3) / 4;
    int q, t;
    for (q = 0; q < kq; ++q) {
        int8x16_t r[4];
        int8x16_t a0, a1, b0, b1;
        for (t = 0; t < 4; ++t) {
            const int k = 4 * q + t;
            if (k >= K) {
                r[t] = vdupq_n_s8(0);
            } else if (n == QC_PW_BLOCK) {
                r[t] = vld1q_s8(x + (size_t)k * P + p0);
            } else {
                int8_t tmp[QC_PW_BLOCK];
                memset(tmp, 0, sizeof tmp);
                memcpy(tmp, x + (size_t)k * P + p0, (size_t)n);
                r[t] = vld1q_s8(tmp);
            }
        }
        a0 = vzip1q_s8(r[0], r[1]);
        a1 = vzip2q_s8(r[0], r[1]);
        b0 = vzip1q_s8(r[2], r[3]);
        b1 = vzip2q_s8(r[2], r[3]);
        vst1q_s8(xs + 64 * q, vreinterpretq_s8_s16(vzip1q_s16(vreinterpretq_s16_s8(a0), vreinterpretq_s16_s8(b0))));
        vst1q_s8(xs + 64 * q + 16, vreinterpretq_s8_s16(vzip2q_s16(vreinterpretq_s16_s8(a0), vreinterpretq_s16_s8(b0))));
        vst1q_s8(xs + 64 * q + 32, vreinterpretq_s8_s16(vzip1q_s16(vreinterpretq_s16_s8(a1), vreinterpretq_s16_s8(b1))));
        vst1q_s8(xs + 64 * q + 48, vreinterpretq_s8_s16(vzip2q_s16(vreinterpretq_s16_s8(a1), vreinterpretq_s16_s8(b1))));
    }
}

/* Named accumulators (GCC keeps an array of vectors in memory): aO_R for output channel O of
   the 4, pixels 4R .. 4R+3 of the 16. */
#define QC_PW_ACC_DECL int32x4_t a0_0, a0_1, a0_2, a0_3, a1_0, a1_1, a1_2, a1_3, a2_0, a2_1, a2_2, a2_3, \
                                 a3_0, a3_1, a3_2, a3_3
#define QC_PW_INIT(o)                                                       \
    do {                                                                    \
        const int32x4_t b_ = vdupq_n_s32(bias && oc0 + (o) < OC ? bias[oc0 + (o)] : 0); \
        a##o##_0 = b_; a##o##_1 = b_; a##o##_2 = b_; a##o##_3 = b_;          \
    } while (0)
#define QC_PW_DOT(o)                                                        \
    do {                                                                    \
        a##o##_0 = vdotq_laneq_s32(a##o##_0, xv.val[0], wv, o);             \
        a##o##_1 = vdotq_laneq_s32(a##o##_1, xv.val[1], wv, o);             \
        a##o##_2 = vdotq_laneq_s32(a##o##_2, xv.val[2], wv, o);             \
        a##o##_3 = vdotq_laneq_s32(a##o##_3, xv.val[3], wv, o);             \
    } while (0)
/* The int32 accumulators of output channels oc0 .. oc0+3 for the 16 pixels packed in xs. */
#define QC_PW_TILE()                                                        \
    do {                                                                    \
        const int8_t *wq_ = wb;                                             \
        const int8_t *xq_ = xs;                                             \
        int q_;                                                             \
        QC_PW_INIT(0); QC_PW_INIT(1); QC_PW_INIT(2); QC_PW_INIT(3);         \
        for (q_ = 0; q_ < kq; ++q_, wq_ += 16, xq_ += 64) {                 \
            const int8x16x4_t xv = vld1q_s8_x4(xq_);                        \
            const int8x16_t wv = vld1q_s8(wq_);                             \
            QC_PW_DOT(0); QC_PW_DOT(1); QC_PW_DOT(2); QC_PW_DOT(3);         \
        }                                                                   \
    } while (0)

static inline int32x4_t qc_pw_rq(int32x4_t a, int32x4_t m, int32x4_t left, int32x4_t right, int32x4_t zp,
                                 int32x4_t lo, int32x4_t hi)
{
    a = vqrdmulhq_s32(vshlq_s32(a, left), m);
    a = vrshlq_s32(vqaddq_s32(a, vshrq_n_s32(vandq_s32(a, right), 31)), right);
    return vminq_s32(vmaxq_s32(vaddq_s32(a, zp), lo), hi);
}

/* Right shift only (shift < 0): qc_requant_s8's SQRDMULH, then its fix-up "+ (a & shift) >> 31"
   as one SSRA (a + (a >> 31): the same value, a > INT32_MIN after SQRDMULH) and the rounding
   SRSHL; |a| < 2^30 after it, so the zero point cannot wrap and the saturating narrows below
   clamp exactly as the int32 clamp would. */
static inline int32x4_t qc_pw_rq_right(int32x4_t a, int32x4_t m, int32x4_t right)
{
    a = vqrdmulhq_s32(a, m);
    return vrshlq_s32(vsraq_n_s32(a, a, 31), right);
}

/* 16 int32 values (before the zero point) to int8: SQXTN to int16, + zp saturating, SQXTN to
   int8, then the [qmin, qmax] clamp on 16 lanes at once (none when clamp is 0: [-128, 127], which
   the narrow already gives). */
static inline int8x16_t qc_pw_narrow16(int32x4_t a0, int32x4_t a1, int32x4_t a2, int32x4_t a3, int16x8_t zp16,
                                       int clamp, int8x16_t lo8, int8x16_t hi8)
{
    const int16x8_t h0 = vqaddq_s16(vcombine_s16(vqmovn_s32(a0), vqmovn_s32(a1)), zp16);
    const int16x8_t h1 = vqaddq_s16(vcombine_s16(vqmovn_s32(a2), vqmovn_s32(a3)), zp16);
    const int8x16_t q = vcombine_s8(vqmovn_s16(h0), vqmovn_s16(h1));
    return clamp ? vminq_s8(vmaxq_s8(q, lo8), hi8) : q;
}

/* Output channel c's 16 accumulators (pixels p0 .. p0+n-1) requantized into y[c]: the steps of
   qc_quant.c's vector qc_requant_s8, the shift split into its left and right parts; channels
   with a right shift take the shorter qc_pw_rq_right + qc_pw_narrow16 (bit-exact with it). */
static inline void qc_pw_store_q8(int32x4_t a0, int32x4_t a1, int32x4_t a2, int32x4_t a3, int c, int P,
                                  int p0, int n, const int32_t *mult, const int32_t *shift, int32x4_t zp,
                                  int32x4_t lo, int32x4_t hi, int clamp, int8_t *y)
{
    const int32x4_t m = vdupq_n_s32(mult[c]);
    int8x16_t q8;
    if (shift[c] < 0) {
        const int32x4_t right = vdupq_n_s32(shift[c]);
        q8 = qc_pw_narrow16(qc_pw_rq_right(a0, m, right), qc_pw_rq_right(a1, m, right),
                            qc_pw_rq_right(a2, m, right), qc_pw_rq_right(a3, m, right),
                            vdupq_n_s16((int16_t)vgetq_lane_s32(zp, 0)), clamp, vdupq_n_s8((int8_t)vgetq_lane_s32(lo, 0)),
                            vdupq_n_s8((int8_t)vgetq_lane_s32(hi, 0)));
    } else {
        const int32x4_t left = vdupq_n_s32(shift[c]);
        const int32x4_t right = vdupq_n_s32(0);
        const int16x8_t h0 = vcombine_s16(vmovn_s32(qc_pw_rq(a0, m, left, right, zp, lo, hi)),
                                          vmovn_s32(qc_pw_rq(a1, m, left, right, zp, lo, hi)));
        const int16x8_t h1 = vcombine_s16(vmovn_s32(qc_pw_rq(a2, m, left, right, zp, lo, hi)),
                                          vmovn_s32(qc_pw_rq(a3, m, left, right, zp, lo, hi)));
        q8 = vcombine_s8(vmovn_s16(h0), vmovn_s16(h1));
    }
    if (n == QC_PW_BLOCK) {
        vst1q_s8(y + (size_t)c * P + p0, q8);
    } else {
        int8_t tmp[QC_PW_BLOCK];
        vst1q_s8(tmp, q8);
        memcpy(y + (size_t)c * P + p0, tmp, (size_t)n);
    }
}

/* Output channel c's 16 accumulators dequantized into y[c] ((float)acc * scale, then + fbias:
   separate roundings, as the scalar code). */
static inline void qc_pw_store_f32(int32x4_t a0, int32x4_t a1, int32x4_t a2, int32x4_t a3, int c, int P,
                                   int p0, int n, const float *scale, int per_channel, const float *fbias,
                                   const float *clip,
                                   float *y)
{
    const float32x4_t s = vdupq_n_f32(scale[per_channel ? c : 0]);
    float tmp[QC_PW_BLOCK];
    float *dst = n == QC_PW_BLOCK ? y + (size_t)c * P + p0 : tmp;
    float32x4_t v0 = vmulq_f32(vcvtq_f32_s32(a0), s), v1 = vmulq_f32(vcvtq_f32_s32(a1), s);
    float32x4_t v2 = vmulq_f32(vcvtq_f32_s32(a2), s), v3 = vmulq_f32(vcvtq_f32_s32(a3), s);
    if (fbias) {
        const float32x4_t fb = vdupq_n_f32(fbias[c]);
        v0 = vaddq_f32(v0, fb);
        v1 = vaddq_f32(v1, fb);
        v2 = vaddq_f32(v2, fb);
        v3 = vaddq_f32(v3, fb);
    }
    if (clip) {
        const float32x4_t lo = vdupq_n_f32(clip[0]), hi = vdupq_n_f32(clip[1]);
        v0 = vminq_f32(vmaxq_f32(v0, lo), hi);
        v1 = vminq_f32(vmaxq_f32(v1, lo), hi);
        v2 = vminq_f32(vmaxq_f32(v2, lo), hi);
        v3 = vminq_f32(vmaxq_f32(v3, lo), hi);
    }
    vst1q_f32(dst, v0);
    vst1q_f32(dst + 4, v1);
    vst1q_f32(dst + 8, v2);
    vst1q_f32(dst + 12, v3);
    if (n != QC_PW_BLOCK) {
        memcpy(y + (size_t)c * P + p0, tmp, (size_t)n * sizeof(float));
    }
}
#endif

size_t qc_conv1x1_s8_scratch(int K)
{
    return (size_t)((K + 3) / 4) * 64u;
}

void qc_conv1x1_s8_q8(int K, int P, int OC, const int8_t *x, const int8_t *wp, const int32_t *bias,
                      const int32_t *mult, const int32_t *shift, int32_t out_zp, int32_t qmin,
                      int32_t qmax, int8_t *scratch, int8_t *y)
{
    int p0 = 0, oc, p;
#if defined(QC_PW_SDOT)
    const int kq = (K + 3) / 4;
    const int32x4_t zp = vdupq_n_s32(out_zp), lo = vdupq_n_s32(qmin), hi = vdupq_n_s32(qmax);
    const int clamp = qmin > -128 || qmax < 127;
    for (; p0 < P; p0 += QC_PW_BLOCK) {
        const int n = P - p0 < QC_PW_BLOCK ? P - p0 : QC_PW_BLOCK;
        int ob;
        qc_pw_pack(K, P, p0, n, x, scratch);
        for (ob = 0; ob * 4 < OC; ++ob) {
            const int oc0 = 4 * ob;
            const int8_t *wb = wp + (size_t)ob * kq * 16, *xs = scratch;
            QC_PW_ACC_DECL;
            QC_PW_TILE();
            qc_pw_store_q8(a0_0, a0_1, a0_2, a0_3, oc0, P, p0, n, mult, shift, zp, lo, hi, clamp, y);
            if (oc0 + 1 < OC) {
                qc_pw_store_q8(a1_0, a1_1, a1_2, a1_3, oc0 + 1, P, p0, n, mult, shift, zp, lo, hi, clamp, y);
            }
            if (oc0 + 2 < OC) {
                qc_pw_store_q8(a2_0, a2_1, a2_2, a2_3, oc0 + 2, P, p0, n, mult, shift, zp, lo, hi, clamp, y);
            }
            if (oc0 + 3 < OC) {
                qc_pw_store_q8(a3_0, a3_1, a3_2, a3_3, oc0 + 3, P, p0, n, mult, shift, zp, lo, hi, clamp, y);
            }
        }
    }
#else
    (void)scratch;
#endif
    for (oc = 0; oc < OC; ++oc) {
        for (p = p0; p < P; ++p) {
            y[(size_t)oc * P + p] = qc_pw_requant(qc_pw_acc_portable(K, P, oc, p, x, wp, bias), mult[oc],
                                                  shift[oc], out_zp, qmin, qmax);
        }
    }
}

void qc_conv1x1_s8_f32(int K, int P, int OC, const int8_t *x, const int8_t *wp, const int32_t *bias,
                       const float *scale, int per_channel, const float *fbias, const float *clip, int8_t *scratch,
                       float *y)
{
    int p0 = 0, oc, p;
#if defined(QC_PW_SDOT)
    const int kq = (K + 3) / 4;
    for (; p0 < P; p0 += QC_PW_BLOCK) {
        const int n = P - p0 < QC_PW_BLOCK ? P - p0 : QC_PW_BLOCK;
        int ob;
        qc_pw_pack(K, P, p0, n, x, scratch);
        for (ob = 0; ob * 4 < OC; ++ob) {
            const int oc0 = 4 * ob;
            const int8_t *wb = wp + (size_t)ob * kq * 16, *xs = scratch;
            QC_PW_ACC_DECL;
            QC_PW_TILE();
            qc_pw_store_f32(a0_0, a0_1, a0_2, a0_3, oc0, P, p0, n, scale, per_channel, fbias, clip, y);
            if (oc0 + 1 < OC) {
                qc_pw_store_f32(a1_0, a1_1, a1_2, a1_3, oc0 + 1, P, p0, n, scale, per_channel, fbias, clip, y);
            }
            if (oc0 + 2 < OC) {
                qc_pw_store_f32(a2_0, a2_1, a2_2, a2_3, oc0 + 2, P, p0, n, scale, per_channel, fbias, clip, y);
            }
            if (oc0 + 3 < OC) {
                qc_pw_store_f32(a3_0, a3_1, a3_2, a3_3, oc0 + 3, P, p0, n, scale, per_channel, fbias, clip, y);
            }
        }
    }
#else
    (void)scratch;
#endif
    for (oc = 0; oc < OC; ++oc) {
        for (p = p0; p < P; ++p) {
            float v = (float)qc_pw_acc_portable(K, P, oc, p, x, wp, bias) * scale[per_channel ? oc : 0];
            if (fbias) {
                v += fbias[oc];
            }
            if (clip) {
                v = v < clip[0] ? clip[0] : v;
                v = v > clip[1] ? clip[1] : v;
            }
            y[(size_t)oc * P + p] = v;
        }
    }
}
