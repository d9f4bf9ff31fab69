// Dense flash attention forward on Hopper, warp-specialized and persistent after
// FlashAttention-3 (Shah et al. 2024, arXiv:2407.08608; its d = 64 shape: three consumer
// warpgroups over 192 query rows): LT_ATTN_FWD v2 and v3, and by default at d = 64 on long
// sequences (attention_fwd.cu). One block per SM takes work items (BM = 192 query rows of one
// head) from a grid-wide counter, longest first, until none is left; its threads split by role:
// - one producer warp copies each item's Q tile and the K and V tiles (128 keys each) its mask
//   lets through by TMA into rings of shared-memory buffers, which report their bytes' arrival on
//   "full" mbarriers; the consumers say through "empty" ones that they are done with a buffer.
//   The producer classifies 32 key tiles a ballot, and writes each tile's list entry (the tile,
//   partial or not; LIST_END past an item's last) beside its K buffer, and the item beside its Q
//   buffer (-1: no more). It runs ahead of the consumers by the rings' depth, across items, so
//   that an item's Q and first tiles are in place when the consumers finish the item before. It
//   waits suspended (mbar_wait_suspended): spinning, it took a tenth of the SM's issue slots. Its
//   warpgroup hands most of its registers to the consumers (setmaxnreg).
// - three consumer warpgroups of 64 rows each overlap their softmax with their own multiplies
//   (section 3.2, Algorithm 2): a tile's S = Q K^T is issued with the last tile's
//   O += P_{j-1} V_{j-1}, whose wait comes after the exponentials; the output is rescaled only
//   where softmax_probs_lazy raises the running max. (One set of probability registers: 160 a
//   thread leave no room for v1's two.) Three warps a scheduler hide more of the softmax's
//   latencies than two: H100, B=2 H=12 T=16384, 2.39 ms with two warpgroups over 128-row items
//   dealt round-robin; 1.80 with three and the counter (three dealt round-robin: 3.09, the
//   blocks' totals far apart, as the items' order is planned for a greedy dispatch).
// - v3 adds the ping-pong of section 3.1: named barriers make the warpgroups issue their
//   multiplies in turn, so one's softmax runs while another's multiplies occupy the tensor cores
//   (within noise of v2 on the H100).
// No block-wide barrier past the start. Both match lt_cpu_attn_fwd for any dense spec (causal or
// not, documents, positions at an offset, partial key ranges: lse = -inf and o = 0 for a query
// that sees no key); sparse patterns, head gates and tile counts stay on v1.
#include <limits.h>

#include "kernels/cuda/attention_fwd_tile.cuh"
#include "kernels/cuda/attention_fwd_ws.cuh"

enum {
  BM = FWD_WS_BM,
  BN = FWD_WS_BN,
  CONSUMER_WGS = 3,
  CONSUMERS = 128 * CONSUMER_WGS, // three warpgroups
  PRODUCERS = 128,                // and one whose first warp loads
  THREADS = CONSUMERS + PRODUCERS,
  CONSUMER_WARPS = CONSUMERS / 32,
  // Registers per thread (setmaxnreg): the producers need few, so the consumers may have more than
  // the 128 that 512 threads get each: 128 x 24 + 384 x 160 = 64512 of the SM's 65536.
  PRODUCER_REGS = 24,
  CONSUMER_REGS = 160,
  TURN_BARRIER = 1,     // named barriers 1-3: warpgroup 0's, 1's and 2's turn (0 is __syncthreads)
  LIST_END = 0x7fffffff // the entry past a work item's last key tile
};

// Buffers in the Q, K and V rings. V's tile j is read one step after K's (by P_j V_j), so its
// ring must not be the shallower: the producer fills K_j, V_j, K_j+1, ... in order, and would
// otherwise wait on a V buffer before it could fill the next K. At d = 64 four of each (a power
// of two: the slots' arithmetic is a mask); at d = 128 the shared memory holds two K and three V.
// Two Q buffers let the next item's Q land during this one; at d = 128 one.
template <int D> __host__ __device__ constexpr int q_stages() {
  return D == 64 ? 2 : 1;
}
template <int D> __host__ __device__ constexpr int k_stages() {
  return D == 64 ? 4 : 2;
}
template <int D> __host__ __device__ constexpr int v_stages() {
  return D == 64 ? 4 : 3;
}
template <int D> constexpr size_t ws_smem_bytes() {
  return 1024 + (size_t)q_stages<D>() * BM * D * 2 +
         (size_t)(k_stages<D>() + v_stages<D>()) * BN * D * 2 + 2 * (size_t)q_stages<D>() * BM * 4;
}

// Named barriers between two consumer warpgroups, the one whose turn it is and the one before
// (the producer never joins them).
__device__ __forceinline__ void turn_wait(int id) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(256) : "memory");
}
__device__ __forceinline__ void turn_pass(int id) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(256) : "memory");
}

// The block's shared memory: the rings and their barriers, each item's query positions and
// documents (beside its Q buffer), and the K ring's list entries. Full barriers: the producer's
// arrivals (with the bytes its copies announce); empty ones: the CONSUMER_WARPS consumer warps'.
template <int D> struct ws_smem {
  unsigned char *q, *k, *v;
  int32_t *qpos, *qdoc; // q_stages x BM each
  int *qitem;           // q_stages: the item whose Q the buffer holds, -1 past the last
  int *entries;         // k_stages
  uint64_t *q_full, *q_empty, *k_full, *k_empty, *v_full, *v_empty;
  __device__ uint32_t q_at(int slot) const { return smem_u32(q + slot * BM * D * 2); }
  __device__ uint32_t k_at(int slot) const { return smem_u32(k + slot * BN * D * 2); }
  __device__ uint32_t v_at(int slot) const { return smem_u32(v + slot * BN * D * 2); }
};

// What a work item covers: query tile qt (rows from i0) of head h of batch row b.
struct ws_item {
  int qt, h, b;
  int64_t i0;
};
__device__ __forceinline__ ws_item item_at(const attn_params &p, int64_t l, int pairs) {
  const block_work w = block_work_at((int)l, p.n_q_tiles, pairs, p.hq, p.head_groups);
  const int qt = p.n_q_tiles - 1 - w.rank;
  return {qt, w.h, w.b, (int64_t)qt * BM};
}

// The producer warp: for each of the block's items, its Q tile and query positions into the Q
// ring, then its visible K and V tiles into theirs, then LIST_END into the K ring's entries.
template <int D>
__device__ __forceinline__ void produce(const attn_params &p, const fwd_ws_maps &tm,
                                        const ws_smem<D> &sm, int pairs, int64_t items) {
  constexpr int QS = q_stages<D>(), KS = k_stages<D>(), VS = v_stages<D>();
  const int lane = threadIdx.x & 31;
  uint32_t qu = 0, ku = 0, vu = 0; // uses of each ring so far (a block's stay far below 2^32)
  for (;; qu++) {
    const int qs = ring_slot<QS>(qu);
    if (qu >= QS) mbar_wait_suspended(&sm.q_empty[qs], ring_parity<QS>(qu - QS));
    // The next item of the whole grid's (a block that frees takes the next, longest first, as
    // the GPU's block dispatch would: the order lt_cuda_attn_head_groups plans for).
    int l = 0;
    if (lane == 0) l = atomicAdd(p.next_item, 1);
    l = __shfl_sync(0xffffffffu, l, 0);
    if (lane == 0) sm.qitem[qs] = l < items ? l : -1;
    if (l >= items) { // the consumers' signal to stop: a Q buffer with no item
      mbar_arrive(&sm.q_full[qs]);
      break;
    }
    const ws_item it = item_at(p, l, pairs);
    const int kvh = it.h / (p.hq / p.hkv);
    for (int row = lane; row < BM; row += 32) {
      const bool valid = it.i0 + row < p.tq;
      const int64_t at = (int64_t)it.b * p.tq + it.i0 + row;
      sm.qpos[qs * BM + row] = valid ? p.q_pos[at] : INT_MIN;
      sm.qdoc[qs * BM + row] = valid && p.mask.docs ? p.q_doc[at] : 0;
    }
    if (lane == 0) { // the 31 other lanes' arrivals release their positions
      mbar_arrive_expect_tx(&sm.q_full[qs], BM * D * 2);
      tma_load_tile<BM, D>(sm.q_at(qs), &tm.q, it.h, it.i0, it.b, &sm.q_full[qs]);
    } else {
      mbar_arrive(&sm.q_full[qs]);
    }
    for (int base = 0; base < p.n_k_tiles; base += 32) {
      const int t = base + lane;
      const int kind =
          t < p.n_k_tiles ? classify_key_tile<BN, false>(p, it.b, it.qt, t) : (int)TILE_HIDDEN;
      unsigned live = __ballot_sync(0xffffffffu, kind != TILE_HIDDEN);
      const unsigned partial = __ballot_sync(0xffffffffu, kind == TILE_PARTIAL);
      for (; live; live &= live - 1, ku++, vu++) {
        const int src = __ffs(live) - 1;
        if (lane != 0) continue;
        const int ks = ring_slot<KS>(ku), vs = ring_slot<VS>(vu);
        if (ku >= KS) mbar_wait_suspended(&sm.k_empty[ks], ring_parity<KS>(ku - KS));
        sm.entries[ks] = (base + src) | ((partial >> src) & 1u ? (int)0x80000000u : 0);
        const int64_t j0 = (int64_t)(base + src) * BN;
        mbar_arrive_expect_tx(&sm.k_full[ks], BN * D * 2);
        tma_load_tile<BN, D>(sm.k_at(ks), &tm.k, kvh, j0, it.b, &sm.k_full[ks]);
        if (vu >= VS) mbar_wait_suspended(&sm.v_empty[vs], ring_parity<VS>(vu - VS));
        mbar_arrive_expect_tx(&sm.v_full[vs], BN * D * 2);
        tma_load_tile<BN, D>(sm.v_at(vs), &tm.v, kvh, j0, it.b, &sm.v_full[vs]);
      }
    }
    if (lane == 0) {
      const int ks = ring_slot<KS>(ku);
      if (ku >= KS) mbar_wait_suspended(&sm.k_empty[ks], ring_parity<KS>(ku - KS));
      sm.entries[ks] = LIST_END;
      mbar_arrive(&sm.k_full[ks]);
    }
    ku++;
  }
}

// A consumer warpgroup's state for the item it is on: its output rows, running max and sum, and
// the probabilities of the last tile.
template <int D> struct ws_rows {
  float o[D / 2], row_max[2], row_sum[2];
  uint32_t pa[BN / 16][4];
};

// A consumer warpgroup's walk over the block's items (see the top of the file).
template <int D, bool PINGPONG>
__device__ __forceinline__ void consume(const attn_params &p, const ws_smem<D> &sm, int pairs) {
  constexpr int QS = q_stages<D>(), KS = k_stages<D>(), VS = v_stages<D>();
  const int warp = threadIdx.x >> 5, wg = warp >> 2, lane = threadIdx.x & 31;
  const int row = warp * 16 + (lane >> 2); // the thread's first row of the item's BM
  uint32_t qu = 0, ku = 0, vu = 0;
  ws_rows<D> w;
  if (PINGPONG && wg == CONSUMER_WGS - 1) turn_pass(TURN_BARRIER); // warpgroup 0 goes first
  for (;; qu++) {
    const int qs = ring_slot<QS>(qu);
    mbar_wait(&sm.q_full[qs], ring_parity<QS>(qu));
    const int l = sm.qitem[qs];
    if (l < 0) break;
    const ws_item it = item_at(p, l, pairs);
    const int32_t *qpos = sm.qpos + qs * BM, *qdoc = sm.qdoc + qs * BM;
#pragma unroll
    for (int e = 0; e < D / 2; e++) w.o[e] = 0.0f;
    w.row_max[0] = w.row_max[1] = -INFINITY, w.row_sum[0] = w.row_sum[1] = 0.0f;
    // Before the item's first tile the probabilities are zeros, and their P V (of the first
    // tile's V, finite) adds none: a branch-free step, as ptxas serializes the wgmmas of a loop
    // that branches around one.
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) w.pa[kk][0] = w.pa[kk][1] = w.pa[kk][2] = w.pa[kk][3] = 0u;
    const uint32_t q_base = sm.q_at(qs);
    for (int n = 0;; n++, ku++, vu++) { // tile n of the item: its S, and the last tile's P V
      const int ks = ring_slot<KS>(ku);
      mbar_wait(&sm.k_full[ks], ring_parity<KS>(ku));
      const int entry = sm.entries[ks];
      if (entry == LIST_END) {
        if (lane == 0) mbar_arrive(&sm.k_empty[ks]);
        ku++;
        if (n > 0) { // the last tile's P V
          fwd_pv_wgmma<D, BN>(w.o, w.pa, sm.v_at(ring_slot<VS>(vu - 1)));
          wgmma_wait<0>();
          wgmma_keep_fragments(w.pa);
          wgmma_fence_operands(w.o);
          if (lane == 0) mbar_arrive(&sm.v_empty[ring_slot<VS>(vu - 1)]);
        }
        break;
      }
      const uint32_t pv_use = n == 0 ? vu : vu - 1;
      const int64_t j0 = (int64_t)(entry & 0x7fffffff) * BN;
      float s[BN / 2], factor[2];
      if constexpr (PINGPONG) turn_wait(TURN_BARRIER + wg);
      fwd_scores_wgmma<D, BN, BM>(s, q_base, sm.k_at(ks), wg);
      mbar_wait(&sm.v_full[ring_slot<VS>(pv_use)], ring_parity<VS>(pv_use));
      fwd_pv_wgmma<D, BN>(w.o, w.pa, sm.v_at(ring_slot<VS>(pv_use)));
      if constexpr (PINGPONG) turn_pass(TURN_BARRIER + (wg + 1) % CONSUMER_WGS);
      wgmma_wait<1>(); // S; P V still multiplying through the softmax
      wgmma_fence_operands(s);
      if (lane == 0) mbar_arrive(&sm.k_empty[ks]);
      if (entry < 0) { // TILE_PARTIAL: the mask pair by pair, keys' positions from memory
        const int64_t at = (int64_t)it.b * p.tk + j0;
        mask_scores<BN / 8, false>(s, row, qpos, qdoc, p.k_pos + at,
                                   p.mask.docs ? p.k_doc + at : nullptr, j0, p.tk, p.mask);
      }
      const bool raise = softmax_probs_lazy<BN / 8>(s, w.row_max, w.row_sum, p.scale_log2, factor);
      wgmma_wait<0>(); // the last tile's P V, before its probabilities are overwritten
      wgmma_keep_fragments(w.pa);
      wgmma_fence_operands(w.o);
      if (lane == 0 && n > 0) mbar_arrive(&sm.v_empty[ring_slot<VS>(vu - 1)]);
      if (raise) rescale_output<D / 8>(w.o, factor); // the warp's vote: all its rows or none
      probs_fragments<BN>(w.pa, s);
    }
    if (lane == 0) mbar_arrive(&sm.q_empty[qs]); // every S of the item is done
    write_output<D>(p, w.o, w.row_max, w.row_sum, it.b, it.h, it.i0, row);
  }
  // The last warpgroup's first pass is matched by warpgroup 0's last wait: the barriers end the
  // walk with every arrival consumed.
  if (PINGPONG && wg == 0) turn_wait(TURN_BARRIER);
}

// q, o: (B, Tq, Hq, D) bf16; k, v: (B, Tk, Hkv, D) bf16; lse: (B, Hq, Tq) f32; `items` work
// items (query tiles of BM x Hq x B, block_work_at) over a grid of at most one block per SM,
// THREADS threads: warps 0-11 the consumer warpgroups (rows 16 warp .. 16 warp + 15 of an item's
// BM), warp 12 the producer (warps 13-15 only give up their registers).
template <int D, bool PINGPONG>
__global__ void __launch_bounds__(THREADS, 1)
    attn_fwd_ws_kernel(const attn_params p, const __grid_constant__ fwd_ws_maps tm, int64_t items) {
  constexpr int QS = q_stages<D>(), KS = k_stages<D>(), VS = v_stages<D>();
  extern __shared__ unsigned char smem_raw[];
  // wgmma's swizzled tiles start at 1024-byte boundaries.
  unsigned char *smem = smem_aligned_1024(smem_raw);
  __shared__ uint64_t bars[2 * (QS + KS + VS)];
  __shared__ int entries[KS], qitem[QS];
  ws_smem<D> sm;
  sm.q = smem, sm.k = sm.q + QS * BM * D * 2, sm.v = sm.k + KS * BN * D * 2;
  sm.qpos = (int32_t *)(sm.v + VS * BN * D * 2), sm.qdoc = sm.qpos + QS * BM;
  sm.entries = entries, sm.qitem = qitem;
  sm.q_full = bars, sm.q_empty = bars + QS, sm.k_full = bars + 2 * QS;
  sm.k_empty = sm.k_full + KS, sm.v_full = sm.k_empty + KS, sm.v_empty = sm.v_full + VS;
  const int pairs = (int)(items / p.n_q_tiles);
  if (threadIdx.x == 0) {
    for (int i = 0; i < QS; i++)
      mbar_init(&sm.q_full[i], 32), mbar_init(&sm.q_empty[i], CONSUMER_WARPS);
    for (int i = 0; i < KS; i++)
      mbar_init(&sm.k_full[i], 1), mbar_init(&sm.k_empty[i], CONSUMER_WARPS);
    for (int i = 0; i < VS; i++)
      mbar_init(&sm.v_full[i], 1), mbar_init(&sm.v_empty[i], CONSUMER_WARPS);
    mbar_init_fence();
  }
  __syncthreads(); // the barriers initialised, for the threads and the copies
  if (threadIdx.x >= CONSUMERS) {
    set_max_registers<PRODUCER_REGS, false>();
    if (threadIdx.x < CONSUMERS + 32) produce<D>(p, tm, sm, pairs, items);
  } else {
    set_max_registers<CONSUMER_REGS, true>();
    consume<D, PINGPONG>(p, sm, pairs);
  }
}

template <int D, bool PINGPONG>
static int launch_fwd_ws(lt_cuda_state *st, const attn_params &p, const fwd_ws_maps &tm,
                         int64_t b) {
  constexpr size_t smem = ws_smem_bytes<D>();
  CUDA_TRY(cudaFuncSetAttribute(attn_fwd_ws_kernel<D, PINGPONG>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
           "attn_fwd: raising shared memory to %zu bytes", smem);
  attn_params pg = p;
  pg.head_groups = lt_cuda_attn_head_groups(p.n_q_tiles, b * p.hq, st->n_sms);
  const int64_t items = (int64_t)p.n_q_tiles * b * p.hq;
  unsigned blocks;
  LT_TRY(lt_cuda_attn_persistent_grid(st, p, items, "attn_fwd", &blocks));
  attn_fwd_ws_kernel<D, PINGPONG><<<blocks, THREADS, smem, st->stream>>>(pg, tm, items);
  return LT_OK;
}

bool lt_cuda_attn_fwd_ws_maps(fwd_ws_maps *tm, lt_tensor q, lt_tensor k, lt_tensor v) {
  const int d = (int)q.shape[3];
  return attn_tma_map_rows(&tm->q, q.data, LT_BF16, q.shape[0], q.shape[1], (int)q.shape[2], d, BM,
                           64) &&
         attn_tma_map_rows(&tm->k, k.data, LT_BF16, k.shape[0], k.shape[1], (int)k.shape[2], d, BN,
                           64) &&
         attn_tma_map_rows(&tm->v, v.data, LT_BF16, v.shape[0], v.shape[1], (int)v.shape[2], d, BN,
                           64);
}

int lt_cuda_attn_fwd_ws(lt_cuda_state *st, const attn_params &p, const fwd_ws_maps &tm, int64_t b,
                        int d, bool pingpong) {
  if (d == 64)
    return pingpong ? launch_fwd_ws<64, true>(st, p, tm, b)
                    : launch_fwd_ws<64, false>(st, p, tm, b);
  return pingpong ? launch_fwd_ws<128, true>(st, p, tm, b)
                  : launch_fwd_ws<128, false>(st, p, tm, b);
}
