/* qc_gemm_s8 for Cortex-M4 DSP (QC_KERNEL_DSP, Armv7E-M). Portable packing (W transposed,
   N rows of K bytes). Four k at a time: SXTB16 (and SXTB16 of the word rotated by 8) sign-extend
   bytes 0,2 and 1,3 of A and W into halfword pairs, SMLAD multiplies both pairs and adds them to
   the int32 accumulator (the same modular int32 sum as the portable kernel). Tiles of 2 rows x 2
   columns (at the edges the last row or column repeats, only valid results are stored); scalar
   K tail. */
#include "qc_kernels.h"

#if defined(QC_KERNEL_DSP)
#if !defined(__ARM_FEATURE_DSP)
#error "QC_KERNEL_DSP needs an Armv7E-M or later core with the DSP extension (-mcpu=cortex-m4)"
#endif
#include <arm_acle.h>
#include <string.h>
#include "qc_gemm_s8_tile.h"

static inline uint32_t qc_ld32(const int8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);   /* unaligned LDR, allowed on Armv7E-M */
    return v;
}

/* SXTB16 of the word rotated right by 8 (bytes 1 and 3) in one instruction; GCC 12 does not
   fold a separate rotate into SXTB16. */
static inline int16x2_t qc_sxtb16_ror8(uint32_t x)
{
    int16x2_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}

void qc_gemm_s8_run(int M, int N, int K, const int8_t *A, int lda, const int8_t *Wp,
                    const struct qc_ep_ctx *ctx)
{
    int m, n, k;
    for (m = 0; m < M; m += 2) {
        const int8_t *a0 = A + (size_t)m * (size_t)lda;
        const int8_t *a1 = A + (size_t)(m + 1 < M ? m + 1 : m) * (size_t)lda;
        for (n = 0; n < N; n += 2) {
            const int8_t *pa0 = a0, *pa1 = a1;
            const int8_t *pw0 = Wp + (size_t)n * K;
            const int8_t *pw1 = Wp + (size_t)(n + 1 < N ? n + 1 : n) * K;
            int32_t c00 = 0, c01 = 0, c10 = 0, c11 = 0;
            for (k = K >> 2; k > 0; --k) {
                const uint32_t u0 = qc_ld32(pa0), u1 = qc_ld32(pa1);
                const int16x2_t a0e = __sxtb16(u0), a0o = qc_sxtb16_ror8(u0);
                const int16x2_t a1e = __sxtb16(u1), a1o = qc_sxtb16_ror8(u1);
                uint32_t x = qc_ld32(pw0);
                int16x2_t xe = __sxtb16(x), xo = qc_sxtb16_ror8(x);
                c00 = __smlad(a0e, xe, c00);
                c00 = __smlad(a0o, xo, c00);
                c10 = __smlad(a1e, xe, c10);
                c10 = __smlad(a1o, xo, c10);
                x = qc_ld32(pw1);
                xe = __sxtb16(x);
                xo = qc_sxtb16_ror8(x);
                c01 = __smlad(a0e, xe, c01);
                c01 = __smlad(a0o, xo, c01);
                c11 = __smlad(a1e, xe, c11);
                c11 = __smlad(a1o, xo, c11);
                pa0 += 4; pa1 += 4; pw0 += 4; pw1 += 4;
            }
            for (k = K & 3; k > 0; --k) {
                c00 += (int32_t)*pa0 * *pw0;
                c01 += (int32_t)*pa0++ * *pw1;
                c10 += (int32_t)*pa1 * *pw0++;
                c11 += (int32_t)*pa1++ * *pw1++;
            }
            qc_ep_one(ctx, c00, m, n);
            if (n + 1 < N) {
                qc_ep_one(ctx, c01, m, n + 1);
            }
            if (m + 1 < M) {
                qc_ep_one(ctx, c10, m + 1, n);
                if (n + 1 < N) {
                    qc_ep_one(ctx, c11, m + 1, n + 1);
                }
            }
        }
    }
}

#else
typedef int qc_gemm_s8_dsp_not_compiled; /* ISO C: no empty translation unit */
#endif
