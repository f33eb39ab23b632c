/* int8 glue between the int8 convolutions (backends/c/lower_conv_s8.py, lower_quant.py).
   Contract in qc_kernels.h; docs/c-kernels.md.

   qc_quantize_f32_s8: qc_quantize_s8 (qc_quant.c) 4 lanes at a time on NEON, bit-exact with it:
   the same IEEE division, the clamp to [lo - zp, hi - zp] before rounding with NaN sent to the low
   end (FMAXNM returns the number when one operand is NaN), FCVTNS's round half to even (equal to
   the scalar 1.5 * 2^23 trick on the clamped range), then + zp. */
#include "qc_kernels.h"

#if defined(QC_KERNEL_NEON) || defined(QC_KERNEL_DOTPROD) || defined(QC_KERNEL_I8MM)
#include <arm_neon.h>
#endif

void qc_quantize_f32_s8(size_t n, const float *x, float scale, int32_t zp, int8_t *y)
{
    size_t i = 0;
#if (defined(QC_KERNEL_NEON) || defined(QC_KERNEL_DOTPROD) || defined(QC_KERNEL_I8MM)) && defined(__aarch64__)
    const float32x4_t s = vdupq_n_f32(scale);
    const float32x4_t flo = vdupq_n_f32((float)(-128 - zp)), fhi = vdupq_n_f32((float)(127 - zp));
    const int32x4_t z = vdupq_n_s32(zp);
    for (; i + 16 <= n; i += 16) {
        int32x4_t q[4];
        int r;
        for (r = 0; r < 4; ++r) {
            float32x4_t v = vdivq_f32(vld1q_f32(x + i + 4 * r), s);
            v = vminq_f32(vmaxnmq_f32(v, flo), fhi);
            q[r] = vaddq_s32(vcvtnq_s32_f32(v), z);
        }
        vst1q_s8(y + i, vcombine_s8(vmovn_s16(vcombine_s16(vmovn_s32(q[0]), vmovn_s32(q[1]))),
                                    vmovn_s16(vcombine_s16(vmovn_s32(q[2]), vmovn_s32(q[3])))));
    }
#endif
    if (i < n) {
        qc_quantize_s8(n - i, x + i, scale, zp, y + i);
    }
}
