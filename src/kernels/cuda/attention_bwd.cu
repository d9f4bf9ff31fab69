// Flash attention backward on the tensor cores (FlashAttention-2, Dao 2023, Algorithm 2): a block
// owns BN keys of one key/value head (16 per warp) and walks every query tile that sees them, of
// every query head in the group, recomputing the probabilities from the saved lse:
//   S^T = K Q^T, P^T = exp(scale S^T - lse), dV += P^T dO, dP^T = V dO^T,
//   dS^T = P^T (dP^T - delta), dK += scale dS^T Q, dQ += scale dS K.
// Computing S^T rather than S keeps a warp's keys in its fragment rows, so P^T and dS^T feed the
// dV and dK products straight from registers; dS goes through shared memory for dQ, which blocks
// of different key tiles add into an f32 buffer with atomics (so dQ's rounding depends on their
// order: README, "Determinism"). As in the forward, one structure has two kernels:
// - Hopper (sm_90a): warpgroups of 64 keys multiply with wgmma (FlashAttention-3's operand
//   layouts). d = 128 puts two in a block, which split dQ's columns; d = 64 puts one in a block
//   and three blocks on an SM, unsynchronised, so one multiplies while another computes its
//   probabilities. The probabilities are computed while dP^T is still being multiplied.
// - elsewhere: four warps on mma.sync.
// (Bulk reductions of a shared-memory dQ tile measured slower than the atomics here.)
// A block walks only the query tiles that can reach its keys (attention_mask.cuh), so sparse
// patterns cost time in proportion to their visible tiles; dense attention runs an instantiation
// without the search, the pattern or the gates' special case (as the forward). Matches
// lt_cpu_attn_bwd.
#include <limits.h>

#include "kernels/cuda/attention_common.cuh"

enum { BM = 64, NT = BM / 8, LIST_MAX = 1024 };

// Threads per block: one warpgroup of 64 keys, or (Hopper, d = 128) two, which split dQ's
// columns. With d = 64 one warpgroup's registers and shared memory leave room for three blocks
// per SM (measured 9% faster than two).
template <int D, bool HOPPER> __host__ __device__ constexpr int bwd_threads() {
  return HOPPER && D == 128 ? 256 : 128;
}
template <int D, bool HOPPER> __host__ __device__ constexpr int bwd_bn() {
  return bwd_threads<D, HOPPER>() / 2; // 16 keys per warp
}
template <int D, bool HOPPER> __host__ __device__ constexpr int bwd_min_blocks() {
  return HOPPER && D == 64 ? 3 : 1;
}
// Query tiles in flight. With three (one being read, one landing, one free for the next copy) a
// tile's buffers need no barrier after their last use; two leave shared memory for three blocks.
template <int D, bool HOPPER> __host__ __device__ constexpr int bwd_stages() {
  return HOPPER && D == 64 ? 2 : 3;
}
template <int D, bool HOPPER> __host__ __device__ constexpr int bwd_tile_bytes(int rows) {
  return HOPPER ? rows * D * 2 : rows * tile_row_bytes<D>();
}
template <int D, bool HOPPER> constexpr size_t bwd_smem_bytes() {
  constexpr int BN = bwd_bn<D, HOPPER>(), STAGES = bwd_stages<D, HOPPER>();
  return 1024 + 2 * (size_t)bwd_tile_bytes<D, HOPPER>(BN) +
         2 * STAGES * (size_t)bwd_tile_bytes<D, HOPPER>(BM) +
         (size_t)bwd_tile_bytes<BM, HOPPER>(BN) + STAGES * 4 * (size_t)BM * 4 + LIST_MAX * 4;
}

template <typename T> __device__ __forceinline__ void add_pair(T *dst, float x, float y);
template <> __device__ __forceinline__ void add_pair<float>(float *dst, float x, float y) {
  dst[0] += x, dst[1] += y;
}
template <> __device__ __forceinline__ void add_pair<bf16>(bf16 *dst, float x, float y) {
  __nv_bfloat162 *d2 = reinterpret_cast<__nv_bfloat162 *>(dst);
  const float2 old = __bfloat1622float2(*d2);
  *d2 = __floats2bfloat162_rn(old.x + x, old.y + y);
}

// The query tile's statistics and masks, as the backward reads them from shared memory.
typedef struct bwd_tile_stats {
  const float *lse, *delta;
  const int32_t *qpos, *qdoc;
} bwd_tile_stats;

// S^T and dP^T become P^T and dS^T in place. The thread's keys are key_row and key_row + 8 of the
// block (positions kpos, kdoc); its queries are columns 8 nt + 2 c + {0, 1} of the tile. SPARSE
// as in the kernel.
template <bool PARTIAL, bool SPARSE>
__device__ __forceinline__ void
bwd_probs(float (&st)[NT * 4], const bwd_tile_stats &t, const attn_params &p, int64_t i0,
          int64_t j0, int key_row, const int32_t (&kpos)[2], const int32_t (&kdoc)[2], bool docs) {
  const int c = threadIdx.x & 3;
#pragma unroll
  for (int nt = 0; nt < NT; nt++)
#pragma unroll
    for (int e2 = 0; e2 < 2; e2++) {
      const int col = nt * 8 + c * 2 + e2;
      // A query that sees no key, or whose head its router left out (lse = -inf), has no
      // gradient. With gates that can be so in a full tile: lse = -inf is read as +inf, and its
      // probabilities come out 0. Without, every query of a full tile sees a key, so only
      // partial tiles check.
      const float lse = t.lse[col];
      const float lse2 = SPARSE && lse == -INFINITY ? INFINITY : lse * LOG2E;
      const bool query_ok = !PARTIAL || ((SPARSE || lse2 != -INFINITY) && i0 + col < p.tq);
#pragma unroll
      for (int hf = 0; hf < 2; hf++) {
        const int e = 2 * hf + e2;
        const float pv = fast_exp2(fmaf(st[nt * 4 + e], p.scale_log2, -lse2));
        if constexpr (PARTIAL)
          st[nt * 4 + e] = query_ok && j0 + key_row + hf * 8 < p.tk &&
                                   pair_visible<SPARSE>(p.mask, t.qpos[col], docs ? t.qdoc[col] : 0,
                                                        kpos[hf], kdoc[hf])
                               ? pv
                               : 0.0f;
        else
          st[nt * 4 + e] = pv;
      }
    }
}

// dP^T becomes dS^T = P^T (dP^T - delta) in place.
__device__ __forceinline__ void bwd_dscores(const float (&st)[NT * 4], float (&dpt)[NT * 4],
                                            const bwd_tile_stats &t) {
  const int c = threadIdx.x & 3;
#pragma unroll
  for (int nt = 0; nt < NT; nt++)
#pragma unroll
    for (int e2 = 0; e2 < 2; e2++) {
      const float delta = t.delta[nt * 8 + c * 2 + e2];
#pragma unroll
      for (int hf = 0; hf < 2; hf++) {
        const int e = nt * 4 + 2 * hf + e2;
        dpt[e] = st[e] * (dpt[e] - delta);
      }
    }
}

// S^T = K Q^T and dP^T = V dO^T for the warp's 16 keys on mma.sync (padded tiles, ldmatrix).
template <int D>
__device__ __forceinline__ void bwd_scores_mma(float (&st)[NT * 4], float (&dpt)[NT * 4],
                                               uint32_t k_base, uint32_t v_base, uint32_t q_base,
                                               uint32_t do_base, int warp, int lane) {
#pragma unroll
  for (int e = 0; e < NT * 4; e++) st[e] = 0.0f, dpt[e] = 0.0f;
#pragma unroll
  for (int ks = 0; ks < D / 16; ks++) {
    uint32_t ka[4], va[4];
    ldmatrix_x4(ka, tile_addr<D>(k_base, warp * 16 + (lane & 15), ks * 2 + (lane >> 4)));
    ldmatrix_x4(va, tile_addr<D>(v_base, warp * 16 + (lane & 15), ks * 2 + (lane >> 4)));
#pragma unroll
    for (int np = 0; np < NT / 2; np++) {
      const int row = np * 16 + (lane & 7) + ((lane >> 4) << 3), chunk = ks * 2 + ((lane >> 3) & 1);
      uint32_t qb[4], ob[4];
      ldmatrix_x4(qb, tile_addr<D>(q_base, row, chunk));
      ldmatrix_x4(ob, tile_addr<D>(do_base, row, chunk));
      mma_bf16(frag4(st, 2 * np), ka, qb[0], qb[1]);
      mma_bf16(frag4(st, 2 * np + 1), ka, qb[2], qb[3]);
      mma_bf16(frag4(dpt, 2 * np), va, ob[0], ob[1]);
      mma_bf16(frag4(dpt, 2 * np + 1), va, ob[2], ob[3]);
    }
  }
}

// The same for warpgroup wg's 64 keys on wgmma: K, V (A) and Q, dO (B) K-major, swizzled.
template <int D, int BN>
__device__ __forceinline__ void bwd_scores_wgmma(float (&st)[NT * 4], float (&dpt)[NT * 4],
                                                 uint32_t k_base, uint32_t v_base, uint32_t q_base,
                                                 uint32_t do_base, int wg) {
  // acc = (the group's 64 rows of a key-side tile) (a query-side tile)^T, as one commit group.
  auto product = [&](float(&acc)[NT * 4], uint32_t key_side, uint32_t query_side) {
#pragma unroll
    for (int ks = 0; ks < D / 16; ks++) {
      const uint32_t kv_off = (ks >> 2) * BN * 128 + wg * 64 * 128 + (ks & 3) * 32;
      const uint32_t q_off = (ks >> 2) * BM * 128 + (ks & 3) * 32;
      wgmma_ss_n64<0, 0>(acc, make_desc(key_side + kv_off, 16, 1024),
                         make_desc(query_side + q_off, 16, 1024), ks > 0);
    }
    wgmma_commit();
  };
  wgmma_fence();
  product(st, k_base, q_base);
  product(dpt, v_base, do_base);
}

// dV += P^T dO and dK += dS^T Q on mma.sync: A from registers, dO and Q transposed by ldmatrix.
template <int D>
__device__ __forceinline__ void bwd_dkdv_mma(float (&dk)[D / 2], float (&dv)[D / 2],
                                             const float (&st)[NT * 4], const float (&dpt)[NT * 4],
                                             uint32_t q_base, uint32_t do_base, int lane) {
#pragma unroll
  for (int kk = 0; kk < BM / 16; kk++) {
    uint32_t pa[4], sa[4];
    probs_fragment<NT>(pa, st, kk);
    probs_fragment<NT>(sa, dpt, kk);
    mma_tile_rows<D>(dv, pa, do_base, kk, lane);
    mma_tile_rows<D>(dk, sa, q_base, kk, lane);
  }
}

// The same on wgmma, issued and committed but not waited for: A from registers (pa, sa must stay
// untouched until the wait), dO and Q N-major from their swizzled tiles.
template <int D>
__device__ __forceinline__ void
bwd_dkdv_wgmma(float (&dk)[D / 2], float (&dv)[D / 2], const uint32_t (&pa)[BM / 16][4],
               const uint32_t (&sa)[BM / 16][4], uint32_t q_base, uint32_t do_base) {
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < BM / 16; kk++) {
    const uint64_t ob = make_desc(do_base + kk * 16 * 128, BM * 128, 1024);
    const uint64_t qb = make_desc(q_base + kk * 16 * 128, BM * 128, 1024);
    if constexpr (D == 64) {
      wgmma_rs_n64<1>(dv, pa[kk], ob, true);
      wgmma_rs_n64<1>(dk, sa[kk], qb, true);
    } else {
      wgmma_rs_n128<1>(dv, pa[kk], ob, true);
      wgmma_rs_n128<1>(dk, sa[kk], qb, true);
    }
  }
  wgmma_commit();
}

// dQ rows warp * 16 .. + 15 of the tile on mma.sync: dS (A) from the padded dS^T tile
// transposed, K (B) transposed, over all BN keys.
template <int D, int BN>
__device__ __forceinline__ void bwd_dq_mma(float (&dq)[D / 2], uint32_t ds_base, uint32_t k_base,
                                           int warp, int lane) {
#pragma unroll
  for (int e = 0; e < D / 2; e++) dq[e] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < BN / 16; kk++) {
    uint32_t da[4];
    ldmatrix_x4_trans(da, tile_addr<BM>(ds_base, kk * 16 + (lane & 7) + ((lane >> 4) << 3),
                                        warp * 2 + ((lane >> 3) & 1)));
    mma_tile_rows<D>(dq, da, k_base, kk, lane);
  }
}

// Columns [wg COLS, (wg + 1) COLS) of dQ for all BM rows over the block's BN keys on wgmma: dS
// (A) M-major from the swizzled dS^T tile, K (B) N-major from column block wg COLS / 64.
template <int COLS, int BN>
__device__ __forceinline__ void bwd_dq_wgmma(float (&dq)[COLS / 2], uint32_t ds_base,
                                             uint32_t k_base, int wg) {
  static_assert(COLS % 64 == 0, "whole column blocks of K");
  const uint32_t block = wg * (COLS / 64) * BN * 128;
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < BN / 16; kk++) {
    const uint64_t a = make_desc(ds_base + kk * 16 * 128, BN * 128, 1024);
    const uint64_t kb = make_desc(k_base + block + kk * 16 * 128, BN * 128, 1024);
    if constexpr (COLS == 64)
      wgmma_ss_n64<1, 1>(dq, a, kb, kk > 0);
    else
      wgmma_ss_n128<1, 1>(dq, a, kb, kk > 0);
  }
  wgmma_commit();
  wgmma_wait<0>();
  wgmma_fence_operands(dq);
}

// q, dout: (B, Tq, Hq, D) bf16; k, v: (B, Tk, Hkv, D) bf16; lse, delta: (B, Hq, Tq) f32;
// dq: (B, Tq, Hq, D) f32 (+=, atomic); dk, dv: (B, Tk, Hkv, D) TKV (+=); grid (key tiles, Hkv, B).
// SPARSE: the instantiation for sparse patterns, head gates and tile counts
// (attn_params.sparse_kernel); the dense one walks every query tile as the tile list classifies
// them, with none of their checks.
template <int D, typename TKV, bool HOPPER, bool SPARSE>
__global__ void __launch_bounds__(bwd_threads<D, HOPPER>(), bwd_min_blocks<D, HOPPER>())
    attn_bwd_kernel(const attn_params p) {
  constexpr int THREADS = bwd_threads<D, HOPPER>(), WARPS = THREADS / 32, BN = bwd_bn<D, HOPPER>();
  constexpr int KV_BYTES = bwd_tile_bytes<D, HOPPER>(BN), QT_BYTES = bwd_tile_bytes<D, HOPPER>(BM);
  constexpr int STAGES = bwd_stages<D, HOPPER>();
  extern __shared__ unsigned char smem_raw[];
  unsigned char *smem = (unsigned char *)(((uintptr_t)smem_raw + 1023) & ~(uintptr_t)1023);
  unsigned char *k_s = smem, *v_s = k_s + KV_BYTES;                // (BN, D)
  unsigned char *q_s = v_s + KV_BYTES;                             // STAGES x (BM, D)
  unsigned char *do_s = q_s + STAGES * QT_BYTES;                   // STAGES x (BM, D)
  unsigned char *ds_s = do_s + STAGES * QT_BYTES;                  // (BN, BM): dS^T in bf16
  float *lse_s = (float *)(ds_s + bwd_tile_bytes<BM, HOPPER>(BN)); // STAGES x BM
  float *delta_s = lse_s + STAGES * BM;                            // STAGES x BM
  int32_t *qpos_s = (int32_t *)(delta_s + STAGES * BM);            // STAGES x BM
  int32_t *qdoc_s = qpos_s + STAGES * BM;                          // STAGES x BM
  int *list = qdoc_s + STAGES * BM;                                // LIST_MAX
  __shared__ int warp_counts[WARPS];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
  const int wg = warp >> 2;
  const int kt = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z, group = p.hq / p.hkv;
  const int64_t j0 = (int64_t)kt * BN;
  const bool docs = p.mask.docs;
  const int64_t kv_head = ((int64_t)b * p.tk * p.hkv + kvh) * D;
  const uint32_t k_base = smem_u32(k_s), v_base = smem_u32(v_s), ds_base = smem_u32(ds_s);
  load_rows<HOPPER, BN, D, THREADS>(k_s, p.k + kv_head, (int64_t)p.hkv * D, j0, p.tk);
  load_rows<HOPPER, BN, D, THREADS>(v_s, p.v + kv_head, (int64_t)p.hkv * D, j0, p.tk);
  cp_async_commit();

  // This thread's two keys: warp * 16 + g + 8 hf.
  int32_t kpos[2], kdoc[2];
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    const int64_t j = j0 + warp * 16 + hf * 8 + g;
    const bool valid = j < p.tk;
    kpos[hf] = valid ? p.k_pos[(int64_t)b * p.tk + j] : INT_MAX;
    kdoc[hf] = valid && docs ? p.k_doc[(int64_t)b * p.tk + j] : 0;
  }
  float dk[D / 2], dv[D / 2];
#pragma unroll
  for (int e = 0; e < D / 2; e++) dk[e] = 0.0f, dv[e] = 0.0f;

  // Query tile `entry` of head h into buffer buf: Q, dO, lse, delta and positions.
  auto issue_tile = [&](int entry, int h, int buf) {
    const int64_t i0 = (int64_t)(entry & 0x7fffffff) * BM, q_stride = (int64_t)p.hq * D;
    const int64_t head = ((int64_t)b * p.tq * p.hq + h) * D;
    load_rows<HOPPER, BM, D, THREADS>(q_s + buf * QT_BYTES, p.q + head, q_stride, i0, p.tq);
    load_rows<HOPPER, BM, D, THREADS>(do_s + buf * QT_BYTES, p.dout + head, q_stride, i0, p.tq);
    for (int r = threadIdx.x; r < BM; r += THREADS) {
      const bool valid = i0 + r < p.tq;
      const int64_t stat = ((int64_t)b * p.hq + h) * p.tq + (valid ? i0 + r : 0);
      const int64_t tok = (int64_t)b * p.tq + (valid ? i0 + r : 0);
      cp_async4(lse_s + buf * BM + r, p.lse + stat, valid);
      cp_async4(delta_s + buf * BM + r, p.delta + stat, valid);
      cp_async4(qpos_s + buf * BM + r, p.q_pos + tok, valid);
      if (docs) cp_async4(qdoc_s + buf * BM + r, p.q_doc + tok, valid);
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
    // Step it works on list[at] of head h in buffer buf.
    for (int it = 0, at = 0, h = kvh * group, buf = 0; it < steps; it++) {
      const int entry = list[at];
      const int64_t i0 = (int64_t)(entry & 0x7fffffff) * BM;
      const int next_at = at + 1 == n ? 0 : at + 1, next_h = at + 1 == n ? h + 1 : h;
      const int next_buf = buf + 1 == STAGES ? 0 : buf + 1;
      if (it + 1 < steps) issue_tile(list[next_at], next_h, next_buf);
      wait_for_tile<HOPPER>(it + 1 < steps);
      const uint32_t q_base = smem_u32(q_s + buf * QT_BYTES),
                     do_base = smem_u32(do_s + buf * QT_BYTES);
      const bwd_tile_stats stats = {lse_s + buf * BM, delta_s + buf * BM, qpos_s + buf * BM,
                                    qdoc_s + buf * BM};
      float st[NT * 4], dpt[NT * 4];
      if constexpr (HOPPER) {
        bwd_scores_wgmma<D, BN>(st, dpt, k_base, v_base, q_base, do_base, wg);
        wgmma_wait<1>(); // S^T; dP^T still multiplying while P^T is computed
        wgmma_fence_operands(st);
      } else {
        bwd_scores_mma<D>(st, dpt, k_base, v_base, q_base, do_base, warp, lane);
      }
      if (entry < 0) // TILE_PARTIAL
        bwd_probs<true, SPARSE>(st, stats, p, i0, j0, warp * 16 + g, kpos, kdoc, docs);
      else
        bwd_probs<false, SPARSE>(st, stats, p, i0, j0, warp * 16 + g, kpos, kdoc, docs);
      if constexpr (HOPPER) {
        wgmma_wait<0>();
        wgmma_fence_operands(dpt);
      }
      bwd_dscores(st, dpt, stats);

      // dS^T goes to shared memory for dQ, while (on Hopper) dV and dK multiply.
      if constexpr (HOPPER) {
        uint32_t pa[BM / 16][4], sa[BM / 16][4];
#pragma unroll
        for (int kk = 0; kk < BM / 16; kk++) {
          probs_fragment<NT>(pa[kk], st, kk);
          probs_fragment<NT>(sa[kk], dpt, kk);
        }
        bwd_dkdv_wgmma<D>(dk, dv, pa, sa, q_base, do_base);
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
          for (int hf = 0; hf < 2; hf++) {
            const int row = warp * 16 + hf * 8 + g;
            asm volatile(
                "st.shared.b32 [%0], %1;\n" ::"r"(swizzled_addr<BN>(ds_base, row, nt) + c * 4),
                "r"(pack_bf16(dpt[nt * 4 + 2 * hf], dpt[nt * 4 + 2 * hf + 1])));
          }
        fence_proxy_async();
        __syncthreads(); // all of dS^T stored
        wgmma_wait<0>();
        wgmma_keep_fragments(pa);
        wgmma_keep_fragments(sa);
        wgmma_fence_operands(dk);
        wgmma_fence_operands(dv);
        constexpr int COLS = D / (THREADS / 128); // dQ columns per warpgroup
        float dq[COLS / 2];
        bwd_dq_wgmma<COLS, BN>(dq, ds_base, k_base, wg);
        const float scale = p.scale_log2 / LOG2E;
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
          const int64_t i = i0 + (warp & 3) * 16 + g + hf * 8;
          if (i >= p.tq) continue;
          float *dq_row = p.dq + (((int64_t)b * p.tq + i) * p.hq + h) * D + wg * COLS;
#pragma unroll
          for (int dt = 0; dt < COLS / 8; dt++)
            atomicAdd(reinterpret_cast<float2 *>(dq_row + dt * 8 + c * 2),
                      make_float2(dq[dt * 4 + 2 * hf] * scale, dq[dt * 4 + 2 * hf + 1] * scale));
        }
      } else {
        bwd_dkdv_mma<D>(dk, dv, st, dpt, q_base, do_base, lane);
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
        bwd_dq_mma<D, BN>(dq, ds_base, k_base, warp, lane);
        const float scale = p.scale_log2 / LOG2E;
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
          const int64_t i = i0 + warp * 16 + g + hf * 8;
          if (i >= p.tq) continue;
          float *dq_row = p.dq + (((int64_t)b * p.tq + i) * p.hq + h) * D;
#pragma unroll
          for (int dt = 0; dt < D / 8; dt++)
            atomicAdd(reinterpret_cast<float2 *>(dq_row + dt * 8 + c * 2),
                      make_float2(dq[dt * 4 + 2 * hf] * scale, dq[dt * 4 + 2 * hf + 1] * scale));
        }
      }
      if constexpr (STAGES == 2) __syncthreads(); // the next copy refills this tile's buffers
      at = next_at, h = next_h, buf = next_buf;
    }
  }

  const float scale = p.scale_log2 / LOG2E;
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    const int64_t j = j0 + warp * 16 + hf * 8 + g;
    if (j >= p.tk) continue;
    TKV *dk_row = (TKV *)p.dk + (((int64_t)b * p.tk + j) * p.hkv + kvh) * D;
    TKV *dv_row = (TKV *)p.dv + (((int64_t)b * p.tk + j) * p.hkv + kvh) * D;
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) {
      add_pair(dk_row + dt * 8 + c * 2, dk[dt * 4 + 2 * hf] * scale,
               dk[dt * 4 + 2 * hf + 1] * scale);
      add_pair(dv_row + dt * 8 + c * 2, dv[dt * 4 + 2 * hf], dv[dt * 4 + 2 * hf + 1]);
    }
  }
  if (SPARSE && p.visited && threadIdx.x == 0) atomicAdd(p.visited, (unsigned long long)visited);
}

template <int D, typename TKV, bool HOPPER, bool SPARSE>
static int launch_bwd(lt_cuda_state *st, const attn_params &p, int64_t b) {
  constexpr size_t smem = bwd_smem_bytes<D, HOPPER>();
  CUDA_TRY(cudaFuncSetAttribute(attn_bwd_kernel<D, TKV, HOPPER, SPARSE>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
           "attn_bwd: raising shared memory to %zu bytes", smem);
  dim3 grid((unsigned)p.n_k_tiles, (unsigned)p.hkv, (unsigned)b);
  attn_bwd_kernel<D, TKV, HOPPER, SPARSE><<<grid, bwd_threads<D, HOPPER>(), smem, st->stream>>>(p);
  return LT_OK;
}

template <int D, typename TKV, bool HOPPER>
static int launch_bwd(lt_cuda_state *st, const attn_params &p, int64_t b) {
  return p.sparse_kernel ? launch_bwd<D, TKV, HOPPER, true>(st, p, b)
                         : launch_bwd<D, TKV, HOPPER, false>(st, p, b);
}

template <int D, bool HOPPER>
static int launch_bwd(lt_cuda_state *st, const attn_params &p, int64_t b) {
  return p.dkv_f32 ? launch_bwd<D, float, HOPPER>(st, p, b) : launch_bwd<D, bf16, HOPPER>(st, p, b);
}

int lt_cuda_attn_bwd(lt_ctx *ctx, lt_tensor dq, lt_tensor dk, lt_tensor dv, lt_tensor dout,
                     lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor lse, lt_tensor delta,
                     const lt_attn_spec *spec) {
  lt_cuda_state *st = cuda_state(ctx);
  if (dq.dtype != LT_F32 || dout.dtype != LT_BF16 || dk.dtype != dv.dtype ||
      (dk.dtype != LT_F32 && dk.dtype != LT_BF16))
    return lt_cuda_unsupported("attn_bwd", "dq f32, dout bf16, dk and dv both bf16 or f32", dq, dk);
  const bool hopper = st->attn_wgmma;
  attn_params p;
  const int k_tile = q.shape[3] == 64 ? (hopper ? bwd_bn<64, true>() : bwd_bn<64, false>())
                                      : (hopper ? bwd_bn<128, true>() : bwd_bn<128, false>());
  LT_TRY(lt_cuda_attn_setup(ctx, &p, q, k, v, spec, BM, k_tile, "attn_bwd"));
  p.dout = (const bf16 *)dout.data, p.lse = (float *)lse.data, p.delta = (float *)delta.data;
  p.dq = (float *)dq.data, p.dk = dk.data, p.dv = dv.data;
  p.dkv_f32 = dk.dtype == LT_F32;
  if (p.tq == 0 || p.tk == 0) return LT_OK;
  const int64_t b = q.shape[0];
  int rc;
  if (q.shape[3] == 64)
    rc = hopper ? launch_bwd<64, true>(st, p, b) : launch_bwd<64, false>(st, p, b);
  else
    rc = hopper ? launch_bwd<128, true>(st, p, b) : launch_bwd<128, false>(st, p, b);
  LT_TRY(rc);
  LT_TRY(lt_cuda_launched(st, "attn_bwd", q, dk));
  return lt_cuda_attn_count_tiles(st, p, spec);
}
