/* qc C backend: the fused attention kernel (qc.Attention, see qc_ops.h and docs/c-backend.md).
 *
 * One (batch, head) at a time and one query row at a time: the Lk scores of the row live in
 * `work`, nothing larger is materialized. Q, K, V and the output are read / written through
 * strides, so the head split and merge of a model (Reshape + Transpose) cost no copy. The inner
 * loops are NEON FMLA on aarch64 (__ARM_NEON), Helium on Cortex-M55 (__ARM_FEATURE_MVE & 2),
 * plain C elsewhere. Every variant computes the same fused multiply-adds (fmaf in plain C) in
 * the same order: a dot product keeps 4 partial sums (element t into lane t % 4) and adds them
 * as (l0 + l1) + (l2 + l3); the context sums p[j] * v[j] over j in order; exp is qc_vmath.h's
 * (the same bits in every lane type). So the variants are bit-identical to each other (Helium:
 * except where its subnormal flush meets exp results below 1e-34). */
#include "qc_ops.h"

#include <math.h>

#include "qc_vmath.h"

#if defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#define QC_ATT_NEON 1
#elif defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 2)
#include <arm_mve.h>
#define QC_ATT_MVE 1
#endif

/* s[j] = dot(q, k + j*kr) for j < n, d contiguous elements each */
static void qc_att_scores(int n, int d, const float *q, const float *k, int kr, float *s)
{
    int j = 0, t;
#if defined(QC_ATT_NEON)
    if (d == 32) {   /* BERT-base-like heads: the query row stays in 8 registers */
        float32x4_t q0 = vld1q_f32(q), q1 = vld1q_f32(q + 4), q2 = vld1q_f32(q + 8), q3 = vld1q_f32(q + 12);
        float32x4_t q4 = vld1q_f32(q + 16), q5 = vld1q_f32(q + 20), q6 = vld1q_f32(q + 24), q7 = vld1q_f32(q + 28);
        float32x4_t acc[4];
        int c;
        for (; j + 4 <= n; j += 4) {
            for (c = 0; c < 4; ++c) {
                const float *kc = k + (ptrdiff_t)(j + c) * kr;
                float32x4_t a = vfmaq_f32(vdupq_n_f32(0.0f), q0, vld1q_f32(kc));
                a = vfmaq_f32(a, q1, vld1q_f32(kc + 4));
                a = vfmaq_f32(a, q2, vld1q_f32(kc + 8));
                a = vfmaq_f32(a, q3, vld1q_f32(kc + 12));
                a = vfmaq_f32(a, q4, vld1q_f32(kc + 16));
                a = vfmaq_f32(a, q5, vld1q_f32(kc + 20));
                a = vfmaq_f32(a, q6, vld1q_f32(kc + 24));
                acc[c] = vfmaq_f32(a, q7, vld1q_f32(kc + 28));
            }
            vst1q_f32(s + j, vpaddq_f32(vpaddq_f32(acc[0], acc[1]), vpaddq_f32(acc[2], acc[3])));
        }
    }
    if ((d & 3) == 0) {
        for (; j + 4 <= n; j += 4) {
            const float *k0 = k + (ptrdiff_t)j * kr, *k1 = k0 + kr, *k2 = k1 + kr, *k3 = k2 + kr;
            float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
            for (t = 0; t < d; t += 4) {
                float32x4_t qv = vld1q_f32(q + t);
                a0 = vfmaq_f32(a0, qv, vld1q_f32(k0 + t));
                a1 = vfmaq_f32(a1, qv, vld1q_f32(k1 + t));
                a2 = vfmaq_f32(a2, qv, vld1q_f32(k2 + t));
                a3 = vfmaq_f32(a3, qv, vld1q_f32(k3 + t));
            }
            vst1q_f32(s + j, vpaddq_f32(vpaddq_f32(a0, a1), vpaddq_f32(a2, a3)));
        }
        for (; j < n; ++j) {
            const float *kj = k + (ptrdiff_t)j * kr;
            float32x4_t a = vdupq_n_f32(0.0f);
            for (t = 0; t < d; t += 4) a = vfmaq_f32(a, vld1q_f32(q + t), vld1q_f32(kj + t));
            s[j] = vaddvq_f32(a);
        }
        return;
    }
#elif defined(QC_ATT_MVE)
    if ((d & 3) == 0) {
        for (; j < n; ++j) {
            const float *kj = k + (ptrdiff_t)j * kr;
            float32x4_t a = vdupq_n_f32(0.0f);
            for (t = 0; t < d; t += 4) a = vfmaq_f32(a, vld1q_f32(q + t), vld1q_f32(kj + t));
            s[j] = (vgetq_lane_f32(a, 0) + vgetq_lane_f32(a, 1)) + (vgetq_lane_f32(a, 2) + vgetq_lane_f32(a, 3));
        }
        return;
    }
#endif
    for (; j < n; ++j) {
        const float *kj = k + (ptrdiff_t)j * kr;
        float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (t = 0; t < d; ++t) a[t & 3] = fmaf(q[t], kj[t], a[t & 3]);
        s[j] = (a[0] + a[1]) + (a[2] + a[3]);
    }
}

/* y[0..dv) = scale * sum_{j < n} p[j] * v[j*vr + 0..dv) */
static void qc_att_context(int n, int dv, const float *p, const float *v, int vr, float scale, float *y)
{
    int j, t = 0;
#if defined(QC_ATT_NEON) || defined(QC_ATT_MVE)
    for (; t + 32 <= dv; t += 32) {   /* a BERT / Llama head (dv 32, 64): 8 accumulators per pass */
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        const float *vj = v + t;
        for (j = 0; j < n; ++j, vj += vr) {
            float pj = p[j];
            a0 = vfmaq_n_f32(a0, vld1q_f32(vj), pj);
            a1 = vfmaq_n_f32(a1, vld1q_f32(vj + 4), pj);
            a2 = vfmaq_n_f32(a2, vld1q_f32(vj + 8), pj);
            a3 = vfmaq_n_f32(a3, vld1q_f32(vj + 12), pj);
            a4 = vfmaq_n_f32(a4, vld1q_f32(vj + 16), pj);
            a5 = vfmaq_n_f32(a5, vld1q_f32(vj + 20), pj);
            a6 = vfmaq_n_f32(a6, vld1q_f32(vj + 24), pj);
            a7 = vfmaq_n_f32(a7, vld1q_f32(vj + 28), pj);
        }
        vst1q_f32(y + t, vmulq_n_f32(a0, scale));
        vst1q_f32(y + t + 4, vmulq_n_f32(a1, scale));
        vst1q_f32(y + t + 8, vmulq_n_f32(a2, scale));
        vst1q_f32(y + t + 12, vmulq_n_f32(a3, scale));
        vst1q_f32(y + t + 16, vmulq_n_f32(a4, scale));
        vst1q_f32(y + t + 20, vmulq_n_f32(a5, scale));
        vst1q_f32(y + t + 24, vmulq_n_f32(a6, scale));
        vst1q_f32(y + t + 28, vmulq_n_f32(a7, scale));
    }
    for (; t + 8 <= dv; t += 8) {
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0;
        for (j = 0; j < n; ++j) {
            const float *vj = v + (ptrdiff_t)j * vr + t;
            a0 = vfmaq_n_f32(a0, vld1q_f32(vj), p[j]);
            a1 = vfmaq_n_f32(a1, vld1q_f32(vj + 4), p[j]);
        }
        vst1q_f32(y + t, vmulq_n_f32(a0, scale));
        vst1q_f32(y + t + 4, vmulq_n_f32(a1, scale));
    }
    for (; t + 4 <= dv; t += 4) {
        float32x4_t a0 = vdupq_n_f32(0.0f);
        for (j = 0; j < n; ++j) a0 = vfmaq_n_f32(a0, vld1q_f32(v + (ptrdiff_t)j * vr + t), p[j]);
        vst1q_f32(y + t, vmulq_n_f32(a0, scale));
    }
#endif
    for (; t < dv; ++t) {
        float a = 0.0f;
        for (j = 0; j < n; ++j) a = fmaf(p[j], v[(ptrdiff_t)j * vr + t], a);
        y[t] = a * scale;
    }
}

/* w[j] = fmaf(w[j], scale, mask[j * mc]) (w[j] * scale without a mask); returns max_j w[j] */
static float qc_att_scale_mask_max(int n, float *w, float scale, const float *mask, int mc)
{
    int j = 0;
    float m = -INFINITY;
#if defined(QC_ATT_NEON) || defined(QC_ATT_MVE)
    float32x4_t mv = vdupq_n_f32(-INFINITY);
    if (!mask || mc == 1) {
        for (; j + 4 <= n; j += 4) {
            float32x4_t x = vld1q_f32(w + j);
            x = mask ? vfmaq_n_f32(vld1q_f32(mask + j), x, scale) : vmulq_n_f32(x, scale);
            vst1q_f32(w + j, x);
            mv = vmaxnmq_f32(mv, x);
        }
        m = vgetq_lane_f32(mv, 0);
        m = vgetq_lane_f32(mv, 1) > m ? vgetq_lane_f32(mv, 1) : m;
        m = vgetq_lane_f32(mv, 2) > m ? vgetq_lane_f32(mv, 2) : m;
        m = vgetq_lane_f32(mv, 3) > m ? vgetq_lane_f32(mv, 3) : m;
    }
#endif
    for (; j < n; ++j) {
        w[j] = mask ? fmaf(w[j], scale, mask[(ptrdiff_t)j * mc]) : w[j] * scale;
        m = w[j] > m ? w[j] : m;
    }
    return m;
}

void qc_attention_f32(int B, int H, int Hkv, int Lq, int Lk, int d, int dv, float scale, int causal,
                      const float *q, const int *qs, const float *k, const int *ks, const float *v,
                      const int *vs, const float *mask, const int *ms, float *y, const int *ys,
                      float *work)
{
    int b, h, i, j, group = H / Hkv;
    for (b = 0; b < B; ++b) {
        for (h = 0; h < H; ++h) {
            int hk = h / group;
            const float *kh = k + (ptrdiff_t)b * ks[0] + (ptrdiff_t)hk * ks[1];
            const float *vh = v + (ptrdiff_t)b * vs[0] + (ptrdiff_t)hk * vs[1];
            for (i = 0; i < Lq; ++i) {
                const float *qi = q + (ptrdiff_t)b * qs[0] + (ptrdiff_t)h * qs[1] + (ptrdiff_t)i * qs[2];
                float *yi = y + (ptrdiff_t)b * ys[0] + (ptrdiff_t)h * ys[1] + (ptrdiff_t)i * ys[2];
                int n = causal ? (i + 1 < Lk ? i + 1 : Lk) : Lk;
                float m, sum = 0.0f;
                qc_att_scores(n, d, qi, kh, ks[2], work);
                m = qc_att_scale_mask_max(n, work, scale, mask ? mask + (ptrdiff_t)b * ms[0] + (ptrdiff_t)h * ms[1]
                                          + (ptrdiff_t)i * ms[2] : NULL, ms[3]);
                j = 0;
#if defined(QC_VM_SIMD)
                {
                    qc_vf mv = qc_vf_dup(m);
                    for (; j + 4 <= n; j += 4) qc_vf_store(work + j, qc_vexp(qc_vf_sub(qc_vf_load(work + j), mv)));
                }
#endif
                for (; j < n; ++j) work[j] = qc_expf(work[j] - m);
                for (j = 0; j < n; ++j) sum += work[j];
                qc_att_context(n, dv, work, vh, vs[2], 1.0f / sum, yi);
            }
        }
    }
}
