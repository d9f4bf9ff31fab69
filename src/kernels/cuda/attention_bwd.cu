// Flash attention backward on the tensor cores (FlashAttention-2, Dao 2023, Algorithm 2): a block
// owns BN keys of one key/value head (16 per warp) and walks every query tile that sees them, of
// every query head in the group, recomputing the probabilities from the saved lse:
//   S^T = K Q^T, P^T = exp(scale S^T - lse), dV += P^T dO, dP^T = V dO^T,
//   dS^T = P^T (dP^T - delta), dK += scale dS^T Q, dQ += scale dS K,
// and writes the block's dK and dV once at the end. Computing S^T rather than S keeps a warp's
// keys in its fragment rows, so P^T and dS^T feed the dV and dK products straight from registers;
// dS goes through shared memory for dQ, which blocks of different key tiles add into an f32
// buffer (so dQ's rounding depends on their order: README, "Determinism"): on Hopper's
// two-warpgroup blocks by TMA's bulk reductions of a dQ tile staged in shared memory
// (bwd_dq_bulk), elsewhere by atomics. As in the forward, one structure has two kernels:
// - Hopper (sm_90a): warpgroups of 64 keys multiply with wgmma (FlashAttention-3's operand
//   layouts). d = 128 puts two in a block, which split dQ's columns; d = 64 (v1 below) puts one in
//   a block and three blocks on an SM, unsynchronised, so one multiplies while another computes
//   its probabilities. The probabilities are computed while dP^T is still being multiplied.
// - elsewhere: four warps on mma.sync.
// Hopper's d = 64 has four variants, chosen by LT_ATTN_BWD (bwd_variant_of_env):
// - v1 (BWD_BASE): the one-warpgroup blocks above, 64 queries per step.
// - v2 (BWD_WIDE; H100: 13% faster fwd+bwd than v1 at B=8 T=4096 H=12, 16% at T=16384 H=16):
//   FlashAttention-3's d = 64 tile, 128 keys by 128 queries: two warpgroups of 64
//   keys share each Q and dO tile (half the loads per key of v1) and split dQ by query rows, each
//   over all 128 keys, so a block adds one 128 x 64 dQ tile per 128 x 128 pair: half v1's dQ
//   traffic per unit of work. Each barrier and step carries four times v1's multiplies, on
//   n = 128 wgmmas. Its loop issues each step's S^T one step ahead, as soon as the step's dK and
//   dQ products are issued, so that it multiplies while dQ is staged for the bulk reductions;
//   dK then reads dS^T from its shared tile (H100, against issuing S^T at the top of the step:
//   backward 1-2% faster at B=8 T=4096 H=12, B=2 and B=1 T=16384).
// - v3 (BWD_WIDE_OVERLAP): v2 with dQ software-pipelined (after FlashAttention-3, section 3.2):
//   a step's dQ product runs on through the next step's tile wait and barrier, and the tensor
//   cores take that step's S^T straight after it; its atomics (16 bytes each) go out before dP^T
//   is issued. dS^T is double-buffered, so a step's stores never overwrite what the pending dQ
//   reads.
// - v4 (BWD_WS, the default): v2's step in attention_bwd_ws.cu's persistent, warp-specialized
//   kernel, for dense specs (sparse ones run v2): a producer warp loads and lists the tiles, a
//   writer thread adds dQ, the consumers meet once a step (H100, fwd+bwd against v2: 6.45 ms
//   against 7.02 at the 135M model's B=2 T=16384 H=12, 2.00 against 2.15 at its B=8 T=4096).
// v2 and v3 serve the sparse instantiation (patterns, head gates) too; their Q and dO tiles come by
// TMA (attention_tma.cuh), one thread's copy per tile.
// A block walks only the query tiles that can reach its keys (attention_mask.cuh), so sparse
// patterns cost time in proportion to their visible tiles; dense attention runs an instantiation
// without the search, the pattern or the gates' special case (as the forward). Matches
// lt_cpu_attn_bwd.
#include <string.h>

#include "kernels/cuda/attention_bwd_tile.cuh"
#include "kernels/cuda/attention_bwd_ws.cuh"
#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/attention_tma.cuh"

enum { LIST_MAX = 1024 };

// The kernel's variants (see the top): only Hopper's d = 64 has more than BWD_BASE. BWD_WS is
// attention_bwd_ws.cu's persistent, warp-specialized kernel, for dense specs.
enum { BWD_BASE = 1, BWD_WIDE = 2, BWD_WIDE_OVERLAP = 3, BWD_WS = 4 };

// Query rows per step.
template <int V> __host__ __device__ constexpr int bwd_bm() {
  return V == BWD_BASE ? 64 : 128;
}
// Threads per block: one warpgroup of 64 keys, or (Hopper, d = 128, and the wide variants) two.
// With d = 64 one warpgroup's registers and shared memory leave room for three blocks per SM
// (measured 9% faster than two).
template <int D, bool HOPPER, int V> __host__ __device__ constexpr int bwd_threads() {
  return HOPPER && (D == 128 || V != BWD_BASE) ? 256 : 128;
}
template <int D, bool HOPPER, int V> __host__ __device__ constexpr int bwd_bn() {
  return bwd_threads<D, HOPPER, V>() / 2; // 16 keys per warp
}
template <int D, bool HOPPER, int V> __host__ __device__ constexpr int bwd_min_blocks() {
  return HOPPER && D == 64 && V == BWD_BASE ? 3 : 1;
}
// Query tiles in flight. With three (one being read, one landing, one free for the next copy) a
// tile's buffers need no barrier after their last use; two leave shared memory for three blocks.
template <int D, bool HOPPER, int V> __host__ __device__ constexpr int bwd_stages() {
  return HOPPER && D == 64 && V == BWD_BASE ? 2 : 3;
}
// dS^T tiles: two where a step's dQ product still reads one while the next step stores its own.
template <int V> __host__ __device__ constexpr int bwd_ds_buffers() {
  return V == BWD_WIDE_OVERLAP ? 2 : 1;
}
template <int D, bool HOPPER> __host__ __device__ constexpr int bwd_tile_bytes(int rows) {
  return HOPPER ? rows * D * 2 : rows * tile_row_bytes<D>();
}
// Hopper's two-warpgroup blocks (v2; d = 128) stage each step's dQ (BM x D f32, 32 KB) in shared
// memory for TMA's bulk reductions, where the map can be made (attn_tma_maps.use_add), rather
// than adding it by atomics from registers (H100, d = 64: 13% faster backward at B=8 T=4096
// H=12, 12% at B=1 T=16384 H=16: the atomics held their registers until the memory pipe took
// them, so the next step's multiplies waited). v1 at d = 64 (three blocks an SM) and v3 (its dQ
// product runs on into the next step) keep the atomics.
template <int D, bool HOPPER, int V> __host__ __device__ constexpr bool bwd_dq_bulk() {
  return HOPPER && (V == BWD_WIDE || (V == BWD_BASE && D == 128));
}
template <int D, bool HOPPER, int V> __host__ __device__ constexpr int bwd_dq_stage_bytes() {
  return bwd_dq_bulk<D, HOPPER, V>() ? bwd_bm<V>() * D * 4 : 0;
}
template <int D, bool HOPPER, int V> constexpr size_t bwd_smem_bytes() {
  constexpr int BN = bwd_bn<D, HOPPER, V>(), BM = bwd_bm<V>(), STAGES = bwd_stages<D, HOPPER, V>();
  return 1024 + 2 * (size_t)bwd_tile_bytes<D, HOPPER>(BN) +
         2 * STAGES * (size_t)bwd_tile_bytes<D, HOPPER>(BM) +
         bwd_ds_buffers<V>() * (size_t)bwd_tile_bytes<BM, HOPPER>(BN) +
         bwd_dq_stage_bytes<D, HOPPER, V>() + STAGES * 4 * (size_t)BM * 4 + LIST_MAX * 4;
}

// q, dout: (B, Tq, Hq, D) bf16; k, v: (B, Tk, Hkv, D) bf16; lse, delta: (B, Hq, Tq) f32;
// dq: (B, Tq, Hq, D) f32 (+=, atomic); dk, dv: (B, Tk, Hkv, D) TKV (written, every key of the
// block, so keys no query sees get zeros); a 1-D grid of key tiles x Hkv x B (block_work_of).
// SPARSE: the instantiation for sparse patterns, head gates and tile counts
// (attn_params.sparse_kernel); the dense one walks every query tile as the tile list classifies
// them, with none of their checks. V: the variant (BWD_BASE, or on Hopper with d = 64 the wide
// ones).
template <int D, typename TKV, bool HOPPER, bool SPARSE, int V>
__global__ void __launch_bounds__(bwd_threads<D, HOPPER, V>(), bwd_min_blocks<D, HOPPER, V>())
    attn_bwd_kernel(const attn_params p, const __grid_constant__ attn_tma_maps tm) {
  static_assert(V == BWD_BASE || (HOPPER && D == 64), "the wide variants are Hopper's d = 64");
  constexpr int THREADS = bwd_threads<D, HOPPER, V>(), WARPS = THREADS / 32;
  constexpr int BN = bwd_bn<D, HOPPER, V>(), BM = bwd_bm<V>(), NT = BM / 8;
  constexpr int KV_BYTES = bwd_tile_bytes<D, HOPPER>(BN), QT_BYTES = bwd_tile_bytes<D, HOPPER>(BM);
  constexpr int DS_BYTES = bwd_tile_bytes<BM, HOPPER>(BN), DS_BUFFERS = bwd_ds_buffers<V>();
  constexpr int STAGES = bwd_stages<D, HOPPER, V>();
  // dQ's split between two warpgroups: by query rows where a step has 128 (each warpgroup 64
  // rows, all of d), else by columns (d = 128); one warpgroup does it all.
  constexpr bool DQ_BY_ROWS = BM == 128;
  constexpr int COLS = DQ_BY_ROWS ? D : D / (THREADS / 128); // dQ columns per warpgroup
  constexpr bool OVERLAP = V == BWD_WIDE_OVERLAP;
  extern __shared__ unsigned char smem_raw[];
  unsigned char *smem = smem_aligned_1024(smem_raw);
  unsigned char *k_s = smem, *v_s = k_s + KV_BYTES;   // (BN, D)
  unsigned char *q_s = v_s + KV_BYTES;                // STAGES x (BM, D)
  unsigned char *do_s = q_s + STAGES * QT_BYTES;      // STAGES x (BM, D)
  unsigned char *ds_s = do_s + STAGES * QT_BYTES;     // DS_BUFFERS x (BN, BM): dS^T in bf16
  unsigned char *dq_s = ds_s + DS_BUFFERS * DS_BYTES; // bwd_dq_bulk: (BM, D) f32 for TMA
  float *lse_s = (float *)(dq_s + bwd_dq_stage_bytes<D, HOPPER, V>()); // STAGES x BM
  float *delta_s = lse_s + STAGES * BM;                                // STAGES x BM
  int32_t *qpos_s = (int32_t *)(delta_s + STAGES * BM);                // STAGES x BM
  int32_t *qdoc_s = qpos_s + STAGES * BM;                              // STAGES x BM
  int *list = qdoc_s + STAGES * BM;                                    // LIST_MAX
  __shared__ int warp_counts[WARPS];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
  const int wg = warp >> 2;
  const block_work work = block_work_of(p.n_k_tiles, p.hkv, p.head_groups);
  const int kt = work.rank, kvh = work.h, b = work.b, group = p.hq / p.hkv; // the most work first
  const int64_t j0 = (int64_t)kt * BN;
  const bool docs = p.mask.docs;
  const int64_t kv_head = ((int64_t)b * p.tk * p.hkv + kvh) * D;
  const uint32_t k_base = smem_u32(k_s), v_base = smem_u32(v_s);
  load_rows<HOPPER, BN, D, THREADS>(k_s, p.k + kv_head, (int64_t)p.hkv * D, j0, p.tk);
  load_rows<HOPPER, BN, D, THREADS>(v_s, p.v + kv_head, (int64_t)p.hkv * D, j0, p.tk);
  cp_async_commit();

  int32_t kpos[2], kdoc[2]; // this thread's two keys: warp * 16 + g + 8 hf
  bwd_key_positions(kpos, kdoc, p, b, j0, warp * 16 + g);
  float dk[D / 2], dv[D / 2];
#pragma unroll
  for (int e = 0; e < D / 2; e++) dk[e] = 0.0f, dv[e] = 0.0f;

  // With tm.use (the wide variants, where the maps could be made) thread 0 has TMA copy each Q and
  // dO tile, which lands on qdo_full[buffer] (`phases`: the parity each buffer waits for next);
  // the rest, and otherwise everything, comes by cp.async.
  __shared__ uint64_t qdo_full[STAGES];
  const bool tma = HOPPER && V != BWD_BASE && tm.use;
  // dQ by bulk reductions where the kernel stages it and the map could be made (bwd_dq_bulk).
  const bool dq_bulk = bwd_dq_bulk<D, HOPPER, V>() && tm.use_add;
  uint32_t phases = 0;
  if (tma && threadIdx.x == 0) {
    for (int i = 0; i < STAGES; i++) mbar_init(&qdo_full[i], 1);
    mbar_init_fence(); // the tile list's barriers come before the first copy
  }
  // Query tile `entry` of head h into buffer buf: Q, dO, lse, delta, and the positions where the
  // tile is masked pair by pair.
  auto issue_tile = [&](int entry, int h, int buf) {
    const int64_t i0 = (int64_t)(entry & 0x7fffffff) * BM, q_stride = (int64_t)p.hq * D;
    const int64_t head = ((int64_t)b * p.tq * p.hq + h) * D;
    load_tile_pair<HOPPER, BM, D, THREADS>(tma, tm, &qdo_full[buf], q_s + buf * QT_BYTES,
                                           do_s + buf * QT_BYTES, p.q + head, p.dout + head, h, b,
                                           i0, q_stride, p.tq);
    for (int r = threadIdx.x; r < BM; r += THREADS) {
      const bool valid = i0 + r < p.tq;
      const int64_t stat = ((int64_t)b * p.hq + h) * p.tq + (valid ? i0 + r : 0);
      const int64_t tok = (int64_t)b * p.tq + (valid ? i0 + r : 0);
      cp_async4(lse_s + buf * BM + r, p.lse + stat, valid);
      cp_async4(delta_s + buf * BM + r, p.delta + stat, valid);
      if (entry < 0) {
        cp_async4(qpos_s + buf * BM + r, p.q_pos + tok, valid);
        if (docs) cp_async4(qdoc_s + buf * BM + r, p.q_doc + tok, valid);
      }
    }
    cp_async_commit();
  };

  // The query tiles that can reach the block's keys (the dense kernel walks them all): warps 0
  // and 1 search for the bounds at once, thread 0 makes the range of them, shared memory hands it
  // on (as in the forward).
  int2 range = make_int2(0, p.n_q_tiles);
  if constexpr (SPARSE) {
    __shared__ int bounds_s[3]; // 2 bounds, then the number of intervals
    {
      longlong2 iv[1];
      const int count =
          query_interval(p.mask, p.k_keys[(int64_t)b * p.n_k_tiles + kt],
                         p.k_tiles[(int64_t)b * p.n_k_tiles + kt].x, p.q_unordered[b] == 0, iv[0]);
      if (warp < 2 * count)
        search_bound(p.q_keys + (int64_t)b * p.n_q_tiles, p.n_q_tiles, iv, warp, bounds_s);
      if (threadIdx.x == 0) bounds_s[2] = count;
    }
    __syncthreads();
    __shared__ int2 range_s;
    if (threadIdx.x == 0) {
      int2 found[2];
      ranges_of(bounds_s, bounds_s[2], p.n_q_tiles, found);
      range_s = found[0];
    }
    __syncthreads();
    range = range_s;
  }
  // The thread's first dQ row of a step, and the softmax scale, recomputed where used rather
  // than held in registers through the loop.
  const auto dq_row_of = [](int wg, int warp, int g) {
    return (DQ_BY_ROWS ? wg * 64 : 0) + (warp & 3) * 16 + g;
  };
  const auto scale_of = [](const attn_params &p) { return p.scale_log2 / LOG2E; };
  // OVERLAP: the last step's dQ, multiplying, and its rows.
  float dq_pending[OVERLAP ? COLS / 2 : 1] = {};
  bool pending = false;
  int64_t pending_i0 = 0;
  int pending_h = 0;
  // Waits for every multiply in flight, the last step's dQ among them, and adds that dQ.
  const auto add_pending_dq = [&] {
    if constexpr (OVERLAP) {
      wgmma_wait<0>();
      wgmma_fence_operands(dq_pending);
      if (pending)
        add_dq_quads<D, COLS>(p, dq_pending, scale_of(p), b, pending_h, pending_i0,
                              dq_row_of(wg, warp, g), 0);
      pending = false;
    }
  };
  // Hopper: dS^T's bf16 fragments (sa[kk]: n-tiles 2 kk, registers 0 and 1 for rows g and g + 8,
  // and 2 kk + 1) into the shared tile that dQ's product reads (and the ahead loop's dK's), then
  // the barrier after which every warp may read it. With dQ by bulk reductions, the thread that
  // issues a warpgroup's waits first until the last step's have read its staged tile.
  const auto share_ds = [&](const uint32_t(&sa)[BM / 16][4], uint32_t ds_base, bool bulk) {
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
      for (int hf = 0; hf < 2; hf++) {
        const int row = warp * 16 + hf * 8 + g;
        asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(swizzled_addr<BN>(ds_base, row, nt) + c * 4),
                     "r"(sa[nt >> 1][(nt & 1) * 2 + hf]));
      }
    fence_proxy_async();
    if (bulk && (threadIdx.x & 127) == 0) bulk_wait_read<0>();
    __syncthreads(); // all of dS^T stored
  };
  // dQ by bulk reductions (bwd_dq_bulk): the warpgroup's 64 rows (query block q_block of the
  // step's) by COLS (column block col_block) into its staged tile, then one thread's reductions.
  const auto add_dq_bulk = [&](const float(&dq)[COLS / 2], int64_t i0, int h, int q_block,
                               int col_block) {
    const uint32_t stage = smem_u32(dq_s) + wg * 64 * COLS * 4;
    stage_dq_rows<COLS>(stage, dq, scale_of(p), (warp & 3) * 16 + g);
    fence_proxy_async(); // the stores, before TMA reads them
    asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");
    if ((threadIdx.x & 127) == 0) {
#pragma unroll
      for (int s = 0; s < COLS / 32; s++)
        tma_add_rows(&tm.add, stage + s * 64 * 128, col_block * COLS + s * 32, h, i0 + q_block * 64,
                     b);
      bulk_commit();
    }
  };
  // v2 with TMA copies and dQ by bulk reductions runs the ahead loop (below): S^T of the next
  // step issued before this step's dQ is staged, into st_ahead.
  constexpr bool AHEAD = V == BWD_WIDE;
  float st_ahead[AHEAD ? NT * 4 : 1];
  int ds_buf = 0;        // runs on across list passes, so a pending dQ's tile is never refilled
  long long visited = 0; // tiles computed
  for (int first = range.x; first < range.y; first += LIST_MAX) {
    const int count = range.y - first < LIST_MAX ? range.y - first : LIST_MAX;
    const auto same = [](int t) { return t; };
    const int n = build_tile_list<THREADS>(list, warp_counts, first, count, same, [&](int t) {
      const int4 q_info = p.q_tiles[(int64_t)b * p.n_q_tiles + t];
      const int4 k_info = p.k_tiles[(int64_t)b * p.n_k_tiles + kt];
      const bool ragged = (int64_t)(t + 1) * BM > p.tq || j0 + BN > p.tk;
      return classify_tiles<SPARSE>(p.mask, q_info, k_info, ragged);
    });
    const int steps = n * group; // every query head of the group over the same tiles
    if constexpr (SPARSE) visited += steps;
    if (steps > 0) issue_tile(list[0], kvh * group, 0);
    if constexpr (AHEAD) { // v2 launches only with tma and dq_bulk (bwd_maps)
      if (steps == 0) continue;
      float(&st)[NT * 4] = st_ahead;
      // S^T of the pass's first step, once its Q (TMA) and the block's K (cp.async) are in place.
      mbar_wait(&qdo_full[0], phases & 1u), phases ^= 1u;
      cp_async_wait<1>();
      fence_proxy_async();
      __syncthreads();
      bwd_product_wgmma<D, BN, BM>(st, k_base, smem_u32(q_s), wg);
      for (int it = 0, at = 0, h = kvh * group, buf = 0; it < steps; it++) {
        const int entry = list[at];
        const int64_t i0 = (int64_t)(entry & 0x7fffffff) * BM;
        const int next_at = at + 1 == n ? 0 : at + 1, next_h = at + 1 == n ? h + 1 : h;
        const int next_buf = buf + 1 == STAGES ? 0 : buf + 1;
        if (it + 1 < steps) issue_tile(list[next_at], next_h, next_buf);
        wait_for_tile<HOPPER>(it + 1 < steps); // the statistics; both warpgroups past dQ
        const uint32_t q_base = smem_u32(q_s + buf * QT_BYTES),
                       do_base = smem_u32(do_s + buf * QT_BYTES);
        const uint32_t ds_base = smem_u32(ds_s);
        const bwd_tile_stats stats = {lse_s + buf * BM, delta_s + buf * BM, qpos_s + buf * BM,
                                      qdoc_s + buf * BM};
        float dpt[NT * 4];
        // S^T, issued last step: waited for in full before dP^T is issued (ptxas cannot tell that
        // a wait for one group retires the last iteration's, and would serialize the multiplies).
        wgmma_wait<0>();
        wgmma_fence_operands(st);
        bwd_product_wgmma<D, BN, BM>(dpt, v_base, do_base, wg);
        if (entry < 0) // TILE_PARTIAL
          bwd_probs<NT, true, SPARSE>(st, stats, p, i0, j0, warp * 16 + g, kpos, kdoc, docs);
        else
          bwd_probs<NT, false, SPARSE>(st, stats, p, i0, j0, warp * 16 + g, kpos, kdoc, docs);
        uint32_t pa[BM / 16][4], sa[BM / 16][4];
        bwd_fragments_and_dv<D, BM>(pa, sa, dv, st, dpt, stats, do_base);
        share_ds(sa, ds_base, true);
        float dq[COLS / 2];
        bwd_dk_smem_wgmma<D, BN, BM>(dk, ds_base, q_base, wg);
        bwd_dq_wgmma<COLS, BN>(dq, ds_base, k_base, wg, 0); // commits dK's and dQ's products
        wgmma_wait<1>(); // dV, issued before the barrier: P^T's registers are free
        wgmma_keep_fragments(pa);
        wgmma_fence_operands(dv);
        // The next step's S^T (on the last, a product nobody reads, so that the loop is
        // branch-free around the multiplies), in flight while dQ is staged.
        uint32_t next_q = q_base;
        if (it + 1 < steps) {
          mbar_wait(&qdo_full[next_buf], (phases >> next_buf) & 1u), phases ^= 1u << next_buf;
          next_q = smem_u32(q_s + next_buf * QT_BYTES);
        }
        bwd_product_wgmma<D, BN, BM>(st, k_base, next_q, wg);
        wgmma_wait<1>(); // dK, dQ
        wgmma_fence_operands(dk);
        wgmma_fence_operands(dq);
        add_dq_bulk(dq, i0, h, wg, 0);
        at = next_at, h = next_h, buf = next_buf;
      }
      wgmma_wait<0>(); // the last step's unread S^T
      wgmma_fence_operands(st);
    } else {
      // Step it works on list[at] of head h in buffer buf.
      for (int it = 0, at = 0, h = kvh * group, buf = 0; it < steps; it++) {
        const int entry = list[at];
        const int64_t i0 = (int64_t)(entry & 0x7fffffff) * BM;
        const int next_at = at + 1 == n ? 0 : at + 1, next_h = at + 1 == n ? h + 1 : h;
        const int next_buf = buf + 1 == STAGES ? 0 : buf + 1;
        if (it + 1 < steps) issue_tile(list[next_at], next_h, next_buf);
        if (tma) mbar_wait(&qdo_full[buf], (phases >> buf) & 1u), phases ^= 1u << buf;
        wait_for_tile<HOPPER>(it + 1 < steps);
        const uint32_t q_base = smem_u32(q_s + buf * QT_BYTES),
                       do_base = smem_u32(do_s + buf * QT_BYTES);
        const uint32_t ds_base = smem_u32(ds_s + ds_buf * DS_BYTES);
        const bwd_tile_stats stats = {lse_s + buf * BM, delta_s + buf * BM, qpos_s + buf * BM,
                                      qdoc_s + buf * BM};
        float st[NT * 4], dpt[NT * 4];
        if constexpr (HOPPER) {
          bwd_scores_wgmma<D, BN, BM>(st, dpt, k_base, v_base, q_base, do_base, wg, [&] {
            if constexpr (OVERLAP) {
              // The last step's dQ (if any), then its atomics, before dP^T is issued: so dP^T's
              // registers and the last dQ's are not live at once. (The wait takes S^T too: ptxas
              // cannot tell that a wait for one group retires a group from the last iteration, and
              // serializes every wgmma where the accumulators are read after one.)
              add_pending_dq();
              wgmma_fence(); // the atomics' registers may become dP^T's
            }
          });
          wgmma_wait<1>(); // S^T; dP^T still multiplying while P^T is computed
          wgmma_fence_operands(st);
        } else {
          bwd_scores_mma<D, NT>(st, dpt, k_base, v_base, q_base, do_base, warp, lane);
        }
        if (entry < 0) // TILE_PARTIAL
          bwd_probs<NT, true, SPARSE>(st, stats, p, i0, j0, warp * 16 + g, kpos, kdoc, docs);
        else
          bwd_probs<NT, false, SPARSE>(st, stats, p, i0, j0, warp * 16 + g, kpos, kdoc, docs);
        if constexpr (HOPPER) {
          wgmma_wait<0>();
          wgmma_fence_operands(dpt);
        }
        bwd_dscores<NT>(st, dpt, stats);

        // dS^T goes to shared memory for dQ, while (on Hopper) dV and dK multiply.
        if constexpr (HOPPER) {
          uint32_t pa[BM / 16][4], sa[BM / 16][4];
#pragma unroll
          for (int kk = 0; kk < BM / 16; kk++) {
            probs_fragment<NT>(pa[kk], st, kk);
            probs_fragment<NT>(sa[kk], dpt, kk);
          }
          bwd_dkdv_wgmma<D, BM>(dk, dv, pa, sa, q_base, do_base);
          share_ds(sa, ds_base, dq_bulk);
          const auto dkdv_done = [&] {
            wgmma_keep_fragments(pa);
            wgmma_keep_fragments(sa);
            wgmma_fence_operands(dk);
            wgmma_fence_operands(dv);
          };
          if constexpr (OVERLAP) {
            bwd_dq_wgmma<COLS, BN>(dq_pending, ds_base, k_base, DQ_BY_ROWS ? wg : 0, 0);
            wgmma_wait<1>(); // dV and dK; dQ runs on into the next step
            dkdv_done();
            pending = true, pending_i0 = i0, pending_h = h;
          } else {
            float dq[COLS / 2];
            const int q_block = DQ_BY_ROWS ? wg : 0, col_block = DQ_BY_ROWS ? 0 : wg;
            bwd_dq_wgmma<COLS, BN>(dq, ds_base, k_base, q_block, col_block);
            wgmma_wait<0>();
            dkdv_done();
            wgmma_fence_operands(dq);
            if (dq_bulk)
              add_dq_bulk(dq, i0, h, q_block, col_block);
            else if constexpr (V == BWD_WIDE)
              add_dq_quads<D, COLS>(p, dq, scale_of(p), b, h, i0, dq_row_of(wg, warp, g), 0);
            else
              add_dq_pairs<D, COLS>(p, dq, scale_of(p), b, h, i0, dq_row_of(wg, warp, g),
                                    col_block * COLS);
          }
        } else {
          bwd_dkdv_mma<D, BM>(dk, dv, st, dpt, q_base, do_base, lane);
#pragma unroll
          for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
              const uint32_t addr = tile_addr<BM>(ds_base, warp * 16 + hf * 8 + g, nt) + c * 4;
              asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr),
                           "r"(pack_bf16(dpt[nt * 4 + 2 * hf], dpt[nt * 4 + 2 * hf + 1])));
            }
          __syncthreads();
          float dq[D / 2];
          bwd_dq_mma<D, BN, BM>(dq, ds_base, k_base, warp, lane);
          add_dq_pairs<D, D>(p, dq, scale_of(p), b, h, i0, warp * 16 + g, 0);
        }
        if constexpr (STAGES == 2) __syncthreads(); // the next copy refills this tile's buffers
        if constexpr (DS_BUFFERS == 2) ds_buf ^= 1;
        at = next_at, h = next_h, buf = next_buf;
      }
    }
  }
  if constexpr (OVERLAP) add_pending_dq();
  if (dq_bulk && (threadIdx.x & 127) == 0) bulk_wait_all(); // the staged dQ has been added

  bwd_store_dkdv<D, TKV>(p, bwd_rope_freqs<D>(p), dk, dv, scale_of(p), b, kvh, j0, warp * 16 + g);
  if (SPARSE && p.visited && threadIdx.x == 0) atomicAdd(p.visited, (unsigned long long)visited);
}

// The TMA maps of variant V: the wide variants' Q and dO tiles come by TMA where the maps can be
// made (tm.use; H100: 1% faster fwd + bwd than their cp.async copies at B=8 T=4096 H=12 and B=1
// T=16384 H=16, and no spills), and the two-warpgroup blocks add dQ by TMA's bulk reductions
// (bwd_dq_bulk; tm.use_add), 64 rows by 32 columns at a time. v2 runs only with both
// (lt_cuda_attn_bwd falls back to v1 where they cannot be made).
template <int D, bool HOPPER, int V>
static attn_tma_maps bwd_maps(const bf16 *q, const bf16 *dout, float *dq, int64_t b, int64_t tq,
                              int hq) {
  attn_tma_maps tm;
  memset(&tm, 0, sizeof tm);
  if constexpr (HOPPER && V != BWD_BASE)
    tm.use = attn_tma_map_rows(&tm.rows[0], q, LT_BF16, b, tq, hq, D, bwd_bm<V>(), D) &&
             attn_tma_map_rows(&tm.rows[1], dout, LT_BF16, b, tq, hq, D, bwd_bm<V>(), D);
  if constexpr (bwd_dq_bulk<D, HOPPER, V>())
    tm.use_add = attn_tma_map_rows(&tm.add, dq, LT_F32, b, tq, hq, D, 64, 32);
  return tm;
}

// maps: the variant's TMA maps where the caller has made them already, else NULL.
template <int D, typename TKV, bool HOPPER, bool SPARSE, int V>
static int launch_bwd(lt_cuda_state *st, const attn_params &p, int64_t b,
                      const attn_tma_maps *maps) {
  constexpr size_t smem = bwd_smem_bytes<D, HOPPER, V>();
  CUDA_TRY(cudaFuncSetAttribute(attn_bwd_kernel<D, TKV, HOPPER, SPARSE, V>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
           "attn_bwd: raising shared memory to %zu bytes", smem);
  const attn_tma_maps tm = maps ? *maps : bwd_maps<D, HOPPER, V>(p.q, p.dout, p.dq, b, p.tq, p.hq);
  attn_params pg = p;
  pg.head_groups =
      lt_cuda_attn_head_groups(p.n_k_tiles, b * p.hkv, st->n_sms * bwd_min_blocks<D, HOPPER, V>());
  attn_bwd_kernel<D, TKV, HOPPER, SPARSE, V>
      <<<attn_grid(p.n_k_tiles, b * p.hkv), bwd_threads<D, HOPPER, V>(), smem, st->stream>>>(pg,
                                                                                             tm);
  return LT_OK;
}

template <int D, typename TKV, bool HOPPER, int V>
static int launch_bwd(lt_cuda_state *st, const attn_params &p, int64_t b,
                      const attn_tma_maps *maps) {
  return p.sparse_kernel ? launch_bwd<D, TKV, HOPPER, true, V>(st, p, b, maps)
                         : launch_bwd<D, TKV, HOPPER, false, V>(st, p, b, maps);
}

template <int D, bool HOPPER, int V>
static int launch_bwd(lt_cuda_state *st, const attn_params &p, int64_t b,
                      const attn_tma_maps *maps = NULL) {
  return p.dkv_f32 ? launch_bwd<D, float, HOPPER, V>(st, p, b, maps)
                   : launch_bwd<D, bf16, HOPPER, V>(st, p, b, maps);
}

// LT_ATTN_BWD: which variant Hopper's d = 64 runs (v1, v2, v3, or v4, the default; see the top).
static int bwd_variant_of_env(int *variant) {
  return lt_cuda_attn_variant("LT_ATTN_BWD", "attention backward", BWD_WS, BWD_WS, variant);
}

// Where the backward writes dK and dV (attn_params' dk, dv, dkv_row, rope_pos, rope_theta): two
// tensors of their own, or the k and v heads of a fused dqkv. `named` names the op's output in
// messages and the profile.
struct dkv_out {
  void *dk, *dv;
  lt_dtype dtype;
  int64_t row;
  const int32_t *rope_pos;
  float rope_theta;
  lt_tensor named;
};

static int attn_bwd(lt_ctx *ctx, lt_tensor dq, const dkv_out &out, lt_tensor dout, lt_tensor q,
                    lt_tensor k, lt_tensor v, lt_tensor lse, lt_tensor delta,
                    const lt_attn_spec *spec) {
  lt_cuda_state *st = cuda_state(ctx);
  if (dq.dtype != LT_F32 || dout.dtype != LT_BF16 || (out.dtype != LT_F32 && out.dtype != LT_BF16))
    return lt_cuda_unsupported("attn_bwd", "dq f32, dout bf16, dk and dv both bf16 or f32", dq,
                               out.named);
  const bool hopper = st->attn_wgmma;
  int variant;
  LT_TRY(bwd_variant_of_env(&variant)); // a bad name is an error on every GPU
  if (!hopper || q.shape[3] != 64) variant = BWD_BASE;
  // The wide variants add dQ 16 bytes at a time; v1 takes any dq.
  if (variant != BWD_BASE && !aligned16(dq.data)) variant = BWD_BASE;
  // v4 takes dense specs whose tensors TMA can describe; the rest run v2.
  bwd_ws_maps ws_maps;
  if (variant == BWD_WS && (attn_spec_needs_sparse_kernel(spec) ||
                            !lt_cuda_attn_bwd_ws_maps(&ws_maps, q, dout, k, v, dq)))
    variant = BWD_WIDE;
  attn_tma_maps wide_maps; // v2 needs its TMA maps (bwd_maps), made once here
  if (variant == BWD_WIDE) {
    wide_maps =
        bwd_maps<64, true, BWD_WIDE>((const bf16 *)q.data, (const bf16 *)dout.data,
                                     (float *)dq.data, q.shape[0], q.shape[1], (int)q.shape[2]);
    if (!wide_maps.use || !wide_maps.use_add) variant = BWD_BASE;
  }
  attn_params p;
  int q_tile = bwd_bm<BWD_BASE>(), k_tile;
  if (variant == BWD_WS)
    q_tile = BWD_WS_BM, k_tile = BWD_WS_BN;
  else if (q.shape[3] == 64 && hopper && variant != BWD_BASE)
    q_tile = bwd_bm<BWD_WIDE>(), k_tile = bwd_bn<64, true, BWD_WIDE>();
  else if (q.shape[3] == 64)
    k_tile = hopper ? bwd_bn<64, true, BWD_BASE>() : bwd_bn<64, false, BWD_BASE>();
  else
    k_tile = hopper ? bwd_bn<128, true, BWD_BASE>() : bwd_bn<128, false, BWD_BASE>();
  LT_TRY(lt_cuda_attn_setup(ctx, &p, q, k, v, spec, q_tile, k_tile, "attn_bwd"));
  p.dout = (const bf16 *)dout.data, p.lse = (float *)lse.data, p.delta = (float *)delta.data;
  p.dq = (float *)dq.data, p.dk = out.dk, p.dv = out.dv;
  p.dkv_f32 = out.dtype == LT_F32;
  p.dkv_row = out.row, p.rope_pos = out.rope_pos, p.rope_theta = out.rope_theta;
  if (p.tk == 0) return LT_OK;
  if (p.tq == 0) { // no query: the keys' gradients are zeros
    const size_t size = lt_dtype_size(out.dtype), pitch = (size_t)out.row * size;
    const size_t width = (size_t)p.hkv * q.shape[3] * size, rows = (size_t)(k.shape[0] * p.tk);
    CUDA_TRY(cudaMemset2DAsync(out.dk, pitch, 0, width, rows, st->stream), "attn_bwd: zeroing dk");
    CUDA_TRY(cudaMemset2DAsync(out.dv, pitch, 0, width, rows, st->stream), "attn_bwd: zeroing dv");
    return LT_OK;
  }
  const int64_t b = q.shape[0];
  int rc;
  if (variant == BWD_WS)
    rc = lt_cuda_attn_bwd_ws(st, p, ws_maps, b);
  else if (q.shape[3] == 64 && hopper)
    rc = variant == BWD_WIDE           ? launch_bwd<64, true, BWD_WIDE>(st, p, b, &wide_maps)
         : variant == BWD_WIDE_OVERLAP ? launch_bwd<64, true, BWD_WIDE_OVERLAP>(st, p, b)
                                       : launch_bwd<64, true, BWD_BASE>(st, p, b);
  else if (q.shape[3] == 64)
    rc = launch_bwd<64, false, BWD_BASE>(st, p, b);
  else
    rc = hopper ? launch_bwd<128, true, BWD_BASE>(st, p, b)
                : launch_bwd<128, false, BWD_BASE>(st, p, b);
  LT_TRY(rc);
  LT_TRY(lt_cuda_launched(st, "attn_bwd", q, out.named));
  return lt_cuda_attn_count_tiles(st, p, spec);
}

int lt_cuda_attn_bwd(lt_ctx *ctx, lt_tensor dq, lt_tensor dk, lt_tensor dv, lt_tensor dout,
                     lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor lse, lt_tensor delta,
                     const lt_attn_spec *spec) {
  if (dk.dtype != dv.dtype)
    return lt_cuda_unsupported("attn_bwd", "dk and dv both bf16 or f32", dk, dv);
  const dkv_out out = {dk.data, dv.data, dk.dtype, k.shape[2] * k.shape[3], NULL, 0.0f, dk};
  return attn_bwd(ctx, dq, out, dout, q, k, v, lse, delta, spec);
}

// dK and dV go into dqkv's k and v heads, dK rotated back as it is stored; then dq's pass joins
// the q heads (101 MB in and 50 MB out at the 135M model's T = 16384 B = 2, against 200 MB in and
// 151 MB out for all three).
int lt_cuda_attn_bwd_rope(lt_ctx *ctx, lt_tensor dqkv, lt_tensor dq, lt_tensor dout, lt_tensor q,
                          lt_tensor k, lt_tensor v, lt_tensor lse, lt_tensor delta,
                          const lt_attn_spec *spec, lt_tensor pos, float theta) {
  if (pos.device != LT_CUDA || pos.dtype != LT_I32)
    return lt_cuda_unsupported("attn_bwd_rope", "positions must be i32 on the GPU", pos, dqkv);
  const int64_t hq = q.shape[2], hkv = k.shape[2], d = q.shape[3];
  const size_t size = lt_dtype_size(dqkv.dtype);
  char *base = (char *)dqkv.data;
  const dkv_out out = {base + (size_t)(hq * d) * size,
                       base + (size_t)((hq + hkv) * d) * size,
                       dqkv.dtype,
                       (hq + 2 * hkv) * d,
                       (const int32_t *)pos.data,
                       theta,
                       dqkv};
  LT_TRY(attn_bwd(ctx, dq, out, dout, q, k, v, lse, delta, spec));
  return lt_cuda_rope_q_bwd(ctx, dqkv, dq, pos, theta);
}
