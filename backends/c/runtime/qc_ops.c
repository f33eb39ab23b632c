/* qc C backend: data movement, Cast and elementwise kernels (see qc_ops.h). */
#include "qc_ops.h"

#include <math.h>
#include <string.h>

#include "qc_vmath.h"

/* Advance the index over dims [0, rank-1) (the last dim is walked by the caller's row loop),
 * keeping `nops` element offsets in step with their strides. */
static void qc_odometer(int rank, const int *shape, int *idx, int nops, const int *const *st,
                        ptrdiff_t *off)
{
    int d, k;
    for (d = rank - 2; d >= 0; --d) {
        idx[d]++;
        for (k = 0; k < nops; ++k) off[k] += st[k][d];
        if (idx[d] < shape[d]) return;
        for (k = 0; k < nops; ++k) off[k] -= (ptrdiff_t)st[k][d] * shape[d];
        idx[d] = 0;
    }
}

static size_t qc_rows(int rank, const int *shape)
{
    size_t rows = 1;
    int d;
    for (d = 0; d < rank - 1; ++d) rows *= (size_t)shape[d];
    return rows;
}

void qc_copy_nd(int rank, const int *shape, const int *xs, size_t es, const void *x, void *y)
{
    int idx[QC_MAX_RANK] = {0};
    const int *st[1];
    ptrdiff_t off[1] = {0};
    size_t rows = qc_rows(rank, shape), r;
    int n = shape[rank - 1], s = xs[rank - 1], i;
    const unsigned char *px = (const unsigned char *)x;
    unsigned char *py = (unsigned char *)y;
    st[0] = xs;
    for (r = 0; r < rows; ++r) {
        const unsigned char *row = px + off[0] * (ptrdiff_t)es;
        if (s == 1) {
            memcpy(py, row, (size_t)n * es);
        } else if (es == 4) {
            for (i = 0; i < n; ++i) memcpy(py + (size_t)i * 4, row + (ptrdiff_t)i * s * 4, 4);
        } else {
            for (i = 0; i < n; ++i) memcpy(py + (size_t)i * es, row + (ptrdiff_t)i * s * (ptrdiff_t)es, es);
        }
        py += (size_t)n * es;
        qc_odometer(rank, shape, idx, 1, st, off);
    }
}

void qc_place_nd(int rank, const int *shape, const int *ys, size_t es, const void *x, void *y)
{
    int idx[QC_MAX_RANK] = {0};
    const int *st[1];
    ptrdiff_t off[1] = {0};
    size_t rows = qc_rows(rank, shape), r;
    int n = shape[rank - 1], s = ys[rank - 1], i;
    const unsigned char *px = (const unsigned char *)x;
    unsigned char *py = (unsigned char *)y;
    st[0] = ys;
    for (r = 0; r < rows; ++r) {
        unsigned char *row = py + off[0] * (ptrdiff_t)es;
        if (s == 1) {
            memcpy(row, px, (size_t)n * es);
        } else {
            for (i = 0; i < n; ++i) memcpy(row + (ptrdiff_t)i * s * (ptrdiff_t)es, px + (size_t)i * es, es);
        }
        px += (size_t)n * es;
        qc_odometer(rank, shape, idx, 1, st, off);
    }
}

void qc_copy(size_t bytes, const void *x, void *y)
{
    if (x != y) memmove(y, x, bytes);
}

void qc_fill(size_t n, size_t es, const void *value, void *y)
{
    unsigned char *py = (unsigned char *)y;
    size_t i;
    for (i = 0; i < n; ++i) memcpy(py + i * es, value, es);
}

#define QC_GATHER_BODY                                                                        \
    const unsigned char *pd = (const unsigned char *)data;                                    \
    unsigned char *py = (unsigned char *)y;                                                   \
    size_t o, j;                                                                              \
    for (o = 0; o < outer; ++o) {                                                             \
        for (j = 0; j < nidx; ++j) {                                                          \
            int64_t k = (int64_t)idx[j];                                                      \
            if (k < 0) k += axis_len;                                                         \
            if (k < 0 || k >= axis_len) k = 0; /* out of range: ONNX leaves it undefined */    \
            memcpy(py, pd + ((size_t)o * (size_t)axis_len + (size_t)k) * inner_bytes, inner_bytes); \
            py += inner_bytes;                                                                \
        }                                                                                     \
    }

void qc_gather_i64(size_t outer, int axis_len, size_t inner_bytes, const void *data, size_t nidx,
                   const int64_t *idx, void *y)
{
    QC_GATHER_BODY
}

void qc_gather_i32(size_t outer, int axis_len, size_t inner_bytes, const void *data, size_t nidx,
                   const int32_t *idx, void *y)
{
    QC_GATHER_BODY
}

void qc_where(int rank, const int *shape, const int *sc, const int *sa, const int *sb, size_t es,
              const uint8_t *cond, const void *a, const void *b, void *y)
{
    int idx[QC_MAX_RANK] = {0};
    const int *st[3];
    ptrdiff_t off[3] = {0, 0, 0};
    size_t rows = qc_rows(rank, shape), r;
    int n = shape[rank - 1], i;
    const unsigned char *pa = (const unsigned char *)a, *pb = (const unsigned char *)b;
    unsigned char *py = (unsigned char *)y;
    st[0] = sc;
    st[1] = sa;
    st[2] = sb;
    for (r = 0; r < rows; ++r) {
        for (i = 0; i < n; ++i) {
            const unsigned char *src = cond[off[0] + (ptrdiff_t)i * sc[rank - 1]]
                ? pa + (off[1] + (ptrdiff_t)i * sa[rank - 1]) * (ptrdiff_t)es
                : pb + (off[2] + (ptrdiff_t)i * sb[rank - 1]) * (ptrdiff_t)es;
            memcpy(py, src, es);
            py += es;
        }
        qc_odometer(rank, shape, idx, 3, st, off);
    }
}

/* The source position along an axis of n >= 1 elements for position i (any integer) of the
 * padded axis, i counted from the first source element; -1: outside (constant mode). */
static int qc_pad_src(int mode, int i, int n)
{
    int period;
    if (i >= 0 && i < n) return i;
    switch (mode) {
    case QC_PAD_EDGE:
        return i < 0 ? 0 : n - 1;
    case QC_PAD_WRAP:
        i %= n;
        return i < 0 ? i + n : i;
    case QC_PAD_REFLECT: /* numpy's reflect: a triangle wave of period 2(n-1) */
        if (n == 1) return 0;
        period = 2 * (n - 1);
        i %= period;
        if (i < 0) i += period;
        return i < n ? i : period - i;
    default:
        return -1;
    }
}

void qc_pad_nd(int mode, int rank, const int *yshape, const int *xshape, const int *xs,
               const int *begin, size_t es, const void *x, const void *value, void *y)
{
    int idx[QC_MAX_RANK] = {0};
    size_t rows = qc_rows(rank, yshape), r;
    const int n = yshape[rank - 1], nx = xshape[rank - 1], b = begin[rank - 1], s = xs[rank - 1];
    const int hi = b + nx < n ? b + nx : n; /* positions [b, hi) are the source row itself */
    const unsigned char *px = (const unsigned char *)x;
    unsigned char *py = (unsigned char *)y;
    int d, i, k;
    for (r = 0; r < rows; ++r) {
        ptrdiff_t off = 0;
        int outside = 0;
        for (d = 0; d < rank - 1; ++d) {
            k = qc_pad_src(mode, idx[d] - begin[d], xshape[d]);
            if (k < 0) outside = 1;
            else off += (ptrdiff_t)k * xs[d];
        }
        if (outside) {
            qc_fill((size_t)n, es, value, py);
        } else {
            const unsigned char *row = px + off * (ptrdiff_t)es;
            for (i = 0; i < n; ++i) {
                if (i == b && s == 1 && hi > b) {
                    memcpy(py + (size_t)i * es, row, (size_t)(hi - b) * es);
                    i = hi - 1;
                    continue;
                }
                k = qc_pad_src(mode, i - b, nx);
                memcpy(py + (size_t)i * es, k < 0 ? value : (const void *)(row + (ptrdiff_t)k * s * (ptrdiff_t)es), es);
            }
        }
        py += (size_t)n * es;
        for (d = rank - 2; d >= 0; --d) {
            if (++idx[d] < yshape[d]) break;
            idx[d] = 0;
        }
    }
}

/* -- float16 <-> float32 (round to nearest even), for Cast ------------------------------------ */
float qc_ops_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    float f;
    if (exp == 0x1fu) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: normalize */
        exp = 113u;
        while (!(man & 0x400u)) {
            man <<= 1;
            exp--;
        }
        bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t qc_ops_f32_to_f16(float f)
{
    uint32_t x, sign, man;
    int exp;
    memcpy(&x, &f, 4);
    sign = (x >> 16) & 0x8000u;
    exp = (int)((x >> 23) & 0xffu);
    man = x & 0x7fffffu;
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00u | (man ? 0x200u | (man >> 13) : 0u));
    exp -= 112;
    if (exp >= 0x1f) return (uint16_t)(sign | 0x7c00u);
    if (exp <= 0) {
        uint32_t m, shift, half, rest, q;
        if (exp < -10) return (uint16_t)sign;
        m = man | 0x800000u;
        shift = (uint32_t)(14 - exp);
        q = m >> shift;
        rest = m & ((1u << shift) - 1u);
        half = 1u << (shift - 1u);
        if (rest > half || (rest == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    } else {
        uint32_t q = ((uint32_t)exp << 10) | (man >> 13), rest = man & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (q & 1u))) q++; /* may carry into inf: correct */
        return (uint16_t)(sign | q);
    }
}

/* -- Cast --------------------------------------------------------------------------------------- */
static int qc_is_float(int t) { return t == 1 || t == 10 || t == 11; }

static double qc_load_f(int t, const void *x, size_t i)
{
    switch (t) {
    case 1: return ((const float *)x)[i];
    case 10: return qc_ops_f16_to_f32(((const uint16_t *)x)[i]);
    default: return ((const double *)x)[i];
    }
}

static int64_t qc_load_i(int t, const void *x, size_t i)
{
    switch (t) {
    case 2: case 9: return ((const uint8_t *)x)[i];
    case 3: return ((const int8_t *)x)[i];
    case 4: return ((const uint16_t *)x)[i];
    case 5: return ((const int16_t *)x)[i];
    case 6: return ((const int32_t *)x)[i];
    case 12: return ((const uint32_t *)x)[i];
    default: return ((const int64_t *)x)[i];
    }
}

static void qc_store_i(int t, void *y, size_t i, int64_t v)
{
    switch (t) {
    case 2: ((uint8_t *)y)[i] = (uint8_t)v; break;
    case 9: ((uint8_t *)y)[i] = (uint8_t)(v != 0); break;
    case 3: ((int8_t *)y)[i] = (int8_t)v; break;
    case 4: ((uint16_t *)y)[i] = (uint16_t)v; break;
    case 5: ((int16_t *)y)[i] = (int16_t)v; break;
    case 6: ((int32_t *)y)[i] = (int32_t)v; break;
    case 12: ((uint32_t *)y)[i] = (uint32_t)v; break;
    default: ((int64_t *)y)[i] = v; break;
    }
}

static void qc_store_f(int t, void *y, size_t i, double v)
{
    switch (t) {
    case 1: ((float *)y)[i] = (float)v; break;
    case 10: ((uint16_t *)y)[i] = qc_ops_f32_to_f16((float)v); break;
    default: ((double *)y)[i] = v; break;
    }
}

void qc_cast(size_t n, int from, const void *x, int to, void *y)
{
    size_t i = 0;
    if (from == 1 && to == 10) {
#if defined(QC_VM_NEON)
        /* FCVTN rounds to nearest even and quiets NaNs keeping the payload's top bits, as
           qc_ops_f32_to_f16 does */
        for (; i + 4 <= n; i += 4)
            vst1_u16((uint16_t *)y + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32((const float *)x + i))));
#endif
        for (; i < n; ++i) ((uint16_t *)y)[i] = qc_ops_f32_to_f16(((const float *)x)[i]);
        return;
    }
    if (from == 10 && to == 1) {
#if defined(QC_VM_NEON)
        for (; i + 4 <= n; i += 4)
            vst1q_f32((float *)y + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)x + i))));
#endif
        for (; i < n; ++i) ((float *)y)[i] = qc_ops_f16_to_f32(((const uint16_t *)x)[i]);
        return;
    }
    for (i = 0; i < n; ++i) {
        if (qc_is_float(from)) {
            double v = qc_load_f(from, x, i);
            if (qc_is_float(to)) qc_store_f(to, y, i, v);
            else if (to == 9) ((uint8_t *)y)[i] = (uint8_t)(v != 0.0);
            else qc_store_i(to, y, i, (int64_t)v);
        } else {
            int64_t v = qc_load_i(from, x, i);
            if (qc_is_float(to)) qc_store_f(to, y, i, (double)v);
            else qc_store_i(to, y, i, v);
        }
    }
}

/* -- binary elementwise -------------------------------------------------------------------------- */
#define QC_ROW(T, TY, EXPR)                                                                   \
    {                                                                                         \
        const T *pa = (const T *)a;                                                           \
        const T *pb = (const T *)b;                                                           \
        TY *py = (TY *)y;                                                                     \
        int i;                                                                                \
        for (i = 0; i < n; ++i) {                                                             \
            T u = pa[i * sa], v = pb[i * sb];                                                 \
            py[i] = (TY)(EXPR);                                                               \
        }                                                                                     \
        return;                                                                               \
    }

#define QC_CMP_CASES(T)                                                                        \
    case QC_EQ: QC_ROW(T, uint8_t, u == v)                                                    \
    case QC_LT: QC_ROW(T, uint8_t, u < v)                                                     \
    case QC_GT: QC_ROW(T, uint8_t, u > v)                                                     \
    case QC_LE: QC_ROW(T, uint8_t, u <= v)                                                    \
    case QC_GE: QC_ROW(T, uint8_t, u >= v)

#define QC_INT_CASES(T)                                                                        \
    case QC_ADD: QC_ROW(T, T, u + v)                                                          \
    case QC_SUB: QC_ROW(T, T, u - v)                                                          \
    case QC_MUL: QC_ROW(T, T, u * v)                                                          \
    case QC_DIV: QC_ROW(T, T, v ? u / v : 0)                                                  \
    case QC_MAX: QC_ROW(T, T, u > v ? u : v)                                                  \
    case QC_MIN: QC_ROW(T, T, u < v ? u : v)                                                  \
    case QC_BITAND: QC_ROW(T, T, u & v)                                                       \
    case QC_BITOR: QC_ROW(T, T, u | v)                                                        \
    case QC_BITXOR: QC_ROW(T, T, u ^ v)                                                       \
    QC_CMP_CASES(T)

#define QC_SIGNED_CASES(T)                                                                     \
    case QC_MOD: QC_ROW(T, T, v ? ((u % v != 0 && ((u % v < 0) != (v < 0))) ? u % v + v : u % v) : 0) \
    case QC_FMOD: QC_ROW(T, T, v ? u % v : 0)

static int64_t qc_ipow(int64_t b, int64_t e)
{
    int64_t r = 1;
    if (e < 0) return b == 1 ? 1 : (b == -1 ? ((e & 1) ? -1 : 1) : 0);
    while (e) {
        if (e & 1) r *= b;
        b *= b;
        e >>= 1;
    }
    return r;
}

static float qc_fmodf_py(float u, float v)
{
    float r = fmodf(u, v);
    if (r != 0.0f && ((r < 0.0f) != (v < 0.0f))) r += v;
    return r;
}

static void qc_binary_row(int op, int dt, int n, const void *a, int sa, const void *b, int sb, void *y)
{
    switch (dt) {
    case 1:
        switch (op) {
        case QC_ADD: QC_ROW(float, float, u + v)
        case QC_SUB: QC_ROW(float, float, u - v)
        case QC_MUL: QC_ROW(float, float, u * v)
        case QC_DIV: QC_ROW(float, float, u / v)
        case QC_POW: QC_ROW(float, float, v == 2.0f ? u * u : powf(u, v))
        case QC_MAX: QC_ROW(float, float, (u != u || u > v) ? u : v)
        case QC_MIN: QC_ROW(float, float, (u != u || u < v) ? u : v)
        case QC_MOD: QC_ROW(float, float, qc_fmodf_py(u, v))
        case QC_FMOD: QC_ROW(float, float, fmodf(u, v))
        case QC_PRELU: QC_ROW(float, float, u < 0.0f ? u * v : u)
        QC_CMP_CASES(float)
        default: break;
        }
        break;
    case 6:
        switch (op) {
        QC_INT_CASES(int32_t)
        QC_SIGNED_CASES(int32_t)
        case QC_POW: QC_ROW(int32_t, int32_t, qc_ipow(u, v))
        default: break;
        }
        break;
    case 7:
        switch (op) {
        QC_INT_CASES(int64_t)
        QC_SIGNED_CASES(int64_t)
        case QC_POW: QC_ROW(int64_t, int64_t, qc_ipow(u, v))
        default: break;
        }
        break;
    case 2:
        switch (op) {
        QC_INT_CASES(uint8_t)
        case QC_MOD: case QC_FMOD: QC_ROW(uint8_t, uint8_t, v ? u % v : 0)
        default: break;
        }
        break;
    case 3:
        switch (op) {
        QC_INT_CASES(int8_t)
        QC_SIGNED_CASES(int8_t)
        default: break;
        }
        break;
    case 9:
        switch (op) {
        case QC_AND: QC_ROW(uint8_t, uint8_t, u && v)
        case QC_OR: QC_ROW(uint8_t, uint8_t, u || v)
        case QC_XOR: QC_ROW(uint8_t, uint8_t, (u != 0) != (v != 0))
        case QC_EQ: QC_ROW(uint8_t, uint8_t, (u != 0) == (v != 0))
        default: break;
        }
        break;
    default:
        break;
    }
}

static size_t qc_dt_size(int dt)
{
    switch (dt) {
    case 2: case 3: case 9: return 1;
    case 4: case 5: case 10: return 2;
    case 7: case 11: case 13: return 8;
    default: return 4;
    }
}

/* float32 Add / Sub / Mul / Div over one row, operand strides 0 or 1 (0: a broadcast scalar);
 * the same IEEE operation per element as qc_binary_row */
static void qc_binary_row_vf(int op, int n, const float *a, int sa, const float *b, int sb, float *y)
{
    int i = 0;
#if defined(QC_VM_SIMD)
/* two vectors per iteration (halves the loop overhead), then one */
#define QC_VROW2(VOP, LA, LB)                                                                 \
    for (; i + 8 <= n; i += 8) {                                                              \
        qc_vf_store(y + i, VOP(LA(i), LB(i)));                                                \
        qc_vf_store(y + i + 4, VOP(LA(i + 4), LB(i + 4)));                                    \
    }                                                                                         \
    for (; i + 4 <= n; i += 4) qc_vf_store(y + i, VOP(LA(i), LB(i)));
#define QC_LA(k) qc_vf_load(a + (k))
#define QC_LB(k) qc_vf_load(b + (k))
#define QC_SA(k) va
#define QC_SB(k) vb
#define QC_VROW(VOP)                                                                          \
    if (sa && sb) { QC_VROW2(VOP, QC_LA, QC_LB) }                                             \
    else if (sa) { const qc_vf vb = qc_vf_dup(*b); QC_VROW2(VOP, QC_LA, QC_SB) }              \
    else if (sb) { const qc_vf va = qc_vf_dup(*a); QC_VROW2(VOP, QC_SA, QC_LB) }              \
    break;
    switch (op) {
    case QC_ADD: QC_VROW(qc_vf_add)
    case QC_SUB: QC_VROW(qc_vf_sub)
    case QC_MUL: QC_VROW(qc_vf_mul)
#if defined(QC_VM_NEON)
    case QC_DIV: QC_VROW(qc_vf_div)
#endif
    default: break;
    }
#undef QC_VROW
#undef QC_VROW2
#undef QC_LA
#undef QC_LB
#undef QC_SA
#undef QC_SB
#endif
    if (i < n)
        qc_binary_row(op, 1, n - i, a + (ptrdiff_t)i * sa, sa, b + (ptrdiff_t)i * sb, sb, y + i);
}

/* 1: strides are row-major over shape (contiguous), 0: all zero (a scalar), -1: neither */
static int qc_stride_kind(int rank, const int *shape, const int *st)
{
    int d, zero = 1, contig = 1, want = 1;
    for (d = rank - 1; d >= 0; --d) {
        if (st[d] != 0) zero = 0;
        if (shape[d] != 1 && st[d] != want) contig = 0;
        want *= shape[d];
    }
    return contig ? 1 : (zero ? 0 : -1);
}

void qc_binary(int op, int dt, int rank, const int *shape, const int *sa, const int *sb,
               const void *a, const void *b, void *y)
{
    int idx[QC_MAX_RANK] = {0};
    const int *st[2];
    ptrdiff_t off[2] = {0, 0};
    size_t rows = qc_rows(rank, shape), r, es = qc_dt_size(dt);
    size_t ys = (op >= QC_EQ && op <= QC_GE) ? 1 : es;
    int n = shape[rank - 1];
    const unsigned char *pa = (const unsigned char *)a, *pb = (const unsigned char *)b;
    unsigned char *py = (unsigned char *)y;
    int vf = dt == 1 && (op == QC_ADD || op == QC_SUB || op == QC_MUL || op == QC_DIV);
    st[0] = sa;
    st[1] = sb;
    if (dt == 1 && op == QC_POW && qc_stride_kind(rank, shape, sb) == 0 && *(const float *)b == 2.0f) {
        op = QC_MUL; /* x^2 (LayerNorm's Pow): x * x, the same bits as the scalar v == 2 case */
        vf = 1;
        sb = sa;
        pb = pa;
        st[1] = sb;
    }
    if (vf) {
        int ka = qc_stride_kind(rank, shape, sa), kb = qc_stride_kind(rank, shape, sb);
        if (ka >= 0 && kb >= 0) { /* contiguous or scalar operands: one loop */
            qc_binary_row_vf(op, (int)(rows * (size_t)n), (const float *)a, ka, (const float *)pb, kb, (float *)y);
            return;
        }
    }
    for (r = 0; r < rows; ++r) {
        if (vf && (sa[rank - 1] == 0 || sa[rank - 1] == 1) && (sb[rank - 1] == 0 || sb[rank - 1] == 1))
            qc_binary_row_vf(op, n, (const float *)(const void *)(pa + off[0] * (ptrdiff_t)es), sa[rank - 1],
                             (const float *)(const void *)(pb + off[1] * (ptrdiff_t)es), sb[rank - 1], (float *)(void *)py);
        else
            qc_binary_row(op, dt, n, pa + off[0] * (ptrdiff_t)es, sa[rank - 1], pb + off[1] * (ptrdiff_t)es,
                          sb[rank - 1], py);
        py += (size_t)n * ys;
        qc_odometer(rank, shape, idx, 2, st, off);
    }
}

/* -- unary ---------------------------------------------------------------------------------------- */
#define QC_MAP(EXPR)                                                                          \
    for (; i < n; ++i) {                                                                 \
        float v = x[i];                                                                       \
        y[i] = (EXPR);                                                                        \
    }                                                                                         \
    return;

static float qc_softplusf(float v)
{
    return v > 0.0f ? v + log1pf(expf(-v)) : log1pf(expf(v));
}

/* min > max gives max, as ONNX says; NaN stays NaN */
static float qc_clipf(float v, float lo, float hi)
{
    const float w = v < lo ? lo : v;
    return w > hi ? hi : w;
}

static float qc_roundf_even(float v)
{
    float r = floorf(v), d = v - r;
    if (d > 0.5f || (d == 0.5f && fmodf(r, 2.0f) != 0.0f)) r += 1.0f;
    return r;
}

/* the vector part of an elementwise map (n rounded down to 4); the QC_MAP after it does the rest
 * with the same operation per element */
#if defined(QC_VM_SIMD)
#define QC_VMAP(VEXPR)                                                                        \
    for (; i + 4 <= n; i += 4) {                                                              \
        qc_vf v = qc_vf_load(x + i);                                                          \
        qc_vf_store(y + i, (VEXPR));                                                          \
    }
#else
#define QC_VMAP(VEXPR)
#endif
#if defined(QC_VM_NEON)
#define QC_NMAP(VEXPR) QC_VMAP(VEXPR)
#else
#define QC_NMAP(VEXPR)
#endif

void qc_unary_f32(int op, size_t n, const float *x, float p0, float p1, float *y)
{
    size_t i = 0;
    switch (op) {
    case QC_NEG: QC_NMAP(vnegq_f32(v)) QC_MAP(-v)
    case QC_ABS: QC_VMAP(qc_vf_abs(v)) QC_MAP(fabsf(v))
    case QC_RELU: QC_NMAP(vbslq_f32(vcgtq_f32(v, vdupq_n_f32(0.0f)), v, vdupq_n_f32(0.0f)))
        QC_MAP(v > 0.0f ? v : 0.0f)
    case QC_EXP: QC_VMAP(qc_vexp(v)) QC_MAP(qc_expf(v))
    case QC_LOG: QC_VMAP(qc_vlog(v)) QC_MAP(qc_logf(v))
    case QC_SQRT: QC_NMAP(vsqrtq_f32(v)) QC_MAP(sqrtf(v))
    case QC_RECIP: QC_NMAP(vdivq_f32(vdupq_n_f32(1.0f), v)) QC_MAP(1.0f / v)
    case QC_SIGMOID: QC_VMAP(qc_vsigmoid(v)) QC_MAP(qc_sigmoidf_v(v))
    case QC_SILU: QC_VMAP(qc_vsilu(v)) QC_MAP(qc_siluf(v))
    case QC_TANH: QC_VMAP(qc_vtanh(v)) QC_MAP(qc_tanhf(v))
    case QC_ERF: QC_VMAP(qc_verf(v)) QC_MAP(qc_erff(v))
    case QC_FLOOR: QC_MAP(floorf(v))
    case QC_CEIL: QC_MAP(ceilf(v))
    case QC_ROUND: QC_MAP(qc_roundf_even(v))
    case QC_SIN: QC_MAP(sinf(v))
    case QC_COS: QC_MAP(cosf(v))
    case QC_TAN: QC_MAP(tanf(v))
    case QC_ASIN: QC_MAP(asinf(v))
    case QC_ACOS: QC_MAP(acosf(v))
    case QC_ATAN: QC_MAP(atanf(v))
    case QC_SINH: QC_MAP(sinhf(v))
    case QC_COSH: QC_MAP(coshf(v))
    case QC_ASINH: QC_MAP(asinhf(v))
    case QC_ACOSH: QC_MAP(acoshf(v))
    case QC_ATANH: QC_MAP(atanhf(v))
    case QC_SOFTPLUS: QC_MAP(qc_softplusf(v))
    case QC_SOFTSIGN: QC_MAP(v / (1.0f + fabsf(v)))
    case QC_SIGN: QC_MAP(v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : 0.0f))
    case QC_GELU: QC_VMAP(qc_vgelu(v)) QC_MAP(qc_geluf(v))
    case QC_GELU_TANH: QC_VMAP(qc_vgelu_tanh(v)) QC_MAP(qc_gelu_tanhf(v))
    case QC_LEAKYRELU: QC_MAP(v < 0.0f ? v * p0 : v)
    case QC_ELU: QC_MAP(v < 0.0f ? p0 * (expf(v) - 1.0f) : v)
    case QC_CELU: QC_MAP((v > 0.0f ? v : 0.0f) + fminf(0.0f, p0 * (expf(v / p0) - 1.0f)))
    case QC_SELU: QC_MAP(v <= 0.0f ? p1 * (p0 * expf(v) - p0) : p1 * v)
    case QC_HARDSIGMOID: QC_MAP(fmaxf(0.0f, fminf(1.0f, p0 * v + p1)))
    case QC_HARDSWISH: QC_MAP(v * fmaxf(0.0f, fminf(1.0f, v / 6.0f + 0.5f)))
    case QC_CLIP: QC_MAP(qc_clipf(v, p0, p1))
    case QC_THRESHOLDEDRELU: QC_MAP(v > p0 ? v : 0.0f)
    case QC_MISH: QC_MAP(v * tanhf(qc_softplusf(v)))
    case QC_NOT: {
        const uint8_t *bx = (const uint8_t *)(const void *)x;
        uint8_t *by = (uint8_t *)(void *)y;
        for (i = 0; i < n; ++i) by[i] = (uint8_t)!bx[i];
        return;
    }
    default:
        return;
    }
}

#define QC_IMAP(T, EXPR)                                                                      \
    {                                                                                         \
        const T *px = (const T *)x;                                                           \
        T *py = (T *)y;                                                                       \
        for (i = 0; i < n; ++i) {                                                             \
            T v = px[i];                                                                      \
            py[i] = (T)(EXPR);                                                                \
        }                                                                                     \
        return;                                                                               \
    }

#define QC_IUNARY(T)                                                                          \
    switch (op) {                                                                             \
    case QC_NEG: QC_IMAP(T, -v)                                                               \
    case QC_ABS: QC_IMAP(T, v < 0 ? -v : v)                                                   \
    case QC_RELU: QC_IMAP(T, v > 0 ? v : 0)                                                   \
    case QC_SIGN: QC_IMAP(T, v > 0 ? 1 : (v < 0 ? -1 : 0))                                    \
    case QC_CLIP: QC_IMAP(T, (v < p0 ? p0 : v) > p1 ? p1 : (v < p0 ? p0 : v))                 \
    default: return;                                                                          \
    }

void qc_unary_int(int op, int dt, size_t n, const void *x, int64_t p0, int64_t p1, void *y)
{
    size_t i;
    if (dt == 6) {
        QC_IUNARY(int32_t)
    } else {
        QC_IUNARY(int64_t)
    }
}
