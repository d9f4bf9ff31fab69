// Flash attention forward on the tensor cores (FlashAttention-2, Dao 2023, Algorithm 1): a block
// owns BM = 128 query rows of one head (16 per warp) and streams the key/value tiles its mask lets
// through, keeping the running row max and sum in registers; K and V tiles land in a ring of
// buffers (by cp.async, or TMA), so the next tiles load while this one is multiplied. Two kernels
// share that structure and the per-tile math (attention_common.cuh):
// - Hopper (sm_90a): each warpgroup multiplies with wgmma, straight from swizzled shared memory
//   (S = Q K^T) and from the probability registers (O += P V), as FlashAttention-3 does; dense
//   attention also overlaps each tile's softmax with the last tile's P V (PIPE);
// - elsewhere, or with LT_ATTENTION_KERNELS=portable: mma.sync m16n8k16 on ldmatrix fragments.
// Both match lt_cpu_attn_fwd, including (o, lse) over partial key ranges and lse = -inf, o = 0 for
// a query that sees no key or whose head is gated off (MoH), and MoH's weighted output gate * o
// written beside o where the spec asks for it (write_output). A block walks only the key tiles its
// query tile can reach (attention_mask.cuh: a sliding window's band, the sinks), so sparse
// patterns cost time in proportion to their visible tiles. Dense attention (no pattern, gates or
// tile count) runs an instantiation without any of that: every key tile, classified by the list.
// TMA: the pipelined loop's instantiation whose K and V tiles come by TMA (launch_fwd picks it
// where the tensor maps can be made), with its own loop (tma_step: two tiles' P V in flight and
// the output rescaled only when the row max rises far; see the kernel); the other copies them
// with cp.async.
// LT_ATTN_FWD picks the variant (fwd_variant_of_env): v1, this kernel, or for dense attention on
// Hopper v2 / v3, attention_fwd_ws.cu's persistent warp-specialized one (FlashAttention-3's
// pipelining), which runs unasked at d = 64 from T = 8192 (FWD_AUTO).
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>

#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/attention_fwd_tile.cuh"
#include "kernels/cuda/attention_fwd_ws.cuh"
#include "kernels/cuda/attention_tma.cuh"

enum { THREADS = 256, WARPS = 8, BM = 128, LIST_MAX = 1024 };

// Key rows per tile. mma.sync keeps scores and output under 255 registers. With wgmma, n = 64: at
// d = 64 it fits two blocks on an SM (measured 14% faster than n = 128 at one block), and at
// d = 128 it leaves the pipelined loop room for its extra tile (171 registers; H100, B=1 H=16:
// forward 6% faster at T=16384 than the old loop on n = 128, 4% at 65536). Sparse specs at
// d = 128 keep n = 128 on the old loop.
template <int D, bool HOPPER, bool SPARSE> __host__ __device__ constexpr int fwd_bn() {
  return HOPPER ? (D == 128 && SPARSE ? 128 : 64) : (D == 64 ? 128 : 64);
}
template <int D, bool HOPPER> __host__ __device__ constexpr int fwd_min_blocks() {
  return HOPPER && D == 64 ? 2 : 1;
}

template <int D, bool HOPPER> __host__ __device__ constexpr int fwd_tile_bytes(int rows) {
  return HOPPER ? rows * D * 2 : rows * tile_row_bytes<D>();
}

// Dense attention on wgmma runs the pipelined tile loop (the kernel's PIPE branch): at d = 64
// measured 3-4% faster than the loop below it on an H100 (B=8 T=4096 H=12; B=1 T=16384 H=16).
// Sparse specs stay on that loop, which has their registers to spare.
template <int D, bool HOPPER, bool SPARSE> __host__ __device__ constexpr bool fwd_pipelined() {
  return HOPPER && !SPARSE;
}

// K/V tile buffers. With three (where they fit), a tile's P V multiply (wgmma) can still run while
// the next tile's scores are computed; the pipelined loop keeps four, five with TMA, whose
// loop has two P V in flight (see AHEAD in the kernel).
template <int D, bool HOPPER, bool SPARSE, bool TMA>
__host__ __device__ constexpr int fwd_stages() {
  return TMA ? 5 : fwd_pipelined<D, HOPPER, SPARSE>() ? 4 : HOPPER && D == 64 ? 3 : 2;
}

template <int D, bool HOPPER, bool SPARSE, bool TMA> constexpr size_t fwd_smem_bytes() {
  constexpr int BN = fwd_bn<D, HOPPER, SPARSE>(), STAGES = fwd_stages<D, HOPPER, SPARSE, TMA>();
  return 1024 + (size_t)fwd_tile_bytes<D, HOPPER>(BM) +
         2 * STAGES * (size_t)fwd_tile_bytes<D, HOPPER>(BN) + 2 * STAGES * (size_t)BN * 4 +
         2 * (size_t)BM * 4 + LIST_MAX * 4;
}

// S = Q K^T for the warp's 16 rows on mma.sync: Q and K from padded tiles by ldmatrix.
template <int D, int NT>
__device__ __forceinline__ void fwd_scores_mma(float (&s)[NT * 4], uint32_t q_base, uint32_t k_base,
                                               int warp, int lane) {
#pragma unroll
  for (int e = 0; e < NT * 4; e++) s[e] = 0.0f;
#pragma unroll
  for (int ks = 0; ks < D / 16; ks++) {
    uint32_t a[4];
    ldmatrix_x4(a, tile_addr<D>(q_base, warp * 16 + (lane & 15), ks * 2 + (lane >> 4)));
#pragma unroll
    for (int np = 0; np < NT / 2; np++) {
      uint32_t kb[4];
      ldmatrix_x4(kb, tile_addr<D>(k_base, np * 16 + (lane & 7) + ((lane >> 4) << 3),
                                   ks * 2 + ((lane >> 3) & 1)));
      mma_bf16(frag4(s, 2 * np), a, kb[0], kb[1]);
      mma_bf16(frag4(s, 2 * np + 1), a, kb[2], kb[3]);
    }
  }
}

// O += P V on mma.sync: P from the score registers, V transposed from its padded tile.
template <int D, int NT>
__device__ __forceinline__ void fwd_pv_mma(float (&o)[D / 2], const float (&s)[NT * 4],
                                           uint32_t v_base, int lane) {
#pragma unroll
  for (int kk = 0; kk < NT / 2; kk++) {
    uint32_t a[4];
    probs_fragment<NT>(a, s, kk);
    mma_tile_rows<D>(o, a, v_base, kk, lane);
  }
}

// q, o: (B, Tq, Hq, D) bf16; k, v: (B, Tk, Hkv, D) bf16; lse: (B, Hq, Tq) f32;
// a 1-D grid of query tiles x Hq x B (block_work_of), 256 threads. SPARSE: the instantiation
// for sparse patterns, head gates and tile counts (attn_params.sparse_kernel); the dense one
// walks every key tile as the tile list classifies them, with none of their checks.
template <int D, bool HOPPER, bool SPARSE, bool TMA>
__global__ void __launch_bounds__(THREADS, fwd_min_blocks<D, HOPPER>())
    attn_fwd_kernel(const attn_params p, const __grid_constant__ attn_tma_maps tm) {
  constexpr int BN = fwd_bn<D, HOPPER, SPARSE>(), NT = BN / 8, DT = D / 8;
  constexpr bool PIPE = fwd_pipelined<D, HOPPER, SPARSE>();
  static_assert(!TMA || PIPE, "TMA copies are the pipelined loop's");
  constexpr int STAGES = fwd_stages<D, HOPPER, SPARSE, TMA>();
  constexpr bool OVERLAP = HOPPER && STAGES == 3; // P V of one tile beside the next tile's S
  constexpr int Q_BYTES = fwd_tile_bytes<D, HOPPER>(BM), KV_BYTES = fwd_tile_bytes<D, HOPPER>(BN);
  extern __shared__ unsigned char smem_raw[];
  // wgmma's swizzled tiles start at 1024-byte boundaries.
  unsigned char *smem = smem_aligned_1024(smem_raw);
  unsigned char *q_s = smem, *k_s = q_s + Q_BYTES;        // STAGES buffers of K
  unsigned char *v_s = k_s + STAGES * KV_BYTES;           // and of V
  int32_t *kpos_s = (int32_t *)(v_s + STAGES * KV_BYTES); // STAGES x BN
  int32_t *kdoc_s = kpos_s + STAGES * BN;                 // STAGES x BN
  int32_t *qpos_s = kdoc_s + STAGES * BN;                 // BM
  int32_t *qdoc_s = qpos_s + BM;                          // BM
  int *list = qdoc_s + BM;                                // LIST_MAX
  __shared__ int warp_counts[WARPS];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2;
  const block_work work = block_work_of(p.n_q_tiles, p.hq, p.head_groups);
  const int qt = p.n_q_tiles - 1 - work.rank; // longest causal rows first
  const int h = work.h, b = work.b, kvh = h / (p.hq / p.hkv);
  const int64_t i0 = (int64_t)qt * BM;
  const bool docs = p.mask.docs;
  const uint32_t q_base = smem_u32(q_s);

  const bf16 *q_head = p.q + ((int64_t)b * p.tq * p.hq + h) * D;
  load_rows<HOPPER, BM, D, THREADS>(q_s, q_head, (int64_t)p.hq * D, i0, p.tq);
  cp_async_commit();
  // Positions and documents of the block's queries, read only where a tile is masked pair by pair.
  bool live = false; // some query of the block is computed: not past the end, not gated off
  for (int r = threadIdx.x; r < BM; r += THREADS) {
    const bool valid = i0 + r < p.tq;
    qpos_s[r] = valid ? p.q_pos[(int64_t)b * p.tq + i0 + r] : INT_MIN;
    qdoc_s[r] = valid && docs ? p.q_doc[(int64_t)b * p.tq + i0 + r] : 0;
    if constexpr (SPARSE)
      live |= valid && (!p.gates || p.gates[((int64_t)b * p.tq + i0 + r) * p.hq + h] != 0.0f);
  }
  // The key tiles the block walks: ranges[0], then ranges[1], as one sequence of `walk` tiles;
  // the dense kernel walks them all, as ranges[0].
  int2 ranges[2] = {make_int2(0, p.n_k_tiles), make_int2(0, 0)};
  bool off[2] = {false, false}; // the thread's two rows gated off
  if constexpr (SPARSE) {
    // Warps 0-3 search for the bounds at once, and thread 0 makes the ranges of them. They reach
    // the block through shared memory as they are: loop bounds computed from values the compiler
    // deems divergent make it serialize the wgmma loop (ptxas C7518).
    __shared__ int bounds_s[5]; // 4 bounds, then the number of intervals
    const bool any_live = __syncthreads_or(live);
    {
      longlong2 iv[2];
      const int count = any_live ? key_intervals(p.mask, p.q_keys[(int64_t)b * p.n_q_tiles + qt],
                                                 p.k_unordered[b] == 0, iv)
                                 : 0;
      if (warp < 2 * count)
        search_bound(p.k_keys + (int64_t)b * p.n_k_tiles, p.n_k_tiles, iv, warp, bounds_s);
      if (threadIdx.x == 0) bounds_s[4] = count;
    }
    __syncthreads();
    __shared__ int2 ranges_s[2];
    if (threadIdx.x == 0) {
      int2 found[2];
      ranges_of(bounds_s, bounds_s[4], p.n_k_tiles, found);
      ranges_s[0] = found[0], ranges_s[1] = found[1];
    }
    __syncthreads();
    ranges[0] = ranges_s[0], ranges[1] = ranges_s[1];
    gated_off(p, off, b, h, i0, warp * 16 + g);
  }
  const int first_len = ranges[0].y - ranges[0].x, walk = first_len + ranges[1].y - ranges[1].x;
  float o[DT * 4], row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
#pragma unroll
  for (int e = 0; e < DT * 4; e++) o[e] = 0.0f;

  // TMA (PIPE only): thread 0 has TMA copy each K/V tile, which lands on kv_full[buffer] (one
  // phase per use of the buffer: `phases` holds the parity each buffer waits for next); otherwise
  // every thread copies its share with cp.async. Either way a block-wide barrier per tile says
  // that the buffer the next copy takes is free (and for cp.async, that the tile has landed).
  // (Per-buffer "empty" barriers in its place, which let the warpgroups drift apart, measured 9%
  // slower at B=8 T=4096 H=12 d=64 on an H100: the warpgroup ahead then waited on copies that
  // thread 0, behind, had issued late.)
  __shared__ uint64_t kv_full[PIPE ? STAGES : 1];
  uint32_t phases = 0;
  if (TMA && threadIdx.x == 0) {
    for (int i = 0; i < STAGES; i++) mbar_init(&kv_full[i], 1);
    mbar_init_fence(); // the tile list's barriers come before the first copy
  }
  // Keys' positions and documents are read only where a tile is masked pair by pair: from the
  // copies below, or with TMA straight from global memory (mask_scores).
  auto issue_tile = [&](int entry, int buf) {
    const int64_t j0 = (int64_t)(entry & 0x7fffffff) * BN, kv_stride = (int64_t)p.hkv * D;
    const int64_t head = ((int64_t)b * p.tk * p.hkv + kvh) * D;
    load_tile_pair<HOPPER, BN, D, THREADS>(TMA, tm, &kv_full[PIPE ? buf : 0], k_s + buf * KV_BYTES,
                                           v_s + buf * KV_BYTES, p.k + head, p.v + head, kvh, b, j0,
                                           kv_stride, p.tk);
    if constexpr (TMA) return;
    if (entry < 0)
      for (int j = threadIdx.x; j < BN; j += THREADS) {
        const bool valid = j0 + j < p.tk;
        const int64_t at = (int64_t)b * p.tk + (valid ? j0 + j : 0);
        cp_async4(kpos_s + buf * BN + j, p.k_pos + at, valid);
        if (docs) cp_async4(kdoc_s + buf * BN + j, p.k_doc + at, valid);
      }
    cp_async_commit(); // a group per tile, empty where TMA copies a full one
  };

  // wgmma: the probabilities, read by the P V multiply in flight (the TMA loop's two sets below;
  // the other loops' one, pa, is the first of them).
  uint32_t pp[TMA ? 2 : 1][BN / 16][4];
  uint32_t(&pa)[BN / 16][4] = pp[0];
  bool pv_in_flight = false;
  // PIPE: FlashAttention-3's intra-warpgroup pipelining (Shah et al. 2024, Algorithm 2): a tile's
  // S is issued, then the last tile's P V behind it, and the softmax of this tile runs while P V
  // multiplies. The last tile's probabilities wait in `pa` for their P V, from V buffer pv_buf
  // (-1: no tile yet). Before the first tile pa holds zeros, and its P V (of a finite V: the first
  // tile's) adds none: a branch-free loop, as ptxas serializes the wgmmas of a loop that branches
  // around one. Without TMA the output is rescaled once P V is done, every tile; ptxas schedules
  // that wait as early as it may, at the start of the softmax (it places a wgmma wait like any
  // other instruction), so P V overlaps little but the mask. With TMA (tma_step below) the
  // probabilities alternate between two sets of registers, pp[0] and pp[1], so that no tile has
  // to wait for the last one's P V: its one wait (for S) also covers P V of the tile before that,
  // and the output is rescaled, after a wait for the last P V, only in the tiles whose max rises
  // past the slack of softmax_probs_lazy (most tiles past the first few need none). H100, against
  // the single set with a rescale every tile: forward 4% faster at B=8 T=4096 H=12 d=64, 5% at
  // B=1 T=16384 H=16 d=64, 9% at d=128 (T=4096 and 16384).
  int pv_buf = -1;
  if constexpr (PIPE) {
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) {
#pragma unroll
      for (int par = 0; par < (TMA ? 2 : 1); par++)
        pp[par][kk][0] = pp[par][kk][1] = pp[par][kk][2] = pp[par][kk][3] = 0u;
    }
  }
  // Copies run AHEAD tiles ahead, each issued once every warp is past the tile whose buffer it
  // takes (the block-wide barrier of each tile): with TMA, five buffers hold the tile whose S is
  // computed, the last two (P V in flight) and two landing; PIPE's four, the tile whose S is
  // computed, the last one (its V in P V) and two landing; OVERLAP's three, the last one's P V
  // until the wait for this S; the others' two, this tile and the next.
  constexpr int AHEAD = PIPE ? 2 : 1;
  int buf = 0;           // the ring of buffers runs on across list passes
  long long visited = 0; // tiles computed
  int steps = 0;         // TMA: tiles computed, whose parity picks the set of P registers
  for (int first = 0; first < walk; first += LIST_MAX) {
    const int count = walk - first < LIST_MAX ? walk - first : LIST_MAX;
    const auto tile_at = [&](int w) {
      if constexpr (SPARSE)
        return w < first_len ? ranges[0].x + w : ranges[1].x + (w - first_len);
      else
        return w;
    };
    const int n = build_tile_list<THREADS>(list, warp_counts, first, count, tile_at, [&](int t) {
      return classify_key_tile<BN, SPARSE>(p, b, qt, t);
    });
    if constexpr (SPARSE) visited += n;
    for (int a = 0; a < AHEAD && a < n; a++) issue_tile(list[a], (buf + a) % STAGES);
    if constexpr (TMA) {
      if (first == 0) { // Q, copied by every thread, before the first tile's S reads it
        cp_async_wait<0>();
        fence_proxy_async();
        __syncthreads();
      }
      // One tile, its probabilities into pp[PAR], the last tile's P V from pp[PAR ^ 1].
      const auto tma_step = [&](auto parity, int it) {
        constexpr int PAR = decltype(parity)::value;
        const int entry = list[it];
        mbar_wait(&kv_full[buf], (phases >> buf) & 1u), phases ^= 1u << buf;
        // Every warp is past the last tile's wait, so P V three tiles back is done, and its
        // buffer free for the copy AHEAD tiles on.
        __syncthreads();
        if (it + AHEAD < n) issue_tile(list[it + AHEAD], (buf + AHEAD) % STAGES);
        const uint32_t v_base = smem_u32(v_s + buf * KV_BYTES);
        const int64_t j0 = (int64_t)(entry & 0x7fffffff) * BN;
        float s[NT * 4], factor[2];
        fwd_scores_wgmma<D, BN, BM>(s, q_base, smem_u32(k_s + buf * KV_BYTES), warp >> 2);
        fwd_pv_wgmma<D, BN>(o, pp[PAR ^ 1],
                            pv_buf < 0 ? v_base : smem_u32(v_s + pv_buf * KV_BYTES));
        wgmma_wait<1>(); // S, and P V of the tile before the last (which read pp[PAR])
        wgmma_keep_fragments(pp[PAR]);
        wgmma_fence_operands(s);
        if (entry < 0) { // TILE_PARTIAL: the mask pair by pair, keys' positions from memory
          const int64_t at = (int64_t)b * p.tk + j0;
          mask_scores<NT, SPARSE>(s, warp * 16 + g, qpos_s, qdoc_s, p.k_pos + at,
                                  docs ? p.k_doc + at : nullptr, j0, p.tk, p.mask);
        }
        // The branch is the warp's (a vote), so it leaves the multiplies in flight alone.
        if (softmax_probs_lazy<NT>(s, row_max, row_sum, p.scale_log2, factor)) {
          wgmma_wait<0>(); // the last tile's P V, which adds to the output
          wgmma_keep_fragments(pp[PAR ^ 1]);
          wgmma_fence_operands(o);
          rescale_output<DT>(o, factor);
          wgmma_fence_operands(o);
        }
        probs_fragments<BN>(pp[PAR], s);
        pv_buf = buf;
        buf = buf + 1 == STAGES ? 0 : buf + 1;
      };
      for (int it = 0; it < n; it++, steps++) {
        if (steps & 1)
          tma_step(std::integral_constant<int, 1>(), it);
        else
          tma_step(std::integral_constant<int, 0>(), it);
      }
      // Nothing in flight past a pass: ptxas would otherwise wait for the multiplies on a path
      // of its own past the loop, and serialize them all (C7518).
      wgmma_wait<0>();
      wgmma_keep_fragments(pp[0]);
      wgmma_keep_fragments(pp[1]);
      wgmma_fence_operands(o);
    } else {
      for (int it = 0; it < n; it++) {
        const int entry = list[it];
        wait_for_tile<HOPPER>(it + 1 < n && AHEAD > 1); // this tile; the next may stay in flight
        if (it + AHEAD < n) issue_tile(list[it + AHEAD], (buf + AHEAD) % STAGES);
        const uint32_t k_base = smem_u32(k_s + buf * KV_BYTES),
                       v_base = smem_u32(v_s + buf * KV_BYTES);
        const int64_t j0 = (int64_t)(entry & 0x7fffffff) * BN;

        float s[NT * 4];
        if constexpr (PIPE) {
          float factor[2];
          fwd_scores_wgmma<D, BN, BM>(s, q_base, k_base, warp >> 2);
          fwd_pv_wgmma<D, BN>(o, pa, pv_buf < 0 ? v_base : smem_u32(v_s + pv_buf * KV_BYTES));
          wgmma_wait<1>(); // S; P V still multiplying
          wgmma_fence_operands(s);
          if (entry < 0) // TILE_PARTIAL: the mask pair by pair
            mask_scores<NT, SPARSE>(s, warp * 16 + g, qpos_s, qdoc_s, kpos_s + buf * BN,
                                    kdoc_s + buf * BN, j0, p.tk, p.mask);
          softmax_probs<NT>(s, row_max, row_sum, p.scale_log2, factor);
          wgmma_wait<0>();
          wgmma_keep_fragments(pa);
          wgmma_fence_operands(o);
          rescale_output<DT>(o, factor);
          probs_fragments<BN>(pa, s);
          pv_buf = buf;
        } else {
          if constexpr (HOPPER) {
            fwd_scores_wgmma<D, BN, BM>(s, q_base, k_base, warp >> 2);
            wgmma_wait<0>(); // this tile's S, and the last tile's P V if still in flight
            if (pv_in_flight) wgmma_keep_fragments(pa);
            wgmma_fence_operands(o);
            wgmma_fence_operands(s);
          } else {
            fwd_scores_mma<D, NT>(s, q_base, k_base, warp, lane);
          }
          if (entry < 0) // TILE_PARTIAL: the mask pair by pair
            mask_scores<NT, SPARSE>(s, warp * 16 + g, qpos_s, qdoc_s, kpos_s + buf * BN,
                                    kdoc_s + buf * BN, j0, p.tk, p.mask);
          online_softmax<NT, DT>(s, o, row_max, row_sum, p.scale_log2);
          if constexpr (HOPPER) {
            probs_fragments<BN>(pa, s);
            fwd_pv_wgmma<D, BN>(o, pa, v_base);
            pv_in_flight = true;
            if constexpr (!OVERLAP) {
              wgmma_wait<0>();
              wgmma_keep_fragments(pa);
              wgmma_fence_operands(o);
              pv_in_flight = false;
            }
          } else {
            fwd_pv_mma<D, NT>(o, s, v_base, lane);
          }
        }
        buf = buf + 1 == STAGES ? 0 : buf + 1;
      }
    }
  }
  if (PIPE && pv_buf >= 0) { // the last tile's P V
    const uint32_t v_last = smem_u32(v_s + pv_buf * KV_BYTES);
    if (!TMA || (steps & 1)) // with TMA the last tile's probabilities are in pp[(steps - 1) & 1]
      fwd_pv_wgmma<D, BN>(o, pp[0], v_last);
    else
      fwd_pv_wgmma<D, BN>(o, pp[TMA ? 1 : 0], v_last);
    pv_in_flight = true;
  }
  if (pv_in_flight) {
    wgmma_wait<0>();
    wgmma_keep_fragments(pp[0]);
    wgmma_keep_fragments(pp[TMA ? 1 : 0]);
    wgmma_fence_operands(o);
  }
  if constexpr (SPARSE) {
#pragma unroll
    for (int hf = 0; hf < 2; hf++) row_sum[hf] = off[hf] ? 0.0f : row_sum[hf];
  }
  write_output<D>(p, o, row_max, row_sum, b, h, i0, warp * 16 + g);
  if (SPARSE && p.visited && threadIdx.x == 0) atomicAdd(p.visited, (unsigned long long)visited);
}

// Whether this build's attention kernels were compiled with wgmma (sm_90a).
__global__ void wgmma_probe_kernel(int *out) {
#ifdef LT_HAVE_WGMMA
  *out = 1;
#else
  *out = 0;
#endif
}

int lt_cuda_attn_pick_kernels(lt_cuda_state *st) {
  int *flag = (int *)st->scratch, built = 0, major = 0;
  wgmma_probe_kernel<<<1, 1, 0, st->stream>>>(flag);
  CUDA_TRY(cudaMemcpyAsync(&built, flag, sizeof built, cudaMemcpyDeviceToHost, st->stream),
           "probing the attention kernels");
  CUDA_TRY(cudaStreamSynchronize(st->stream), "probing the attention kernels");
  CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, st->device),
           "reading the compute capability of GPU %d", st->device);
  const char *choice = getenv("LT_ATTENTION_KERNELS");
  st->attn_wgmma = built && major == 9 && !(choice && strcmp(choice, "portable") == 0);
  return LT_OK;
}

template <int D, bool HOPPER, bool SPARSE, bool TMA>
static int launch_fwd(lt_cuda_state *st, const attn_params &p, int64_t b, const attn_tma_maps &tm) {
  constexpr size_t smem = fwd_smem_bytes<D, HOPPER, SPARSE, TMA>();
  CUDA_TRY(cudaFuncSetAttribute(attn_fwd_kernel<D, HOPPER, SPARSE, TMA>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
           "attn_fwd: raising shared memory to %zu bytes", smem);
  attn_params pg = p;
  pg.head_groups =
      lt_cuda_attn_head_groups(p.n_q_tiles, b * p.hq, st->n_sms * fwd_min_blocks<D, HOPPER>());
  attn_fwd_kernel<D, HOPPER, SPARSE, TMA>
      <<<attn_grid(p.n_q_tiles, b * p.hq), THREADS, smem, st->stream>>>(pg, tm);
  return LT_OK;
}

template <int D, bool HOPPER, bool SPARSE>
static int launch_fwd(lt_cuda_state *st, const attn_params &p, int64_t b) {
  // The pipelined loop's K and V tiles come by TMA where the maps can be made (H100, B=8 T=4096
  // H=12: 7% faster than its cp.async copies; B=1 T=16384 and 65536 H=16: 8%).
  attn_tma_maps tm;
  memset(&tm, 0, sizeof tm);
  if constexpr (fwd_pipelined<D, HOPPER, SPARSE>()) {
    constexpr int BN = fwd_bn<D, HOPPER, SPARSE>();
    if (attn_tma_map_rows(&tm.rows[0], p.k, LT_BF16, b, p.tk, p.hkv, D, BN, 64) &&
        attn_tma_map_rows(&tm.rows[1], p.v, LT_BF16, b, p.tk, p.hkv, D, BN, 64))
      return launch_fwd<D, HOPPER, SPARSE, true>(st, p, b, tm);
  }
  return launch_fwd<D, HOPPER, SPARSE, false>(st, p, b, tm);
}

template <int D, bool HOPPER>
static int launch_fwd(lt_cuda_state *st, const attn_params &p, int64_t b) {
  return p.sparse_kernel ? launch_fwd<D, HOPPER, true>(st, p, b)
                         : launch_fwd<D, HOPPER, false>(st, p, b);
}

// The forward's variants: v1 (FWD_BASE) is attn_fwd_kernel above; v2 (FWD_WS) and v3
// (FWD_WS_PINGPONG, v2 with the warpgroups taking turns) are attention_fwd_ws.cu's persistent,
// warp-specialized kernel, which Hopper runs for dense specs (others stay on v1). Without
// LT_ATTN_FWD (FWD_AUTO), dense specs at d = 64 with at least FWD_WS_MIN_T queries run v2, the
// rest v1. H100, forward at B=2 H=12 (the 135M model's attention): T=16384 v2 1.80 ms, v1 2.06;
// T=4096 (B=8) v2 0.626, v1 0.602, where v2's last query tile of 192 rows is a third full and its
// items are short. At d = 128 v2's three warpgroups have too few registers (ptxas serializes
// their multiplies), so v1 stays there.
enum { FWD_AUTO = -1, FWD_BASE = 1, FWD_WS = 2, FWD_WS_PINGPONG = 3, FWD_WS_MIN_T = 8192 };

// LT_ATTN_FWD: which variant runs (v1, v2 or v3; unset, FWD_AUTO; see above).
static int fwd_variant_of_env(int *variant) {
  return lt_cuda_attn_variant("LT_ATTN_FWD", "attention forward", FWD_AUTO, FWD_WS_PINGPONG,
                              variant);
}

int lt_cuda_attn_fwd(lt_ctx *ctx, lt_tensor o, lt_tensor lse, lt_tensor q, lt_tensor k, lt_tensor v,
                     const lt_attn_spec *spec) {
  lt_cuda_state *st = cuda_state(ctx);
  const int d = (int)q.shape[3];
  const bool hopper = st->attn_wgmma;
  if (o.dtype != LT_BF16) return lt_cuda_unsupported("attn_fwd", "o must be bf16", o, q);
  if (spec->gated_out.data && spec->gated_out.device != LT_CUDA)
    return lt_cuda_unsupported("attn_fwd", "gated_out must be on the GPU", spec->gated_out, o);
  int variant;
  LT_TRY(fwd_variant_of_env(&variant)); // a bad name is an error on every GPU
  // A gated output comes with head gates (dispatch), which keep the spec on v1, as do tensors TMA
  // cannot describe.
  fwd_ws_maps tm;
  const bool want_ws =
      variant == FWD_AUTO ? d == 64 && q.shape[1] >= FWD_WS_MIN_T : variant != FWD_BASE;
  const bool ws = hopper && want_ws && !attn_spec_needs_sparse_kernel(spec) &&
                  lt_cuda_attn_fwd_ws_maps(&tm, q, k, v);
  const int k_tile = ws        ? FWD_WS_BN
                     : d == 64 ? (hopper ? fwd_bn<64, true, false>() : fwd_bn<64, false, false>())
                     : hopper  ? (attn_spec_needs_sparse_kernel(spec) ? fwd_bn<128, true, true>()
                                                                      : fwd_bn<128, true, false>())
                               : fwd_bn<128, false, false>();
  attn_params p;
  LT_TRY(lt_cuda_attn_setup(ctx, &p, q, k, v, spec, ws ? (int)FWD_WS_BM : (int)BM, k_tile,
                            "attn_fwd"));
  p.o = (bf16 *)o.data, p.lse = (float *)lse.data;
  p.gated_o = (bf16 *)spec->gated_out.data;
  if (p.tq == 0) return LT_OK;
  const int64_t b = q.shape[0];
  int rc;
  if (ws)
    rc = lt_cuda_attn_fwd_ws(st, p, tm, b, d, variant == FWD_WS_PINGPONG);
  else if (d == 64)
    rc = hopper ? launch_fwd<64, true>(st, p, b) : launch_fwd<64, false>(st, p, b);
  else
    rc = hopper ? launch_fwd<128, true>(st, p, b) : launch_fwd<128, false>(st, p, b);
  LT_TRY(rc);
  LT_TRY(lt_cuda_launched(st, "attn_fwd", q, k));
  return lt_cuda_attn_count_tiles(st, p, spec);
}
