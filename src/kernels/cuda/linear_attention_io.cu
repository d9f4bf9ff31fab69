// Linear attention's elementwise ends on the GPU: the feature map phi and the ones column on the
// way in, the normalisation and output gate on the way out, and the split-row statistics of the
// RMS normalisation. Match kernels/cpu/linear_attention_io.c function by function. Activations are
// bf16 or f32 (one dtype per op); rstd and the row statistics f32.
#include "kernels/cuda/cuda_common.cuh" // first: it includes the C headers as C
#include "kernels/cuda/cuda_linear.h"
#include "kernels/linear_maps.h"

enum { THREADS = 256, ROW_THREADS = 256, ROW_WARPS = ROW_THREADS / 32 };

// One thread per output element of the token's [q | k | v] row (v with its ones column when
// e = d + 1). Matches lt_cpu_linear_qkv_fwd. qkv: (N, hq + 2 hkv, d); q: (N, hq, d);
// k: (N, hkv, d); v: (N, hkv, e)
template <typename T>
__global__ void linear_qkv_fwd_kernel(T *q, T *k, T *v, const T *qkv, int64_t n, int hq, int hkv,
                                      int d, int e, lt_feature_map map) {
  const int64_t qw = (int64_t)hq * d, kw = (int64_t)hkv * d, vw = (int64_t)hkv * e;
  const int64_t out_row = qw + kw + vw, i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n * out_row) return;
  const int64_t t = i / out_row, c = i % out_row;
  const T *src = qkv + t * (qw + 2 * kw);
  if (c < qw) {
    q[t * qw + c] = from_float<T>(lt_feature(map, to_float(src[c])));
  } else if (c < qw + kw) {
    k[t * kw + c - qw] = from_float<T>(lt_feature(map, to_float(src[c])));
  } else {
    const int64_t cv = c - qw - kw, h = cv / e, x = cv % e;
    v[t * vw + cv] = x < d ? src[qw + kw + h * d + x] : from_float<T>(1.0f);
  }
}

// One thread per element of dqkv. Matches lt_cpu_linear_qkv_bwd (the ones column's gradient is
// dropped). dqkv, qkv: (N, hq + 2 hkv, d); dq: (N, hq, d); dk: (N, hkv, d); dv: (N, hkv, e)
template <typename T>
__global__ void linear_qkv_bwd_kernel(T *dqkv, const T *dq, const T *dk, const T *dv, const T *qkv,
                                      int64_t n, int hq, int hkv, int d, int e,
                                      lt_feature_map map) {
  const int64_t qw = (int64_t)hq * d, kw = (int64_t)hkv * d, row = qw + 2 * kw;
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n * row) return;
  const int64_t t = i / row, c = i % row;
  float g;
  if (c < qw) {
    g = to_float(dq[t * qw + c]) * lt_feature_grad(map, to_float(qkv[i]));
  } else if (c < qw + kw) {
    g = to_float(dk[t * kw + c - qw]) * lt_feature_grad(map, to_float(qkv[i]));
  } else {
    const int64_t cv = c - qw - kw;
    g = to_float(dv[t * hkv * (int64_t)e + cv / d * e + cv % d]);
  }
  dqkv[i] = from_float<T>(g);
}

// The normalised output at head hh, column x of token row ot. Matches `normalised` on the CPU.
template <typename T>
__device__ __forceinline__ float normalised(const T *ot, int64_t hh, int x, int d, int e,
                                            lt_linear_norm norm, float rstd, float eps) {
  const T *oh = ot + hh * e;
  switch (norm) {
  case LT_LINEAR_NORM_DENOMINATOR:
    return to_float(oh[x]) / (to_float(oh[d]) + eps);
  case LT_LINEAR_NORM_RMS:
    return to_float(oh[x]) * rstd;
  case LT_LINEAR_NORM_NONE:
    break;
  }
  return to_float(oh[x]);
}

// One block per token: the RMS statistic over the row (from row_stat when the row is split over
// ranks), then y = norm(o) g(u). Matches lt_cpu_linear_out_fwd.
// y, u: (N, h d); o: (N, h, e); rstd, row_stat: (N) f32
template <typename T>
__global__ void linear_out_fwd_kernel(T *y, float *rstd, const T *o, const T *u, int h, int d,
                                      int e, lt_linear_norm norm, lt_gate gate, float eps,
                                      const float *row_stat) {
  __shared__ float partial[32];
  const int64_t t = blockIdx.x, width = (int64_t)h * d;
  const T *ot = o + t * h * e;
  float r = 0.0f;
  if (norm == LT_LINEAR_NORM_RMS) { // e == d: the row is flat
    float ss = 0.0f;
    if (!row_stat)
      for (int64_t x = threadIdx.x; x < width; x += blockDim.x)
        ss += to_float(ot[x]) * to_float(ot[x]);
    const float mean_square = row_stat ? row_stat[t] : block_sum(ss, partial) / (float)width;
    r = rsqrtf(mean_square + eps);
    if (threadIdx.x == 0) rstd[t] = r;
  }
  for (int64_t x = threadIdx.x; x < width; x += blockDim.x) {
    const int64_t at = t * width + x;
    const float g = gate == LT_GATE_NONE ? 1.0f : lt_gate_value(gate, to_float(u[at]));
    y[at] = from_float<T>(normalised(ot, x / d, (int)(x % d), d, e, norm, r, eps) * g);
  }
}

// One block per token; with a = norm(o), y = a g(u): da = dy g(u), du = dy a g'(u), and through
// the norm, per head for the denominator (warp per head) or over the row for RMS. Matches
// lt_cpu_linear_out_bwd. d_o, o: (N, h, e); du, dy, u: (N, h d); rstd, row_stat: (N) f32
template <typename T>
__global__ void linear_out_bwd_kernel(T *d_o, T *du, const T *dy, const T *o, const T *u,
                                      const float *rstd, int h, int d, int e, lt_linear_norm norm,
                                      lt_gate gate, float eps, const float *row_stat) {
  __shared__ float partial[32];
  const int64_t t = blockIdx.x, width = (int64_t)h * d;
  const T *ot = o + t * h * e;
  T *grad = d_o + t * h * e;
  const float r = norm == LT_LINEAR_NORM_RMS ? rstd[t] : 0.0f;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  // da and a of column x of head hh (and du written once, by the thread that owns the column).
  auto grads = [&](int64_t hh, int x, bool write_du, float *a) {
    const int64_t at = t * width + hh * d + x;
    *a = normalised(ot, hh, x, d, e, norm, r, eps);
    float da = to_float(dy[at]);
    if (gate != LT_GATE_NONE) {
      const float uv = to_float(u[at]);
      if (write_du) du[at] = from_float<T>(da * *a * lt_gate_grad(gate, uv));
      da *= lt_gate_value(gate, uv);
    }
    return da;
  };
  if (norm == LT_LINEAR_NORM_DENOMINATOR) {
    for (int64_t hh = warp; hh < h; hh += ROW_WARPS) {
      float dot = 0.0f, a;
      for (int x = lane; x < d; x += 32) {
        const float da = grads(hh, x, true, &a); // sets a: a statement of its own
        dot += da * a;
      }
      dot = warp_sum(dot);
      const float inv = 1.0f / (to_float(ot[hh * e + d]) + eps);
      for (int x = lane; x < d; x += 32)
        grad[hh * e + x] = from_float<T>(grads(hh, x, false, &a) * inv);
      if (lane == 0) grad[hh * e + d] = from_float<T>(-dot * inv);
    }
    return;
  }
  float dot = 0.0f, a;
  for (int64_t x = threadIdx.x; x < width; x += blockDim.x) {
    const float da = grads(x / d, (int)(x % d), true, &a);
    dot += da * a;
  }
  if (norm == LT_LINEAR_NORM_NONE) {
    for (int64_t x = threadIdx.x; x < width; x += blockDim.x)
      grad[x] = from_float<T>(grads(x / d, (int)(x % d), false, &a));
    return;
  }
  const float mean = row_stat ? row_stat[t] : block_sum(dot, partial) / (float)width;
  for (int64_t x = threadIdx.x; x < width; x += blockDim.x) {
    const float da = grads(x / d, (int)(x % d), false, &a);
    grad[x] = from_float<T>(r * (da - a * mean));
  }
}

// row_stat[t] = sum over the row of the product the op names, / row_width: o^2 (forward), or
// (dy g(u)) (o rstd) (backward, with dy set). Matches lt_cpu_linear_out_rms_stat and
// lt_cpu_linear_out_rms_grad_stat. o, dy, u: (N, width); rstd, row_stat: (N) f32
template <typename T>
__global__ void linear_row_stat_kernel(float *row_stat, const T *o, const T *dy, const T *u,
                                       const float *rstd, lt_gate gate, int64_t width,
                                       int64_t row_width) {
  __shared__ float partial[32];
  const int64_t t = blockIdx.x;
  float sum = 0.0f;
  for (int64_t x = threadIdx.x; x < width; x += blockDim.x) {
    const int64_t at = t * width + x;
    const float ov = to_float(o[at]);
    if (!dy) {
      sum += ov * ov;
    } else {
      const float g = gate == LT_GATE_NONE ? 1.0f : lt_gate_value(gate, to_float(u[at]));
      sum += to_float(dy[at]) * g * ov * rstd[t];
    }
  }
  sum = block_sum(sum, partial);
  if (threadIdx.x == 0) row_stat[t] = sum / (float)row_width;
}

static bool same_dtype(lt_tensor a, lt_tensor b) {
  return !b.data || a.dtype == b.dtype;
}

int lt_cuda_linear_qkv_fwd(lt_ctx *ctx, lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor qkv,
                           lt_feature_map map) {
  lt_cuda_state *st = cuda_state(ctx);
  if (!same_dtype(qkv, q) || !same_dtype(qkv, k) || !same_dtype(qkv, v))
    return lt_cuda_unsupported("linear_qkv_fwd", "q, k, v must have qkv's dtype", q, qkv);
  const int64_t n = q.shape[0];
  const int hq = (int)q.shape[1], hkv = (int)k.shape[1], d = (int)q.shape[2], e = (int)v.shape[2];
  const int64_t total = n * ((int64_t)hq * d + (int64_t)hkv * (d + e));
  if (total == 0) return LT_OK;
  int rc = dispatch_float(qkv.dtype, [&](auto *tag) {
    using T = TYPE_OF(tag);
    linear_qkv_fwd_kernel<T><<<blocks_for(total, THREADS), THREADS, 0, st->stream>>>(
        (T *)q.data, (T *)k.data, (T *)v.data, (const T *)qkv.data, n, hq, hkv, d, e, map);
    return LT_OK;
  });
  if (rc) return lt_cuda_unsupported("linear_qkv_fwd", "dtype must be f32 or bf16", q, qkv);
  return lt_cuda_launched(st, "linear_qkv_fwd", q, qkv);
}

int lt_cuda_linear_qkv_bwd(lt_ctx *ctx, lt_tensor dqkv, lt_tensor dq, lt_tensor dk, lt_tensor dv,
                           lt_tensor qkv, lt_feature_map map) {
  lt_cuda_state *st = cuda_state(ctx);
  if (!same_dtype(qkv, dqkv) || !same_dtype(qkv, dq) || !same_dtype(qkv, dk) ||
      !same_dtype(qkv, dv))
    return lt_cuda_unsupported("linear_qkv_bwd", "dqkv, dq, dk, dv must have qkv's dtype", dq, qkv);
  const int64_t n = dq.shape[0], total = lt_numel(qkv);
  const int hq = (int)dq.shape[1], hkv = (int)dk.shape[1], d = (int)dq.shape[2];
  const int e = (int)dv.shape[2];
  if (total == 0) return LT_OK;
  int rc = dispatch_float(qkv.dtype, [&](auto *tag) {
    using T = TYPE_OF(tag);
    linear_qkv_bwd_kernel<T><<<blocks_for(total, THREADS), THREADS, 0, st->stream>>>(
        (T *)dqkv.data, (const T *)dq.data, (const T *)dk.data, (const T *)dv.data,
        (const T *)qkv.data, n, hq, hkv, d, e, map);
    return LT_OK;
  });
  if (rc) return lt_cuda_unsupported("linear_qkv_bwd", "dtype must be f32 or bf16", dq, qkv);
  return lt_cuda_launched(st, "linear_qkv_bwd", dqkv, qkv);
}

// The output stage's widths: o (N, h, e), d = e - 1 with the denominator.
static void out_dims(lt_tensor o, lt_linear_norm norm, int64_t *n, int *h, int *d, int *e) {
  *n = o.shape[0], *h = (int)o.shape[1], *e = (int)o.shape[2];
  *d = norm == LT_LINEAR_NORM_DENOMINATOR ? *e - 1 : *e;
}

int lt_cuda_linear_out_fwd(lt_ctx *ctx, lt_tensor y, lt_tensor rstd, lt_tensor o, lt_tensor u,
                           lt_linear_norm norm, lt_gate gate, float eps, lt_tensor row_stat) {
  lt_cuda_state *st = cuda_state(ctx);
  if (!same_dtype(o, y) || (gate != LT_GATE_NONE && !same_dtype(o, u)))
    return lt_cuda_unsupported("linear_out_fwd", "y and u must have o's dtype", y, o);
  int64_t n;
  int h, d, e;
  out_dims(o, norm, &n, &h, &d, &e);
  if (n == 0) return LT_OK;
  int rc = dispatch_float(o.dtype, [&](auto *tag) {
    using T = TYPE_OF(tag);
    linear_out_fwd_kernel<T><<<(unsigned)n, ROW_THREADS, 0, st->stream>>>(
        (T *)y.data, (float *)rstd.data, (const T *)o.data, (const T *)u.data, h, d, e, norm, gate,
        eps, (const float *)row_stat.data);
    return LT_OK;
  });
  if (rc) return lt_cuda_unsupported("linear_out_fwd", "dtype must be f32 or bf16", y, o);
  return lt_cuda_launched(st, "linear_out_fwd", y, o);
}

int lt_cuda_linear_out_bwd(lt_ctx *ctx, lt_tensor d_o, lt_tensor du, lt_tensor dy, lt_tensor o,
                           lt_tensor u, lt_tensor rstd, lt_linear_norm norm, lt_gate gate,
                           float eps, lt_tensor row_stat) {
  lt_cuda_state *st = cuda_state(ctx);
  if (!same_dtype(o, d_o) || !same_dtype(o, dy) ||
      (gate != LT_GATE_NONE && (!same_dtype(o, u) || !same_dtype(o, du))))
    return lt_cuda_unsupported("linear_out_bwd", "d_o, dy, u and du must have o's dtype", d_o, o);
  int64_t n;
  int h, d, e;
  out_dims(o, norm, &n, &h, &d, &e);
  if (n == 0) return LT_OK;
  int rc = dispatch_float(o.dtype, [&](auto *tag) {
    using T = TYPE_OF(tag);
    linear_out_bwd_kernel<T><<<(unsigned)n, ROW_THREADS, 0, st->stream>>>(
        (T *)d_o.data, (T *)du.data, (const T *)dy.data, (const T *)o.data, (const T *)u.data,
        (const float *)rstd.data, h, d, e, norm, gate, eps, (const float *)row_stat.data);
    return LT_OK;
  });
  if (rc) return lt_cuda_unsupported("linear_out_bwd", "dtype must be f32 or bf16", d_o, o);
  return lt_cuda_launched(st, "linear_out_bwd", d_o, o);
}

static int launch_row_stat(lt_cuda_state *st, const char *op, lt_tensor stat, lt_tensor o,
                           lt_tensor dy, lt_tensor u, lt_tensor rstd, lt_gate gate,
                           int64_t row_width) {
  const int64_t n = o.shape[0], width = lt_numel(o) / (n ? n : 1);
  if (!same_dtype(o, dy) || (gate != LT_GATE_NONE && !same_dtype(o, u)))
    return lt_cuda_unsupported(op, "dy and u must have o's dtype", dy, o);
  if (n == 0) return LT_OK;
  int rc = dispatch_float(o.dtype, [&](auto *tag) {
    using T = TYPE_OF(tag);
    linear_row_stat_kernel<T><<<(unsigned)n, ROW_THREADS, 0, st->stream>>>(
        (float *)stat.data, (const T *)o.data, (const T *)dy.data, (const T *)u.data,
        (const float *)rstd.data, gate, width, row_width);
    return LT_OK;
  });
  if (rc) return lt_cuda_unsupported(op, "dtype must be f32 or bf16", stat, o);
  return lt_cuda_launched(st, op, stat, o);
}

int lt_cuda_linear_out_rms_stat(lt_ctx *ctx, lt_tensor row_stat_out, lt_tensor o,
                                int64_t row_width) {
  const lt_tensor none = {};
  return launch_row_stat(cuda_state(ctx), "linear_out_rms_stat", row_stat_out, o, none, none, none,
                         LT_GATE_NONE, row_width);
}

int lt_cuda_linear_out_rms_grad_stat(lt_ctx *ctx, lt_tensor row_stat_out, lt_tensor dy, lt_tensor o,
                                     lt_tensor u, lt_tensor rstd, lt_gate gate, int64_t row_width) {
  return launch_row_stat(cuda_state(ctx), "linear_out_rms_grad_stat", row_stat_out, o, dy, u, rstd,
                         gate, row_width);
}
