/* qc_gemm_s8 for Cortex-M4 DSP (QC_KERNEL_DSP, Armv7E-M). Portable packing (W transposed,
   N rows of K bytes: a column's K bytes are contiguous).
   Tiles of 4 rows x 1 column (the bottom band 1, 2 or 3 rows), four k at a time: SMLAD
   multiplies two signed halfword pairs and adds both products to an int32 accumulator (the
   same modular int32 sum as the portable kernel). A is widened once per row band and k chunk
   into a stack buffer (the CMSIS-NN trick): per k-quad q and row r, the words SXTB16(x) =
   (a[4q], a[4q+2]) and SXTB16(x ror 8) = (a[4q+1], a[4q+3]) of the row's word x, the band's
   rows in turn, so one pointer walks them with LDM. Per quad the inner loop then does 1 LDR
   of W (post-indexed) + 2 SXTB16 + 2 LDM of A + 8 SMLAD for 4 rows (hand-written asm under
   GCC, four quads per turn; a C loop with other compilers or -DQC_GEMM_S8_NO_ASM). Bounded
   stack, any K: chunks of QC_DSP_KC = 96 k (768 bytes of widened A) and blocks of QC_DSP_NB =
   64 columns whose int32 sums stay in a 1 KB buffer across the chunks (about 2 KB in all:
   1,992 bytes of frame for qc_gemm_s8_run with GCC 12 -O2, 52 for the column kernel). The K % 4 tail is scalar. Only valid results are stored (int32 copied
   out, else the epilogue of qc_gemm_s8_tile.h). */
#include "qc_kernels.h"

#if defined(QC_KERNEL_DSP)
#if !defined(__ARM_FEATURE_DSP)
#error "QC_KERNEL_DSP needs an Armv7E-M or later core with the DSP extension (-mcpu=cortex-m4)"
#endif
#include <arm_acle.h>
#include <string.h>
#include "qc_gemm_s8_tile.h"

#define QC_DSP_KC 96    /* k per chunk (a multiple of 16): 4 rows x 96 k x 2 bytes = 768 bytes of widened A */
#define QC_DSP_NB 64    /* columns per block: 64 x 4 int32 sums = 1 KB */

static inline uint32_t qc_ld32(const int8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);   /* unaligned LDR, allowed on Armv7E-M */
    return v;
}

/* SXTB16 of the word rotated right by 8 (bytes 1 and 3); GCC 12 does not fold a separate
   rotate into SXTB16, so one instruction in asm. */
static inline int16x2_t qc_sxtb16_ror8(uint32_t x)
{
#if defined(__GNUC__) && !defined(QC_GEMM_S8_NO_ASM)
    int16x2_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
#else
    return __sxtb16((x >> 8) | (x << 24));
#endif
}

/* One k chunk of a block of columns: acc[4 * j + r] += sum over the chunk's quads of row r
   (widened, buf) times column j (w + j * (quads * 4 + wskip), int8). ncols >= 1. */
struct qc_dsp_job {
    const uint32_t *buf;   /* offset 0 */
    const int8_t *w;       /* 4: column 0 at the chunk's first k */
    int32_t quads;         /* 8 */
    int32_t ncols;         /* 12 */
    int32_t wskip;         /* 16: K - 4 * quads, from a column's chunk end to the next's start */
    int32_t *acc;          /* 20 */
};

/* The SMLADs of one quad: row r's two widened words (RE, RO) with W's halfwords. */
#define QC_DSP_MAC(C, RE, RO)                                                            \
    "smlad " C ", " RE ", r12, " C "\n\t"                                                \
    "smlad " C ", " RO ", lr, " C "\n\t"
#define QC_DSP_WLOAD                                                                     \
    "ldr lr, [r1], #4\n\t"                                                               \
    "sxtb16 r12, lr\n\t"                                                                 \
    "sxtb16 lr, lr, ror #8\n\t"
#define QC_DSP_QUAD4                                                                     \
    "ldmia r0!, {r8, r9, r10, r11}\n\t" QC_DSP_WLOAD                                     \
    QC_DSP_MAC("r4", "r8", "r9") QC_DSP_MAC("r5", "r10", "r11")                          \
    "ldmia r0!, {r8, r9, r10, r11}\n\t"                                                  \
    QC_DSP_MAC("r6", "r8", "r9") QC_DSP_MAC("r7", "r10", "r11")
#define QC_DSP_QUAD3                                                                     \
    "ldmia r0!, {r8, r9, r10, r11}\n\t" QC_DSP_WLOAD                                     \
    QC_DSP_MAC("r4", "r8", "r9") QC_DSP_MAC("r5", "r10", "r11")                          \
    "ldmia r0!, {r8, r9}\n\t"                                                            \
    QC_DSP_MAC("r6", "r8", "r9")
#define QC_DSP_QUAD2                                                                     \
    "ldmia r0!, {r8, r9, r10, r11}\n\t" QC_DSP_WLOAD                                     \
    QC_DSP_MAC("r4", "r8", "r9") QC_DSP_MAC("r5", "r10", "r11")
#define QC_DSP_QUAD1                                                                     \
    "ldmia r0!, {r8, r9}\n\t" QC_DSP_WLOAD                                               \
    QC_DSP_MAC("r4", "r8", "r9")

#if defined(__GNUC__) && !defined(QC_GEMM_S8_NO_ASM)
/* qc_dsp_colsR(job), R = 1..4 rows: r0 A pointer, r1 W pointer, r2 quad count (then turns of
   4), r3 sums; r4-r7 the 4 sums (all 4 loaded and stored whatever R), r8-r11 one LDM of A
   (two rows), r12 the even W halfwords, lr the W word then its odd halfwords. Frame: [sp] buf,
   [sp, #4] quads (or turns), [sp, #8] wskip, [sp, #12] the end of the sums. A quad count that
   is a multiple of 4 (every full chunk) takes a column loop without the remainder tests. */
#define QC_DSP_COLS(NAME, QUAD)                                                          \
    __asm__(".pushsection .text\n\t"                                                     \
            ".syntax unified\n\t"                                                        \
            ".thumb\n\t"                                                                 \
            ".balign 4\n\t"                                                              \
            ".type " NAME ", %function\n\t"                                              \
            ".thumb_func\n"                                                              \
            NAME ":\n\t"                                                                 \
            "push {r4, r5, r6, r7, r8, r9, r10, r11, lr}\n\t"                           \
            "sub sp, sp, #16\n\t"                                                       \
            "ldr r12, [r0]\n\t"                                                         \
            "str r12, [sp]\n\t"                                                         \
            "ldr r2, [r0, #8]\n\t"                                                      \
            "ldr r12, [r0, #16]\n\t"                                                    \
            "str r12, [sp, #8]\n\t"                                                     \
            "ldr r1, [r0, #4]\n\t"                                                      \
            "ldr r3, [r0, #20]\n\t"                                                     \
            "ldr r12, [r0, #12]\n\t"                                                    \
            "add r12, r3, r12, lsl #4\n\t"                                              \
            "str r12, [sp, #12]\n\t"                                                    \
            "tst r2, #3\n\t"   /* quads % 4 != 0: the general loop */                   \
            "bne 6f\n\t"                                                                \
            "lsrs r2, r2, #2\n\t"                                                       \
            "str r2, [sp, #4]\n\t"                                                      \
            "1:\n\t"                                                                    \
            "ldmia r3, {r4, r5, r6, r7}\n\t"                                            \
            "ldr r0, [sp]\n\t"                                                          \
            "ldr r2, [sp, #4]\n\t"                                                      \
            "3:\n\t"                                                                    \
            QUAD QUAD QUAD QUAD                                                         \
            "subs r2, r2, #1\n\t"                                                       \
            "bne 3b\n\t"                                                                \
            "stmia r3!, {r4, r5, r6, r7}\n\t"                                           \
            "ldr r12, [sp, #8]\n\t"                                                     \
            "add r1, r1, r12\n\t"                                                       \
            "ldr r12, [sp, #12]\n\t"                                                    \
            "cmp r3, r12\n\t"                                                           \
            "bne 1b\n\t"                                                                \
            "b 9f\n\t"                                                                  \
            "6:\n\t"                                                                    \
            "str r2, [sp, #4]\n\t"                                                      \
            "7:\n\t"                                                                    \
            "ldmia r3, {r4, r5, r6, r7}\n\t"                                            \
            "ldr r0, [sp]\n\t"                                                          \
            "ldr r2, [sp, #4]\n\t"                                                      \
            "lsrs r2, r2, #1\n\t"   /* C: an odd quad */                                \
            "bcc 2f\n\t"                                                                \
            QUAD                                                                        \
            "2:\n\t"                                                                    \
            "lsrs r2, r2, #1\n\t"   /* C: a pair; Z: no turn (no flag changes below) */ \
            "bcc 5f\n\t"                                                                \
            QUAD QUAD                                                                   \
            "5:\n\t"                                                                    \
            "beq 4f\n\t"                                                                \
            "8:\n\t"                                                                    \
            QUAD QUAD QUAD QUAD                                                         \
            "subs r2, r2, #1\n\t"                                                       \
            "bne 8b\n\t"                                                                \
            "4:\n\t"                                                                    \
            "stmia r3!, {r4, r5, r6, r7}\n\t"                                           \
            "ldr r12, [sp, #8]\n\t"                                                     \
            "add r1, r1, r12\n\t"                                                       \
            "ldr r12, [sp, #12]\n\t"                                                    \
            "cmp r3, r12\n\t"                                                           \
            "bne 7b\n\t"                                                                \
            "9:\n\t"                                                                    \
            "add sp, sp, #16\n\t"                                                       \
            "pop {r4, r5, r6, r7, r8, r9, r10, r11, pc}\n\t"                            \
            ".size " NAME ", .-" NAME "\n\t"                                               \
            ".popsection\n")
void qc_dsp_cols4(const struct qc_dsp_job *job);
void qc_dsp_cols3(const struct qc_dsp_job *job);
void qc_dsp_cols2(const struct qc_dsp_job *job);
void qc_dsp_cols1(const struct qc_dsp_job *job);
QC_DSP_COLS("qc_dsp_cols4", QC_DSP_QUAD4);
QC_DSP_COLS("qc_dsp_cols3", QC_DSP_QUAD3);
QC_DSP_COLS("qc_dsp_cols2", QC_DSP_QUAD2);
QC_DSP_COLS("qc_dsp_cols1", QC_DSP_QUAD1);

static void qc_dsp_cols(const struct qc_dsp_job *job, int rows)
{
    if (rows == 4) {
        qc_dsp_cols4(job);
    } else if (rows == 3) {
        qc_dsp_cols3(job);
    } else if (rows == 2) {
        qc_dsp_cols2(job);
    } else {
        qc_dsp_cols1(job);
    }
}
#else
static void qc_dsp_cols(const struct qc_dsp_job *job, int rows)
{
    const int8_t *w = job->w;
    int32_t *acc = job->acc;
    int j, q, r;
    for (j = 0; j < job->ncols; ++j, acc += 4, w += job->wskip) {
        const uint32_t *b = job->buf;
        for (q = 0; q < job->quads; ++q, w += 4) {
            const uint32_t x = qc_ld32(w);
            const int16x2_t xe = __sxtb16(x), xo = qc_sxtb16_ror8(x);
            for (r = 0; r < rows; ++r, b += 2) {
                acc[r] = __smlad((int16x2_t)b[1], xo, __smlad((int16x2_t)b[0], xe, acc[r]));
            }
        }
    }
}
#endif

/* Widen k0 .. k0 + 4 * quads - 1 of rows a[0..rows-1] into buf (layout above). */
static void qc_dsp_widen(const int8_t *const a[4], int rows, int k0, int quads, uint32_t *buf)
{
    int q, r;
    if (rows == 4) {
        const int8_t *a0 = a[0] + k0, *a1 = a[1] + k0, *a2 = a[2] + k0, *a3 = a[3] + k0;
        for (q = 0; q < quads; ++q, buf += 8, a0 += 4, a1 += 4, a2 += 4, a3 += 4) {
            const uint32_t x0 = qc_ld32(a0), x1 = qc_ld32(a1), x2 = qc_ld32(a2), x3 = qc_ld32(a3);
            buf[0] = (uint32_t)__sxtb16(x0); buf[1] = (uint32_t)qc_sxtb16_ror8(x0);
            buf[2] = (uint32_t)__sxtb16(x1); buf[3] = (uint32_t)qc_sxtb16_ror8(x1);
            buf[4] = (uint32_t)__sxtb16(x2); buf[5] = (uint32_t)qc_sxtb16_ror8(x2);
            buf[6] = (uint32_t)__sxtb16(x3); buf[7] = (uint32_t)qc_sxtb16_ror8(x3);
        }
        return;
    }
    for (q = 0; q < quads; ++q) {
        for (r = 0; r < rows; ++r, buf += 2) {
            const uint32_t x = qc_ld32(a[r] + k0 + 4 * q);
            buf[0] = (uint32_t)__sxtb16(x);
            buf[1] = (uint32_t)qc_sxtb16_ror8(x);
        }
    }
}

void qc_gemm_s8_run(int M, int N, int K, const int8_t *A, int lda, const int8_t *Wp,
                    const struct qc_ep_ctx *ctx)
{
    uint32_t buf[QC_DSP_KC / 4 * 8];
    int32_t acc[QC_DSP_NB * 4];
    const int kq = K & ~3, single = kq <= QC_DSP_KC;
    int m, n0, k0, r, j, k;
    for (m = 0; m < M; m += 4) {
        const int rows = M - m < 4 ? M - m : 4;
        const int8_t *a[4];
        for (r = 0; r < 4; ++r) {
            a[r] = A + (size_t)(m + (r < rows ? r : rows - 1)) * (size_t)lda;
        }
        if (single) {
            qc_dsp_widen(a, rows, 0, kq >> 2, buf);
        }
        for (n0 = 0; n0 < N; n0 += QC_DSP_NB) {
            const int nc = N - n0 < QC_DSP_NB ? N - n0 : QC_DSP_NB;
            const int8_t *w = Wp + (size_t)n0 * (size_t)K;
            memset(acc, 0, (size_t)nc * 4 * sizeof(int32_t));
            for (k0 = 0; k0 < kq; k0 += QC_DSP_KC) {
                const int kc = kq - k0 < QC_DSP_KC ? kq - k0 : QC_DSP_KC;
                struct qc_dsp_job job;
                if (!single) {
                    qc_dsp_widen(a, rows, k0, kc >> 2, buf);
                }
                job.buf = buf;
                job.w = w + k0;
                job.quads = kc >> 2;
                job.ncols = nc;
                job.wskip = K - kc;
                job.acc = acc;
                qc_dsp_cols(&job, rows);
            }
            if (K > kq) {   /* the K % 4 tail, scalar */
                for (j = 0; j < nc; ++j) {
                    const int8_t *wj = w + (size_t)j * (size_t)K;
                    for (k = kq; k < K; ++k) {
                        for (r = 0; r < rows; ++r) {
                            acc[4 * j + r] = (int32_t)((uint32_t)acc[4 * j + r] + (uint32_t)(a[r][k] * wj[k]));
                        }
                    }
                }
            }
            if (ctx->mode == QC_OUT_I32) {
                int32_t *o = (int32_t *)ctx->out + (size_t)m * (size_t)ctx->ldo + (size_t)n0;
                for (r = 0; r < rows; ++r, o += ctx->ldo) {
                    for (j = 0; j < nc; ++j) {
                        o[j] = acc[4 * j + r];
                    }
                }
            } else {
                for (r = 0; r < rows; ++r) {
                    for (j = 0; j < nc; ++j) {
                        qc_ep_one(ctx, acc[4 * j + r], m + r, n0 + j);
                    }
                }
            }
        }
    }
}

#else
typedef int qc_gemm_s8_dsp_not_compiled; /* ISO C: no empty translation unit */
#endif
