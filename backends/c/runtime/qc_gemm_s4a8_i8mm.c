/* qc_gemm_s4a8 with SMMLA (QC_KERNEL_I8MM; packing_s4 "i8mm" layout): per group of 4 columns
   and block of 32 k, four 16-byte loads give the eight 2 x 8 weight operands (v << 4 and
   v & 0xF0, 16 x the nibbles); a pair of activation rows is zipped into 2 x 8 operands and one
   SMMLA adds a 2 x 2 tile of 8-k dot products. Tiles of 4 rows (two pairs) x 4 columns; a
   single row runs as a pair with itself. Bit-exact with the portable qc_gemm_s4a8. */
#include "qc_kernels.h"

#if defined(QC_KERNEL_I8MM)
#if !defined(__ARM_FEATURE_MATMUL_INT8)
#error "QC_KERNEL_I8MM needs a compiler target with the int8 matrix multiply extension (e.g. -march=armv8.6-a+i8mm)"
#endif
#include <arm_neon.h>

typedef struct {
    int8x16_t l[4], h[4]; /* the low / high nibble operands of the tile's 4 vectors, 16 x */
} qc_s4a8_tile;

static inline void qc_s4a8_unpack(const uint8_t *w, qc_s4a8_tile *t)
{
    const uint8x16x4_t v = vld1q_u8_x4(w);
    const uint8x16_t hi = vdupq_n_u8(0xF0);
    int j;
    for (j = 0; j < 4; ++j) {
        t->l[j] = vreinterpretq_s8_u8(vshlq_n_u8(v.val[j], 4));
        t->h[j] = vreinterpretq_s8_u8(vandq_u8(v.val[j], hi));
    }
}

/* int32 sums (d, 2 x 2 per column pair: [r0 c, r0 c+1, r1 c, r1 c+1]) of rows a, b (block of 32) */
static inline void qc_s4a8_mmla(const qc_s4a8_tile *t, const int8_t *a, const int8_t *b, int32x4_t d[2])
{
    const int64x2_t a0 = vreinterpretq_s64_s8(vld1q_s8(a)), a1 = vreinterpretq_s64_s8(vld1q_s8(a + 16));
    const int64x2_t b0 = vreinterpretq_s64_s8(vld1q_s8(b)), b1 = vreinterpretq_s64_s8(vld1q_s8(b + 16));
    const int8x16_t c0 = vreinterpretq_s8_s64(vzip1q_s64(a0, b0)), c1 = vreinterpretq_s8_s64(vzip2q_s64(a0, b0));
    const int8x16_t c2 = vreinterpretq_s8_s64(vzip1q_s64(a1, b1)), c3 = vreinterpretq_s8_s64(vzip2q_s64(a1, b1));
    int p;
    for (p = 0; p < 2; ++p) {
        int32x4_t s = vmmlaq_s32(vdupq_n_s32(0), c0, t->l[p]);
        s = vmmlaq_s32(s, c2, t->h[p]);
        s = vmmlaq_s32(s, c1, t->l[p + 2]);
        s = vmmlaq_s32(s, c3, t->h[p + 2]);
        d[p] = vshrq_n_s32(s, 4);
    }
}

/* acc[p] + float(d - zp' * suma) * (sa * ws) in the 2 x 2 layout, elementwise as the portable code */
static inline void qc_s4a8_acc(float32x4_t acc[2], int32x4_t d[2], const int8_t *zp, int32_t sum0, int32_t sum1,
                               float sa0, float sa1, const float *ws)
{
    const float32x4_t w = vld1q_f32(ws);
    const float32x4_t sa = vcombine_f32(vdup_n_f32(sa0), vdup_n_f32(sa1));
    int p;
    for (p = 0; p < 2; ++p) {
        const float32x2_t wp = p ? vget_high_f32(w) : vget_low_f32(w);
        if (zp) {
            const int32x4_t z = {zp[2 * p], zp[2 * p + 1], zp[2 * p], zp[2 * p + 1]};
            const int32x4_t s = {sum0, sum0, sum1, sum1};
            d[p] = vmlsq_s32(d[p], z, s);
        }
        acc[p] = vaddq_f32(acc[p], vmulq_f32(vcvtq_f32_s32(d[p]), vmulq_f32(sa, vcombine_f32(wp, wp))));
    }
}

static void qc_s4a8_store(float *o, int n0, int N, float32x4_t acc, const float *bias)
{
    float t[4];
    int c;
    vst1q_f32(t, acc);
    for (c = 0; c < 4 && n0 + c < N; ++c) {
        o[n0 + c] = bias ? t[c] + bias[n0 + c] : t[c];
    }
}

static void qc_s4a8_store_pair(float *o0, float *o1, int n0, int N, const float32x4_t acc[2], const float *bias)
{
    const float32x4_t r0 = vcombine_f32(vget_low_f32(acc[0]), vget_low_f32(acc[1]));
    const float32x4_t r1 = vcombine_f32(vget_high_f32(acc[0]), vget_high_f32(acc[1]));
    if (n0 + 4 <= N) {
        vst1q_f32(o0 + n0, bias ? vaddq_f32(r0, vld1q_f32(bias + n0)) : r0);
        if (o1) {
            vst1q_f32(o1 + n0, bias ? vaddq_f32(r1, vld1q_f32(bias + n0)) : r1);
        }
        return;
    }
    qc_s4a8_store(o0, n0, N, r0, bias);
    if (o1) {
        qc_s4a8_store(o1, n0, N, r1, bias);
    }
}

/* rows m .. m + rows - 1 (rows 1..4): one or two row pairs; an odd row pairs with itself */
static void qc_s4a8_rows(int m, int rows, int N, int nb, const int8_t *qa, const float *sa, const int32_t *suma,
                         const uint8_t *Wp, const float *ws, const int8_t *wzp, const float *bias, float *out)
{
    const int G = (N + 3) / 4, pairs = (rows + 1) / 2;
    int g, b, q;
    for (g = 0; g < G; ++g) {
        float32x4_t acc[2][2];
        for (q = 0; q < 2; ++q) {
            acc[q][0] = acc[q][1] = vdupq_n_f32(0.0f);
        }
        for (b = 0; b < nb; ++b) {
            const size_t t = (size_t)g * nb + b;
            qc_s4a8_tile tile;
            qc_s4a8_unpack(Wp + t * 64, &tile);
            for (q = 0; q < pairs; ++q) {
                const int r0 = m + 2 * q, r1 = 2 * q + 1 < rows ? r0 + 1 : r0;
                const size_t i0 = (size_t)r0 * nb + b, i1 = (size_t)r1 * nb + b;
                int32x4_t d[2];
                qc_s4a8_mmla(&tile, qa + i0 * 32, qa + i1 * 32, d);
                qc_s4a8_acc(acc[q], d, wzp ? wzp + t * 4 : NULL, suma[i0], suma[i1], sa[i0], sa[i1], ws + t * 4);
            }
        }
        for (q = 0; q < pairs; ++q) {
            const int r0 = m + 2 * q;
            qc_s4a8_store_pair(out + (size_t)r0 * N, 2 * q + 1 < rows ? out + (size_t)(r0 + 1) * N : NULL, 4 * g, N,
                               acc[q], bias);
        }
    }
}

void qc_gemm_s4a8(int M, int N, int K, const int8_t *qa, const float *sa, const int32_t *suma,
                  const uint8_t *Wp, const float *ws, const int8_t *wzp, const float *bias, float *out)
{
    const int nb = (K + 31) / 32;
    int m;
    for (m = 0; m < M; m += 4) {
        qc_s4a8_rows(m, M - m < 4 ? M - m : 4, N, nb, qa, sa, suma, Wp, ws, wzp, bias, out);
    }
}
#endif
