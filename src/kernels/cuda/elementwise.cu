// Elementwise ops and the sum of squares (the global gradient norm). Eight elements per thread,
// read and written as 16-byte vectors where the tensors allow it.
#include "kernels/cuda/cuda_common.cuh"

enum { THREADS = 256, SUM_BLOCKS = 1024 };

// Whether every pointer allows the 8-element vector path.
static bool vector_ok(int64_t n, const void *a, const void *b, const void *c) {
  return n % 8 == 0 && aligned16(a) && aligned16(b) && aligned16(c);
}

// out = a + b, any of them aliased. Matches lt_cpu_add. out, a, b: (n)
template <typename T>
__global__ void add_kernel(T *out, const T *a, const T *b, int64_t n, bool vec) {
  int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
  if (vec && i < n) {
    float x[8], y[8];
    load8(a + i, x);
    load8(b + i, y);
#pragma unroll
    for (int e = 0; e < 8; e++) x[e] += y[e];
    store8(out + i, x);
    return;
  }
  for (int64_t j = i; j < i + 8 && j < n; j++)
    out[j] = from_float<T>(to_float(a[j]) + to_float(b[j]));
}

// x *= s. Matches lt_cpu_scale. x: (n)
template <typename T> __global__ void scale_kernel(T *x, float s, int64_t n, bool vec) {
  int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
  if (vec && i < n) {
    float v[8];
    load8(x + i, v);
#pragma unroll
    for (int e = 0; e < 8; e++) v[e] *= s;
    store8(x + i, v);
    return;
  }
  for (int64_t j = i; j < i + 8 && j < n; j++) x[j] = from_float<T>(to_float(x[j]) * s);
}

// dst = src, rounding to nearest even where dst is bf16. dst, src: (n)
template <typename TD, typename TS>
__global__ void convert_kernel(TD *dst, const TS *src, int64_t n, bool vec) {
  int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
  if (vec && i < n) {
    float v[8];
    load8(src + i, v);
    store8(dst + i, v);
    return;
  }
  for (int64_t j = i; j < i + 8 && j < n; j++) dst[j] = from_float<TD>(to_float(src[j]));
}

int lt_cuda_add(lt_ctx *ctx, lt_tensor out, lt_tensor a, lt_tensor b) {
  lt_cuda_state *st = cuda_state(ctx);
  if (out.dtype != a.dtype || a.dtype != b.dtype)
    return lt_cuda_unsupported("add", "out, a and b must share a dtype", a, b);
  const int64_t n = lt_numel(a);
  if (n == 0) return LT_OK;
  const bool vec = vector_ok(n, out.data, a.data, b.data);
  int rc = dispatch_float(a.dtype, [&](auto *tag) {
    using T = TYPE_OF(tag);
    add_kernel<T><<<blocks_for(n, THREADS * 8), THREADS, 0, st->stream>>>(
        (T *)out.data, (const T *)a.data, (const T *)b.data, n, vec);
    return LT_OK;
  });
  if (rc) return lt_cuda_unsupported("add", "dtype must be f32 or bf16", a, b);
  return lt_cuda_launched(st, "add", a, b);
}

int lt_cuda_scale(lt_ctx *ctx, lt_tensor x, float s) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t n = lt_numel(x);
  if (n == 0) return LT_OK;
  const bool vec = vector_ok(n, x.data, x.data, x.data);
  int rc = dispatch_float(x.dtype, [&](auto *tag) {
    using T = TYPE_OF(tag);
    scale_kernel<T><<<blocks_for(n, THREADS * 8), THREADS, 0, st->stream>>>((T *)x.data, s, n, vec);
    return LT_OK;
  });
  if (rc) return lt_cuda_unsupported("scale", "dtype must be f32 or bf16", x, x);
  return lt_cuda_launched(st, "scale", x, x);
}

int lt_cuda_zero(lt_ctx *ctx, lt_tensor x) {
  lt_cuda_state *st = cuda_state(ctx);
  char d[96];
  CUDA_TRY(cudaMemsetAsync(x.data, 0, lt_nbytes(x), st->stream), "zero of %s",
           lt_tensor_desc(x, d, sizeof d));
  return lt_cuda_launched(st, "zero", x, x);
}

static int convert(cudaStream_t stream, lt_tensor dst, lt_tensor src) {
  const int64_t n = lt_numel(src);
  const bool vec = vector_ok(n, dst.data, src.data, src.data);
  const unsigned grid = blocks_for(n, THREADS * 8);
  return dispatch_float(dst.dtype, [&](auto *dtag) {
    using TD = TYPE_OF(dtag);
    return dispatch_float(src.dtype, [&](auto *stag) {
      using TS = TYPE_OF(stag);
      convert_kernel<TD, TS>
          <<<grid, THREADS, 0, stream>>>((TD *)dst.data, (const TS *)src.data, n, vec);
      return LT_OK;
    });
  });
}

int lt_cuda_copy(lt_ctx *ctx, lt_tensor dst, lt_tensor src) {
  lt_cuda_state *st = cuda_state(ctx);
  if (lt_numel(src) == 0) return LT_OK;
  if (dst.dtype == src.dtype) {
    char d[96];
    CUDA_TRY(
        cudaMemcpyAsync(dst.data, src.data, lt_nbytes(src), cudaMemcpyDeviceToDevice, st->stream),
        "copy of %s", lt_tensor_desc(src, d, sizeof d));
  } else if (convert(st->stream, dst, src) != LT_OK) {
    return lt_cuda_unsupported("copy", "converts only between f32 and bf16", dst, src);
  }
  return lt_cuda_launched(st, "copy", dst, src);
}

int lt_cuda_f32_to_bf16(void *dst, const float *src, size_t n) {
  if (n == 0) return LT_OK;
  lt_tensor d = cuda_view1(dst, LT_BF16, (int64_t)n);
  lt_tensor s = cuda_view1((void *)src, LT_F32, (int64_t)n);
  LT_TRY(convert(0, d, s));
  CUDA_TRY(cudaDeviceSynchronize(), "f32 to bf16 conversion of %zu elements", n);
  return LT_OK;
}

// Partial sums (of squares, for SQUARE) in double, one per block, in a fixed order so the global
// gradient norm and the loss are the same on every run. Matches lt_cpu_sum_squares / lt_cpu_sum to
// double rounding. x: (n); partial: (grid)
template <typename T, bool SQUARE>
__global__ void sum_kernel(double *partial, const T *x, int64_t n) {
  __shared__ double warps[32];
  double acc = 0.0;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    double v = to_float(x[i]);
    acc += SQUARE ? v * v : v;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if ((threadIdx.x & 31) == 0) warps[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) total += warps[w];
    partial[blockIdx.x] = total;
  }
}

__global__ void sum_partials_kernel(double *out, const double *partial, int n) {
  double total = 0.0;
  for (int i = 0; i < n; i++) total += partial[i];
  *out = total;
}

// The sum on the GPU, then 8 bytes to the host: the host waits for the queue once, with no
// copy of x and no loop of its own.
template <bool SQUARE>
static int sum_to_host(lt_ctx *ctx, double *out, lt_tensor x, const char *op) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t n = lt_numel(x);
  *out = 0.0;
  if (n == 0) return LT_OK;
  int grid = (int)blocks_for(n, THREADS * 16);
  if (grid > SUM_BLOCKS) grid = SUM_BLOCKS;
  void *scratch;
  LT_TRY(lt_cuda_scratch(st, (size_t)(grid + 1) * sizeof(double), op, &scratch));
  double *partial = (double *)scratch, *total = partial + grid;
  int rc = dispatch_float(x.dtype, [&](auto *tag) {
    using T = TYPE_OF(tag);
    sum_kernel<T, SQUARE><<<grid, THREADS, 0, st->stream>>>(partial, (const T *)x.data, n);
    return LT_OK;
  });
  if (rc) return lt_cuda_unsupported(op, "dtype must be f32 or bf16", x, x);
  sum_partials_kernel<<<1, 1, 0, st->stream>>>(total, partial, grid);
  LT_TRY(lt_cuda_launched(st, op, x, x));
  char d[96];
  CUDA_TRY(
      cudaMemcpyAsync(st->host_result, total, sizeof(double), cudaMemcpyDeviceToHost, st->stream),
      "reading the %s of %s", op, lt_tensor_desc(x, d, sizeof d));
  CUDA_TRY(cudaStreamSynchronize(st->stream), "%s of %s", op, lt_tensor_desc(x, d, sizeof d));
  *out = *st->host_result;
  return LT_OK;
}

int lt_cuda_sum_squares(lt_ctx *ctx, double *out, lt_tensor x) {
  return sum_to_host<true>(ctx, out, x, "sum_squares");
}

int lt_cuda_sum(lt_ctx *ctx, double *out, lt_tensor x) {
  return sum_to_host<false>(ctx, out, x, "sum");
}
