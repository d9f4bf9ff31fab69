// RMSNorm (Zhang & Sennrich 2019): y = x / rms(x) * w. A block owns a row at a time, each thread
// eight columns per vector (up to VPT vectors), kept in registers between the reduction and the
// output; the backward of rows up to WARP_MAX_C wide gives each row one warp instead. Rows must be
// a multiple of 8 wide (config.c enforces it for run.device: cuda).
#include "kernels/cuda/cuda_common.cuh"

enum {
  MAX_THREADS = 1024,
  BWD_BLOCKS_PER_SM = 8,
  WARP_THREADS = 128, // the warp-per-row backward: 4 rows at a time per block
  WARP_BLOCKS_PER_SM = 4,
  WARP_MAX_VPL = 4, // vectors of 8 per lane: rows up to WARP_MAX_C wide
  WARP_MAX_C = 32 * 8 * WARP_MAX_VPL,
  DW_COLS = 32, // the dweight sum: a block of DW_COLS columns x DW_SLICES slices of the partials
  DW_SLICES = 8,
};

// out = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps). Matches lt_cpu_rmsnorm_fwd.
// With ADD, x = a + b (the residual add before the norm, lt_add_rmsnorm_fwd) is written to sum and
// normalised as stored, rounded to T, exactly as the two passes would: one pass that reads a and b
// and writes sum and out (4 x 50 MB at the 135M model's (32768, 768) bf16, ~0.067 ms at 3 TB/s)
// instead of an add (150 MB) and a norm (100 MB).
// x (= a), b, sum, out: (N, C); weight: (C); rstd: (N) f32
template <typename T, typename TW, int VPT, bool ADD>
__global__ void __launch_bounds__(MAX_THREADS)
    rmsnorm_fwd_kernel(T *out, float *rstd, T *sum, const T *x, const T *b, const TW *weight,
                       int64_t c, float eps) {
  __shared__ float partial[32];
  const int64_t row = blockIdx.x;
  const T *xr = x + row * c;
  float v[VPT][8];
  float ss = 0.0f;
#pragma unroll
  for (int p = 0; p < VPT; p++) {
    const int64_t col = ((int64_t)p * blockDim.x + threadIdx.x) * 8;
    if (col < c) {
      load8(xr + col, v[p]);
      if (ADD) {
        float bv[8];
        load8(b + row * c + col, bv);
#pragma unroll
        for (int e = 0; e < 8; e++) v[p][e] = to_float(from_float<T>(v[p][e] + bv[e]));
        store8(sum + row * c + col, v[p]);
      }
#pragma unroll
      for (int e = 0; e < 8; e++) ss += v[p][e] * v[p][e];
    }
  }
  const float r = rsqrtf(block_sum(ss, partial) / (float)c + eps);
  if (threadIdx.x == 0) rstd[row] = r;
#pragma unroll
  for (int p = 0; p < VPT; p++) {
    const int64_t col = ((int64_t)p * blockDim.x + threadIdx.x) * 8;
    if (col < c) {
      float w[8];
      load8(weight + col, w);
#pragma unroll
      for (int e = 0; e < 8; e++) v[p][e] = v[p][e] * r * w[e];
      store8(out + row * c + col, v[p]);
    }
  }
}

// Eight columns of a row's backward: xh (x in) becomes xhat = x r, g (dout in) becomes dout * w,
// dw += dout xhat; returns their part of sum(g xhat).
template <typename TW>
__device__ __forceinline__ float grad_terms(float (&g)[8], float (&xh)[8], float (&dw)[8],
                                            const TW *w_at, float r) {
  float w[8], dot = 0.0f;
  load8(w_at, w);
#pragma unroll
  for (int e = 0; e < 8; e++) {
    xh[e] *= r;
    dw[e] += g[e] * xh[e];
    g[e] *= w[e];
    dot += g[e] * xh[e];
  }
  return dot;
}

// With xhat = x r and g = dout * w: dx += r (g - xhat mean(g xhat)), and each block's share of
// dweight = sum over its rows of dout xhat goes to partial[block]. Matches lt_cpu_rmsnorm_bwd
// (with rmsnorm_dweight_kernel). dx, dout, x: (N, C); weight: (C); rstd: (N); partial: (grid, C)
// Blocks may have 1024 threads, so registers are few: the weight is re-read (from L1) per row.
template <typename T, typename TW, int VPT>
__global__ void __launch_bounds__(MAX_THREADS)
    rmsnorm_bwd_kernel(T *dx, float *partial, const T *dout, const T *x, const TW *weight,
                       const float *rstd, int64_t n, int64_t c) {
  __shared__ float red[32];
  float dw[VPT][8];
#pragma unroll
  for (int p = 0; p < VPT; p++)
#pragma unroll
    for (int e = 0; e < 8; e++) dw[p][e] = 0.0f;
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const float r = rstd[row];
    float g[VPT][8], xh[VPT][8];
    float dot = 0.0f;
#pragma unroll
    for (int p = 0; p < VPT; p++) {
      const int64_t col = ((int64_t)p * blockDim.x + threadIdx.x) * 8;
      if (col < c) {
        load8(dout + row * c + col, g[p]);
        load8(x + row * c + col, xh[p]);
        dot += grad_terms(g[p], xh[p], dw[p], weight + col, r);
      }
    }
    const float mean = block_sum(dot, red) / (float)c;
#pragma unroll
    for (int p = 0; p < VPT; p++) {
      const int64_t col = ((int64_t)p * blockDim.x + threadIdx.x) * 8;
      if (col < c) {
        float d[8];
        load8(dx + row * c + col, d);
#pragma unroll
        for (int e = 0; e < 8; e++) d[e] += r * (g[p][e] - xh[p][e] * mean);
        store8(dx + row * c + col, d);
      }
    }
  }
#pragma unroll
  for (int p = 0; p < VPT; p++) {
    const int64_t col = ((int64_t)p * blockDim.x + threadIdx.x) * 8;
    if (col < c) store8(partial + (int64_t)blockIdx.x * c + col, dw[p]);
  }
}

// The same for rows of up to WARP_MAX_C columns, a warp per row: the row's sum needs shuffles
// only (no __syncthreads), and a lane's loads of x, dout and dx (VPL vectors each) are all in
// flight at once. Each warp accumulates dweight over its rows in registers; the block's warps
// then add theirs through shared memory, in warp order, into partial[block].
// At the 135M model's shape (32768, 768) bf16 it reads x, dout and dx and writes dx: 4 x 50 MB,
// ~0.067 ms at 3 TB/s. dx, dout, x: (N, C); weight: (C); rstd: (N); partial: (grid, C)
template <typename T, typename TW, int VPL>
__global__ void __launch_bounds__(WARP_THREADS)
    rmsnorm_bwd_warp_kernel(T *dx, float *partial, const T *dout, const T *x, const TW *weight,
                            const float *rstd, int64_t n, int64_t c) {
  constexpr int WARPS = WARP_THREADS / 32;
  __shared__ float warp_dw[WARPS][WARP_MAX_C];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float dw[VPL][8];
#pragma unroll
  for (int p = 0; p < VPL; p++)
#pragma unroll
    for (int e = 0; e < 8; e++) dw[p][e] = 0.0f;
  for (int64_t row = (int64_t)blockIdx.x * WARPS + warp; row < n;
       row += (int64_t)gridDim.x * WARPS) {
    const float r = rstd[row];
    float g[VPL][8], xh[VPL][8], d[VPL][8];
#pragma unroll
    for (int p = 0; p < VPL; p++) {
      const int64_t col = ((int64_t)p * 32 + lane) * 8;
      if (col < c) {
        load8(dout + row * c + col, g[p]);
        load8(x + row * c + col, xh[p]);
        load8(dx + row * c + col, d[p]);
      }
    }
    float dot = 0.0f;
#pragma unroll
    for (int p = 0; p < VPL; p++) {
      const int64_t col = ((int64_t)p * 32 + lane) * 8;
      if (col < c) {
        dot += grad_terms(g[p], xh[p], dw[p], weight + col, r);
      }
    }
    const float mean = warp_sum(dot) / (float)c;
#pragma unroll
    for (int p = 0; p < VPL; p++) {
      const int64_t col = ((int64_t)p * 32 + lane) * 8;
      if (col < c) {
#pragma unroll
        for (int e = 0; e < 8; e++) d[p][e] += r * (g[p][e] - xh[p][e] * mean);
        store8(dx + row * c + col, d[p]);
      }
    }
  }
#pragma unroll
  for (int p = 0; p < VPL; p++) {
    const int64_t col = ((int64_t)p * 32 + lane) * 8;
    if (col < c)
#pragma unroll
      for (int e = 0; e < 8; e++) warp_dw[warp][col + e] = dw[p][e];
  }
  __syncthreads();
  for (int64_t j = threadIdx.x; j < c; j += WARP_THREADS) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; w++) sum += warp_dw[w][j];
    partial[(int64_t)blockIdx.x * c + j] = sum;
  }
}

// dweight[j] += sum over blocks of partial[block, j], in a fixed order (deterministic): slice y
// of a block's DW_SLICES sums the partials y, y + DW_SLICES, ..., then the slices are added in
// order. Many independent loads per column keep it short. partial: (blocks, C); dweight: (C)
__global__ void __launch_bounds__(DW_COLS *DW_SLICES)
    rmsnorm_dweight_kernel(float *dweight, const float *partial, int blocks, int64_t c) {
  __shared__ float slice_sum[DW_SLICES][DW_COLS];
  const int64_t j = (int64_t)blockIdx.x * DW_COLS + threadIdx.x;
  float sum = 0.0f;
  if (j < c) {
#pragma unroll 8
    for (int b = threadIdx.y; b < blocks; b += DW_SLICES) sum += partial[(int64_t)b * c + j];
  }
  slice_sum[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y != 0 || j >= c) return;
  float total = 0.0f;
#pragma unroll
  for (int y = 0; y < DW_SLICES; y++) total += slice_sum[y][threadIdx.x];
  dweight[j] += total;
}

// Threads per row and vectors per thread for rows of c columns.
static void row_shape(int64_t c, int *threads, int *vpt) {
  int64_t vecs = (c + 7) / 8;
  *vpt = (int)((vecs + MAX_THREADS - 1) / MAX_THREADS);
  int64_t t = (vecs + *vpt - 1) / *vpt;
  *threads = (int)((t + 31) / 32 * 32);
}

static bool rows_ok(int64_t c, lt_tensor a, lt_tensor b, lt_tensor w) {
  return c % 8 == 0 && c <= 8 * MAX_THREADS * 4 && aligned16(a.data) && aligned16(b.data) &&
         aligned16(w.data);
}

// rmsnorm_fwd_kernel on x, or with b set on x + b (written to sum).
static int launch_fwd(lt_ctx *ctx, const char *op, lt_tensor out, lt_tensor rstd, lt_tensor sum,
                      lt_tensor x, lt_tensor b, lt_tensor weight, float eps) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t c = x.shape[x.ndim - 1], n = lt_numel(x) / c;
  const bool add = b.data != nullptr;
  if (!rows_ok(c, out, x, weight) || out.dtype != x.dtype || rstd.dtype != LT_F32 ||
      (add && (!rows_ok(c, sum, b, weight) || sum.dtype != x.dtype || b.dtype != x.dtype)))
    return lt_cuda_unsupported(op, "rows a multiple of 8 wide, out (and sum, b) like x, f32 rstd",
                               x, weight);
  if (n == 0) return LT_OK;
  int threads, vpt;
  row_shape(c, &threads, &vpt);
  int rc = dispatch_float(x.dtype, [&](auto *tag) {
    using T = TYPE_OF(tag);
    return dispatch_float(weight.dtype, [&](auto *wtag) {
      using TW = TYPE_OF(wtag);
      T *sum_p = (T *)sum.data;
      const T *b_p = (const T *)b.data;
      if (add) {
        WITH_VECTORS(vpt, VPT,
                     rmsnorm_fwd_kernel<T, TW, VPT, true><<<(unsigned)n, threads, 0, st->stream>>>(
                         (T *)out.data, (float *)rstd.data, sum_p, (const T *)x.data, b_p,
                         (const TW *)weight.data, c, eps));
      } else {
        WITH_VECTORS(vpt, VPT,
                     rmsnorm_fwd_kernel<T, TW, VPT, false><<<(unsigned)n, threads, 0, st->stream>>>(
                         (T *)out.data, (float *)rstd.data, sum_p, (const T *)x.data, b_p,
                         (const TW *)weight.data, c, eps));
      }
      return LT_OK;
    });
  });
  if (rc) return lt_cuda_unsupported(op, "dtypes must be f32 or bf16", x, weight);
  return lt_cuda_launched(st, op, x, weight);
}

int lt_cuda_rmsnorm_fwd(lt_ctx *ctx, lt_tensor out, lt_tensor rstd, lt_tensor x, lt_tensor weight,
                        float eps) {
  return launch_fwd(ctx, "rmsnorm_fwd", out, rstd, lt_tensor{}, x, lt_tensor{}, weight, eps);
}

int lt_cuda_add_rmsnorm_fwd(lt_ctx *ctx, lt_tensor sum, lt_tensor out, lt_tensor rstd, lt_tensor a,
                            lt_tensor b, lt_tensor weight, float eps) {
  return launch_fwd(ctx, "add_rmsnorm_fwd", out, rstd, sum, a, b, weight, eps);
}

int lt_cuda_rmsnorm_bwd(lt_ctx *ctx, lt_tensor dx, lt_tensor dweight, lt_tensor dout, lt_tensor x,
                        lt_tensor weight, lt_tensor rstd) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t c = x.shape[x.ndim - 1], n = lt_numel(x) / c;
  if (!rows_ok(c, dx, dout, x) || !aligned16(weight.data) || dx.dtype != x.dtype ||
      dout.dtype != x.dtype || dweight.dtype != LT_F32 || rstd.dtype != LT_F32)
    return lt_cuda_unsupported(
        "rmsnorm_bwd", "rows a multiple of 8 wide, dx and dout like x, f32 dweight and rstd", x,
        dweight);
  if (n == 0) return LT_OK;
  const bool by_warp = c <= WARP_MAX_C;
  int threads, vpt;
  row_shape(c, &threads, &vpt);
  const int vpl = (int)((c / 8 + 31) / 32);
  const int64_t rows_per_block = by_warp ? WARP_THREADS / 32 : 1;
  int64_t blocks = (int64_t)st->n_sms * (by_warp ? WARP_BLOCKS_PER_SM : BWD_BLOCKS_PER_SM);
  if (blocks > (n + rows_per_block - 1) / rows_per_block)
    blocks = (n + rows_per_block - 1) / rows_per_block;
  if (blocks * c * (int64_t)sizeof(float) > (int64_t)st->scratch_bytes)
    blocks = (int64_t)st->scratch_bytes / (c * (int64_t)sizeof(float));
  void *scratch;
  LT_TRY(lt_cuda_scratch(st, (size_t)(blocks * c) * sizeof(float), "rmsnorm_bwd", &scratch));
  float *partial = (float *)scratch;
  int rc = dispatch_float(x.dtype, [&](auto *tag) {
    using T = TYPE_OF(tag);
    return dispatch_float(weight.dtype, [&](auto *wtag) {
      using TW = TYPE_OF(wtag);
      if (by_warp) {
        WITH_VECTORS(vpl, VPL,
                     rmsnorm_bwd_warp_kernel<T, TW, VPL>
                     <<<(unsigned)blocks, WARP_THREADS, 0, st->stream>>>(
                         (T *)dx.data, partial, (const T *)dout.data, (const T *)x.data,
                         (const TW *)weight.data, (const float *)rstd.data, n, c));
      } else {
        WITH_VECTORS(vpt, VPT,
                     rmsnorm_bwd_kernel<T, TW, VPT><<<(unsigned)blocks, threads, 0, st->stream>>>(
                         (T *)dx.data, partial, (const T *)dout.data, (const T *)x.data,
                         (const TW *)weight.data, (const float *)rstd.data, n, c));
      }
      return LT_OK;
    });
  });
  if (rc) return lt_cuda_unsupported("rmsnorm_bwd", "dtypes must be f32 or bf16", x, weight);
  rmsnorm_dweight_kernel<<<blocks_for(c, DW_COLS), dim3(DW_COLS, DW_SLICES), 0, st->stream>>>(
      (float *)dweight.data, partial, (int)blocks, c);
  return lt_cuda_launched(st, "rmsnorm_bwd", x, dweight);
}
