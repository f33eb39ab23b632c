/* The outlier half of split-outliers in one pass (LLM.int8()): the float16 product of the few
   outlier columns of x, added into the int8 part's float result. */
#include "qc_kernels.h"

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define QC_OUTL_NEON 1
#endif

#if defined(QC_OUTL_NEON)
/* f32 -> binary16 (round to nearest even) -> f32, four lanes */
static float32x4_t qc_outl_round16(float32x4_t v) { return vcvt_f32_f16(vcvt_f16_f32(v)); }
#endif

/* Scalar: the same steps as Cast(f16), qc_matmul_f16's tail, Cast(f32) and Add (W holds the
   float16 weights widened to float32, exactly: the products are qc_matmul_f16's). */
static float qc_outl_one(int ncols, const float *a, const float *W, int N, int n, float yin)
{
    float acc = 0.0f;
    int k;
    for (k = 0; k < ncols; ++k) {
        acc += a[k] * W[(size_t)k * N + n];
    }
    return yin + qc_f16_to_f32(qc_f32_to_f16(acc));
}

void qc_outlier_acc_f16(int M, int N, int ncols, const float *x, int ldx, const int32_t *cols,
                        const float *W, const float *y_in, float *y, float *a)
{
    int m, n, k;
    for (m = 0; m < M; ++m) {
        const float *xr = x + (size_t)m * ldx;
        const float *yi = y_in + (size_t)m * N;
        float *yo = y + (size_t)m * N;
        for (k = 0; k < ncols; ++k) {
            a[k] = qc_f16_to_f32(qc_f32_to_f16(xr[cols[k]]));
        }
        n = 0;
#if defined(QC_OUTL_NEON)
        /* products of two binary16 values are exact in float32: FMLA gives the bits of
           qc_matmul_f16's sum over k in ascending order */
        for (; n + 16 <= N; n += 16) {
            float32x4_t c0 = vdupq_n_f32(0.0f), c1 = c0, c2 = c0, c3 = c0;
            for (k = 0; k < ncols; ++k) {
                const float *w = W + (size_t)k * N + n;
                float32x4_t av = vdupq_n_f32(a[k]);
                c0 = vfmaq_f32(c0, av, vld1q_f32(w));
                c1 = vfmaq_f32(c1, av, vld1q_f32(w + 4));
                c2 = vfmaq_f32(c2, av, vld1q_f32(w + 8));
                c3 = vfmaq_f32(c3, av, vld1q_f32(w + 12));
            }
            vst1q_f32(yo + n, vaddq_f32(vld1q_f32(yi + n), qc_outl_round16(c0)));
            vst1q_f32(yo + n + 4, vaddq_f32(vld1q_f32(yi + n + 4), qc_outl_round16(c1)));
            vst1q_f32(yo + n + 8, vaddq_f32(vld1q_f32(yi + n + 8), qc_outl_round16(c2)));
            vst1q_f32(yo + n + 12, vaddq_f32(vld1q_f32(yi + n + 12), qc_outl_round16(c3)));
        }
        for (; n + 4 <= N; n += 4) {
            float32x4_t c0 = vdupq_n_f32(0.0f);
            for (k = 0; k < ncols; ++k) {
                c0 = vfmaq_f32(c0, vdupq_n_f32(a[k]), vld1q_f32(W + (size_t)k * N + n));
            }
            vst1q_f32(yo + n, vaddq_f32(vld1q_f32(yi + n), qc_outl_round16(c0)));
        }
#endif
        for (; n < N; ++n) {
            yo[n] = qc_outl_one(ncols, a, W, N, n, yi[n]);
        }
    }
}
