// RMSNorm (Zhang & Sennrich 2019): y = x / rms(x) * w. A block owns a row at a time, each thread
// eight columns per vector (up to VPT vectors), kept in registers between the reduction and the
// output. Rows must be a multiple of 8 wide (config.c enforces it for run.device: cuda).
#include "kernels/cuda/cuda_common.cuh"

enum { MAX_THREADS = 1024, BWD_BLOCKS_PER_SM = 8 };

// out = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps). Matches lt_cpu_rmsnorm_fwd.
// x, out: (N, C); weight: (C); rstd: (N) f32
template <typename T, typename TW, int VPT>
__global__ void __launch_bounds__(MAX_THREADS)
    rmsnorm_fwd_kernel(T *out, float *rstd, const T *x, const TW *weight, int64_t c, float eps) {
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
        float w[8];
        load8(dout + row * c + col, g[p]);
        load8(x + row * c + col, xh[p]);
        load8(weight + col, w);
#pragma unroll
        for (int e = 0; e < 8; e++) {
          xh[p][e] *= r;
          dw[p][e] += g[p][e] * xh[p][e];
          g[p][e] *= w[e];
          dot += g[p][e] * xh[p][e];
        }
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

// dweight[j] += sum over blocks of partial[block, j], in block order (deterministic).
__global__ void rmsnorm_dweight_kernel(float *dweight, const float *partial, int blocks,
                                       int64_t c) {
  const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= c) return;
  float sum = 0.0f;
  for (int b = 0; b < blocks; b++) sum += partial[(int64_t)b * c + j];
  dweight[j] += sum;
}

// Threads per row and vectors per thread for rows of c columns.
static void row_shape(int64_t c, int *threads, int *vpt) {
  int64_t vecs = (c + 7) / 8;
  *vpt = (int)((vecs + MAX_THREADS - 1) / MAX_THREADS);
  if (*vpt == 3) *vpt = 4;
  int64_t t = (vecs + *vpt - 1) / *vpt;
  *threads = (int)((t + 31) / 32 * 32);
}

#define WITH_VPT(vpt, ...)                                                                         \
  switch (vpt) {                                                                                   \
  case 1: {                                                                                        \
    constexpr int VPT = 1;                                                                         \
    __VA_ARGS__;                                                                                   \
  } break;                                                                                         \
  case 2: {                                                                                        \
    constexpr int VPT = 2;                                                                         \
    __VA_ARGS__;                                                                                   \
  } break;                                                                                         \
  case 4: {                                                                                        \
    constexpr int VPT = 4;                                                                         \
    __VA_ARGS__;                                                                                   \
  } break;                                                                                         \
  }

static bool rows_ok(int64_t c, lt_tensor a, lt_tensor b, lt_tensor w) {
  return c % 8 == 0 && c <= 8 * MAX_THREADS * 4 && aligned16(a.data) && aligned16(b.data) &&
         aligned16(w.data);
}

int lt_cuda_rmsnorm_fwd(lt_ctx *ctx, lt_tensor out, lt_tensor rstd, lt_tensor x, lt_tensor weight,
                        float eps) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t c = x.shape[x.ndim - 1], n = lt_numel(x) / c;
  if (!rows_ok(c, out, x, weight) || out.dtype != x.dtype || rstd.dtype != LT_F32)
    return lt_cuda_unsupported("rmsnorm_fwd", "rows a multiple of 8 wide, out like x, f32 rstd", x,
                               weight);
  if (n == 0) return LT_OK;
  int threads, vpt;
  row_shape(c, &threads, &vpt);
  int rc = dispatch_float(x.dtype, [&](auto *tag) {
    using T = TYPE_OF(tag);
    return dispatch_float(weight.dtype, [&](auto *wtag) {
      using TW = TYPE_OF(wtag);
      WITH_VPT(vpt, rmsnorm_fwd_kernel<T, TW, VPT><<<(unsigned)n, threads, 0, st->stream>>>(
                        (T *)out.data, (float *)rstd.data, (const T *)x.data,
                        (const TW *)weight.data, c, eps));
      return LT_OK;
    });
  });
  if (rc) return lt_cuda_unsupported("rmsnorm_fwd", "dtypes must be f32 or bf16", x, weight);
  return lt_cuda_launched(st, "rmsnorm_fwd", x, weight);
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
  int threads, vpt;
  row_shape(c, &threads, &vpt);
  int64_t blocks = (int64_t)st->n_sms * BWD_BLOCKS_PER_SM;
  if (blocks > n) blocks = n;
  if (blocks * c * (int64_t)sizeof(float) > (int64_t)st->scratch_bytes)
    blocks = (int64_t)st->scratch_bytes / (c * (int64_t)sizeof(float));
  void *scratch;
  LT_TRY(lt_cuda_scratch(st, (size_t)(blocks * c) * sizeof(float), "rmsnorm_bwd", &scratch));
  float *partial = (float *)scratch;
  int rc = dispatch_float(x.dtype, [&](auto *tag) {
    using T = TYPE_OF(tag);
    return dispatch_float(weight.dtype, [&](auto *wtag) {
      using TW = TYPE_OF(wtag);
      WITH_VPT(vpt, rmsnorm_bwd_kernel<T, TW, VPT><<<(unsigned)blocks, threads, 0, st->stream>>>(
                        (T *)dx.data, partial, (const T *)dout.data, (const T *)x.data,
                        (const TW *)weight.data, (const float *)rstd.data, n, c));
      return LT_OK;
    });
  });
  if (rc) return lt_cuda_unsupported("rmsnorm_bwd", "dtypes must be f32 or bf16", x, weight);
  rmsnorm_dweight_kernel<<<blocks_for(c, 256), 256, 0, st->stream>>>((float *)dweight.data, partial,
                                                                     (int)blocks, c);
  return lt_cuda_launched(st, "rmsnorm_bwd", x, dweight);
}
