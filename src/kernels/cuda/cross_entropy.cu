// Softmax cross-entropy per row of f32 logits, the loss of the LM head's chunk, with the gradient
// written in the activations' dtype for the backward matmuls. One block per row: an online
// (max, sum of exp) pass (Milakov & Gimelshein 2018), then the gradient pass, whose re-read of the
// row hits L2 because few rows are in flight at once (1024-thread blocks).
#include <math.h>

#include "kernels/cuda/cuda_common.cuh"

enum { THREADS = 1024 };

// The running (max, sum of exp(x - max)) of two parts merged.
__device__ __forceinline__ void merge_softmax(float *m, float *s, float m2, float s2) {
  if (m2 == -INFINITY) return;
  if (*m == -INFINITY) {
    *m = m2, *s = s2;
    return;
  }
  const float mx = fmaxf(*m, m2);
  *s = *s * expf(*m - mx) + s2 * expf(m2 - mx);
  *m = mx;
}

// losses[n] = lse(logits[n]) - logits[n, t_n] (0 where ignored); dlogits, when given, =
// grad_scale * (softmax(logits[n]) - onehot(t_n)). Matches lt_cpu_cross_entropy.
// logits: (N, V) f32; dlogits: (N, V) or NULL, may alias logits; targets: (N) i32; losses: (N)
template <typename TG>
__global__ void __launch_bounds__(THREADS)
    cross_entropy_kernel(float *losses, TG *dlogits, const float *logits, const int32_t *targets,
                         int64_t v, int ignore_index, float grad_scale, bool vec) {
  __shared__ float warp_m[32], warp_s[32];
  const int64_t row = blockIdx.x;
  const float *x = logits + row * v;
  TG *grad = dlogits ? dlogits + row * v : nullptr;
  const int32_t target = targets[row];
  if (target == ignore_index) {
    if (threadIdx.x == 0) losses[row] = 0.0f;
    if (grad)
      for (int64_t j = threadIdx.x; j < v; j += blockDim.x) grad[j] = from_float<TG>(0.0f);
    return;
  }
  float m = -INFINITY, s = 0.0f;
  for (int64_t j = (int64_t)threadIdx.x * 8; j < v; j += (int64_t)blockDim.x * 8) {
    float e[8];
    int count = 8;
    if (vec) {
      load8(x + j, e);
    } else {
      count = v - j < 8 ? (int)(v - j) : 8;
      for (int i = 0; i < 8; i++) e[i] = i < count ? x[j + i] : -INFINITY;
    }
    float mx = e[0];
#pragma unroll
    for (int i = 1; i < 8; i++) mx = fmaxf(mx, e[i]);
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++) sum += i < count ? expf(e[i] - mx) : 0.0f;
    merge_softmax(&m, &s, mx, sum);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    merge_softmax(&m, &s, m2, s2);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_m[warp] = m, warp_s[warp] = s;
  __syncthreads();
  m = -INFINITY, s = 0.0f;
  for (int w = 0; w < (int)(blockDim.x >> 5); w++) merge_softmax(&m, &s, warp_m[w], warp_s[w]);
  const float lse = m + logf(s);
  if (threadIdx.x == 0) losses[row] = lse - x[target];
  if (!grad) return;
  __syncthreads(); // x[target] is read above before the in-place gradient overwrites it
  for (int64_t j = (int64_t)threadIdx.x * 8; j < v; j += (int64_t)blockDim.x * 8) {
    float e[8];
    if (vec) {
      load8(x + j, e);
#pragma unroll
      for (int i = 0; i < 8; i++)
        e[i] = grad_scale * (expf(e[i] - lse) - (j + i == target ? 1.0f : 0.0f));
      store8(grad + j, e);
    } else {
      for (int64_t i = j; i < j + 8 && i < v; i++)
        grad[i] = from_float<TG>(grad_scale * (expf(x[i] - lse) - (i == target ? 1.0f : 0.0f)));
    }
  }
}

int lt_cuda_cross_entropy(lt_ctx *ctx, lt_tensor losses, lt_tensor dlogits, lt_tensor logits,
                          lt_tensor targets, int ignore_index, float grad_scale) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t v = logits.shape[logits.ndim - 1], n = lt_numel(logits) / v;
  if (n == 0) return LT_OK;
  const bool vec =
      v % 8 == 0 && aligned16(logits.data) && (!dlogits.data || aligned16(dlogits.data));
  int rc = dispatch_float(dlogits.data ? dlogits.dtype : LT_F32, [&](auto *tag) {
    using TG = TYPE_OF(tag);
    cross_entropy_kernel<TG><<<(unsigned)n, THREADS, 0, st->stream>>>(
        (float *)losses.data, (TG *)dlogits.data, (const float *)logits.data,
        (const int32_t *)targets.data, v, ignore_index, grad_scale, vec);
    return LT_OK;
  });
  if (rc)
    return lt_cuda_unsupported("cross_entropy", "dlogits must be f32 or bf16", dlogits, logits);
  return lt_cuda_launched(st, "cross_entropy", logits, dlogits);
}
