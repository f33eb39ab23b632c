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

#if defined(QC_ATT_NEON)
#define qc_att_pair vpaddq_f32
#elif defined(QC_ATT_MVE)
/* NEON's vpaddq_f32: {a0 + a1, a2 + a3, b0 + b1, b2 + b3} */
static inline float32x4_t qc_att_pair(float32x4_t a, float32x4_t b)
{
    float32x4_t r = vdupq_n_f32(0.0f);
    r = vsetq_lane_f32(vgetq_lane_f32(a, 0) + vgetq_lane_f32(a, 1), r, 0);
    r = vsetq_lane_f32(vgetq_lane_f32(a, 2) + vgetq_lane_f32(a, 3), r, 1);
    r = vsetq_lane_f32(vgetq_lane_f32(b, 0) + vgetq_lane_f32(b, 1), r, 2);
    return vsetq_lane_f32(vgetq_lane_f32(b, 2) + vgetq_lane_f32(b, 3), r, 3);
}
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

/* exp(w[j] - m) for j < n; returns their sum, added in order */
static float qc_att_exp_sum(int n, float *w, float m)
{
    int j = 0;
    float sum = 0.0f;
#if defined(QC_VM_SIMD)
    qc_vf mv = qc_vf_dup(m);
    for (; j + 4 <= n; j += 4) qc_vf_store(w + j, qc_vexp(qc_vf_sub(qc_vf_load(w + j), mv)));
#endif
    for (; j < n; ++j) w[j] = qc_expf(w[j] - m);
    for (j = 0; j < n; ++j) sum += w[j];
    return sum;
}

#if defined(QC_ATT_NEON) || defined(QC_ATT_MVE)
#define QC_ATT_ROWS 4
/* the scores of 4 query rows at once (each K load serves 4 rows): s_r[j] as qc_att_scores
 * computes them (the same lane partial sums, the same reduction), d % 4 == 0 */
static int qc_att_scores4(int n, int d, const float *const *q, const float *k, int kr, float *const *s)
{
    int j, t;
    for (j = 0; j + 4 <= n; j += 4) {
        const float *k0 = k + (ptrdiff_t)j * kr, *k1 = k0 + kr, *k2 = k1 + kr, *k3 = k2 + kr;
        float32x4_t z = vdupq_n_f32(0.0f);
        float32x4_t a00 = z, a01 = z, a02 = z, a03 = z, a10 = z, a11 = z, a12 = z, a13 = z;
        float32x4_t a20 = z, a21 = z, a22 = z, a23 = z, a30 = z, a31 = z, a32 = z, a33 = z;
        for (t = 0; t < d; t += 4) {
            float32x4_t x0 = vld1q_f32(k0 + t), x1 = vld1q_f32(k1 + t), x2 = vld1q_f32(k2 + t);
            float32x4_t x3 = vld1q_f32(k3 + t), r;
            r = vld1q_f32(q[0] + t);
            a00 = vfmaq_f32(a00, r, x0); a01 = vfmaq_f32(a01, r, x1); a02 = vfmaq_f32(a02, r, x2); a03 = vfmaq_f32(a03, r, x3);
            r = vld1q_f32(q[1] + t);
            a10 = vfmaq_f32(a10, r, x0); a11 = vfmaq_f32(a11, r, x1); a12 = vfmaq_f32(a12, r, x2); a13 = vfmaq_f32(a13, r, x3);
            r = vld1q_f32(q[2] + t);
            a20 = vfmaq_f32(a20, r, x0); a21 = vfmaq_f32(a21, r, x1); a22 = vfmaq_f32(a22, r, x2); a23 = vfmaq_f32(a23, r, x3);
            r = vld1q_f32(q[3] + t);
            a30 = vfmaq_f32(a30, r, x0); a31 = vfmaq_f32(a31, r, x1); a32 = vfmaq_f32(a32, r, x2); a33 = vfmaq_f32(a33, r, x3);
        }
        vst1q_f32(s[0] + j, qc_att_pair(qc_att_pair(a00, a01), qc_att_pair(a02, a03)));
        vst1q_f32(s[1] + j, qc_att_pair(qc_att_pair(a10, a11), qc_att_pair(a12, a13)));
        vst1q_f32(s[2] + j, qc_att_pair(qc_att_pair(a20, a21), qc_att_pair(a22, a23)));
        vst1q_f32(s[3] + j, qc_att_pair(qc_att_pair(a30, a31), qc_att_pair(a32, a33)));
    }
    return j;
}

/* y_r[0..dv) = scale_r * sum_j p_r[j] v[j] for 4 rows at once (each V load serves 4 rows), as
 * qc_att_context computes each row; returns how many leading columns it did */
static int qc_att_context4(int n, int dv, float *const *p, const float *v, int vr, const float *scale,
                           float *const *y)
{
    int j, t, r;
    for (t = 0; t + 16 <= dv; t += 16) {
        float32x4_t z = vdupq_n_f32(0.0f);
        float32x4_t a00 = z, a01 = z, a02 = z, a03 = z, a10 = z, a11 = z, a12 = z, a13 = z;
        float32x4_t a20 = z, a21 = z, a22 = z, a23 = z, a30 = z, a31 = z, a32 = z, a33 = z;
        const float *vj = v + t;
        for (j = 0; j < n; ++j, vj += vr) {
            float32x4_t x0 = vld1q_f32(vj), x1 = vld1q_f32(vj + 4), x2 = vld1q_f32(vj + 8), x3 = vld1q_f32(vj + 12);
            float w = p[0][j];
            a00 = vfmaq_n_f32(a00, x0, w); a01 = vfmaq_n_f32(a01, x1, w); a02 = vfmaq_n_f32(a02, x2, w); a03 = vfmaq_n_f32(a03, x3, w);
            w = p[1][j];
            a10 = vfmaq_n_f32(a10, x0, w); a11 = vfmaq_n_f32(a11, x1, w); a12 = vfmaq_n_f32(a12, x2, w); a13 = vfmaq_n_f32(a13, x3, w);
            w = p[2][j];
            a20 = vfmaq_n_f32(a20, x0, w); a21 = vfmaq_n_f32(a21, x1, w); a22 = vfmaq_n_f32(a22, x2, w); a23 = vfmaq_n_f32(a23, x3, w);
            w = p[3][j];
            a30 = vfmaq_n_f32(a30, x0, w); a31 = vfmaq_n_f32(a31, x1, w); a32 = vfmaq_n_f32(a32, x2, w); a33 = vfmaq_n_f32(a33, x3, w);
        }
        r = 0;
        vst1q_f32(y[r] + t, vmulq_n_f32(a00, scale[r])); vst1q_f32(y[r] + t + 4, vmulq_n_f32(a01, scale[r]));
        vst1q_f32(y[r] + t + 8, vmulq_n_f32(a02, scale[r])); vst1q_f32(y[r] + t + 12, vmulq_n_f32(a03, scale[r]));
        r = 1;
        vst1q_f32(y[r] + t, vmulq_n_f32(a10, scale[r])); vst1q_f32(y[r] + t + 4, vmulq_n_f32(a11, scale[r]));
        vst1q_f32(y[r] + t + 8, vmulq_n_f32(a12, scale[r])); vst1q_f32(y[r] + t + 12, vmulq_n_f32(a13, scale[r]));
        r = 2;
        vst1q_f32(y[r] + t, vmulq_n_f32(a20, scale[r])); vst1q_f32(y[r] + t + 4, vmulq_n_f32(a21, scale[r]));
        vst1q_f32(y[r] + t + 8, vmulq_n_f32(a22, scale[r])); vst1q_f32(y[r] + t + 12, vmulq_n_f32(a23, scale[r]));
        r = 3;
        vst1q_f32(y[r] + t, vmulq_n_f32(a30, scale[r])); vst1q_f32(y[r] + t + 4, vmulq_n_f32(a31, scale[r]));
        vst1q_f32(y[r] + t + 8, vmulq_n_f32(a32, scale[r])); vst1q_f32(y[r] + t + 12, vmulq_n_f32(a33, scale[r]));
    }
    return t;
}
#endif

void qc_attention_f32(int B, int H, int Hkv, int Lq, int Lk, int d, int dv, float scale, int causal,
                      const float *q, const int *qs, const float *k, const int *ks, const float *v,
                      const int *vs, const float *mask, const int *ms, float *y, const int *ys,
                      float *work)
{
    int b, h, i, group = H / Hkv;
    for (b = 0; b < B; ++b) {
        for (h = 0; h < H; ++h) {
            int hk = h / group;
            const float *kh = k + (ptrdiff_t)b * ks[0] + (ptrdiff_t)hk * ks[1];
            const float *vh = v + (ptrdiff_t)b * vs[0] + (ptrdiff_t)hk * vs[1];
            i = 0;
#if defined(QC_ATT_ROWS)
            /* QC_ATT_ROWS query rows at a time; causal: the block reads the keys up to its last
             * row (nb), row r's scores past its own n are set to -inf, so their exp is exactly 0
             * and softmax and context add exact zeros: the row path's bits, with no scalar
             * tails in the exp */
            for (; (d & 3) == 0 && i + QC_ATT_ROWS <= Lq; i += QC_ATT_ROWS) {
                const float *qr[QC_ATT_ROWS];
                float *sr[QC_ATT_ROWS], *yr[QC_ATT_ROWS], inv[QC_ATT_ROWS];
                int r, j0, t0, nb = causal ? (i + QC_ATT_ROWS < Lk ? i + QC_ATT_ROWS : Lk) : Lk;
                for (r = 0; r < QC_ATT_ROWS; ++r) {
                    qr[r] = q + (ptrdiff_t)b * qs[0] + (ptrdiff_t)h * qs[1] + (ptrdiff_t)(i + r) * qs[2];
                    yr[r] = y + (ptrdiff_t)b * ys[0] + (ptrdiff_t)h * ys[1] + (ptrdiff_t)(i + r) * ys[2];
                    sr[r] = work + (ptrdiff_t)r * Lk;
                }
                j0 = qc_att_scores4(nb, d, qr, kh, ks[2], sr);
                for (r = 0; r < QC_ATT_ROWS; ++r) {
                    int n = causal ? (i + r + 1 < Lk ? i + r + 1 : Lk) : Lk, ne, j;
                    float m;
                    if (j0 < n) qc_att_scores(n - j0, d, qr[r], kh + (ptrdiff_t)j0 * ks[2], ks[2], sr[r] + j0);
                    ne = scale > 0.0f ? nb : n;   /* -inf * scale must stay -inf */
                    for (j = n; j < ne; ++j) sr[r][j] = -INFINITY;
                    m = qc_att_scale_mask_max(ne, sr[r], scale, mask ? mask + (ptrdiff_t)b * ms[0] + (ptrdiff_t)h * ms[1]
                                              + (ptrdiff_t)(i + r) * ms[2] : NULL, ms[3]);
                    inv[r] = 1.0f / qc_att_exp_sum(ne, sr[r], m);
                    for (j = ne; j < nb; ++j) sr[r][j] = 0.0f;
                }
                t0 = qc_att_context4(nb, dv, sr, vh, vs[2], inv, yr);
                if (t0 < dv) {
                    for (r = 0; r < QC_ATT_ROWS; ++r) qc_att_context(nb, dv - t0, sr[r], vh + t0, vs[2], inv[r], yr[r] + t0);
                }
            }
#endif
            for (; i < Lq; ++i) {
                const float *qi = q + (ptrdiff_t)b * qs[0] + (ptrdiff_t)h * qs[1] + (ptrdiff_t)i * qs[2];
                float *yi = y + (ptrdiff_t)b * ys[0] + (ptrdiff_t)h * ys[1] + (ptrdiff_t)i * ys[2];
                int n = causal ? (i + 1 < Lk ? i + 1 : Lk) : Lk;
                float m;
                qc_att_scores(n, d, qi, kh, ks[2], work);
                m = qc_att_scale_mask_max(n, work, scale, mask ? mask + (ptrdiff_t)b * ms[0] + (ptrdiff_t)h * ms[1]
                                          + (ptrdiff_t)i * ms[2] : NULL, ms[3]);
                qc_att_context(n, dv, work, vh, vs[2], 1.0f / qc_att_exp_sum(n, work, m), yi);
            }
        }
    }
}
