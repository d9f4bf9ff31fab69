// Dense flash attention forward on Hopper, warp-specialized after FlashAttention-3 (Shah et al.
// 2024, arXiv:2407.08608): LT_ATTN_FWD v2 and v3 (attention_fwd.cu reads it). A block owns 128
// query rows of one head, as the v1 kernel, but its threads split by role:
// - a producer warpgroup copies the K and V tiles (128 keys each) into two rings of shared-memory
//   buffers with cp.async, and says that a buffer is full through an mbarrier; the consumers say
//   through another that they are done with it. No block-wide barrier per tile: each warpgroup
//   runs at its own pace, up to the depth of the rings. The producers hand most of their
//   registers to the consumers (setmaxnreg).
// - two consumer warpgroups of 64 rows each overlap their softmax with their own multiplies
//   (section 3.2, Algorithm 2): a tile's S = Q K^T_j is issued with the last tile's
//   O += P_{j-1} V_{j-1}, and the exponentials of S_j were to run while P V still multiplies; the
//   output's rescale for the new row max waits for that P V and is applied just before the next
//   one. (In the SASS, ptxas hoists that wait above the exponentials, as it did in v1 before v1's
//   TMA loop kept two sets of probability registers: so here P V overlaps little of the softmax.)
// - v3 adds the ping-pong of section 3.1: named barriers make the warpgroups issue their
//   multiplies in turn, so one's softmax runs while the other's multiplies occupy the tensor cores.
// Both matches lt_cpu_attn_fwd for any dense spec (causal or not, documents, positions at an
// offset, partial key ranges: lse = -inf and o = 0 for a query that sees no key); sparse patterns,
// head gates and tile counts stay on v1.
#include <limits.h>

#include "kernels/cuda/attention_fwd_tile.cuh"
#include "kernels/cuda/attention_fwd_ws.cuh"
#include "kernels/cuda/attention_tma.cuh"

enum {
  BM = FWD_WS_BM,
  BN = FWD_WS_BN,
  CONSUMERS = 256, // two warpgroups
  PRODUCERS = 128, // and one that loads
  THREADS = CONSUMERS + PRODUCERS,
  CONSUMER_WARPS = CONSUMERS / 32,
  // Registers per thread (setmaxnreg): the producers need few, so the consumers may have more than
  // the 168 that 384 threads get each: 128 x 56 + 256 x 224 = 64512 of the SM's 65536.
  PRODUCER_REGS = 56,
  CONSUMER_REGS = 224,
  LIST_MAX = 1024,
  TURN_BARRIER = 1 // named barriers 1 and 2: warpgroup 0's and 1's turn (0 is __syncthreads)
};

// Buffers in the K and V rings. V's tile j is read one step after K's (by P_j V_j), so its ring
// is the deeper; with fewer, the producer (which fills K_j, V_j, K_j+1, ... in order) could not
// report K_j until the consumers had freed a V buffer at the end of the step before, which would
// stall every step on the producer.
template <int D> __host__ __device__ constexpr int k_stages() {
  return D == 64 ? 3 : 2;
}
template <int D> __host__ __device__ constexpr int v_stages() {
  return D == 64 ? 4 : 3;
}
template <int D> constexpr size_t ws_smem_bytes() {
  return 1024 + (size_t)BM * D * 2 + (size_t)(k_stages<D>() + v_stages<D>()) * BN * D * 2 +
         2 * (size_t)BM * 4 + LIST_MAX * 4;
}

// Use u of a ring of `stages` buffers (uses counted from the block's first tile): its buffer, and
// the parity of the phase that use completes on the buffer's barriers.
template <int STAGES> __device__ __forceinline__ int ring_slot(int64_t u) {
  return (int)(u % STAGES);
}
template <int STAGES> __device__ __forceinline__ uint32_t ring_parity(int64_t u) {
  return (uint32_t)((u / STAGES) & 1);
}

// Sets this warpgroup's registers per thread (setmaxnreg, sm_90a): fewer (INC false) or more.
template <int REGS, bool INC> __device__ __forceinline__ void set_max_registers() {
#ifdef LT_HAVE_WGMMA
  if constexpr (INC)
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(REGS));
  else
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(REGS));
#endif
}

// Named barriers over the two consumer warpgroups (the producer never joins them).
__device__ __forceinline__ void turn_wait(int id) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"((int)CONSUMERS) : "memory");
}
__device__ __forceinline__ void turn_pass(int id) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"((int)CONSUMERS) : "memory");
}

// The rings and their barriers: full (the PRODUCERS threads arrive, each once its copies have
// landed) and empty (the 8 consumer warps arrive, each once its multiplies have read the tile).
template <int D> struct ws_rings {
  unsigned char *k, *v;
  uint64_t *k_full, *k_empty, *v_full, *v_empty;
  __device__ uint32_t k_at(int slot) const { return smem_u32(k + slot * BN * D * 2); }
  __device__ uint32_t v_at(int slot) const { return smem_u32(v + slot * BN * D * 2); }
};

// The producer warpgroup's pass over `n` tiles (list), the rings' uses numbered from `used`. Each
// thread copies its share of K_j, then of V_j, and reports a tile once its copies have landed and
// are fenced for the tensor cores (the async proxy): K_j after V_j is issued and V_j after K_j+1,
// so one copy is always in flight behind the one the lane waits for.
template <int D>
__device__ __forceinline__ void produce(const attn_params &p, const ws_rings<D> &r, const int *list,
                                        int n, int64_t used, int b, int kvh) {
  constexpr int KS = k_stages<D>(), VS = v_stages<D>();
  const int thread = (int)threadIdx.x - CONSUMERS;
  const int64_t head = ((int64_t)b * p.tk * p.hkv + kvh) * D, stride = (int64_t)p.hkv * D;
  for (int it = 0; it < n; it++) {
    const int64_t u = used + it, j0 = (int64_t)(list[it] & 0x7fffffff) * BN;
    if (u >= KS) mbar_wait(&r.k_empty[ring_slot<KS>(u)], ring_parity<KS>(u - KS));
    load_tile_swizzled<BN, D, PRODUCERS, 2>(r.k_at(ring_slot<KS>(u)), p.k + head, stride, j0, p.tk,
                                            thread);
    cp_async_commit();
    if (it > 0) { // V_{j-1} has landed
      cp_async_wait<1>();
      fence_proxy_async();
      mbar_arrive(&r.v_full[ring_slot<VS>(u - 1)]);
    }
    if (u >= VS) mbar_wait(&r.v_empty[ring_slot<VS>(u)], ring_parity<VS>(u - VS));
    load_tile_swizzled<BN, D, PRODUCERS, 2>(r.v_at(ring_slot<VS>(u)), p.v + head, stride, j0, p.tk,
                                            thread);
    cp_async_commit();
    cp_async_wait<1>(); // K_j has landed
    fence_proxy_async();
    mbar_arrive(&r.k_full[ring_slot<KS>(u)]);
  }
  if (n > 0) {
    cp_async_wait<0>();
    fence_proxy_async();
    mbar_arrive(&r.v_full[ring_slot<VS>(used + n - 1)]);
  }
}

// A consumer warpgroup's state across tiles: its output rows, running max and sum, the
// probabilities of the last tile (P_{j-1}, the A operand of its P V) and the factor the output
// takes before that P V is added.
template <int D> struct ws_rows {
  float o[D / 2], row_max[2], row_sum[2], factor[2];
  uint32_t pa[BN / 16][4];
};

// The scores of tile `entry` (keys from j0) become probabilities in s: the mask where the tile
// list marks the tile partial, then softmax_probs.
template <int D>
__device__ __forceinline__ void scores_to_probs(const attn_params &p, ws_rows<D> &w,
                                                float (&s)[BN / 2], int entry, int b,
                                                const int32_t *qpos_s, const int32_t *qdoc_s) {
  if (entry < 0) { // TILE_PARTIAL: pair by pair, the keys' positions read where they lie
    const int64_t j0 = (int64_t)(entry & 0x7fffffff) * BN, at = (int64_t)b * p.tk + j0;
    const int row = (int)(threadIdx.x >> 5) * 16 + (int)((threadIdx.x & 31) >> 2);
    mask_scores<BN / 8, false>(s, row, qpos_s, qdoc_s, p.k_pos + at,
                               p.mask.docs ? p.k_doc + at : nullptr, j0, p.tk, p.mask);
  }
  softmax_probs<BN / 8>(s, w.row_max, w.row_sum, p.scale_log2, w.factor);
}

// A consumer warpgroup's pass over `n` tiles (FlashAttention-3, Algorithm 2). On entry and exit
// no multiply is in flight and the output is scaled to the running max.
template <int D, bool PINGPONG>
__device__ __forceinline__ void consume(const attn_params &p, const ws_rings<D> &r, ws_rows<D> &w,
                                        const int *list, int n, int64_t used, uint32_t q_base,
                                        int b, const int32_t *qpos_s, const int32_t *qdoc_s) {
  constexpr int KS = k_stages<D>(), VS = v_stages<D>();
  const int wg = threadIdx.x >> 7, lane = threadIdx.x & 31;
  if (n == 0) return;
  float s[BN / 2];
  // Tile 0 alone: its scores, and nothing yet to add.
  if (PINGPONG && wg == 1) turn_pass(TURN_BARRIER); // warpgroup 0 goes first
  mbar_wait(&r.k_full[ring_slot<KS>(used)], ring_parity<KS>(used));
  fwd_scores_wgmma<D, BN, BM>(s, q_base, r.k_at(ring_slot<KS>(used)), wg);
  wgmma_wait<0>();
  wgmma_fence_operands(s);
  if (lane == 0) mbar_arrive(&r.k_empty[ring_slot<KS>(used)]);
  scores_to_probs<D>(p, w, s, list[0], b, qpos_s, qdoc_s);
  probs_fragments<BN>(w.pa, s);
  for (int it = 1; it < n; it++) {
    const int64_t u = used + it;
    mbar_wait(&r.k_full[ring_slot<KS>(u)], ring_parity<KS>(u));
    if constexpr (PINGPONG) turn_wait(TURN_BARRIER + wg);
    fwd_scores_wgmma<D, BN, BM>(s, q_base, r.k_at(ring_slot<KS>(u)), wg); // S_j
    rescale_output<D / 8>(w.o, w.factor); // to the max P_{j-1} was taken against
    mbar_wait(&r.v_full[ring_slot<VS>(u - 1)], ring_parity<VS>(u - 1));
    fwd_pv_wgmma<D, BN>(w.o, w.pa, r.v_at(ring_slot<VS>(u - 1))); // O += P_{j-1} V_{j-1}
    if constexpr (PINGPONG) turn_pass(TURN_BARRIER + (wg ^ 1));
    wgmma_wait<1>(); // S_j; P V still multiplying through the softmax
    wgmma_fence_operands(s);
    if (lane == 0) mbar_arrive(&r.k_empty[ring_slot<KS>(u)]);
    scores_to_probs<D>(p, w, s, list[it], b, qpos_s, qdoc_s);
    wgmma_wait<0>();
    wgmma_keep_fragments(w.pa);
    wgmma_fence_operands(w.o);
    if (lane == 0) mbar_arrive(&r.v_empty[ring_slot<VS>(u - 1)]);
    probs_fragments<BN>(w.pa, s);
  }
  // The last tile's P V.
  const int64_t last = used + n - 1;
  rescale_output<D / 8>(w.o, w.factor);
  mbar_wait(&r.v_full[ring_slot<VS>(last)], ring_parity<VS>(last));
  fwd_pv_wgmma<D, BN>(w.o, w.pa, r.v_at(ring_slot<VS>(last)));
  wgmma_wait<0>();
  wgmma_keep_fragments(w.pa);
  wgmma_fence_operands(w.o);
  if (lane == 0) mbar_arrive(&r.v_empty[ring_slot<VS>(last)]);
  // Warpgroup 1's first pass is matched by warpgroup 0's last wait: both barriers end the pass
  // with every arrival consumed.
  if (PINGPONG && wg == 0) turn_wait(TURN_BARRIER);
}

// q, o: (B, Tq, Hq, D) bf16; k, v: (B, Tk, Hkv, D) bf16; lse: (B, Hq, Tq) f32;
// a 1-D grid of query tiles of BM x Hq x B (block_work_of), THREADS threads: warps 0-7 the
// consumer warpgroups (rows 16 warp .. 16 warp + 15 of the block's BM), warps 8-11 the
// producers.
template <int D, bool PINGPONG>
__global__ void __launch_bounds__(THREADS, 1) attn_fwd_ws_kernel(const attn_params p) {
  constexpr int KS = k_stages<D>(), VS = v_stages<D>();
  extern __shared__ unsigned char smem_raw[];
  // wgmma's swizzled tiles start at 1024-byte boundaries.
  unsigned char *smem = smem_aligned_1024(smem_raw);
  unsigned char *q_s = smem;                            // (BM, D)
  unsigned char *k_s = q_s + BM * D * 2;                // KS x (BN, D)
  unsigned char *v_s = k_s + KS * BN * D * 2;           // VS x (BN, D)
  int32_t *qpos_s = (int32_t *)(v_s + VS * BN * D * 2); // BM
  int32_t *qdoc_s = qpos_s + BM;                        // BM
  int *list = qdoc_s + BM;                              // LIST_MAX
  __shared__ int warp_counts[THREADS / 32];
  __shared__ uint64_t k_full[KS], k_empty[KS], v_full[VS], v_empty[VS];
  const ws_rings<D> rings = {k_s, v_s, k_full, k_empty, v_full, v_empty};

  const int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2;
  const bool producer = warp >= CONSUMER_WARPS;
  const block_work work = block_work_of(p.n_q_tiles, p.hq, p.head_groups);
  const int qt = p.n_q_tiles - 1 - work.rank; // longest causal rows first
  const int h = work.h, b = work.b, kvh = h / (p.hq / p.hkv);
  const int64_t i0 = (int64_t)qt * BM;
  if (threadIdx.x == 0) {
    for (int i = 0; i < KS; i++)
      mbar_init(&k_full[i], PRODUCERS), mbar_init(&k_empty[i], CONSUMER_WARPS);
    for (int i = 0; i < VS; i++)
      mbar_init(&v_full[i], PRODUCERS), mbar_init(&v_empty[i], CONSUMER_WARPS);
  }
  if (!producer) {
    const bf16 *q_head = p.q + ((int64_t)b * p.tq * p.hq + h) * D;
    load_rows<true, BM, D, CONSUMERS>(q_s, q_head, (int64_t)p.hq * D, i0, p.tq);
    cp_async_commit();
    // Positions and documents of the block's queries, read only where a tile is masked.
    for (int r = threadIdx.x; r < BM; r += CONSUMERS) {
      const bool valid = i0 + r < p.tq;
      qpos_s[r] = valid ? p.q_pos[(int64_t)b * p.tq + i0 + r] : INT_MIN;
      qdoc_s[r] = valid && p.mask.docs ? p.q_doc[(int64_t)b * p.tq + i0 + r] : 0;
    }
    cp_async_wait<0>();
    fence_proxy_async(); // cp.async wrote what the tensor cores read
  }
  __syncthreads(); // the barriers initialised, Q and the positions in place

  // Each role walks the list passes on its own path (so that ptxas gives each its registers);
  // build_tile_list's barriers meet across the two.
  const auto each_pass = [&](auto &&walk) {
    int64_t used = 0; // tiles of earlier passes: the rings run on across passes
    for (int first = 0; first < p.n_k_tiles; first += LIST_MAX) {
      const int count = p.n_k_tiles - first < LIST_MAX ? p.n_k_tiles - first : LIST_MAX;
      const int n = build_tile_list<THREADS>(
          list, warp_counts, first, count, [](int w) { return w; },
          [&](int t) { return classify_key_tile<BN, false>(p, b, qt, t); });
      walk(n, used);
      used += n;
    }
  };
  if (producer) {
    set_max_registers<PRODUCER_REGS, false>();
    each_pass([&](int n, int64_t used) { produce<D>(p, rings, list, n, used, b, kvh); });
  } else {
    set_max_registers<CONSUMER_REGS, true>();
    ws_rows<D> rows = {};
    rows.row_max[0] = rows.row_max[1] = -INFINITY;
    each_pass([&](int n, int64_t used) {
      consume<D, PINGPONG>(p, rings, rows, list, n, used, smem_u32(q_s), b, qpos_s, qdoc_s);
    });
    write_output<D>(p, rows.o, rows.row_max, rows.row_sum, b, h, i0, warp * 16 + g);
  }
}

template <int D, bool PINGPONG>
static int launch_fwd_ws(lt_cuda_state *st, const attn_params &p, int64_t b) {
  constexpr size_t smem = ws_smem_bytes<D>();
  CUDA_TRY(cudaFuncSetAttribute(attn_fwd_ws_kernel<D, PINGPONG>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
           "attn_fwd: raising shared memory to %zu bytes", smem);
  attn_params pg = p;
  pg.head_groups = lt_cuda_attn_head_groups(p.n_q_tiles, b * p.hq, st->n_sms);
  attn_fwd_ws_kernel<D, PINGPONG>
      <<<attn_grid(p.n_q_tiles, b * p.hq), THREADS, smem, st->stream>>>(pg);
  return LT_OK;
}

int lt_cuda_attn_fwd_ws(lt_cuda_state *st, const attn_params &p, int64_t b, int d, bool pingpong) {
  if (d == 64)
    return pingpong ? launch_fwd_ws<64, true>(st, p, b) : launch_fwd_ws<64, false>(st, p, b);
  return pingpong ? launch_fwd_ws<128, true>(st, p, b) : launch_fwd_ws<128, false>(st, p, b);
}
