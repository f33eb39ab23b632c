/* qc_gemm_s8 for Cortex-M4 DSP (QC_KERNEL_DSP, Armv7E-M). Portable packing (W transposed,
   N rows of K bytes). Four k at a time: SXTB16 (and SXTB16 of the word rotated by 8) sign-extend
   bytes 0,2 and 1,3 of A and W into halfword pairs, SMLAD multiplies both pairs and adds them to
   the int32 accumulator (the same modular int32 sum as the portable kernel). One row of A against
   2 columns per step; scalar K tail. */
#include "qc_kernels.h"

#if defined(QC_KERNEL_DSP)
#if !defined(__ARM_FEATURE_DSP)
#error "QC_KERNEL_DSP needs an Armv7E-M or later core with the DSP extension (-mcpu=cortex-m4)"
#endif
#include <arm_acle.h>
#include <string.h>

static inline uint32_t qc_ld32(const int8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);   /* unaligned LDR, allowed on Armv7E-M */
    return v;
}

static inline uint32_t qc_ror8(uint32_t x)
{
    return (x >> 8) | (x << 24);
}

void qc_gemm_s8(int M, int N, int K, const int8_t *A, const int8_t *Wp, int32_t *C)
{
    const int full = K & ~3;
    int m, n, k;
    for (m = 0; m < M; ++m) {
        const int8_t *a = A + (size_t)m * K;
        for (n = 0; n < N; n += 2) {
            const int8_t *w0 = Wp + (size_t)n * K;
            const int8_t *w1 = Wp + (size_t)(n + 1 < N ? n + 1 : n) * K;
            int32_t c0 = 0, c1 = 0;
            for (k = 0; k < full; k += 4) {
                uint32_t av = qc_ld32(a + k), x0 = qc_ld32(w0 + k), x1 = qc_ld32(w1 + k);
                int16x2_t a02 = __sxtb16(av), a13 = __sxtb16(qc_ror8(av));
                c0 = __smlad(a02, __sxtb16(x0), c0);
                c0 = __smlad(a13, __sxtb16(qc_ror8(x0)), c0);
                c1 = __smlad(a02, __sxtb16(x1), c1);
                c1 = __smlad(a13, __sxtb16(qc_ror8(x1)), c1);
            }
            for (; k < K; ++k) {
                c0 += (int32_t)a[k] * w0[k];
                c1 += (int32_t)a[k] * w1[k];
            }
            C[(size_t)m * N + n] = c0;
            if (n + 1 < N) {
                C[(size_t)m * N + n + 1] = c1;
            }
        }
    }
}
#else
typedef int qc_gemm_s8_dsp_not_compiled; /* ISO C: no empty translation unit */
#endif
