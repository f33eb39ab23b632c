/* Requantization, accumulator dequantization and elementwise (de)quantization. Portable C99,
   except qc_requant_s8, which runs 4 columns at a time with NEON (QC_KERNEL_NEON / DOTPROD /
   I8MM) or Helium (QC_KERNEL_MVE), bit-exact with the scalar path. */
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
