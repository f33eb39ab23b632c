/* qc_gemm_s4a8 with SMMLA (QC_KERNEL_I8MM; packing_s4 "i8mm" layout): per group of 4 columns
   and block of 32 k, four 16-byte loads give the eight 2 x 8 weight operands (v << 4 and
   v & 0xF0, 16 x the nibbles); a pair of activation rows is zipped into 2 x 8 operands and one
   SMMLA adds a 2 x 2 tile of 8-k dot products. The int32 sums stay 16 x the products (zero
   points packed as 16 zp') until SCVTF with 4 fraction bits divides by 16 exactly. Tiles of
   4 rows (two pairs) x 4 columns; a single row runs as a pair with itself. Bit-exact with the
   portable qc_gemm_s4a8. */
#include "qc_kernels.h"

#if defined(QC_KERNEL_I8MM)
#if !defined(__ARM_FEATURE_MATMUL_INT8)
#error "QC_KERNEL_I8MM needs a compiler target with the int8 matrix multiply extension (e.g. -march=armv8.6-a+i8mm)"
#endif
#include <arm_neon.h>
#include <string.h>

#define QC_LO(v) vreinterpretq_s8_u8(vshlq_n_u8(v, 4))
#define QC_HI(v) vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0xF0)))
#define QC_ZIP1(x, y) vreinterpretq_s8_s64(vzip1q_s64(vreinterpretq_s64_s8(x), vreinterpretq_s64_s8(y)))
#define QC_ZIP2(x, y) vreinterpretq_s8_s64(vzip2q_s64(vreinterpretq_s64_s8(x), vreinterpretq_s64_s8(y)))

/* the 2 x 2 sums of column pair p (operands l_p, h_p, l_p+2, h_p+2) with a row pair's c0..c3 */
#define QC_MMLA(lA, hA, lB, hB, c0, c1, c2, c3) \
    vmmlaq_s32(vmmlaq_s32(vmmlaq_s32(vmmlaq_s32(vdupq_n_s32(0), c0, lA), c2, hA), c1, lB), c3, hB)

/* zero points 16 zp' of the group as the two 2 x 2 layouts [z0 z1 z0 z1], [z2 z3 z2 z3] */
static inline void qc_s4a8_zp(const int8_t *zp, int32x4_t *z01, int32x4_t *z23)
{
    int32_t z4;
    int32x4_t z;
    memcpy(&z4, zp, 4);
    z = vmovl_s16(vget_low_s16(vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(z4)))));
    *z01 = vreinterpretq_s32_s64(vdupq_laneq_s64(vreinterpretq_s64_s32(z), 0));
    *z23 = vreinterpretq_s32_s64(vdupq_laneq_s64(vreinterpretq_s64_s32(z), 1));
}

/* acc + float(d / 16) * (sa * ws): the portable code's float32 steps, elementwise */
#define QC_ACC(acc, d, scale) vaddq_f32(acc, vmulq_f32(vcvtq_n_f32_s32(d, 4), scale))

static void qc_s4a8_store(float *o, int n0, int N, float32x4_t v, const float *bias)
{
    float t[4];
    int c;
    if (n0 + 4 <= N) {
        vst1q_f32(o + n0, bias ? vaddq_f32(v, vld1q_f32(bias + n0)) : v);
        return;
    }
    vst1q_f32(t, v);
    for (c = 0; n0 + c < N; ++c) {
        o[n0 + c] = bias ? t[c] + bias[n0 + c] : t[c];
    }
}

/* [sa0 * w0, sa0 * w1, sa1 * w0, sa1 * w1] for the column pair w = [w0 w1] */
static inline float32x4_t qc_s4a8_scale(float32x2_t w, float sa0, float sa1)
{
    return vcombine_f32(vmul_n_f32(w, sa0), vmul_n_f32(w, sa1));
}

/* rows r0, r1 of a pair (r1 may equal r0) and, if q2 != NULL, a second pair r2, r3 */
static void qc_s4a8_rows(int N, int nb, const int8_t *q0, const int8_t *q1, const int8_t *q2, const int8_t *q3,
                         const float *s0, const float *s1, const float *s2, const float *s3, const int32_t *u0,
                         const int32_t *u1, const int32_t *u2, const int32_t *u3, const uint8_t *Wp,
                         const float *ws, const int8_t *wzp, const float *bias, float *o0, float *o1, float *o2,
                         float *o3)
{
    const int G = (N + 3) / 4;
    int g, b;
    for (g = 0; g < G; ++g) {
        const uint8_t *w = Wp + (size_t)g * nb * 64;
        const float *s = ws + (size_t)g * nb * 4;
        const int8_t *z = wzp ? wzp + (size_t)g * nb * 4 : NULL;
        float32x4_t f00 = vdupq_n_f32(0.0f), f01 = f00, f10 = f00, f11 = f00;
        for (b = 0; b < nb; ++b) {
            const uint8x16x4_t v = vld1q_u8_x4(w + 64 * b);
            const int8x16_t l0 = QC_LO(v.val[0]), h0 = QC_HI(v.val[0]), l1 = QC_LO(v.val[1]), h1 = QC_HI(v.val[1]);
            const int8x16_t l2 = QC_LO(v.val[2]), h2 = QC_HI(v.val[2]), l3 = QC_LO(v.val[3]), h3 = QC_HI(v.val[3]);
            const float32x4_t wv = vld1q_f32(s + 4 * b);
            const float32x2_t w01 = vget_low_f32(wv), w23 = vget_high_f32(wv);
            int32x4_t z01 = vdupq_n_s32(0), z23 = z01;
            {
                const int8x16_t a0 = vld1q_s8(q0 + 32 * b), a1 = vld1q_s8(q0 + 32 * b + 16);
                const int8x16_t b0 = vld1q_s8(q1 + 32 * b), b1 = vld1q_s8(q1 + 32 * b + 16);
                const int8x16_t c0 = QC_ZIP1(a0, b0), c1 = QC_ZIP2(a0, b0), c2 = QC_ZIP1(a1, b1), c3 = QC_ZIP2(a1, b1);
                int32x4_t d0 = QC_MMLA(l0, h0, l2, h2, c0, c1, c2, c3), d1 = QC_MMLA(l1, h1, l3, h3, c0, c1, c2, c3);
                if (z) {
                    const int32x4_t u = vcombine_s32(vdup_n_s32(u0[b]), vdup_n_s32(u1[b]));
                    qc_s4a8_zp(z + 4 * b, &z01, &z23);
                    d0 = vmlsq_s32(d0, z01, u);
                    d1 = vmlsq_s32(d1, z23, u);
                }
                f00 = QC_ACC(f00, d0, qc_s4a8_scale(w01, s0[b], s1[b]));
                f01 = QC_ACC(f01, d1, qc_s4a8_scale(w23, s0[b], s1[b]));
            }
            if (q2) {
                const int8x16_t a0 = vld1q_s8(q2 + 32 * b), a1 = vld1q_s8(q2 + 32 * b + 16);
                const int8x16_t b0 = vld1q_s8(q3 + 32 * b), b1 = vld1q_s8(q3 + 32 * b + 16);
                const int8x16_t c0 = QC_ZIP1(a0, b0), c1 = QC_ZIP2(a0, b0), c2 = QC_ZIP1(a1, b1), c3 = QC_ZIP2(a1, b1);
                int32x4_t d0 = QC_MMLA(l0, h0, l2, h2, c0, c1, c2, c3), d1 = QC_MMLA(l1, h1, l3, h3, c0, c1, c2, c3);
                if (z) {
                    const int32x4_t u = vcombine_s32(vdup_n_s32(u2[b]), vdup_n_s32(u3[b]));
                    d0 = vmlsq_s32(d0, z01, u);
                    d1 = vmlsq_s32(d1, z23, u);
                }
                f10 = QC_ACC(f10, d0, qc_s4a8_scale(w01, s2[b], s3[b]));
                f11 = QC_ACC(f11, d1, qc_s4a8_scale(w23, s2[b], s3[b]));
            }
        }
        qc_s4a8_store(o0, 4 * g, N, vcombine_f32(vget_low_f32(f00), vget_low_f32(f01)), bias);
        if (o1) {
            qc_s4a8_store(o1, 4 * g, N, vcombine_f32(vget_high_f32(f00), vget_high_f32(f01)), bias);
        }
        if (o2) {
            qc_s4a8_store(o2, 4 * g, N, vcombine_f32(vget_low_f32(f10), vget_low_f32(f11)), bias);
        }
        if (o3) {
            qc_s4a8_store(o3, 4 * g, N, vcombine_f32(vget_high_f32(f10), vget_high_f32(f11)), bias);
        }
    }
}

void qc_gemm_s4a8(int M, int N, int K, const int8_t *qa, const float *sa, const int32_t *suma,
                  const uint8_t *Wp, const float *ws, const int8_t *wzp, const float *bias, float *out)
{
    const size_t nb = (size_t)(K + 31) / 32;
    int m;
    for (m = 0; m < M; m += 4) {
        /* rows m .. m+3, clamped to the last row; a clamped row is computed but not stored */
        const int rows = M - m < 4 ? M - m : 4;
        size_t r[4];
        int j;
        for (j = 0; j < 4; ++j) {
            r[j] = (size_t)(m + (j < rows ? j : rows - 1));
        }
        qc_s4a8_rows(N, (int)nb, qa + r[0] * nb * 32, qa + r[1] * nb * 32, rows > 2 ? qa + r[2] * nb * 32 : NULL,
                     qa + r[3] * nb * 32, sa + r[0] * nb, sa + r[1] * nb, sa + r[2] * nb, sa + r[3] * nb,
                     suma + r[0] * nb, suma + r[1] * nb, suma + r[2] * nb, suma + r[3] * nb, Wp, ws, wzp, bias,
                     out + r[0] * N, rows > 1 ? out + r[1] * N : NULL, rows > 2 ? out + r[2] * N : NULL,
                     rows > 3 ? out + r[3] * N : NULL);
    }
}
#endif
