/* qc C backend: the fused attention kernel (qc.Attention, see qc_ops.h and docs/c-backend.md).
 *
 * One (batch, head) at a time; nothing of Lq x Lk size is materialized. Q, K, V and the output
 * are read / written through strides, so the head split and merge of a model (Reshape +
 * Transpose) cost no copy. The inner loops are NEON FMLA on aarch64 (__ARM_NEON), Helium on
 * Cortex-M55 (__ARM_FEATURE_MVE & 2), plain C elsewhere, and every variant computes the same
 * fused multiply-adds (fmaf in plain C) in the same order, so they are bit-identical to each
 * other (Helium: except where its subnormal flush meets subnormal scores or products).
 *
 * Causal: one query row at a time over keys j <= i, the row's scores in `work`; a dot product
 * keeps 4 partial sums (element t into lane t % 4) added as (l0 + l1) + (l2 + l3); the context
 * sums p[j] * v[j] over j in order; exp is qc_vmath.h's. Not causal: see "the non-causal path"
 * below (K^T and V packed once per K/V head, 8-row register tiles). */
#include "qc_ops.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

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

/* ---- the non-causal path ------------------------------------------------------------------
 * Every query row reads every key, so K is packed once per K/V head as K^T in blocks of 8 keys
 * (QC_ATT_KT: block j / 8 is d x 8 floats, t-major; Lk rounded up to Lkp = 8n, zero-padded) and,
 * on aarch64 with d % 4 == 0, the scores come in register tiles of 8 query rows x 8 keys (FMLA
 * by element: Q read 4 d-elements at a time, a K^T block 2 vectors per d-element) with the
 * scale, the mask and the row maxima applied before the tile is stored;
 * the context in tiles of 8 rows x 8 columns (the probabilities 4 keys at a time, by element;
 * V's columns packed in blocks of 8 once per K/V head).
 * The arithmetic, in every variant: score(i, j) = q_0 k_0, then fused multiply-adds over
 * t = 1..d-1 in order, then fmaf(score, scale, mask) (score * scale without a mask); m = the row maximum;
 * p_j = qc_att_expf(w_j - m) (qc_expf's bits for arguments >= -86, exp(-86) = 4.4e-38 below:
 * no subnormal results, one exponent step); the row sum in 4 lane partials (j % 4) added as
 * (s0 + s1) + (s2 + s3); the context as qc_att_context, times 1 / sum. */
#define QC_ATT_TR 8          /* query rows per tile */
#define QC_ATT_EXP_LO -86.0f /* qc_att_expf's lower clamp: exp(-86) is a normal float */
/* score (r, j) of a tile's 8 rows, interleaved 4 keys at a time (one contiguous 8 x 4 block
 * per 4 keys) */
#define QC_ATT_W(W, r, j) ((W) + (ptrdiff_t)((j) & ~3) * 8 + (r) * 4 + ((j) & 3))
/* K^T element (t, j) of the packed K of d-element rows */
#define QC_ATT_KT(kt, d, t, j) ((kt) + ((ptrdiff_t)((j) >> 3) * (d) + (t)) * 8 + ((j) & 7))

/* exp(x) for x <= 0 (softmax arguments): qc_vmath's exp polynomial, 2^n applied at once */
static inline float qc_att_expf(float x)
{
    float z, n, r, r2, p, c, s;
    uint32_t u;
    x = x < QC_ATT_EXP_LO ? QC_ATT_EXP_LO : x;
    z = fmaf(x, 0x1.715476p+0f, 0x1.8p23f);   /* n + 1.5 * 2^23: n rounded to nearest */
    n = z - 0x1.8p23f;
    r = fmaf(n, -0x1.62e4p-1f, x);
    r = fmaf(n, -0x1.7f7d1cp-20f, r);
    r2 = r * r;
    p = fmaf(0x1.0e4020p-7f, r, 0x1.573e2ep-5f);
    c = fmaf(0x1.555e66p-3f, r, 0x1.fffdb6p-2f);
    c = fmaf(p, r2, c);
    p = fmaf(c, r2, 0x1.ffffecp-1f * r);
    memcpy(&u, &z, 4);
    u = (u + 127u) << 23;                      /* 2^n: (bits(z) = 0x4b400000 + n) + 127, shifted */
    memcpy(&s, &u, 4);
    return fmaf(p, s, s);
}

#if defined(QC_ATT_NEON) || defined(QC_ATT_MVE)
static inline float32x4_t qc_att_vexp(float32x4_t x)
{
    const float32x4_t shift = vdupq_n_f32(0x1.8p23f);
    float32x4_t z, n, r, r2, p, c, s;
#if defined(QC_ATT_NEON)
    x = vmaxq_f32(x, vdupq_n_f32(QC_ATT_EXP_LO));
#else
    x = vpselq_f32(vdupq_n_f32(QC_ATT_EXP_LO), x, vcmpltq_n_f32(x, QC_ATT_EXP_LO));
#endif
    z = vfmaq_f32(shift, x, vdupq_n_f32(0x1.715476p+0f));
    n = vsubq_f32(z, shift);
    r = vfmaq_f32(x, n, vdupq_n_f32(-0x1.62e4p-1f));
    r = vfmaq_f32(r, n, vdupq_n_f32(-0x1.7f7d1cp-20f));
    r2 = vmulq_f32(r, r);
    p = vfmaq_f32(vdupq_n_f32(0x1.573e2ep-5f), r, vdupq_n_f32(0x1.0e4020p-7f));
    c = vfmaq_f32(vdupq_n_f32(0x1.fffdb6p-2f), r, vdupq_n_f32(0x1.555e66p-3f));
    c = vfmaq_f32(c, p, r2);
    p = vfmaq_f32(vmulq_n_f32(r, 0x1.ffffecp-1f), c, r2);
    s = vreinterpretq_f32_u32(vshlq_n_u32(vaddq_u32(vreinterpretq_u32_f32(z), vdupq_n_u32(127u)), 23));
    return vfmaq_f32(s, p, s);
}
#endif

/* K^T element (t, j) = k[j * kr + t] (t < d, j < Lk), 0 for Lk <= j < Lkp (Lkp % 8 == 0) */
static void qc_att_pack_kt(int Lk, int d, const float *k, int kr, int Lkp, float *kt)
{
    int j = 0, t;
#if defined(QC_ATT_NEON)
    if ((d & 3) == 0) {
        for (; j + 4 <= Lk; j += 4) {
            const float *k0 = k + (ptrdiff_t)j * kr;
            for (t = 0; t < d; t += 4) {
                float32x4_t r0 = vld1q_f32(k0 + t), r1 = vld1q_f32(k0 + kr + t);
                float32x4_t r2 = vld1q_f32(k0 + 2 * (ptrdiff_t)kr + t), r3 = vld1q_f32(k0 + 3 * (ptrdiff_t)kr + t);
                float64x2_t t0 = vreinterpretq_f64_f32(vtrn1q_f32(r0, r1)), t1 = vreinterpretq_f64_f32(vtrn2q_f32(r0, r1));
                float64x2_t t2 = vreinterpretq_f64_f32(vtrn1q_f32(r2, r3)), t3 = vreinterpretq_f64_f32(vtrn2q_f32(r2, r3));
                float *o = QC_ATT_KT(kt, d, t, j);
                vst1q_f32(o, vreinterpretq_f32_f64(vtrn1q_f64(t0, t2)));
                vst1q_f32(o + 8, vreinterpretq_f32_f64(vtrn1q_f64(t1, t3)));
                vst1q_f32(o + 16, vreinterpretq_f32_f64(vtrn2q_f64(t0, t2)));
                vst1q_f32(o + 24, vreinterpretq_f32_f64(vtrn2q_f64(t1, t3)));
            }
        }
    }
#endif
    for (; j < Lkp; ++j)
        for (t = 0; t < d; ++t) *QC_ATT_KT(kt, d, t, j) = j < Lk ? k[(ptrdiff_t)j * kr + t] : 0.0f;
}

#if defined(QC_ATT_NEON)
/* V's columns in blocks of 8: block c / 8 holds rows j < Lk of 8 floats at vt + (c / 8) * 8 Lk + 8 j */
static void qc_att_pack_v(int Lk, int dv, const float *v, int vr, float *vt)
{
    int j, c;
    for (c = 0; c + 8 <= dv; c += 8) {
        float *o = vt + (ptrdiff_t)c * Lk;
        const float *vj = v + c;
        for (j = 0; j < Lk; ++j, vj += vr, o += 8) {
            vst1q_f32(o, vld1q_f32(vj));
            vst1q_f32(o + 4, vld1q_f32(vj + 4));
        }
    }
}
#endif

/* the raw scores w[j], j0 <= j < n (j0 % 4 == 0), of one query row from K^T: q[0] * k[0], then
 * fmaf(q[t], k[t], .) for t = 1 .. d-1 */
static void qc_att_row_scores(int j0, int n, int d, const float *q, const float *kt, float *w)
{
    int j, t;
#if defined(QC_ATT_NEON) || defined(QC_ATT_MVE)
    for (j = j0; j < n; j += 4) {   /* whole vectors: the row and K^T are padded to 8n keys */
        const float *kj = QC_ATT_KT(kt, d, 0, j);
        float32x4_t a = d ? vmulq_n_f32(vld1q_f32(kj), q[0]) : vdupq_n_f32(0.0f);
        for (t = 1; t < d; ++t) a = vfmaq_n_f32(a, vld1q_f32(kj + 8 * t), q[t]);
        vst1q_f32(w + j, a);
    }
#else
    for (j = j0; j < n; ++j) {
        float a = d ? q[0] * *QC_ATT_KT(kt, d, 0, j) : 0.0f;
        for (t = 1; t < d; ++t) a = fmaf(q[t], *QC_ATT_KT(kt, d, t, j), a);
        w[j] = a;
    }
#endif
}

/* rows r < R of scores, element (r, j) at w + r * rs + (j / 4) * vs + j % 4 (vs = 4: plain rows;
 * rs = 4, vs = 32: a tile's 8 rows interleaved 4 keys at a time, QC_ATT_W): (r, j) = exp((r, j) -
 * m[r]) for j < n; inv[r] = 1 / their sum, the sum in 4 lane partials (j % 4) added as
 * (s0 + s1) + (s2 + s3) */
static void qc_att_softmax(int R, int n, float *w, int rs, int vs, const float *m, float *inv)
{
    int r, j;
    for (r = 0; r < R; ++r) {
        float s[4] = {0.0f, 0.0f, 0.0f, 0.0f}, *wr = w + (ptrdiff_t)r * rs;
        j = 0;
#if defined(QC_ATT_NEON) || defined(QC_ATT_MVE)
        {
            float32x4_t sv = vdupq_n_f32(0.0f), mv = vdupq_n_f32(m[r]);
            float *p = wr;
            for (; j + 8 <= n; j += 8, p += 2 * vs) {
                float32x4_t e0 = qc_att_vexp(vsubq_f32(vld1q_f32(p), mv));
                float32x4_t e1 = qc_att_vexp(vsubq_f32(vld1q_f32(p + vs), mv));
                vst1q_f32(p, e0);
                vst1q_f32(p + vs, e1);
                sv = vaddq_f32(vaddq_f32(sv, e0), e1);
            }
            for (; j + 4 <= n; j += 4, p += vs) {
                float32x4_t e = qc_att_vexp(vsubq_f32(vld1q_f32(p), mv));
                vst1q_f32(p, e);
                sv = vaddq_f32(sv, e);
            }
            vst1q_f32(s, sv);
        }
#endif
        for (; j < n; ++j) {
            float *x = wr + (ptrdiff_t)(j >> 2) * vs + (j & 3);
            *x = qc_att_expf(*x - m[r]);
            s[j & 3] += *x;
        }
        inv[r] = 1.0f / ((s[0] + s[1]) + (s[2] + s[3]));
    }
}

#if defined(QC_ATT_NEON)
/* GCC's first scheduling pass hoists the tiles' loads past what 32 registers hold (8-9 register
 * moves per 64 FMLA); without it the tile loops are the loads and the FMLAs */
#if defined(__GNUC__) && !defined(__clang__)
#define QC_ATT_TILE_FN __attribute__((optimize("no-schedule-insns")))
#else
#define QC_ATT_TILE_FN
#endif
/* c_r0 / c_r1 (keys or columns 0-3 / 4-7 of tile row r) += b0 / b1 * lane l of x_r, for the
 * 8 rows; b0, b1 loaded from B (8 floats) first: 16 accumulators, 8 x and 2 b registers live */
#define QC_ATT_LANE(l, B)                                                                         \
    do {                                                                                          \
        const float *bp_ = (B);                                                                   \
        float32x4_t b0 = vld1q_f32(bp_), b1 = vld1q_f32(bp_ + 4);                                 \
        c00 = vfmaq_laneq_f32(c00, b0, x0, l); c01 = vfmaq_laneq_f32(c01, b1, x0, l);             \
        c10 = vfmaq_laneq_f32(c10, b0, x1, l); c11 = vfmaq_laneq_f32(c11, b1, x1, l);             \
        c20 = vfmaq_laneq_f32(c20, b0, x2, l); c21 = vfmaq_laneq_f32(c21, b1, x2, l);             \
        c30 = vfmaq_laneq_f32(c30, b0, x3, l); c31 = vfmaq_laneq_f32(c31, b1, x3, l);             \
        c40 = vfmaq_laneq_f32(c40, b0, x4, l); c41 = vfmaq_laneq_f32(c41, b1, x4, l);             \
        c50 = vfmaq_laneq_f32(c50, b0, x5, l); c51 = vfmaq_laneq_f32(c51, b1, x5, l);             \
        c60 = vfmaq_laneq_f32(c60, b0, x6, l); c61 = vfmaq_laneq_f32(c61, b1, x6, l);             \
        c70 = vfmaq_laneq_f32(c70, b0, x7, l); c71 = vfmaq_laneq_f32(c71, b1, x7, l);             \
    } while (0)
/* c_r0 / c_r1 = b0 / b1 * lane 0 of x_r: the first term of the chains */
#define QC_ATT_FIRST(B)                                                                           \
    do {                                                                                          \
        const float *bp_ = (B);                                                                   \
        float32x4_t b0 = vld1q_f32(bp_), b1 = vld1q_f32(bp_ + 4);                                 \
        c00 = vmulq_laneq_f32(b0, x0, 0); c01 = vmulq_laneq_f32(b1, x0, 0);                       \
        c10 = vmulq_laneq_f32(b0, x1, 0); c11 = vmulq_laneq_f32(b1, x1, 0);                       \
        c20 = vmulq_laneq_f32(b0, x2, 0); c21 = vmulq_laneq_f32(b1, x2, 0);                       \
        c30 = vmulq_laneq_f32(b0, x3, 0); c31 = vmulq_laneq_f32(b1, x3, 0);                       \
        c40 = vmulq_laneq_f32(b0, x4, 0); c41 = vmulq_laneq_f32(b1, x4, 0);                       \
        c50 = vmulq_laneq_f32(b0, x5, 0); c51 = vmulq_laneq_f32(b1, x5, 0);                       \
        c60 = vmulq_laneq_f32(b0, x6, 0); c61 = vmulq_laneq_f32(b1, x6, 0);                       \
        c70 = vmulq_laneq_f32(b0, x7, 0); c71 = vmulq_laneq_f32(b1, x7, 0);                       \
    } while (0)
/* x_r = 4 floats at row pointer X[r] + o */
#define QC_ATT_LOAD8(X, o)                                                                        \
    float32x4_t x0 = vld1q_f32(X[0] + (o)), x1 = vld1q_f32(X[1] + (o)), x2 = vld1q_f32(X[2] + (o)); \
    float32x4_t x3 = vld1q_f32(X[3] + (o)), x4 = vld1q_f32(X[4] + (o)), x5 = vld1q_f32(X[5] + (o)); \
    float32x4_t x6 = vld1q_f32(X[6] + (o)), x7 = vld1q_f32(X[7] + (o))
/* x_r = 4 floats at P + 4 r (a QC_ATT_W block) */
#define QC_ATT_LOADW(P)                                                                           \
    float32x4_t x0 = vld1q_f32(P), x1 = vld1q_f32(P + 4), x2 = vld1q_f32(P + 8);                  \
    float32x4_t x3 = vld1q_f32(P + 12), x4 = vld1q_f32(P + 16), x5 = vld1q_f32(P + 20);           \
    float32x4_t x6 = vld1q_f32(P + 24), x7 = vld1q_f32(P + 28)
#define QC_ATT_ROWS8(M)  M(0, c00, c01); M(1, c10, c11); M(2, c20, c21); M(3, c30, c31); \
                         M(4, c40, c41); M(5, c50, c51); M(6, c60, c61); M(7, c70, c71)
#define QC_ATT_Z vdupq_n_f32(0.0f)
#define QC_ATT_ZERO8                                                                              \
    float32x4_t c00 = QC_ATT_Z, c01 = QC_ATT_Z, c10 = QC_ATT_Z, c11 = QC_ATT_Z, c20 = QC_ATT_Z;    \
    float32x4_t c21 = QC_ATT_Z, c30 = QC_ATT_Z, c31 = QC_ATT_Z, c40 = QC_ATT_Z, c41 = QC_ATT_Z;    \
    float32x4_t c50 = QC_ATT_Z, c51 = QC_ATT_Z, c60 = QC_ATT_Z, c61 = QC_ATT_Z, c70 = QC_ATT_Z;    \
    float32x4_t c71 = QC_ATT_Z

/* the scores of 8 query rows against keys [0, n8) (n8 % 8 == 0, d % 4 == 0, d > 0): (r, j) of W
 * (QC_ATT_W) = fmaf(chain, scale, mask_r[j]) (chain * scale when mask is NULL; mask rows
 * mask + r * mr, contiguous), mx[r] the lane maxima of row r */
QC_ATT_TILE_FN static void qc_att_scores8(int n8, int d, const float *const *q, const float *kt, float scale,
                                          const float *mask, int mr, float *W, float32x4_t *mx)
{
    int j, t, r;
    for (r = 0; r < QC_ATT_TR; ++r) mx[r] = vdupq_n_f32(-INFINITY);
    for (j = 0; j < n8; j += 8) {
        const float *kp = QC_ATT_KT(kt, d, 0, j);
        float *wj = W + (ptrdiff_t)8 * j;
        float32x4_t c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71;
        {
            QC_ATT_LOAD8(q, 0);
            QC_ATT_FIRST(kp);
            QC_ATT_LANE(1, kp + 8);
            QC_ATT_LANE(2, kp + 16);
            QC_ATT_LANE(3, kp + 24);
        }
        for (t = 4, kp += 32; t < d; t += 4, kp += 32) {
            QC_ATT_LOAD8(q, t);
            QC_ATT_LANE(0, kp);
            QC_ATT_LANE(1, kp + 8);
            QC_ATT_LANE(2, kp + 16);
            QC_ATT_LANE(3, kp + 24);
        }
        if (!mask) {
#define QC_ATT_STORE(r, a0, a1)                                                                   \
    a0 = vmulq_n_f32(a0, scale); a1 = vmulq_n_f32(a1, scale);                                     \
    vst1q_f32(wj + 4 * (r), a0); vst1q_f32(wj + 32 + 4 * (r), a1);                                \
    mx[r] = vmaxnmq_f32(mx[r], vmaxnmq_f32(a0, a1))
            QC_ATT_ROWS8(QC_ATT_STORE);
#undef QC_ATT_STORE
        } else if (mr == 0) {   /* one mask row for all 8 (a key-padding mask) */
            float32x4_t m0 = vld1q_f32(mask + j), m1 = vld1q_f32(mask + j + 4);
#define QC_ATT_STORE(r, a0, a1)                                                                   \
    a0 = vfmaq_n_f32(m0, a0, scale); a1 = vfmaq_n_f32(m1, a1, scale);                             \
    vst1q_f32(wj + 4 * (r), a0); vst1q_f32(wj + 32 + 4 * (r), a1);                                \
    mx[r] = vmaxnmq_f32(mx[r], vmaxnmq_f32(a0, a1))
            QC_ATT_ROWS8(QC_ATT_STORE);
#undef QC_ATT_STORE
        } else {
#define QC_ATT_STORE(r, a0, a1)                                                                   \
    a0 = vfmaq_n_f32(vld1q_f32(mask + (ptrdiff_t)(r) * mr + j), a0, scale);                        \
    a1 = vfmaq_n_f32(vld1q_f32(mask + (ptrdiff_t)(r) * mr + j + 4), a1, scale);                    \
    vst1q_f32(wj + 4 * (r), a0); vst1q_f32(wj + 32 + 4 * (r), a1);                                \
    mx[r] = vmaxnmq_f32(mx[r], vmaxnmq_f32(a0, a1))
            QC_ATT_ROWS8(QC_ATT_STORE);
#undef QC_ATT_STORE
        }
    }
}

/* y_r[c .. c + 8) = inv[r] * sum_{j < n} p(r, j) * V[j][c ..] for 8 rows (as qc_att_context),
 * p(r, j) at QC_ATT_W(P, r, j); vb: the 8 columns packed, row j at vb + 8 j */
QC_ATT_TILE_FN static void qc_att_context8(int n, const float *P, const float *vb, int c, const float *inv,
                                           float *const *y)
{
    int j;
    const float *vj = vb, *pj = P;
    QC_ATT_ZERO8;
    for (j = 0; j + 4 <= n; j += 4, vj += 32, pj += 32) {
        QC_ATT_LOADW(pj);
        QC_ATT_LANE(0, vj);
        QC_ATT_LANE(1, vj + 8);
        QC_ATT_LANE(2, vj + 16);
        QC_ATT_LANE(3, vj + 24);
    }
    for (; j < n; ++j, vj += 8) {
        float32x4_t b00 = vld1q_f32(vj), b01 = vld1q_f32(vj + 4);
#define QC_ATT_PONE(r, a0, a1) a0 = vfmaq_n_f32(a0, b00, *QC_ATT_W(P, r, j)); a1 = vfmaq_n_f32(a1, b01, *QC_ATT_W(P, r, j))
        QC_ATT_ROWS8(QC_ATT_PONE);
#undef QC_ATT_PONE
    }
#define QC_ATT_YROW(r, a0, a1) vst1q_f32(y[r] + c, vmulq_n_f32(a0, inv[r])); vst1q_f32(y[r] + c + 4, vmulq_n_f32(a1, inv[r]))
    QC_ATT_ROWS8(QC_ATT_YROW);
#undef QC_ATT_YROW
}
#endif

/* whether a tile of 8 rows (of Lq left) runs: d % 4 == 0, a mask with contiguous columns */
#define QC_ATT_TILES(Lq, d, mask, mc) ((Lq) >= QC_ATT_TR && ((d) & 3) == 0 && (d) > 0 && (!(mask) || (mc) == 1))

/* one (batch, head) of the non-causal attention: Q rows at q + i * qr, K^T in kt, V rows at
 * v + j * vr, mask (i, j) at mask + i * mr + j * mc (mask may be NULL), output rows at
 * y + i * yr; vt: V packed by qc_att_pack_v (aarch64, when QC_ATT_TILES); w: QC_ATT_TR * Lkp floats (Lkp:
 * Lk rounded up to 8) */
static void qc_att_head(int Lq, int Lk, int d, int dv, float scale, const float *q, int qr, const float *kt,
                        int Lkp, const float *v, int vr, const float *vt, const float *mask, int mr, int mc,
                        float *y, int yr, float *w)
{
    int i = 0;
#if defined(QC_ATT_NEON)
    for (; QC_ATT_TILES(Lq - i, d, mask, mc); i += QC_ATT_TR) {
        const float *qp[QC_ATT_TR];
        float *yp[QC_ATT_TR], inv[QC_ATT_TR], m[QC_ATT_TR];
        float32x4_t mx[QC_ATT_TR];
        const float *m0 = mask ? mask + (ptrdiff_t)i * mr : NULL;
        int r, c, j, t, n8 = Lk & ~7;
        for (r = 0; r < QC_ATT_TR; ++r) {
            qp[r] = q + (ptrdiff_t)(i + r) * qr;
            yp[r] = y + (ptrdiff_t)(i + r) * yr;
        }
        qc_att_scores8(n8, d, qp, kt, scale, m0, mr, w, mx);
        for (r = 0; r < QC_ATT_TR; ++r) {
            m[r] = n8 ? vmaxnmvq_f32(mx[r]) : -INFINITY;
            for (j = n8; j < Lk; ++j) {   /* the last Lk % 8 keys: the tile's arithmetic, one score at a time */
                float a = qp[r][0] * *QC_ATT_KT(kt, d, 0, j), *x = QC_ATT_W(w, r, j);
                for (t = 1; t < d; ++t) a = fmaf(qp[r][t], *QC_ATT_KT(kt, d, t, j), a);
                *x = m0 ? fmaf(a, scale, m0[(ptrdiff_t)r * mr + j]) : a * scale;
                m[r] = *x > m[r] ? *x : m[r];
            }
        }
        qc_att_softmax(QC_ATT_TR, Lk, w, 4, 32, m, inv);
        for (c = 0; c + 8 <= dv; c += 8) qc_att_context8(Lk, w, vt + (ptrdiff_t)c * Lk, c, inv, yp);
        for (; c < dv; ++c) {   /* the last dv % 8 columns, as qc_att_context's plain C */
            for (r = 0; r < QC_ATT_TR; ++r) {
                float a = 0.0f;
                for (j = 0; j < Lk; ++j) a = fmaf(*QC_ATT_W(w, r, j), v[(ptrdiff_t)j * vr + c], a);
                yp[r][c] = a * inv[r];
            }
        }
    }
#else
    (void)vt;
#endif
    (void)Lkp;
    for (; i < Lq; ++i) {
        const float *qi = q + (ptrdiff_t)i * qr;
        float m, inv;
        qc_att_row_scores(0, Lk, d, qi, kt, w);
        m = qc_att_scale_mask_max(Lk, w, scale, mask ? mask + (ptrdiff_t)i * mr : NULL, mc);
        qc_att_softmax(1, Lk, w, 0, 4, &m, &inv);
        qc_att_context(Lk, dv, w, v, vr, inv, y + (ptrdiff_t)i * yr);
    }
}

#if defined(QC_ATT_NEON) || defined(QC_ATT_MVE)
#define QC_ATT_ROWS 4
/* causal: the scores of 4 query rows at once (each K load serves 4 rows): s_r[j] as qc_att_scores
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
    int b, h, i, group = H / Hkv, packed_b = -1, packed_h = -1;
    for (b = 0; b < B; ++b) {
        for (h = 0; h < H; ++h) {
            int hk = h / group;
            const float *kh = k + (ptrdiff_t)b * ks[0] + (ptrdiff_t)hk * ks[1];
            const float *vh = v + (ptrdiff_t)b * vs[0] + (ptrdiff_t)hk * vs[1];
            i = 0;
            if (!causal) {   /* every row reads all Lk keys: K^T packed once per K/V head */
                int Lkp = (Lk + 7) & ~7;
                float *kt = work + (ptrdiff_t)QC_ATT_TR * Lkp, *vt = kt + (ptrdiff_t)d * Lkp;
                if (b != packed_b || hk != packed_h) {
                    qc_att_pack_kt(Lk, d, kh, ks[2], Lkp, kt);
#if defined(QC_ATT_NEON)
                    if (QC_ATT_TILES(Lq, d, mask, ms[3])) qc_att_pack_v(Lk, dv, vh, vs[2], vt);
#endif
                    packed_b = b;
                    packed_h = hk;
                }
                qc_att_head(Lq, Lk, d, dv, scale, q + (ptrdiff_t)b * qs[0] + (ptrdiff_t)h * qs[1], qs[2], kt, Lkp,
                            vh, vs[2], vt, mask ? mask + (ptrdiff_t)b * ms[0] + (ptrdiff_t)h * ms[1] : NULL, ms[2],
                            ms[3], y + (ptrdiff_t)b * ys[0] + (ptrdiff_t)h * ys[1], ys[2], work);
                i = Lq;
            }
#if defined(QC_ATT_ROWS)
            /* QC_ATT_ROWS query rows at a time; causal: the block reads the keys up to its last
             * row (nb), row r's scores past its own n are set to -inf, so their exp is exactly 0
             * and softmax and context add exact zeros: the row path's bits, with no scalar
             * tails in the exp */
            for (; causal && (d & 3) == 0 && i + QC_ATT_ROWS <= Lq; i += QC_ATT_ROWS) {
                const float *qr[QC_ATT_ROWS];
                float *sr[QC_ATT_ROWS], *yr[QC_ATT_ROWS], inv[QC_ATT_ROWS];
                int r, j0, t0, nb = i + causal - 1 + QC_ATT_ROWS < Lk ? i + causal - 1 + QC_ATT_ROWS : Lk;
                for (r = 0; r < QC_ATT_ROWS; ++r) {
                    qr[r] = q + (ptrdiff_t)b * qs[0] + (ptrdiff_t)h * qs[1] + (ptrdiff_t)(i + r) * qs[2];
                    yr[r] = y + (ptrdiff_t)b * ys[0] + (ptrdiff_t)h * ys[1] + (ptrdiff_t)(i + r) * ys[2];
                    sr[r] = work + (ptrdiff_t)r * Lk;
                }
                j0 = qc_att_scores4(nb, d, qr, kh, ks[2], sr);
                for (r = 0; r < QC_ATT_ROWS; ++r) {
                    int n = i + r + causal < Lk ? i + r + causal : Lk, ne, j;
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
                int n = causal ? (i + causal < Lk ? i + causal : Lk) : Lk;
                float m;
                qc_att_scores(n, d, qi, kh, ks[2], work);
                m = qc_att_scale_mask_max(n, work, scale, mask ? mask + (ptrdiff_t)b * ms[0] + (ptrdiff_t)h * ms[1]
                                          + (ptrdiff_t)i * ms[2] : NULL, ms[3]);
                qc_att_context(n, dv, work, vh, vs[2], 1.0f / qc_att_exp_sum(n, work, m), yi);
            }
        }
    }
}

void qc_cached_attention_f32(int H, int Hkv, int S, int past, int max_context, int d, int dv, float scale,
                             const float *q, const int *qs, const float *k_new, const int *kns,
                             const float *v_new, const int *vns, float *cache_k, float *cache_v, float *y,
                             const int *ys, float *work)
{
    int hk, i, t;
    int ks[3] = {0, 0, 0}, vs[3] = {0, 0, 0}, ms[4] = {0, 0, 0, 0};
    ks[1] = max_context * d;
    ks[2] = d;
    vs[1] = max_context * dv;
    vs[2] = dv;
    for (hk = 0; hk < Hkv; ++hk) {
        for (i = 0; i < S; ++i) {
            const float *kr = k_new + (ptrdiff_t)hk * kns[1] + (ptrdiff_t)i * kns[2];
            const float *vr = v_new + (ptrdiff_t)hk * vns[1] + (ptrdiff_t)i * vns[2];
            float *kc = cache_k + (ptrdiff_t)hk * ks[1] + (ptrdiff_t)(past + i) * d;
            float *vc = cache_v + (ptrdiff_t)hk * vs[1] + (ptrdiff_t)(past + i) * dv;
            for (t = 0; t < d; ++t) kc[t] = kr[t];
            for (t = 0; t < dv; ++t) vc[t] = vr[t];
        }
    }
    qc_attention_f32(1, H, Hkv, S, past + S, d, dv, scale, past + 1, q, qs, cache_k, ks, cache_v, vs, NULL, ms, y,
                     ys, work);
}
