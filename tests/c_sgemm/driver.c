/* Test driver for qc_sgemm (runtime/qc_sgemm.c): reads records from argv[1], writes each
   record's output to argv[2]. Record (little-endian int32 words, then float32 arrays):
   op (1 sgemm, 2 sgemm_batch, 3 pack_b), M N K lda brs bcs has_bias has_c crs ccs ldy batch
   alen blen clen ylen, alpha beta (float bits); A[alen] B[blen] bias[N if has_bias] C[clen]
   aoff boff yoff[batch each, op 2] Y[ylen] (initial contents); output: Y[ylen] (op 3: the
   packed B, qc_sgemm_packed_size(K, N) floats). Op 4 (qc_conv2d_sgemm_f32) has its own record,
   see below. tests/test_c_sgemm.py writes and checks them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "qc_ops.h"

static FILE *fin, *fout;

static void *take(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 4);
    if (!p || fread(p, 1, bytes, fin) != bytes) {
        fprintf(stderr, "short input or out of memory (%u bytes)\n", (unsigned)bytes);
        exit(3);
    }
    return p;
}

static int32_t word(void)
{
    int32_t v;
    if (fread(&v, 4, 1, fin) != 1) {
        fprintf(stderr, "short input\n");
        exit(3);
    }
    return v;
}

static float fword(void)
{
    int32_t v = word();
    float f;
    memcpy(&f, &v, 4);
    return f;
}

int main(int argc, char **argv)
{
    int32_t op;
    if (argc != 3 || !(fin = fopen(argv[1], "rb")) || !(fout = fopen(argv[2], "wb"))) {
        fprintf(stderr, "usage: driver IN OUT\n");
        return 2;
    }
    while (fread(&op, 4, 1, fin) == 1) {
        if (op == 4) { /* conv: N C H W OC OH OW KH KW group p[6] has_bias nb; x w bias; out y */
            int d[10], p[6], i, has_bias, nb;
            size_t nx, nw, ny, K;
            float *x, *w, *bias, *y, *work;
            for (i = 0; i < 10; ++i) d[i] = word();
            for (i = 0; i < 6; ++i) p[i] = word();
            has_bias = word();
            nb = word();
            nx = (size_t)d[0] * d[1] * d[2] * d[3];
            K = (size_t)(d[1] / d[9]) * d[7] * d[8];
            nw = (size_t)d[4] * K;
            ny = (size_t)d[0] * d[4] * d[5] * d[6];
            x = take(nx * 4);
            w = take(nw * 4);
            bias = has_bias ? take((size_t)d[4] * 4) : NULL;
            y = malloc(ny * 4 + 4);
            work = malloc(K * (size_t)nb * 4 + 4);
            qc_conv2d_sgemm_f32(d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8], d[9], p, x, w, bias, y, work, nb);
            if (fwrite(y, 4, ny, fout) != ny) return 4;
            free(x); free(w); free(bias); free(y); free(work);
            continue;
        }
        {
        int M = word(), N = word(), K = word(), lda = word(), brs = word(), bcs = word();
        int has_bias = word(), has_c = word(), crs = word(), ccs = word(), ldy = word(), batch = word();
        int alen = word(), blen = word(), clen = word(), ylen = word();
        float alpha = fword(), beta = fword();
        float *A = take((size_t)alen * 4), *B = take((size_t)blen * 4);
        float *bias = has_bias ? take((size_t)N * 4) : NULL, *C = has_c ? take((size_t)clen * 4) : NULL;
        int *aoff = NULL, *boff = NULL, *yoff = NULL;
        float *Y, *work = malloc(qc_sgemm_packed_size(K, N) * 4 + 4);
        size_t out_floats = (size_t)ylen;
        if (op == 2) {
            aoff = take((size_t)batch * 4);
            boff = take((size_t)batch * 4);
            yoff = take((size_t)batch * 4);
        }
        Y = take((size_t)ylen * 4);
        if (op == 1) {
            qc_sgemm(M, N, K, A, lda, B, brs, bcs, alpha, C, crs, ccs, beta, bias, Y, ldy, work);
        } else if (op == 2) {
            qc_sgemm_batch(batch, aoff, boff, yoff, M, N, K, A, lda, B, brs, bcs, alpha, bias, Y, ldy, work);
        } else {
            qc_sgemm_pack_b(K, N, B, brs, bcs, work);
            free(Y);
            Y = work;
            work = NULL;
            out_floats = qc_sgemm_packed_size(K, N);
        }
        if (fwrite(Y, 4, out_floats, fout) != out_floats) {
            fprintf(stderr, "write failed\n");
            return 4;
        }
        free(A); free(B); free(bias); free(C); free(aoff); free(boff); free(yoff); free(Y); free(work);
        }
    }
    fclose(fout);
    printf("ok\n");
    return 0;
}
