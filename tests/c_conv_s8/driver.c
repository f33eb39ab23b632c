/* Test driver for qc_conv_dw_s8_q8 / _f32, qc_transpose_s8 and qc_conv1x1_s8_q8 / _f32 (tests/test_c_conv_s8.py): reads cases from argv[1]
   until EOF, writes each output to argv[2]. A case: 20 int32 (C H W KH KW sh sw pt pl dh dw OH
   OW zx mode out_zp qmin qmax per_channel has_fbias; mode 0 = int8 out, 1 = float out), then
   x (C*H*W int8), w (C*KH*KW int8), bias (C int32), and mult, shift (C int32 each) for mode 0 or
   scale (C or 1 float), fbias (C float, if has_fbias) for mode 1. Mode 2: qc_transpose_s8 of
   an h[0] x h[1] int8 matrix with row stride h[2] (read h[0] * h[2] bytes). Modes 3 / 4:
   qc_conv1x1_s8_q8 / _f32 with K = h[0], P = h[1], OC = h[2] and h[15..19] as above: x (K*P
   int8), the packed weights (ceil(OC/4)*ceil(K/4)*16 int8), bias (OC int32), then as mode 0 / 1.
   Mode 6: as mode 0 through qc_conv_dw3x3_s8_q8_nhwc. Mode 5: h[0] floats quantized (scale: the bits h[1], zero point h[15]) by qc_quantize_s8. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "qc_kernels.h"

static void *read_n(FILE *f, size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p || fread(p, 1, n, f) != n) {
        fprintf(stderr, "short read\n");
        exit(2);
    }
    return p;
}

int main(int argc, char **argv)
{
    FILE *in, *out;
    int32_t h[20];
    if (argc != 3 || !(in = fopen(argv[1], "rb")) || !(out = fopen(argv[2], "wb"))) {
        return 1;
    }
    while (fread(h, sizeof h, 1, in) == 1) {
        if (h[14] == 2) {   /* qc_transpose_s8: h[0] x h[1] matrix with row stride h[2] */
            int8_t *x = read_n(in, (size_t)h[0] * h[2]), *y = malloc((size_t)h[0] * h[1]);
            qc_transpose_s8(h[0], h[1], x, h[2], y, h[0]);
            fwrite(y, 1, (size_t)h[0] * h[1], out);
            free(x); free(y);
            continue;
        }
        if (h[14] == 5) {   /* qc_quantize_s8: n = h[0], scale bits h[1], zp h[15] */
            const size_t n = (size_t)h[0];
            float scale, *x = read_n(in, n * 4);
            int8_t *y = malloc(n + 1);
            memcpy(&scale, &h[1], 4);
            qc_quantize_s8(n, x, scale, h[15], y);
            fwrite(y, 1, n, out);
            free(x); free(y);
            continue;
        }
        if (h[14] == 3 || h[14] == 4) {   /* qc_conv1x1_s8_q8 / _f32: K = h[0], P = h[1], OC = h[2] */
            const int K = h[0], P = h[1], OC = h[2];
            const size_t nw = (size_t)((OC + 3) / 4) * ((K + 3) / 4) * 16, ny = (size_t)OC * P;
            int8_t *x = read_n(in, (size_t)K * P), *wp = read_n(in, nw);
            int32_t *bias = read_n(in, (size_t)OC * 4);
            int8_t *scratch = malloc(qc_conv1x1_s8_scratch(K));
            if (h[14] == 3) {
                int32_t *mult = read_n(in, (size_t)OC * 4), *shift = read_n(in, (size_t)OC * 4);
                int8_t *y = malloc(ny);
                qc_conv1x1_s8_q8(K, P, OC, x, wp, bias, mult, shift, h[15], h[16], h[17], scratch, y);
                fwrite(y, 1, ny, out);
                free(mult); free(shift); free(y);
            } else {
                float *scale = read_n(in, (size_t)(h[18] ? OC : 1) * 4);
                float *fbias = h[19] ? read_n(in, (size_t)OC * 4) : NULL;
                float *clip = h[15] ? read_n(in, 8) : NULL;   /* h[15]: a [lo, hi] clamp follows */
                float *y = malloc(ny * 4);
                qc_conv1x1_s8_f32(K, P, OC, x, wp, bias, scale, h[18], fbias, clip, scratch, y);
                fwrite(y, 4, ny, out);
                free(scale); free(fbias); free(clip); free(y);
            }
            free(x); free(wp); free(bias); free(scratch);
            continue;
        }
        const int C = h[0], H = h[1], W = h[2], KH = h[3], KW = h[4], OH = h[11], OW = h[12];
        const size_t ny = (size_t)C * OH * OW;
        int8_t *x = read_n(in, (size_t)C * H * W), *w = read_n(in, (size_t)C * KH * KW);
        int32_t *bias = read_n(in, (size_t)C * 4);
        size_t nscratch = qc_conv_dw_s8_scratch(KH, KW, h[5], h[6], h[9], h[10], OH, OW);
        if (h[14] == 6 && qc_conv_dw3x3_s8_nhwc_scratch(C, H, W, h[5], h[7], h[8], OH, OW) > nscratch) {
            nscratch = qc_conv_dw3x3_s8_nhwc_scratch(C, H, W, h[5], h[7], h[8], OH, OW);
        }
        int8_t *raw = malloc(nscratch + 16);
        int8_t *scratch = raw + ((16u - ((size_t)raw & 15u)) & 15u);   /* 16-byte aligned (C99) */
        if (h[14] == 6) {   /* qc_conv_dw3x3_s8_q8_nhwc: 3x3, stride h[5] == h[6], dilation 1 */
            int32_t *mult = read_n(in, (size_t)C * 4), *shift = read_n(in, (size_t)C * 4);
            int8_t *y = malloc(ny);
            qc_conv_dw3x3_s8_q8_nhwc(C, H, W, h[5], h[7], h[8], OH, OW, x, (int8_t)h[13], w, bias, mult, shift,
                                     h[15], h[16], h[17], scratch, y);
            fwrite(y, 1, ny, out);
            free(mult); free(shift); free(y);
        } else if (h[14] == 0) {
            int32_t *mult = read_n(in, (size_t)C * 4), *shift = read_n(in, (size_t)C * 4);
            int8_t *y = malloc(ny);
            qc_conv_dw_s8_q8(C, H, W, KH, KW, h[5], h[6], h[7], h[8], h[9], h[10], OH, OW, x, (int8_t)h[13],
                             w, bias, mult, shift, h[15], h[16], h[17], scratch, y);
            fwrite(y, 1, ny, out);
            free(mult); free(shift); free(y);
        } else {
            float *scale = read_n(in, (size_t)(h[18] ? C : 1) * 4);
            float *fbias = h[19] ? read_n(in, (size_t)C * 4) : NULL;
            float *y = malloc(ny * 4);
            qc_conv_dw_s8_f32(C, H, W, KH, KW, h[5], h[6], h[7], h[8], h[9], h[10], OH, OW, x, (int8_t)h[13],
                              w, bias, scale, h[18], fbias, scratch, y);
            fwrite(y, 4, ny, out);
            free(scale); free(fbias); free(y);
        }
        free(x); free(w); free(bias); free(raw);
    }
    fclose(in);
    return fclose(out) != 0;
}
