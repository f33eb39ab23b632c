/* Test driver for qc_kernels.h: reads a stream of kernel calls from argv[1], writes each
   call's output to argv[2] in order and prints the variant compiled in. Record layout (all
   little-endian): int32 op, int32 header words (per op), then the input arrays. The Python
   side (tests/test_c_kernels.py) writes the records and parses the outputs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "qc_kernels.h"
#include "qc_vmath.h"

enum { OP_GEMM = 1, OP_REQUANT, OP_DEQUANT_ACC, OP_S4, OP_F16, OP_Q_S8, OP_Q_U8, OP_DQ_S8,
       OP_DQ_U8, OP_MBQM, OP_CVT_F16, OP_IM2COL, OP_GEMM_EP, OP_GELU };

static FILE *fin, *fout;

static void *take(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
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

static void emit(const void *p, size_t bytes)
{
    if (fwrite(p, 1, bytes, fout) != bytes) {
        fprintf(stderr, "write failed\n");
        exit(4);
    }
}

static void *opt(int present, size_t bytes)
{
    return present ? take(bytes) : NULL;
}

static void one(int32_t op)
{
    if (op == OP_GEMM) {
        int M = word(), N = word(), K = word(), wlen = word();
        int8_t *A = take((size_t)M * K), *W = take((size_t)wlen);
        int32_t *C = malloc((size_t)M * N * 4 + 4);
        qc_gemm_s8(M, N, K, A, W, C);
        emit(C, (size_t)M * N * 4);
        free(A); free(W); free(C);
    } else if (op == OP_GEMM_EP) {
        /* header: M N K wlen lda ldo kind(1 f32, 2 q8) per_channel has_bias has_fbias act
           lo hi (float bits) out_zp qmin qmax; then A (M x lda), Wp, bias, scale or
           mult + shift, fbias. The output is M x ldo, pre-filled with 0x5A (untouched
           padding columns must survive). */
        int M = word(), N = word(), K = word(), wlen = word(), lda = word(), ldo = word();
        int kind = word(), pc = word(), hb = word(), hf = word();
        struct qc_epilogue ep;
        size_t nc, osz;
        int8_t *A, *W;
        void *out;
        memset(&ep, 0, sizeof ep);
        ep.per_channel = pc;
        ep.act = word();
        ep.lo = fword();
        ep.hi = fword();
        ep.out_zp = word();
        ep.qmin = word();
        ep.qmax = word();
        nc = pc ? (size_t)N : 1;
        A = take((size_t)M * lda);
        W = take((size_t)wlen);
        ep.bias = opt(hb, (size_t)N * 4);
        if (kind == 1) {
            ep.scale = take(nc * 4);
        } else {
            ep.mult = take(nc * 4);
            ep.shift = take(nc * 4);
        }
        ep.fbias = opt(hf, (size_t)N * 4);
        osz = (size_t)M * ldo * (kind == 1 ? 4 : 1);
        out = malloc(osz + 4);
        memset(out, 0x5A, osz);
        if (kind == 1) {
            qc_gemm_s8_f32(M, N, K, A, lda, W, &ep, out, ldo);
        } else {
            qc_gemm_s8_q8(M, N, K, A, lda, W, &ep, out, ldo);
        }
        emit(out, osz);
        free(A); free(W); free((void *)ep.bias); free((void *)ep.scale); free((void *)ep.mult);
        free((void *)ep.shift); free((void *)ep.fbias); free(out);
    } else if (op == OP_REQUANT) {
        int M = word(), N = word(), pc = word(), zp = word(), lo = word(), hi = word();
        int hb = word();
        size_t nc = pc ? (size_t)N : 1;
        int32_t *C = take((size_t)M * N * 4), *bias = opt(hb, (size_t)N * 4);
        int32_t *mult = take(nc * 4), *shift = take(nc * 4);
        int8_t *out = malloc((size_t)M * N + 1);
        qc_requant_s8(M, N, C, bias, mult, shift, pc, zp, lo, hi, out);
        emit(out, (size_t)M * N);
        free(C); free(bias); free(mult); free(shift); free(out);
    } else if (op == OP_DEQUANT_ACC) {
        int M = word(), N = word(), pc = word(), hb = word(), hf = word();
        size_t nc = pc ? (size_t)N : 1;
        int32_t *C = take((size_t)M * N * 4), *bias = opt(hb, (size_t)N * 4);
        float *scale = take(nc * 4), *fbias = opt(hf, (size_t)N * 4);
        float *out = malloc((size_t)M * N * 4 + 4);
        qc_dequant_acc_f32(M, N, C, bias, scale, pc, fbias, out);
        emit(out, (size_t)M * N * 4);
        free(C); free(bias); free(scale); free(fbias); free(out);
    } else if (op == OP_S4) {
        int M = word(), N = word(), K = word(), block = word(), wlen = word(), zlen = word();
        size_t ns = (size_t)((K + block - 1) / block) * N;
        float *A = take((size_t)M * K * 4);
        uint8_t *W = take((size_t)wlen);
        float *scale = take(ns * 4);
        uint8_t *zps = opt(zlen > 0, (size_t)zlen);
        float *out = malloc((size_t)M * N * 4 + 4);
        qc_matmul_f32_s4(M, N, K, A, W, scale, zps, block, out);
        emit(out, (size_t)M * N * 4);
        free(A); free(W); free(scale); free(zps); free(out);
    } else if (op == OP_F16) {
        int M = word(), N = word(), K = word();
        qc_f16 *A = take((size_t)M * K * 2), *W = take((size_t)K * N * 2);
        qc_f16 *out = malloc((size_t)M * N * 2 + 2);
        qc_matmul_f16(M, N, K, A, W, out);
        emit(out, (size_t)M * N * 2);
        free(A); free(W); free(out);
    } else if (op == OP_Q_S8 || op == OP_Q_U8) {
        size_t n = (size_t)word();
        float scale = fword();
        int32_t zp = word();
        float *x = take(n * 4);
        void *y = malloc(n + 1);
        if (op == OP_Q_S8) {
            qc_quantize_s8(n, x, scale, zp, y);
        } else {
            qc_quantize_u8(n, x, scale, zp, y);
        }
        emit(y, n);
        free(x); free(y);
    } else if (op == OP_DQ_S8 || op == OP_DQ_U8) {
        size_t n = (size_t)word();
        float scale = fword();
        int32_t zp = word();
        void *x = take(n);
        float *y = malloc(n * 4 + 4);
        if (op == OP_DQ_S8) {
            qc_dequantize_s8(n, x, scale, zp, y);
        } else {
            qc_dequantize_u8(n, x, scale, zp, y);
        }
        emit(y, n * 4);
        free(x); free(y);
    } else if (op == OP_MBQM) {
        size_t i, n = (size_t)word();
        int32_t *x = take(n * 4), *mult = take(n * 4), *shift = take(n * 4);
        for (i = 0; i < n; ++i) {
            x[i] = qc_multiply_by_quantized_multiplier(x[i], mult[i], shift[i]);
        }
        emit(x, n * 4);
        free(x); free(mult); free(shift);
    } else if (op == OP_CVT_F16) {
        /* float32 -> binary16 (qc_f32_to_f16), then those halves back to float32 */
        size_t i, n = (size_t)word();
        float *x = take(n * 4), *back = malloc(n * 4 + 4);
        qc_f16 *h = malloc(n * 2 + 2);
        for (i = 0; i < n; ++i) {
            h[i] = qc_f32_to_f16(x[i]);
            back[i] = qc_f16_to_f32(h[i]);
        }
        emit(h, n * 2);
        emit(back, n * 4);
        free(x); free(h); free(back);
    } else if (op == OP_IM2COL) {
        int h[16], i;
        size_t rows, K;
        int8_t *x, *cols;
        for (i = 0; i < 16; ++i) {
            h[i] = word();
        }
        /* C H W KH KW sh sw pt pl dh dw OH OW c0 cg pad */
        rows = (size_t)h[11] * h[12];
        K = (size_t)h[14] * h[3] * h[4];
        x = take((size_t)h[0] * h[1] * h[2]);
        cols = malloc(rows * K + 1);
        qc_im2col_s8(h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9], h[10], h[11],
                     h[12], h[13], h[14], x, (int8_t)h[15], cols);
        emit(cols, rows * K);
        free(x); free(cols);
    } else if (op == OP_GELU) {
        /* header: n; then n floats. GELU as qc_unary_f32's QC_GELU computes it: qc_vgelu on
           whole vectors, qc_geluf on the rest */
        size_t n = (size_t)word(), i = 0;
        float *x = take(n * 4), *y = malloc(n * 4 + 4);
#if defined(QC_VM_NEON) || defined(QC_VM_MVE)
        for (; i + 4 <= n; i += 4) {
            qc_vf_store(y + i, qc_vgelu(qc_vf_load(x + i)));
        }
#endif
        for (; i < n; ++i) {
            y[i] = qc_geluf(x[i]);
        }
        emit(y, n * 4);
        free(x); free(y);
    } else {
        fprintf(stderr, "unknown op %d\n", (int)op);
        exit(5);
    }
}

int main(int argc, char **argv)
{
    int32_t op;
    if (argc != 3) {
        fprintf(stderr, "usage: driver IN OUT\n");
        return 2;
    }
    fin = fopen(argv[1], "rb");
    fout = fopen(argv[2], "wb");
    if (!fin || !fout) {
        fprintf(stderr, "cannot open %s or %s\n", argv[1], argv[2]);
        return 2;
    }
    while (fread(&op, 4, 1, fin) == 1) {
        one(op);
    }
    fclose(fin);
    fclose(fout);
    printf("variant=%s fp16=%d\n", qc_kernel_variant(),
#if defined(QC_HAVE_FP16)
           1
#else
           0
#endif
    );
    return 0;
}
