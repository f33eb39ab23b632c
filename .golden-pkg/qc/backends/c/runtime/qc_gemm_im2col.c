/* im2col for int8 convolutions through qc_gemm_s8 (portable C99, shared by every variant). */
#include <string.h>
#include "qc_kernels.h"

void qc_im2col_s8(int C, int H, int W, int KH, int KW, int stride_h, int stride_w, int pad_top,
                  int pad_left, int dil_h, int dil_w, int OH, int OW, int c0, int cg,
                  const int8_t *x, int8_t pad_value, int8_t *cols)
{
    const size_t K = (size_t)cg * KH * KW;
    int oh, ow, c, kh, kw;
    (void)C;
    for (oh = 0; oh < OH; ++oh) {
        for (ow = 0; ow < OW; ++ow) {
            int8_t *row = cols + ((size_t)oh * OW + ow) * K;
            for (c = 0; c < cg; ++c) {
                const int8_t *plane = x + (size_t)(c0 + c) * H * W;
                for (kh = 0; kh < KH; ++kh) {
                    const int ih = oh * stride_h - pad_top + kh * dil_h;
                    int8_t *dst = row + ((size_t)c * KH + kh) * KW;
                    if (ih < 0 || ih >= H) {
                        memset(dst, (unsigned char)pad_value, (size_t)KW);
                        continue;
                    }
                    for (kw = 0; kw < KW; ++kw) {
                        const int iw = ow * stride_w - pad_left + kw * dil_w;
                        dst[kw] = (iw < 0 || iw >= W) ? pad_value : plane[(size_t)ih * W + iw];
                    }
                }
            }
        }
    }
}
