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
