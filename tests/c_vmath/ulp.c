/* ulp errors of qc_vmath.h against the C library's double functions rounded to float.
 *
 *   ulp SHIFT   every 2^SHIFT-th float bit pattern (both signs), the specials (+-0, +-inf, NaN,
 *               subnormals, FLT_MAX) and 64 patterns either side of each threshold; prints per
 *               function: name, max ulp error, the x where it is reached (bits), max ulp error
 *               over x >= lo (the function's documented range), max absolute error, the number
 *               of inputs where the SIMD lanes and the portable lane disagree, and the count.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qc_vmath.h"

typedef float (*scalar_fn)(float);
typedef double (*ref_fn)(double);

static double r_exp(double x) { return exp(x); }
static double r_log(double x) { return log(x); }
static double r_erf(double x) { return erf(x); }
static double r_tanh(double x) { return tanh(x); }
static double r_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
static double r_silu(double x) { return x / (1.0 + exp(-x)); }
static double r_gelu(double x) { return 0.5 * x * erfc(-x * 0.70710678118654752440); }
static double r_gelu_tanh(double x)
{
    double u = 0.79788456080286535588 * (x + 0.044715 * x * x * x);
    return x / (1.0 + exp(-2.0 * u));
}

#if defined(QC_VM_SIMD)
typedef qc_vf (*vector_fn)(qc_vf);
#define VFN(f) f
#else
typedef void *vector_fn;
#define VFN(f) NULL
#endif

struct fn {
    const char *name;
    scalar_fn s;
    vector_fn v;
    ref_fn r;
    float lo; /* the second ulp maximum counts x >= lo only */
};

static const struct fn FNS[] = {
    {"exp", qc_expf, VFN(qc_vexp), r_exp, -INFINITY},
    {"log", qc_logf, VFN(qc_vlog), r_log, -INFINITY},
    {"erf", qc_erff, VFN(qc_verf), r_erf, -INFINITY},
    {"tanh", qc_tanhf, VFN(qc_vtanh), r_tanh, -INFINITY},
    {"sigmoid", qc_sigmoidf_v, VFN(qc_vsigmoid), r_sigmoid, -INFINITY},
    {"silu", qc_siluf, VFN(qc_vsilu), r_silu, -87.0f},
    {"gelu", qc_geluf, VFN(qc_vgelu), r_gelu, -1.0f},
    {"gelu_tanh", qc_gelu_tanhf, VFN(qc_vgelu_tanh), r_gelu_tanh, -1.0f},
};

static float bits_f(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static unsigned f_bits(float f) { unsigned u; memcpy(&u, &f, 4); return u; }

/* |y - ref| in units of the last place of ref rounded to float (subnormal ulp 2^-149;
 * past FLT_MAX the ulp of FLT_MAX); NaN where exactly one of them is NaN: 1e30 */
static double ulp_err(float y, double ref)
{
    float rf = (float)ref;
    int e;
    double ulp;
    if (isnan(ref) || isnan(y)) return (isnan(ref) && isnan(y)) ? 0.0 : 1e30;
    if (isinf(y)) return (y == rf || (double)y == ref) ? 0.0 : 1e30;
    if (isinf(ref)) return 1e30;
    if (isinf(rf)) rf = FLT_MAX;
    frexp(fabs((double)rf), &e);              /* |rf| in [2^(e-1), 2^e) */
    ulp = ldexp(1.0, (e - 1 < -126 ? -126 : e - 1) - 23);
    if (rf == 0.0f) ulp = ldexp(1.0, -149);
    return fabs((double)y - ref) / ulp;
}

#if defined(QC_VM_SIMD)
/* Helium flushes subnormal inputs and results to zero (the only allowed difference) */
static int ftz_ok(float x, float s, float v)
{
#if defined(QC_VM_MVE)
    return fpclassify(x) == FP_SUBNORMAL || fpclassify(s) == FP_SUBNORMAL || fpclassify(v) == FP_SUBNORMAL ||
           (v == 0.0f && fabsf(s) < 1e-34f);
#else
    (void)x; (void)s; (void)v;
    return 0;
#endif
}
#endif

#define NMAX 4096
static unsigned xs[NMAX];
static int nx;

static void add(unsigned u) { if (nx < NMAX) xs[nx++] = u; }
static void around(float t)
{
    int k;
    unsigned u = f_bits(t);
    for (k = -64; k <= 64; ++k) {
        add(u + (unsigned)k);
        add((u + (unsigned)k) ^ 0x80000000u);
    }
}

static void specials(void)
{
    static const float T[] = {88.72283935546875f, 88.7228317f, -87.3365479f, -103.972076f, -103.278931f,
                              4.0f, 3.9192059f, 7.90531110763549805f, 0.0004f, 1.0f, 0.5f, 0.875f,
                              89.0f, -104.0f, 1.17549435e-38f, 0.70710678f, 1.41421356f};
    size_t i;
    add(0u); add(0x80000000u); add(0x7f800000u); add(0xff800000u); add(0x7fc00000u); add(0xffc00000u);
    add(0x7f800001u); add(1u); add(0x80000001u); add(0x007fffffu); add(0x807fffffu); add(0x00400000u);
    add(0x7f7fffffu); add(0xff7fffffu);
    for (i = 0; i < sizeof T / sizeof T[0]; ++i) around(T[i]);
}

int main(int argc, char **argv)
{
    int shift = argc > 1 ? atoi(argv[1]) : 12, verbose = argc > 2;
    unsigned long long total = 1ull << 32, step = 1ull << shift, b;
    size_t f;
    (void)verbose;
    specials();
    for (f = 0; f < sizeof FNS / sizeof FNS[0]; ++f) {
        const struct fn *F = &FNS[f];
        double worst = 0.0, worst_lo = 0.0, worst_abs = 0.0;
        unsigned worst_x = 0, mism = 0;
        unsigned long long count = 0;
        int phase;
        for (phase = 0; phase < 2; ++phase) {
            unsigned long long n = phase ? (unsigned long long)nx : total / step, i;
            for (i = 0; i < n; i += 4) {
                float x[4], y[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                (void)y;
                int k, m = (int)(n - i < 4 ? n - i : 4);
                for (k = 0; k < 4; ++k) {
                    b = phase ? xs[i + (unsigned long long)(k < m ? k : 0)] : (i + (unsigned long long)(k < m ? k : 0)) * step;
                    x[k] = bits_f((unsigned)b);
                }
#if defined(QC_VM_SIMD)
                qc_vf_store(y, F->v(qc_vf_load(x)));
#endif
                for (k = 0; k < m; ++k) {
                    float s = F->s(x[k]);
                    double e, ref;
#if defined(QC_VM_SIMD)
                    if (f_bits(s) != f_bits(y[k]) && !(isnan(s) && isnan(y[k])) && !ftz_ok(x[k], s, y[k])) {
                        if (verbose && mism < 4)
                            printf("  %s(0x%08x): portable 0x%08x simd 0x%08x\n", F->name, f_bits(x[k]),
                                   f_bits(s), f_bits(y[k]));
                        ++mism;
                    }
#endif
                    ref = F->r((double)x[k]);
                    e = ulp_err(s, ref);
                    ++count;
                    if (e > worst) { worst = e; worst_x = f_bits(x[k]); }
                    if (x[k] >= F->lo && e > worst_lo) worst_lo = e;
                    if (isfinite(ref) && isfinite(s) && fabs(s - ref) > worst_abs) worst_abs = fabs(s - ref);
                }
            }
        }
        /* newlib-nano's printf has no floating point: milli-ulps and the bits of the float */
        printf("%s %lu 0x%08x %lu 0x%08x %u %lu\n", F->name, (unsigned long)(worst * 1000.0), worst_x,
               (unsigned long)(worst_lo * 1000.0), f_bits((float)worst_abs), mism, (unsigned long)count);
    }
    return 0;
}
