// Rotary position embedding (Su et al. 2021, RoFormer eq. 34) in Hugging Face Llama's split-halves
// layout, fused with splitting the q|k|v projection (forward) or joining its gradient (backward).
// One thread per (token, group of 8 rotation pairs i..i+7): it computes those 8 angles once and
// applies them to every head of that token in 16-byte vectors (dimensions i..i+7 and
// i+D/2..i+D/2+7). D must be a multiple of 16 (CUDA attention takes 64 and 128).
// At the 135M model's shape (32768 tokens, 12 + 2 x 12 heads of 64) the forward moves 151 MB in
// and 151 MB out (~0.1 ms at 3 TB/s); the backward reads dq in f32, dk and dv in bf16 (200 MB) and
// writes 151 MB (~0.12 ms). As the model runs them, v comes from a matmul of its own and the
// forward moves q and k alone (101 MB in and out), and the attention's backward writes dk and dv
// into dqkv itself (lt_attn_bwd_rope), leaving the backward dq's heads: 101 MB in, 50 MB out.
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/rope.cuh"

enum { THREADS = 128, PAIRS = 8 };

// Pairs (i + e, i + e + half), e < PAIRS, of one head between the fused row and its own tensor
// (both pointing at dimension i): forward rotates fused -> split, backward rotates split -> fused
// (by the negated angle: R is orthogonal). Without ROTATE it is a copy (v).
template <bool BACKWARD, bool ROTATE, typename TS, typename TX>
__device__ __forceinline__ void move_pairs(TX *__restrict__ fused, TS *__restrict__ split, int half,
                                           const float (&c)[PAIRS], const float (&s)[PAIRS]) {
  float x0[PAIRS], x1[PAIRS];
  if (BACKWARD) {
    load8(split, x0), load8(split + half, x1);
  } else {
    load8(fused, x0), load8(fused + half, x1);
  }
  if (ROTATE) {
#pragma unroll
    for (int e = 0; e < PAIRS; e++) {
      const float y0 = x0[e] * c[e] - x1[e] * s[e], y1 = x1[e] * c[e] + x0[e] * s[e];
      x0[e] = y0, x1[e] = y1;
    }
  }
  if (BACKWARD) {
    store8(fused, x0), store8(fused + half, x1);
  } else {
    store8(split, x0), store8(split + half, x1);
  }
}

// Forward: q, k = rotate(fused's q and k heads), v = fused's v heads (matches
// lt_cpu_rope_qkv_fwd). Backward: fused = [R^T q, R^T k, v] (matches lt_cpu_rope_qkv_bwd). k or v
// NULL: those heads are left out (a forward whose v came from a matmul of its own, whose fused
// rows then hold q and k only; a backward whose attention wrote dk and dv: lt_attn_bwd_rope).
// fused: (N, row_heads, D) with q heads, then k heads, then v heads; q: (N, Hq, D); k, v:
// (N, Hkv, D); pos: (N) i32
template <bool BACKWARD, typename TQ, typename TKV, typename TX>
__global__ void rope_qkv_kernel(TX *__restrict__ fused, TQ *__restrict__ q, TKV *__restrict__ k,
                                TKV *__restrict__ v, const int32_t *__restrict__ pos, int64_t n,
                                int hq, int hkv, int row_heads, int d, float theta) {
  const int half = d / 2, groups = half / PAIRS;
  const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= n * groups) return;
  const int64_t t = g / groups;
  const int i = (int)(g % groups) * PAIRS;
  float c[PAIRS], s[PAIRS];
  const int32_t p = pos[t];
#pragma unroll
  for (int e = 0; e < PAIRS; e++)
    rope_angle(p, i + e, d, theta, BACKWARD ? -1.0f : 1.0f, &c[e], &s[e]);
  TX *row = fused + t * (int64_t)row_heads * d + i;
#pragma unroll 4
  for (int h = 0; h < hq; h++)
    move_pairs<BACKWARD, true>(row + (int64_t)h * d, q + (t * hq + h) * d + i, half, c, s);
  if (k) {
#pragma unroll 4
    for (int h = 0; h < hkv; h++)
      move_pairs<BACKWARD, true>(row + (int64_t)(hq + h) * d, k + (t * hkv + h) * d + i, half, c,
                                 s);
  }
  if (v) {
#pragma unroll 4
    for (int h = 0; h < hkv; h++)
      move_pairs<BACKWARD, false>(row + (int64_t)(hq + hkv + h) * d, v + (t * hkv + h) * d + i,
                                  half, c, s);
  }
}

// q, k, v: (..., H, D) views, their leading dims the tokens'; k or v with data NULL: left out.
template <bool BACKWARD>
static int launch_rope(lt_ctx *ctx, const char *op, lt_tensor fused, lt_tensor q, lt_tensor k,
                       lt_tensor v, lt_tensor pos, float theta) {
  lt_cuda_state *st = cuda_state(ctx);
  const int hq = (int)q.shape[q.ndim - 2], d = (int)q.shape[q.ndim - 1];
  const int64_t n = lt_numel(q) / ((int64_t)hq * d);
  const lt_tensor kv = k.data ? k : v; // the key/value heads' dtype and count, if any
  const int hkv = kv.data ? (int)kv.shape[kv.ndim - 2] : 0;
  const int row_heads = (int)fused.shape[fused.ndim - 2];
  if (k.data && v.data && k.dtype != v.dtype)
    return lt_cuda_unsupported(op, "k and v differ in dtype", k, v);
  if (d % (2 * PAIRS) != 0 || !aligned16(fused.data) || !aligned16(q.data) || !aligned16(k.data) ||
      !aligned16(v.data))
    return lt_cuda_unsupported(op, "head width a multiple of 16, 16-byte aligned tensors", q,
                               fused);
  if (n == 0) return LT_OK;
  const unsigned grid = blocks_for(n * (d / (2 * PAIRS)), THREADS);
  int rc = dispatch_float(q.dtype, [&](auto *qt) {
    return dispatch_float(kv.data ? kv.dtype : q.dtype, [&](auto *kt) {
      return dispatch_float(fused.dtype, [&](auto *xt) {
        using TQ = TYPE_OF(qt);
        using TKV = TYPE_OF(kt);
        using TX = TYPE_OF(xt);
        rope_qkv_kernel<BACKWARD, TQ, TKV, TX><<<grid, THREADS, 0, st->stream>>>(
            (TX *)fused.data, (TQ *)q.data, (TKV *)k.data, (TKV *)v.data, (const int32_t *)pos.data,
            n, hq, hkv, row_heads, d, theta);
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

int lt_cuda_rope_q_bwd(lt_ctx *ctx, lt_tensor dqkv, lt_tensor dq, lt_tensor pos, float theta) {
  return launch_rope<true>(ctx, "rope_q_bwd", dqkv, dq, lt_tensor{}, lt_tensor{}, pos, theta);
}
