/* qc C backend: float kernels of the fused ops that qc_ops.c has no kernel for (see qc_ops.h). */
#include "qc_ops.h"

#include <math.h>

void qc_rmsnorm_f32(int outer, int n, float eps, const float *x, const float *scale, float *y)
{
    int o, i;
    for (o = 0; o < outer; ++o, x += n, y += n) {
        float ss = 0.0f, r;
        for (i = 0; i < n; ++i) ss = fmaf(x[i], x[i], ss);  /* fused everywhere: same bits */
        r = sqrtf(ss / (float)n + eps);
        if (scale) {
            for (i = 0; i < n; ++i) y[i] = x[i] / r * scale[i];
        } else {
            for (i = 0; i < n; ++i) y[i] = x[i] / r;
        }
    }
}

void qc_rope_f32(int n0, int n1, int n2, int D, const float *x, const int *xs, const float *cs,
                 const float *sn, const int *ts, float *y)
{
    int i0, i1, i2, i, h = D / 2;
    for (i0 = 0; i0 < n0; ++i0) {
        for (i1 = 0; i1 < n1; ++i1) {
            for (i2 = 0; i2 < n2; ++i2, y += D) {
                const float *xr = x + (ptrdiff_t)i0 * xs[0] + (ptrdiff_t)i1 * xs[1] + (ptrdiff_t)i2 * xs[2];
                ptrdiff_t t = (ptrdiff_t)i0 * ts[0] + (ptrdiff_t)i1 * ts[1] + (ptrdiff_t)i2 * ts[2];
                const float *c = cs + t, *s = sn + t;
                for (i = 0; i < h; ++i) y[i] = xr[i] * c[i] + (-xr[i + h]) * s[i];
                for (; i < D; ++i) y[i] = xr[i] * c[i] + xr[i - h] * s[i];
            }
        }
    }
}
