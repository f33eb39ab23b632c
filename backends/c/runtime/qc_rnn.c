/* qc C backend: the recurrent layers LSTM and GRU, float32, one direction per call (see qc_ops.h).
 * The gate matrix products go through qc_gemm_f32; the rest is elementwise per step. */
#include "qc_ops.h"

#include <math.h>
#include <string.h>

static float qc_sigm(float v) { return 1.0f / (1.0f + expf(-v)); }

static float qc_clipf(float v, float clip)
{
    if (clip > 0.0f) {
        if (v > clip) return clip;
        if (v < -clip) return -clip;
    }
    return v;
}

/* s[b][0..H) = src + b*hs_b, or zeros when src is NULL */
static void qc_rnn_init(int B, int H, const float *src, int hs_b, float *s)
{
    int b;
    for (b = 0; b < B; ++b) {
        if (src) memcpy(s + (size_t)b * H, src + (ptrdiff_t)b * hs_b, (size_t)H * sizeof(float));
        else memset(s + (size_t)b * H, 0, (size_t)H * sizeof(float));
    }
}

static void qc_rnn_store(int B, int H, const float *s, float *dst, ptrdiff_t stride)
{
    int b;
    if (!dst) return;
    for (b = 0; b < B; ++b) memcpy(dst + (ptrdiff_t)b * stride, s + (size_t)b * H, (size_t)H * sizeof(float));
}

void qc_lstm_f32(int T, int B, int I, int H, int reverse, int input_forget, float clip,
                 const float *x, int xs_t, int xs_b, const float *W, const float *R,
                 const float *bias, const float *peep, const float *h0, const float *c0, int hs_b,
                 float *y, int ys_t, int ys_b, float *yh, float *yc, float *work)
{
    const int G = 4 * H;
    float *gx = work, *gh = gx + (size_t)B * G, *h = gh + (size_t)B * G, *c = h + (size_t)B * H;
    int s, b, j;
    qc_rnn_init(B, H, h0, hs_b, h);
    qc_rnn_init(B, H, c0, hs_b, c);
    for (s = 0; s < T; ++s) {
        const int t = reverse ? T - 1 - s : s;
        /* gx = x_t W^T, gh = h R^T (B x 4H, gates i o f c) */
        qc_gemm_f32(B, G, I, x + (ptrdiff_t)t * xs_t, xs_b, 1, W, 1, I, 1.0f, NULL, 0, 0, 0.0f, gx);
        qc_gemm_f32(B, G, H, h, H, 1, R, 1, H, 1.0f, NULL, 0, 0, 0.0f, gh);
        for (b = 0; b < B; ++b) {
            const float *px = gx + (size_t)b * G, *ph = gh + (size_t)b * G;
            float *hb = h + (size_t)b * H, *cb = c + (size_t)b * H;
            for (j = 0; j < H; ++j) {
                float gi = px[j] + ph[j], go = px[H + j] + ph[H + j];
                float gf = px[2 * H + j] + ph[2 * H + j], gc = px[3 * H + j] + ph[3 * H + j];
                float i, f, o, cn;
                if (bias) {
                    gi += bias[j] + bias[G + j];
                    go += bias[H + j] + bias[G + H + j];
                    gf += bias[2 * H + j] + bias[G + 2 * H + j];
                    gc += bias[3 * H + j] + bias[G + 3 * H + j];
                }
                if (peep) {
                    gi += peep[j] * cb[j];
                    gf += peep[2 * H + j] * cb[j];
                }
                i = qc_sigm(qc_clipf(gi, clip));
                f = input_forget ? 1.0f - i : qc_sigm(qc_clipf(gf, clip));
                cn = f * cb[j] + i * tanhf(qc_clipf(gc, clip));
                if (peep) go += peep[H + j] * cn;
                o = qc_sigm(qc_clipf(go, clip));
                cb[j] = cn;
                hb[j] = o * tanhf(cn);
            }
        }
        if (y) qc_rnn_store(B, H, h, y + (ptrdiff_t)t * ys_t, ys_b);
    }
    qc_rnn_store(B, H, h, yh, hs_b);
    qc_rnn_store(B, H, c, yc, hs_b);
}

void qc_gru_f32(int T, int B, int I, int H, int reverse, int linear_before_reset, float clip,
                const float *x, int xs_t, int xs_b, const float *W, const float *R, const float *bias,
                const float *h0, int hs_b, float *y, int ys_t, int ys_b, float *yh, float *work)
{
    const int G = 3 * H, ghs = linear_before_reset ? G : 2 * H;
    float *gx = work, *gh = gx + (size_t)B * G, *h = gh + (size_t)B * G, *rh = h + (size_t)B * H;
    float *rr = rh + (size_t)B * H;
    int s, b, j;
    qc_rnn_init(B, H, h0, hs_b, h);
    for (s = 0; s < T; ++s) {
        const int t = reverse ? T - 1 - s : s;
        /* gx = x_t W^T (gates z r h); gh = h R^T for z and r, and for h when linear_before_reset */
        qc_gemm_f32(B, G, I, x + (ptrdiff_t)t * xs_t, xs_b, 1, W, 1, I, 1.0f, NULL, 0, 0, 0.0f, gx);
        qc_gemm_f32(B, ghs, H, h, H, 1, R, 1, H, 1.0f, NULL, 0, 0, 0.0f, gh);
        for (b = 0; b < B; ++b) {
            for (j = 0; j < H; ++j) {
                float gr = gx[(size_t)b * G + H + j] + gh[(size_t)b * ghs + H + j];
                float r;
                if (bias) gr += bias[H + j] + bias[G + H + j];
                r = qc_sigm(qc_clipf(gr, clip));
                rh[(size_t)b * H + j] = linear_before_reset ? r : r * h[(size_t)b * H + j];
            }
        }
        /* without linear_before_reset the candidate reads (r * h) Rh^T */
        if (!linear_before_reset)
            qc_gemm_f32(B, H, H, rh, H, 1, R + (size_t)2 * H * H, 1, H, 1.0f, NULL, 0, 0, 0.0f, rr);
        for (b = 0; b < B; ++b) {
            const float *px = gx + (size_t)b * G, *ph = gh + (size_t)b * ghs;
            float *hb = h + (size_t)b * H;
            for (j = 0; j < H; ++j) {
                float gz = px[j] + ph[j], gn = px[2 * H + j], hn, z, n;
                if (bias) {
                    gz += bias[j] + bias[G + j];
                    gn += bias[2 * H + j];
                }
                hn = linear_before_reset ? ph[2 * H + j] : rr[(size_t)b * H + j];
                if (bias) hn += bias[G + 2 * H + j];
                if (linear_before_reset) hn *= rh[(size_t)b * H + j];
                z = qc_sigm(qc_clipf(gz, clip));
                n = tanhf(qc_clipf(gn + hn, clip));
                hb[j] = (1.0f - z) * n + z * hb[j];
            }
        }
        if (y) qc_rnn_store(B, H, h, y + (ptrdiff_t)t * ys_t, ys_b);
    }
    qc_rnn_store(B, H, h, yh, hs_b);
}
