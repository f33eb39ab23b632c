/* qc C backend: float32 linear algebra, convolution, pooling, normalization and reductions. */
#include "qc_ops.h"
#include "qc_vmath.h"

#include <float.h>
#include <math.h>
#include <string.h>

void qc_gemm_f32(int M, int N, int K, const float *A, int ars, int acs, const float *B, int brs,
                 int bcs, float alpha, const float *C, int crs, int ccs, float beta, float *Y)
{
    int m = 0, n, k;
    if (bcs == 1) { /* four rows of Y at a time share each row of B */
        for (; m + 4 <= M; m += 4) {
            float *restrict y0 = Y + (size_t)m * (size_t)N, *restrict y1 = y0 + N, *restrict y2 = y1 + N,
                  *restrict y3 = y2 + N;
            const float *a = A + (ptrdiff_t)m * ars;
            for (n = 0; n < N; ++n) y0[n] = y1[n] = y2[n] = y3[n] = 0.0f;
            for (k = 0; k < K; ++k) {
                const float a0 = a[(ptrdiff_t)k * acs], a1 = a[ars + (ptrdiff_t)k * acs],
                            a2 = a[2 * (ptrdiff_t)ars + (ptrdiff_t)k * acs], a3 = a[3 * (ptrdiff_t)ars + (ptrdiff_t)k * acs];
                const float *restrict b = B + (ptrdiff_t)k * brs;
                for (n = 0; n < N; ++n) {
                    const float bv = b[n];
                    y0[n] += a0 * bv;
                    y1[n] += a1 * bv;
                    y2[n] += a2 * bv;
                    y3[n] += a3 * bv;
                }
            }
        }
    }
    for (; m < M; ++m) {
        float *y = Y + (size_t)m * (size_t)N;
        const float *a = A + (ptrdiff_t)m * ars;
        if (bcs == 1) { /* rows of B are contiguous: accumulate whole rows of Y */
            for (n = 0; n < N; ++n) y[n] = 0.0f;
            for (k = 0; k < K; ++k) {
                const float av = a[(ptrdiff_t)k * acs];
                const float *b = B + (ptrdiff_t)k * brs;
                for (n = 0; n < N; ++n) y[n] += av * b[n];
            }
        } else {
            for (n = 0; n < N; ++n) {
                const float *b = B + (ptrdiff_t)n * bcs;
                float acc = 0.0f;
                for (k = 0; k < K; ++k) acc += a[(ptrdiff_t)k * acs] * b[(ptrdiff_t)k * brs];
                y[n] = acc;
            }
        }
    }
    if (alpha == 1.0f && C == NULL) return;
    for (m = 0; m < M; ++m) {
        float *y = Y + (size_t)m * (size_t)N;
        for (n = 0; n < N; ++n) {
            float v = alpha == 1.0f ? y[n] : alpha * y[n];
            if (C != NULL) v += beta * C[(ptrdiff_t)m * crs + (ptrdiff_t)n * ccs];
            y[n] = v;
        }
    }
}

void qc_matmul_f32(int batch, const int *aoff, const int *boff, int M, int N, int K,
                   const float *A, const float *B, float *Y)
{
    int b;
    for (b = 0; b < batch; ++b)
        qc_gemm_f32(M, N, K, A + aoff[b], K, 1, B + boff[b], N, 1, 1.0f, NULL, 0, 0, 0.0f,
                    Y + (size_t)b * (size_t)M * (size_t)N);
}

/* first and last output index o with 0 <= o * s + off < len; returns 0 when there is none */
static int qc_span(int outlen, int s, int off, int len, int *lo, int *hi)
{
    int a = 0, b;
    if (off < 0) a = (-off + s - 1) / s;
    if (len - 1 - off < 0) return 0;
    b = (len - 1 - off) / s;
    if (b > outlen - 1) b = outlen - 1;
    *lo = a;
    *hi = b;
    return a <= b;
}

void qc_conv2d_f32(int N, int C, int H, int W, int OC, int OH, int OW, int KH, int KW, int group,
                   const int *p, const float *x, const float *w, const float *bias, float *y)
{
    const int sh = p[0], sw = p[1], pt = p[2], pl = p[3], dh = p[4], dw = p[5];
    const int icg = C / group, ocg = OC / group;
    int n, oc, ic, kh, kw, oh, ow;
    for (n = 0; n < N; ++n) {
        for (oc = 0; oc < OC; ++oc) {
            float *yp = y + ((size_t)n * (size_t)OC + (size_t)oc) * (size_t)OH * (size_t)OW;
            const int g = oc / ocg;
            const float b0 = bias ? bias[oc] : 0.0f;
            for (oh = 0; oh < OH * OW; ++oh) yp[oh] = b0;
            for (ic = 0; ic < icg; ++ic) {
                const float *xp = x + ((size_t)n * (size_t)C + (size_t)(g * icg + ic)) * (size_t)H * (size_t)W;
                for (kh = 0; kh < KH; ++kh) {
                    int oh_lo, oh_hi;
                    if (!qc_span(OH, sh, kh * dh - pt, H, &oh_lo, &oh_hi)) continue;
                    for (kw = 0; kw < KW; ++kw) {
                        const float wv = w[(((size_t)oc * (size_t)icg + (size_t)ic) * (size_t)KH + (size_t)kh) * (size_t)KW + (size_t)kw];
                        int ow_lo, ow_hi;
                        if (!qc_span(OW, sw, kw * dw - pl, W, &ow_lo, &ow_hi)) continue;
                        for (oh = oh_lo; oh <= oh_hi; ++oh) {
                            const float *xr = xp + (size_t)(oh * sh + kh * dh - pt) * (size_t)W + (kw * dw - pl);
                            float *yr = yp + (size_t)oh * (size_t)OW;
                            if (sw == 1) {
                                for (ow = ow_lo; ow <= ow_hi; ++ow) yr[ow] += wv * xr[ow];
                            } else {
                                for (ow = ow_lo; ow <= ow_hi; ++ow) yr[ow] += wv * xr[ow * sw];
                            }
                        }
                    }
                }
            }
        }
    }
}

/* One pooling output (any position: the window's taps are bounds-checked): the reference the
 * interior fast paths below follow tap for tap. */
static float qc_maxpool_one(int H, int W, const int *p, const float *xp, int oh, int ow)
{
    const int kh = p[0], kw = p[1], sh = p[2], sw = p[3], pt = p[4], pl = p[5], dh = p[6], dw = p[7];
    float m = -FLT_MAX;
    int any = 0, i, j;
    for (i = 0; i < kh; ++i) {
        const int ih = oh * sh - pt + i * dh;
        if (ih < 0 || ih >= H) continue;
        for (j = 0; j < kw; ++j) {
            const int iw = ow * sw - pl + j * dw;
            float v;
            if (iw < 0 || iw >= W) continue;
            v = xp[(size_t)ih * (size_t)W + (size_t)iw];
            if (!any || v > m || v != v) m = v;
            any = 1;
        }
    }
    return m;
}

static float qc_avgpool_one(int H, int W, const int *p, const float *xp, int oh, int ow)
{
    const int kh = p[0], kw = p[1], sh = p[2], sw = p[3], pt = p[4], pl = p[5], dh = p[6], dw = p[7];
    const int include_pad = p[8], pb = p[9], pr = p[10];
    float acc = 0.0f;
    int valid = 0, padded = 0, i, j;
    for (i = 0; i < kh; ++i) {
        const int ih = oh * sh - pt + i * dh;
        if (ih < -pt || ih >= H + pb) continue; /* beyond the padding (ceil_mode) */
        for (j = 0; j < kw; ++j) {
            const int iw = ow * sw - pl + j * dw;
            if (iw < -pl || iw >= W + pr) continue;
            padded++;
            if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
            acc += xp[(size_t)ih * (size_t)W + (size_t)iw];
            valid++;
        }
    }
    if (include_pad) valid = padded;
    return valid > 0 ? acc / (float)valid : 0.0f;
}

/* The output columns [*lo, *hi) whose kw taps all fall inside 0 .. W-1 (empty: *lo == *hi). */
static void qc_pool_inner_cols(int W, int OW, const int *p, int *lo, int *hi)
{
    const int kw = p[1], sw = p[3], pl = p[5], dw = p[7];
    const int last = W - 1 + pl - (kw - 1) * dw;   /* ow * sw may reach this */
    int a = (pl + sw - 1) / sw, b = last < 0 ? 0 : last / sw + 1;
    if (b > OW) b = OW;
    if (a > b) a = b;
    *lo = a;
    *hi = b;
}

/* The kernel rows of output row oh inside the image (their ih), and for AveragePool how many
 * lie inside the padded range (count_include_pad). */
static int qc_pool_rows(int H, const int *p, int oh, int *ih, int *in_pad)
{
    const int kh = p[0], sh = p[2], pt = p[4], dh = p[6], pb = p[9];
    int i, n = 0;
    *in_pad = 0;
    for (i = 0; i < kh; ++i) {
        const int r = oh * sh - pt + i * dh;
        if (r >= -pt && r < H + pb) ++*in_pad;
        if (r >= 0 && r < H) ih[n++] = r;
    }
    return n;
}

#define QC_POOL_MAX_KH 16

/* MaxPool / AveragePool, NCHW planes. Per output row, the columns whose whole window row lies
 * inside the image take a fast path without bounds tests (4 outputs a vector for strides 1 and,
 * on NEON, 2); the taps are visited in the reference order (kernel rows, then columns), so the
 * results are the bits of qc_maxpool_one / qc_avgpool_one: max by compare-and-select (the
 * first of equal values, a NaN wins), sums added in order, one IEEE division. */
static void qc_pool2d_f32(int avg, int NC, int H, int W, int OH, int OW, const int *p, const float *x,
                          float *y)
{
    const int kh = p[0], kw = p[1], sw = p[3], pl = p[5], dw = p[7], include_pad = p[8];
    int c, oh, ow, lo, hi;
    qc_pool_inner_cols(W, OW, p, &lo, &hi);
    for (c = 0; c < NC; ++c) {
        const float *xp = x + (size_t)c * (size_t)H * (size_t)W;
        for (oh = 0; oh < OH; ++oh, y += OW) {
            int ih[QC_POOL_MAX_KH], in_pad = 0, n, valid, r, j;
            n = kh <= QC_POOL_MAX_KH ? qc_pool_rows(H, p, oh, ih, &in_pad) : 0;
            valid = (include_pad ? in_pad : n) * kw;
            if (n == 0 || (avg && valid == 0)) {   /* no tap inside: the reference everywhere */
                for (ow = 0; ow < OW; ++ow)
                    y[ow] = avg ? qc_avgpool_one(H, W, p, xp, oh, ow) : qc_maxpool_one(H, W, p, xp, oh, ow);
                continue;
            }
            for (ow = 0; ow < lo; ++ow)
                y[ow] = avg ? qc_avgpool_one(H, W, p, xp, oh, ow) : qc_maxpool_one(H, W, p, xp, oh, ow);
            ow = lo;
#if defined(QC_VM_SIMD)
            if (sw == 1
#if defined(QC_VM_NEON)
                || sw == 2
#endif
            ) {
                const qc_vf fvalid = qc_vf_dup((float)valid);
                /* stride 2 loads 8 floats a tap (LD2): only while they end inside the row */
                for (; ow + 4 <= hi && (sw == 1 || ow * 2 - pl + (kw - 1) * dw + 8 <= W); ow += 4) {
                    const float *xc = xp + (size_t)(ow * sw - pl);
                    qc_vf m = qc_vf_dup(0.0f);
                    int first = 1;
                    for (r = 0; r < n; ++r) {
                        const float *xr = xc + (size_t)ih[r] * (size_t)W;
                        for (j = 0; j < kw; ++j) {
                            qc_vf v;
#if defined(QC_VM_NEON)
                            v = sw == 2 ? vld2q_f32(xr + j * dw).val[0] : qc_vf_load(xr + j * dw);
#else
                            v = qc_vf_load(xr + j * dw);
#endif
                            if (avg) {
                                m = qc_vf_add(m, v);
                            } else if (first) {
                                m = v;
                            } else {   /* v > m or v is NaN: v */
                                m = qc_vf_sel(qc_vf_eq(v, v), qc_vf_sel(qc_vf_gt(v, m), v, m), v);
                            }
                            first = 0;
                        }
                    }
                    qc_vf_store(y + ow, avg ? qc_vf_div(m, fvalid) : m);
                }
            }
#endif
            for (; ow < hi; ++ow) {
                const float *xc = xp + (size_t)(ow * sw - pl);
                float m = 0.0f;
                int first = 1;
                for (r = 0; r < n; ++r) {
                    const float *xr = xc + (size_t)ih[r] * (size_t)W;
                    for (j = 0; j < kw; ++j) {
                        const float v = xr[j * dw];
                        if (avg) {
                            m += v;
                        } else if (first || v > m || v != v) {
                            m = v;
                        }
                        first = 0;
                    }
                }
                y[ow] = avg ? m / (float)valid : m;
            }
            for (ow = hi; ow < OW; ++ow)
                y[ow] = avg ? qc_avgpool_one(H, W, p, xp, oh, ow) : qc_maxpool_one(H, W, p, xp, oh, ow);
        }
    }
}

void qc_maxpool2d_f32(int NC, int H, int W, int OH, int OW, const int *p, const float *x, float *y)
{
    qc_pool2d_f32(0, NC, H, W, OH, OW, p, x, y);
}

void qc_avgpool2d_f32(int NC, int H, int W, int OH, int OW, const int *p, const float *x, float *y)
{
    qc_pool2d_f32(1, NC, H, W, OH, OW, p, x, y);
}

void qc_channel_affine_f32(int outer, int C, int inner, const float *a, const float *b,
                           const float *x, float *y)
{
    int o, c, i;
    for (o = 0; o < outer; ++o)
        for (c = 0; c < C; ++c) {
            const float av = a[c], bv = b[c];
            for (i = 0; i < inner; ++i) {
                *y++ = *x++ * av + bv;
            }
        }
}

void qc_lrn_f32(int N, int C, int HW, int size, float alpha, float beta, float bias,
                const float *x, float *y)
{
    const int before = (size - 1) / 2, after = size - 1 - before;
    int n, c, i, j;
    for (n = 0; n < N; ++n) {
        const float *xn = x + (size_t)n * (size_t)C * (size_t)HW;
        float *yn = y + (size_t)n * (size_t)C * (size_t)HW;
        for (c = 0; c < C; ++c) {
            const int c0 = c - before < 0 ? 0 : c - before;
            const int c1 = c + after > C - 1 ? C - 1 : c + after;
            for (i = 0; i < HW; ++i) {
                float sq = 0.0f;
                for (j = c0; j <= c1; ++j) {
                    const float v = xn[(size_t)j * (size_t)HW + (size_t)i];
                    sq += v * v;
                }
                yn[(size_t)c * (size_t)HW + (size_t)i] =
                    xn[(size_t)c * (size_t)HW + (size_t)i] / powf(bias + alpha / (float)size * sq, beta);
            }
        }
    }
}

/* softmax of one contiguous row: max, exp(x - max) stored and summed, times 1/sum (LogSoftmax:
 * x - max - log(sum)); the same bits with and without SIMD (qc_vmath.h) */
static void qc_softmax_row(int n, int log, const float *x, float *y)
{
    const float m = qc_row_max(n, x);
    float s, r;
    int j = 0;
#if defined(QC_VM_SIMD)
    qc_vf vm = qc_vf_dup(m), acc = qc_vf_dup(0.0f);
    for (; j + 4 <= n; j += 4) {
        qc_vf e = qc_vexp(qc_vf_sub(qc_vf_load(x + j), vm));
        acc = qc_vf_add(acc, e);
        if (!log) qc_vf_store(y + j, e);
    }
    s = qc_vf_hsum(acc);
#else
    float l[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    int k;
    for (; j + 4 <= n; j += 4) {
        for (k = 0; k < 4; ++k) {
            const float e = qc_expf(x[j + k] - m);
            l[k] += e;
            if (!log) y[j + k] = e;
        }
    }
    s = (l[0] + l[1]) + (l[2] + l[3]);
#endif
    for (; j < n; ++j) {
        const float e = qc_expf(x[j] - m);
        s += e;
        if (!log) y[j] = e;
    }
    j = 0;
    if (log) {
        const float ls = qc_logf(s);
#if defined(QC_VM_SIMD)
        for (; j + 4 <= n; j += 4)
            qc_vf_store(y + j, qc_vf_sub(qc_vf_sub(qc_vf_load(x + j), vm), qc_vf_dup(ls)));
#endif
        for (; j < n; ++j) y[j] = x[j] - m - ls;
        return;
    }
    r = 1.0f / s;
#if defined(QC_VM_SIMD)
    for (; j + 4 <= n; j += 4) qc_vf_store(y + j, qc_vf_mul(qc_vf_load(y + j), qc_vf_dup(r)));
#endif
    for (; j < n; ++j) y[j] *= r;
}

void qc_softmax_f32(int outer, int n, int inner, int log, const float *x, float *y)
{
    int o, i, j;
    if (inner == 1) {
        for (o = 0; o < outer; ++o) qc_softmax_row(n, log, x + (size_t)o * (size_t)n, y + (size_t)o * (size_t)n);
        return;
    }
    for (o = 0; o < outer; ++o) {
        for (i = 0; i < inner; ++i) {
            const float *xp = x + (size_t)o * (size_t)n * (size_t)inner + (size_t)i;
            float *yp = y + (size_t)o * (size_t)n * (size_t)inner + (size_t)i;
            float m = -INFINITY, s = 0.0f;
            for (j = 0; j < n; ++j)
                if (xp[(size_t)j * (size_t)inner] > m) m = xp[(size_t)j * (size_t)inner];
            for (j = 0; j < n; ++j) {
                const float e = qc_expf(xp[(size_t)j * (size_t)inner] - m);
                s += e;
                if (!log) yp[(size_t)j * (size_t)inner] = e;
            }
            if (log) {
                const float ls = qc_logf(s);
                for (j = 0; j < n; ++j) yp[(size_t)j * (size_t)inner] = xp[(size_t)j * (size_t)inner] - m - ls;
            } else {
                for (j = 0; j < n; ++j) yp[(size_t)j * (size_t)inner] /= s;
            }
        }
    }
}

/* y[i] = (x[i] - c) * a * scale[i] (+ bias[i]): the normalization step of LayerNorm (c = mean,
 * a = 1/std) and RMSNorm (c = 0, a = 1/rms) */
static void qc_norm_row(int n, const float *x, float c, float a, const float *scale, const float *bias,
                        float *y)
{
    int i = 0;
#if defined(QC_VM_SIMD)
    const qc_vf vc = qc_vf_dup(c), va = qc_vf_dup(a);
    for (; i + 4 <= n; i += 4) {
        qc_vf v = qc_vf_mul(qc_vf_mul(qc_vf_sub(qc_vf_load(x + i), vc), va), qc_vf_load(scale + i));
        qc_vf_store(y + i, bias ? qc_vf_add(v, qc_vf_load(bias + i)) : v);
    }
#endif
    for (; i < n; ++i) {
        float v = (x[i] - c) * a * scale[i];
        y[i] = bias ? v + bias[i] : v;
    }
}

/* Two passes for the statistics (the sum, then the sum of squared deviations from the mean):
 * sum-and-sum-of-squares in one pass cancels catastrophically when |mean| >> std. */
void qc_layernorm_f32(int outer, int n, float eps, const float *x, const float *scale,
                      const float *bias, float *y, float *mean_out, float *invstd_out)
{
    int o;
    for (o = 0; o < outer; ++o) {
        const float *xp = x + (size_t)o * (size_t)n;
        const float mean = qc_row_sum(n, xp, 0, 0.0f) / (float)n;
        const float var = qc_row_sum(n, xp, 2, mean) / (float)n;
        const float inv = 1.0f / sqrtf(var + eps);
        if (mean_out) mean_out[o] = mean;
        if (invstd_out) invstd_out[o] = inv;
        qc_norm_row(n, xp, mean, inv, scale, bias, y + (size_t)o * (size_t)n);
    }
}

void qc_rmsnorm_f32(int outer, int n, float eps, const float *x, const float *scale, float *y)
{
    int o;
    for (o = 0; o < outer; ++o) {
        const float *xp = x + (size_t)o * (size_t)n;
        const float inv = 1.0f / sqrtf(qc_row_sum(n, xp, 1, 0.0f) / (float)n + eps);
        qc_norm_row(n, xp, 0.0f, inv, scale, NULL, y + (size_t)o * (size_t)n);
    }
}

/* Reductions over the last axis only (rank-1 leading dims kept, contiguous output): one row each */
static int qc_reduce_rows(int op, int rank, const int *shape, const int *ys, size_t ny, size_t count,
                          const float *x, float *y)
{
    const int n = shape[rank - 1];
    int d, want = 1;
    size_t r;
    if (ys[rank - 1] != 0 || (size_t)n != count || n < 4) return 0;
    for (d = rank - 2; d >= 0; --d) {
        if (shape[d] != 1 && ys[d] != want) return 0;
        want *= shape[d];
    }
    if ((size_t)want != ny) return 0;
    for (r = 0; r < ny; ++r) {
        const float *xp = x + r * (size_t)n;
        switch (op) {
        case QC_RSUM: y[r] = qc_row_sum(n, xp, 0, 0.0f); break;
        case QC_RMEAN: y[r] = qc_row_sum(n, xp, 0, 0.0f) / (float)count; break;
        case QC_RSUMSQ: y[r] = qc_row_sum(n, xp, 1, 0.0f); break;
        case QC_RL2: y[r] = sqrtf(qc_row_sum(n, xp, 1, 0.0f)); break;
        case QC_RMAX: y[r] = qc_row_max(n, xp); break;
        default: return 0; /* before any row is written: r == 0 */
        }
    }
    return 1;
}

/* Sum / mean / sum of squares over one run of middle axes (kept leading dims, the reduced run,
   kept trailing dims of `inner` >= 4 contiguous floats; e.g. mean pooling over the sequence):
   rows of x added into y in turn, four outputs a vector. Each output takes its terms in the
   order the generic loop below does (reduced index ascending, from 0.0f), so the same bits. */
static int qc_reduce_middle(int op, int rank, const int *shape, const int *ys, size_t ny, size_t count,
                            const float *x, float *y)
{
    size_t outer = 1, n = 1, inner = 1, want = 1, o, j, i;
    int d = rank - 1;
    if (op != QC_RSUM && op != QC_RMEAN && op != QC_RSUMSQ) return 0;
    for (; d >= 0 && (ys[d] != 0 || shape[d] == 1); --d) {   /* trailing kept dims */
        if (shape[d] != 1 && (size_t)ys[d] != want) return 0;
        want *= (size_t)shape[d];
    }
    inner = want;
    for (; d >= 0 && (ys[d] == 0 || shape[d] == 1); --d) n *= (size_t)shape[d];   /* the reduced run */
    for (; d >= 0; --d) {   /* leading kept dims: nothing reduced among them */
        if (shape[d] != 1 && (ys[d] == 0 || (size_t)ys[d] != want)) return 0;
        want *= (size_t)shape[d];
        outer *= (size_t)shape[d];
    }
    if (inner < 4 || n != count || outer * inner != ny) return 0;
    for (i = 0; i < ny; ++i) y[i] = 0.0f;
    for (o = 0; o < outer; ++o) {
        float *yo = y + o * inner;
        for (j = 0; j < n; ++j) {
            const float *xp = x + (o * n + j) * inner;
            i = 0;
#if defined(QC_VM_NEON)
            for (; i + 4 <= inner; i += 4) {
                const float32x4_t v = vld1q_f32(xp + i);
                vst1q_f32(yo + i, vaddq_f32(vld1q_f32(yo + i), op == QC_RSUMSQ ? vmulq_f32(v, v) : v));
            }
#endif
            for (; i < inner; ++i) yo[i] += op == QC_RSUMSQ ? xp[i] * xp[i] : xp[i];
        }
    }
    if (op == QC_RMEAN) {
        for (i = 0; i < ny; ++i) y[i] /= (float)count;
    }
    return 1;
}

void qc_reduce_f32(int op, int rank, const int *shape, const int *ys, size_t ny, size_t count,
                   const float *x, float *y)
{
    int idx[QC_MAX_RANK] = {0}, d;
    ptrdiff_t off = 0;
    size_t i, total = 1;
    float init = 0.0f;
    if (qc_reduce_rows(op, rank, shape, ys, ny, count, x, y)) return;
    if (qc_reduce_middle(op, rank, shape, ys, ny, count, x, y)) return;
    if (op == QC_RMAX) init = -INFINITY;
    if (op == QC_RMIN) init = INFINITY;
    if (op == QC_RPROD) init = 1.0f;
    for (i = 0; i < ny; ++i) y[i] = init;
    for (d = 0; d < rank; ++d) total *= (size_t)shape[d];
    for (i = 0; i < total; ++i) {
        const float v = x[i];
        float *t = y + off;
        switch (op) {
        case QC_RMAX: if (v > *t || v != v) *t = v; break;
        case QC_RMIN: if (v < *t || v != v) *t = v; break;
        case QC_RPROD: *t *= v; break;
        case QC_RL1: *t += fabsf(v); break;
        case QC_RL2: case QC_RSUMSQ: *t += v * v; break;
        case QC_RLOGSUMEXP: *t += expf(v); break;
        default: *t += v; break;
        }
        for (d = rank - 1; d >= 0; --d) {
            idx[d]++;
            off += ys[d];
            if (idx[d] < shape[d]) break;
            off -= (ptrdiff_t)ys[d] * shape[d];
            idx[d] = 0;
        }
    }
    for (i = 0; i < ny; ++i) {
        switch (op) {
        case QC_RMEAN: y[i] /= (float)count; break;
        case QC_RL2: y[i] = sqrtf(y[i]); break;
        case QC_RLOGSUM: case QC_RLOGSUMEXP: y[i] = logf(y[i]); break;
        default: break;
        }
    }
}

void qc_argmax_f32(int outer, int n, int inner, int is_min, int select_last, const float *x,
                   int64_t *y)
{
    int o, i, j;
    for (o = 0; o < outer; ++o)
        for (i = 0; i < inner; ++i) {
            const float *xp = x + (size_t)o * (size_t)n * (size_t)inner + (size_t)i;
            float best = xp[0];
            int at = 0;
            for (j = 1; j < n; ++j) {
                const float v = xp[(size_t)j * (size_t)inner];
                const int better = is_min ? (select_last ? v <= best : v < best)
                                          : (select_last ? v >= best : v > best);
                if (better) {
                    best = v;
                    at = j;
                }
            }
            y[(size_t)o * (size_t)inner + (size_t)i] = at;
        }
}
