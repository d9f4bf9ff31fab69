// What the CUDA kernels share: the per-context state (stream, cuBLASLt, workspaces), error
// reporting that names the op and its tensors, dtype dispatch, and 8-element vector access that
// turns bf16 or f32 storage into f32 registers.
#ifndef LT_CUDA_COMMON_CUH
#define LT_CUDA_COMMON_CUH

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <type_traits>

extern "C" {
#include "core/error.h"
#include "core/tensor.h"
#include "kernels/cuda/cuda_kernels.h"
}

typedef __nv_bfloat16 bf16;

struct matmul_plan;   // matmul.cu
struct cuda_profile;  // runtime.cu
struct cublasContext; // cuBLAS's handle (cublasHandle_t), for grouped_matmul.cu

// A pinned staging buffer for host-to-device uploads (lt_cuda_upload) and the event its last copy
// recorded: the buffer is written again only once the stream has passed that copy.
typedef struct lt_cuda_upload_slot {
  void *host;
  size_t bytes;
  cudaEvent_t copied;
} lt_cuda_upload_slot;
enum { LT_CUDA_UPLOAD_SLOTS = 8 };

typedef struct lt_cuda_state {
  int device, n_sms;
  cudaStream_t stream;
  // A second stream for independent kernels of one op (forked from and joined back into `stream`
  // by the two events), so that a small kernel fills the SMs a larger one leaves idle in its tail.
  cudaStream_t side;
  cudaEvent_t fork, join;
  cublasLtHandle_t blas;
  void *blas_workspace; // cuBLASLt's, sized as NVIDIA recommends for Hopper
  size_t blas_workspace_bytes;
  // Kernels' own workspace: partial sums of deterministic reductions and attention's tile tables.
  // Ops run one after another on the stream, so each may use all of it.
  void *scratch;
  size_t scratch_bytes;
  double *host_result;                               // pinned: where reductions land on the host
  lt_cuda_upload_slot uploads[LT_CUDA_UPLOAD_SLOTS]; // a ring, taken in turn
  int next_upload;
  struct matmul_plan *plans;
  int n_plans;
  bool sync_each_op; // LT_CUDA_SYNC=1: wait after every op, so an error names the op that failed
  bool attn_wgmma;   // attention on wgmma (an sm_90a build on a Hopper GPU), else mma.sync
  struct cuda_profile *profile;    // LT_CUDA_PROFILE=1: GPU time per op, printed when the ctx ends
  struct cublasContext *gemm_blas; // cuBLAS for the experts' GEMMs, made on first use
} lt_cuda_state;

static inline lt_cuda_state *cuda_state(lt_ctx *ctx) {
  return (lt_cuda_state *)ctx->cuda;
}

void lt_cuda_matmul_plans_free(lt_cuda_state *st); // matmul.cu
void lt_cuda_gemm_blas_free(lt_cuda_state *st);    // grouped_matmul.cu
// Chooses the attention kernels: wgmma where this build has them and the GPU is a Hopper, unless
// LT_ATTENTION_KERNELS=portable asks for the mma.sync ones (attention_fwd.cu).
int lt_cuda_attn_pick_kernels(lt_cuda_state *st);

// Records "CUDA error in <what>: <message> (<name>)" and returns LT_ERR_DEVICE.
int lt_cuda_fail(cudaError_t err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// After a kernel launch: a launch error, or with LT_CUDA_SYNC=1 any error of the kernel itself,
// becomes a message naming `op` and the tensors a and b.
int lt_cuda_launched(lt_cuda_state *st, const char *op, lt_tensor a, lt_tensor b);
// An unsupported dtype or layout on the CUDA path: a bug in the caller, named with its tensors.
int lt_cuda_unsupported(const char *op, const char *what, lt_tensor a, lt_tensor b);
// Workspace for `bytes`, or an internal error naming the op.
int lt_cuda_scratch(lt_cuda_state *st, size_t bytes, const char *op, void **out);
// Grows the workspace to at least `bytes` (after the queued kernels, which may use the old one);
// false, leaving it as it was, where the GPU has no room: for ops whose need grows with T and
// that have another path.
bool lt_cuda_scratch_reserve(lt_cuda_state *st, size_t bytes);

#define CUDA_TRY(call, ...)                                                                        \
  do {                                                                                             \
    cudaError_t cuda_try_err_ = (call);                                                            \
    if (cuda_try_err_ != cudaSuccess) return lt_cuda_fail(cuda_try_err_, __VA_ARGS__);             \
  } while (0)

// lt_view1 for C++ (LT_SHAPE's compound literal is C only).
static inline lt_tensor cuda_view1(void *data, lt_dtype dtype, int64_t n) {
  const int64_t shape[1] = {n};
  return lt_view(data, dtype, LT_CUDA, 1, shape);
}

static inline bool aligned16(const void *p) {
  return ((uintptr_t)p & 15u) == 0;
}

// Runs the statement with NAME a constant of 1 to 4 (vectors per thread, or per lane): n.
#define WITH_VECTORS(n, NAME, ...)                                                                 \
  switch (n) {                                                                                     \
  case 1: {                                                                                        \
    constexpr int NAME = 1;                                                                        \
    __VA_ARGS__;                                                                                   \
  } break;                                                                                         \
  case 2: {                                                                                        \
    constexpr int NAME = 2;                                                                        \
    __VA_ARGS__;                                                                                   \
  } break;                                                                                         \
  case 3: {                                                                                        \
    constexpr int NAME = 3;                                                                        \
    __VA_ARGS__;                                                                                   \
  } break;                                                                                         \
  case 4: {                                                                                        \
    constexpr int NAME = 4;                                                                        \
    __VA_ARGS__;                                                                                   \
  } break;                                                                                         \
  }

static inline unsigned blocks_for(int64_t n, int per_block) {
  return (unsigned)((n + per_block - 1) / per_block);
}

// Runs f with a null pointer of the C++ type behind a floating-point dtype (f32 or bf16):
//   dispatch_float(t.dtype, [&](auto *tag) { using T = std::remove_pointer_t<decltype(tag)>; ... })
template <typename F> static int dispatch_float(lt_dtype dtype, F &&f) {
  if (dtype == LT_F32) return f((float *)nullptr);
  if (dtype == LT_BF16) return f((bf16 *)nullptr);
  return -1;
}
#define TYPE_OF(tag) std::remove_pointer_t<decltype(tag)>

template <typename T> static inline bool is_dtype(lt_tensor t);
template <> inline bool is_dtype<float>(lt_tensor t) {
  return t.dtype == LT_F32;
}
template <> inline bool is_dtype<bf16>(lt_tensor t) {
  return t.dtype == LT_BF16;
}

__device__ __forceinline__ float to_float(float x) {
  return x;
}
__device__ __forceinline__ float to_float(bf16 x) {
  return __bfloat162float(x);
}
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <> __device__ __forceinline__ bf16 from_float<bf16>(float x) {
  return __float2bfloat16_rn(x);
}

// Eight consecutive elements (16-byte aligned for bf16, 32 for f32) as f32.
__device__ __forceinline__ void load8(const bf16 *p, float (&v)[8]) {
  uint4 raw = *reinterpret_cast<const uint4 *>(p);
  const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&raw);
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 f = __bfloat1622float2(h[i]);
    v[2 * i] = f.x, v[2 * i + 1] = f.y;
  }
}
__device__ __forceinline__ void load8(const float *p, float (&v)[8]) {
  float4 a = reinterpret_cast<const float4 *>(p)[0], b = reinterpret_cast<const float4 *>(p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
__device__ __forceinline__ void store8(bf16 *p, const float (&v)[8]) {
  uint4 raw;
  __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&raw);
#pragma unroll
  for (int i = 0; i < 4; i++) h[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
  *reinterpret_cast<uint4 *>(p) = raw;
}
__device__ __forceinline__ void store8(float *p, const float (&v)[8]) {
  reinterpret_cast<float4 *>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4 *>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

__device__ __forceinline__ uint32_t smem_u32(const void *p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}

// 16 bytes global -> shared, asynchronously; zero-filled when !valid (rows past the end).
__device__ __forceinline__ void cp_async16(uint32_t smem_addr, const void *gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr), "l"(gmem),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// A reduction over the block in a fixed order (deterministic): each warp reduces its lanes, then
// every thread combines the warps' results in warp order. `shared` holds 32 floats; every thread
// gets the result.
template <typename WarpOp, typename Op>
__device__ __forceinline__ float block_reduce(float x, float *shared, WarpOp warp_op, Op op) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = (blockDim.x + 31) >> 5;
  x = warp_op(x);
  __syncthreads(); // shared may still be read from a previous call
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  float total = shared[0];
  for (int w = 1; w < n_warps; w++) total = op(total, shared[w]);
  return total;
}
__device__ __forceinline__ float block_sum(float x, float *shared) {
  return block_reduce(
      x, shared, [](float a) { return warp_sum(a); }, [](float a, float b) { return a + b; });
}
__device__ __forceinline__ float block_max(float x, float *shared) {
  return block_reduce(
      x, shared, [](float a) { return warp_max(a); }, [](float a, float b) { return fmaxf(a, b); });
}

#define LOG2E 1.4426950408889634f

// 2^x on the special function unit, flushing results below 2^-126 to zero (probabilities that
// small do not matter); exp2f's extra range handling costs instructions in the inner loops.
// e^x is fast_exp2(x * LOG2E), with the scale folded into the FMA that forms x.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

#endif
