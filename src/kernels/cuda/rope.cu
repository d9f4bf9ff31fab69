// Rotary position embedding (Su et al. 2021, RoFormer eq. 34) in Hugging Face Llama's split-halves
// layout, fused with splitting the q|k|v projection. One thread per (token, rotation pair i):
// it computes the angle once and applies it to every head of that token.
#include "kernels/cuda/cuda_common.cuh"

enum { THREADS = 128 };

// cos and sign * sin of pos * theta^(-2i/D), in fp32 as lt_cpu_rope_qkv_fwd computes them.
__device__ __forceinline__ void rope_angle(int32_t pos, int i, int d, float theta, float sign,
                                           float *c, float *s) {
  const float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)d);
  sincosf((float)pos * inv_freq, s, c);
  *s *= sign;
}

// q, k = rotate(qkv's q and k heads), v = qkv's v heads. Matches lt_cpu_rope_qkv_fwd.
// qkv: (N, Hq + 2 Hkv, D); q: (N, Hq, D); k, v: (N, Hkv, D); pos: (N) i32
template <typename TQ, typename TKV, typename TX>
__global__ void rope_qkv_fwd_kernel(TQ *q, TKV *k, TKV *v, const TX *qkv, const int32_t *pos,
                                    int64_t n, int hq, int hkv, int d, float theta) {
  const int half = d / 2;
  const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= n * half) return;
  const int64_t t = g / half;
  const int i = (int)(g % half);
  float c, s;
  rope_angle(pos[t], i, d, theta, 1.0f, &c, &s);
  const TX *row = qkv + t * (int64_t)(hq + 2 * hkv) * d;
  for (int h = 0; h < hq + hkv; h++) {
    const float x0 = to_float(row[h * d + i]), x1 = to_float(row[h * d + i + half]);
    const float y0 = x0 * c - x1 * s, y1 = x1 * c + x0 * s;
    if (h < hq) {
      q[(t * hq + h) * d + i] = from_float<TQ>(y0);
      q[(t * hq + h) * d + i + half] = from_float<TQ>(y1);
    } else {
      k[(t * hkv + h - hq) * d + i] = from_float<TKV>(y0);
      k[(t * hkv + h - hq) * d + i + half] = from_float<TKV>(y1);
    }
  }
  for (int h = 0; h < hkv; h++) {
    const TX *src = row + (int64_t)(hq + hkv + h) * d;
    v[(t * hkv + h) * d + i] = from_float<TKV>(to_float(src[i]));
    v[(t * hkv + h) * d + i + half] = from_float<TKV>(to_float(src[i + half]));
  }
}

// The transpose: dqkv = [R^T dq, R^T dk, dv] (R is orthogonal: R^T rotates by -angle).
// Matches lt_cpu_rope_qkv_bwd. Shapes as the forward's.
template <typename TQ, typename TKV, typename TX>
__global__ void rope_qkv_bwd_kernel(TX *dqkv, const TQ *dq, const TKV *dk, const TKV *dv,
                                    const int32_t *pos, int64_t n, int hq, int hkv, int d,
                                    float theta) {
  const int half = d / 2;
  const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= n * half) return;
  const int64_t t = g / half;
  const int i = (int)(g % half);
  float c, s;
  rope_angle(pos[t], i, d, theta, -1.0f, &c, &s);
  TX *row = dqkv + t * (int64_t)(hq + 2 * hkv) * d;
  for (int h = 0; h < hq + hkv; h++) {
    float x0, x1;
    if (h < hq) {
      x0 = to_float(dq[(t * hq + h) * d + i]), x1 = to_float(dq[(t * hq + h) * d + i + half]);
    } else {
      x0 = to_float(dk[(t * hkv + h - hq) * d + i]);
      x1 = to_float(dk[(t * hkv + h - hq) * d + i + half]);
    }
    row[h * d + i] = from_float<TX>(x0 * c - x1 * s);
    row[h * d + i + half] = from_float<TX>(x1 * c + x0 * s);
  }
  for (int h = 0; h < hkv; h++) {
    TX *dst = row + (int64_t)(hq + hkv + h) * d;
    dst[i] = from_float<TX>(to_float(dv[(t * hkv + h) * d + i]));
    dst[i + half] = from_float<TX>(to_float(dv[(t * hkv + h) * d + i + half]));
  }
}

// Runs f with the C++ types of (q-like, k/v-like, qkv-like) tensors.
template <typename F> static int dispatch3(lt_tensor q, lt_tensor k, lt_tensor x, F &&f) {
  return dispatch_float(q.dtype, [&](auto *qt) {
    return dispatch_float(k.dtype, [&](auto *kt) {
      return dispatch_float(x.dtype, [&](auto *xt) { return f(qt, kt, xt); });
    });
  });
}

int lt_cuda_rope_qkv_fwd(lt_ctx *ctx, lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor qkv,
                         lt_tensor pos, float theta) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t n = q.shape[0];
  const int hq = (int)q.shape[1], hkv = (int)k.shape[1], d = (int)q.shape[2];
  if (k.dtype != v.dtype) return lt_cuda_unsupported("rope_qkv_fwd", "k and v differ", k, v);
  if (n == 0) return LT_OK;
  const unsigned grid = blocks_for(n * (d / 2), THREADS);
  int rc = dispatch3(q, k, qkv, [&](auto *qt, auto *kt, auto *xt) {
    using TQ = TYPE_OF(qt);
    using TKV = TYPE_OF(kt);
    using TX = TYPE_OF(xt);
    rope_qkv_fwd_kernel<TQ, TKV, TX><<<grid, THREADS, 0, st->stream>>>(
        (TQ *)q.data, (TKV *)k.data, (TKV *)v.data, (const TX *)qkv.data, (const int32_t *)pos.data,
        n, hq, hkv, d, theta);
    return LT_OK;
  });
  if (rc) return lt_cuda_unsupported("rope_qkv_fwd", "dtypes must be f32 or bf16", q, qkv);
  return lt_cuda_launched(st, "rope_qkv_fwd", q, qkv);
}

int lt_cuda_rope_qkv_bwd(lt_ctx *ctx, lt_tensor dqkv, lt_tensor dq, lt_tensor dk, lt_tensor dv,
                         lt_tensor pos, float theta) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t n = dq.shape[0];
  const int hq = (int)dq.shape[1], hkv = (int)dk.shape[1], d = (int)dq.shape[2];
  if (dk.dtype != dv.dtype) return lt_cuda_unsupported("rope_qkv_bwd", "dk and dv differ", dk, dv);
  if (n == 0) return LT_OK;
  const unsigned grid = blocks_for(n * (d / 2), THREADS);
  int rc = dispatch3(dq, dk, dqkv, [&](auto *qt, auto *kt, auto *xt) {
    using TQ = TYPE_OF(qt);
    using TKV = TYPE_OF(kt);
    using TX = TYPE_OF(xt);
    rope_qkv_bwd_kernel<TQ, TKV, TX><<<grid, THREADS, 0, st->stream>>>(
        (TX *)dqkv.data, (const TQ *)dq.data, (const TKV *)dk.data, (const TKV *)dv.data,
        (const int32_t *)pos.data, n, hq, hkv, d, theta);
    return LT_OK;
  });
  if (rc) return lt_cuda_unsupported("rope_qkv_bwd", "dtypes must be f32 or bf16", dq, dqkv);
  return lt_cuda_launched(st, "rope_qkv_bwd", dq, dqkv);
}
