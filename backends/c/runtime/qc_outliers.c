/* The outlier half of split-outliers in one pass (LLM.int8()): the float16 product of the few
   outlier columns of x, added into the int8 part's float result, then the bias Add and the GELU
   that follow it in the model (lower_outliers.py). */
#include "qc_kernels.h"
#include "qc_ops.h"
#include "qc_vmath.h"

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define QC_OUTL_NEON 1
#endif

#if defined(__GNUC__)
#define QC_OUTL_INLINE static inline __attribute__((always_inline))
#else
#define QC_OUTL_INLINE static inline
#endif

/* Scalar: the same steps as Cast(f16), qc_matmul_f16's tail, Cast(f32), Add and the bias Add
   (W holds the float16 weights widened to float32, exactly: the products are qc_matmul_f16's). */
static float qc_outl_one(int r16, int ncols, const float *a, int as, const float *W, int N, int n, float yin,
                         const float *bias)
{
    float acc = 0.0f, v;
    int k;
    for (k = 0; k < ncols; ++k) {
        acc += a[k * as] * W[(size_t)k * N + n];
    }
    v = yin + (r16 ? qc_f16_to_f32(qc_f32_to_f16(acc)) : acc);
    return bias != NULL ? v + bias[n] : v;
}

#if defined(QC_OUTL_NEON)
/* f32 -> binary16 (round to nearest even) -> f32, four lanes */
QC_OUTL_INLINE float32x4_t qc_outl_round16(float32x4_t v) { return vcvt_f32_f16(vcvt_f16_f32(v)); }

/* four outputs: act(y_in + f32(f16(c)) (+ b)) (* s); b is read only when has_bias, s when sc */
QC_OUTL_INLINE void qc_outl_put(int r16, float32x4_t c, const float *yi, int has_bias, float32x4_t b, int act,
                                const float *sc, float *yo)
{
    float32x4_t v = vaddq_f32(vld1q_f32(yi), r16 ? qc_outl_round16(c) : c);
    if (has_bias) {
        v = vaddq_f32(v, b);
    }
    if (act == QC_OUTL_GELU) {
        v = qc_vgelu(v);
    } else if (act == QC_OUTL_GELU_TANH) {
        v = qc_vgelu_tanh(v);
    }
    if (sc != NULL) {
        v = vmulq_f32(v, vld1q_f32(sc));
    }
    vst1q_f32(yo, v);
}

QC_OUTL_INLINE float qc_outl_act1(float v, int act, const float *scale, int n)
{
    v = act == QC_OUTL_GELU ? qc_geluf(v) : act == QC_OUTL_GELU_TANH ? qc_gelu_tanhf(v) : v;
    return scale != NULL ? v * scale[n] : v;
}

/* Products of two binary16 values are exact in float32, so each FMLA adds exactly the product
   that qc_matmul_f16 adds: every output is its sum over k in ascending order, rounded once per
   step, whatever the tile. */

/* Rows m .. m+3: a holds their rounded outlier values interleaved, a[4 k + r]. 4 x 16 tiles (one
   64-byte load of W and one of a per k, 16 lane-indexed FMLAs), then 4 x 4, then scalar. */
QC_OUTL_INLINE void qc_outl_rows4(int r16, int N, int ncols, const float *a, const float *W, const float *y_in,
                                  const float *bias, int act, const float *scale, float *y)
{
    const float *yi0 = y_in, *yi1 = y_in + N, *yi2 = y_in + 2 * (size_t)N, *yi3 = y_in + 3 * (size_t)N;
    float *yo0 = y, *yo1 = y + N, *yo2 = y + 2 * (size_t)N, *yo3 = y + 3 * (size_t)N;
    const int hb = bias != NULL;
    const float32x4_t z = vdupq_n_f32(0.0f);
    int n = 0, k, r;
    for (; n + 16 <= N; n += 16) {
        float32x4_t c00 = z, c01 = z, c02 = z, c03 = z, c10 = z, c11 = z, c12 = z, c13 = z;
        float32x4_t c20 = z, c21 = z, c22 = z, c23 = z, c30 = z, c31 = z, c32 = z, c33 = z;
        float32x4_t b0 = z, b1 = z, b2 = z, b3 = z;
        const float *w = W + n;
        for (k = 0; k < ncols; ++k, w += N) {
            const float32x4x4_t wv = vld1q_f32_x4(w);
            const float32x4_t av = vld1q_f32(a + 4 * k);
            c00 = vfmaq_laneq_f32(c00, wv.val[0], av, 0);
            c01 = vfmaq_laneq_f32(c01, wv.val[1], av, 0);
            c02 = vfmaq_laneq_f32(c02, wv.val[2], av, 0);
            c03 = vfmaq_laneq_f32(c03, wv.val[3], av, 0);
            c10 = vfmaq_laneq_f32(c10, wv.val[0], av, 1);
            c11 = vfmaq_laneq_f32(c11, wv.val[1], av, 1);
            c12 = vfmaq_laneq_f32(c12, wv.val[2], av, 1);
            c13 = vfmaq_laneq_f32(c13, wv.val[3], av, 1);
            c20 = vfmaq_laneq_f32(c20, wv.val[0], av, 2);
            c21 = vfmaq_laneq_f32(c21, wv.val[1], av, 2);
            c22 = vfmaq_laneq_f32(c22, wv.val[2], av, 2);
            c23 = vfmaq_laneq_f32(c23, wv.val[3], av, 2);
            c30 = vfmaq_laneq_f32(c30, wv.val[0], av, 3);
            c31 = vfmaq_laneq_f32(c31, wv.val[1], av, 3);
            c32 = vfmaq_laneq_f32(c32, wv.val[2], av, 3);
            c33 = vfmaq_laneq_f32(c33, wv.val[3], av, 3);
        }
        if (hb) {
            const float32x4x4_t bv = vld1q_f32_x4(bias + n);
            b0 = bv.val[0], b1 = bv.val[1], b2 = bv.val[2], b3 = bv.val[3];
        }
        qc_outl_put(r16, c00, yi0 + n, hb, b0, act, scale ? scale + n : NULL, yo0 + n);
        qc_outl_put(r16, c01, yi0 + n + 4, hb, b1, act, scale ? scale + n + 4 : NULL, yo0 + n + 4);
        qc_outl_put(r16, c02, yi0 + n + 8, hb, b2, act, scale ? scale + n + 8 : NULL, yo0 + n + 8);
        qc_outl_put(r16, c03, yi0 + n + 12, hb, b3, act, scale ? scale + n + 12 : NULL, yo0 + n + 12);
        qc_outl_put(r16, c10, yi1 + n, hb, b0, act, scale ? scale + n : NULL, yo1 + n);
        qc_outl_put(r16, c11, yi1 + n + 4, hb, b1, act, scale ? scale + n + 4 : NULL, yo1 + n + 4);
        qc_outl_put(r16, c12, yi1 + n + 8, hb, b2, act, scale ? scale + n + 8 : NULL, yo1 + n + 8);
        qc_outl_put(r16, c13, yi1 + n + 12, hb, b3, act, scale ? scale + n + 12 : NULL, yo1 + n + 12);
        qc_outl_put(r16, c20, yi2 + n, hb, b0, act, scale ? scale + n : NULL, yo2 + n);
        qc_outl_put(r16, c21, yi2 + n + 4, hb, b1, act, scale ? scale + n + 4 : NULL, yo2 + n + 4);
        qc_outl_put(r16, c22, yi2 + n + 8, hb, b2, act, scale ? scale + n + 8 : NULL, yo2 + n + 8);
        qc_outl_put(r16, c23, yi2 + n + 12, hb, b3, act, scale ? scale + n + 12 : NULL, yo2 + n + 12);
        qc_outl_put(r16, c30, yi3 + n, hb, b0, act, scale ? scale + n : NULL, yo3 + n);
        qc_outl_put(r16, c31, yi3 + n + 4, hb, b1, act, scale ? scale + n + 4 : NULL, yo3 + n + 4);
        qc_outl_put(r16, c32, yi3 + n + 8, hb, b2, act, scale ? scale + n + 8 : NULL, yo3 + n + 8);
        qc_outl_put(r16, c33, yi3 + n + 12, hb, b3, act, scale ? scale + n + 12 : NULL, yo3 + n + 12);
    }
    for (; n + 4 <= N; n += 4) {
        float32x4_t c0 = z, c1 = z, c2 = z, c3 = z;
        const float32x4_t b = hb ? vld1q_f32(bias + n) : z;
        for (k = 0; k < ncols; ++k) {
            const float32x4_t wv = vld1q_f32(W + (size_t)k * N + n), av = vld1q_f32(a + 4 * k);
            c0 = vfmaq_laneq_f32(c0, wv, av, 0);
            c1 = vfmaq_laneq_f32(c1, wv, av, 1);
            c2 = vfmaq_laneq_f32(c2, wv, av, 2);
            c3 = vfmaq_laneq_f32(c3, wv, av, 3);
        }
        qc_outl_put(r16, c0, yi0 + n, hb, b, act, scale ? scale + n : NULL, yo0 + n);
        qc_outl_put(r16, c1, yi1 + n, hb, b, act, scale ? scale + n : NULL, yo1 + n);
        qc_outl_put(r16, c2, yi2 + n, hb, b, act, scale ? scale + n : NULL, yo2 + n);
        qc_outl_put(r16, c3, yi3 + n, hb, b, act, scale ? scale + n : NULL, yo3 + n);
    }
    for (; n < N; ++n) {
        for (r = 0; r < 4; ++r) {
            const size_t at = (size_t)r * N + n;
            y[at] = qc_outl_act1(qc_outl_one(r16, ncols, a + r, 4, W, N, n, y_in[at], bias), act, scale, n);
        }
    }
}

/* One row: a holds its rounded outlier values. 1 x 16 tiles, 1 x 4, then scalar. */
QC_OUTL_INLINE void qc_outl_row1(int r16, int N, int ncols, const float *a, const float *W, const float *yi,
                                 const float *bias, int act, const float *scale, float *yo)
{
    const int hb = bias != NULL;
    const float32x4_t z = vdupq_n_f32(0.0f);
    int n = 0, k;
    for (; n + 16 <= N; n += 16) {
        float32x4_t c0 = z, c1 = z, c2 = z, c3 = z, b0 = z, b1 = z, b2 = z, b3 = z;
        const float *w = W + n;
        for (k = 0; k < ncols; ++k, w += N) {
            const float32x4x4_t wv = vld1q_f32_x4(w);
            const float32x4_t av = vdupq_n_f32(a[k]);
            c0 = vfmaq_f32(c0, av, wv.val[0]);
            c1 = vfmaq_f32(c1, av, wv.val[1]);
            c2 = vfmaq_f32(c2, av, wv.val[2]);
            c3 = vfmaq_f32(c3, av, wv.val[3]);
        }
        if (hb) {
            const float32x4x4_t bv = vld1q_f32_x4(bias + n);
            b0 = bv.val[0], b1 = bv.val[1], b2 = bv.val[2], b3 = bv.val[3];
        }
        qc_outl_put(r16, c0, yi + n, hb, b0, act, scale ? scale + n : NULL, yo + n);
        qc_outl_put(r16, c1, yi + n + 4, hb, b1, act, scale ? scale + n + 4 : NULL, yo + n + 4);
        qc_outl_put(r16, c2, yi + n + 8, hb, b2, act, scale ? scale + n + 8 : NULL, yo + n + 8);
        qc_outl_put(r16, c3, yi + n + 12, hb, b3, act, scale ? scale + n + 12 : NULL, yo + n + 12);
    }
    for (; n + 4 <= N; n += 4) {
        float32x4_t c0 = z;
        for (k = 0; k < ncols; ++k) {
            c0 = vfmaq_f32(c0, vdupq_n_f32(a[k]), vld1q_f32(W + (size_t)k * N + n));
        }
        qc_outl_put(r16, c0, yi + n, hb, hb ? vld1q_f32(bias + n) : z, act, scale ? scale + n : NULL, yo + n);
    }
    for (; n < N; ++n) {
        yo[n] = qc_outl_act1(qc_outl_one(r16, ncols, a, 1, W, N, n, yi[n], bias), act, scale, n);
    }
}

QC_OUTL_INLINE void qc_outl_neon(int r16, int M, int N, int ncols, const float *x, int ldx, const int32_t *cols,
                                 const float *W, const float *y_in, const float *bias, int act,
                                 const float *scale, float *y, float *a)
{
    int m = 0, k;
    for (; m + 4 <= M; m += 4) {
        const float *x0 = x + (size_t)m * ldx;
        const size_t at = (size_t)m * N;
        for (k = 0; k < ncols; ++k) {  /* a[4 k + r] = f32(f16(x[m + r][cols[k]])) */
            const float *p = x0 + cols[k];
            float32x4_t v = vld1q_dup_f32(p);
            v = vld1q_lane_f32(p + ldx, v, 1);
            v = vld1q_lane_f32(p + 2 * (size_t)ldx, v, 2);
            v = vld1q_lane_f32(p + 3 * (size_t)ldx, v, 3);
            vst1q_f32(a + 4 * k, r16 ? qc_outl_round16(v) : v);
        }
        qc_outl_rows4(r16, N, ncols, a, W, y_in + at, bias, act, scale, y + at);
    }
    for (; m < M; ++m) {
        const float *xr = x + (size_t)m * ldx;
        for (k = 0; k < ncols; ++k) {
            a[k] = r16 ? qc_f16_to_f32(qc_f32_to_f16(xr[cols[k]])) : xr[cols[k]];
        }
        qc_outl_row1(r16, N, ncols, a, W, y_in + (size_t)m * N, bias, act, scale, y + (size_t)m * N);
    }
}
#endif

/* r16: the float16 form (inputs and the sum rounded to binary16); 0: the float32 form */
QC_OUTL_INLINE void qc_outlier_acc(int r16, int M, int N, int ncols, const float *x, int ldx, const int32_t *cols,
                                   const float *W, const float *y_in, const float *bias, int act, const float *scale,
                                   float *y, float *scratch)
{
#if defined(QC_OUTL_NEON)
    /* one copy per epilogue of the models (no test of bias / act / scale per vector), one for the rest */
    if (bias == NULL && act == QC_OUTL_NONE && scale == NULL) {
        qc_outl_neon(r16, M, N, ncols, x, ldx, cols, W, y_in, NULL, QC_OUTL_NONE, NULL, y, scratch);
    } else if (bias != NULL && act == QC_OUTL_NONE && scale == NULL) {
        qc_outl_neon(r16, M, N, ncols, x, ldx, cols, W, y_in, bias, QC_OUTL_NONE, NULL, y, scratch);
    } else if (bias != NULL && act == QC_OUTL_GELU && scale != NULL) {
        qc_outl_neon(r16, M, N, ncols, x, ldx, cols, W, y_in, bias, QC_OUTL_GELU, scale, y, scratch);
    } else if (bias != NULL && act == QC_OUTL_GELU) {
        qc_outl_neon(r16, M, N, ncols, x, ldx, cols, W, y_in, bias, QC_OUTL_GELU, NULL, y, scratch);
    } else {
        qc_outl_neon(r16, M, N, ncols, x, ldx, cols, W, y_in, bias, act, scale, y, scratch);
    }
#else
    int m, n, k;
    size_t i;
    for (m = 0; m < M; ++m) {
        const float *xr = x + (size_t)m * ldx;
        for (k = 0; k < ncols; ++k) {
            scratch[k] = r16 ? qc_f16_to_f32(qc_f32_to_f16(xr[cols[k]])) : xr[cols[k]];
        }
        for (n = 0; n < N; ++n) {
            const size_t at = (size_t)m * N + n;
            y[at] = qc_outl_one(r16, ncols, scratch, 1, W, N, n, y_in[at], bias);
        }
    }
    /* the standalone kernel's pass: on Helium its vector and scalar lanes differ for subnormals */
    if (act != QC_OUTL_NONE) {
        qc_unary_f32(act == QC_OUTL_GELU ? QC_GELU : QC_GELU_TANH, (size_t)M * N, y, 0.0f, 0.0f, y);
    }
    if (scale != NULL) {
        for (i = 0; i < (size_t)M * N; ++i) {
            y[i] = y[i] * scale[i % (size_t)N];
        }
    }
#endif
}

void qc_outlier_acc_f16(int M, int N, int ncols, const float *x, int ldx, const int32_t *cols,
                        const float *W, const float *y_in, const float *bias, int act, const float *scale,
                        float *y, float *scratch)
{
    qc_outlier_acc(1, M, N, ncols, x, ldx, cols, W, y_in, bias, act, scale, y, scratch);
}

void qc_outlier_acc_f32(int M, int N, int ncols, const float *x, int ldx, const int32_t *cols,
                        const float *W, const float *y_in, const float *bias, int act, const float *scale,
                        float *y, float *scratch)
{
    qc_outlier_acc(0, M, N, ncols, x, ldx, cols, W, y_in, bias, act, scale, y, scratch);
}
