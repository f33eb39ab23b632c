/* Internal to the aarch64 qc_gemm_s8 variants (qc_gemm_s8_neon.c, qc_gemm_s8_i8mm.c): the edges
   of a 4-row register tile. Not part of the API. */
#ifndef QC_GEMM_S8_TILE_H
#define QC_GEMM_S8_TILE_H

#include <string.h>
#include "qc_kernels.h"

/* Row pointers for rows m .. m+3 of A (M x K); past M the last valid row repeats so loads stay
   in bounds. t[r] gets the K tail (K - full bytes) of row r, zero-padded to 16 bytes.
   Returns the number of valid rows. */
static inline int qc_tile_rows(const int8_t *A, int M, int K, int m, int full, const int8_t *a[4],
                               int8_t t[4][16])
{
    const int rows = M - m < 4 ? M - m : 4;
    int r;
    for (r = 0; r < 4; ++r) {
        a[r] = A + (size_t)(m + (r < rows ? r : rows - 1)) * K;
        memset(t[r], 0, 16);
        if (K > full) {
            memcpy(t[r], a[r] + full, (size_t)(K - full));
        }
    }
    return rows;
}

/* Store the valid rows x cols part of a tile (row stride ld) at C[m][n] (C is M x N). */
static inline void qc_tile_store(int32_t *C, int N, int m, int n, int rows, int cols,
                                 const int32_t *tile, int ld)
{
    int r, j;
    for (r = 0; r < rows; ++r) {
        for (j = 0; j < cols; ++j) {
            C[(size_t)(m + r) * N + n + j] = tile[r * ld + j];
        }
    }
}

#endif /* QC_GEMM_S8_TILE_H */
