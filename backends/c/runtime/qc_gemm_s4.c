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
        for (n = 0; n < N; ++n) {
            float acc = 0.0f;
            for (k = 0; k < K; ++k) {
                size_t g = (size_t)(k / block) * N + n;
                int zp = zps ? qc_nibble(zps, g) : 8;
                float w = (float)(qc_nibble(Wp, (size_t)k * N + n) - zp) * scale[g];
                acc += A[(size_t)m * K + k] * w;
            }
            out[(size_t)m * N + n] = acc;
        }
    }
}
