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
/* gemmlowp's vector MultiplyByQuantizedMultiplier, as qc_quant.c's qc_mbqm4 (bit-exact with
   qc_multiply_by_quantized_multiplier: tests). */
static inline int32x4_t qc_pw_mbqm4(int32x4_t x, int32x4_t mult, int32x4_t shift)
{
    const int32x4_t zero = vdupq_n_s32(0);
    const int32x4_t right = vminq_s32(shift, zero);
    int32x4_t fixup;
    x = vshlq_s32(x, vmaxq_s32(shift, zero));
    x = vqrdmulhq_s32(x, mult);
    fixup = vshrq_n_s32(vandq_s32(x, right), 31);
    return vrshlq_s32(vqaddq_s32(x, fixup), right);
}

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

#define QC_PW_DOT(r)                                                        \
    do {                                                                    \
        acc[0][r] = vdotq_laneq_s32(acc[0][r], xv.val[r], wv, 0);           \
        acc[1][r] = vdotq_laneq_s32(acc[1][r], xv.val[r], wv, 1);           \
        acc[2][r] = vdotq_laneq_s32(acc[2][r], xv.val[r], wv, 2);           \
        acc[3][r] = vdotq_laneq_s32(acc[3][r], xv.val[r], wv, 3);           \
    } while (0)

/* The int32 accumulators of output channels 4*ob .. 4*ob+3 for the packed 16 pixels. */
static void qc_pw_tile(int kq, const int8_t *xs, const int8_t *wb, const int32_t *bias, int oc0, int OC,
                       int32x4_t acc[4][4])
{
    int o, r, q;
    for (o = 0; o < 4; ++o) {
        const int32x4_t b = vdupq_n_s32(bias && oc0 + o < OC ? bias[oc0 + o] : 0);
        for (r = 0; r < 4; ++r) {
            acc[o][r] = b;
        }
    }
    for (q = 0; q < kq; ++q) {
        const int8x16x4_t xv = vld1q_s8_x4(xs + 64 * q);
        const int8x16_t wv = vld1q_s8(wb + 16 * q);
        QC_PW_DOT(0);
        QC_PW_DOT(1);
        QC_PW_DOT(2);
        QC_PW_DOT(3);
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
    for (; p0 < P; p0 += QC_PW_BLOCK) {
        const int n = P - p0 < QC_PW_BLOCK ? P - p0 : QC_PW_BLOCK;
        int ob;
        qc_pw_pack(K, P, p0, n, x, scratch);
        for (ob = 0; ob * 4 < OC; ++ob) {
            int32x4_t acc[4][4];
            int o;
            qc_pw_tile(kq, scratch, wp + (size_t)ob * kq * 16, bias, 4 * ob, OC, acc);
            for (o = 0; o < 4 && 4 * ob + o < OC; ++o) {
                const int c = 4 * ob + o;
                const int32x4_t m = vdupq_n_s32(mult[c]), s = vdupq_n_s32(shift[c]);
                int32x4_t v[4];
                int8x16_t q8;
                int r;
                for (r = 0; r < 4; ++r) {
                    v[r] = vminq_s32(vmaxq_s32(vaddq_s32(qc_pw_mbqm4(acc[o][r], m, s), zp), lo), hi);
                }
                q8 = vcombine_s8(vmovn_s16(vcombine_s16(vmovn_s32(v[0]), vmovn_s32(v[1]))),
                                 vmovn_s16(vcombine_s16(vmovn_s32(v[2]), vmovn_s32(v[3]))));
                if (n == QC_PW_BLOCK) {
                    vst1q_s8(y + (size_t)c * P + p0, q8);
                } else {
                    int8_t tmp[QC_PW_BLOCK];
                    vst1q_s8(tmp, q8);
                    memcpy(y + (size_t)c * P + p0, tmp, (size_t)n);
                }
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
                       const float *scale, int per_channel, const float *fbias, int8_t *scratch, float *y)
{
    int p0 = 0, oc, p;
#if defined(QC_PW_SDOT)
    const int kq = (K + 3) / 4;
    for (; p0 < P; p0 += QC_PW_BLOCK) {
        const int n = P - p0 < QC_PW_BLOCK ? P - p0 : QC_PW_BLOCK;
        int ob;
        qc_pw_pack(K, P, p0, n, x, scratch);
        for (ob = 0; ob * 4 < OC; ++ob) {
            int32x4_t acc[4][4];
            int o;
            qc_pw_tile(kq, scratch, wp + (size_t)ob * kq * 16, bias, 4 * ob, OC, acc);
            for (o = 0; o < 4 && 4 * ob + o < OC; ++o) {
                const int c = 4 * ob + o;
                const float32x4_t s = vdupq_n_f32(scale[per_channel ? c : 0]);
                const float32x4_t fb = vdupq_n_f32(fbias ? fbias[c] : 0.0f);
                float tmp[QC_PW_BLOCK];
                float *dst = n == QC_PW_BLOCK ? y + (size_t)c * P + p0 : tmp;
                int r;
                for (r = 0; r < 4; ++r) {
                    float32x4_t v = vmulq_f32(vcvtq_f32_s32(acc[o][r]), s);
                    if (fbias) {
                        v = vaddq_f32(v, fb);  /* separate rounding, as the scalar v += fbias */
                    }
                    vst1q_f32(dst + 4 * r, v);
                }
                if (n != QC_PW_BLOCK) {
                    memcpy(y + (size_t)c * P + p0, tmp, (size_t)n * sizeof(float));
                }
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
            y[(size_t)oc * P + p] = v;
        }
    }
}
