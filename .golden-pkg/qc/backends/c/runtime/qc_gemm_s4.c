/* Weight-only int4 matmul (float32 activations). Packing (backends/c/packing.py pack_s4):
   the K x N matrix flattened row-major, two values per byte, element i in the low nibble of
   byte i/2 when i is even, high nibble when odd; signed values are stored excess-8 (q + 8),
   unsigned ones as they are. Zero points (pack_s4_zero_points) use the same encoding over the
   (K/block) x N grid; zps == NULL means signed weights with zero point 0. */
#include "qc_kernels.h"

static int qc_nibble(const uint8_t *p, size_t i)
{
    uint8_t b = p[i >> 1];
    return (i & 1u) ? (b >> 4) : (b & 0x0f);
}

void qc_matmul_f32_s4(int M, int N, int K, const float *A, const uint8_t *Wp, const float *scale,
                      const uint8_t *zps, int block, float *out)
{
    int m, n, k;
    for (m = 0; m < M; ++m) {
        float *o = out + (size_t)m * N;
        for (n = 0; n < N; ++n) {
            o[n] = 0.0f;
        }
        /* k outer, n inner: the output row accumulates in k order, as a dot product would */
        for (k = 0; k < K; ++k) {
            const float a = A[(size_t)m * K + k];
            const size_t g = (size_t)(k / block) * N, row = (size_t)k * N;
            const float *s = scale + g;
            for (n = 0; n < N; ++n) {
                int zp = zps ? qc_nibble(zps, g + n) : 8;
                o[n] += a * ((float)(qc_nibble(Wp, row + n) - zp) * s[n]);
            }
        }
    }
}
