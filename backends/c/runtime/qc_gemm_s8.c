/* qc_gemm_s8, portable C reference (no QC_KERNEL_* macro) and the shared variant name.
   Portable packing: W transposed, N rows of K bytes (Wp[n * K + k] = W[k][n]). */
#include "qc_kernels.h"

const char *qc_kernel_variant(void)
{
#if defined(QC_KERNEL_I8MM)
    return "i8mm";
#elif defined(QC_KERNEL_DOTPROD)
    return "dotprod";
#elif defined(QC_KERNEL_NEON)
    return "neon";
#elif defined(QC_KERNEL_MVE)
    return "mve";
#elif defined(QC_KERNEL_DSP)
    return "dsp";
#else
    return "portable";
#endif
}

#if !defined(QC_KERNEL_I8MM) && !defined(QC_KERNEL_DOTPROD) && !defined(QC_KERNEL_NEON) && \
    !defined(QC_KERNEL_MVE) && !defined(QC_KERNEL_DSP)
void qc_gemm_s8(int M, int N, int K, const int8_t *A, const int8_t *Wp, int32_t *C)
{
    int m, n, k;
    for (m = 0; m < M; ++m) {
        const int8_t *a = A + (size_t)m * K;
        for (n = 0; n < N; ++n) {
            const int8_t *w = Wp + (size_t)n * K;
            int32_t acc = 0;
            for (k = 0; k < K; ++k) {
                acc += (int32_t)a[k] * (int32_t)w[k];
            }
            C[(size_t)m * N + n] = acc;
        }
    }
}
#endif
