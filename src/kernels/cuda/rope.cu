// Rotary position embedding (Su et al. 2021, RoFormer eq. 34) in Hugging Face Llama's split-halves
// layout, fused with splitting the q|k|v projection (forward) or joining its gradient (backward).
// One thread per (token, rotation pair i): it computes the angle once and applies it to every head
// of that token.
#include "kernels/cuda/cuda_common.cuh"

enum { THREADS = 128 };

// cos and sign * sin of pos * theta^(-2i/D), in fp32 as lt_cpu_rope_qkv_fwd computes them.
__device__ __forceinline__ void rope_angle(int32_t pos, int i, int d, float theta, float sign,
                                           float *c, float *s) {
  const float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)d);
  sincosf((float)pos * inv_freq, s, c);
  *s *= sign;
}

// Pair (i, i + half) of one head between the fused row and its own tensor: forward rotates
// fused -> split, backward rotates split -> fused (by the negated angle: R is orthogonal). With
// rotate false it is a copy (v).
template <bool BACKWARD, typename TS, typename TX>
__device__ __forceinline__ void move_pair(TX *fused, TS *split, int i, int half, bool rotate,
                                          float c, float s) {
  const float x0 = BACKWARD ? to_float(split[i]) : to_float(fused[i]);
  const float x1 = BACKWARD ? to_float(split[i + half]) : to_float(fused[i + half]);
  const float y0 = rotate ? x0 * c - x1 * s : x0, y1 = rotate ? x1 * c + x0 * s : x1;
  if (BACKWARD) {
    fused[i] = from_float<TX>(y0), fused[i + half] = from_float<TX>(y1);
  } else {
    split[i] = from_float<TS>(y0), split[i + half] = from_float<TS>(y1);
  }
}

// Forward: q, k = rotate(fused's q and k heads), v = fused's v heads (matches
// lt_cpu_rope_qkv_fwd). Backward: fused = [R^T q, R^T k, v] (matches lt_cpu_rope_qkv_bwd).
// fused: (N, Hq + 2 Hkv, D); q: (N, Hq, D); k, v: (N, Hkv, D); pos: (N) i32
template <bool BACKWARD, typename TQ, typename TKV, typename TX>
__global__ void rope_qkv_kernel(TX *fused, TQ *q, TKV *k, TKV *v, const int32_t *pos, int64_t n,
                                int hq, int hkv, int d, float theta) {
  const int half = d / 2;
  const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= n * half) return;
  const int64_t t = g / half;
  const int i = (int)(g % half);
  float c, s;
  rope_angle(pos[t], i, d, theta, BACKWARD ? -1.0f : 1.0f, &c, &s);
  TX *row = fused + t * (int64_t)(hq + 2 * hkv) * d;
  for (int h = 0; h < hq; h++)
    move_pair<BACKWARD>(row + (int64_t)h * d, q + (t * hq + h) * d, i, half, true, c, s);
  for (int h = 0; h < hkv; h++) {
    move_pair<BACKWARD>(row + (int64_t)(hq + h) * d, k + (t * hkv + h) * d, i, half, true, c, s);
    move_pair<BACKWARD>(row + (int64_t)(hq + hkv + h) * d, v + (t * hkv + h) * d, i, half, false, c,
                        s);
  }
}

template <bool BACKWARD>
static int launch_rope(lt_ctx *ctx, const char *op, lt_tensor fused, lt_tensor q, lt_tensor k,
                       lt_tensor v, lt_tensor pos, float theta) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t n = q.shape[0];
  const int hq = (int)q.shape[1], hkv = (int)k.shape[1], d = (int)q.shape[2];
  if (k.dtype != v.dtype) return lt_cuda_unsupported(op, "k and v differ in dtype", k, v);
  if (n == 0) return LT_OK;
  const unsigned grid = blocks_for(n * (d / 2), THREADS);
  int rc = dispatch_float(q.dtype, [&](auto *qt) {
    return dispatch_float(k.dtype, [&](auto *kt) {
      return dispatch_float(fused.dtype, [&](auto *xt) {
        using TQ = TYPE_OF(qt);
        using TKV = TYPE_OF(kt);
        using TX = TYPE_OF(xt);
        rope_qkv_kernel<BACKWARD, TQ, TKV, TX><<<grid, THREADS, 0, st->stream>>>(
            (TX *)fused.data, (TQ *)q.data, (TKV *)k.data, (TKV *)v.data, (const int32_t *)pos.data,
            n, hq, hkv, d, theta);
        return LT_OK;
      });
    });
  });
  if (rc) return lt_cuda_unsupported(op, "dtypes must be f32 or bf16", q, fused);
  return lt_cuda_launched(st, op, q, fused);
}

int lt_cuda_rope_qkv_fwd(lt_ctx *ctx, lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor qkv,
                         lt_tensor pos, float theta) {
  return launch_rope<false>(ctx, "rope_qkv_fwd", qkv, q, k, v, pos, theta);
}

int lt_cuda_rope_qkv_bwd(lt_ctx *ctx, lt_tensor dqkv, lt_tensor dq, lt_tensor dk, lt_tensor dv,
                         lt_tensor pos, float theta) {
  return launch_rope<true>(ctx, "rope_qkv_bwd", dqkv, dq, dk, dv, pos, theta);
}
