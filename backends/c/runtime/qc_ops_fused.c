/* qc C backend: float kernels of the fused ops that qc_ops.c has no kernel for (see qc_ops.h). */
#include "qc_ops.h"

#include <math.h>

#include "qc_vmath.h"

#if defined(QC_VM_SIMD)
#define QC_FUSED_NEON 1   /* the float32x4_t subset NEON and Helium share */
#endif

void qc_rope_f32(int n0, int n1, int n2, int D, const float *x, const int *xs, const float *cs,
                 const float *sn, const int *ts, float *y)
{
    int i0, i1, i2;
    for (i0 = 0; i0 < n0; ++i0) {
        for (i1 = 0; i1 < n1; ++i1) {
            for (i2 = 0; i2 < n2; ++i2, y += D) {
                ptrdiff_t t = (ptrdiff_t)i0 * ts[0] + (ptrdiff_t)i1 * ts[1] + (ptrdiff_t)i2 * ts[2];
                qc_rope_half_f32(D, x + (ptrdiff_t)i0 * xs[0] + (ptrdiff_t)i1 * xs[1] + (ptrdiff_t)i2 * xs[2],
                                 cs + t, sn + t, y);
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
                float32x4_t t = vmulq_n_f32(vsubq_f32(vld1q_f32(y + i), m4), inv);
                vst1q_f32(y + i, bias ? vfmaq_f32(vld1q_f32(bias + i), t, vld1q_f32(scale + i))
                                      : vmulq_f32(t, vld1q_f32(scale + i)));
            }
        }
#endif
        for (; i < n; ++i) {   /* an explicit fma: the same bits whatever -ffp-contract says */
            float t = (y[i] - mean) * inv;
            y[i] = bias ? fmaf(t, scale[i], bias[i]) : t * scale[i];
        }
    }
}

void qc_silu_mul_f32(int outer, int n, const float *g, const float *u, const float *c, float *y)
{
    int o, i;
    for (o = 0; o < outer; ++o, g += n, u += n, y += n) {
        i = 0;
#if defined(QC_FUSED_NEON)
        for (; i + 4 <= n; i += 4) {
            float32x4_t t = vmulq_f32(qc_vsilu(vld1q_f32(g + i)), vld1q_f32(u + i));
            vst1q_f32(y + i, c ? vmulq_f32(t, vld1q_f32(c + i)) : t);
        }
#endif
        for (; i < n; ++i) {
            float t = qc_siluf(g[i]) * u[i];
            y[i] = c ? t * c[i] : t;
        }
    }
}

void qc_add_rmsnorm_f32(int outer, int n, float eps, const float *a, const float *b, const float *scale,
                        float *s, float *y)
{
    int o, i;
    for (o = 0; o < outer; ++o, a += n, b += n, s += n, y += n) {
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}, t, inv;
        i = 0;
#if defined(QC_FUSED_NEON)
        {
            float32x4_t s4 = vdupq_n_f32(0.0f);
            for (; i + 4 <= n; i += 4) {
                float32x4_t v = vaddq_f32(vld1q_f32(a + i), vld1q_f32(b + i));
                vst1q_f32(s + i, v);
                s4 = vfmaq_f32(s4, v, v);
            }
            vst1q_f32(acc, s4);
        }
#else
        for (; i + 4 <= n; i += 4) {
            int j;
            for (j = 0; j < 4; ++j) {
                s[i + j] = a[i + j] + b[i + j];
                acc[j] = fmaf(s[i + j], s[i + j], acc[j]);
            }
        }
#endif
        t = qc_lanes_sum(acc);   /* then the tail in order: qc_row_sum's order */
        for (; i < n; ++i) {
            s[i] = a[i] + b[i];
            t = fmaf(s[i], s[i], t);
        }
        inv = 1.0f / sqrtf(t / (float)n + eps);
        i = 0;
#if defined(QC_FUSED_NEON)
        for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vmulq_f32(vmulq_n_f32(vld1q_f32(s + i), inv), vld1q_f32(scale + i)));
#endif
        for (; i < n; ++i) y[i] = s[i] * inv * scale[i];
    }
}
