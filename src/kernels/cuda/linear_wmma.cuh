// WMMA (bf16 16 x 16 x 16, f32 accumulation) on tiles in shared memory, as the linear attention
// kernels use it (linear_scan.cu, linear_chunk_state.cu): a tile is read row-major or, for a
// transposed operand, column-major from the same padded rows.
#ifndef LT_LINEAR_WMMA_CUH
#define LT_LINEAR_WMMA_CUH

#include <mma.h>
#include <type_traits>

#include "kernels/cuda/cuda_common.cuh"

typedef nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc_frag;

// Where step kk of the depth starts in a 16-wide tile of shared memory: along a row-major A's
// columns or a column-major A's rows (and the other way round for B).
template <typename Layout> __device__ __forceinline__ int a_step(int kk, int ld) {
  return std::is_same<Layout, nvcuda::wmma::row_major>::value ? kk : kk * ld;
}
template <typename Layout> __device__ __forceinline__ int b_step(int kk, int ld) {
  return std::is_same<Layout, nvcuda::wmma::row_major>::value ? kk * ld : kk;
}

// acc[f] += A B_f for f < FR: A the warp's 16 x depth rows (layout LA), B_f the f-th 16 columns
// of a depth x (16 FR) operand (layout LB: row-major, or column-major for a transposed tile).
template <typename LA, typename LB, int FR>
__device__ __forceinline__ void mma_strip(acc_frag (&acc)[FR], const bf16 *a, int lda,
                                          const bf16 *b, int ldb, int depth) {
  constexpr bool b_rows = std::is_same<LB, nvcuda::wmma::row_major>::value;
  for (int kk = 0; kk < depth; kk += 16) {
    nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, bf16, LA> fa;
    nvcuda::wmma::load_matrix_sync(fa, a + a_step<LA>(kk, lda), lda);
#pragma unroll
    for (int f = 0; f < FR; f++) {
      nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, bf16, LB> fb;
      nvcuda::wmma::load_matrix_sync(fb, b + (b_rows ? f * 16 : f * 16 * ldb) + b_step<LB>(kk, ldb),
                                     ldb);
      nvcuda::wmma::mma_sync(acc[f], fa, fb, acc[f]);
    }
  }
}

#endif
