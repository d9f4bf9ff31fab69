// Attention's small companions: the tile tables the flash kernels plan with (and the checks and
// parameters the forward and backward launches share), the merge of partial results, and the
// backward's delta (and MoH's head weighting's backward, fused into the delta's pass). One warp
// per row or tile, but a block per stretch of tokens for the delta.
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cudaTypedefs.h>

#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/attention_tma.cuh"
#include "kernels/cuda/cuda_moh.h"

enum { THREADS = 128, WARPS = THREADS / 32, DELTA_THREADS = 256, DELTA_TOKENS = 32 };

// ranges[b, tile] = (min pos, max pos, min doc, max doc) and keys[b, tile] = (min, max) of
// attn_key over the tile's rows. pos, doc: (B, T) i32 (doc may be NULL); ranges, keys: (B, n_tiles)
// (keys NULL: only the dense kernels read the tables, and they need no keys)
__global__ void attn_tiles_kernel(int4 *ranges, longlong2 *keys, const int32_t *pos,
                                  const int32_t *doc, int64_t b, int64_t t, int tile, int n_tiles) {
  const int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (w >= b * n_tiles) return;
  const int64_t bi = w / n_tiles, start = (w % n_tiles) * tile;
  const int64_t end = start + tile < t ? start + tile : t;
  int pmin = INT_MAX, pmax = INT_MIN, dmin = INT_MAX, dmax = INT_MIN;
  long long kmin = LLONG_MAX, kmax = LLONG_MIN;
  for (int64_t i = start + lane; i < end; i += 32) {
    const int p = pos[bi * t + i], d = doc ? doc[bi * t + i] : 0;
    const long long key = attn_key(p, d);
    pmin = min(pmin, p), pmax = max(pmax, p);
    dmin = min(dmin, d), dmax = max(dmax, d);
    kmin = min(kmin, key), kmax = max(kmax, key);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    pmin = min(pmin, __shfl_xor_sync(0xffffffffu, pmin, o));
    pmax = max(pmax, __shfl_xor_sync(0xffffffffu, pmax, o));
    dmin = min(dmin, __shfl_xor_sync(0xffffffffu, dmin, o));
    dmax = max(dmax, __shfl_xor_sync(0xffffffffu, dmax, o));
    if (keys) {
      kmin = min(kmin, __shfl_xor_sync(0xffffffffu, kmin, o));
      kmax = max(kmax, __shfl_xor_sync(0xffffffffu, kmax, o));
    }
  }
  if (lane == 0) ranges[w] = make_int4(pmin, pmax, dmin, dmax);
  if (lane == 0 && keys) keys[w] = make_longlong2(kmin, kmax);
}

// unordered[b] = 1 where some tile of row b has a smaller smallest or largest key than the tile
// before it (the searches of attention_mask.cuh need both to never decrease).
// keys: (B, n_tiles); unordered: (B) i32, zero before
__global__ void attn_tile_order_kernel(int *unordered, const longlong2 *keys, int64_t b,
                                       int n_tiles) {
  const int64_t w = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (w >= b * n_tiles || w % n_tiles == 0) return;
  const longlong2 before = keys[w - 1], here = keys[w];
  if (here.x < before.x || here.y < before.y) atomicOr(unordered + w / n_tiles, 1);
}

int lt_cuda_attn_tiles(lt_cuda_state *st, int4 *ranges, longlong2 *keys, int *unordered,
                       const int32_t *pos, const int32_t *doc, int64_t b, int64_t t, int tile) {
  const int n_tiles = (int)((t + tile - 1) / tile);
  attn_tiles_kernel<<<blocks_for(b * n_tiles, WARPS), THREADS, 0, st->stream>>>(
      ranges, keys, pos, doc, b, t, tile, n_tiles);
  if (!keys) return LT_OK;
  attn_tile_order_kernel<<<blocks_for(b * n_tiles, THREADS), THREADS, 0, st->stream>>>(
      unordered, keys, b, n_tiles);
  return LT_OK;
}

int lt_cuda_attn_setup(lt_ctx *ctx, attn_params *p, lt_tensor q, lt_tensor k, lt_tensor v,
                       const lt_attn_spec *spec, int q_tile, int k_tile, const char *op) {
  lt_cuda_state *st = cuda_state(ctx);
  const int d = (int)q.shape[3];
  if (d != 64 && d != 128)
    return lt_fail(LT_ERR_CONFIG,
                   "%s: CUDA attention supports head dims 64 and 128, not %d: set model.head_dim "
                   "(or model.n_heads so that d_model / n_heads is 64 or 128)",
                   op, d);
  if (q.dtype != LT_BF16 || k.dtype != LT_BF16 || v.dtype != LT_BF16)
    return lt_cuda_unsupported(op, "q, k and v must be bf16", q, k);
  if (spec->q_pos.device != LT_CUDA || spec->k_pos.device != LT_CUDA ||
      spec->q_pos.dtype != LT_I32 || spec->k_pos.dtype != LT_I32)
    return lt_cuda_unsupported(op, "positions must be i32 on the GPU", spec->q_pos, spec->k_pos);
  if (spec->head_gates.data && spec->head_gates.device != LT_CUDA)
    return lt_cuda_unsupported(op, "head gates must be on the GPU", spec->head_gates, q);
  memset(p, 0, sizeof *p);
  p->q = (const bf16 *)q.data, p->k = (const bf16 *)k.data, p->v = (const bf16 *)v.data;
  p->q_pos = (const int32_t *)spec->q_pos.data, p->k_pos = (const int32_t *)spec->k_pos.data;
  if (spec->q_doc.data) {
    p->q_doc = (const int32_t *)spec->q_doc.data;
    p->k_doc = (const int32_t *)spec->k_doc.data;
  }
  p->gates = (const float *)spec->head_gates.data;
  const int64_t b = q.shape[0];
  p->tq = q.shape[1], p->tk = k.shape[1];
  p->hq = (int)q.shape[2], p->hkv = (int)k.shape[2];
  p->n_q_tiles = (int)((p->tq + q_tile - 1) / q_tile);
  p->n_k_tiles = (int)((p->tk + k_tile - 1) / k_tile);
  p->scale_log2 = spec->scale * LOG2E;
  p->mask = attn_mask_of(spec);
  p->sparse_kernel = attn_spec_needs_sparse_kernel(spec);
  // The workspace: the tile counter (8 bytes), the persistent forward's item counter (4; its
  // launch zeroes it), the rows' order flags (zeroed with the tile counter), then the tables; the
  // dense kernels read only the position and document ranges.
  const int64_t nq = b * p->n_q_tiles, nk = b * p->n_k_tiles;
  const size_t head = 16 + ((size_t)(2 * b) * sizeof(int) + 15) / 16 * 16;
  void *scratch;
  LT_TRY(lt_cuda_scratch(st, head + (size_t)(nq + nk) * (sizeof(int4) + sizeof(longlong2)), op,
                         &scratch));
  unsigned char *at = (unsigned char *)scratch;
  if (p->sparse_kernel)
    CUDA_TRY(cudaMemsetAsync(at, 0, head, st->stream), "%s: clearing the tile tables", op);
  int *unordered = p->sparse_kernel ? (int *)(at + 16) : nullptr;
  int4 *q_tiles = (int4 *)(at + head), *k_tiles = q_tiles + nq;
  longlong2 *q_keys = p->sparse_kernel ? (longlong2 *)(k_tiles + nk) : nullptr;
  longlong2 *k_keys = q_keys ? q_keys + nq : nullptr;
  if (spec->tiles_visited) p->visited = (unsigned long long *)at;
  p->next_item = (int *)(at + 8);
  if (p->tq > 0)
    lt_cuda_attn_tiles(st, q_tiles, q_keys, unordered, p->q_pos, p->q_doc, b, p->tq, q_tile);
  if (p->tk > 0)
    lt_cuda_attn_tiles(st, k_tiles, k_keys, unordered ? unordered + b : nullptr, p->k_pos, p->k_doc,
                       b, p->tk, k_tile);
  p->q_tiles = q_tiles, p->k_tiles = k_tiles, p->q_keys = q_keys, p->k_keys = k_keys;
  p->q_unordered = unordered, p->k_unordered = unordered ? unordered + b : nullptr;
  return LT_OK;
}

// When a greedy scheduler (the GPU's block dispatch: a slot that frees takes the next block)
// gets blocks of work n_tiles - rank in block_work_of's order with `groups` groups: the time the
// last slot finishes. heap: `slots` finish times, a min-heap.
static double causal_makespan(int n_tiles, int64_t pairs, int slots, int64_t groups, double *heap) {
  for (int i = 0; i < slots; i++) heap[i] = 0.0;
  double end = 0.0;
  const int64_t small = pairs / groups, n_big = pairs % groups;
  for (int64_t gi = 0; gi < groups; gi++)
    for (int rank = 0; rank < n_tiles; rank++)
      for (int64_t k = 0; k < small + (gi < n_big); k++) {
        const double t = heap[0] + (n_tiles - rank); // the earliest free slot takes it
        end = t > end ? t : end;
        int i = 0;
        for (int c = 1; c < slots; c = 2 * i + 1) {
          if (c + 1 < slots && heap[c + 1] < heap[c]) c++;
          if (heap[c] >= t) break;
          heap[i] = heap[c], i = c;
        }
        heap[i] = t;
      }
  return end;
}

int lt_cuda_attn_head_groups(int n_tiles, int64_t pairs, int slots) {
  // One group per pair is each head's tiles, longest first, one head after another: the order
  // that keeps the fewest heads' keys and values in use (at T = 16384, grouping more heads made
  // the backward 1-3% slower on an H100, whose blocks' tails are already short). But where the
  // grid is a few waves, the last head's longest tiles then run nearly alone at the end (H100:
  // the d = 128 forward and backward at B=1 H=16 T=4096 17% slower than with groups of 4 heads;
  // d = 64: the forward 4% at B=1 H=16 T=16384). So: the fewest heads a group whose modeled
  // finish is within 2% of the best of the sizes tried. Many blocks a slot: one per pair.
  if (pairs <= 1 || n_tiles <= 0 || (int64_t)n_tiles * pairs > 32 * (int64_t)slots)
    return (int)pairs;
  static struct {
    int n_tiles, slots;
    int64_t pairs, groups;
  } cache[8];
  static int cached = 0;
  for (int i = 0; i < cached && i < 8; i++)
    if (cache[i].n_tiles == n_tiles && cache[i].pairs == pairs && cache[i].slots == slots)
      return (int)cache[i].groups;
  double *heap = (double *)malloc((size_t)slots * sizeof *heap);
  if (!heap) return (int)pairs;
  enum { N_SIZES = 16 };
  int64_t groups[N_SIZES];
  double ends[N_SIZES], best = 0.0;
  int n = 0;
  for (int64_t size = 1; size <= pairs && n < N_SIZES; size = size < 4 ? size + 1 : size * 3 / 2) {
    const int64_t g = (pairs + size - 1) / size;
    if (n > 0 && g == groups[n - 1]) continue;
    groups[n] = g, ends[n] = causal_makespan(n_tiles, pairs, slots, g, heap);
    if (n == 0 || ends[n] < best) best = ends[n];
    n++;
  }
  free(heap);
  int chosen = 0;
  while (ends[chosen] > 1.02 * best) chosen++;
  cache[cached % 8].n_tiles = n_tiles, cache[cached % 8].slots = slots;
  cache[cached % 8].pairs = pairs, cache[cached % 8].groups = groups[chosen];
  cached++;
  return (int)groups[chosen];
}

int lt_cuda_attn_persistent_grid(lt_cuda_state *st, const attn_params &p, int64_t items,
                                 const char *op, unsigned *blocks) {
  *blocks = (unsigned)(items < st->n_sms ? items : st->n_sms);
  CUDA_TRY(cudaMemsetAsync(p.next_item, 0, sizeof *p.next_item, st->stream),
           "%s: clearing the work counter", op);
  return LT_OK;
}

void lt_cuda_attn_block_work(int l, int n_tiles, int pairs, int heads, int groups, int *rank,
                             int *h, int *b) {
  const block_work w = block_work_at(l, n_tiles, pairs, heads, groups);
  *rank = w.rank, *h = w.h, *b = w.b;
}

int lt_cuda_attn_variant(const char *env, const char *what, int fallback, int last, int *variant) {
  const char *name = getenv(env);
  *variant = fallback;
  if (!name || !*name) return LT_OK;
  *variant = 0;
  for (int v = 1; v <= last; v++) {
    char known[16];
    snprintf(known, sizeof known, "v%d", v);
    if (strcmp(name, known) == 0) *variant = v;
  }
  LT_CHECK(*variant != 0, LT_ERR_CONFIG,
           "environment: %s=%s names no %s; use v1 to v%d, or unset it", env, name, what, last);
  return LT_OK;
}

bool attn_tma_map_rows(CUtensorMap *map, const void *base, lt_dtype dtype, int64_t b, int64_t t,
                       int h, int d, int rows, int cols) {
  // The driver's encoder, fetched once through the runtime (no link against libcuda).
  static PFN_cuTensorMapEncodeTiled_v12000 encode = NULL;
  static bool looked = false;
  if (!looked) {
    looked = true;
    cudaDriverEntryPointQueryResult found;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", (void **)&encode, 12000,
                                         cudaEnableDefault, &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      encode = NULL;
  }
  const cuuint64_t size = dtype == LT_F32 ? 4 : 2;
  if (!encode || (dtype != LT_F32 && dtype != LT_BF16) || cols * size > 128 || cols > d)
    return false;
  // Dimensions innermost first: D, H, T, B; strides (bytes) of all but the first.
  const cuuint64_t dims[4] = {(cuuint64_t)d, (cuuint64_t)h, (cuuint64_t)t, (cuuint64_t)b};
  const cuuint64_t strides[3] = {(cuuint64_t)d * size, (cuuint64_t)h * d * size,
                                 (cuuint64_t)t * h * d * size};
  const cuuint32_t box[4] = {(cuuint32_t)cols, 1, (cuuint32_t)rows, 1}, step[4] = {1, 1, 1, 1};
  return encode(
             map,
             dtype == LT_F32 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
             4, const_cast<void *>(base), dims, strides, box, step, CU_TENSOR_MAP_INTERLEAVE_NONE,
             CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

int lt_cuda_attn_count_tiles(lt_cuda_state *st, const attn_params &p, const lt_attn_spec *spec) {
  if (!spec->tiles_visited) return LT_OK;
  unsigned long long count = 0;
  CUDA_TRY(cudaMemcpyAsync(&count, p.visited, sizeof count, cudaMemcpyDeviceToHost, st->stream),
           "reading the attention's tile count");
  CUDA_TRY(cudaStreamSynchronize(st->stream), "the attention kernel whose tiles were counted");
  *spec->tiles_visited += (int64_t)count;
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
// A block owns DELTA_TOKENS tokens of one batch row with all their heads: one contiguous stretch
// of both inputs, read in 16-byte vectors, LANES = D / 8 adjacent threads per (token, head) row
// summing by shuffles. The sums go through shared memory to be written transposed, each head's
// DELTA_TOKENS outputs as one coalesced run. At the 135M model's shape (B 8, T 4096, H 12, D 64)
// it reads 2 x 50 MB and writes 1.6 MB: ~0.035 ms at 3 TB/s.
// GATED (lt_head_gate_bwd_delta; matches lt_cpu_head_gate_bwd_delta): dout is MoH's d_gated, the
// gradient of gates * o, and from the same reads the kernel writes d_o = gates * d_gated (d_o:
// (B, T, H, D)), dgates = the row sum s ((B*T, H) f32) and delta = gates * s (gates: (B*T, H) f32).
template <typename T, int LANES, bool GATED>
__global__ void __launch_bounds__(DELTA_THREADS)
    attn_delta_kernel(float *delta, const T *dout, const T *o, int64_t t, int h, T *d_o,
                      float *dgates, const float *gates) {
  extern __shared__ float sums[]; // (H, DELTA_TOKENS)
  const int64_t tiles = (t + DELTA_TOKENS - 1) / DELTA_TOKENS;
  const int64_t bi = blockIdx.x / tiles, t0 = (blockIdx.x % tiles) * DELTA_TOKENS;
  const int tokens = (int)(t - t0 < DELTA_TOKENS ? t - t0 : DELTA_TOKENS);
  const int64_t first_row = (bi * t + t0) * h; // the block's first (token, head) row
  const int64_t base = first_row * (LANES * 8);
  const int vectors = tokens * h * LANES;
  // Every thread runs the same number of passes, so the shuffles always find all 32 lanes.
  const int passes = (vectors + DELTA_THREADS - 1) / DELTA_THREADS;
#pragma unroll 4
  for (int p = 0; p < passes; p++) {
    const int v = p * DELTA_THREADS + threadIdx.x;
    const int row = v / LANES; // token row / h, head row % h within the tile
    float sum = 0.0f, gate = 0.0f;
    if (v < vectors) {
      float a[8], b[8];
      load8(dout + base + (int64_t)v * 8, a);
      load8(o + base + (int64_t)v * 8, b);
#pragma unroll
      for (int e = 0; e < 8; e++) sum += a[e] * b[e];
      if constexpr (GATED) {
        gate = gates[first_row + row];
#pragma unroll
        for (int e = 0; e < 8; e++) a[e] *= gate;
        store8(d_o + base + (int64_t)v * 8, a);
      }
    }
    // A row's LANES threads are adjacent and aligned (DELTA_THREADS is a multiple of LANES).
#pragma unroll
    for (int off = LANES / 2; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (v < vectors && v % LANES == 0) {
      if constexpr (GATED) {
        dgates[first_row + row] = sum;
        sum *= gate;
      }
      sums[(row % h) * DELTA_TOKENS + row / h] = sum;
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < h * DELTA_TOKENS; i += DELTA_THREADS) {
    const int hi = i / DELTA_TOKENS, ti = i % DELTA_TOKENS;
    if (ti < tokens) delta[(bi * h + hi) * t + t0 + ti] = sums[i];
  }
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

// attn_delta_kernel's instantiation for rows of `lanes` 16-byte vectors (LANES = D / 8).
template <typename T, bool GATED>
static void run_delta_kernel(cudaStream_t stream, unsigned grid, size_t shared, int lanes,
                             float *delta, const T *dout, const T *o, int64_t t, int h, T *d_o,
                             float *dgates, const float *gates) {
  switch (lanes) {
#define DELTA_CASE(n)                                                                              \
  case n:                                                                                          \
    attn_delta_kernel<T, n, GATED>                                                                 \
        <<<grid, DELTA_THREADS, shared, stream>>>(delta, dout, o, t, h, d_o, dgates, gates);       \
    break;
    DELTA_CASE(1)
    DELTA_CASE(2)
    DELTA_CASE(4)
    DELTA_CASE(8)
    DELTA_CASE(16)
    DELTA_CASE(32)
#undef DELTA_CASE
  }
}

// Launches attn_delta_kernel for o's shape; d_o, dgates and gates only when `gated`.
static int launch_delta(lt_cuda_state *st, const char *op, bool gated, lt_tensor delta,
                        lt_tensor dout, lt_tensor o, lt_tensor d_o, lt_tensor dgates,
                        lt_tensor gates) {
  const int64_t b = o.shape[0], t = o.shape[1];
  const int h = (int)o.shape[2], d = (int)o.shape[3];
  const size_t shared = (size_t)h * DELTA_TOKENS * sizeof(float);
  if (o.dtype != dout.dtype || d < 8 || d % 8 != 0 || 32 % (d / 8) != 0 || !aligned16(o.data) ||
      !aligned16(dout.data) || shared > 48 * 1024)
    return lt_cuda_unsupported(op,
                               "dout and o of one dtype, 16-byte aligned, D a power of two from 8 "
                               "to 256, at most 384 heads",
                               dout, o);
  if (gated && (d_o.dtype != o.dtype || !aligned16(d_o.data) || gates.device != LT_CUDA ||
                dgates.device != LT_CUDA))
    return lt_cuda_unsupported(op, "d_o of o's dtype, gates and dgates on the GPU", d_o, gates);
  if (b * t * h == 0) return LT_OK;
  const unsigned grid = (unsigned)(b * ((t + DELTA_TOKENS - 1) / DELTA_TOKENS));
  int rc = dispatch_float(o.dtype, [&](auto *tag) {
    using T = TYPE_OF(tag);
    const auto run = gated ? run_delta_kernel<T, true> : run_delta_kernel<T, false>;
    run(st->stream, grid, shared, d / 8, (float *)delta.data, (const T *)dout.data,
        (const T *)o.data, t, h, (T *)d_o.data, (float *)dgates.data, (const float *)gates.data);
    return LT_OK;
  });
  if (rc) return lt_cuda_unsupported(op, "o must be f32 or bf16", dout, o);
  return lt_cuda_launched(st, op, dout, delta);
}

int lt_cuda_attn_bwd_delta(lt_ctx *ctx, lt_tensor delta, lt_tensor dout, lt_tensor o) {
  const lt_tensor none = {};
  return launch_delta(cuda_state(ctx), "attn_bwd_delta", false, delta, dout, o, none, none, none);
}

int lt_cuda_head_gate_bwd_delta(lt_ctx *ctx, lt_tensor d_o, lt_tensor dgates, lt_tensor delta,
                                lt_tensor d_gated, lt_tensor o, lt_tensor gates) {
  return launch_delta(cuda_state(ctx), "head_gate_bwd_delta", true, delta, d_gated, o, d_o, dgates,
                      gates);
}
