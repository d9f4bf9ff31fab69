// Softmax cross-entropy per row of logits (f32, or bf16 as the LM head makes them in a bf16
// model), the loss of the LM head's chunk, with the gradient written in the activations' dtype for
// the backward matmuls, in place of the logits or beside them. Matches lt_cpu_cross_entropy on the
// same logits; every sum is f32.
//
// The pass is memory-bound: a 32K-vocabulary row of bf16 is 64 KiB read and 64 KiB written in
// place, so it runs at the GPU's bandwidth only if each row is read once. Where the row fits in
// a block's registers (V <= 32768, a multiple of 8, 16-byte aligned), one block holds its row in
// registers from a single read: the max, then exp(x - max) kept in place of x, then their sum,
// then the gradient from the kept exps (one exp per element, on the special function unit). Other
// rows take two passes: an online (max, sum of exp) pass (Milakov & Gimelshein 2018), then the
// gradient pass, whose re-read of the row hits L2 because few rows are in flight at once.
#include <math.h>

#include <type_traits>

#include "kernels/cuda/cuda_common.cuh"

// Register path: a thread holds CHUNKS vectors of 8 logits, vector k of thread t at columns
// 8 (k blockDim + t) .. + 7, so each warp's loads are 1 KiB contiguous. 1024 threads of at most
// 64 registers hold 32 values each: V up to 32768 in one block. Such a block takes the whole
// register file, so an SM works on one row at a time: one block per row leaves the memory idle
// while the row's sums and gradient are computed. bf16 rows (64 KiB at V = 32768) therefore go
// through shared memory instead: each thread copies its own vectors of the block's next row there
// (cp.async) as soon as it has read the current row's out, so the next row's bytes are on their
// way while this one is summed and written (cross_entropy_rows_kernel, one block an SM).
enum { ROW_THREADS = 1024, MAX_CHUNKS = 4, TWO_PASS_THREADS = 1024 };

// Row `row`'s outputs when its target is ignored: loss 0, gradient 0.
template <typename TG, int CHUNKS>
__device__ __forceinline__ void ignored_row(float *losses, TG *grad, int64_t row,
                                            const int (&col)[CHUNKS], int v) {
  if (threadIdx.x == 0) losses[row] = 0.0f;
  const float zero[8] = {};
  if (grad) {
#pragma unroll
    for (int k = 0; k < CHUNKS; k++)
      if (col[k] < v) store8(grad + col[k], zero);
  }
}

// One row's loss and gradient from its logits in e (-inf past the row's end); `read` runs once
// every value of e has been used (the loads behind it are done). The target's logit comes from
// the registers of the thread that holds it: an in-place gradient overwrites it in memory.
template <typename TG, int CHUNKS, typename Read>
__device__ __forceinline__ void softmax_row(float (&e)[CHUNKS][8], const int (&col)[CHUNKS], int v,
                                            int32_t target, float grad_scale, float *partial,
                                            float *loss, TG *grad, Read read) {
  bool holds_target = false;
  float x_target = 0.0f, m = -INFINITY;
#pragma unroll
  for (int k = 0; k < CHUNKS; k++)
#pragma unroll
    for (int i = 0; i < 8; i++) {
      if (col[k] + i == target) x_target = e[k][i], holds_target = true;
      m = fmaxf(m, e[k][i]);
    }
  read();
  m = block_max(m, partial);
  // exp(x - m) = 2^(x log2(e) - m log2(e)): one FMA and one ex2 per element.
  const float m_log2 = m * LOG2E;
  float s = 0.0f;
#pragma unroll
  for (int k = 0; k < CHUNKS; k++)
#pragma unroll
    for (int i = 0; i < 8; i++) {
      e[k][i] = fast_exp2(fmaf(e[k][i], LOG2E, -m_log2));
      s += e[k][i];
    }
  s = block_sum(s, partial);
  if (holds_target) *loss = m + logf(s) - x_target;
  if (!grad) return;
  // softmax = exp(x - m) / s. Each thread writes only the columns it has read, so the in-place
  // gradient needs no barrier.
  const float scale = grad_scale / s;
#pragma unroll
  for (int k = 0; k < CHUNKS; k++) {
    if (col[k] >= v) continue;
    float g[8];
#pragma unroll
    for (int i = 0; i < 8; i++) g[i] = e[k][i] * scale - (col[k] + i == target ? grad_scale : 0.0f);
    store8(grad + col[k], g);
  }
}

template <int CHUNKS> __device__ __forceinline__ void row_columns(int (&col)[CHUNKS]) {
#pragma unroll
  for (int k = 0; k < CHUNKS; k++) col[k] = (k * (int)blockDim.x + (int)threadIdx.x) * 8;
}

// losses[n] = lse(logits[n]) - logits[n, t_n] (0 where ignored); dlogits, when given, =
// grad_scale * (softmax(logits[n]) - onehot(t_n)), 0 where ignored.
// logits: (N, V) f32, V % 8 == 0, V <= 8 CHUNKS blockDim, rows 16-byte aligned; dlogits: (N, V)
// or NULL, may alias logits; targets: (N) i32; losses: (N) f32. One block per row.
template <typename TG, int CHUNKS>
__global__ void __launch_bounds__(ROW_THREADS)
    cross_entropy_row_kernel(float *losses, TG *dlogits, const float *logits,
                             const int32_t *targets, int v, int ignore_index, float grad_scale) {
  __shared__ float partial[32];
  const int64_t row = blockIdx.x;
  const int32_t target = targets[row];
  TG *grad = dlogits ? dlogits + row * v : nullptr;
  int col[CHUNKS];
  row_columns(col);
  if (target == ignore_index) return ignored_row(losses, grad, row, col, v);
  // Every load is issued before any is used: the row's bytes are in flight at once.
  const float *x = logits + row * v;
  float e[CHUNKS][8];
#pragma unroll
  for (int k = 0; k < CHUNKS; k++) {
    if (col[k] < v) {
      load8(x + col[k], e[k]);
    } else {
#pragma unroll
      for (int i = 0; i < 8; i++) e[k][i] = -INFINITY; // adds exp(-inf) = 0 to the sum
    }
  }
  softmax_row(e, col, v, target, grad_scale, partial, losses + row, grad, [] {});
}

// As cross_entropy_row_kernel for bf16 logits, a block walking rows blockIdx.x, + gridDim.x, ...
// with the next row's vectors copied into shared memory while the current one is computed (see
// the top). staged: (CHUNKS, blockDim) vectors of 16 bytes, each thread's own.
template <typename TG, int CHUNKS>
__global__ void __launch_bounds__(ROW_THREADS, 1)
    cross_entropy_rows_kernel(float *losses, TG *dlogits, const bf16 *logits,
                              const int32_t *targets, int64_t n, int v, int ignore_index,
                              float grad_scale) {
  extern __shared__ uint4 staged[];
  __shared__ float partial[32];
  int col[CHUNKS];
  row_columns(col);
  auto stage = [&](int64_t row) {
#pragma unroll
    for (int k = 0; k < CHUNKS; k++)
      if (row < n && col[k] < v)
        cp_async16(smem_u32(&staged[k * blockDim.x + threadIdx.x]), logits + row * v + col[k],
                   true);
    cp_async_commit();
  };
  stage(blockIdx.x);
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    cp_async_wait<0>(); // this thread's vectors of `row` have landed (no other thread reads them)
    const int32_t target = targets[row];
    TG *grad = dlogits ? dlogits + row * v : nullptr;
    if (target == ignore_index) {
      stage(row + gridDim.x);
      ignored_row(losses, grad, row, col, v);
      continue;
    }
    float e[CHUNKS][8];
#pragma unroll
    for (int k = 0; k < CHUNKS; k++) {
      if (col[k] < v) {
        load8(reinterpret_cast<const bf16 *>(&staged[k * blockDim.x + threadIdx.x]), e[k]);
      } else {
#pragma unroll
        for (int i = 0; i < 8; i++) e[k][i] = -INFINITY;
      }
    }
    // The next row goes into the same slots once their values have been used (the empty asm
    // keeps the compiler from moving the shared loads past the copies).
    softmax_row(e, col, v, target, grad_scale, partial, losses + row, grad, [&] {
      asm volatile("" ::: "memory");
      stage(row + gridDim.x);
    });
  }
}

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

// As cross_entropy_row_kernel, for any V and alignment (vec: V % 8 == 0 and both rows 16-byte
// aligned). logits: (N, V); dlogits: (N, V) or NULL, may alias logits; targets: (N) i32;
// losses: (N) f32. One block per row.
template <typename TL, typename TG>
__global__ void __launch_bounds__(TWO_PASS_THREADS)
    cross_entropy_two_pass_kernel(float *losses, TG *dlogits, const TL *logits,
                                  const int32_t *targets, int64_t v, int ignore_index,
                                  float grad_scale, bool vec) {
  __shared__ float warp_m[32], warp_s[32];
  const int64_t row = blockIdx.x;
  const TL *x = logits + row * v;
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
      for (int i = 0; i < 8; i++) e[i] = i < count ? to_float(x[j + i]) : -INFINITY;
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
  if (threadIdx.x == 0) losses[row] = lse - to_float(x[target]);
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
        grad[i] =
            from_float<TG>(grad_scale * (expf(to_float(x[i]) - lse) - (i == target ? 1.0f : 0.0f)));
    }
  }
}

// One register-path launch of CHUNKS vectors a thread: f32 rows a block each; bf16 rows through
// the copy-ahead kernel, as many blocks as fit at once (one an SM at V = 32768; more for narrow
// rows), each walking its share of the rows.
template <typename TL, typename TG, int CHUNKS>
static void launch_chunks(const lt_cuda_state *st, int threads, int64_t n, float *losses,
                          TG *dlogits, const TL *logits, const int32_t *targets, int v,
                          int ignore_index, float grad_scale) {
  if constexpr (std::is_same_v<TL, bf16>) {
    auto kernel = cross_entropy_rows_kernel<TG, CHUNKS>;
    const int smem = CHUNKS * threads * 16;
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    int per_sm = 1;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem);
    const int64_t fit = (int64_t)(per_sm > 1 ? per_sm : 1) * st->n_sms, grid = n < fit ? n : fit;
    kernel<<<(unsigned)grid, threads, smem, st->stream>>>(losses, dlogits, logits, targets, n, v,
                                                          ignore_index, grad_scale);
  } else {
    cross_entropy_row_kernel<TG, CHUNKS><<<(unsigned)n, threads, 0, st->stream>>>(
        losses, dlogits, logits, targets, v, ignore_index, grad_scale);
  }
}

// The register path's launch: the fewest vectors per thread that cover the row with at most
// ROW_THREADS threads, then the fewest whole warps that cover it with that many.
template <typename TL, typename TG>
static void launch_row_kernel(const lt_cuda_state *st, int64_t n, float *losses, TG *dlogits,
                              const TL *logits, const int32_t *targets, int v, int ignore_index,
                              float grad_scale) {
  const int vectors = v / 8, chunks = (vectors + ROW_THREADS - 1) / ROW_THREADS;
  const int threads = ((vectors + chunks - 1) / chunks + 31) / 32 * 32;
  switch (chunks) {
  case 1:
    launch_chunks<TL, TG, 1>(st, threads, n, losses, dlogits, logits, targets, v, ignore_index,
                             grad_scale);
    break;
  case 2:
    launch_chunks<TL, TG, 2>(st, threads, n, losses, dlogits, logits, targets, v, ignore_index,
                             grad_scale);
    break;
  case 3:
    launch_chunks<TL, TG, 3>(st, threads, n, losses, dlogits, logits, targets, v, ignore_index,
                             grad_scale);
    break;
  default:
    launch_chunks<TL, TG, MAX_CHUNKS>(st, threads, n, losses, dlogits, logits, targets, v,
                                      ignore_index, grad_scale);
    break;
  }
}

int lt_cuda_cross_entropy(lt_ctx *ctx, lt_tensor losses, lt_tensor dlogits, lt_tensor logits,
                          lt_tensor targets, int ignore_index, float grad_scale) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t v = logits.shape[logits.ndim - 1], n = lt_numel(logits) / v;
  if (n == 0) return LT_OK;
  if (dlogits.data == logits.data && dlogits.dtype != logits.dtype)
    return lt_cuda_unsupported("cross_entropy", "an in-place gradient in the logits' dtype",
                               dlogits, logits);
  const bool vec =
      v % 8 == 0 && aligned16(logits.data) && (!dlogits.data || aligned16(dlogits.data));
  const bool in_registers = vec && v <= (int64_t)ROW_THREADS * MAX_CHUNKS * 8;
  int rc = dispatch_float(logits.dtype, [&](auto *ltag) {
    using TL = TYPE_OF(ltag);
    return dispatch_float(dlogits.data ? dlogits.dtype : LT_F32, [&](auto *gtag) {
      using TG = TYPE_OF(gtag);
      float *loss = (float *)losses.data;
      TG *grad = (TG *)dlogits.data;
      const TL *x = (const TL *)logits.data;
      const int32_t *t = (const int32_t *)targets.data;
      if (in_registers)
        launch_row_kernel<TL, TG>(st, n, loss, grad, x, t, (int)v, ignore_index, grad_scale);
      else
        cross_entropy_two_pass_kernel<TL, TG><<<(unsigned)n, TWO_PASS_THREADS, 0, st->stream>>>(
            loss, grad, x, t, v, ignore_index, grad_scale, vec);
      return LT_OK;
    });
  });
  if (rc)
    return lt_cuda_unsupported("cross_entropy", "logits and dlogits must be f32 or bf16", dlogits,
                               logits);
  return lt_cuda_launched(st, "cross_entropy", logits, dlogits);
}
