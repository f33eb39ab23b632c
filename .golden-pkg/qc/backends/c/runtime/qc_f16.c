/* binary16 conversions and the float16 matmul (float32 accumulation, one rounding). */
#include <string.h>
#include "qc_kernels.h"

#if defined(__aarch64__) && defined(__ARM_NEON)
/* Every Armv8-A FPU converts between binary16 and float32 (FCVT, FCVTL, FCVTN), round to
   nearest even; FEAT_FP16 (QC_HAVE_FP16) only adds binary16 arithmetic. So aarch64 uses the
   hardware conversions either way, and the bit-level code below serves the other targets. */
#define QC_F16_NEON 1
#include <arm_neon.h>
#endif

#if !defined(QC_HAVE_FP16) && !defined(QC_F16_NEON)
static uint32_t qc_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float qc_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Bit-level conversions, used where the target has no binary16 type. */
static uint16_t qc_f32_to_f16_bits(float f)
{
    uint32_t x = qc_f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) {                        /* inf or NaN (NaN stays quiet NaN) */
        return (uint16_t)(sign | (ax > 0x7f800000u ? 0x7e00u | ((ax >> 13) & 0x3ffu) : 0x7c00u));
    }
    if (ax >= 0x477ff000u) {                        /* >= 65520 rounds to infinity */
        return (uint16_t)(sign | 0x7c00u);
    }
    if (ax < 0x38800000u) {                         /* below 2^-14: subnormal or zero */
        uint32_t e = ax >> 23, mant, s, result, rem, half;
        if (ax < 0x33000000u) {                     /* below 2^-25 (a tie at 2^-25 goes to 0) */
            return (uint16_t)sign;
        }
        mant = (ax & 0x7fffffu) | 0x800000u;
        s = 126u - e;
        result = mant >> s;
        rem = mant & ((1u << s) - 1u);
        half = 1u << (s - 1u);
        if (rem > half || (rem == half && (result & 1u))) {
            ++result;
        }
        return (uint16_t)(sign | result);
    }
    ax -= 0x38000000u;                              /* rebias the exponent 127 -> 15 */
    return (uint16_t)(sign | ((ax + 0xfffu + ((ax >> 13) & 1u)) >> 13));
}

static float qc_f16_bits_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        if (m == 0) {
            return qc_bits_f32(sign);
        }
        e = 113;
        while (!(m & 0x400u)) {
            m <<= 1;
            --e;
        }
        return qc_bits_f32(sign | (e << 23) | ((m & 0x3ffu) << 13));
    }
    if (e == 31) {
        return qc_bits_f32(sign | 0x7f800000u | (m << 13));
    }
    return qc_bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

float qc_f16_to_f32(qc_f16 h) { return qc_f16_bits_to_f32(h); }
qc_f16 qc_f32_to_f16(float f) { return qc_f32_to_f16_bits(f); }
#elif !defined(QC_HAVE_FP16)
/* aarch64 without FEAT_FP16: qc_f16 is uint16_t, __fp16 is a storage type with FCVT */
float qc_f16_to_f32(qc_f16 h)
{
    __fp16 t;
    memcpy(&t, &h, sizeof t);
    return (float)t;
}

qc_f16 qc_f32_to_f16(float f)
{
    __fp16 t = (__fp16)f;
    qc_f16 h;
    memcpy(&h, &t, sizeof h);
    return h;
}
#else
float qc_f16_to_f32(qc_f16 h) { return (float)h; }
qc_f16 qc_f32_to_f16(float f) { return (qc_f16)f; }
#endif

/* Products of two binary16 values are exact in float32, so fused and unfused
   multiply-adds agree and every variant below gives the same bits when it sums over k in
   ascending order. */
void qc_matmul_f16(int M, int N, int K, const qc_f16 *A, const qc_f16 *W, qc_f16 *out)
{
    int m, n, k;
    for (m = 0; m < M; ++m) {
        const qc_f16 *a = A + (size_t)m * K;
        n = 0;
#if defined(QC_F16_NEON)
        for (; n + 8 <= N; n += 8) {
            float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
            float16x8_t r;
            for (k = 0; k < K; ++k) {
#if defined(QC_HAVE_FP16)
                float16x8_t w = vld1q_f16(W + (size_t)k * N + n);
#else
                float16x8_t w = vreinterpretq_f16_u16(vld1q_u16(W + (size_t)k * N + n));
#endif
                float32x4_t av = vdupq_n_f32(qc_f16_to_f32(a[k]));
                acc0 = vfmaq_f32(acc0, av, vcvt_f32_f16(vget_low_f16(w)));
                acc1 = vfmaq_f32(acc1, av, vcvt_high_f32_f16(w));
            }
            r = vcombine_f16(vcvt_f16_f32(acc0), vcvt_f16_f32(acc1));
#if defined(QC_HAVE_FP16)
            vst1q_f16(out + (size_t)m * N + n, r);
#else
            vst1q_u16(out + (size_t)m * N + n, vreinterpretq_u16_f16(r));
#endif
        }
#endif
        for (; n < N; ++n) {
            float acc = 0.0f;
            for (k = 0; k < K; ++k) {
                acc += qc_f16_to_f32(a[k]) * qc_f16_to_f32(W[(size_t)k * N + n]);
            }
            out[(size_t)m * N + n] = qc_f32_to_f16(acc);
        }
    }
}
