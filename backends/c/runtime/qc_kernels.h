/* qc_kernels.h -- integer and float16 kernels of qc's C backend (C99, no malloc, no stdio).
 *
 * Variant chosen at compile time from macros the generated Makefile passes:
 * QC_KERNEL_NEON, QC_KERNEL_DOTPROD, QC_KERNEL_I8MM (aarch64), QC_KERNEL_MVE (Cortex-M55
 * Helium), QC_KERNEL_DSP (Cortex-M4 SMLAD); none -> portable C reference. Every variant is
 * bit-exact with the portable one. See docs/c-kernels.md for the layouts and the contract.
 */
#ifndef QC_KERNELS_H
#define QC_KERNELS_H

#include <stdint.h>
#include <stddef.h>

/* QC_HAVE_FP16 follows the compiler: defined when the target has FEAT_FP16 scalar arithmetic
   on aarch64 (-march=armv8.2-a+fp16, -mcpu=cortex-a76, ...), unless QC_NO_FP16 is defined. */
#if !defined(QC_HAVE_FP16) && !defined(QC_NO_FP16) && defined(__aarch64__) && \
    defined(__ARM_FEATURE_FP16_SCALAR_ARITHMETIC)
#define QC_HAVE_FP16 1
#endif

#if defined(QC_HAVE_FP16)
typedef __fp16 qc_f16;
#else
typedef uint16_t qc_f16;
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* int32 C[M][N] = sum_k A[m][k] * W[k][n]. A: int8 row-major M x K. Wp: the K x N int8 weight
   matrix packed by backends/c/packing.py pack_s8(w, variant) for the variant compiled in
   (layout is private to K; size = packing.packed_size_s8(K, N, variant) bytes). */
void qc_gemm_s8(int M, int N, int K, const int8_t *A, const int8_t *Wp, int32_t *C);

/* out[m][n] = clamp(out_zp + MultiplyByQuantizedMultiplier(C[m][n] + bias[n], mult[n], shift[n]),
   qmin, qmax), the TFLite / CMSIS-NN contract (Q31 multiplier, shift > 0 = left shift, rounding
   as TFLite's SaturatingRoundingDoublingHighMul + RoundingDivideByPOT). per_channel = 0: mult
   and shift are read at index 0; bias (may be NULL) is always indexed per column n. */
void qc_requant_s8(int M, int N, const int32_t *C, const int32_t *bias, const int32_t *mult,
                   const int32_t *shift, int per_channel, int32_t out_zp, int32_t qmin,
                   int32_t qmax, int8_t *out);

/* out[m][n] = (float)(C[m][n] + bias[n]) * scale[per_channel ? n : 0] (+ fbias[n] if fbias) */
void qc_dequant_acc_f32(int M, int N, const int32_t *C, const int32_t *bias, const float *scale,
                        int per_channel, const float *fbias, float *out);

/* Weight-only int4: out[M][N] = A (float32 M x K) x dequant(W), W int4 K x N with blocks of
   `block` rows along K: w_f = (q - zp) * scale[(k / block) * N + n]; zp NULL -> symmetric (0).
   Wp and zps packed by packing.pack_s4(q, variant) / pack_s4_zero_points(zp): two values per
   byte. */
void qc_matmul_f32_s4(int M, int N, int K, const float *A, const uint8_t *Wp, const float *scale,
                      const uint8_t *zps, int block, float *out);

/* float16 matmul (the outlier part of split-outliers): A M x K, W K x N, out M x N, all binary16.
   qc_f16 is __fp16 with native arithmetic where the target has FEAT_FP16 (QC_HAVE_FP16), else
   uint16_t storage with float32 arithmetic. Accumulates in float32 either way, rounds once. */
void qc_matmul_f16(int M, int N, int K, const qc_f16 *A, const qc_f16 *W, qc_f16 *out);
float qc_f16_to_f32(qc_f16 h);
qc_f16 qc_f32_to_f16(float f);   /* round to nearest even */

/* Elementwise quantize / dequantize (QuantizeLinear / DequantizeLinear, round half to even as ONNX) */
void qc_quantize_s8(size_t n, const float *x, float scale, int32_t zp, int8_t *y);
void qc_quantize_u8(size_t n, const float *x, float scale, int32_t zp, uint8_t *y);
void qc_dequantize_s8(size_t n, const int8_t *x, float scale, int32_t zp, float *y);
void qc_dequantize_u8(size_t n, const uint8_t *x, float scale, int32_t zp, float *y);

/* ---- int8 GEMM with the epilogue fused (i8gemm; docs/c-kernels.md "Fused epilogue") ----
   out[m][n] = epilogue(sum_k A[m * lda + k] * W[k][n], n), written at out[m * ldo + n]. The
   epilogue runs on the register tile before the store, so no int32 matrix is written:
     acc = sum + bias[n]                       (int32, wraps; bias NULL = 0: the zero-point fold)
     qc_gemm_s8_f32: v = (float)acc * scale[c] (+ fbias[n]), then act: QC_ACT_RELU max(v, 0),
                     QC_ACT_CLIP min(max(v, lo), hi)   (c = n if per_channel else 0)
     qc_gemm_s8_q8:  clamp(out_zp + MBQM(acc, mult[c], shift[c]), qmin, qmax), bit-exact with
                     qc_requant_s8 (ReLU / clip of a requantized output: narrow qmin / qmax)
   Every field not used by the output kind may be 0 / NULL; initialise the struct with
   designated initializers (C99) so fields added later (new activations, a residual input)
   default to "off". Slicing for a thread pool (no kernel change): rows [m0, m1) = A + m0 * lda,
   out + m0 * ldo, M = m1 - m0; columns [n0, n1) with n0 a multiple of qc_gemm_s8_panel() =
   N = n1 - n0, Wp + qc_gemm_s8_wp_offset(n0, K), out + n0 and qc_epilogue_slice(ep, n0). */
/* QC_ACT_GELU: GELU, erf form, qc_vmath.h's qc_vgelu / qc_geluf (the bits of qc_unary_f32 QC_GELU) */
enum qc_act { QC_ACT_NONE = 0, QC_ACT_RELU = 1, QC_ACT_CLIP = 2, QC_ACT_GELU = 3 };

struct qc_epilogue {
    const int32_t *bias;                 /* [N] int32 added to the sums, or NULL */
    int per_channel;                     /* scale / mult / shift indexed by n (else [0]) */
    const float *scale;                  /* f32 output */
    const float *fbias;                  /* f32 output: [N] float bias added after scaling, or NULL */
    int act;                             /* f32 output: enum qc_act */
    float lo, hi;                        /* f32 output: QC_ACT_CLIP bounds */
    const int32_t *mult, *shift;         /* q8 output: Q31 multiplier, shift (> 0 = left) */
    int32_t out_zp, qmin, qmax;          /* q8 output */
};

void qc_gemm_s8_f32(int M, int N, int K, const int8_t *A, int lda, const int8_t *Wp,
                    const struct qc_epilogue *ep, float *out, int ldo);
void qc_gemm_s8_q8(int M, int N, int K, const int8_t *A, int lda, const int8_t *Wp,
                   const struct qc_epilogue *ep, int8_t *out, int ldo);
/* Columns per packed weight panel of the variant compiled in (a column slice starts at a
   multiple), and the byte offset in Wp of column n0 (a multiple of it) for a K-deep matrix. */
int qc_gemm_s8_panel(void);
size_t qc_gemm_s8_wp_offset(int n0, int K);
/* *out = *ep with its per-column arrays advanced by n0 (per-tensor arrays unchanged). */
void qc_epilogue_slice(const struct qc_epilogue *ep, int n0, struct qc_epilogue *out);

/* ---- Additions beyond the fixed contract ---- */

/* The variant compiled in: "portable", "neon", "dotprod", "i8mm", "mve" or "dsp". */
const char *qc_kernel_variant(void);

/* One requantization step of qc_requant_s8 (before adding out_zp and clamping):
   TFLite MultiplyByQuantizedMultiplier. int32 arithmetic wraps (x << shift for shift > 0). */
int32_t qc_multiply_by_quantized_multiplier(int32_t x, int32_t mult, int32_t shift);

/* int8 convolution helper (qc_gemm_im2col.c). For one image x (NCHW: C x H x W) and the input
   channels c0 .. c0+cg-1 of one group, writes the (OH*OW) x K matrix, K = cg*KH*KW, with
   row oh*OW + ow and column (c - c0)*KH*KW + kh*KW + kw holding
   x[c][oh*stride_h - pad_top + kh*dil_h][ow*stride_w - pad_left + kw*dil_w], or pad_value
   (the input zero point, so padding means a real 0) outside the image. This column order is
   ONNX's weight layout: the group's weights OCg x cg x KH x KW reshaped to OCg x K and
   transposed are the K x N matrix for pack_s8, and qc_gemm_s8(OH*OW, OCg, K, cols, Wp, C)
   gives the output as (OH*OW) x OCg (pixels x channels: NHWC order for that group).
   With a zero point zx != 0 fold -zx * sum_k W[k][n] into the bias, as for MatMul. */
void qc_im2col_s8(int C, int H, int W, int KH, int KW, int stride_h, int stride_w, int pad_top,
                  int pad_left, int dil_h, int dil_w, int OH, int OW, int c0, int cg,
                  const int8_t *x, int8_t pad_value, int8_t *cols);

/* ---- W4A8 (qc_gemm_s4a8*.c): int4 block weights x int8 activations quantized at run time ---- */

/* Per row m and block b of 32 along K (the last one zero padded): amax = max |x|,
   sa = amax / 127, qa = round half to even (x * (127 / amax)) (0 when amax = 0), suma = sum qa.
   qa: M x ceil(K/32)*32 int8; sa, suma: M x ceil(K/32); QC_KERNEL_I8MM stores row pairs in SMMLA
   operand order and sa, suma twice (sizes: packing_s4.scratch_elems, order: activation_layout). */
void qc_quantize_q8b32(int M, int K, const float *A, int8_t *qa, float *sa, int32_t *suma);

/* out[m][n] = sum over blocks b, in order, of float(d) * (sa[m][b] * ws[b][n]) (float32, unfused)
   (+ bias[n] if bias), d = sum_k qa[m][k] * (q[k][n] - zp[b][n]) in int32. Wp, ws, wzp packed by
   backends/c/packing_s4.py pack_s4a8 for the variant compiled in; wzp NULL = zero point 8. */
void qc_gemm_s4a8(int M, int N, int K, const int8_t *qa, const float *sa, const int32_t *suma,
                  const uint8_t *Wp, const float *ws, const int8_t *wzp, const float *bias, float *out);

/* ---- W4A8 per token (qc_gemm_s4a8r.c): one activation scale per row, integer block scales ---- */

/* Per row m: sa[m] = max(max |x|, 1e-30) / 127, qa = round half to even (x / sa) per block of 32
   (the last one zero padded), nu = -(sum of the block's qa) as int16; qa and nu in tiles of 8 rows,
   block-major within a tile (row 8t + i, block b at index 8t * blocks + b * r + i). */
void qc_quantize_q8r(int M, int K, const float *A, int8_t *qa, float *sa, int16_t *nu);

/* out[m][n] = (float(D) * ws[n]) * sa[m] (+ bias[n]), D = sum_b wsi[b][n] * sum_k qa[m][k] *
   (q[k][n] - zp[b][n]) in int32 (exact for K <= 8192). Wp, wsi, wzp, ws packed by
   backends/c/packing_s4r.py pack_s4a8r. */
void qc_gemm_s4a8r(int M, int N, int K, const int8_t *qa, const float *sa, const int16_t *nu, const uint8_t *Wp,
                   const int32_t *wsi, const int8_t *wzp, const float *ws, const float *bias, float *out);

/* ---- int8 depthwise convolution (qc_conv_s8.c; backends/c/lower_conv_s8.py) ---- */

/* Row stride of the zero-point-padded plane the depthwise kernel builds in its scratch. */
#define QC_DW_STRIDE(pw) ((((pw) + 15) & ~15) + 16)

/* Bytes of scratch qc_conv_dw_s8_q8 / _f32 need: one padded plane (PH rows of
   QC_DW_STRIDE(PW), PH = (OH-1)*stride_h + (KH-1)*dil_h + 1, PW likewise) + 16 + OH*OW int32. */
size_t qc_conv_dw_s8_scratch(int KH, int KW, int stride_h, int stride_w, int dil_h, int dil_w, int OH,
                             int OW);

/* Depthwise conv of one NCHW image x (C x H x W, int8): group = C, weights w C x KH x KW (ONNX
   layout), padding with pad_value (the input zero point, so padding is a real 0):
   acc[c][oh][ow] = bias[c] + sum_{kh,kw} w[c][kh][kw] * x[c][oh*stride_h - pad_top + kh*dil_h]
   [ow*stride_w - pad_left + kw*dil_w] in exact int32 (bias NULL = 0; fold -zx * sum w[c] into it).
   _q8: y[c] = qc_requant_s8 of acc[c] with mult[c], shift[c], out_zp, clamp [qmin, qmax] (a ReLU
   or ReLU6 before the output Q folds into the clamp). _f32: y = (float)acc * scale[per_channel ?
   c : 0] (+ fbias[c] if fbias). y is C x OH x OW. scratch: qc_conv_dw_s8_scratch bytes,
   16-byte aligned. Every variant is bit-exact with the portable one. */
void qc_conv_dw_s8_q8(int C, int H, int W, int KH, int KW, int stride_h, int stride_w, int pad_top,
                      int pad_left, int dil_h, int dil_w, int OH, int OW, const int8_t *x,
                      int8_t pad_value, const int8_t *w, const int32_t *bias, const int32_t *mult,
                      const int32_t *shift, int32_t out_zp, int32_t qmin, int32_t qmax,
                      int8_t *scratch, int8_t *y);
void qc_conv_dw_s8_f32(int C, int H, int W, int KH, int KW, int stride_h, int stride_w, int pad_top,
                       int pad_left, int dil_h, int dil_w, int OH, int OW, const int8_t *x,
                       int8_t pad_value, const int8_t *w, const int32_t *bias, const float *scale,
                       int per_channel, const float *fbias, int8_t *scratch, float *y);

/* The 3x3 (dilation 1, stride_h = stride_w = stride) case of qc_conv_dw_s8_q8 for small planes
   and C % 16 == 0, vectorized across 16 channels in a pixels x channels scratch (NEON builds;
   otherwise, or C % 16 != 0, it is qc_conv_dw_s8_q8). Requires shift[c] <= 0 for every c.
   scratch: max(qc_conv_dw3x3_s8_nhwc_scratch, qc_conv_dw_s8_scratch) bytes. Bit-exact with
   qc_conv_dw_s8_q8. */
size_t qc_conv_dw3x3_s8_nhwc_scratch(int C, int H, int W, int stride, int pad_top, int pad_left, int OH, int OW);
void qc_conv_dw3x3_s8_q8_nhwc(int C, int H, int W, int stride, int pad_top, int pad_left, int OH, int OW,
                              const int8_t *x, int8_t pad_value, const int8_t *w, const int32_t *bias,
                              const int32_t *mult, const int32_t *shift, int32_t out_zp, int32_t qmin,
                              int32_t qmax, int8_t *scratch, int8_t *y);

/* y[j][i] = x[i][j]: an R x Cn int8 matrix (row stride ldx) into Cn x R (row stride ldy); NEON
   8 x 8 blocks on aarch64. The int8 Conv path's im2col of a 1x1 stride-1 unpadded conv and its
   pixels x channels -> NCHW output. */
void qc_transpose_s8(int R, int Cn, const int8_t *x, int ldx, int8_t *y, int ldy);

/* Pointwise (1x1, stride 1, unpadded, group 1) conv of one NCHW image x (K x P int8, P = H*W)
   (qc_conv_s8_1x1.c): acc[oc][p] = bias[oc] + sum_k w[oc][k] * x[k][p] in exact int32, w packed
   as [ceil(OC/4)][ceil(K/4)][4 oc][4 k] (zero past OC and K). _q8: y[oc][p] = the requantization
   of qc_requant_s8 with mult[oc], shift[oc], out_zp, clamp [qmin, qmax]; _f32: (float)acc *
   scale[per_channel ? oc : 0] (+ fbias[oc]), then clamped to [clip[0], clip[1]] unless clip is NULL (a
   Relu / Clip after the conv). y is OC x P (NCHW). scratch: qc_conv1x1_s8_scratch(K)
   bytes. SDOT on dotprod / i8mm, else portable; bit-exact with the portable loops. */
/* im2col in the K x P form qc_conv1x1_s8 reads (qc_conv_s8.c): row (c - c0)*KH*KW + kh*KW + kw
   (c in [c0, c0 + cg)) is x[c] at (oh*stride_h - pad_top + kh*dil_h, ow*stride_w - pad_left +
   kw*dil_w) for the OH*OW output pixels, pad_value outside; pad: qc_im2row_s8_pad_bytes bytes. */
size_t qc_im2row_s8_pad_bytes(int KH, int KW, int stride_h, int stride_w, int dil_h, int dil_w, int OH, int OW);
void qc_im2row_s8(int C, int H, int W, int KH, int KW, int stride_h, int stride_w, int pad_top,
                  int pad_left, int dil_h, int dil_w, int OH, int OW, int c0, int cg,
                  const int8_t *x, int8_t pad_value, int8_t *pad, int8_t *rows);
size_t qc_conv1x1_s8_scratch(int K);
void qc_conv1x1_s8_q8(int K, int P, int OC, const int8_t *x, const int8_t *wp, const int32_t *bias,
                      const int32_t *mult, const int32_t *shift, int32_t out_zp, int32_t qmin,
                      int32_t qmax, int8_t *scratch, int8_t *y);
void qc_conv1x1_s8_f32(int K, int P, int OC, const int8_t *x, const int8_t *wp, const int32_t *bias,
                       const float *scale, int per_channel, const float *fbias, const float *clip, int8_t *scratch,
                       float *y);

/* -- outliers (split-outliers, lower_outliers.py) ------------------------------------------------
   y[m][n] = act(y_in[m][n] + f32(f16(sum_k a[k] * W[k][n])) (+ bias[n])) (* scale[n]),
   a[k] = f32(f16(x[m * ldx + cols[k]])), the sum in float32 over k ascending: bit-identical with
   Gather, Cast to f16, qc_matmul_f16, Cast to f32, Add, then Add(bias), qc_unary_f32's GELU
   (QC_OUTL_GELU erf form, QC_OUTL_GELU_TANH tanh form) and Mul(scale). W: ncols x N binary16
   values stored widened to float32 (exact); bias, scale: N floats or NULL; y may be y_in (in
   place); scratch: 4 * ncols floats. */
enum qc_outl_act { QC_OUTL_NONE = 0, QC_OUTL_GELU = 1, QC_OUTL_GELU_TANH = 2 };
void qc_outlier_acc_f16(int M, int N, int ncols, const float *x, int ldx, const int32_t *cols,
                        const float *W, const float *y_in, const float *bias, int act, const float *scale,
                        float *y, float *scratch);
/* split-outliers{dtype=f32}: the same without the binary16 roundings (a[k] = x[m * ldx + cols[k]],
   the sum added as it is; W: the float32 rows); equal to Gather, MatMul, Add within float32 rounding */
void qc_outlier_acc_f32(int M, int N, int ncols, const float *x, int ldx, const int32_t *cols,
                        const float *W, const float *y_in, const float *bias, int act, const float *scale,
                        float *y, float *scratch);

#ifdef __cplusplus
}
#endif

#endif /* QC_KERNELS_H */
