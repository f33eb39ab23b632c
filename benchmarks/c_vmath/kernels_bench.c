/* One call of each float kernel at MiniLM-L6 (1x128) / SmolLM2 (1x32) sizes, separated by
 * clock_gettime syscalls (benchmarks/c_vmath.py counts the guest instructions between them).
 * -DQC_BENCH_NEW: the kernels that exist only after the vector-math change (QC_SILU, RMSNorm). */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <time.h>

#include "qc_ops.h"

#define BIG (128 * 1536)
static float x[BIG], y[BIG], z[BIG];
static float w[1536];

static void mark(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
}

int main(void)
{
    int i;
    int s2[2] = {128, 1536}, c2[2] = {1536, 1}, z2[2] = {0, 0};
    int sm[2] = {12 * 128, 128}, cm[2] = {128, 1}, rm[2] = {0, 1};
    int sl[2] = {128, 384}, cl[2] = {384, 1}, col[2] = {1, 0}, ys_last[2] = {1, 0};
    float two = 2.0f, sq2 = 1.41421356f;
    for (i = 0; i < BIG; ++i) {
        x[i] = (float)((i * 7919) % 2001 - 1000) * 0.004f;
        z[i] = 1.0f + (float)(i % 17) * 0.01f;
    }
    for (i = 0; i < 1536; ++i) w[i] = 1.0f + (float)(i % 5) * 0.1f;
    mark(); qc_unary_f32(QC_ERF, BIG, x, 0, 0, y);                              /* 1: Erf 128x1536 */
    mark(); qc_unary_f32(QC_GELU, BIG, x, 0, 0, y);                             /* 2: Gelu 128x1536 */
    mark(); qc_binary(QC_DIV, 1, 2, s2, c2, z2, x, &sq2, y);                    /* 3: x / sqrt2 */
    mark(); qc_binary(QC_MUL, 1, 2, s2, c2, c2, x, z, y);                       /* 4: x * y */
    mark(); qc_binary(QC_ADD, 1, 2, sm, cm, rm, x, z, y);                       /* 5: scores + mask row */
    mark(); qc_softmax_f32(12 * 128, 128, 1, 0, x, y);                          /* 6: softmax 12x128x128 */
    mark(); qc_reduce_f32(QC_RMEAN, 2, sl, ys_last, 128, 384, x, y);            /* 7: ReduceMean 128x384 */
    mark(); qc_binary(QC_SUB, 1, 2, sl, cl, col, x, z, y);                      /* 8: x - mean (column) */
    mark(); qc_binary(QC_POW, 1, 2, sl, cl, z2, x, &two, y);                    /* 9: Pow 2 */
    mark(); qc_layernorm_f32(128, 384, 1e-5f, x, w, w, y, NULL, NULL);          /* 10: LayerNorm */
    mark(); qc_unary_f32(QC_SIGMOID, 32 * 1536, x, 0, 0, y);                    /* 11: Sigmoid 32x1536 */
    mark(); qc_cast(BIG, 1, x, 10, y);                                          /* 12: f32 -> f16 */
    mark(); qc_unary_f32(QC_EXP, BIG, x, 0, 0, y);                              /* 13: Exp */
    mark(); qc_unary_f32(QC_TANH, BIG, x, 0, 0, y);                             /* 14: Tanh */
#if defined(QC_BENCH_NEW)
    mark(); qc_unary_f32(QC_SILU, 32 * 1536, x, 0, 0, y);                       /* 15: SiLU 32x1536 */
    mark(); qc_rmsnorm_f32(32, 576, 1e-5f, x, w, y);                            /* 16: RMSNorm 32x576 */
#endif
    mark();
    printf("%g\n", (double)y[5]);
    return 0;
}
