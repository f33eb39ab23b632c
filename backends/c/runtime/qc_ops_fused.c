/* qc C backend: float kernels of the fused ops that qc_ops.c has no kernel for (see qc_ops.h). */
#include "qc_ops.h"

#include <math.h>

#if (defined(__ARM_NEON) && defined(__aarch64__)) || (defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 2))
#if defined(__aarch64__)
#include <arm_neon.h>
#else
#include <arm_mve.h>
#endif
#define QC_FUSED_NEON 1   /* the float32x4_t subset NEON and Helium share */
#endif

void qc_rmsnorm_f32(int outer, int n, float eps, const float *x, const float *scale, float *y)
{
    int o, i;
    for (o = 0; o < outer; ++o, x += n, y += n) {
        float ss = 0.0f, r;
        for (i = 0; i < n; ++i) ss = fmaf(x[i], x[i], ss);  /* fused everywhere: same bits */
        r = sqrtf(ss / (float)n + eps);
        if (scale) {
            for (i = 0; i < n; ++i) y[i] = x[i] / r * scale[i];
        } else {
            for (i = 0; i < n; ++i) y[i] = x[i] / r;
        }
    }
}

void qc_rope_f32(int n0, int n1, int n2, int D, const float *x, const int *xs, const float *cs,
                 const float *sn, const int *ts, float *y)
{
    int i0, i1, i2, i, h = D / 2;
    for (i0 = 0; i0 < n0; ++i0) {
        for (i1 = 0; i1 < n1; ++i1) {
            for (i2 = 0; i2 < n2; ++i2, y += D) {
                const float *xr = x + (ptrdiff_t)i0 * xs[0] + (ptrdiff_t)i1 * xs[1] + (ptrdiff_t)i2 * xs[2];
                ptrdiff_t t = (ptrdiff_t)i0 * ts[0] + (ptrdiff_t)i1 * ts[1] + (ptrdiff_t)i2 * ts[2];
                const float *c = cs + t, *s = sn + t;
                for (i = 0; i < h; ++i) y[i] = xr[i] * c[i] + (-xr[i + h]) * s[i];
                for (; i < D; ++i) y[i] = xr[i] * c[i] + xr[i - h] * s[i];
            }
        }
    }
}

/* the four lanes' partial sums as NEON adds them: (l0 + l1) + (l2 + l3) */
static float qc_lanes_sum(const float *acc)
{
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

void qc_add_layernorm_f32(int outer, int n, float eps, const float *a, const float *b,
                          const float *scale, const float *bias, float *y)
{
    int o, i;
    for (o = 0; o < outer; ++o, a += n, b += n, y += n) {
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}, mean, inv;
        i = 0;
#if defined(QC_FUSED_NEON)
        {
            float32x4_t s4 = vdupq_n_f32(0.0f);
            for (; i + 4 <= n; i += 4) {
                float32x4_t v = vaddq_f32(vld1q_f32(a + i), vld1q_f32(b + i));
                vst1q_f32(y + i, v);
                s4 = vaddq_f32(s4, v);
            }
            vst1q_f32(acc, s4);
        }
#endif
        for (; i < n; ++i) {
            y[i] = a[i] + b[i];
            acc[i & 3] += y[i];
        }
        mean = qc_lanes_sum(acc) / (float)n;
        acc[0] = acc[1] = acc[2] = acc[3] = 0.0f;
        i = 0;
#if defined(QC_FUSED_NEON)
        {
            float32x4_t s4 = vdupq_n_f32(0.0f), m4 = vdupq_n_f32(mean);
            for (; i + 4 <= n; i += 4) {
                float32x4_t d = vsubq_f32(vld1q_f32(y + i), m4);
                s4 = vfmaq_f32(s4, d, d);
            }
            vst1q_f32(acc, s4);
        }
#endif
        for (; i < n; ++i) {
            float d = y[i] - mean;
            acc[i & 3] = fmaf(d, d, acc[i & 3]);
        }
        inv = 1.0f / sqrtf(qc_lanes_sum(acc) / (float)n + eps);
        i = 0;
#if defined(QC_FUSED_NEON)
        {
            float32x4_t m4 = vdupq_n_f32(mean);
            for (; i + 4 <= n; i += 4) {
                float32x4_t v = vmulq_f32(vmulq_n_f32(vsubq_f32(vld1q_f32(y + i), m4), inv), vld1q_f32(scale + i));
                vst1q_f32(y + i, bias ? vaddq_f32(v, vld1q_f32(bias + i)) : v);
            }
        }
#endif
        for (; i < n; ++i) {
            float v = (y[i] - mean) * inv * scale[i];
            y[i] = bias ? v + bias[i] : v;
        }
    }
}
