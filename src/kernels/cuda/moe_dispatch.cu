// MoE token dispatch and combine on the GPU: the gather of token rows into expert order, the
// gate-weighted gather back to token order, and their backwards. One warp per row (or token),
// eight columns per lane at a time. Each output row is written by one warp, which adds a token's
// choices in rank order as the CPU does: no atomics, the same result every run.
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_moe.h"

enum { THREADS = 256, ROWS_PER_BLOCK = THREADS / 32 };

// Columns [8 c, 8 c + 8) of a row of width d as f32: one 16-byte vector where `vec` (d a multiple
// of 8, rows 16-byte aligned), else element by element with zeros past d.
template <typename T>
__device__ __forceinline__ void load_cols(const T *row, int64_t c, int64_t d, bool vec,
                                          float (&v)[8]) {
  if (vec) {
    load8(row + 8 * c, v);
    return;
  }
#pragma unroll
  for (int i = 0; i < 8; i++) v[i] = 8 * c + i < d ? to_float(row[8 * c + i]) : 0.0f;
}

template <typename T>
__device__ __forceinline__ void store_cols(T *row, int64_t c, int64_t d, bool vec,
                                           const float (&v)[8]) {
  if (vec) {
    store8(row + 8 * c, v);
    return;
  }
#pragma unroll
  for (int i = 0; i < 8; i++)
    if (8 * c + i < d) row[8 * c + i] = from_float<T>(v[i]);
}

__device__ __forceinline__ int64_t warp_index() {
  return (int64_t)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
}

// xe[r] = x[row_token[r]] (zeros for a row no token owns). Matches lt_cpu_moe_dispatch.
// x: (n, d); xe: (rows, d); row_token: (>= rows) i32
template <typename TO, typename TI>
__global__ void __launch_bounds__(THREADS)
    moe_dispatch_kernel(TO *xe, const TI *x, const int32_t *row_token, int64_t rows, int64_t d,
                        bool vec) {
  const int64_t r = warp_index();
  if (r >= rows) return;
  const int32_t token = row_token[r];
  for (int64_t c = threadIdx.x & 31; c < (d + 7) / 8; c += 32) {
    float v[8] = {0};
    if (token >= 0) load_cols(x + (int64_t)token * d, c, d, vec, v);
    store_cols(xe + r * d, c, d, vec, v);
  }
}

// dx[t] = sum over t's kept choices s of dxe[slot_row[t, s]], in rank order. Matches
// lt_cpu_moe_dispatch_bwd. dx: (n, d); dxe: (rows, d); slot_row: (n, k) i32
template <typename TD, typename TE>
__global__ void __launch_bounds__(THREADS)
    moe_dispatch_bwd_kernel(TD *dx, const TE *dxe, const int32_t *slot_row, int64_t n, int k,
                            int64_t d, bool vec) {
  const int64_t t = warp_index();
  if (t >= n) return;
  for (int64_t c = threadIdx.x & 31; c < (d + 7) / 8; c += 32) {
    float acc[8] = {0};
    for (int s = 0; s < k; s++) {
      const int32_t row = slot_row[t * k + s];
      if (row < 0) continue;
      float v[8];
      load_cols(dxe + (int64_t)row * d, c, d, vec, v);
#pragma unroll
      for (int i = 0; i < 8; i++) acc[i] += v[i];
    }
    store_cols(dx + t * d, c, d, vec, acc);
  }
}

// out[t] = sum over t's kept choices s of gate[t, s] ye[slot_row[t, s]], in rank order. Matches
// lt_cpu_moe_combine. out: (n, d); ye: (rows, d); gate: (n, k) f32; slot_row: (n, k) i32
template <typename TO, typename TY>
__global__ void __launch_bounds__(THREADS)
    moe_combine_kernel(TO *out, const TY *ye, const float *gate, const int32_t *slot_row, int64_t n,
                       int k, int64_t d, bool vec) {
  const int64_t t = warp_index();
  if (t >= n) return;
  for (int64_t c = threadIdx.x & 31; c < (d + 7) / 8; c += 32) {
    float acc[8] = {0};
    for (int s = 0; s < k; s++) {
      const int32_t row = slot_row[t * k + s];
      if (row < 0) continue;
      const float w = gate[t * k + s];
      float v[8];
      load_cols(ye + (int64_t)row * d, c, d, vec, v);
#pragma unroll
      for (int i = 0; i < 8; i++) acc[i] += w * v[i];
    }
    store_cols(out + t * d, c, d, vec, acc);
  }
}

// dye[slot_row[t, s]] = gate[t, s] dout[t] and dgate[t, s] = dout[t] . ye[slot_row[t, s]] (0 for
// a dropped choice). Matches lt_cpu_moe_combine_bwd; the dot product is a warp's f32 sum.
// dye, ye: (rows, d); dout: (n, d); gate, dgate: (n, k) f32; slot_row: (n, k) i32
template <typename TY, typename TD>
__global__ void __launch_bounds__(THREADS)
    moe_combine_bwd_kernel(TY *dye, float *dgate, const TD *dout, const TY *ye, const float *gate,
                           const int32_t *slot_row, int64_t n, int k, int64_t d, bool vec) {
  const int64_t t = warp_index();
  if (t >= n) return;
  const int lane = threadIdx.x & 31;
  for (int s = 0; s < k; s++) {
    const int32_t row = slot_row[t * k + s];
    if (row < 0) {
      if (lane == 0) dgate[t * k + s] = 0.0f;
      continue;
    }
    const float w = gate[t * k + s];
    float dot = 0.0f;
    for (int64_t c = lane; c < (d + 7) / 8; c += 32) {
      float g[8], y[8], dy[8];
      load_cols(dout + t * d, c, d, vec, g);
      load_cols(ye + (int64_t)row * d, c, d, vec, y);
#pragma unroll
      for (int i = 0; i < 8; i++) dy[i] = w * g[i], dot += g[i] * y[i];
      store_cols(dye + (int64_t)row * d, c, d, vec, dy);
    }
    dot = warp_sum(dot);
    if (lane == 0) dgate[t * k + s] = dot;
  }
}

// Whether rows of width d at these pointers can move as 16-byte vectors.
static bool rows_vectorised(int64_t d, const void *a, const void *b, const void *c) {
  return d % 8 == 0 && aligned16(a) && aligned16(b) && aligned16(c);
}

// Launches one of the kernels above, a warp per row of `warps`, with the C++ types of the two
// row tensors a and b (f32 or bf16 each): launch(tag_a, tag_b, grid) makes the call.
template <typename F>
static int launch_rows(lt_cuda_state *st, const char *op, int64_t warps, lt_tensor a, lt_tensor b,
                       F &&launch) {
  if (warps == 0) return LT_OK;
  const unsigned grid = blocks_for(warps, ROWS_PER_BLOCK);
  int rc = dispatch_float(a.dtype, [&](auto *tag_a) {
    return dispatch_float(b.dtype, [&](auto *tag_b) {
      launch(tag_a, tag_b, grid);
      return LT_OK;
    });
  });
  if (rc) return lt_cuda_unsupported(op, "rows must be f32 or bf16", a, b);
  return lt_cuda_launched(st, op, a, b);
}

int lt_cuda_moe_dispatch(lt_ctx *ctx, lt_tensor xe, lt_tensor x, lt_tensor row_token) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t rows = xe.shape[0], d = x.shape[1];
  const bool vec = rows_vectorised(d, xe.data, x.data, x.data);
  return launch_rows(st, "moe_dispatch", rows, xe, x, [&](auto *to, auto *ti, unsigned grid) {
    using TO = TYPE_OF(to);
    using TI = TYPE_OF(ti);
    moe_dispatch_kernel<TO, TI><<<grid, THREADS, 0, st->stream>>>(
        (TO *)xe.data, (const TI *)x.data, (const int32_t *)row_token.data, rows, d, vec);
  });
}

int lt_cuda_moe_dispatch_bwd(lt_ctx *ctx, lt_tensor dx, lt_tensor dxe, lt_tensor slot_row) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t n = dx.shape[0], d = dx.shape[1];
  const int k = (int)slot_row.shape[1];
  const bool vec = rows_vectorised(d, dx.data, dxe.data, dxe.data);
  return launch_rows(st, "moe_dispatch_bwd", n, dx, dxe, [&](auto *td, auto *te, unsigned grid) {
    using TD = TYPE_OF(td);
    using TE = TYPE_OF(te);
    moe_dispatch_bwd_kernel<TD, TE><<<grid, THREADS, 0, st->stream>>>(
        (TD *)dx.data, (const TE *)dxe.data, (const int32_t *)slot_row.data, n, k, d, vec);
  });
}

int lt_cuda_moe_combine(lt_ctx *ctx, lt_tensor out, lt_tensor ye, lt_tensor gate,
                        lt_tensor slot_row) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t n = out.shape[0], d = out.shape[1];
  const int k = (int)gate.shape[1];
  const bool vec = rows_vectorised(d, out.data, ye.data, ye.data);
  return launch_rows(st, "moe_combine", n, out, ye, [&](auto *to, auto *ty, unsigned grid) {
    using TO = TYPE_OF(to);
    using TY = TYPE_OF(ty);
    moe_combine_kernel<TO, TY><<<grid, THREADS, 0, st->stream>>>(
        (TO *)out.data, (const TY *)ye.data, (const float *)gate.data,
        (const int32_t *)slot_row.data, n, k, d, vec);
  });
}

int lt_cuda_moe_combine_bwd(lt_ctx *ctx, lt_tensor dye, lt_tensor dgate, lt_tensor dout,
                            lt_tensor ye, lt_tensor gate, lt_tensor slot_row) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t n = dout.shape[0], d = dout.shape[1];
  const int k = (int)gate.shape[1];
  if (dgate.dtype != LT_F32 || dye.dtype != ye.dtype)
    return lt_cuda_unsupported("moe_combine_bwd", "dgate f32, dye of ye's dtype", dye, dgate);
  const bool vec = rows_vectorised(d, dye.data, dout.data, ye.data);
  return launch_rows(st, "moe_combine_bwd", n, ye, dout, [&](auto *ty, auto *td, unsigned grid) {
    using TY = TYPE_OF(ty);
    using TD = TYPE_OF(td);
    moe_combine_bwd_kernel<TY, TD><<<grid, THREADS, 0, st->stream>>>(
        (TY *)dye.data, (float *)dgate.data, (const TD *)dout.data, (const TY *)ye.data,
        (const float *)gate.data, (const int32_t *)slot_row.data, n, k, d, vec);
  });
}
