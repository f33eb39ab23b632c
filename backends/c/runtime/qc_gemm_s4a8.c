/* W4A8: int4 block weights x int8 activations quantized at run time (MatMulNBits with
   accuracy_level 4). The activation quantizer (every variant; NEON on aarch64, bit-exact with
   the scalar code) and the portable qc_gemm_s4a8 (the reference for qc_gemm_s4a8_dotprod.c and
   qc_gemm_s4a8_i8mm.c). Layouts and the arithmetic: backends/c/packing_s4.py, docs/c-kernels.md. */
#include "qc_kernels.h"

#include <math.h>

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#endif

#define QC_S4A8_BLOCK 32

#if defined(__aarch64__) && defined(__ARM_NEON)
/* the block in registers throughout (arrays of vectors went through the stack) */
#define QC_Q8(v) vcvtnq_s32_f32(vmulq_n_f32(v, inv)) /* round to nearest, ties to even */
static inline __attribute__((always_inline)) void qc_s4a8_quantize_block(const float *x, int n, int8_t *q,
                                                                          float *scale, int32_t *sum)
{
    float buf[QC_S4A8_BLOCK];
    float32x4x4_t lo, hi;
    float32x4_t mx;
    int16x8_t h0, h1, h2, h3;
    float amax, inv;
    int j;
    if (n < QC_S4A8_BLOCK) { /* the last, partial block: zero padded (zeros change no maximum) */
        for (j = 0; j < QC_S4A8_BLOCK; ++j) {
            buf[j] = j < n ? x[j] : 0.0f;
        }
        x = buf;
    }
    lo = vld1q_f32_x4(x);
    hi = vld1q_f32_x4(x + 16);
    mx = vmaxq_f32(vmaxq_f32(vmaxq_f32(vabsq_f32(lo.val[0]), vabsq_f32(lo.val[1])),
                             vmaxq_f32(vabsq_f32(lo.val[2]), vabsq_f32(lo.val[3]))),
                   vmaxq_f32(vmaxq_f32(vabsq_f32(hi.val[0]), vabsq_f32(hi.val[1])),
                             vmaxq_f32(vabsq_f32(hi.val[2]), vabsq_f32(hi.val[3]))));
    amax = vmaxvq_f32(mx);
    *scale = amax / 127.0f;
    inv = amax != 0.0f ? 127.0f / amax : 0.0f;
    h0 = vcombine_s16(vmovn_s32(QC_Q8(lo.val[0])), vmovn_s32(QC_Q8(lo.val[1])));
    h1 = vcombine_s16(vmovn_s32(QC_Q8(lo.val[2])), vmovn_s32(QC_Q8(lo.val[3])));
    h2 = vcombine_s16(vmovn_s32(QC_Q8(hi.val[0])), vmovn_s32(QC_Q8(hi.val[1])));
    h3 = vcombine_s16(vmovn_s32(QC_Q8(hi.val[2])), vmovn_s32(QC_Q8(hi.val[3])));
    vst1q_s8(q, vcombine_s8(vmovn_s16(h0), vmovn_s16(h1)));
    vst1q_s8(q + 16, vcombine_s8(vmovn_s16(h2), vmovn_s16(h3)));
    *sum = vaddlvq_s16(vaddq_s16(vaddq_s16(h0, h1), vaddq_s16(h2, h3)));
}
#else
/* Round half to even for |v| < 2^22 (here |v| <= 127 * (1 + 2^-23)); needs IEEE float32
   evaluation (no -ffast-math), as qc_quant.c. */
static float qc_s4a8_rint(float v)
{
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    return v >= 0.0f ? (v + magic) - magic : (v - magic) + magic;
}

static void qc_s4a8_quantize_block(const float *x, int n, int8_t *q, float *scale, int32_t *sum)
{
    float amax = 0.0f, inv;
    int32_t s = 0;
    int j;
    for (j = 0; j < n; ++j) {
        const float a = x[j] < 0.0f ? -x[j] : x[j];
        amax = a > amax ? a : amax;
    }
    *scale = amax / 127.0f;
    inv = amax != 0.0f ? 127.0f / amax : 0.0f;
    for (j = 0; j < QC_S4A8_BLOCK; ++j) {
        const int8_t v = j < n ? (int8_t)qc_s4a8_rint(x[j] * inv) : 0;
        q[j] = v;
        s += v;
    }
    *sum = s;
}
#endif

#if defined(QC_KERNEL_I8MM)
/* Row pairs for SMMLA: per pair p and block b, 64 bytes = for each 8 k (j = 0..3) the 8 of row
   2p then the 8 of row 2p + 1; sa and suma 4 values [r0 r0 r1 r1]. An odd M leaves the last
   pair's second row zero. */
void qc_quantize_q8b32(int M, int K, const float *A, int8_t *qa, float *sa, int32_t *suma)
{
    const int nb = (K + QC_S4A8_BLOCK - 1) / QC_S4A8_BLOCK;
    int8_t q[QC_S4A8_BLOCK];
    int m, b, j, i;
    for (m = 0; m < M + (M & 1); ++m) {
        const int h = m & 1;
        for (b = 0; b < nb; ++b) {
            const int k0 = b * QC_S4A8_BLOCK, n = K - k0 < QC_S4A8_BLOCK ? K - k0 : QC_S4A8_BLOCK;
            const size_t t = (size_t)(m >> 1) * nb + b;
            float scale = 0.0f;
            int32_t sum = 0;
            if (m < M) {
                qc_s4a8_quantize_block(A + (size_t)m * K + k0, n, q, &scale, &sum);
            } else {
                for (j = 0; j < QC_S4A8_BLOCK; ++j) {
                    q[j] = 0;
                }
            }
            for (j = 0; j < 4; ++j) {
                for (i = 0; i < 8; ++i) {
                    qa[t * 64 + 16 * j + 8 * h + i] = q[8 * j + i];
                }
            }
            sa[t * 4 + 2 * h] = sa[t * 4 + 2 * h + 1] = scale;
            suma[t * 4 + 2 * h] = suma[t * 4 + 2 * h + 1] = sum;
        }
    }
}
#elif defined(QC_KERNEL_DOTPROD)
/* Tiles of 8 rows (the last one r = M % 8 rows), block-major within a tile: row 8t + i and
   block b at index 8t * blocks + b * r + i (32 bytes of qa, one sa each), so that the SDOT
   kernel loads a block of all a tile's rows from one place. The sums go negated, as int16
   (|suma| <= 32 * 127), into the first half of the tile's suma words: int16 index
   2 * 8t * blocks + b * r + i; the second half is zero. A tile starts at row 8t of the
   row-major index, so a slice of whole tiles is the same layout at the same offset. */
void qc_quantize_q8b32(int M, int K, const float *A, int8_t *qa, float *sa, int32_t *suma)
{
    const int nb = (K + QC_S4A8_BLOCK - 1) / QC_S4A8_BLOCK;
    int16_t *nu = (int16_t *)suma;
    int m, b;
    for (m = 0; m < M; ++m) {
        const int t0 = m & ~7, r = M - t0 < 8 ? M - t0 : 8;
        for (b = 0; b < nb; ++b) {
            const int k0 = b * QC_S4A8_BLOCK, n = K - k0 < QC_S4A8_BLOCK ? K - k0 : QC_S4A8_BLOCK;
            const size_t i = (size_t)t0 * nb + (size_t)b * r + (size_t)(m - t0);
            int32_t sum;
            qc_s4a8_quantize_block(A + (size_t)m * K + k0, n, qa + i * QC_S4A8_BLOCK, sa + i, &sum);
            nu[(size_t)t0 * nb + i] = (int16_t)-sum;
            nu[(size_t)t0 * nb + (size_t)r * nb + i] = 0;
        }
    }
}
#else
void qc_quantize_q8b32(int M, int K, const float *A, int8_t *qa, float *sa, int32_t *suma)
{
    const int nb = (K + QC_S4A8_BLOCK - 1) / QC_S4A8_BLOCK;
    int m, b;
    for (m = 0; m < M; ++m) {
        for (b = 0; b < nb; ++b) {
            const int k0 = b * QC_S4A8_BLOCK, n = K - k0 < QC_S4A8_BLOCK ? K - k0 : QC_S4A8_BLOCK;
            const size_t i = (size_t)m * nb + b;
            qc_s4a8_quantize_block(A + (size_t)m * K + k0, n, qa + i * QC_S4A8_BLOCK, sa + i, suma + i);
        }
    }
}
#endif

#if !defined(QC_KERNEL_DOTPROD) && !defined(QC_KERNEL_I8MM)
/* signed nibbles without relying on arithmetic right shifts of negative ints */
#define QC_LO4(b) ((int32_t)((b) & 15) - (int32_t)(((b) & 8) << 1))
#define QC_HI4(b) ((int32_t)((b) >> 4) - (int32_t)(((b) & 0x80) >> 3))

void qc_gemm_s4a8(int M, int N, int K, const int8_t *qa, const float *sa, const int32_t *suma,
                  const uint8_t *Wp, const float *ws, const int8_t *wzp, const float *bias, float *out)
{
    const int nb = (K + QC_S4A8_BLOCK - 1) / QC_S4A8_BLOCK, G = (N + 3) / 4;
    int m, g, b, c, j;
    for (m = 0; m < M; ++m) {
        for (g = 0; g < G; ++g) {
            float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (b = 0; b < nb; ++b) {
                const size_t t = (size_t)g * nb + b;
                const int8_t *a = qa + ((size_t)m * nb + b) * QC_S4A8_BLOCK;
                const float s = sa[(size_t)m * nb + b];
                for (c = 0; c < 4; ++c) {
                    const uint8_t *w = Wp + t * 64 + 16 * c;
                    int32_t d = 0;
                    for (j = 0; j < 16; ++j) {
                        d += a[j] * QC_LO4(w[j]) + a[j + 16] * QC_HI4(w[j]);
                    }
                    if (wzp) {
                        d -= wzp[t * 4 + c] * suma[(size_t)m * nb + b];
                    }
                    acc[c] = fmaf((float)d * ws[t * 4 + c], s, acc[c]); /* the SIMD kernels' FMUL, FMLA */
                }
            }
            for (c = 0; c < 4 && 4 * g + c < N; ++c) {
                const int n = 4 * g + c;
                out[(size_t)m * N + n] = bias ? acc[c] + bias[n] : acc[c];
            }
        }
    }
}
#endif
