// SwiGLU (Shazeer 2020): h = silu(gate) * up, on the fused [gate | up] projection. Eight columns
// per thread; F must be a multiple of 8 (config.c enforces it for run.device: cuda).
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/swiglu.cuh"

enum { THREADS = 256 };

__device__ __forceinline__ float sigmoid(float g) {
  return 1.0f / (1.0f + expf(-g));
}

// h = silu(gate) * up. Matches lt_cpu_swiglu_fwd. gate_up: (N, 2F) = [gate | up]; h: (N, F)
template <typename T>
__global__ void swiglu_fwd_kernel(T *h, const T *gate_up, int64_t n, int64_t f) {
  const int64_t g8 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
  if (g8 >= n * f) return;
  const int64_t row = g8 / f, col = g8 % f;
  float g[8], u[8];
  load8(gate_up + row * 2 * f + col, g);
  load8(gate_up + row * 2 * f + f + col, u);
#pragma unroll
  for (int e = 0; e < 8; e++) g[e] = g[e] * sigmoid(g[e]) * u[e];
  store8(h + g8, g);
}

// d/dgate = dh * up * s (1 + gate (1 - s)), d/dup = dh * silu(gate), s = sigmoid(gate), and
// where h is not NULL h = silu(gate) * up as swiglu_fwd_kernel writes it (the backward then reads
// gate_up once for both: 6 bytes per hidden unit read, 6 written in bf16).
// Matches lt_cpu_swiglu_bwd. dgate_up, gate_up: (N, 2F); dh, h: (N, F)
template <typename T>
__global__ void swiglu_bwd_kernel(T *dgate_up, T *h, const T *dh, const T *gate_up, int64_t n,
                                  int64_t f) {
  const int64_t g8 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
  if (g8 >= n * f) return;
  const int64_t row = g8 / f, col = g8 % f;
  float g[8], u[8], d[8], dg[8], du[8], hv[8];
  load8(gate_up + row * 2 * f + col, g);
  load8(gate_up + row * 2 * f + f + col, u);
  load8(dh + g8, d);
#pragma unroll
  for (int e = 0; e < 8; e++) {
    const swiglu_unit r = swiglu_backward_at(g[e], u[e], d[e], sigmoid(g[e]));
    hv[e] = r.h, du[e] = r.dup, dg[e] = r.dgate;
  }
  store8(dgate_up + row * 2 * f + col, dg);
  store8(dgate_up + row * 2 * f + f + col, du);
  if (h) store8(h + g8, hv);
}

static bool swiglu_ok(int64_t f, lt_tensor a, lt_tensor b, lt_tensor c) {
  return f % 8 == 0 && aligned16(a.data) && aligned16(b.data) && aligned16(c.data) &&
         a.dtype == b.dtype && b.dtype == c.dtype;
}

int lt_cuda_swiglu_fwd(lt_ctx *ctx, lt_tensor h, lt_tensor gate_up) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t f = h.shape[h.ndim - 1], n = lt_numel(h) / f;
  if (!swiglu_ok(f, h, gate_up, gate_up))
    return lt_cuda_unsupported("swiglu_fwd", "F a multiple of 8, one dtype", h, gate_up);
  if (n == 0) return LT_OK;
  int rc = dispatch_float(h.dtype, [&](auto *tag) {
    using T = TYPE_OF(tag);
    swiglu_fwd_kernel<T><<<blocks_for(n * f / 8, THREADS), THREADS, 0, st->stream>>>(
        (T *)h.data, (const T *)gate_up.data, n, f);
    return LT_OK;
  });
  if (rc) return lt_cuda_unsupported("swiglu_fwd", "dtype must be f32 or bf16", h, gate_up);
  return lt_cuda_launched(st, "swiglu_fwd", h, gate_up);
}

int lt_cuda_swiglu_bwd(lt_ctx *ctx, lt_tensor dgate_up, lt_tensor h, lt_tensor dh,
                       lt_tensor gate_up) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t f = dh.shape[dh.ndim - 1], n = lt_numel(dh) / f;
  if (!swiglu_ok(f, dgate_up, dh, gate_up) || (h.data && !swiglu_ok(f, h, dh, dh)))
    return lt_cuda_unsupported("swiglu_bwd", "F a multiple of 8, one dtype", dgate_up, dh);
  if (n == 0) return LT_OK;
  int rc = dispatch_float(dh.dtype, [&](auto *tag) {
    using T = TYPE_OF(tag);
    swiglu_bwd_kernel<T><<<blocks_for(n * f / 8, THREADS), THREADS, 0, st->stream>>>(
        (T *)dgate_up.data, (T *)h.data, (const T *)dh.data, (const T *)gate_up.data, n, f);
    return LT_OK;
  });
  if (rc) return lt_cuda_unsupported("swiglu_bwd", "dtype must be f32 or bf16", dgate_up, dh);
  return lt_cuda_launched(st, "swiglu_bwd", dgate_up, dh);
}
