// Attention's small companions: the tile tables the flash kernels plan with, the merge of partial
// results, and the backward's delta. One warp per row or tile.
#include <limits.h>

#include "kernels/cuda/attention_common.cuh"

enum { THREADS = 128, WARPS = THREADS / 32 };

// out[b, tile] = (min pos, max pos, min doc, max doc) over the tile's rows.
// pos, doc: (B, T) i32 (doc may be NULL); out: (B, n_tiles) int4
__global__ void attn_tiles_kernel(int4 *out, const int32_t *pos, const int32_t *doc, int64_t b,
                                  int64_t t, int tile, int n_tiles) {
  const int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (w >= b * n_tiles) return;
  const int64_t bi = w / n_tiles, start = (w % n_tiles) * tile;
  const int64_t end = start + tile < t ? start + tile : t;
  int pmin = INT_MAX, pmax = INT_MIN, dmin = INT_MAX, dmax = INT_MIN;
  for (int64_t i = start + lane; i < end; i += 32) {
    const int p = pos[bi * t + i];
    pmin = min(pmin, p), pmax = max(pmax, p);
    if (doc) {
      const int d = doc[bi * t + i];
      dmin = min(dmin, d), dmax = max(dmax, d);
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    pmin = min(pmin, __shfl_xor_sync(0xffffffffu, pmin, o));
    pmax = max(pmax, __shfl_xor_sync(0xffffffffu, pmax, o));
    dmin = min(dmin, __shfl_xor_sync(0xffffffffu, dmin, o));
    dmax = max(dmax, __shfl_xor_sync(0xffffffffu, dmax, o));
  }
  if (lane == 0) out[w] = make_int4(pmin, pmax, doc ? dmin : 0, doc ? dmax : 0);
}

int lt_cuda_attn_tiles(lt_cuda_state *st, int4 *out, const int32_t *pos, const int32_t *doc,
                       int64_t b, int64_t t, int tile) {
  const int n_tiles = (int)((t + tile - 1) / tile);
  attn_tiles_kernel<<<blocks_for(b * n_tiles, WARPS), THREADS, 0, st->stream>>>(out, pos, doc, b, t,
                                                                                tile, n_tiles);
  return LT_OK;
}

// The online-softmax merge of a partial (o_part, lse_part) into (o, lse). Matches
// lt_cpu_attn_merge. o, o_part: (B, T, H, D); lse, lse_part: (B, H, T) f32
template <typename T>
__global__ void attn_merge_kernel(T *o, float *lse, const T *o_part, const float *lse_part,
                                  int64_t b, int64_t t, int h, int d) {
  const int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (w >= b * t * h) return;
  const int64_t bi = w / (t * h), i = (w / h) % t;
  const int hi = (int)(w % h);
  float *l = lse + (bi * h + hi) * t + i;
  const float lp = lse_part[(bi * h + hi) * t + i];
  if (lp == -INFINITY) return;
  const float mx = fmaxf(*l, lp);
  const float w_old = expf(*l - mx), w_new = expf(lp - mx), total = w_old + w_new;
  T *oi = o + w * d;
  const T *pi = o_part + w * d;
  for (int x = lane; x < d; x += 32)
    oi[x] = from_float<T>((to_float(oi[x]) * w_old + to_float(pi[x]) * w_new) / total);
  __syncwarp();
  if (lane == 0) *l = mx + logf(total);
}

// delta = rowsum(dout * o) per query and head. Matches lt_cpu_attn_bwd_delta.
// dout, o: (B, T, H, D); delta: (B, H, T) f32
template <typename T>
__global__ void attn_delta_kernel(float *delta, const T *dout, const T *o, int64_t b, int64_t t,
                                  int h, int d) {
  const int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (w >= b * t * h) return;
  const int64_t bi = w / (t * h), i = (w / h) % t;
  const int hi = (int)(w % h);
  float sum = 0.0f;
  for (int x = lane; x < d; x += 32) sum += to_float(dout[w * d + x]) * to_float(o[w * d + x]);
  sum = warp_sum(sum);
  if (lane == 0) delta[(bi * h + hi) * t + i] = sum;
}

int lt_cuda_attn_merge(lt_ctx *ctx, lt_tensor o, lt_tensor lse, lt_tensor o_part,
                       lt_tensor lse_part) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t b = o.shape[0], t = o.shape[1];
  const int h = (int)o.shape[2], d = (int)o.shape[3];
  if (o.dtype != o_part.dtype || lse.dtype != LT_F32 || lse_part.dtype != LT_F32)
    return lt_cuda_unsupported("attn_merge", "o and o_part alike, f32 lse", o, o_part);
  if (b * t * h == 0) return LT_OK;
  int rc = dispatch_float(o.dtype, [&](auto *tag) {
    using T = TYPE_OF(tag);
    attn_merge_kernel<T><<<blocks_for(b * t * h, WARPS), THREADS, 0, st->stream>>>(
        (T *)o.data, (float *)lse.data, (const T *)o_part.data, (const float *)lse_part.data, b, t,
        h, d);
    return LT_OK;
  });
  if (rc) return lt_cuda_unsupported("attn_merge", "o must be f32 or bf16", o, o_part);
  return lt_cuda_launched(st, "attn_merge", o, lse);
}

int lt_cuda_attn_bwd_delta(lt_ctx *ctx, lt_tensor delta, lt_tensor dout, lt_tensor o) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t b = o.shape[0], t = o.shape[1];
  const int h = (int)o.shape[2], d = (int)o.shape[3];
  if (o.dtype != dout.dtype)
    return lt_cuda_unsupported("attn_bwd_delta", "dout and o must share a dtype", dout, o);
  if (b * t * h == 0) return LT_OK;
  int rc = dispatch_float(o.dtype, [&](auto *tag) {
    using T = TYPE_OF(tag);
    attn_delta_kernel<T><<<blocks_for(b * t * h, WARPS), THREADS, 0, st->stream>>>(
        (float *)delta.data, (const T *)dout.data, (const T *)o.data, b, t, h, d);
    return LT_OK;
  });
  if (rc) return lt_cuda_unsupported("attn_bwd_delta", "o must be f32 or bf16", dout, o);
  return lt_cuda_launched(st, "attn_bwd_delta", dout, delta);
}
