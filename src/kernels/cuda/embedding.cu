// Token embedding: the lookup, and its backward as a deterministic scatter-add over sorted tokens.
#include <cub/device/device_radix_sort.cuh>

#include "kernels/cuda/cuda_common.cuh"

enum {
  THREADS = 256,
  CHUNK = 32, // sorted tokens a warp of the backward sums: one a lane
};

// out[n, :] = table[tokens[n], :]. Matches lt_cpu_embedding_fwd.
// tokens: (N) i32; table: (V, D); out: (N, D); eight columns per thread.
template <typename TO, typename TT>
__global__ void embedding_fwd_kernel(TO *out, const int32_t *tokens, const TT *table, int64_t n,
                                     int64_t d, bool vec) {
  const int64_t vecs = (d + 7) / 8, g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= n * vecs) return;
  const int64_t row = g / vecs, col = (g % vecs) * 8;
  const TT *src = table + (int64_t)tokens[row] * d + col;
  TO *dst = out + row * d + col;
  if (vec) {
    float v[8];
    load8(src, v);
    store8(dst, v);
    return;
  }
  for (int64_t e = 0; e < 8 && col + e < d; e++) dst[e] = from_float<TO>(to_float(src[e]));
}

// The backward, dtable[tokens[n], :] += dout[n, :], in three steps that keep it deterministic and
// fast whatever the tokens' frequencies (real text repeats a few tokens thousands of times):
// 1. the token ids are sorted, with their positions, by a stable radix sort (CUB's), so each
//    token's rows of dout are adjacent and in increasing n;
// 2. each warp sums a chunk of CHUNK sorted rows, run by run: a run wholly inside the chunk is
//    added to its dtable row at once (no other warp touches that row); the chunk's first run, if it
//    began in an earlier chunk, goes to head[chunk], and its last, if it goes on past the chunk, to
//    tail[chunk];
// 3. for each run that spans chunks, the warp of the chunk where it began adds tail and the later
//    chunks' heads in chunk order, then the sum to its dtable row.
// Every row of dtable is thus added to once, with its tokens' rows summed in increasing n (like
// lt_cpu_embedding_bwd, except that the CPU adds them into the row one at a time), and no warp sums
// more than CHUNK rows of dout, however often a token repeats. Out-of-range tokens are skipped, as
// on the CPU. At the 135M model's shape (32768 tokens of 768 bf16, random tokens) it reads 50 MB
// of dout and reads and writes ~20000 rows of dtable (120 MB).

// keys[n] = tokens[n], or vocab (skipped) when out of range; positions[n] = n.
__global__ void embedding_bwd_keys_kernel(int32_t *keys, int32_t *positions, const int32_t *tokens,
                                          int64_t n, int64_t vocab) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int32_t t = tokens[i];
  keys[i] = t >= 0 && t < vocab ? t : (int32_t)vocab;
  positions[i] = (int32_t)i;
}

// v = the lane's columns of src's slab: vectors p * 32 + lane of 8 columns (VEC), or the same
// columns one by one up to width (rows not a multiple of 8 wide, or unaligned).
template <bool VEC, int VPL, typename T>
__device__ __forceinline__ void lane_load(const T *src, int lane, int width, float (&v)[VPL][8]) {
#pragma unroll
  for (int p = 0; p < VPL; p++) {
    const int col = (p * 32 + lane) * 8;
    if (VEC) {
      if (col < width) {
        load8(src + col, v[p]);
      } else {
#pragma unroll
        for (int e = 0; e < 8; e++) v[p][e] = 0.0f;
      }
    } else {
#pragma unroll
      for (int e = 0; e < 8; e++) v[p][e] = col + e < width ? to_float(src[col + e]) : 0.0f;
    }
  }
}

template <bool VEC, int VPL>
__device__ __forceinline__ void lane_store(float *dst, int lane, int width, bool add,
                                           const float (&acc)[VPL][8]) {
#pragma unroll
  for (int p = 0; p < VPL; p++) {
    const int col = (p * 32 + lane) * 8;
    float v[8];
    if (VEC) {
      if (col >= width) continue;
      if (add) load8(dst + col, v);
#pragma unroll
      for (int e = 0; e < 8; e++) v[e] = add ? v[e] + acc[p][e] : acc[p][e];
      store8(dst + col, v);
    } else {
#pragma unroll
      for (int e = 0; e < 8; e++)
        if (col + e < width) dst[col + e] = add ? dst[col + e] + acc[p][e] : acc[p][e];
    }
  }
}

// acc += v[0], then v[1], ... (R rows of a lane's columns, loaded together, added in order).
template <int R, int VPL>
__device__ __forceinline__ void add_rows(float (&acc)[VPL][8], const float (&v)[R][VPL][8]) {
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int p = 0; p < VPL; p++)
#pragma unroll
      for (int e = 0; e < 8; e++) acc[p][e] += v[r][p][e];
}

// Step 2. A warp per chunk of sorted keys, a block column per slab of 256 VPL columns.
// dtable: (V, D) f32; head, tail: (chunks, D) f32; dout: (N, D); keys, positions: (N) sorted
template <typename TD, bool VEC, int VPL>
__global__ void __launch_bounds__(THREADS)
    embedding_bwd_chunk_kernel(float *dtable, float *head, float *tail, const TD *dout,
                               const int32_t *keys, const int32_t *positions, int64_t n,
                               int64_t vocab, int64_t d) {
  const int lane = threadIdx.x & 31;
  const int64_t chunk = (int64_t)blockIdx.x * (THREADS / 32) + (threadIdx.x >> 5);
  const int64_t lo = chunk * CHUNK, c0 = (int64_t)blockIdx.y * 256 * VPL;
  if (lo >= n) return;
  const int count = (int)(n - lo < CHUNK ? n - lo : CHUNK);
  const int width = (int)(d - c0 < 256 * VPL ? d - c0 : 256 * VPL);
  // A lane holds one sorted entry; -1 matches no key (keys are >= 0).
  const int32_t my_key = lane < count ? keys[lo + lane] : -1;
  const int32_t my_pos = lane < count ? positions[lo + lane] : 0;
  const int32_t before = lo > 0 ? keys[lo - 1] : -1, after = lo + count < n ? keys[lo + count] : -1;
  for (int i = 0; i < count;) {
    const int32_t key = __shfl_sync(0xffffffffu, my_key, i);
    const int end = i + __popc(__ballot_sync(0xffffffffu, my_key == key)); // sorted: adjacent
    float acc[VPL][8];
#pragma unroll
    for (int p = 0; p < VPL; p++)
#pragma unroll
      for (int e = 0; e < 8; e++) acc[p][e] = 0.0f;
    int j = i;
    // Four rows' loads in flight at once, added in order.
    for (; j + 4 <= end; j += 4) {
      float v[4][VPL][8];
#pragma unroll
      for (int r = 0; r < 4; r++) {
        const int64_t row = __shfl_sync(0xffffffffu, my_pos, j + r);
        lane_load<VEC, VPL>(dout + row * d + c0, lane, width, v[r]);
      }
      add_rows(acc, v);
    }
    for (; j < end; j++) {
      float v[1][VPL][8];
      const int64_t row = __shfl_sync(0xffffffffu, my_pos, j);
      lane_load<VEC, VPL>(dout + row * d + c0, lane, width, v[0]);
      add_rows(acc, v);
    }
    if (key < vocab) {
      const bool began_before = i == 0 && before == key, goes_on = end == count && after == key;
      if (began_before)
        lane_store<VEC, VPL>(head + chunk * d + c0, lane, width, false, acc);
      else if (goes_on)
        lane_store<VEC, VPL>(tail + chunk * d + c0, lane, width, false, acc);
      else
        lane_store<VEC, VPL>(dtable + (int64_t)key * d + c0, lane, width, true, acc);
    }
    i = end;
  }
}

// Step 3. A warp per chunk: the one whose last run began in it and goes on past it adds that
// run's pieces in chunk order (its tail, then each later chunk's head) into the run's dtable row.
// The run's last chunk comes from a binary search of the sorted keys, so that four heads' loads
// are in flight at once (a token that is a tenth of the batch spans a hundred chunks of 32768).
template <bool VEC, int VPL>
__global__ void __launch_bounds__(THREADS)
    embedding_bwd_join_kernel(float *dtable, const float *head, const float *tail,
                              const int32_t *keys, int64_t n, int64_t vocab, int64_t d) {
  const int lane = threadIdx.x & 31;
  const int64_t chunk = (int64_t)blockIdx.x * (THREADS / 32) + (threadIdx.x >> 5);
  const int64_t lo = chunk * CHUNK, hi = lo + CHUNK, c0 = (int64_t)blockIdx.y * 256 * VPL;
  if (hi >= n) return; // the last chunk's runs end in it
  const int32_t key = keys[hi - 1];
  if (keys[hi] != key || key >= vocab) return;
  if (keys[lo] == key && lo > 0 && keys[lo - 1] == key) return; // began in an earlier chunk
  int64_t below = hi, above = n; // the run ends at the first index in [hi, n) past key
  while (below < above) {
    const int64_t mid = (below + above) / 2;
    if (keys[mid] == key)
      below = mid + 1;
    else
      above = mid;
  }
  const int64_t last = (below - 1) / CHUNK; // the run's last chunk
  const int width = (int)(d - c0 < 256 * VPL ? d - c0 : 256 * VPL);
  float acc[VPL][8];
  lane_load<VEC, VPL>(tail + chunk * d + c0, lane, width, acc);
  int64_t c = chunk + 1;
  for (; c + 4 <= last + 1; c += 4) {
    float v[4][VPL][8];
#pragma unroll
    for (int r = 0; r < 4; r++) lane_load<VEC, VPL>(head + (c + r) * d + c0, lane, width, v[r]);
    add_rows(acc, v);
  }
  for (; c <= last; c++) {
    float v[1][VPL][8];
    lane_load<VEC, VPL>(head + c * d + c0, lane, width, v[0]);
    add_rows(acc, v);
  }
  lane_store<VEC, VPL>(dtable + (int64_t)key * d + c0, lane, width, true, acc);
}

int lt_cuda_embedding_fwd(lt_ctx *ctx, lt_tensor out, lt_tensor tokens, lt_tensor table) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t n = lt_numel(tokens), d = table.shape[1];
  if (n == 0) return LT_OK;
  const bool vec = d % 8 == 0 && aligned16(out.data) && aligned16(table.data);
  const unsigned grid = blocks_for(n * ((d + 7) / 8), THREADS);
  int rc = dispatch_float(out.dtype, [&](auto *otag) {
    using TO = TYPE_OF(otag);
    return dispatch_float(table.dtype, [&](auto *ttag) {
      using TT = TYPE_OF(ttag);
      embedding_fwd_kernel<TO, TT><<<grid, THREADS, 0, st->stream>>>(
          (TO *)out.data, (const int32_t *)tokens.data, (const TT *)table.data, n, d, vec);
      return LT_OK;
    });
  });
  if (rc)
    return lt_cuda_unsupported("embedding_fwd", "out and table must be f32 or bf16", out, table);
  return lt_cuda_launched(st, "embedding_fwd", out, table);
}

// Byte offset of the next 256-byte aligned piece of scratch after `used` bytes.
static size_t align256(size_t used) {
  return (used + 255) & ~(size_t)255;
}

int lt_cuda_embedding_bwd(lt_ctx *ctx, lt_tensor dtable, lt_tensor dout, lt_tensor tokens) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t n = lt_numel(tokens), vocab = dtable.shape[0], d = dtable.shape[1];
  if (dtable.dtype != LT_F32)
    return lt_cuda_unsupported("embedding_bwd", "dtable must be f32", dtable, dout);
  if (n > INT32_MAX || vocab >= INT32_MAX)
    return lt_cuda_unsupported("embedding_bwd", "fewer than 2^31 tokens and vocabulary rows",
                               dtable, dout);
  if (n == 0) return LT_OK;
  int bits = 1; // enough for the keys 0..vocab (vocab: an out-of-range token)
  while (bits < 31 && ((int64_t)1 << bits) <= vocab) bits++;
  // Scratch: keys and positions before and after the sort, the chunks' heads and tails, CUB's.
  const int64_t chunks = (n + CHUNK - 1) / CHUNK;
  size_t sort_bytes = 0;
  CUDA_TRY(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, (const int32_t *)nullptr,
                                           (int32_t *)nullptr, (const int32_t *)nullptr,
                                           (int32_t *)nullptr, (int)n, 0, bits, st->stream),
           "sizing the embedding backward's sort of %lld tokens", (long long)n);
  size_t at[6], used = 0;
  const size_t sizes[6] = {(size_t)n * 4,
                           (size_t)n * 4,
                           (size_t)n * 4,
                           (size_t)n * 4,
                           (size_t)(2 * chunks * d) * sizeof(float),
                           sort_bytes};
  for (int i = 0; i < 6; i++) at[i] = used = align256(used), used += sizes[i];
  if (!lt_cuda_scratch_reserve(st, used))
    return lt_fail(LT_ERR_MEMORY,
                   "out of GPU memory for the embedding backward's %zu bytes of workspace: lower "
                   "train.micro_batch or train.seq_len",
                   used);
  void *scratch;
  LT_TRY(lt_cuda_scratch(st, used, "embedding_bwd", &scratch));
  char *base = (char *)scratch;
  int32_t *keys_in = (int32_t *)(base + at[0]), *pos_in = (int32_t *)(base + at[1]);
  int32_t *keys = (int32_t *)(base + at[2]), *pos = (int32_t *)(base + at[3]);
  float *head = (float *)(base + at[4]), *tail = head + chunks * d;
  embedding_bwd_keys_kernel<<<blocks_for(n, THREADS), THREADS, 0, st->stream>>>(
      keys_in, pos_in, (const int32_t *)tokens.data, n, vocab);
  CUDA_TRY(cub::DeviceRadixSort::SortPairs(base + at[5], sort_bytes, keys_in, keys, pos_in, pos,
                                           (int)n, 0, bits, st->stream),
           "the embedding backward's sort of %lld tokens", (long long)n);
  // A lane covers VPL vectors of 8 columns; rows wider than 1024 take several slabs (grid.y).
  const int vpl = (int)(d <= 1024 ? (d + 255) / 256 : 4);
  const bool vec = d % 8 == 0 && aligned16(dout.data) && aligned16(dtable.data);
  const dim3 grid(blocks_for(chunks, THREADS / 32), blocks_for(d, 256 * vpl));
  int rc = dispatch_float(dout.dtype, [&](auto *tag) {
    using TD = TYPE_OF(tag);
    auto launch = [&](auto vec_tag) {
      constexpr bool VEC = decltype(vec_tag)::value;
      WITH_VECTORS(
          vpl, VPL,
          embedding_bwd_chunk_kernel<TD, VEC, VPL><<<grid, THREADS, 0, st->stream>>>(
              (float *)dtable.data, head, tail, (const TD *)dout.data, keys, pos, n, vocab, d);
          embedding_bwd_join_kernel<VEC, VPL>
          <<<grid, THREADS, 0, st->stream>>>((float *)dtable.data, head, tail, keys, n, vocab, d));
    };
    if (vec)
      launch(std::true_type{});
    else
      launch(std::false_type{});
    return LT_OK;
  });
  if (rc) return lt_cuda_unsupported("embedding_bwd", "dout must be f32 or bf16", dtable, dout);
  return lt_cuda_launched(st, "embedding_bwd", dtable, dout);
}
