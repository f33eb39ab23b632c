/* The float kernels of qc_ops.c / qc_ops_nn.c on fixed calls (tests/test_c_vmath.py):
 * kernels IN OUT reads NX floats and NH float16 bit patterns from IN, writes every output in
 * call order to OUT. */
#include <stdio.h>
#include <string.h>

#include "qc_ops.h"
#include "qc_vmath.h"

#define NX 1103
#define NH 64
#define R 17
#define C 61

static float x[NX], x2[NX], t[NX], out[NX];
static uint16_t h[NH], h2[NH];
static FILE *fo;

static void put(const void *p, size_t bytes) { fwrite(p, 1, bytes, fo); }

int main(int argc, char **argv)
{
    static const int unops[] = {QC_NEG, QC_ABS, QC_RELU, QC_EXP, QC_LOG, QC_SQRT, QC_RECIP, QC_SIGMOID,
                                QC_SILU, QC_TANH, QC_ERF, QC_GELU, QC_GELU_TANH};
    FILE *fi;
    size_t k;
    int shape[2] = {R, C}, contig[2] = {C, 1}, row[2] = {0, 1}, scal[2] = {0, 0}, tr[2] = {1, R};
    int ys_last[2] = {1, 0}, ys_first[2] = {0, 1};
    float scale[C], bias[C];
    if (argc < 3 || !(fi = fopen(argv[1], "rb"))) return 2;
    if (fread(x, 4, NX, fi) != NX || fread(x2, 4, NX, fi) != NX || fread(h, 2, NH, fi) != NH) return 3;
    fclose(fi);
    if (!(fo = fopen(argv[2], "wb"))) return 4;
    memcpy(scale, x2, sizeof scale);
    memcpy(bias, x2 + C, sizeof bias);
    for (k = 0; k < sizeof unops / sizeof unops[0]; ++k) {
        qc_unary_f32(unops[k], NX, x, 0.0f, 0.0f, out);
        put(out, sizeof out);
    }
    qc_binary(QC_ADD, 1, 2, shape, contig, contig, x, x2, out);   put(out, 4 * R * C);
    qc_binary(QC_MUL, 1, 2, shape, contig, scal, x, x2, out);     put(out, 4 * R * C);
    qc_binary(QC_SUB, 1, 2, shape, contig, row, x, x2, out);      put(out, 4 * R * C);
    qc_binary(QC_DIV, 1, 2, shape, row, contig, x, x2, out);      put(out, 4 * R * C);
    qc_binary(QC_DIV, 1, 2, shape, contig, tr, x, x2, out);       put(out, 4 * R * C);
    memcpy(t, x2, sizeof t);
    t[0] = 2.0f;
    qc_binary(QC_POW, 1, 2, shape, contig, scal, x, t, out);      put(out, 4 * R * C);
    qc_softmax_f32(R, C, 1, 0, x, out);                           put(out, 4 * R * C);
    qc_softmax_f32(R, C, 1, 1, x, out);                           put(out, 4 * R * C);
    qc_softmax_f32(5, 7, 3, 0, x, out);                           put(out, 4 * 5 * 7 * 3);
    qc_layernorm_f32(R, C, 1e-5f, x, scale, bias, out, t, t + R); put(out, 4 * R * C); put(t, 4 * 2 * R);
    qc_rmsnorm_f32(R, C, 1e-6f, x, scale, out);                   put(out, 4 * R * C);
    qc_reduce_f32(QC_RMEAN, 2, shape, ys_last, R, C, x, out);     put(out, 4 * R);
    qc_reduce_f32(QC_RMAX, 2, shape, ys_last, R, C, x, out);      put(out, 4 * R);
    qc_reduce_f32(QC_RSUM, 2, shape, ys_first, C, R, x, out);     put(out, 4 * C);
    for (k = 0; k < R; ++k) qc_rope_half_f32(C - 1, x + k * C, x2, x2 + 30, out + k * (C - 1));
    put(out, 4 * R * (C - 1));
    memcpy(t, x, sizeof t);
    qc_rope_half_f32(2 * 13, t, x2, x2 + 26, t);                  put(t, 4 * 26); /* in place, odd half */
    qc_cast(NH, 10, h, 1, t);                                     put(t, 4 * NH);
    qc_cast(NH, 1, t, 10, h2);                                    put(h2, 2 * NH);
    qc_cast(NX, 1, x, 10, out);                                   put(out, 2 * NX);
    fclose(fo);
    return 0;
}
