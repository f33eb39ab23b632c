/* W4A8 with per-row (per-token) activation scales and integer block scales (qc.MatMulNBitsRows,
   the ``w4a8-per-token`` form): the int32 sums accumulate across the whole of K, so a block costs
   its 8 SDOT, the SMULL that starts its chain at -zp * suma and one MLA by the block's integer
   scale, and the float arithmetic runs once per row and column at the end:

       D[m][n]   = sum_b wsi[b][n] * (sum_k qa[m][k] * q[k][n] - zp[b][n] * suma[m][b])   (int32, exact)
       out[m][n] = (float(D) * ws[n]) * sa[m]  (+ bias[n])                               (float32)

   |D| <= blocks * 127 * 32 * 15 * 127, exact in int32 for K <= 8192 (fuse-matmul-nbits-rows
   fuses no larger K). Layouts (backends/c/packing_s4r.py): the weights unsigned nibbles q in
   packing_s4's dotprod order (super-groups of 16 columns, per block 256 bytes), wsi int32 and
   zp int8 per (super-group, block, 16 columns), ws per column; the activations as
   qc_quantize_q8b32's dotprod layout (tiles of 8 rows, block-major within a tile; row 8t + i,
   block b at index 8t * blocks + b * r + i) with one scale per row and -suma as int16 at the
   same index. The SDOT code (QC_KERNEL_DOTPROD, QC_KERNEL_I8MM) and the portable code give the
   same bits; docs/c-kernels.md "W4A8 per token". */
#include "qc_kernels.h"

#include <string.h>

#if (defined(QC_KERNEL_DOTPROD) || defined(QC_KERNEL_I8MM)) && defined(__ARM_FEATURE_DOTPROD)
#define QC_S4A8R_SDOT 1
#endif
#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#endif

#define QC_R_BLOCK 32
#define QC_R_TINY 1e-30f

/* index of row m, block b in the tiled activation layout */
static inline size_t qc_r_index(int M, int nb, int m, int b)
{
    const int t0 = m & ~7, r = M - t0 < 8 ? M - t0 : 8;
    return (size_t)t0 * nb + (size_t)b * r + (size_t)(m - t0);
}

/* Round half to even for |v| < 2^22 (IEEE float32 evaluation, as qc_quant.c). */
static inline float qc_r_rint(float v)
{
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    return v >= 0.0f ? (v + magic) - magic : (v - magic) + magic;
}

void qc_quantize_q8r(int M, int K, const float *A, int8_t *qa, float *sa, int16_t *nu)
{
    const int nb = (K + QC_R_BLOCK - 1) / QC_R_BLOCK;
    int m, b, j;
    for (m = 0; m < M; ++m) {
        const float *x = A + (size_t)m * K;
        float amax = 0.0f, s;
        j = 0;
#if defined(__aarch64__) && defined(__ARM_NEON)
        {
            float32x4_t mx = vdupq_n_f32(0.0f);
            for (; j + 16 <= K; j += 16) {
                const float32x4x4_t v = vld1q_f32_x4(x + j);
                mx = vmaxq_f32(mx, vmaxq_f32(vmaxq_f32(vabsq_f32(v.val[0]), vabsq_f32(v.val[1])),
                                             vmaxq_f32(vabsq_f32(v.val[2]), vabsq_f32(v.val[3]))));
            }
            amax = vmaxvq_f32(mx);
        }
#endif
        for (; j < K; ++j) {
            const float a = x[j] < 0.0f ? -x[j] : x[j];
            amax = a > amax ? a : amax;
        }
        s = (amax > QC_R_TINY ? amax : QC_R_TINY) / 127.0f; /* onnx: Div(Max(ReduceMax(Abs(x)), 1e-30), 127) */
        sa[m] = s;
        for (b = 0; b < nb; ++b) {
            const size_t i = qc_r_index(M, nb, m, b);
            const int k0 = b * QC_R_BLOCK;
            int8_t *q = qa + i * QC_R_BLOCK;
            int32_t sum = 0;
#if defined(__aarch64__) && defined(__ARM_NEON)
            if (k0 + QC_R_BLOCK <= K) { /* onnx: Round(Div(x, s)), ties to even */
                const float32x4_t sv = vdupq_n_f32(s);
                const float32x4x4_t lo = vld1q_f32_x4(x + k0), hi = vld1q_f32_x4(x + k0 + 16);
#define QC_R_Q(v) vcvtnq_s32_f32(vdivq_f32(v, sv))
                const int16x8_t h0 = vcombine_s16(vqmovn_s32(QC_R_Q(lo.val[0])), vqmovn_s32(QC_R_Q(lo.val[1])));
                const int16x8_t h1 = vcombine_s16(vqmovn_s32(QC_R_Q(lo.val[2])), vqmovn_s32(QC_R_Q(lo.val[3])));
                const int16x8_t h2 = vcombine_s16(vqmovn_s32(QC_R_Q(hi.val[0])), vqmovn_s32(QC_R_Q(hi.val[1])));
                const int16x8_t h3 = vcombine_s16(vqmovn_s32(QC_R_Q(hi.val[2])), vqmovn_s32(QC_R_Q(hi.val[3])));
#undef QC_R_Q
                vst1q_s8(q, vcombine_s8(vqmovn_s16(h0), vqmovn_s16(h1)));
                vst1q_s8(q + 16, vcombine_s8(vqmovn_s16(h2), vqmovn_s16(h3)));
                nu[i] = (int16_t)-vaddlvq_s16(vaddq_s16(vaddq_s16(h0, h1), vaddq_s16(h2, h3)));
                continue;
            }
#endif
            for (j = 0; j < QC_R_BLOCK; ++j) {
                const int8_t v = k0 + j < K ? (int8_t)qc_r_rint(x[k0 + j] / s) : 0;
                q[j] = v;
                sum += v;
            }
            nu[i] = (int16_t)-sum;
        }
    }
}

/* column n0 + c (< N) of a row = (float(D) * ws) * sa (+ bias) */
static void qc_r_store_scalar(float *o, int n0, int N, const int32_t *d, const float *ws, float sa,
                              const float *bias)
{
    int c;
    for (c = 0; c < 4 && n0 + c < N; ++c) {
        const float v = ((float)d[c] * ws[n0 + c]) * sa;
        o[n0 + c] = bias ? v + bias[n0 + c] : v;
    }
}

#if defined(QC_S4A8R_SDOT)
#define QC_INLINE static inline __attribute__((always_inline))
#if defined(__GNUC__) && !defined(__clang__)
#define QC_NO_SCHED1 __attribute__((optimize("no-schedule-insns")))
#else
#define QC_NO_SCHED1
#endif
#define QC_RLO(v) vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F)))
#define QC_RHI(v) vreinterpretq_s8_u8(vshrq_n_u8(v, 4))

/* columns n0..n0+3 of a row (those < N) */
QC_INLINE void qc_r_store(float *o, int n0, int N, int32x4_t d, const float *ws, float32x4_t wv, float sa,
                          const float *bias)
{
    const float32x4_t v = vmulq_n_f32(vmulq_f32(vcvtq_f32_s32(d), wv), sa);
    if (n0 + 4 <= N) {
        vst1q_f32(o + n0, bias ? vaddq_f32(v, vld1q_f32(bias + n0)) : v);
    } else {
        int32_t t[4];
        vst1q_s32(t, d);
        qc_r_store_scalar(o, n0, N, t, ws, sa, bias);
    }
}

QC_INLINE int32x4_t qc_r_dot(int32x4_t d, const uint8_t *w, int8x16_t a0, int8x16_t a1)
{
    const uint8x16x4_t v = vld1q_u8_x4(w);
    d = vdotq_laneq_s32(d, QC_RLO(v.val[0]), a0, 0);
    d = vdotq_laneq_s32(d, QC_RHI(v.val[0]), a1, 0);
    d = vdotq_laneq_s32(d, QC_RLO(v.val[1]), a0, 1);
    d = vdotq_laneq_s32(d, QC_RHI(v.val[1]), a1, 1);
    d = vdotq_laneq_s32(d, QC_RLO(v.val[2]), a0, 2);
    d = vdotq_laneq_s32(d, QC_RHI(v.val[2]), a1, 2);
    d = vdotq_laneq_s32(d, QC_RLO(v.val[3]), a0, 3);
    return vdotq_laneq_s32(d, QC_RHI(v.val[3]), a1, 3);
}

/* one row (block b at qa + 32 r b, -suma at nu[r b]; r: its tile's rows), 16 columns per step */
QC_NO_SCHED1 static void qc_r_row(int N, int nb, int r, const int8_t *qa, float sa, const int16_t *nu,
                                  const uint8_t *Wp, const int32_t *wsi, const int8_t *wzp, const float *ws,
                                  const float *bias, float *out)
{
    const int S = (N + 15) / 16;
    int sg, b;
    for (sg = 0; sg < S; ++sg) {
        const uint8_t *w = Wp + (size_t)sg * nb * 256;
        const int32_t *si = wsi + (size_t)sg * nb * 16;
        const int8_t *z = wzp + (size_t)sg * nb * 16;
        int32x4_t acc0 = vdupq_n_s32(0), acc1 = acc0, acc2 = acc0, acc3 = acc0;
        for (b = 0; b < nb; ++b, w += 256, si += 16, z += 16) {
            const int8x16x2_t a = vld1q_s8_x2(qa + (size_t)32 * r * b);
            const int16x8_t n8 = vld1q_dup_s16(nu + (size_t)r * b);
            const int8x16_t zz = vld1q_s8(z);
            const int16x8_t z01 = vmovl_s8(vget_low_s8(zz)), z23 = vmovl_high_s8(zz);
            const int32x4x4_t sv = vld1q_s32_x4(si);
            acc0 = vmlaq_s32(acc0, qc_r_dot(vmull_s16(vget_low_s16(z01), vget_low_s16(n8)), w, a.val[0], a.val[1]),
                             sv.val[0]);
            acc1 = vmlaq_s32(acc1, qc_r_dot(vmull_high_s16(z01, n8), w + 64, a.val[0], a.val[1]), sv.val[1]);
            acc2 = vmlaq_s32(acc2, qc_r_dot(vmull_s16(vget_low_s16(z23), vget_low_s16(n8)), w + 128, a.val[0],
                                            a.val[1]), sv.val[2]);
            acc3 = vmlaq_s32(acc3, qc_r_dot(vmull_high_s16(z23, n8), w + 192, a.val[0], a.val[1]), sv.val[3]);
        }
        {
            const int n0 = 16 * sg;
            const float32x4x4_t wv = vld1q_f32_x4(ws + n0);
            qc_r_store(out, n0, N, acc0, ws, wv.val[0], sa, bias);
            qc_r_store(out, n0 + 4, N, acc1, ws, wv.val[1], sa, bias);
            qc_r_store(out, n0 + 8, N, acc2, ws, wv.val[2], sa, bias);
            qc_r_store(out, n0 + 12, N, acc3, ws, wv.val[3], sa, bias);
        }
    }
}

/* a row of the 16-row tile: its 32 activation bytes, the chain from -zp * suma, 8 SDOT, one MLA */
#define QC_R_DOTROW(d, a0, a1) \
    vdotq_laneq_s32(vdotq_laneq_s32(vdotq_laneq_s32(vdotq_laneq_s32(vdotq_laneq_s32(vdotq_laneq_s32( \
    vdotq_laneq_s32(vdotq_laneq_s32(d, l0, a0, 0), h0, a1, 0), l1, a0, 1), h1, a1, 1), \
    l2, a0, 2), h2, a1, 2), l3, a0, 3), h3, a1, 3)
#define QC_R_T16(acc, q, lane, nv) do { \
        const int8x16_t a0_ = vld1q_s8((q) + 32 * (lane)), a1_ = vld1q_s8((q) + 32 * (lane) + 16); \
        acc = vmlaq_s32(acc, QC_R_DOTROW(vmull_laneq_s16(z16, nv, lane), a0_, a1_), wv); \
    } while (0)

/* rows 0..15 of two whole 8-row tiles x 4 columns per step: each block's weights unpacked once */
QC_NO_SCHED1 static void qc_r_tile16(int N, int nb, const int8_t *qa, const float *sa, const int16_t *nv,
                                     const uint8_t *Wp, const int32_t *wsi, const int8_t *wzp, const float *ws,
                                     const float *bias, float *out)
{
    const int G = (N + 15) / 16 * 4;
    const int8_t *qa1 = qa + (size_t)8 * nb * 32;
    const int16_t *nv1 = nv + (size_t)8 * nb;
    int g, b, i;
    for (g = 0; g < G; ++g) {
        const size_t t = (size_t)(g / 4) * nb * 4 + (size_t)(g % 4); /* block b: t + 4 b */
        const uint8_t *w = Wp + t * 64;
        const int32_t *si = wsi + t * 4;
        const int8_t *z = wzp + t * 4;
        int32x4_t acc0 = vdupq_n_s32(0), acc1 = acc0, acc2 = acc0, acc3 = acc0;
        int32x4_t acc4 = acc0, acc5 = acc0, acc6 = acc0, acc7 = acc0;
        int32x4_t acc8 = acc0, acc9 = acc0, acc10 = acc0, acc11 = acc0;
        int32x4_t acc12 = acc0, acc13 = acc0, acc14 = acc0, acc15 = acc0;
        const int8_t *q0 = qa, *q1 = qa1;
        const int16_t *u0 = nv, *u1 = nv1;
        for (b = nb; b > 0; --b, w += 256, si += 16, z += 16, q0 += 256, q1 += 256, u0 += 8, u1 += 8) {
            const uint8x16_t v0 = vld1q_u8(w), v1 = vld1q_u8(w + 16), v2 = vld1q_u8(w + 32), v3 = vld1q_u8(w + 48);
            const int8x16_t l0 = QC_RLO(v0), h0 = QC_RHI(v0), l1 = QC_RLO(v1), h1 = QC_RHI(v1);
            const int8x16_t l2 = QC_RLO(v2), h2 = QC_RHI(v2), l3 = QC_RLO(v3), h3 = QC_RHI(v3);
            const int32x4_t wv = vld1q_s32(si);
            uint32_t z4;
            int16x4_t z16;
            int16x8_t nu;
            memcpy(&z4, z, 4);
            z16 = vget_low_s16(vmovl_s8(vcreate_s8((uint64_t)z4)));
            nu = vld1q_s16(u0);
            QC_R_T16(acc0, q0, 0, nu);
            QC_R_T16(acc1, q0, 1, nu);
            QC_R_T16(acc2, q0, 2, nu);
            QC_R_T16(acc3, q0, 3, nu);
            QC_R_T16(acc4, q0, 4, nu);
            QC_R_T16(acc5, q0, 5, nu);
            QC_R_T16(acc6, q0, 6, nu);
            QC_R_T16(acc7, q0, 7, nu);
            nu = vld1q_s16(u1);
            QC_R_T16(acc8, q1, 0, nu);
            QC_R_T16(acc9, q1, 1, nu);
            QC_R_T16(acc10, q1, 2, nu);
            QC_R_T16(acc11, q1, 3, nu);
            QC_R_T16(acc12, q1, 4, nu);
            QC_R_T16(acc13, q1, 5, nu);
            QC_R_T16(acc14, q1, 6, nu);
            QC_R_T16(acc15, q1, 7, nu);
        }
        {
            const int32x4_t r[16] = {acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7,
                                     acc8, acc9, acc10, acc11, acc12, acc13, acc14, acc15};
            const int n0 = 4 * g;
            const float32x4_t wv = n0 + 4 <= N ? vld1q_f32(ws + n0) : vdupq_n_f32(0.0f);
            for (i = 0; i < 16; ++i) {
                qc_r_store(out + (size_t)i * N, n0, N, r[i], ws, wv, sa[i], bias);
            }
        }
    }
}
#endif

#if !defined(QC_S4A8R_SDOT)
/* one row, every column: the definition, in plain C */
static void qc_r_row_portable(int N, int nb, int r, const int8_t *qa, float sa, const int16_t *nu,
                              const uint8_t *Wp, const int32_t *wsi, const int8_t *wzp, const float *ws,
                              const float *bias, float *out)
{
    const int S = (N + 15) / 16;
    int sg, c, b, k;
    for (sg = 0; sg < S; ++sg) {
        for (c = 0; c < 16; c += 4) {
            int32_t d[4] = {0, 0, 0, 0};
            int j;
            for (b = 0; b < nb; ++b) {
                const size_t t = (size_t)sg * nb + (size_t)b;
                const uint8_t *w = Wp + t * 256 + (size_t)(c / 4) * 64;
                const int8_t *a = qa + (size_t)32 * r * b;
                for (j = 0; j < 4; ++j) {
                    int32_t s = (int32_t)wzp[t * 16 + c + j] * nu[(size_t)r * b];
                    for (k = 0; k < 32; ++k) { /* dotprod order: operand g = k / 4, byte 4 j + k % 4 */
                        const int g = k / 4, byte = 16 * (g % 4) + 4 * j + k % 4;
                        const int qv = g < 4 ? (w[byte] & 0x0F) : (w[byte] >> 4);
                        s += qv * a[k];
                    }
                    d[j] += s * wsi[t * 16 + c + j];
                }
            }
            qc_r_store_scalar(out, 16 * sg + c, N, d, ws, sa, bias);
        }
    }
}
#endif

void qc_gemm_s4a8r(int M, int N, int K, const int8_t *qa, const float *sa, const int16_t *nu, const uint8_t *Wp,
                   const int32_t *wsi, const int8_t *wzp, const float *ws, const float *bias, float *out)
{
    const int nb = (K + QC_R_BLOCK - 1) / QC_R_BLOCK;
    int t, i;
    for (t = 0; t < M; t += 8) {
        const int r = M - t < 8 ? M - t : 8;
        const size_t o = (size_t)t * nb;
#if defined(QC_S4A8R_SDOT)
        if (M - t >= 16) {
            qc_r_tile16(N, nb, qa + o * 32, sa + t, nu + o, Wp, wsi, wzp, ws, bias, out + (size_t)t * N);
            t += 8;
            continue;
        }
#endif
        for (i = 0; i < r; ++i) {
#if defined(QC_S4A8R_SDOT)
            qc_r_row(N, nb, r, qa + (o + i) * 32, sa[t + i], nu + o + i, Wp, wsi, wzp, ws, bias,
                     out + (size_t)(t + i) * N);
#else
            qc_r_row_portable(N, nb, r, qa + (o + i) * 32, sa[t + i], nu + o + i, Wp, wsi, wzp, ws, bias,
                              out + (size_t)(t + i) * N);
#endif
        }
    }
}
