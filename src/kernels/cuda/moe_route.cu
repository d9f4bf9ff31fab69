// The MoE router on the GPU (Shazeer et al. 2017; Switch Transformer; ST-MoE): softmax, top-k and
// gates per token, the probability sums the load-balance loss needs, and the router's backward.
// One warp per token: lane j holds experts j, j + 32, ... Sums that the CPU takes in double are
// taken in double here too, in a fixed order, so every run gives the same bits.
#include <math.h>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_moe.h"

enum {
  THREADS = 256,
  TOKENS_PER_BLOCK = THREADS / 32,
  // A lane's experts are j = lane + 32 i; bit i of its mask marks j as chosen already.
  MASK_WORDS = LT_CUDA_MOE_MAX_EXPERTS / 32 / 32,
  SUM_CHUNKS = 128, // row chunks of the column sums, each one block's partial
  SUM_ROWS = 8,     // row lanes of a column-sum block (32 columns x 8 rows = THREADS)
};

__device__ __forceinline__ double warp_sum_double(double x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// probs = softmax(logits), lse = logsumexp(logits), and the top-k experts with their gates per
// token. Matches lt_cpu_moe_route: the exponentials summed in double, top-k by repeated selection
// with ties to the lower index (the warp's arg-max orders (p, index) pairs so every lane agrees).
// logits, probs: (n, e) f32; gate: (n, k) f32; expert: (n, k) i32; lse: (n) f32
__global__ void __launch_bounds__(THREADS)
    moe_route_kernel(float *gate, int32_t *expert, float *probs, float *lse, const float *logits,
                     int64_t n, int e, int k, bool renormalize) {
  const int lane = threadIdx.x & 31;
  const int64_t t = (int64_t)blockIdx.x * TOKENS_PER_BLOCK + (threadIdx.x >> 5);
  if (t >= n) return; // the whole warp: t is the warp's
  const float *l = logits + t * e;
  float *p = probs + t * e;
  float max = -INFINITY;
  for (int j = lane; j < e; j += 32) max = fmaxf(max, l[j]);
  max = warp_max(max);
  double sum = 0.0;
  for (int j = lane; j < e; j += 32) {
    p[j] = expf(l[j] - max);
    sum += p[j];
  }
  sum = warp_sum_double(sum);
  for (int j = lane; j < e; j += 32) p[j] = (float)(p[j] / sum);
  if (lane == 0) lse[t] = max + (float)log(sum);
  uint32_t taken[MASK_WORDS] = {0};
  double kept = 0.0;
  for (int s = 0; s < k; s++) {
    float best_p = 0.0f;
    int best = -1;
    for (int i = 0, j = lane; j < e; i++, j += 32)
      if (!((taken[i >> 5] >> (i & 31)) & 1u) && (best < 0 || p[j] > best_p))
        best_p = p[j], best = j;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float other_p = __shfl_xor_sync(0xffffffffu, best_p, o);
      const int other = __shfl_xor_sync(0xffffffffu, best, o);
      if (other >= 0 && (best < 0 || other_p > best_p || (other_p == best_p && other < best)))
        best_p = other_p, best = other;
    }
    if (best >= 0 && (best & 31) == lane) {
      const int i = best >> 5;
      taken[i >> 5] |= 1u << (i & 31);
    }
    kept += best_p;
    if (lane == 0) expert[t * k + s] = best, gate[t * k + s] = best_p;
  }
  if (renormalize && lane == 0)
    for (int s = 0; s < k; s++) gate[t * k + s] = (float)(gate[t * k + s] / kept);
}

// partial[chunk, j] = the sum of m[r, j] over the rows r of the chunk, in double and a fixed
// order. Block (x, chunk) holds 32 columns from 32 x; its 8 row lanes each sum every 8th row.
// m: (rows, cols) f32; partial: (SUM_CHUNKS, cols) f64
__global__ void __launch_bounds__(THREADS)
    column_partials_kernel(double *partial, const float *m, int64_t rows, int cols,
                           int64_t rows_per_chunk) {
  __shared__ double lanes[SUM_ROWS][32];
  const int col = blockIdx.x * 32 + threadIdx.x;
  const int64_t begin = (int64_t)blockIdx.y * rows_per_chunk;
  const int64_t end = begin + rows_per_chunk < rows ? begin + rows_per_chunk : rows;
  double acc = 0.0;
  if (col < cols)
    for (int64_t r = begin + threadIdx.y; r < end; r += SUM_ROWS) acc += m[r * cols + col];
  lanes[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y != 0 || col >= cols) return;
  double total = 0.0;
  for (int y = 0; y < SUM_ROWS; y++) total += lanes[y][threadIdx.x];
  partial[(int64_t)blockIdx.y * cols + col] = total;
}

// sums[j] = the chunks' partial sums of column j, added in chunk order. sums: (cols) f32
__global__ void column_finish_kernel(float *sums, const double *partial, int chunks, int cols) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  double total = 0.0;
  for (int c = 0; c < chunks; c++) total += partial[(int64_t)c * cols + j];
  sums[j] = (float)total;
}

int lt_cuda_moe_route(lt_ctx *ctx, lt_tensor gate, lt_tensor expert, lt_tensor probs, lt_tensor lse,
                      lt_tensor prob_sum, lt_tensor logits, bool renormalize) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t n = logits.shape[0];
  const int e = (int)logits.shape[1], k = (int)gate.shape[1];
  if (logits.dtype != LT_F32 || lse.dtype != LT_F32 || prob_sum.dtype != LT_F32)
    return lt_cuda_unsupported("moe_route", "logits, lse and prob_sum must be f32", logits, lse);
  if (e > LT_CUDA_MOE_MAX_EXPERTS)
    return lt_cuda_unsupported("moe_route", "more experts than LT_CUDA_MOE_MAX_EXPERTS", logits,
                               logits);
  if (n == 0) return lt_cuda_zero(ctx, prob_sum);
  moe_route_kernel<<<blocks_for(n, TOKENS_PER_BLOCK), THREADS, 0, st->stream>>>(
      (float *)gate.data, (int32_t *)expert.data, (float *)probs.data, (float *)lse.data,
      (const float *)logits.data, n, e, k, renormalize);
  LT_TRY(lt_cuda_launched(st, "moe_route", logits, gate));
  void *scratch;
  LT_TRY(lt_cuda_scratch(st, (size_t)SUM_CHUNKS * e * sizeof(double), "moe_route", &scratch));
  const int64_t rows_per_chunk = (n + SUM_CHUNKS - 1) / SUM_CHUNKS;
  const int chunks = (int)((n + rows_per_chunk - 1) / rows_per_chunk);
  column_partials_kernel<<<dim3(blocks_for(e, 32), chunks), dim3(32, SUM_ROWS), 0, st->stream>>>(
      (double *)scratch, (const float *)probs.data, n, e, rows_per_chunk);
  column_finish_kernel<<<blocks_for(e, THREADS), THREADS, 0, st->stream>>>(
      (float *)prob_sum.data, (const double *)scratch, chunks, e);
  return lt_cuda_launched(st, "moe_route prob_sum", probs, prob_sum);
}

// dlogits from the gates' gradient and the auxiliary losses', per token. Matches
// lt_cpu_moe_route_bwd term by term (same double expressions, same float roundings):
//   dlogit_j = p_j (balance_j - sum_i p_i balance_i + z_scale lse - shift)  [+ the routed term
//   on the chosen experts], shift = sum_s g_s dgate_s for plain gates, 0 for renormalized ones.
// dgate, gate: (n, k) f32; expert: (n, k) i32; probs: (n, e) f32; lse: (n); balance: (e);
// dlogits: (n, e) f32 or bf16
template <typename TO>
__global__ void __launch_bounds__(THREADS)
    moe_route_bwd_kernel(TO *dlogits, const float *dgate, const float *gate, const int32_t *expert,
                         const float *probs, const float *lse, const float *balance, float z_scale,
                         int64_t n, int e, int k, bool renormalize) {
  const int lane = threadIdx.x & 31;
  const int64_t t = (int64_t)blockIdx.x * TOKENS_PER_BLOCK + (threadIdx.x >> 5);
  if (t >= n) return;
  const float *p = probs + t * e, *g = gate + t * k, *dg = dgate + t * k;
  const int32_t *chosen = expert + t * k;
  double gate_dot = 0.0, balance_dot = 0.0;
  for (int s = 0; s < k; s++) gate_dot += (double)g[s] * dg[s];
  for (int j = lane; j < e; j += 32) balance_dot += (double)p[j] * balance[j];
  balance_dot = warp_sum_double(balance_dot);
  const double shift = renormalize ? 0.0 : gate_dot;
  const float z_term = z_scale * lse[t];
  for (int j = lane; j < e; j += 32) {
    float d = (float)(p[j] * (balance[j] - balance_dot + z_term - shift));
    for (int s = 0; s < k; s++)
      if (chosen[s] == j)
        d += (float)(renormalize ? g[s] * (dg[s] - gate_dot) : (double)p[j] * dg[s]);
    dlogits[t * e + j] = from_float<TO>(d);
  }
}

int lt_cuda_moe_route_bwd(lt_ctx *ctx, lt_tensor dlogits, lt_tensor dgate, lt_tensor gate,
                          lt_tensor expert, lt_tensor probs, lt_tensor lse, lt_tensor balance,
                          float z_scale, bool renormalize) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t n = probs.shape[0];
  const int e = (int)probs.shape[1], k = (int)gate.shape[1];
  if (dgate.dtype != LT_F32 || gate.dtype != LT_F32 || probs.dtype != LT_F32 ||
      lse.dtype != LT_F32 || balance.dtype != LT_F32 || expert.dtype != LT_I32)
    return lt_cuda_unsupported("moe_route_bwd", "dgate, gate, probs, lse, balance f32; expert i32",
                               dgate, probs);
  if (n == 0) return LT_OK;
  int rc = dispatch_float(dlogits.dtype, [&](auto *tag) {
    using TO = TYPE_OF(tag);
    moe_route_bwd_kernel<TO><<<blocks_for(n, TOKENS_PER_BLOCK), THREADS, 0, st->stream>>>(
        (TO *)dlogits.data, (const float *)dgate.data, (const float *)gate.data,
        (const int32_t *)expert.data, (const float *)probs.data, (const float *)lse.data,
        (const float *)balance.data, z_scale, n, e, k, renormalize);
    return LT_OK;
  });
  if (rc)
    return lt_cuda_unsupported("moe_route_bwd", "dlogits must be f32 or bf16", dlogits, probs);
  return lt_cuda_launched(st, "moe_route_bwd", dlogits, probs);
}
