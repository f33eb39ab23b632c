/* qc_vmath.h -- float32 vector math for qc's C backend (C99, header only, no tables, no libm
 * calls besides fmaf).
 *
 * Each function is written once, over a small set of lane operations (qc_vf_*), and compiled
 * three ways: NEON on aarch64 (float32x4_t), Helium MVE-F on Armv8.1-M (__ARM_FEATURE_MVE & 2,
 * float32x4_t) and portable C (one float per "vector"). Every multiply-add is fused (vfmaq /
 * fmaf) and every step is the same IEEE operation in the same order, so the three give the same
 * bits for the same input; the FP-contraction flag cannot change them.
 *
 *   qc_vexp   exp(x)                       qc_vlog      log(x)
 *   qc_verf   erf(x)                       qc_vtanh     tanh(x)
 *   qc_vsigmoid 1 / (1 + exp(-x))          qc_vsilu     x / (1 + exp(-x))
 *   qc_vgelu  0.5 x (1 + erf(x / sqrt 2))  qc_vgelu_tanh x * sigmoid(sqrt(8/pi) (x + 0.044715 x^3))
 *
 * Helium's floating point flushes subnormal inputs and results to zero (MVE ignores FPSCR.FZ
 * being clear), so there, and only there, lanes with subnormal inputs, results or intermediates (exp(x) for
 * x < -87.3 inside SiLU / GELU-tanh: results below 1e-34) differ from the portable lane. Scalar forms: qc_expf(x) etc. (the portable lane). Accuracy over the whole float range
 * against glibc's double functions rounded to float: docs/c-kernels.md ("Vector math") and
 * tests/test_c_vmath.py. Specials: NaN in gives NaN out; exp(-inf) = 0, exp(+inf) = +inf,
 * log(0) = -inf, log(x < 0) = NaN, erf / tanh / sigmoid saturate exactly at +-1 / 0 / 1.
 */
#ifndef QC_VM_IMPL_PASS
#ifndef QC_VMATH_H
#define QC_VMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__aarch64__) && defined(__ARM_NEON)
#define QC_VM_NEON 1
#include <arm_neon.h>
#elif defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 2)
#define QC_VM_MVE 1
#include <arm_mve.h>
#endif

/* -- the portable lane: one float ------------------------------------------------------------ */
typedef float qc_sf;
typedef uint32_t qc_su;
typedef int qc_sm;

static inline qc_sf qc_sf_dup(float a) { return a; }
static inline qc_su qc_su_dup(uint32_t a) { return a; }
static inline qc_sf qc_sf_add(qc_sf a, qc_sf b) { return a + b; }
static inline qc_sf qc_sf_sub(qc_sf a, qc_sf b) { return a - b; }
static inline qc_sf qc_sf_mul(qc_sf a, qc_sf b) { return a * b; }
static inline qc_sf qc_sf_div(qc_sf a, qc_sf b) { return a / b; }
static inline qc_sf qc_sf_fma(qc_sf a, qc_sf b, qc_sf c) { return fmaf(a, b, c); } /* a*b + c */
static inline qc_su qc_sf_bits(qc_sf a) { qc_su u; memcpy(&u, &a, 4); return u; }
static inline qc_sf qc_su_float(qc_su u) { qc_sf a; memcpy(&a, &u, 4); return a; }
static inline qc_su qc_su_add(qc_su a, qc_su b) { return a + b; }
static inline qc_su qc_su_sub(qc_su a, qc_su b) { return a - b; }
static inline qc_su qc_su_and(qc_su a, qc_su b) { return a & b; }
static inline qc_su qc_su_or(qc_su a, qc_su b) { return a | b; }
#define qc_su_shl(a, n) ((qc_su)((a) << (n)))
#define qc_su_shr(a, n) ((qc_su)((a) >> (n)))
/* arithmetic shift right by 23 of a 32-bit pattern: the sign-extended 9-bit top field */
static inline float qc_su_top9_float(qc_su a) { return (float)((int32_t)((a >> 23) ^ 0x100u) - 0x100); }
static inline qc_sm qc_sf_lt(qc_sf a, qc_sf b) { return a < b; }
static inline qc_sm qc_sf_gt(qc_sf a, qc_sf b) { return a > b; }
static inline qc_sm qc_sf_eq(qc_sf a, qc_sf b) { return a == b; }
static inline qc_sm qc_su_lt(qc_su a, qc_su b) { return a < b; }
static inline qc_sf qc_sf_sel(qc_sm m, qc_sf a, qc_sf b) { return m ? a : b; }
static inline qc_su qc_su_sel(qc_sm m, qc_su a, qc_su b) { return m ? a : b; }
/* x clamped to [lo, hi] (lo, hi nonzero); NaN stays NaN */
static inline qc_sf qc_sf_clamp(qc_sf x, float lo, float hi)
{
    x = x < lo ? lo : x;
    return x > hi ? hi : x;
}
static inline qc_sf qc_sf_abs(qc_sf a) { return qc_su_float(qc_sf_bits(a) & 0x7fffffffu); }

#define QC_VM_LANE(name) qc_sf_##name
#define QC_VM_ULANE(name) qc_su_##name
#define QC_VM_T qc_sf
#define QC_VM_U qc_su
#define QC_VM_M qc_sm
#define QC_VM_SUFFIX(f) f##_s
#define QC_VM_IMPL_PASS 1
#include "qc_vmath.h" /* the implementation pass below */
#undef QC_VM_IMPL_PASS
#undef QC_VM_LANE
#undef QC_VM_ULANE
#undef QC_VM_T
#undef QC_VM_U
#undef QC_VM_M
#undef QC_VM_SUFFIX

#if defined(QC_VM_NEON)
/* -- NEON: four lanes --------------------------------------------------------------------------- */
typedef float32x4_t qc_vf;
typedef uint32x4_t qc_vu;
typedef uint32x4_t qc_vm;
#define QC_VM_LANES 4

static inline qc_vf qc_vf_dup(float a) { return vdupq_n_f32(a); }
static inline qc_vu qc_vu_dup(uint32_t a) { return vdupq_n_u32(a); }
static inline qc_vf qc_vf_add(qc_vf a, qc_vf b) { return vaddq_f32(a, b); }
static inline qc_vf qc_vf_sub(qc_vf a, qc_vf b) { return vsubq_f32(a, b); }
static inline qc_vf qc_vf_mul(qc_vf a, qc_vf b) { return vmulq_f32(a, b); }
static inline qc_vf qc_vf_div(qc_vf a, qc_vf b) { return vdivq_f32(a, b); }
static inline qc_vf qc_vf_fma(qc_vf a, qc_vf b, qc_vf c) { return vfmaq_f32(c, a, b); }
static inline qc_vu qc_vf_bits(qc_vf a) { return vreinterpretq_u32_f32(a); }
static inline qc_vf qc_vu_float(qc_vu u) { return vreinterpretq_f32_u32(u); }
static inline qc_vu qc_vu_add(qc_vu a, qc_vu b) { return vaddq_u32(a, b); }
static inline qc_vu qc_vu_sub(qc_vu a, qc_vu b) { return vsubq_u32(a, b); }
static inline qc_vu qc_vu_and(qc_vu a, qc_vu b) { return vandq_u32(a, b); }
static inline qc_vu qc_vu_or(qc_vu a, qc_vu b) { return vorrq_u32(a, b); }
#define qc_vu_shl(a, n) vshlq_n_u32((a), (n))
#define qc_vu_shr(a, n) vshrq_n_u32((a), (n))
static inline qc_vf qc_vu_top9_float(qc_vu a) { return vcvtq_f32_s32(vshrq_n_s32(vreinterpretq_s32_u32(a), 23)); }
static inline qc_vm qc_vf_lt(qc_vf a, qc_vf b) { return vcltq_f32(a, b); }
static inline qc_vm qc_vf_gt(qc_vf a, qc_vf b) { return vcgtq_f32(a, b); }
static inline qc_vm qc_vf_eq(qc_vf a, qc_vf b) { return vceqq_f32(a, b); }
static inline qc_vm qc_vu_lt(qc_vu a, qc_vu b) { return vcltq_u32(a, b); }
static inline qc_vf qc_vf_sel(qc_vm m, qc_vf a, qc_vf b) { return vbslq_f32(m, a, b); }
static inline qc_vu qc_vu_sel(qc_vm m, qc_vu a, qc_vu b) { return vbslq_u32(m, a, b); }
/* FMAX / FMIN return the NaN operand, as the portable compare-and-select does */
static inline qc_vf qc_vf_clamp(qc_vf x, float lo, float hi)
{
    return vminq_f32(vmaxq_f32(x, vdupq_n_f32(lo)), vdupq_n_f32(hi));
}
static inline qc_vf qc_vf_abs(qc_vf a) { return vabsq_f32(a); }
static inline qc_vf qc_vf_load(const float *p) { return vld1q_f32(p); }
static inline void qc_vf_store(float *p, qc_vf a) { vst1q_f32(p, a); }

#elif defined(QC_VM_MVE)
/* -- Helium MVE-F: four lanes, predicates for masks; no vector divide --------------------------- */
typedef float32x4_t qc_vf;
typedef uint32x4_t qc_vu;
typedef mve_pred16_t qc_vm;
#define QC_VM_LANES 4

static inline qc_vf qc_vf_dup(float a) { return vdupq_n_f32(a); }
static inline qc_vu qc_vu_dup(uint32_t a) { return vdupq_n_u32(a); }
static inline qc_vf qc_vf_add(qc_vf a, qc_vf b) { return vaddq_f32(a, b); }
static inline qc_vf qc_vf_sub(qc_vf a, qc_vf b) { return vsubq_f32(a, b); }
static inline qc_vf qc_vf_mul(qc_vf a, qc_vf b) { return vmulq_f32(a, b); }
static inline qc_vf qc_vf_div(qc_vf a, qc_vf b)
{
    float x[4], y[4];
    int i;
    vst1q_f32(x, a);
    vst1q_f32(y, b);
    for (i = 0; i < 4; ++i) x[i] /= y[i];
    return vld1q_f32(x);
}
static inline qc_vf qc_vf_fma(qc_vf a, qc_vf b, qc_vf c) { return vfmaq_f32(c, a, b); }
static inline qc_vu qc_vf_bits(qc_vf a) { return vreinterpretq_u32_f32(a); }
static inline qc_vf qc_vu_float(qc_vu u) { return vreinterpretq_f32_u32(u); }
static inline qc_vu qc_vu_add(qc_vu a, qc_vu b) { return vaddq_u32(a, b); }
static inline qc_vu qc_vu_sub(qc_vu a, qc_vu b) { return vsubq_u32(a, b); }
static inline qc_vu qc_vu_and(qc_vu a, qc_vu b) { return vandq_u32(a, b); }
static inline qc_vu qc_vu_or(qc_vu a, qc_vu b) { return vorrq_u32(a, b); }
#define qc_vu_shl(a, n) vshlq_n_u32((a), (n))
#define qc_vu_shr(a, n) vshrq_n_u32((a), (n))
static inline qc_vf qc_vu_top9_float(qc_vu a) { return vcvtq_f32_s32(vshrq_n_s32(vreinterpretq_s32_u32(a), 23)); }
static inline qc_vm qc_vf_lt(qc_vf a, qc_vf b) { return vcmpltq_f32(a, b); }
static inline qc_vm qc_vf_gt(qc_vf a, qc_vf b) { return vcmpgtq_f32(a, b); }
static inline qc_vm qc_vf_eq(qc_vf a, qc_vf b) { return vcmpeqq_f32(a, b); }
static inline qc_vm qc_vu_lt(qc_vu a, qc_vu b) { return vcmphiq_u32(b, a); }
static inline qc_vf qc_vf_sel(qc_vm m, qc_vf a, qc_vf b) { return vpselq_f32(a, b, m); }
static inline qc_vu qc_vu_sel(qc_vm m, qc_vu a, qc_vu b) { return vpselq_u32(a, b, m); }
/* VMAXNM / VMINNM drop a NaN (and VCMP's LT holds for unordered operands), so a NaN is put back
 * after the clamp */
static inline qc_vf qc_vf_clamp(qc_vf x, float lo, float hi)
{
    qc_vf c = vminnmq_f32(vmaxnmq_f32(x, vdupq_n_f32(lo)), vdupq_n_f32(hi));
    return vpselq_f32(x, c, vcmpneq_f32(x, x));
}
static inline qc_vf qc_vf_abs(qc_vf a) { return vabsq_f32(a); }
static inline qc_vf qc_vf_load(const float *p) { return vld1q_f32(p); }
static inline void qc_vf_store(float *p, qc_vf a) { vst1q_f32(p, a); }
#endif

#if defined(QC_VM_NEON) || defined(QC_VM_MVE)
#define QC_VM_LANE(name) qc_vf_##name
#define QC_VM_ULANE(name) qc_vu_##name
#define QC_VM_T qc_vf
#define QC_VM_U qc_vu
#define QC_VM_M qc_vm
#define QC_VM_SUFFIX(f) f
#define QC_VM_IMPL_PASS 1
#include "qc_vmath.h" /* the implementation pass below */
#undef QC_VM_IMPL_PASS
#undef QC_VM_LANE
#undef QC_VM_ULANE
#undef QC_VM_T
#undef QC_VM_U
#undef QC_VM_M
#undef QC_VM_SUFFIX
#define QC_VM_SIMD 1
#endif


/* -- row helpers: reductions in one fixed order on every target ----------------------------------
 * Lane j (j = 0..3) accumulates x[4k + j] over the first n & ~3 elements, the lanes are combined
 * as (l0 + l1) + (l2 + l3), then the tail is added in order. The portable code follows the same
 * order, so sums are the same bits with and without SIMD. */
#if defined(QC_VM_SIMD)
static inline float qc_vf_hsum(qc_vf a)
{
    float l[4];
    qc_vf_store(l, a);
    return (l[0] + l[1]) + (l[2] + l[3]);
}
#endif

/* sum of x[i] (sq = 0) or of x[i]^2 (sq = 1) or of (x[i] - c)^2 (sq = 2) */
static inline float qc_row_sum(int n, const float *x, int sq, float c)
{
    int i = 0;
    float t;
#if defined(QC_VM_SIMD)
    qc_vf acc = qc_vf_dup(0.0f), vc = qc_vf_dup(c);
    if (sq == 0) {
        for (; i + 4 <= n; i += 4) acc = qc_vf_add(acc, qc_vf_load(x + i));
    } else if (sq == 1) {
        for (; i + 4 <= n; i += 4) {
            qc_vf v = qc_vf_load(x + i);
            acc = qc_vf_fma(v, v, acc);
        }
    } else {
        for (; i + 4 <= n; i += 4) {
            qc_vf v = qc_vf_sub(qc_vf_load(x + i), vc);
            acc = qc_vf_fma(v, v, acc);
        }
    }
    t = qc_vf_hsum(acc);
#else
    float l[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    int j;
    for (; i + 4 <= n; i += 4) {
        for (j = 0; j < 4; ++j) {
            float v = sq == 2 ? x[i + j] - c : x[i + j];
            l[j] = sq ? fmaf(v, v, l[j]) : l[j] + v;
        }
    }
    t = (l[0] + l[1]) + (l[2] + l[3]);
#endif
    for (; i < n; ++i) {
        float v = sq == 2 ? x[i] - c : x[i];
        t = sq ? fmaf(v, v, t) : t + v;
    }
    return t;
}

/* the largest x[i] (NaN if one is NaN; -inf for n = 0) */
static inline float qc_row_max(int n, const float *x)
{
    int i = 0;
    float m = -INFINITY;
    for (; i < n && i < 4; ++i) m = (x[i] > m || x[i] != x[i]) ? x[i] : m;
#if defined(QC_VM_NEON)
    if (n >= 8) {
        qc_vf acc = vld1q_f32(x);
        for (i = 4; i + 4 <= n; i += 4) acc = vmaxq_f32(acc, vld1q_f32(x + i));
        m = vmaxvq_f32(acc);
    }
#endif
    for (; i < n; ++i) m = (x[i] > m || x[i] != x[i]) ? x[i] : m;
    return m;
}

/* RoPE, rotate-half form (HF Llama / SmolLM2), one row of n (even) elements, h = n / 2:
 *   y[i] = x[i] cos[i] - x[i+h] sin[i],  y[i+h] = x[i+h] cos[i+h] + x[i] sin[i+h]   (i < h)
 * as the ONNX graph x * cos + concat(-x2, x1) * sin computes it (two products, one add, no
 * fusion), so it gives that graph's bits. y may be x (in place). A building block for the fused
 * RoPE kernel (qc_ops_fused.c). */
static inline void qc_rope_half_f32(int n, const float *x, const float *cos_, const float *sin_, float *y)
{
    const int h = n / 2;
    int i = 0;
#if defined(QC_VM_SIMD)
    for (; i + 4 <= h; i += 4) {
        qc_vf a = qc_vf_load(x + i), b = qc_vf_load(x + h + i);
        qc_vf lo = qc_vf_add(qc_vf_mul(a, qc_vf_load(cos_ + i)),
                             qc_vf_mul(vnegq_f32(b), qc_vf_load(sin_ + i)));
        qc_vf hi = qc_vf_add(qc_vf_mul(b, qc_vf_load(cos_ + h + i)), qc_vf_mul(a, qc_vf_load(sin_ + h + i)));
        qc_vf_store(y + i, lo);
        qc_vf_store(y + h + i, hi);
    }
#endif
    for (; i < h; ++i) {
        const float a = x[i], b = x[h + i];
        y[i] = a * cos_[i] + (-b) * sin_[i];
        y[h + i] = b * cos_[h + i] + a * sin_[h + i];
    }
}

/* scalar entry points (the portable lane; the same bits as every SIMD lane) */
static inline float qc_expf(float x) { return qc_vexp_s(x); }
static inline float qc_logf(float x) { return qc_vlog_s(x); }
static inline float qc_erff(float x) { return qc_verf_s(x); }
static inline float qc_tanhf(float x) { return qc_vtanh_s(x); }
static inline float qc_sigmoidf_v(float x) { return qc_vsigmoid_s(x); }
static inline float qc_siluf(float x) { return qc_vsilu_s(x); }
static inline float qc_geluf(float x) { return qc_vgelu_s(x); }
static inline float qc_gelu_tanhf(float x) { return qc_vgelu_tanh_s(x); }

#endif /* QC_VMATH_H */
#else /* QC_VM_IMPL_PASS */
/* Implementation pass: included twice by the first part, once per lane type (QC_VM_T, QC_VM_U,
 * QC_VM_M, QC_VM_LANE, QC_VM_ULANE, QC_VM_SUFFIX set there). Names: qc_vexp (SIMD), qc_vexp_s. */
#define VD QC_VM_LANE(dup)
#define UD QC_VM_ULANE(dup)
#define VADD QC_VM_LANE(add)
#define VSUB QC_VM_LANE(sub)
#define VMUL QC_VM_LANE(mul)
#define VDIV QC_VM_LANE(div)
#define VFMA QC_VM_LANE(fma)
#define VBITS QC_VM_LANE(bits)
#define VLT QC_VM_LANE(lt)
#define VGT QC_VM_LANE(gt)
#define VEQ QC_VM_LANE(eq)
#define VSEL QC_VM_LANE(sel)
#define VCLAMP QC_VM_LANE(clamp)
#define VABS QC_VM_LANE(abs)
#define UFLOAT QC_VM_ULANE(float)
#define UADD QC_VM_ULANE(add)
#define USUB QC_VM_ULANE(sub)
#define UAND QC_VM_ULANE(and)
#define UOR QC_VM_ULANE(or)
#define USHL QC_VM_ULANE(shl)
#define USHR QC_VM_ULANE(shr)
#define ULT QC_VM_ULANE(lt)
#define USEL QC_VM_ULANE(sel)
#define UTOP9 QC_VM_ULANE(top9_float)

/* exp: x = n ln2 + r, |r| <= ln2/2, exp(x) = 2^n (1 + p(r)), p of degree 5 (the coefficients of
 * Arm's optimized-routines expf). 2^n is applied as 2^n1 * 2^n2 (n1 = floor(n/2)), so results
 * in the subnormal range are rounded once, and x is clamped to [-104, 89] first (exp(-104)
 * rounds to 0, exp(89) overflows to inf), which also keeps n inside the exponent field. */
static inline QC_VM_T QC_VM_SUFFIX(qc_vexp)(QC_VM_T x)
{
    const QC_VM_T shift = VD(0x1.8p23f);
    QC_VM_T z, n, r, r2, p, q, y;
    QC_VM_U t, h, s1, s2;
    x = VCLAMP(x, -104.0f, 89.0f);
    z = VFMA(x, VD(0x1.715476p+0f), shift);    /* n + 1.5 * 2^23: n rounded to nearest */
    n = VSUB(z, shift);
    r = VFMA(n, VD(-0x1.62e4p-1f), x);
    r = VFMA(n, VD(-0x1.7f7d1cp-20f), r);
    r2 = VMUL(r, r);
    p = VFMA(VD(0x1.0e4020p-7f), r, VD(0x1.573e2ep-5f));
    q = VFMA(VD(0x1.555e66p-3f), r, VD(0x1.fffdb6p-2f));
    q = VFMA(p, r2, q);
    p = VFMA(q, r2, VMUL(VD(0x1.ffffecp-1f), r));
    /* bits(z) = 0x4b400000 + n; t = n + 256 in [106, 385], h = n1 + 128 */
    t = UADD(VBITS(z), UD(256u - 0x4b400000u));
    h = USHR(t, 1);
    s1 = USUB(USHL(h, 23), UD(1u << 23));        /* 2^n1: biased exponent n1 + 127 */
    s2 = USHL(USUB(USUB(t, h), UD(1u)), 23);     /* 2^(n - n1): biased n - n1 + 127 */
    y = VFMA(p, UFLOAT(s1), UFLOAT(s1));
    return VMUL(y, UFLOAT(s2));
}

/* log: x = 2^n (1 + r), 2/3 < 1 + r < 4/3; log(x) = n ln2 + r + r^2 P(r), P of degree 6 (the
 * coefficients of Arm's optimized-routines logf). Subnormal x are scaled by 2^23 first. */
static inline QC_VM_T QC_VM_SUFFIX(qc_vlog)(QC_VM_T x)
{
    const QC_VM_U off = UD(0x3f2aaaabu);
    QC_VM_M sub = ULT(VBITS(x), UD(0x00800000u));   /* +0 and positive subnormals */
    QC_VM_T xs = VSEL(sub, VMUL(x, VD(0x1p23f)), x), n, r, r2, p, q, y;
    QC_VM_U u = USUB(VBITS(xs), off);
    n = VSUB(UTOP9(u), VSEL(sub, VD(23.0f), VD(0.0f)));
    r = VSUB(UFLOAT(UADD(UAND(u, UD(0x007fffffu)), off)), VD(1.0f));
    r2 = VMUL(r, r);
    p = VFMA(VD(0x1.5a9aa2p-3f), r, VD(-0x1.4f9934p-3f));
    q = VFMA(VD(0x1.961348p-3f), r, VD(-0x1.00187cp-2f));
    y = VFMA(VD(0x1.555d7cp-2f), r, VD(-0x1.ffffc8p-2f));
    p = VFMA(VD(-0x1.3e737cp-3f), r2, p);
    q = VFMA(p, r2, q);
    y = VFMA(q, r2, y);
    p = VFMA(n, VD(0x1.62e43p-1f), r);
    y = VFMA(y, r2, p);
    /* x = +inf: +inf; x = +-0: -inf; x < 0 or NaN: NaN */
    y = VSEL(VEQ(x, VD(INFINITY)), x, y);
    return VSEL(VGT(x, VD(0.0f)), y, VSEL(VEQ(x, VD(0.0f)), VD(-INFINITY), UFLOAT(UD(0x7fc00000u))));
}

/* erf: x P(x^2) / Q(x^2) on x clamped to [-4, 4] (erf(4) rounds to 1), P of degree 6, Q of
 * degree 4 (the rational approximation of Eigen / XLA). */
static inline QC_VM_T QC_VM_SUFFIX(qc_verf)(QC_VM_T x)
{
    QC_VM_T c = VCLAMP(x, -4.0f, 4.0f), x2 = VMUL(c, c), p, q;
    p = VFMA(x2, VD(-2.72614225801306e-10f), VD(2.77068142495902e-08f));
    p = VFMA(x2, p, VD(-2.10102402082508e-06f));
    p = VFMA(x2, p, VD(-5.69250639462346e-05f));
    p = VFMA(x2, p, VD(-7.34990630326855e-04f));
    p = VFMA(x2, p, VD(-2.95459980854025e-03f));
    p = VFMA(x2, p, VD(-1.60960333262415e-02f));
    p = VMUL(c, p);
    q = VFMA(x2, VD(-1.45660718464996e-05f), VD(-2.13374055278905e-04f));
    q = VFMA(x2, q, VD(-1.68282697438203e-03f));
    q = VFMA(x2, q, VD(-7.37332916720468e-03f));
    q = VFMA(x2, q, VD(-1.42647390514189e-02f));
    /* |x| < 2^-12: erf(x) = x + x (2/sqrt(pi) - 1), one rounding (exact for subnormal x too) */
    return VSEL(VLT(VABS(x), VD(0x1p-12f)), VFMA(x, VD(0x1.06eba8p-3f), x), VDIV(p, q));
}

/* tanh: x P(x^2) / Q(x^2) on x clamped to [-7.9053, 7.9053] (tanh rounds to +-1 beyond), P of
 * degree 6, Q of degree 3 (Eigen's rational approximation); |x| < 0.0004: tanh(x) = x. */
static inline QC_VM_T QC_VM_SUFFIX(qc_vtanh)(QC_VM_T x)
{
    QC_VM_T c = VCLAMP(x, -7.90531110763549805f, 7.90531110763549805f), x2 = VMUL(c, c), p, q;
    p = VFMA(x2, VD(-2.76076847742355e-16f), VD(2.00018790482477e-13f));
    p = VFMA(x2, p, VD(-8.60467152213735e-11f));
    p = VFMA(x2, p, VD(5.12229709037114e-08f));
    p = VFMA(x2, p, VD(1.48572235717979e-05f));
    p = VFMA(x2, p, VD(6.37261928875436e-04f));
    p = VFMA(x2, p, VD(4.89352455891786e-03f));
    p = VMUL(c, p);
    q = VFMA(x2, VD(1.19825839466702e-06f), VD(1.18534705686654e-04f));
    q = VFMA(x2, q, VD(2.26843463243900e-03f));
    q = VFMA(x2, q, VD(4.89352518554385e-03f));
    return VSEL(VLT(VABS(x), VD(0.0004f)), x, VDIV(p, q));
}

/* sigmoid(z) as num / den: e = exp(-|z|) never overflows, den = 1 + e, num = 1 (z >= 0) or e
 * (z < 0, so that results down to the subnormal range keep their precision) */
static inline QC_VM_T QC_VM_SUFFIX(qc_vsigm_den)(QC_VM_T z, QC_VM_T *num)
{
    QC_VM_T e = QC_VM_SUFFIX(qc_vexp)(VSUB(VD(0.0f), VABS(z)));
    *num = VSEL(VLT(z, VD(0.0f)), e, VD(1.0f));
    return VADD(VD(1.0f), e);
}

/* sigmoid = 1 / (1 + exp(-x)) */
static inline QC_VM_T QC_VM_SUFFIX(qc_vsigmoid)(QC_VM_T x)
{
    QC_VM_T num, den = QC_VM_SUFFIX(qc_vsigm_den)(x, &num);
    return VDIV(num, den);
}

/* SiLU = x sigmoid(x) = x num / den */
static inline QC_VM_T QC_VM_SUFFIX(qc_vsilu)(QC_VM_T x)
{
    QC_VM_T num, den = QC_VM_SUFFIX(qc_vsigm_den)(x, &num);
    return VDIV(VMUL(x, num), den);
}

/* GELU (erf form) = 0.5 x (1 + erf(x / sqrt 2)), as onnxruntime computes it (so for x < -3
 * the relative error grows: absolute error below 2^-24 there, see docs/c-kernels.md) */
static inline QC_VM_T QC_VM_SUFFIX(qc_vgelu)(QC_VM_T x)
{
    QC_VM_T e = QC_VM_SUFFIX(qc_verf)(VMUL(x, VD(0.70710678118654752f)));
    return VMUL(VMUL(VD(0.5f), x), VADD(VD(1.0f), e));
}

/* GELU (tanh form) = x sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)), as 0.5 (1 + tanh z) =
 * sigmoid(2z): no cancellation for negative x */
static inline QC_VM_T QC_VM_SUFFIX(qc_vgelu_tanh)(QC_VM_T x)
{
    QC_VM_T u = VMUL(VD(1.5957691216057307f), VFMA(VMUL(VD(0.044715f), x), VMUL(x, x), x));
    QC_VM_T num, den = QC_VM_SUFFIX(qc_vsigm_den)(u, &num);
    return VDIV(VMUL(x, num), den);
}

#undef VD
#undef UD
#undef VADD
#undef VSUB
#undef VMUL
#undef VDIV
#undef VFMA
#undef VBITS
#undef VLT
#undef VGT
#undef VEQ
#undef VSEL
#undef VCLAMP
#undef VABS
#undef UFLOAT
#undef UADD
#undef USUB
#undef UAND
#undef UOR
#undef USHL
#undef USHR
#undef ULT
#undef USEL
#undef UTOP9
#endif /* QC_VM_IMPL_PASS */
