// WMMA (bf16 16 x 16 x 16, f32 accumulation) on tiles in shared memory, as the linear attention
// kernels use it (linear_scan.cu, linear_chunk.cu): a tile is read row-major or, for a transposed
// operand, column-major from the same padded rows.
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

#endif
