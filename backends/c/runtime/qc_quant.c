/* Requantization, accumulator dequantization and elementwise (de)quantization. Portable C99;
   with NEON (QC_KERNEL_NEON / DOTPROD / I8MM) every function here also has a vector path, and
   qc_requant_s8 one with Helium (QC_KERNEL_MVE), all bit-exact with the scalar code (the
   scalar loops finish the tails). */
#include <string.h>
#include "qc_gemm_s8_tile.h"

int32_t qc_multiply_by_quantized_multiplier(int32_t x, int32_t mult, int32_t shift)
{
    return qc_mbqm(x, mult, shift);
}

#if defined(QC_VEC_NEON) || defined(QC_VEC_MVE)
#define QC_REQUANT_SIMD 1
#endif

void qc_requant_s8(int M, int N, const int32_t *C, const int32_t *bias, const int32_t *mult,
                   const int32_t *shift, int per_channel, int32_t out_zp, int32_t qmin,
                   int32_t qmax, int8_t *out)
{
    int m, n;
    for (m = 0; m < M; ++m) {
        const int32_t *row = C + (size_t)m * N;
        int8_t *dst = out + (size_t)m * N;
        n = 0;
#if defined(QC_REQUANT_SIMD)
        {
            const int32x4_t zp = vdupq_n_s32(out_zp), lo = vdupq_n_s32(qmin);
            const int32x4_t hi = vdupq_n_s32(qmax);
            const int32x4_t m0 = vdupq_n_s32(mult[0]), s0 = vdupq_n_s32(shift[0]);
            for (; n + 4 <= N; n += 4) {
                int32x4_t x = QC_LD4(row + n), v;
                if (bias) {
                    x = vaddq_s32(x, QC_LD4(bias + n));
                }
                v = qc_mbqm4(x, per_channel ? QC_LD4(mult + n) : m0,
                             per_channel ? QC_LD4(shift + n) : s0);
                v = vminq_s32(vmaxq_s32(vaddq_s32(v, zp), lo), hi);
                qc_store4_s8(dst + n, v);
            }
        }
#endif
        for (; n < N; ++n) {
            int c = per_channel ? n : 0;
            int32_t acc = row[n];
            if (bias) {
                acc = (int32_t)((uint32_t)acc + (uint32_t)bias[n]);   /* wraps */
            }
            dst[n] = qc_requant_one(acc, mult[c], shift[c], out_zp, qmin, qmax);
        }
    }
}

void qc_dequant_acc_f32(int M, int N, const int32_t *C, const int32_t *bias, const float *scale,
                        int per_channel, const float *fbias, float *out)
{
    struct qc_epilogue ep;
    struct qc_ep_ctx c;
    int m, n;
    memset(&ep, 0, sizeof ep);
    ep.bias = bias;
    ep.per_channel = per_channel;
    ep.scale = scale;
    ep.fbias = fbias;
    c.ep = &ep;
    c.mode = QC_OUT_F32;
    c.out = out;
    c.ldo = N;
    for (m = 0; m < M; ++m) {   /* the GEMM epilogue's arithmetic (vector on NEON), row by row */
        n = 0;
#if defined(QC_VEC_NEON)
        for (; n + 4 <= N; n += 4) {
            qc_ep_group(&c, C + (size_t)m * N + n, N, 1, m, n);
        }
#endif
        for (; n < N; ++n) {
            qc_ep_one(&c, C[(size_t)m * N + n], m, n);
        }
    }
}

/* Round to nearest, ties to even, for |v| <= 2^22 (callers clamp first): adding and
   subtracting 1.5 * 2^23 leaves the integer part in the mantissa under the default
   rounding mode. Needs IEEE float evaluation (no -ffast-math). */
static float qc_round_half_even(float v)
{
    volatile float t = v + 12582912.0f;
    return t - 12582912.0f;
}

static int32_t qc_quantize_one(float x, float scale, int32_t zp, int32_t lo, int32_t hi)
{
    float v = x / scale;
    float flo = (float)(lo - zp), fhi = (float)(hi - zp);
    if (!(v >= flo)) {      /* also catches NaN, mapped to the low end */
        v = flo;
    }
    if (v > fhi) {
        v = fhi;
    }
    return (int32_t)qc_round_half_even(v) + zp;
}

#if defined(QC_VEC_NEON)
/* 8 values of QuantizeLinear before the narrowing: clamp(x / scale) to [flo, fhi] (FMAXNM maps
   NaN to flo, as the scalar !(v >= flo)), FCVTNS rounds half to even, + zp. */
QC_INLINE int16x8_t qc_quantize8(const float *x, float32x4_t s, float32x4_t flo, float32x4_t fhi,
                                  int32x4_t zp)
{
    float32x4_t a = vminq_f32(vmaxnmq_f32(vdivq_f32(vld1q_f32(x), s), flo), fhi);
    float32x4_t b = vminq_f32(vmaxnmq_f32(vdivq_f32(vld1q_f32(x + 4), s), flo), fhi);
    return vcombine_s16(vmovn_s32(vaddq_s32(vcvtnq_s32_f32(a), zp)),
                        vmovn_s32(vaddq_s32(vcvtnq_s32_f32(b), zp)));
}

#define QC_QUANT_VEC(lo, hi, store)                                                       \
    do {                                                                                  \
        const float32x4_t s = vdupq_n_f32(scale), flo = vdupq_n_f32((float)((lo) - zp));    \
        const float32x4_t fhi = vdupq_n_f32((float)((hi) - zp));                            \
        const int32x4_t z = vdupq_n_s32(zp);                                              \
        for (; i + 8 <= n; i += 8) {                                                      \
            int16x8_t q = qc_quantize8(x + i, s, flo, fhi, z);                              \
            store;                                                                        \
        }                                                                                 \
    } while (0)
#endif

void qc_quantize_s8(size_t n, const float *x, float scale, int32_t zp, int8_t *y)
{
    size_t i = 0;
#if defined(QC_VEC_NEON)
    QC_QUANT_VEC(-128, 127, vst1_s8(y + i, vmovn_s16(q)));
#endif
    for (; i < n; ++i) {
        y[i] = (int8_t)qc_quantize_one(x[i], scale, zp, -128, 127);
    }
}

void qc_quantize_u8(size_t n, const float *x, float scale, int32_t zp, uint8_t *y)
{
    size_t i = 0;
#if defined(QC_VEC_NEON)
    QC_QUANT_VEC(0, 255, vst1_u8(y + i, vmovn_u16(vreinterpretq_u16_s16(q))));
#endif
    for (; i < n; ++i) {
        y[i] = (uint8_t)qc_quantize_one(x[i], scale, zp, 0, 255);
    }
}

void qc_dequantize_s8(size_t n, const int8_t *x, float scale, int32_t zp, float *y)
{
    size_t i = 0;
#if defined(QC_VEC_NEON)
    const float32x4_t s = vdupq_n_f32(scale);
    const int32x4_t z = vdupq_n_s32(zp);
    for (; i + 8 <= n; i += 8) {
        int16x8_t h = vmovl_s8(vld1_s8(x + i));
        vst1q_f32(y + i, vmulq_f32(vcvtq_f32_s32(vsubq_s32(vmovl_s16(vget_low_s16(h)), z)), s));
        vst1q_f32(y + i + 4, vmulq_f32(vcvtq_f32_s32(vsubq_s32(vmovl_high_s16(h), z)), s));
    }
#endif
    for (; i < n; ++i) {
        y[i] = (float)((int32_t)x[i] - zp) * scale;
    }
}

void qc_dequantize_u8(size_t n, const uint8_t *x, float scale, int32_t zp, float *y)
{
    size_t i = 0;
#if defined(QC_VEC_NEON)
    const float32x4_t s = vdupq_n_f32(scale);
    const int32x4_t z = vdupq_n_s32(zp);
    for (; i + 8 <= n; i += 8) {
        int16x8_t h = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(x + i)));
        vst1q_f32(y + i, vmulq_f32(vcvtq_f32_s32(vsubq_s32(vmovl_s16(vget_low_s16(h)), z)), s));
        vst1q_f32(y + i + 4, vmulq_f32(vcvtq_f32_s32(vsubq_s32(vmovl_high_s16(h), z)), s));
    }
#endif
    for (; i < n; ++i) {
        y[i] = (float)((int32_t)x[i] - zp) * scale;
    }
}
