/* Depthwise int8 convolution (group == channels, one filter per channel) of one NCHW image,
   a direct per-channel convolution with int32 accumulation and a requantizing (int8) or
   dequantizing (float32) epilogue. Contract in qc_kernels.h; docs/c-kernels.md.

   Per channel: the plane is copied once into `scratch` with the padding filled by the input
   zero point (so no border tests in the inner loops), then
     acc[oh][ow] = bias[c] + sum_{kh,kw} w[c][kh][kw] * xp[oh*sh + kh*dh][ow*sw + kw*dw]
   exactly in int32, then qc_requant_s8 (TFLite rounding) or (float)acc * scale[c] + fbias[c].
   Variants (bit-exact with the portable loops: integer sums are exact):
   - QC_KERNEL_DOTPROD / QC_KERNEL_I8MM (SDOT): for each kernel row and each group of 4 kernel
     columns, one TBL gathers the 4 taps of 4 neighbouring outputs from one 16-byte load into
     the 4 int32 lanes' byte quads, one SDOT adds them times the packed taps (zero past KW).
     Needs 3*sw + 3*dw <= 15; else the NEON path.
   - QC_KERNEL_NEON: 8 outputs at a time, SMULL by the broadcast tap into int16 (exact) and
     SADDW into int32.
   - otherwise (and for the last OW % 4 or % 8 outputs of a row) portable C. */
#include <string.h>
#include "qc_kernels.h"

#if defined(QC_KERNEL_NEON) || defined(QC_KERNEL_DOTPROD) || defined(QC_KERNEL_I8MM)
#include <arm_neon.h>
#endif
#if (defined(QC_KERNEL_DOTPROD) || defined(QC_KERNEL_I8MM)) && defined(__ARM_FEATURE_DOTPROD)
#define QC_DW_SDOT 1
#endif

/* The padded plane of channel c: rows [0, PH) x columns [0, PW) of the image shifted by
   (pad_top, pad_left), zero point outside; row stride QC_DW_STRIDE(PW). */
static void qc_dw_fill(int8_t *dst, size_t n, int8_t v)
{
#if defined(QC_KERNEL_NEON) || defined(QC_KERNEL_DOTPROD) || defined(QC_KERNEL_I8MM)
    const int8x16_t d = vdupq_n_s8(v);
    for (; n >= 16; n -= 16, dst += 16) {
        vst1q_s8(dst, d);
    }
#endif
    for (; n > 0; --n) {
        *dst++ = v;
    }
}

static void qc_dw_copy(int8_t *dst, const int8_t *src, size_t n)
{
#if defined(QC_KERNEL_NEON) || defined(QC_KERNEL_DOTPROD) || defined(QC_KERNEL_I8MM)
    for (; n >= 16; n -= 16, dst += 16, src += 16) {
        vst1q_s8(dst, vld1q_s8(src));
    }
#endif
    for (; n > 0; --n) {
        *dst++ = *src++;
    }
}

/* The padded plane of channel c: rows [0, PH) x columns [0, PW) of the image shifted by
   (pad_top, pad_left), zero point outside; row stride QC_DW_STRIDE(PW) (a multiple of 16).
   Padding rows are filled in 16-byte stores; image rows get the image row copied in and only
   their border columns below PW set (the bytes from PW to the stride are left as they are:
   every reader multiplies them by zero taps or does not read them). */
static void qc_dw_pad_plane(const int8_t *plane, int H, int W, int pad_top, int pad_left, int PH,
                            int PW, int8_t pad_value, int8_t *xp)
{
    const size_t ps = (size_t)QC_DW_STRIDE(PW);
    const int lo = pad_left < 0 ? 0 : (pad_left > (int)ps ? (int)ps : pad_left);
    const int src0 = lo - pad_left;    /* first image column copied */
    int n = W - src0, r, j;
#if defined(QC_KERNEL_NEON) || defined(QC_KERNEL_DOTPROD) || defined(QC_KERNEL_I8MM)
    const int8x16_t pv = vdupq_n_s8(pad_value);
#endif
    if (n > (int)ps - lo) {
        n = (int)ps - lo;
    }
    if (n < 0) {
        n = 0;
    }
    for (r = 0; r < PH; ++r) {
        int8_t *dst = xp + (size_t)r * ps;
        const int ih = r - pad_top;
        if (ih < 0 || ih >= H) {
            qc_dw_fill(dst, ps, pad_value);
            continue;
        }
#if defined(QC_KERNEL_NEON) || defined(QC_KERNEL_DOTPROD) || defined(QC_KERNEL_I8MM)
        /* 16-byte stores: the left ones may run into the copy (written after them) or the next
           row (written later; the scratch has 16 bytes past the last), the right ones stay
           below PW + 16 <= ps */
        for (j = 0; j < lo; j += 16) {
            vst1q_s8(dst + j, pv);
        }
        if (n > 0) {
            qc_dw_copy(dst + lo, plane + (size_t)ih * W + src0, (size_t)n);
        }
        for (j = lo + n; j < PW; j += 16) {
            vst1q_s8(dst + j, pv);
        }
#else
        for (j = 0; j < lo; ++j) {
            dst[j] = pad_value;
        }
        if (n > 0) {
            qc_dw_copy(dst + lo, plane + (size_t)ih * W + src0, (size_t)n);
        }
        for (j = lo + n; j < PW; ++j) {
            dst[j] = pad_value;
        }
#endif
    }
}

static void qc_dw_row_scalar(const int8_t *xp, size_t ps, const int8_t *w, int KH, int KW, int sw,
                             int dh, int dw, int ow0, int OW, int32_t b, int32_t *acc)
{
    int ow, kh, kw;
    for (ow = ow0; ow < OW; ++ow) {
        int32_t s = b;
        for (kh = 0; kh < KH; ++kh) {
            const int8_t *row = xp + (size_t)kh * dh * ps + (size_t)ow * sw;
            for (kw = 0; kw < KW; ++kw) {
                s += (int32_t)w[kh * KW + kw] * (int32_t)row[kw * dw];
            }
        }
        acc[ow] = s;
    }
}

#if defined(QC_DW_SDOT)
/* One output row (row pointer xp at the first input row of the window). wq: KH x nq int8x16,
   the taps kw = 4q .. 4q+3 of row kh repeated in the 4 lanes (zero past KW); idx[q]: the TBL
   indices, lane j byte t = j*sw + t*dw (+ 4q*dw folded into the load address). */
static int qc_dw_row_sdot(const int8_t *xp, size_t ps, const int8x16_t *wq, const uint8x16_t *idx,
                          int KH, int nq, int sw, int dh, int dw, int OW, int32_t b, int32_t *acc)
{
    int ow, kh, q;
    const int32x4_t b4 = vdupq_n_s32(b);
    for (ow = 0; ow + 4 <= OW; ow += 4) {
        int32x4_t s = b4;
        for (kh = 0; kh < KH; ++kh) {
            const int8_t *row = xp + (size_t)kh * dh * ps + (size_t)ow * sw;
            for (q = 0; q < nq; ++q) {
                const int8x16_t v = vld1q_s8(row + 4 * q * dw);
                s = vdotq_s32(s, vqtbl1q_s8(v, idx[q]), wq[kh * nq + q]);
            }
        }
        vst1q_s32(acc + ow, s);
    }
    return ow;
}
#elif defined(QC_KERNEL_NEON) || defined(QC_KERNEL_DOTPROD) || defined(QC_KERNEL_I8MM)
static int qc_dw_row_neon(const int8_t *xp, size_t ps, const int8_t *w, int KH, int KW, int sw,
                          int dh, int dw, int OW, int32_t b, int32_t *acc)
{
    int ow, kh, kw, j;
    for (ow = 0; ow + 8 <= OW; ow += 8) {
        int32x4_t lo = vdupq_n_s32(b), hi = lo;
        for (kh = 0; kh < KH; ++kh) {
            const int8_t *row = xp + (size_t)kh * dh * ps + (size_t)ow * sw;
            for (kw = 0; kw < KW; ++kw) {
                const int8_t *p = row + kw * dw;
                int8x8_t v;
                int16x8_t prod;
                if (sw == 1) {
                    v = vld1_s8(p);
                } else if (sw == 2) {
                    v = vld2_s8(p).val[0];
                } else {
                    int8_t t[8];
                    for (j = 0; j < 8; ++j) {
                        t[j] = p[j * sw];
                    }
                    v = vld1_s8(t);
                }
                prod = vmull_s8(v, vdup_n_s8(w[kh * KW + kw]));
                lo = vaddw_s16(lo, vget_low_s16(prod));
                hi = vaddw_high_s16(hi, prod);
            }
        }
        vst1q_s32(acc + ow, lo);
        vst1q_s32(acc + ow + 4, hi);
    }
    return ow;
}
#endif

/* int32 accumulators of channel c's output plane into acc (OH*OW). */
static void qc_dw_channel(int H, int W, int KH, int KW, int sh, int sw, int pad_top, int pad_left,
                          int dh, int dw, int OH, int OW, const int8_t *plane, int8_t pad_value,
                          const int8_t *w, int32_t b, int8_t *xp, int32_t *acc)
{
    const int PH = (OH - 1) * sh + (KH - 1) * dh + 1;
    const int PW = (OW - 1) * sw + (KW - 1) * dw + 1;
    const size_t ps = (size_t)QC_DW_STRIDE(PW);
    int oh;
#if defined(QC_DW_SDOT)
    const int nq = (KW + 3) / 4;
    const int sdot = 3 * sw + 3 * dw <= 15 && nq <= 4 && KH <= 16;
    int8x16_t wq[64];
    uint8x16_t idx[4];
    if (sdot) {
        int kh, q, j, t;
        for (q = 0; q < nq; ++q) {
            uint8_t ix[16];
            for (j = 0; j < 4; ++j) {
                for (t = 0; t < 4; ++t) {
                    ix[4 * j + t] = (uint8_t)(j * sw + t * dw);
                }
            }
            idx[q] = vld1q_u8(ix);
            for (kh = 0; kh < KH; ++kh) {
                int8_t tw[16];
                for (j = 0; j < 4; ++j) {
                    for (t = 0; t < 4; ++t) {
                        const int kw = 4 * q + t;
                        tw[4 * j + t] = kw < KW ? w[kh * KW + kw] : 0;
                    }
                }
                wq[kh * nq + q] = vld1q_s8(tw);
            }
        }
    }
#endif
    qc_dw_pad_plane(plane, H, W, pad_top, pad_left, PH, PW, pad_value, xp);
    for (oh = 0; oh < OH; ++oh) {
        const int8_t *row = xp + (size_t)oh * sh * ps;
        int32_t *a = acc + (size_t)oh * OW;
        int ow0 = 0;
#if defined(QC_DW_SDOT)
        if (sdot) {
            ow0 = qc_dw_row_sdot(row, ps, wq, idx, KH, nq, sw, dh, dw, OW, b, a);
        } else {
            ow0 = 0;
        }
#elif defined(QC_KERNEL_NEON) || defined(QC_KERNEL_DOTPROD) || defined(QC_KERNEL_I8MM)
        ow0 = qc_dw_row_neon(row, ps, w, KH, KW, sw, dh, dw, OW, b, a);
#endif
        qc_dw_row_scalar(row, ps, w, KH, KW, sw, dh, dw, ow0, OW, b, a);
    }
}

#if defined(QC_DW_SDOT)
/* 3 x 3, dilation 1, stride 1 or 2, requantized in registers: per output row, 8 (then 4)
   outputs take per kernel row one 16-byte load, one TBL and one SDOT per 4 outputs (the three
   taps' rows held in registers), then the vector requantization of qc_requant_s8 (bit-exact:
   the same SQRDMULH / fix-up / SRSHL steps, shift split into its left and right parts once per
   channel) and one 8- (4-) byte store; the last OW % 4 outputs are scalar. */
static inline int32x4_t qc_dw_mbqm4(int32x4_t x, int32x4_t mult, int32x4_t left, int32x4_t right)
{
    x = vqrdmulhq_s32(vshlq_s32(x, left), mult);
    return vrshlq_s32(vqaddq_s32(x, vshrq_n_s32(vandq_s32(x, right), 31)), right);
}

/* 8 accumulators of one channel to int8. A right shift (shift < 0) takes the short form:
   SQRDMULH, the fix-up as one SSRA (a + (a >> 31) equals qc_requant_s8's saturating
   a + ((a & shift) >> 31): a > INT32_MIN after SQRDMULH), SRSHL; then |a| < 2^30, so the
   saturating narrows with the zero point added in int16 clamp exactly as the int32 clamp would.
   Otherwise the steps of qc_requant_s8's vector path. */
static inline int8x8_t qc_dw_rq8(int32x4_t s0, int32x4_t s1, int neg, int32x4_t m4, int32x4_t left,
                                 int32x4_t right, int32x4_t zp, int32x4_t lo, int32x4_t hi)
{
    if (neg) {
        int16x8_t h;
        s0 = vqrdmulhq_s32(s0, m4);
        s1 = vqrdmulhq_s32(s1, m4);
        s0 = vrshlq_s32(vsraq_n_s32(s0, s0, 31), right);
        s1 = vrshlq_s32(vsraq_n_s32(s1, s1, 31), right);
        h = vqaddq_s16(vcombine_s16(vqmovn_s32(s0), vqmovn_s32(s1)), vdupq_n_s16((int16_t)vgetq_lane_s32(zp, 0)));
        return vmin_s8(vmax_s8(vqmovn_s16(h), vdup_n_s8((int8_t)vgetq_lane_s32(lo, 0))),
                       vdup_n_s8((int8_t)vgetq_lane_s32(hi, 0)));
    }
    s0 = vminq_s32(vmaxq_s32(vaddq_s32(qc_dw_mbqm4(s0, m4, left, right), zp), lo), hi);
    s1 = vminq_s32(vmaxq_s32(vaddq_s32(qc_dw_mbqm4(s1, m4, left, right), zp), lo), hi);
    return vmovn_s16(vcombine_s16(vmovn_s32(s0), vmovn_s32(s1)));
}

static void qc_dw3x3_channel_q8(int H, int W, int sw, int pad_top, int pad_left, int OH, int OW,
                                const int8_t *plane, int8_t pad_value, const int8_t *w, int32_t b,
                                int32_t mult, int32_t shift, int32_t out_zp, int32_t qmin, int32_t qmax,
                                uint8x16_t idx, int8_t *xp, int8_t *y)
{
    const int PH = (OH - 1) * sw + 3, PW = (OW - 1) * sw + 3;
    const size_t ps = (size_t)QC_DW_STRIDE(PW);
    const int32x4_t b4 = vdupq_n_s32(b), m4 = vdupq_n_s32(mult), zp = vdupq_n_s32(out_zp);
    const int32x4_t left = vdupq_n_s32(shift > 0 ? shift : 0), right = vdupq_n_s32(shift > 0 ? 0 : shift);
    const int32x4_t lo = vdupq_n_s32(qmin), hi = vdupq_n_s32(qmax);
    const int neg = shift < 0;
#define QC_DW_TAPS(j) vreinterpretq_s8_u32(vdupq_n_u32((uint32_t)(uint8_t)w[3 * (j)]                  \
                                                      | (uint32_t)(uint8_t)w[3 * (j) + 1] << 8          \
                                                      | (uint32_t)(uint8_t)w[3 * (j) + 2] << 16))
    const int8x16_t wk0 = QC_DW_TAPS(0), wk1 = QC_DW_TAPS(1), wk2 = QC_DW_TAPS(2);
#undef QC_DW_TAPS
    int oh;
    qc_dw_pad_plane(plane, H, W, pad_top, pad_left, PH, PW, pad_value, xp);
    for (oh = 0; oh < OH; ++oh) {
        const int8_t *r0 = xp + (size_t)oh * sw * ps, *r1 = r0 + ps, *r2 = r1 + ps;
        int8_t *dst = y + (size_t)oh * OW;
        int ow = 0;
        for (; ow + 8 <= OW; ow += 8) {
            const size_t a = (size_t)ow * sw, c = a + 4u * (size_t)sw;
            int32x4_t s0 = vdotq_s32(b4, vqtbl1q_s8(vld1q_s8(r0 + a), idx), wk0);
            int32x4_t s1 = vdotq_s32(b4, vqtbl1q_s8(vld1q_s8(r0 + c), idx), wk0);
            s0 = vdotq_s32(s0, vqtbl1q_s8(vld1q_s8(r1 + a), idx), wk1);
            s1 = vdotq_s32(s1, vqtbl1q_s8(vld1q_s8(r1 + c), idx), wk1);
            s0 = vdotq_s32(s0, vqtbl1q_s8(vld1q_s8(r2 + a), idx), wk2);
            s1 = vdotq_s32(s1, vqtbl1q_s8(vld1q_s8(r2 + c), idx), wk2);
            vst1_s8(dst + ow, qc_dw_rq8(s0, s1, neg, m4, left, right, zp, lo, hi));
        }
        for (; ow + 4 <= OW; ow += 4) {
            const size_t a = (size_t)ow * sw;
            int32x4_t s0 = vdotq_s32(b4, vqtbl1q_s8(vld1q_s8(r0 + a), idx), wk0);
            int8_t tmp[8];
            s0 = vdotq_s32(s0, vqtbl1q_s8(vld1q_s8(r1 + a), idx), wk1);
            s0 = vdotq_s32(s0, vqtbl1q_s8(vld1q_s8(r2 + a), idx), wk2);
            vst1_s8(tmp, qc_dw_rq8(s0, s0, neg, m4, left, right, zp, lo, hi));
            memcpy(dst + ow, tmp, 4);
        }
        if (ow < OW) {
            int32_t acc[4];
            qc_dw_row_scalar(r0 + (size_t)ow * sw, ps, w, 3, 3, sw, 1, 1, 0, OW - ow, b, acc);
            qc_requant_s8(1, OW - ow, acc, NULL, &mult, &shift, 0, out_zp, qmin, qmax, dst + ow);
        }
    }
}
#endif

size_t qc_conv_dw_s8_scratch(int KH, int KW, int stride_h, int stride_w, int dil_h, int dil_w, int OH,
                             int OW)
{
    const int PH = (OH - 1) * stride_h + (KH - 1) * dil_h + 1;
    const int PW = (OW - 1) * stride_w + (KW - 1) * dil_w + 1;
    return (size_t)PH * (size_t)QC_DW_STRIDE(PW) + (size_t)OH * OW * sizeof(int32_t) + 16u;
}

/* scratch: the padded plane, then (16-byte aligned) the int32 accumulators of one plane */
static int32_t *qc_dw_acc_area(int8_t *scratch, int KH, int KW, int sh, int sw, int dh, int dw, int OH, int OW)
{
    const int PH = (OH - 1) * sh + (KH - 1) * dh + 1;
    const int PW = (OW - 1) * sw + (KW - 1) * dw + 1;
    size_t off = (size_t)PH * (size_t)QC_DW_STRIDE(PW);
    off = (off + 15u) & ~(size_t)15u;
    return (int32_t *)(void *)(scratch + off);
}

void qc_conv_dw_s8_q8(int C, int H, int W, int KH, int KW, int stride_h, int stride_w, int pad_top,
                      int pad_left, int dil_h, int dil_w, int OH, int OW, const int8_t *x,
                      int8_t pad_value, const int8_t *w, const int32_t *bias, const int32_t *mult,
                      const int32_t *shift, int32_t out_zp, int32_t qmin, int32_t qmax,
                      int8_t *scratch, int8_t *y)
{
    int32_t *acc = qc_dw_acc_area(scratch, KH, KW, stride_h, stride_w, dil_h, dil_w, OH, OW);
    const size_t plane = (size_t)H * W, oplane = (size_t)OH * OW;
    int c;
#if defined(QC_DW_SDOT)
    if (KH == 3 && KW == 3 && dil_h == 1 && dil_w == 1 && stride_h == stride_w && stride_w <= 2) {
        /* TBL indices: lane j's 4 bytes are the taps j*sw + t, t = 0..3 (t = 3 times a zero weight) */
        static const uint8_t ix[2][16] = {{0, 1, 2, 3, 1, 2, 3, 4, 2, 3, 4, 5, 3, 4, 5, 6},
                                          {0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7, 8, 9}};
        const uint8x16_t idx = vld1q_u8(ix[stride_w - 1]);
        for (c = 0; c < C; ++c) {
            qc_dw3x3_channel_q8(H, W, stride_w, pad_top, pad_left, OH, OW, x + c * plane, pad_value,
                                w + (size_t)c * 9, bias ? bias[c] : 0, mult[c], shift[c], out_zp, qmin, qmax,
                                idx, scratch, y + c * oplane);
        }
        return;
    }
#endif
    for (c = 0; c < C; ++c) {
        qc_dw_channel(H, W, KH, KW, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, OH, OW,
                      x + c * plane, pad_value, w + (size_t)c * KH * KW, bias ? bias[c] : 0, scratch, acc);
        qc_requant_s8(1, (int)oplane, acc, NULL, mult + c, shift + c, 0, out_zp, qmin, qmax,
                      y + c * oplane);
    }
}

void qc_conv_dw_s8_f32(int C, int H, int W, int KH, int KW, int stride_h, int stride_w, int pad_top,
                       int pad_left, int dil_h, int dil_w, int OH, int OW, const int8_t *x,
                       int8_t pad_value, const int8_t *w, const int32_t *bias, const float *scale,
                       int per_channel, const float *fbias, int8_t *scratch, float *y)
{
    int32_t *acc = qc_dw_acc_area(scratch, KH, KW, stride_h, stride_w, dil_h, dil_w, OH, OW);
    const size_t plane = (size_t)H * W, oplane = (size_t)OH * OW;
    size_t i;
    int c;
    for (c = 0; c < C; ++c) {
        const float s = scale[per_channel ? c : 0];
        const float fb = fbias ? fbias[c] : 0.0f;
        float *dst = y + c * oplane;
        qc_dw_channel(H, W, KH, KW, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, OH, OW,
                      x + c * plane, pad_value, w + (size_t)c * KH * KW, bias ? bias[c] : 0, scratch, acc);
        for (i = 0; i < oplane; ++i) {
            float v = (float)acc[i] * s;
            if (fbias) {
                v += fb;
            }
            dst[i] = v;
        }
    }
}

/* Small planes (a few pixels, many channels): the per-channel loops above pay their setup per
   channel for a handful of outputs. qc_conv_dw3x3_s8_q8_nhwc vectorizes across 16 channels
   instead: the image is transposed into a zero-point padded pixels x channels scratch, each
   output pixel takes per tap one 16-channel load, SMULL / SMULL2 by the tap's 16 weights and
   SADDW / SADDW2 into 4 int32 accumulators, then the vector requantization (no left shift:
   the caller guarantees shift <= 0), and the pixels x channels result is transposed back. */
#if defined(QC_KERNEL_NEON) || defined(QC_KERNEL_DOTPROD) || defined(QC_KERNEL_I8MM)
/* 4 channels' accumulators requantized with their own multipliers and right shifts (shift <= 0),
   the steps of qc_requant_s8's vector path; the parameters are reloaded (L1) to spare registers. */
static inline int32x4_t qc_dw_rq4(int32x4_t a, const int32_t *mult, const int32_t *shift, int32x4_t zp,
                                  int32x4_t lo, int32x4_t hi)
{
    const int32x4_t s = vld1q_s32(shift);
    a = vqrdmulhq_s32(a, vld1q_s32(mult));
    a = vrshlq_s32(vqaddq_s32(a, vshrq_n_s32(vandq_s32(a, s), 31)), s);
    return vminq_s32(vmaxq_s32(vaddq_s32(a, zp), lo), hi);
}

/* The same for shifts all < 0, the fix-up as one SSRA (see qc_dw_rq8), zero point and clamp left
   to the caller's saturating narrows. */
static inline int32x4_t qc_dw_rq4_right(int32x4_t a, const int32_t *mult, const int32_t *shift)
{
    a = vqrdmulhq_s32(a, vld1q_s32(mult));
    return vrshlq_s32(vsraq_n_s32(a, a, 31), vld1q_s32(shift));
}
#endif

size_t qc_conv_dw3x3_s8_nhwc_scratch(int C, int H, int W, int stride, int pad_top, int pad_left, int OH, int OW)
{
    const size_t cp = ((size_t)C + 15u) & ~(size_t)15u;
    const int PH = (OH - 1) * stride + 3, PW = (OW - 1) * stride + 3;
    (void)H; (void)W; (void)pad_top; (void)pad_left;
    return ((size_t)PH * PW + (size_t)OH * OW + 9u) * cp + 64u;
}

void qc_conv_dw3x3_s8_q8_nhwc(int C, int H, int W, int stride, int pad_top, int pad_left, int OH, int OW,
                              const int8_t *x, int8_t pad_value, const int8_t *w, const int32_t *bias,
                              const int32_t *mult, const int32_t *shift, int32_t out_zp, int32_t qmin,
                              int32_t qmax, int8_t *scratch, int8_t *y)
{
#if defined(QC_KERNEL_NEON) || defined(QC_KERNEL_DOTPROD) || defined(QC_KERNEL_I8MM)
    const int PH = (OH - 1) * stride + 3, PW = (OW - 1) * stride + 3;
    const size_t cp = ((size_t)C + 15u) & ~(size_t)15u;
    int8_t *xp = scratch, *yt = xp + (size_t)PH * PW * cp, *wt = yt + (size_t)OH * OW * cp;
    const int32x4_t zp = vdupq_n_s32(out_zp), lo = vdupq_n_s32(qmin), hi = vdupq_n_s32(qmax);
    const int16x8_t zp16 = vdupq_n_s16((int16_t)out_zp);
    const int8x16_t lo8 = vdupq_n_s8((int8_t)qmin), hi8 = vdupq_n_s8((int8_t)qmax);
    int ih, c0, oh, ow, neg = 1;
    for (c0 = 0; c0 < C; ++c0) {
        neg &= shift[c0] < 0;
    }
    if ((C & 15) == 0) {
        qc_dw_fill(xp, (size_t)PH * PW * cp, pad_value);
        for (ih = 0; ih < H; ++ih) {
            const int r = ih + pad_top;
            int iw0 = 0, n = W;
            if (r < 0 || r >= PH) {
                continue;
            }
            if (pad_left < 0) {
                iw0 = -pad_left;
            }
            if (n > PW - pad_left) {
                n = PW - pad_left;
            }
            if (n > iw0) {
                qc_transpose_s8(C, n - iw0, x + (size_t)ih * W + iw0, H * W,
                                xp + ((size_t)r * PW + (size_t)(iw0 + pad_left)) * cp, (int)cp);
            }
        }
        qc_transpose_s8(C, 9, w, 9, wt, (int)cp);
        for (c0 = 0; c0 < C; c0 += 16) {
            const int8_t *wc = wt + c0;
            const int8x16_t w0 = vld1q_s8(wc), w1 = vld1q_s8(wc + cp), w2 = vld1q_s8(wc + 2 * cp);
            const int8x16_t w3 = vld1q_s8(wc + 3 * cp), w4 = vld1q_s8(wc + 4 * cp), w5 = vld1q_s8(wc + 5 * cp);
            const int8x16_t w6 = vld1q_s8(wc + 6 * cp), w7 = vld1q_s8(wc + 7 * cp), w8 = vld1q_s8(wc + 8 * cp);
            const int32x4_t b0 = vld1q_s32(bias + c0), b1 = vld1q_s32(bias + c0 + 4);
            const int32x4_t b2 = vld1q_s32(bias + c0 + 8), b3 = vld1q_s32(bias + c0 + 12);
            const size_t rs = (size_t)PW * cp;   /* one padded row */
            for (oh = 0; oh < OH; ++oh) {
                for (ow = 0; ow < OW; ++ow) {
                    const int8_t *r0 = xp + ((size_t)oh * stride * PW + (size_t)ow * stride) * cp + c0;
                    const int8_t *r1 = r0 + rs, *r2 = r1 + rs;
                    int32x4_t a0 = b0, a1 = b1, a2 = b2, a3 = b3;
                    int16x8_t h0, h1;
#define QC_DW_TAP(p, wk)                                                    \
    do {                                                                    \
        const int8x16_t v_ = vld1q_s8(p);                                   \
        const int16x8_t pl_ = vmull_s8(vget_low_s8(v_), vget_low_s8(wk));   \
        const int16x8_t ph_ = vmull_high_s8(v_, wk);                        \
        a0 = vaddw_s16(a0, vget_low_s16(pl_));                              \
        a1 = vaddw_high_s16(a1, pl_);                                       \
        a2 = vaddw_s16(a2, vget_low_s16(ph_));                              \
        a3 = vaddw_high_s16(a3, ph_);                                       \
    } while (0)
                    QC_DW_TAP(r0, w0); QC_DW_TAP(r0 + cp, w1); QC_DW_TAP(r0 + 2 * cp, w2);
                    QC_DW_TAP(r1, w3); QC_DW_TAP(r1 + cp, w4); QC_DW_TAP(r1 + 2 * cp, w5);
                    QC_DW_TAP(r2, w6); QC_DW_TAP(r2 + cp, w7); QC_DW_TAP(r2 + 2 * cp, w8);
#undef QC_DW_TAP
                    if (neg) {
                        h0 = vqaddq_s16(vcombine_s16(vqmovn_s32(qc_dw_rq4_right(a0, mult + c0, shift + c0)),
                                                     vqmovn_s32(qc_dw_rq4_right(a1, mult + c0 + 4, shift + c0 + 4))),
                                        zp16);
                        h1 = vqaddq_s16(vcombine_s16(vqmovn_s32(qc_dw_rq4_right(a2, mult + c0 + 8, shift + c0 + 8)),
                                                     vqmovn_s32(qc_dw_rq4_right(a3, mult + c0 + 12, shift + c0 + 12))),
                                        zp16);
                        vst1q_s8(yt + ((size_t)oh * OW + ow) * cp + c0,
                                 vminq_s8(vmaxq_s8(vcombine_s8(vqmovn_s16(h0), vqmovn_s16(h1)), lo8), hi8));
                        continue;
                    }
                    h0 = vcombine_s16(vmovn_s32(qc_dw_rq4(a0, mult + c0, shift + c0, zp, lo, hi)),
                                      vmovn_s32(qc_dw_rq4(a1, mult + c0 + 4, shift + c0 + 4, zp, lo, hi)));
                    h1 = vcombine_s16(vmovn_s32(qc_dw_rq4(a2, mult + c0 + 8, shift + c0 + 8, zp, lo, hi)),
                                      vmovn_s32(qc_dw_rq4(a3, mult + c0 + 12, shift + c0 + 12, zp, lo, hi)));
                    vst1q_s8(yt + ((size_t)oh * OW + ow) * cp + c0, vcombine_s8(vmovn_s16(h0), vmovn_s16(h1)));
                }
            }
        }
        qc_transpose_s8(OH * OW, C, yt, (int)cp, y, OH * OW);
        return;
    }
#endif
    qc_conv_dw_s8_q8(C, H, W, 3, 3, stride, stride, pad_top, pad_left, 1, 1, OH, OW, x, pad_value, w, bias,
                     mult, shift, out_zp, qmin, qmax, scratch, y);
}

/* The K x P "rows" form of im2col for a direct pointwise kernel: row (c - c0)*KH*KW + kh*KW + kw
   holds, for every output pixel p = oh*OW + ow, x[c][oh*sh - pt + kh*dh][ow*sw - pl + kw*dw]
   (pad_value outside). Per channel the plane is padded once into pad (qc_conv_s8_pad_bytes),
   then each row is a copy (stride 1) or an even-lane de-interleave (stride 2, LD2). */
size_t qc_im2row_s8_pad_bytes(int KH, int KW, int stride_h, int stride_w, int dil_h, int dil_w, int OH, int OW)
{
    const int PH = (OH - 1) * stride_h + (KH - 1) * dil_h + 1;
    const int PW = (OW - 1) * stride_w + (KW - 1) * dil_w + 1;
    return (size_t)PH * (size_t)QC_DW_STRIDE(PW) + 32u;
}

void qc_im2row_s8(int C, int H, int W, int KH, int KW, int stride_h, int stride_w, int pad_top,
                  int pad_left, int dil_h, int dil_w, int OH, int OW, int c0, int cg,
                  const int8_t *x, int8_t pad_value, int8_t *pad, int8_t *rows)
{
    const int PH = (OH - 1) * stride_h + (KH - 1) * dil_h + 1;
    const int PW = (OW - 1) * stride_w + (KW - 1) * dil_w + 1;
    const size_t ps = (size_t)QC_DW_STRIDE(PW), P = (size_t)OH * OW;
    int c, kh, kw, oh, ow;
    (void)C;
    for (c = 0; c < cg; ++c) {
        qc_dw_pad_plane(x + (size_t)(c0 + c) * H * W, H, W, pad_top, pad_left, PH, PW, pad_value, pad);
        for (kh = 0; kh < KH; ++kh) {
            for (kw = 0; kw < KW; ++kw) {
                int8_t *dst = rows + ((size_t)(c * KH + kh) * KW + kw) * P;
                for (oh = 0; oh < OH; ++oh, dst += OW) {
                    const int8_t *src = pad + (size_t)(oh * stride_h + kh * dil_h) * ps + (size_t)kw * dil_w;
                    ow = 0;
                    if (stride_w == 1) {
                        qc_dw_copy(dst, src, (size_t)OW);
                        continue;
                    }
#if defined(QC_KERNEL_NEON) || defined(QC_KERNEL_DOTPROD) || defined(QC_KERNEL_I8MM)
                    if (stride_w == 2) {
                        for (; ow + 16 <= OW; ow += 16) {
                            vst1q_s8(dst + ow, vld2q_s8(src + 2 * ow).val[0]);
                        }
                    }
#endif
                    for (; ow < OW; ++ow) {
                        dst[ow] = src[(size_t)ow * stride_w];
                    }
                }
            }
        }
    }
}

/* 8 x 8 int8 block transpose: TRN1/TRN2 on bytes, halfwords, words (24 instructions for 64 bytes). */
#if defined(QC_KERNEL_NEON) || defined(QC_KERNEL_DOTPROD) || defined(QC_KERNEL_I8MM)
static void qc_transpose8x8_s8(const int8_t *x, int ldx, int8_t *y, int ldy)
{
    int8x8x2_t t0 = vtrn_s8(vld1_s8(x), vld1_s8(x + ldx));
    int8x8x2_t t1 = vtrn_s8(vld1_s8(x + 2 * ldx), vld1_s8(x + 3 * ldx));
    int8x8x2_t t2 = vtrn_s8(vld1_s8(x + 4 * ldx), vld1_s8(x + 5 * ldx));
    int8x8x2_t t3 = vtrn_s8(vld1_s8(x + 6 * ldx), vld1_s8(x + 7 * ldx));
    int16x4x2_t u0 = vtrn_s16(vreinterpret_s16_s8(t0.val[0]), vreinterpret_s16_s8(t1.val[0]));
    int16x4x2_t u1 = vtrn_s16(vreinterpret_s16_s8(t0.val[1]), vreinterpret_s16_s8(t1.val[1]));
    int16x4x2_t u2 = vtrn_s16(vreinterpret_s16_s8(t2.val[0]), vreinterpret_s16_s8(t3.val[0]));
    int16x4x2_t u3 = vtrn_s16(vreinterpret_s16_s8(t2.val[1]), vreinterpret_s16_s8(t3.val[1]));
    int32x2x2_t v0 = vtrn_s32(vreinterpret_s32_s16(u0.val[0]), vreinterpret_s32_s16(u2.val[0]));
    int32x2x2_t v1 = vtrn_s32(vreinterpret_s32_s16(u1.val[0]), vreinterpret_s32_s16(u3.val[0]));
    int32x2x2_t v2 = vtrn_s32(vreinterpret_s32_s16(u0.val[1]), vreinterpret_s32_s16(u2.val[1]));
    int32x2x2_t v3 = vtrn_s32(vreinterpret_s32_s16(u1.val[1]), vreinterpret_s32_s16(u3.val[1]));
    vst1_s8(y, vreinterpret_s8_s32(v0.val[0]));
    vst1_s8(y + ldy, vreinterpret_s8_s32(v1.val[0]));
    vst1_s8(y + 2 * ldy, vreinterpret_s8_s32(v2.val[0]));
    vst1_s8(y + 3 * ldy, vreinterpret_s8_s32(v3.val[0]));
    vst1_s8(y + 4 * ldy, vreinterpret_s8_s32(v0.val[1]));
    vst1_s8(y + 5 * ldy, vreinterpret_s8_s32(v1.val[1]));
    vst1_s8(y + 6 * ldy, vreinterpret_s8_s32(v2.val[1]));
    vst1_s8(y + 7 * ldy, vreinterpret_s8_s32(v3.val[1]));
}
#endif

void qc_transpose_s8(int R, int Cn, const int8_t *x, int ldx, int8_t *y, int ldy)
{
    int i0, j0, i, j;
    for (i0 = 0; i0 < R; i0 += 8) {
        for (j0 = 0; j0 < Cn; j0 += 8) {
            const int ri = R - i0 < 8 ? R - i0 : 8, cj = Cn - j0 < 8 ? Cn - j0 : 8;
#if defined(QC_KERNEL_NEON) || defined(QC_KERNEL_DOTPROD) || defined(QC_KERNEL_I8MM)
            if (ri == 8 && cj == 8) {
                qc_transpose8x8_s8(x + (size_t)i0 * ldx + j0, ldx, y + (size_t)j0 * ldy + i0, ldy);
                continue;
            }
#endif
            for (j = 0; j < cj; ++j) {
                for (i = 0; i < ri; ++i) {
                    y[(size_t)(j0 + j) * ldy + i0 + i] = x[(size_t)(i0 + i) * ldx + j0 + j];
                }
            }
        }
    }
}
