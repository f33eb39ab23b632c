/* qc C backend: Resize and ConvTranspose (float32 and, for nearest Resize, any element type).
 * The coordinate tables of Resize are computed at compile time (backends/c/lower_resize.py),
 * so these loops do no coordinate arithmetic. */
#include "qc_ops.h"

#include <string.h>

void qc_resize_nearest(int rank, const int *shape, const int *idx, size_t es, const void *x,
                       const void *fill, void *y)
{
    const int *tab[QC_MAX_RANK];
    int i[QC_MAX_RANK];
    const unsigned char *src = (const unsigned char *)x;
    unsigned char *dst = (unsigned char *)y;
    size_t n = 1, k, pos = 0;
    int d;
    for (d = 0; d < rank; ++d) {
        tab[d] = idx + pos;
        pos += (size_t)shape[d];
        n *= (size_t)shape[d];
        i[d] = 0;
    }
    for (k = 0; k < n; ++k) {
        size_t off = 0;
        int outside = 0;
        for (d = 0; d < rank; ++d) {
            if (tab[d][i[d]] < 0) outside = 1;
            else off += (size_t)tab[d][i[d]];
        }
        memcpy(dst + k * es, outside ? (const unsigned char *)fill : src + off * es, es);
        for (d = rank - 1; d >= 0; --d) {
            if (++i[d] < shape[d]) break;
            i[d] = 0;
        }
    }
}

void qc_resize_axis_f32(int outer, int in_len, int out_len, int inner, int taps, const int *idx,
                        const float *w, const int *outside, float fill, const float *x, float *y)
{
    int o, j, t, i;
    for (o = 0; o < outer; ++o) {
        const float *xo = x + (size_t)o * (size_t)in_len * (size_t)inner;
        for (j = 0; j < out_len; ++j) {
            float *yr = y + ((size_t)o * (size_t)out_len + (size_t)j) * (size_t)inner;
            const int *ij = idx + (size_t)j * (size_t)taps;
            const float *wj = w + (size_t)j * (size_t)taps;
            if (outside != NULL && outside[j]) {
                for (i = 0; i < inner; ++i) yr[i] = fill;
                continue;
            }
            for (i = 0; i < inner; ++i) yr[i] = 0.0f;
            for (t = 0; t < taps; ++t) {
                const float *xr = xo + (size_t)ij[t] * (size_t)inner;
                const float wt = wj[t];
                if (wt == 0.0f) continue;
                for (i = 0; i < inner; ++i) yr[i] += wt * xr[i];
            }
        }
    }
}

void qc_convtranspose2d_f32(int N, int C, int H, int W, int OC, int OH, int OW, int KH, int KW,
                            int group, const int *p, const float *x, const float *w,
                            const float *bias, float *y)
{
    const int sh = p[0], sw = p[1], pt = p[2], pl = p[3], dh = p[4], dw = p[5];
    const int cg = C / group, og = OC / group;
    const size_t plane = (size_t)OH * (size_t)OW;
    int n, g, c, o, ih, iw, kh, kw;
    for (n = 0; n < N; ++n)
        for (o = 0; o < OC; ++o) {
            float *yp = y + ((size_t)n * (size_t)OC + (size_t)o) * plane;
            const float b = bias != NULL ? bias[o] : 0.0f;
            size_t k;
            for (k = 0; k < plane; ++k) yp[k] = b;
        }
    for (n = 0; n < N; ++n)
        for (g = 0; g < group; ++g)
            for (c = 0; c < cg; ++c) {
                const int ic = g * cg + c;
                const float *xp = x + ((size_t)n * (size_t)C + (size_t)ic) * (size_t)H * (size_t)W;
                for (o = 0; o < og; ++o) {
                    const float *wp = w + ((size_t)ic * (size_t)og + (size_t)o) * (size_t)KH * (size_t)KW;
                    float *yp = y + ((size_t)n * (size_t)OC + (size_t)(g * og + o)) * plane;
                    for (kh = 0; kh < KH; ++kh)
                        for (ih = 0; ih < H; ++ih) {
                            const int oh = ih * sh - pt + kh * dh;
                            if (oh < 0 || oh >= OH) continue;
                            for (kw = 0; kw < KW; ++kw) {
                                const float wv = wp[kh * KW + kw];
                                const float *xr = xp + (size_t)ih * (size_t)W;
                                float *yr = yp + (size_t)oh * (size_t)OW;
                                for (iw = 0; iw < W; ++iw) {
                                    const int ow = iw * sw - pl + kw * dw;
                                    if (ow >= 0 && ow < OW) yr[ow] += xr[iw] * wv;
                                }
                            }
                        }
                }
            }
}
