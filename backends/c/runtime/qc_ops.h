/* qc C backend: float32 reference kernels and dtype-agnostic data movement.
 * C99, no malloc, no stdio. Generated model code calls these with shapes, strides and offsets
 * computed at compile time (qc/backends/c/lower.py), so the kernels stay small and general:
 * strides are in elements, shapes and strides are arrays of `rank` ints. */
#ifndef QC_OPS_H
#define QC_OPS_H

#include <stddef.h>
#include <stdint.h>

#define QC_MAX_RANK 8

/* -- data movement (any element size `es` in bytes) ------------------------------------------ */
/* y[i0..] (contiguous, row-major over `shape`) = x[sum_d i_d * xs[d]] */
void qc_copy_nd(int rank, const int *shape, const int *xs, size_t es, const void *x, void *y);
/* y[sum_d i_d * ys[d]] = x[i0..] (contiguous source; used to place a Concat input) */
void qc_place_nd(int rank, const int *shape, const int *ys, size_t es, const void *x, void *y);
void qc_copy(size_t bytes, const void *x, void *y);
/* y = n copies of the `es`-byte value at `value` */
void qc_fill(size_t n, size_t es, const void *value, void *y);
/* y[o][j][i] = data[o][idx[j]][i]; negative indices count from the end */
void qc_gather_i64(size_t outer, int axis_len, size_t inner_bytes, const void *data, size_t nidx,
                   const int64_t *idx, void *y);
void qc_gather_i32(size_t outer, int axis_len, size_t inner_bytes, const void *data, size_t nidx,
                   const int32_t *idx, void *y);
/* y = cond ? a : b, broadcast over `shape` with strides sc, sa, sb (0 on broadcast dims) */
void qc_where(int rank, const int *shape, const int *sc, const int *sa, const int *sb, size_t es,
              const uint8_t *cond, const void *a, const void *b, void *y);

/* Pad (ONNX semantics after negative pads are cropped away): y (contiguous over yshape) from
 * the source view x (xshape, strides xs; x points at its first element), placed at `begin`
 * (>= 0) along each axis. Positions outside the view take `value` (QC_PAD_CONSTANT; NULL for
 * the others), the nearest edge element, the reflection without repeating the edge (numpy's
 * reflect, any pad length) or the wrapped-around element. */
enum qc_pad_mode { QC_PAD_CONSTANT, QC_PAD_REFLECT, QC_PAD_EDGE, QC_PAD_WRAP };
void qc_pad_nd(int mode, int rank, const int *yshape, const int *xshape, const int *xs,
               const int *begin, size_t es, const void *x, const void *value, void *y);

/* -- Cast: element type codes are the ONNX TensorProto codes (1 f32, 2 u8, 3 i8, 5 i16, 6 i32,
 * 7 i64, 9 bool, 10 f16, 11 f64, 4 u16, 12 u32, 13 u64) -------------------------------------- */
void qc_cast(size_t n, int from, const void *x, int to, void *y);
float qc_ops_f16_to_f32(uint16_t h);
uint16_t qc_ops_f32_to_f16(float f);

/* -- elementwise ------------------------------------------------------------------------------ */
enum qc_binop {
    QC_ADD, QC_SUB, QC_MUL, QC_DIV, QC_POW, QC_MAX, QC_MIN, QC_MOD, QC_FMOD, QC_PRELU,
    QC_EQ, QC_LT, QC_GT, QC_LE, QC_GE, QC_AND, QC_OR, QC_XOR, QC_BITAND, QC_BITOR, QC_BITXOR
};
/* y = a OP b with broadcasting (strides 0 on broadcast dims); `dt` is the operands' type code
 * (f32, i32, i64, u8 or bool); comparisons write bool (uint8) */
void qc_binary(int op, int dt, int rank, const int *shape, const int *sa, const int *sb,
               const void *a, const void *b, void *y);

enum qc_unop {
    QC_NEG, QC_ABS, QC_RELU, QC_EXP, QC_LOG, QC_SQRT, QC_RECIP, QC_SIGMOID, QC_TANH, QC_ERF,
    QC_FLOOR, QC_CEIL, QC_ROUND, QC_SIN, QC_COS, QC_SOFTPLUS, QC_SOFTSIGN, QC_SIGN, QC_GELU,
    QC_GELU_TANH, QC_LEAKYRELU, QC_ELU, QC_SELU, QC_HARDSIGMOID, QC_HARDSWISH, QC_CLIP,
    QC_THRESHOLDEDRELU, QC_CELU, QC_MISH, QC_TAN, QC_ASIN, QC_ACOS, QC_ATAN, QC_SINH, QC_COSH,
    QC_ASINH, QC_ACOSH, QC_ATANH, QC_NOT,
    QC_SILU /* x * sigmoid(x) */
};
/* float32 unary ops; p0, p1 are the op's parameters (alpha/beta, clip bounds, ...). QC_NOT is
 * on bool (uint8) data. */
void qc_unary_f32(int op, size_t n, const float *x, float p0, float p1, float *y);
/* integer Neg / Abs / Sign / Relu / Clip on int32 or int64 (dt 6 or 7) */
void qc_unary_int(int op, int dt, size_t n, const void *x, int64_t p0, int64_t p1, void *y);

/* -- linear algebra --------------------------------------------------------------------------- */
/* Y[m][n] = alpha * sum_k A[m*ars + k*acs] * B[k*brs + n*bcs] + beta * C[m*crs + n*ccs]
 * (C may be NULL); Y row-major M x N */
void qc_gemm_f32(int M, int N, int K, const float *A, int ars, int acs, const float *B, int brs,
                 int bcs, float alpha, const float *C, int crs, int ccs, float beta, float *Y);
/* batched MatMul: batch b multiplies A + aoff[b] (M x K) by B + boff[b] (K x N) into Y + b*M*N */
void qc_matmul_f32(int batch, const int *aoff, const int *boff, int M, int N, int K,
                   const float *A, const float *B, float *Y);

/* -- SGEMM (qc_sgemm.c): the fast float32 GEMM the lowering calls; qc_gemm_f32 / qc_matmul_f32
 * above are its portable reference. NEON on aarch64, Helium on Cortex-M55, scalar elsewhere.
 * Y[m*ldy + n] = alpha * sum_k A[m*lda + k] * B(k, n) + beta * C[m*crs + n*ccs] + bias[n]
 * (C, bias may be NULL). B(k, n): brs = bcs = 0: B is packed (qc_sgemm_pack_b, or
 * backends/c/packing_f32.py at compile time); else B[k*brs + n*bcs], read in place when bcs == 1
 * and N % 4 == 0, otherwise packed first into `work` (qc_sgemm_packed_size(K, N) floats; NULL
 * when it is not needed). */
size_t qc_sgemm_packed_size(int K, int N);
/* panels of 16 columns: panel p is K rows of w floats at Bp + 16*p*K, w = 16 or, for the last
 * panel, its width rounded up to 4 (zero padded) */
void qc_sgemm_pack_b(int K, int N, const float *B, int brs, int bcs, float *Bp);
void qc_sgemm(int M, int N, int K, const float *A, int lda, const float *B, int brs, int bcs, float alpha,
              const float *C, int crs, int ccs, float beta, const float *bias, float *Y, int ldy, float *work);
/* batch b: qc_sgemm of A + aoff[b], B + boff[b] (in packed floats when brs = bcs = 0) into Y + yoff[b] */
void qc_sgemm_batch(int batch, const int *aoff, const int *boff, const int *yoff, int M, int N, int K,
                    const float *A, int lda, const float *B, int brs, int bcs, float alpha, const float *bias,
                    float *Y, int ldy, float *work);
/* qc_conv2d_f32 (same arguments and p) as GEMMs: per image and group, Y (OC/group x OH*OW) =
 * W (row-major, as stored) x im2col columns of `nb` output pixels at a time (nb a multiple of
 * 16), packed into `work` (C/group*KH*KW * nb floats). A 1x1 stride-1 unpadded conv with
 * OH*OW % 4 == 0 reads x in place (work unused, may be NULL). */
void qc_conv2d_sgemm_f32(int N, int C, int H, int W, int OC, int OH, int OW, int KH, int KW, int group,
                         const int *p, const float *x, const float *w, const float *bias, float *y, float *work,
                         int nb);

/* 2-D convolution, NCHW, weights OC x IC/group x KH x KW; bias may be NULL.
 * p = {stride_h, stride_w, pad_top, pad_left, dil_h, dil_w} */
void qc_conv2d_f32(int N, int C, int H, int W, int OC, int OH, int OW, int KH, int KW, int group,
                   const int *p, const float *x, const float *w, const float *bias, float *y);
/* pools, NCHW viewed as (N*C) planes; p = {kh, kw, stride_h, stride_w, pad_top, pad_left,
 * dil_h, dil_w, count_include_pad, pad_bottom, pad_right} */
void qc_maxpool2d_f32(int NC, int H, int W, int OH, int OW, const int *p, const float *x, float *y);
void qc_avgpool2d_f32(int NC, int H, int W, int OH, int OW, const int *p, const float *x, float *y);
/* y[o][c][i] = x * a[c] + b[c]  (BatchNormalization folded to an affine map) */
void qc_channel_affine_f32(int outer, int C, int inner, const float *a, const float *b,
                           const float *x, float *y);
void qc_lrn_f32(int N, int C, int HW, int size, float alpha, float beta, float bias,
                const float *x, float *y);

/* -- normalization and reductions -------------------------------------------------------------- */
/* softmax over the middle axis of (outer, n, inner); log = 1 for LogSoftmax */
void qc_softmax_f32(int outer, int n, int inner, int log, const float *x, float *y);
/* LayerNormalization over the last `n` elements of each of `outer` rows; scale/bias have n
 * elements (bias may be NULL); mean_out / invstd_out (outer elements each) may be NULL */
void qc_layernorm_f32(int outer, int n, float eps, const float *x, const float *scale,
                      const float *bias, float *y, float *mean_out, float *invstd_out);
/* RMSNorm over the last n elements of each of `outer` rows: y = x / sqrt(mean(x^2) + eps) * scale
 * (computed as x * (1 / sqrt(...)) * scale[i]; scale has n elements) */
void qc_rmsnorm_f32(int outer, int n, float eps, const float *x, const float *scale, float *y);

enum qc_reduce {
    QC_RSUM, QC_RMEAN, QC_RMAX, QC_RMIN, QC_RPROD, QC_RL1, QC_RL2, QC_RSUMSQ, QC_RLOGSUM,
    QC_RLOGSUMEXP
};
/* reduce x (contiguous over `shape`) into y: ys[d] is y's stride along d, 0 on reduced dims;
 * ny output elements, count = elements per output */
void qc_reduce_f32(int op, int rank, const int *shape, const int *ys, size_t ny, size_t count,
                   const float *x, float *y);
/* ArgMax / ArgMin over the middle axis of (outer, n, inner) */
void qc_argmax_f32(int outer, int n, int inner, int is_min, int select_last, const float *x,
                   int64_t *y);

/* -- Resize and ConvTranspose (qc_ops_resize.c) ------------------------------------------------- */
/* nearest Resize of any element size: y[j0][j1].. = x[sum_d tab_d[j_d]], where the tables
 * tab_d (shape[d] input element offsets each, already times the input stride) follow one
 * another in `idx`; `shape` is the output shape. An offset of -1 (tf_crop_and_resize outside
 * the input) writes the `es`-byte value at `fill` instead. */
void qc_resize_nearest(int rank, const int *shape, const int *idx, size_t es, const void *x,
                       const void *fill, void *y);
/* one axis of a separable (linear / cubic) Resize of (outer, in_len, inner) into (outer, out_len,
 * inner): y[o][j][i] = sum_t w[j*taps + t] * x[o][idx[j*taps + t]][i], or `fill` where
 * outside[j] != 0 (outside may be NULL) */
void qc_resize_axis_f32(int outer, int in_len, int out_len, int inner, int taps, const int *idx,
                        const float *w, const int *outside, float fill, const float *x, float *y);
/* 2-D ConvTranspose, NCHW, weights C x OC/group x KH x KW; bias may be NULL; y is OH x OW
 * (output_padding already in it). p = {stride_h, stride_w, pad_top, pad_left, dil_h, dil_w} */
void qc_convtranspose2d_f32(int N, int C, int H, int W, int OC, int OH, int OW, int KH, int KW,
                            int group, const int *p, const float *x, const float *w,
                            const float *bias, float *y);

/* -- recurrent layers (qc_rnn.c): one direction of an ONNX LSTM / GRU over T steps ---------- */
/* x(t, b) = x + t*xs_t + b*xs_b (I contiguous floats); W (4H x I) and R (4H x H) row-major in
 * ONNX gate order (LSTM i o f c, GRU z r h); bias: Wb then Rb (8H / 6H) or NULL; peep: P (3H,
 * i o f) or NULL; h0 / c0 and yh / yc: row b at b*hs_b, or NULL (zeros / not written);
 * y(t, b) = y + t*ys_t + b*ys_b or NULL; clip <= 0: no clipping. work: 2*B*4H + 2*B*H floats
 * (LSTM), 2*B*3H + 3*B*H (GRU). Activations: Sigmoid / Tanh / Tanh (the ONNX defaults). */
void qc_lstm_f32(int T, int B, int I, int H, int reverse, int input_forget, float clip,
                 const float *x, int xs_t, int xs_b, const float *W, const float *R,
                 const float *bias, const float *peep, const float *h0, const float *c0, int hs_b,
                 float *y, int ys_t, int ys_b, float *yh, float *yc, float *work);
void qc_gru_f32(int T, int B, int I, int H, int reverse, int linear_before_reset, float clip,
                const float *x, int xs_t, int xs_b, const float *W, const float *R, const float *bias,
                const float *h0, int hs_b, float *y, int ys_t, int ys_b, float *yh, float *work);

/* -- fused ops (qc_attention.c, qc_ops_fused.c; the passes fuse-*, docs/c-backend.md) ------- */
/* qc.Attention per (batch b, head h < H; K/V head h / (H / Hkv)): y_i = softmax(scale * q_i . K^T
 * + mask_i) V for the Lq query rows i, Lk keys, head size d (Q, K) and dv (V). Q row i of head h
 * is at q + b*qs[0] + h*qs[1] + i*qs[2] (d contiguous floats), likewise K, V (ks, vs) and y
 * (ys); mask (may be NULL) element (i, j) at mask + b*ms[0] + h*ms[1] + i*ms[2] + j*ms[3].
 * causal != 0: row i reads keys j < i + causal (causal = 1: j <= i; a cache of past keys before
 * the Lq new ones: causal = past + 1). work: 4 * Lk floats when causal, else (8 + d) * Lkp +
 * (dv & ~7) * Lk floats, Lkp = Lk rounded up to 8 (K^T, V and 8 score rows, packed). */
void qc_attention_f32(int B, int H, int Hkv, int Lq, int Lk, int d, int dv, float scale, int causal,
                      const float *q, const int *qs, const float *k, const int *ks, const float *v,
                      const int *vs, const float *mask, const int *ms, float *y, const int *ys,
                      float *work);
/* qc.CachedAttention (the C decode runtime): appends the S new key / value rows of each of the
 * Hkv heads (row i of head h at k_new + h*kns[1] + i*kns[2], likewise v_new) to the cache at slot
 * past + i (cache_k: [Hkv][max_context][d], cache_v: [Hkv][max_context][dv]), then attends query
 * row i to slots 0 .. past + i: qc_attention_f32 with causal = past + 1. work: 4 * (past + S)
 * floats. */
void qc_cached_attention_f32(int H, int Hkv, int S, int past, int max_context, int d, int dv, float scale,
                             const float *q, const int *qs, const float *k_new, const int *kns,
                             const float *v_new, const int *vns, float *cache_k, float *cache_v, float *y,
                             const int *ys, float *work);
/* qc.RMSNormalization: qc_rmsnorm_f32 above (qc_ops_nn.c) */
/* qc.Rope, rotate-half: y = x * cos + concat(-x[D/2:], x[:D/2]) * sin per row of D floats. y is
 * contiguous [n0][n1][n2][D]; row (i0, i1, i2) of x at x + i0*xs[0] + i1*xs[1] + i2*xs[2], of
 * cos and sin at offset i0*ts[0] + i1*ts[1] + i2*ts[2] (0 on broadcast axes); the unfused graph's
 * bits (qc_rope_half_f32 of qc_vmath.h) */
void qc_rope_f32(int n0, int n1, int n2, int D, const float *x, const int *xs, const float *cs,
                 const float *sn, const int *ts, float *y);
/* qc.AddLayerNormalization: y = LayerNormalization(a + b) over rows of n floats (scale: n
 * floats, bias: n floats or NULL); y may be a or b. NEON / Helium / plain C give the same bits. */
void qc_add_layernorm_f32(int outer, int n, float eps, const float *a, const float *b,
                          const float *scale, const float *bias, float *y);
/* qc.SiLUMul (fuse-silu-mul, a SwiGLU MLP's gate): y = (silu(g) * u) * c over rows of n floats,
 * c: n floats or NULL (then y = silu(g) * u); the unfused SiLU, Mul, Mul's bits. y may be g or u. */
void qc_silu_mul_f32(int outer, int n, const float *g, const float *u, const float *c, float *y);
/* qc.AddRMSNormalization (fuse-add-rmsnorm): s = a + b, y = RMSNormalization(s) (scale: n floats)
 * over rows of n floats; the bits of an Add then qc_rmsnorm_f32. s may be a or b, y neither. */
void qc_add_rmsnorm_f32(int outer, int n, float eps, const float *a, const float *b, const float *scale,
                        float *s, float *y);

#endif
