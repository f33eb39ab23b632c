/* Internal to the qc_gemm_s8 variants (qc_gemm_s8*.c) and qc_quant.c: the fused epilogue
   (scalar reference and the NEON / Helium vector forms, bit-exact with each other), the
   TFLite requantization step, and the edges of a 4-row register tile. Not part of the API. */
#ifndef QC_GEMM_S8_TILE_H
#define QC_GEMM_S8_TILE_H

#include <string.h>
#include "qc_kernels.h"
#include "qc_vmath.h"

#if defined(__GNUC__)
#define QC_INLINE static inline __attribute__((always_inline))
#else
#define QC_INLINE static inline
#endif

#if defined(QC_KERNEL_NEON) || defined(QC_KERNEL_DOTPROD) || defined(QC_KERNEL_I8MM)
#include <arm_neon.h>
#define QC_VEC_NEON 1
#elif defined(QC_KERNEL_MVE)
#include <arm_mve.h>
#define QC_VEC_MVE 1
#endif

/* What the variant's kernel writes: the int32 sums (qc_gemm_s8), float32 or requantized int8. */
enum { QC_OUT_I32 = 0, QC_OUT_F32 = 1, QC_OUT_Q8 = 2 };

struct qc_ep_ctx {
    const struct qc_epilogue *ep;   /* NULL for QC_OUT_I32 */
    int mode;
    void *out;
    int ldo;
};

/* The one function each variant file defines: every output kind of every qc_gemm_s8*. */
void qc_gemm_s8_run(int M, int N, int K, const int8_t *A, int lda, const int8_t *Wp,
                    const struct qc_ep_ctx *c);

/* TFLite / gemmlowp SaturatingRoundingDoublingHighMul. */
static inline int32_t qc_srdhm(int32_t a, int32_t b)
{
    int64_t ab, nudge, q;
    if (a == INT32_MIN && b == INT32_MIN) {
        return INT32_MAX;
    }
    ab = (int64_t)a * (int64_t)b;
    nudge = ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30));
    /* (ab + nudge) / 2^31 truncating toward zero, as TFLite, without a 64-bit division
       (a library call on 32-bit cores); |ab + nudge| < 2^62 so the negation is safe. */
    q = ab + nudge;
    q = q >= 0 ? (q >> 31) : -((-q) >> 31);
    return (int32_t)q;
}

/* gemmlowp RoundingDivideByPOT: round to nearest, ties away from zero. */
static inline int32_t qc_rdbpot(int32_t x, int exponent)
{
    int32_t mask, remainder, threshold;
    if (exponent <= 0) {
        return x;
    }
    if (exponent > 31) {
        exponent = 31;
    }
    mask = (int32_t)(((uint32_t)1 << exponent) - 1u);
    remainder = x & mask;
    threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

static inline int32_t qc_mbqm(int32_t x, int32_t mult, int32_t shift)
{
    int left = shift > 0 ? shift : 0;
    int right = shift > 0 ? 0 : -shift;
    if (left > 31) {
        left = 31;
    }
    x = (int32_t)((uint32_t)x << left);   /* wraps like TFLite's x * (1 << left_shift) */
    return qc_rdbpot(qc_srdhm(x, mult), right);
}

static inline int8_t qc_requant_one(int32_t acc, int32_t mult, int32_t shift, int32_t out_zp,
                                    int32_t qmin, int32_t qmax)
{
    int32_t v = qc_mbqm(acc, mult, shift);
    v = (int32_t)((uint32_t)v + (uint32_t)out_zp);
    v = v < qmin ? qmin : v;
    v = v > qmax ? qmax : v;
    return (int8_t)v;
}

/* float32 epilogue of one value (after the int32 bias): the reference the vector forms match.
   Separate multiply and add (C99 keeps them unfused); NaN goes to lo / 0 like FMAXNM. */
static inline float qc_ep_f32_one(const struct qc_epilogue *ep, int32_t acc, int n)
{
    float v = (float)acc * ep->scale[ep->per_channel ? n : 0];
    if (ep->fbias) {
        v += ep->fbias[n];
    }
    if (ep->act == QC_ACT_RELU) {
        v = v > 0.0f ? v : 0.0f;
    } else if (ep->act == QC_ACT_CLIP) {
        v = v > ep->lo ? v : ep->lo;
        v = v < ep->hi ? v : ep->hi;
    } else if (ep->act == QC_ACT_GELU) {
        v = qc_geluf(v);
    }
    return v;
}

/* The epilogue of the int32 sum at row m, column n (scalar reference). */
static inline void qc_ep_one(const struct qc_ep_ctx *c, int32_t acc, int m, int n)
{
    const struct qc_epilogue *ep = c->ep;
    const size_t at = (size_t)m * (size_t)c->ldo + (size_t)n;
    if (c->mode == QC_OUT_I32) {
        ((int32_t *)c->out)[at] = acc;
        return;
    }
    if (ep->bias) {
        acc = (int32_t)((uint32_t)acc + (uint32_t)ep->bias[n]);   /* wraps */
    }
    if (c->mode == QC_OUT_F32) {
        ((float *)c->out)[at] = qc_ep_f32_one(ep, acc, n);
    } else {
        const int ch = ep->per_channel ? n : 0;
        ((int8_t *)c->out)[at] = qc_requant_one(acc, ep->mult[ch], ep->shift[ch], ep->out_zp,
                                                ep->qmin, ep->qmax);
    }
}

#if defined(QC_VEC_NEON) || defined(QC_VEC_MVE)
#if defined(QC_VEC_MVE)
#define QC_LD4(p) vldrwq_s32(p)
#else
#define QC_LD4(p) vld1q_s32(p)
#endif
/* gemmlowp's vector MultiplyByQuantizedMultiplier, 4 lanes (NEON or Helium, same intrinsic
   names): SQRDMULH is SaturatingRoundingDoublingHighMul; RoundingDivideByPOT is a fix-up
   (x - 1, saturating, for negative x when shifting right) then a rounding shift right
   (SRSHL / VRSHL by a negative count). The left shift (SSHL) wraps like the scalar code.
   Bit-exact with qc_mbqm for shifts in -31..30 (tests). */
QC_INLINE int32x4_t qc_mbqm4(int32x4_t x, int32x4_t mult, int32x4_t shift)
{
    const int32x4_t zero = vdupq_n_s32(0);
    const int32x4_t right = vminq_s32(shift, zero);
    int32x4_t fixup;
    x = vshlq_s32(x, vmaxq_s32(shift, zero));
    x = vqrdmulhq_s32(x, mult);
    fixup = vshrq_n_s32(vandq_s32(x, right), 31);
    return vrshlq_s32(vqaddq_s32(x, fixup), right);
}

/* The low byte of each lane of v to dst[0..3]. */
QC_INLINE void qc_store4_s8(int8_t *dst, int32x4_t v)
{
#if defined(QC_VEC_MVE)
    vstrbq_s32(dst, v);
#else
    int32_t w;
    int16x4_t h = vmovn_s32(v);
    w = vget_lane_s32(vreinterpret_s32_s8(vmovn_s16(vcombine_s16(h, h))), 0);
    memcpy(dst, &w, 4);
#endif
}

/* clamp(zp + MBQM(acc + bias), qmin, qmax) of the 4 columns n..n+3 (vector form). */
QC_INLINE int32x4_t qc_ep_q8_vec4(const struct qc_epilogue *ep, int32x4_t v, int n)
{
    if (ep->bias) {
        v = vaddq_s32(v, QC_LD4(ep->bias + n));
    }
    v = qc_mbqm4(v, ep->per_channel ? QC_LD4(ep->mult + n) : vdupq_n_s32(ep->mult[0]),
                 ep->per_channel ? QC_LD4(ep->shift + n) : vdupq_n_s32(ep->shift[0]));
    v = vaddq_s32(v, vdupq_n_s32(ep->out_zp));
    return vminq_s32(vmaxq_s32(v, vdupq_n_s32(ep->qmin)), vdupq_n_s32(ep->qmax));
}
#endif

#if defined(QC_VEC_NEON)
/* GELU of 4 lanes: qc_vmath.h's vector form (the same bits as qc_geluf on each lane). */
QC_INLINE float32x4_t qc_gelu4(float32x4_t f)
{
#if defined(QC_VM_NEON)
    return qc_vgelu(f);
#else
    float t[4];
    int j;
    vst1q_f32(t, f);
    for (j = 0; j < 4; ++j) {
        t[j] = qc_geluf(t[j]);
    }
    return vld1q_f32(t);
#endif
}

/* The epilogue of columns n..n+3 of row m, all four valid, from a register. */
QC_INLINE void qc_ep_vec4(const struct qc_ep_ctx *c, int32x4_t v, int m, int n)
{
    const struct qc_epilogue *ep = c->ep;
    const size_t at = (size_t)m * (size_t)c->ldo + (size_t)n;
    if (c->mode == QC_OUT_I32) {
        vst1q_s32((int32_t *)c->out + at, v);
    } else if (c->mode == QC_OUT_F32) {
        float32x4_t f;
        if (ep->bias) {
            v = vaddq_s32(v, vld1q_s32(ep->bias + n));
        }
        f = vmulq_f32(vcvtq_f32_s32(v),
                      ep->per_channel ? vld1q_f32(ep->scale + n) : vdupq_n_f32(ep->scale[0]));
        if (ep->fbias) {
            f = vaddq_f32(f, vld1q_f32(ep->fbias + n));
        }
        if (ep->act == QC_ACT_RELU) {
            f = vmaxnmq_f32(f, vdupq_n_f32(0.0f));
        } else if (ep->act == QC_ACT_CLIP) {
            f = vminnmq_f32(vmaxnmq_f32(f, vdupq_n_f32(ep->lo)), vdupq_n_f32(ep->hi));
        } else if (ep->act == QC_ACT_GELU) {
            f = qc_gelu4(f);
        }
        vst1q_f32((float *)c->out + at, f);
    } else {
        qc_store4_s8((int8_t *)c->out + at, qc_ep_q8_vec4(ep, v, n));
    }
}

/* Columns n..n+cols-1 (cols <= 4) of row m from a register: vector when all 4 are valid. */
QC_INLINE void qc_ep_part4(const struct qc_ep_ctx *c, int32x4_t v, int m, int n, int cols)
{
    if (cols >= 4) {
        qc_ep_vec4(c, v, m, n);
    } else if (cols > 0) {
        int32_t t[4];
        int j;
        vst1q_s32(t, v);
        for (j = 0; j < cols; ++j) {
            qc_ep_one(c, t[j], m, n + j);
        }
    }
}
#endif

#if defined(QC_VEC_NEON)
/* One output vector of the float32 epilogue: row r of the 4 columns at t / o. */
#define QC_EPF_ROW(r, STEP)                                                                \
    do {                                                                                  \
        float32x4_t f = vmulq_f32(vcvtq_f32_s32(vaddq_s32(vld1q_s32(t + (r) * ld), b)), s); \
        STEP;                                                                             \
        vst1q_f32(o + (size_t)(r) * ldo, f);                                              \
    } while (0)
/* Every 4-column group, rows unrolled when there are 4 (the register tile's height). */
#define QC_EPF_GROUPS(STEP)                                                               \
    for (j = 0; j < cols4; j += 4) {                                                      \
        const int32x4_t b = bias ? vld1q_s32(bias + j) : vdupq_n_s32(0);                  \
        const float32x4_t s = pc ? vld1q_f32(scale + j) : s0;                             \
        const float32x4_t fb = fbias ? vld1q_f32(fbias + j) : vdupq_n_f32(0.0f);          \
        const int32_t *t = tile + j;                                                      \
        float *o = out + j;                                                               \
        (void)fb;                                                                         \
        if (rows == 4) {                                                                  \
            QC_EPF_ROW(0, STEP); QC_EPF_ROW(1, STEP); QC_EPF_ROW(2, STEP); QC_EPF_ROW(3, STEP); \
        } else {                                                                          \
            for (r = 0; r < rows; ++r) {                                                  \
                QC_EPF_ROW(r, STEP);                                                      \
            }                                                                             \
        }                                                                                 \
    }

/* The float32 epilogue of rows x cols4 (a multiple of 4, all valid) of an int32 tile at (m, n):
   the epilogue's fields read once into locals (the stores could alias *ep as far as the
   compiler knows), one loop nest per (fbias, activation) so no test runs per vector and the
   GELU constants load only for GELU. x + 0.0f would turn -0.0f into +0.0f: no fbias, no add. */
QC_INLINE void qc_ep_f32_tile(const struct qc_ep_ctx *c, const int32_t *tile, int ld, int rows,
                              int cols4, int m, int n)
{
    const struct qc_epilogue *ep = c->ep;
    const int pc = ep->per_channel, act = ep->act;
    const int32_t *bias = ep->bias ? ep->bias + n : NULL;
    const float *scale = ep->scale + (pc ? n : 0);
    const float *fbias = ep->fbias ? ep->fbias + n : NULL;
    const float32x4_t s0 = vdupq_n_f32(scale[0]);
    const float32x4_t lo = vdupq_n_f32(act == QC_ACT_CLIP ? ep->lo : 0.0f);
    const float32x4_t hi = vdupq_n_f32(act == QC_ACT_CLIP ? ep->hi : INFINITY);
    const size_t ldo = (size_t)c->ldo;
    float *out = (float *)c->out + (size_t)m * ldo + (size_t)n;
    int j, r;
    if (fbias) {
        if (act == QC_ACT_NONE) {
            QC_EPF_GROUPS(f = vaddq_f32(f, fb))
        } else if (act == QC_ACT_GELU) {
            QC_EPF_GROUPS(f = qc_gelu4(vaddq_f32(f, fb)))
        } else {
            QC_EPF_GROUPS(f = vminnmq_f32(vmaxnmq_f32(vaddq_f32(f, fb), lo), hi))
        }
    } else if (act == QC_ACT_NONE) {
        QC_EPF_GROUPS((void)0)
    } else if (act == QC_ACT_GELU) {
        QC_EPF_GROUPS(f = qc_gelu4(f))
    } else {
        QC_EPF_GROUPS(f = vminnmq_f32(vmaxnmq_f32(f, lo), hi))
    }
}
#undef QC_EPF_GROUPS
#undef QC_EPF_ROW
#endif

#if defined(QC_VEC_NEON)
/* The epilogue of rows x 4 columns n..n+3 (all valid) of an int32 tile, column group outer:
   the per-column parameters are loaded once for all rows, into locals (the output stores
   could alias *ep as far as the compiler knows). */
QC_INLINE void qc_ep_group(const struct qc_ep_ctx *c, const int32_t *tile, int ld,
                            int rows, int m, int n)
{
    const struct qc_epilogue *ep = c->ep;
    const size_t ldo = (size_t)c->ldo;
    int r;
    if (c->mode == QC_OUT_I32) {
        int32_t *o = (int32_t *)c->out + (size_t)m * ldo + (size_t)n;
        for (r = 0; r < rows; ++r, o += ldo) {
            vst1q_s32(o, vld1q_s32(tile + r * ld));
        }
    } else if (c->mode == QC_OUT_F32) {
        qc_ep_f32_tile(c, tile, ld, rows, 4, m, n);
    } else {
        const int32x4_t b = ep->bias ? vld1q_s32(ep->bias + n) : vdupq_n_s32(0);
        const int32x4_t mu = ep->per_channel ? vld1q_s32(ep->mult + n) : vdupq_n_s32(ep->mult[0]);
        const int32x4_t sh = ep->per_channel ? vld1q_s32(ep->shift + n) : vdupq_n_s32(ep->shift[0]);
        const int32x4_t zp = vdupq_n_s32(ep->out_zp), lo = vdupq_n_s32(ep->qmin);
        const int32x4_t hi = vdupq_n_s32(ep->qmax);
        int8_t *o = (int8_t *)c->out + (size_t)m * ldo + (size_t)n;
        for (r = 0; r < rows; ++r, o += ldo) {
            int32x4_t v = qc_mbqm4(vaddq_s32(vld1q_s32(tile + r * ld), b), mu, sh);
            qc_store4_s8(o, vminq_s32(vmaxq_s32(vaddq_s32(v, zp), lo), hi));
        }
    }
}
#endif

/* The epilogue of the valid rows x cols part of an int32 tile (row stride ld) at (m, n). */
QC_INLINE void qc_ep_tile(const struct qc_ep_ctx *c, const int32_t *tile, int ld, int rows,
                           int cols, int m, int n)
{
    int r, j = 0;
#if defined(QC_VEC_NEON)
    if (c->mode == QC_OUT_F32) {
        j = cols & ~3;
        qc_ep_f32_tile(c, tile, ld, rows, j, m, n);
    }
    for (; j + 4 <= cols; j += 4) {
        qc_ep_group(c, tile + j, ld, rows, m, n + j);
    }
#elif defined(QC_VEC_MVE)
    if (c->mode == QC_OUT_Q8) {
        for (; j + 4 <= cols; j += 4) {
            for (r = 0; r < rows; ++r) {
                int8_t *dst = (int8_t *)c->out + (size_t)(m + r) * (size_t)c->ldo + (size_t)(n + j);
                qc_store4_s8(dst, qc_ep_q8_vec4(c->ep, vldrwq_s32(tile + r * ld + j), n + j));
            }
        }
    }
#endif
    for (r = 0; r < rows; ++r) {
        int jj;
        for (jj = j; jj < cols; ++jj) {
            qc_ep_one(c, tile[r * ld + jj], m + r, n + jj);
        }
    }
}

/* Row pointers for rows m .. m+3 of A (row stride lda); past M the last valid row repeats so
   loads stay in bounds. t[r] gets the K tail (K - full bytes) of row r, zero-padded to 16
   bytes. Returns the number of valid rows. */
static inline int qc_tile_rows(const int8_t *A, int lda, int M, int K, int m, int full,
                               const int8_t *a[4], int8_t t[4][16])
{
    const int rows = M - m < 4 ? M - m : 4;
    int r;
    for (r = 0; r < 4; ++r) {
        a[r] = A + (size_t)(m + (r < rows ? r : rows - 1)) * (size_t)lda;
        memset(t[r], 0, 16);
        if (K > full) {
            memcpy(t[r], a[r] + full, (size_t)(K - full));
        }
    }
    return rows;
}

#endif /* QC_GEMM_S8_TILE_H */
