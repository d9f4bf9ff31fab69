// Token embedding: the lookup, and its backward as a deterministic scatter-add.
#include "kernels/cuda/cuda_common.cuh"

enum {
  THREADS = 256,
  BWD_TOKENS = 4 * THREADS, // tokens a backward block examines per round
  BWD_SMEM = 96 << 10,      // bytes of f32 row accumulators per backward block
};

// out[n, :] = table[tokens[n], :]. Matches lt_cpu_embedding_fwd.
// tokens: (N) i32; table: (V, D); out: (N, D); eight columns per thread.
template <typename TO, typename TT>
__global__ void embedding_fwd_kernel(TO *out, const int32_t *tokens, const TT *table, int64_t n,
                                     int64_t d, bool vec) {
  const int64_t vecs = (d + 7) / 8, g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= n * vecs) return;
  const int64_t row = g / vecs, col = (g % vecs) * 8;
  const TT *src = table + (int64_t)tokens[row] * d + col;
  TO *dst = out + row * d + col;
  if (vec) {
    float v[8];
    load8(src, v);
    store8(dst, v);
    return;
  }
  for (int64_t e = 0; e < 8 && col + e < d; e++) dst[e] = from_float<TO>(to_float(src[e]));
}

// dtable[tokens[n], :] += dout[n, :]. Matches lt_cpu_embedding_bwd, and like it adds each row's
// contributions in increasing n, so the result does not depend on scheduling: block (x, y) owns
// vocab rows [x rows, x rows + rows) and columns [y cols, y cols + cols), scans every token, and
// sums the rows of dout that land in its range into shared memory, in token order.
// dtable: (V, D) f32; dout: (N, D); tokens: (N) i32
template <typename TD>
__global__ void __launch_bounds__(THREADS)
    embedding_bwd_kernel(float *dtable, const TD *dout, const int32_t *tokens, int64_t n,
                         int64_t vocab, int64_t d, int rows, int cols) {
  extern __shared__ float acc[]; // (rows, cols)
  __shared__ int match_token[BWD_TOKENS], match_row[BWD_TOKENS], warp_total[THREADS / 32];
  __shared__ int touched[THREADS];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t v0 = (int64_t)blockIdx.x * rows, c0 = (int64_t)blockIdx.y * cols;
  const int width = (int)(d - c0 < cols ? d - c0 : cols);
  for (int i = tid; i < rows * cols; i += THREADS) acc[i] = 0.0f;
  for (int i = tid; i < rows; i += THREADS) touched[i] = 0;
  for (int64_t base = 0; base < n; base += BWD_TOKENS) {
    // Each thread looks at 4 consecutive tokens; matches are listed in token order.
    int found_row[4], found = 0;
    for (int e = 0; e < 4; e++) {
      const int64_t i = base + 4 * tid + e;
      found_row[e] = -1;
      if (i < n) {
        const int64_t r = (int64_t)tokens[i] - v0;
        if (r >= 0 && r < rows) found_row[e] = (int)r, found++;
      }
    }
    int inclusive = found;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      int y = __shfl_up_sync(0xffffffffu, inclusive, o);
      if (lane >= o) inclusive += y;
    }
    if (lane == 31) warp_total[warp] = inclusive;
    __syncthreads();
    int pos = inclusive - found, total = 0;
    for (int w = 0; w < THREADS / 32; w++) {
      if (w < warp) pos += warp_total[w];
      total += warp_total[w];
    }
    for (int e = 0; e < 4; e++)
      if (found_row[e] >= 0) {
        match_token[pos] = (int)(base + 4 * tid + e);
        match_row[pos++] = found_row[e];
      }
    __syncthreads();
    for (int m = 0; m < total; m++) {
      const int r = match_row[m];
      const TD *src = dout + (int64_t)match_token[m] * d + c0;
      for (int j = tid; j < width; j += THREADS) acc[r * cols + j] += to_float(src[j]);
      if (tid == 0) touched[r] = 1;
    }
    __syncthreads();
  }
  for (int r = 0; r < rows && v0 + r < vocab; r++) {
    if (!touched[r]) continue;
    float *dst = dtable + (v0 + r) * d + c0;
    for (int j = tid; j < width; j += THREADS) dst[j] += acc[r * cols + j];
  }
}

int lt_cuda_embedding_fwd(lt_ctx *ctx, lt_tensor out, lt_tensor tokens, lt_tensor table) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t n = lt_numel(tokens), d = table.shape[1];
  if (n == 0) return LT_OK;
  const bool vec = d % 8 == 0 && aligned16(out.data) && aligned16(table.data);
  const unsigned grid = blocks_for(n * ((d + 7) / 8), THREADS);
  int rc = dispatch_float(out.dtype, [&](auto *otag) {
    using TO = TYPE_OF(otag);
    return dispatch_float(table.dtype, [&](auto *ttag) {
      using TT = TYPE_OF(ttag);
      embedding_fwd_kernel<TO, TT><<<grid, THREADS, 0, st->stream>>>(
          (TO *)out.data, (const int32_t *)tokens.data, (const TT *)table.data, n, d, vec);
      return LT_OK;
    });
  });
  if (rc)
    return lt_cuda_unsupported("embedding_fwd", "out and table must be f32 or bf16", out, table);
  return lt_cuda_launched(st, "embedding_fwd", out, table);
}

int lt_cuda_embedding_bwd(lt_ctx *ctx, lt_tensor dtable, lt_tensor dout, lt_tensor tokens) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t n = lt_numel(tokens), vocab = dtable.shape[0], d = dtable.shape[1];
  if (dtable.dtype != LT_F32)
    return lt_cuda_unsupported("embedding_bwd", "dtable must be f32", dtable, dout);
  if (n == 0) return LT_OK;
  const int cols = d < 1024 ? (int)d : 1024;
  int rows = (int)(BWD_SMEM / sizeof(float) / (size_t)cols);
  if (rows > THREADS) rows = THREADS;
  const size_t smem = (size_t)rows * cols * sizeof(float);
  dim3 grid(blocks_for(vocab, rows), blocks_for(d, cols));
  int rc = dispatch_float(dout.dtype, [&](auto *tag) {
    using TD = TYPE_OF(tag);
    cudaFuncSetAttribute(embedding_bwd_kernel<TD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         (int)smem);
    embedding_bwd_kernel<TD><<<grid, THREADS, smem, st->stream>>>(
        (float *)dtable.data, (const TD *)dout.data, (const int32_t *)tokens.data, n, vocab, d,
        rows, cols);
    return LT_OK;
  });
  if (rc) return lt_cuda_unsupported("embedding_bwd", "dout must be f32 or bf16", dtable, dout);
  return lt_cuda_launched(st, "embedding_bwd", dtable, dout);
}
