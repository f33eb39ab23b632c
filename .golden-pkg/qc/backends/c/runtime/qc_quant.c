/* Requantization, accumulator dequantization and elementwise (de)quantization. Portable C99,
   except qc_requant_s8, which runs 4 columns at a time with NEON (QC_KERNEL_NEON / DOTPROD /
   I8MM) or Helium (QC_KERNEL_MVE), bit-exact with the scalar path. */
#include <string.h>
#include "qc_kernels.h"

/* TFLite / gemmlowp SaturatingRoundingDoublingHighMul. */
static int32_t qc_srdhm(int32_t a, int32_t b)
{
    int64_t ab, nudge, q;
    if (a == INT32_MIN && b == INT32_MIN) {
        return INT32_MAX;
    }
    ab = (int64_t)a * (int64_t)b;
    nudge = ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30));
    /* (ab + nudge) / 2^31 truncating toward zero, as TFLite, without a 64-bit division
       (a library call on 32-bit cores); |ab + nudge| < 2^62 so the negation is safe. */
    q = ab + nudge;
    q = q >= 0 ? (q >> 31) : -((-q) >> 31);
    return (int32_t)q;
}

/* gemmlowp RoundingDivideByPOT: round to nearest, ties away from zero. */
static int32_t qc_rdbpot(int32_t x, int exponent)
{
    int32_t mask, remainder, threshold;
    if (exponent <= 0) {
        return x;
    }
    if (exponent > 31) {
        exponent = 31;
    }
    mask = (int32_t)(((uint32_t)1 << exponent) - 1u);
    remainder = x & mask;
    threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

int32_t qc_multiply_by_quantized_multiplier(int32_t x, int32_t mult, int32_t shift)
{
    int left = shift > 0 ? shift : 0;
    int right = shift > 0 ? 0 : -shift;
    if (left > 31) {
        left = 31;
    }
    x = (int32_t)((uint32_t)x << left);   /* wraps like TFLite's x * (1 << left_shift) */
    return qc_rdbpot(qc_srdhm(x, mult), right);
}

static int8_t qc_requant_one(int32_t acc, int32_t mult, int32_t shift, int32_t out_zp,
                             int32_t qmin, int32_t qmax)
{
    int32_t v = qc_multiply_by_quantized_multiplier(acc, mult, shift);
    v = (int32_t)((uint32_t)v + (uint32_t)out_zp);
    v = v < qmin ? qmin : v;
    v = v > qmax ? qmax : v;
    return (int8_t)v;
}

#if defined(QC_KERNEL_NEON) || defined(QC_KERNEL_DOTPROD) || defined(QC_KERNEL_I8MM)
#include <arm_neon.h>
#define QC_REQUANT_SIMD 1
#define QC_LD4(p) vld1q_s32(p)
#elif defined(QC_KERNEL_MVE)
#include <arm_mve.h>
#define QC_REQUANT_SIMD 1
#define QC_LD4(p) vldrwq_s32(p)
#endif

#if defined(QC_REQUANT_SIMD)
/* gemmlowp's vector MultiplyByQuantizedMultiplier, 4 lanes (NEON or Helium, same intrinsic
   names): SQRDMULH is SaturatingRoundingDoublingHighMul; RoundingDivideByPOT is a fix-up
   (x - 1, saturating, for negative x when shifting right) then a rounding shift right
   (SRSHL / VRSHL by a negative count). The left shift (SSHL) wraps like the scalar code.
   Bit-exact with the scalar path for shifts in -31..30 (tests). */
static inline int32x4_t qc_mbqm4(int32x4_t x, int32x4_t mult, int32x4_t shift)
{
    const int32x4_t zero = vdupq_n_s32(0);
    const int32x4_t right = vminq_s32(shift, zero);
    int32x4_t fixup;
    x = vshlq_s32(x, vmaxq_s32(shift, zero));
    x = vqrdmulhq_s32(x, mult);
    fixup = vshrq_n_s32(vandq_s32(x, right), 31);
    return vrshlq_s32(vqaddq_s32(x, fixup), right);
}

static inline void qc_store4_s8(int8_t *dst, int32x4_t v)
{
#if defined(QC_KERNEL_MVE)
    vstrbq_s32(dst, v);
#else
    int8_t tmp[8];
    int16x4_t h = vmovn_s32(v);
    vst1_s8(tmp, vmovn_s16(vcombine_s16(h, h)));
    memcpy(dst, tmp, 4);
#endif
}
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
    int m, n;
    for (m = 0; m < M; ++m) {
        for (n = 0; n < N; ++n) {
            int32_t acc = C[(size_t)m * N + n];
            float v;
            if (bias) {
                acc = (int32_t)((uint32_t)acc + (uint32_t)bias[n]);
            }
            v = (float)acc * scale[per_channel ? n : 0];
            if (fbias) {
                v += fbias[n];
            }
            out[(size_t)m * N + n] = v;
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

void qc_quantize_s8(size_t n, const float *x, float scale, int32_t zp, int8_t *y)
{
    size_t i;
    for (i = 0; i < n; ++i) {
        y[i] = (int8_t)qc_quantize_one(x[i], scale, zp, -128, 127);
    }
}

void qc_quantize_u8(size_t n, const float *x, float scale, int32_t zp, uint8_t *y)
{
    size_t i;
    for (i = 0; i < n; ++i) {
        y[i] = (uint8_t)qc_quantize_one(x[i], scale, zp, 0, 255);
    }
}

void qc_dequantize_s8(size_t n, const int8_t *x, float scale, int32_t zp, float *y)
{
    size_t i;
    for (i = 0; i < n; ++i) {
        y[i] = (float)((int32_t)x[i] - zp) * scale;
    }
}

void qc_dequantize_u8(size_t n, const uint8_t *x, float scale, int32_t zp, float *y)
{
    size_t i;
    for (i = 0; i < n; ++i) {
        y[i] = (float)((int32_t)x[i] - zp) * scale;
    }
}
