// The flash attention backward's per-tile steps (attention_bwd.cu has the kernel that strings them
// together, and the algorithm): probabilities and score gradients from recomputed scores, the
// products on mma.sync and on wgmma, and dQ's and dK/dV's additions to global memory. A thread's
// fragments follow attention_common.cuh: its keys are fragment rows (S^T, dP^T), 16 per warp.
#ifndef LT_ATTENTION_BWD_TILE_CUH
#define LT_ATTENTION_BWD_TILE_CUH

#include <limits.h>

#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/attention_fwd_tile.cuh"
#include "kernels/cuda/rope.cuh"

// dst[0] = x, dst[1] = y in dK's or dV's dtype: a block owns its keys, and writes them once.
template <typename T> __device__ __forceinline__ void store_pair(T *dst, float x, float y);
template <> __device__ __forceinline__ void store_pair<float>(float *dst, float x, float y) {
  *reinterpret_cast<float2 *>(dst) = make_float2(x, y);
}
template <> __device__ __forceinline__ void store_pair<bf16>(bf16 *dst, float x, float y) {
  *reinterpret_cast<__nv_bfloat162 *>(dst) = __floats2bfloat162_rn(x, y);
}

// The positions and documents (kpos, kdoc) of the thread's two keys, j0 + key_row and + 8 of batch
// row b (INT_MAX past the keys' end, which no mask lets through).
__device__ __forceinline__ void bwd_key_positions(int32_t (&kpos)[2], int32_t (&kdoc)[2],
                                                  const attn_params &p, int b, int64_t j0,
                                                  int key_row) {
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    const int64_t j = j0 + key_row + hf * 8;
    const bool valid = j < p.tk;
    kpos[hf] = valid ? p.k_pos[(int64_t)b * p.tk + j] : INT_MAX;
    kdoc[hf] = valid && p.mask.docs ? p.k_doc[(int64_t)b * p.tk + j] : 0;
  }
}

// The frequencies of the thread's RoPE pairs for bwd_store_dkdv: columns i = 8 dt + 2 c + e
// (dt < D/16, e < 2) of dK's first half, paired with i + D/2 (zeros without p.rope_pos). powf is
// ~100 instructions: a persistent kernel computes them once, not for every item's keys.
template <int D> struct rope_freqs { float f[D / 16][2]; };
template <int D> __device__ __forceinline__ rope_freqs<D> bwd_rope_freqs(const attn_params &p) {
  rope_freqs<D> r;
  const int c = threadIdx.x & 3;
#pragma unroll
  for (int dt = 0; dt < D / 16; dt++)
#pragma unroll
    for (int e = 0; e < 2; e++)
      r.f[dt][e] = p.rope_pos ? rope_inv_freq(dt * 8 + c * 2 + e, D, p.rope_theta) : 0.0f;
  return r;
}

// Writes the thread's rows of dK (times scale) and dV, C fragments of keys j0 + key_row and + 8
// of key/value head kvh of batch row b, in their dtype TKV: once, at the end of a block's or an
// item's walk. With p.rope_pos, dK is rotated back first (R^T dK, as lt_rope_qkv_bwd) at the
// frequencies `freqs`: columns i and i + D/2 of a row are fragments dt and dt + D/16 of the same
// thread, so the pairs never leave its registers.
template <int D, typename TKV>
__device__ __forceinline__ void
bwd_store_dkdv(const attn_params &p, const rope_freqs<D> &freqs, const float (&dk)[D / 2],
               const float (&dv)[D / 2], float scale, int b, int kvh, int64_t j0, int key_row) {
  const int c = threadIdx.x & 3;
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    const int64_t j = j0 + key_row + hf * 8;
    if (j >= p.tk) continue;
    float k_out[D / 8][2];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++)
      k_out[dt][0] = dk[dt * 4 + 2 * hf] * scale, k_out[dt][1] = dk[dt * 4 + 2 * hf + 1] * scale;
    if (p.rope_pos) {
      const int32_t pos = p.rope_pos[(int64_t)b * p.tk + j];
#pragma unroll
      for (int dt = 0; dt < D / 16; dt++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
          float co, si;
          rope_sincos(pos, freqs.f[dt][e], -1.0f, &co, &si);
          const float x0 = k_out[dt][e], x1 = k_out[dt + D / 16][e];
          k_out[dt][e] = x0 * co - x1 * si, k_out[dt + D / 16][e] = x1 * co + x0 * si;
        }
    }
    const int64_t row = ((int64_t)b * p.tk + j) * p.dkv_row + (int64_t)kvh * D;
    TKV *dk_row = (TKV *)p.dk + row, *dv_row = (TKV *)p.dv + row;
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) {
      store_pair(dk_row + dt * 8 + c * 2, k_out[dt][0], k_out[dt][1]);
      store_pair(dv_row + dt * 8 + c * 2, dv[dt * 4 + 2 * hf], dv[dt * 4 + 2 * hf + 1]);
    }
  }
}

// The query tile's statistics and masks, as the backward reads them from shared memory (lse in
// natural log, or with LSE_LOG2 below already times log2 e).
typedef struct bwd_tile_stats {
  const float *lse, *delta;
  const int32_t *qpos, *qdoc;
} bwd_tile_stats;

// S^T and dP^T become P^T and dS^T in place. The thread's keys are key_row and key_row + 8 of the
// block (positions kpos, kdoc); its queries are columns 8 nt + 2 c + {0, 1} of the tile (NT * 8
// queries). SPARSE as in the kernel; LSE_LOG2: t.lse holds lse log2 e (dense kernels only).
template <int NT, bool PARTIAL, bool SPARSE, bool LSE_LOG2 = false>
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
      static_assert(!(SPARSE && LSE_LOG2), "gates' lse = -inf needs the natural log's check");
      const float lse = t.lse[col];
      const float lse2 = LSE_LOG2 ? lse : SPARSE && lse == -INFINITY ? INFINITY : lse * LOG2E;
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
template <int NT>
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

// The middle of a wgmma step, once P^T is computed in st: waits for dP^T (dpt), makes dS^T of it
// (bwd_dscores), P^T and dS^T as bf16 A fragments (pa, sa), and issues dV += P^T dO (the
// forward's O += P V product), which the caller waits for, pa untouched until then.
template <int D, int BM>
__device__ __forceinline__ void
bwd_fragments_and_dv(uint32_t (&pa)[BM / 16][4], uint32_t (&sa)[BM / 16][4], float (&dv)[D / 2],
                     const float (&st)[BM / 2], float (&dpt)[BM / 2], const bwd_tile_stats &stats,
                     uint32_t do_base) {
  constexpr int NT = BM / 8;
  wgmma_wait<0>();
  wgmma_fence_operands(dpt);
  bwd_dscores<NT>(st, dpt, stats);
#pragma unroll
  for (int kk = 0; kk < BM / 16; kk++) {
    probs_fragment<NT>(pa[kk], st, kk);
    probs_fragment<NT>(sa[kk], dpt, kk);
  }
  fwd_pv_wgmma<D, BM>(dv, pa, do_base);
}

// S^T = K Q^T and dP^T = V dO^T for the warp's 16 keys on mma.sync (padded tiles, ldmatrix).
template <int D, int NT>
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

// acc = (warpgroup wg's 64 rows of a key-side tile of BN rows) (a query-side tile of BM rows)^T on
// wgmma, fenced, issued and committed as one group: S^T = K Q^T, dP^T = V dO^T.
template <int D, int BN, int BM>
__device__ __forceinline__ void bwd_product_wgmma(float (&acc)[BM / 2], uint32_t key_side,
                                                  uint32_t query_side, int wg) {
  const uint64_t a0 = make_desc(key_side + wg * 64 * 128, 16, 1024),
                 b0 = make_desc(query_side, 16, 1024);
  wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < D / 16; ks++) {
    const uint64_t a = desc_at(a0, (ks >> 2) * BN * 128 + (ks & 3) * 32);
    const uint64_t b = desc_at(b0, (ks >> 2) * BM * 128 + (ks & 3) * 32);
    if constexpr (BM == 128)
      wgmma_ss_n128<0, 0>(acc, a, b, ks > 0);
    else
      wgmma_ss_n64<0, 0>(acc, a, b, ks > 0);
  }
  wgmma_commit();
}

// The same for warpgroup wg's 64 keys on wgmma: K, V (A) and Q, dO (B) K-major, swizzled; the
// BM queries are the product's n. `between` runs after S^T's multiplies are issued, before dP^T's.
template <int D, int BN, int BM, typename F>
__device__ __forceinline__ void bwd_scores_wgmma(float (&st)[BM / 2], float (&dpt)[BM / 2],
                                                 uint32_t k_base, uint32_t v_base, uint32_t q_base,
                                                 uint32_t do_base, int wg, F &&between) {
  bwd_product_wgmma<D, BN, BM>(st, k_base, q_base, wg);
  between();
  bwd_product_wgmma<D, BN, BM>(dpt, v_base, do_base, wg);
}

// dK += dS^T Q with dS^T (A) from its swizzled tile in shared memory (K-major, warpgroup wg's 64
// key rows of BN) and Q (B) N-major; issued, not committed (dQ's product joins the group).
template <int D, int BN, int BM>
__device__ __forceinline__ void bwd_dk_smem_wgmma(float (&dk)[D / 2], uint32_t ds_base,
                                                  uint32_t q_base, int wg) {
  const uint64_t a0 = make_desc(ds_base + wg * 64 * 128, 16, 1024),
                 qb0 = make_desc(q_base, BM * 128, 1024);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < BM / 16; kk++) {
    const uint64_t a = desc_at(a0, (kk >> 2) * BN * 128 + (kk & 3) * 32);
    const uint64_t qb = desc_at(qb0, kk * 16 * 128);
    if constexpr (D == 64)
      wgmma_ss_n64<0, 1>(dk, a, qb, true);
    else
      wgmma_ss_n128<0, 1>(dk, a, qb, true);
  }
}

// dV += P^T dO and dK += dS^T Q on mma.sync: A from registers, dO and Q transposed by ldmatrix.
template <int D, int BM>
__device__ __forceinline__ void bwd_dkdv_mma(float (&dk)[D / 2], float (&dv)[D / 2],
                                             const float (&st)[BM / 2], const float (&dpt)[BM / 2],
                                             uint32_t q_base, uint32_t do_base, int lane) {
  constexpr int NT = BM / 8;
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
// untouched until the wait), dO and Q N-major from their swizzled tiles of BM rows.
template <int D, int BM>
__device__ __forceinline__ void
bwd_dkdv_wgmma(float (&dk)[D / 2], float (&dv)[D / 2], const uint32_t (&pa)[BM / 16][4],
               const uint32_t (&sa)[BM / 16][4], uint32_t q_base, uint32_t do_base) {
  const uint64_t ob0 = make_desc(do_base, BM * 128, 1024), qb0 = make_desc(q_base, BM * 128, 1024);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < BM / 16; kk++) {
    const uint64_t ob = desc_at(ob0, kk * 16 * 128), qb = desc_at(qb0, kk * 16 * 128);
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

// dQ rows warp * 16 .. + 15 of the tile on mma.sync: dS (A) from the padded dS^T tile (BM
// queries wide) transposed, K (B) transposed, over all BN keys.
template <int D, int BN, int BM>
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

// Columns [col_block COLS, (col_block + 1) COLS) of dQ for queries [64 q_block, + 64) over the
// block's BN keys on wgmma, issued and committed: dS (A) M-major from column block q_block of the
// swizzled dS^T tile, K (B) N-major from its column blocks.
template <int COLS, int BN>
__device__ __forceinline__ void bwd_dq_wgmma(float (&dq)[COLS / 2], uint32_t ds_base,
                                             uint32_t k_base, int q_block, int col_block) {
  static_assert(COLS % 64 == 0, "whole column blocks of K");
  const uint32_t ds_block = q_block * BN * 128, k_block = col_block * (COLS / 64) * BN * 128;
  const uint64_t a0 = make_desc(ds_base + ds_block, BN * 128, 1024),
                 kb0 = make_desc(k_base + k_block, BN * 128, 1024);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < BN / 16; kk++) {
    const uint64_t a = desc_at(a0, kk * 16 * 128), kb = desc_at(kb0, kk * 16 * 128);
    if constexpr (COLS == 64)
      wgmma_ss_n64<1, 1>(dq, a, kb, kk > 0);
    else
      wgmma_ss_n128<1, 1>(dq, a, kb, kk > 0);
  }
  wgmma_commit();
}

// Vector atomics on f32 (8- and 16-byte) exist from sm_90; older GPUs add value by value.
__device__ __forceinline__ void atomic_add2(float *dst, float x, float y) {
#if __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2 *>(dst), make_float2(x, y));
#else
  atomicAdd(dst, x), atomicAdd(dst + 1, y);
#endif
}
__device__ __forceinline__ void atomic_add4(float *dst, float4 v) {
#if __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float4 *>(dst), v);
#else
  atomic_add2(dst, v.x, v.y), atomic_add2(dst + 2, v.z, v.w);
#endif
}

// dQ += scale dq, a C fragment (mma.sync's or wgmma's layout) of the thread's rows i0 + row and
// i0 + row + 8 (row: its warp's first row plus g) by COLS columns from col0, as 8-byte atomics.
template <int D, int COLS>
__device__ __forceinline__ void add_dq_pairs(const attn_params &p, const float (&dq)[COLS / 2],
                                             float scale, int b, int h, int64_t i0, int row,
                                             int col0) {
  const int c = threadIdx.x & 3;
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    const int64_t i = i0 + row + hf * 8;
    if (i >= p.tq) continue;
    float *dq_row = p.dq + (((int64_t)b * p.tq + i) * p.hq + h) * D + col0;
#pragma unroll
    for (int dt = 0; dt < COLS / 8; dt++)
      atomic_add2(dq_row + dt * 8 + c * 2, dq[dt * 4 + 2 * hf] * scale,
                  dq[dt * 4 + 2 * hf + 1] * scale);
  }
}

// dQ's share of a warpgroup, 64 rows by COLS f32 in wgmma's C fragment, scaled, into shared
// memory at base for a bulk reduction (tma_add_rows): COLS / 32 slices of 64 rows by 32 columns,
// each 8 KB of 128-byte rows in TMA's 128-byte swizzle (the 16-byte chunk k of row r lies at
// chunk k ^ (r & 7)), so a warp's stores fall on distinct banks. row: the thread's first row in
// the warpgroup's 64 (its warp's first plus g).
template <int COLS>
__device__ __forceinline__ void stage_dq_rows(uint32_t base, const float (&dq)[COLS / 2],
                                              float scale, int row) {
  const int c = threadIdx.x & 3;
#pragma unroll
  for (int dt = 0; dt < COLS / 8; dt++)
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
      const int r = row + 8 * hf, col = dt * 8 + 2 * c, cc = col & 31;
      const uint32_t at =
          base + (col >> 5) * 64 * 128 + r * 128 + (((cc >> 2) ^ (r & 7)) << 4) + (cc & 3) * 4;
      asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(at), "f"(dq[dt * 4 + 2 * hf] * scale),
                   "f"(dq[dt * 4 + 2 * hf + 1] * scale)
                   : "memory");
    }
}

// The same as 16-byte atomics (sm_90), half as many: lanes c and c ^ 1 trade a column pair so
// that an even c holds columns 8 dt + 2 c .. + 3 of row i0 + row and an odd c the same four
// columns (8 dt + 2 (c - 1) ..) of row i0 + row + 8. Every lane of the warp must call it.
template <int D, int COLS>
__device__ __forceinline__ void add_dq_quads(const attn_params &p, const float (&dq)[COLS / 2],
                                             float scale, int b, int h, int64_t i0, int row,
                                             int col0) {
  const int c = threadIdx.x & 3, odd = c & 1;
  const int64_t i = i0 + row + 8 * odd;
  // Every quad is made before the first atomic goes out: the shuffles then run back to back, and
  // each atomic reads registers of its own (reusing four for all of them measured the atomics'
  // section at a fifth of the kernel's stall samples on an H100: each quad waited for the last
  // atomic to read its registers, and each atomic for its shuffles).
  float4 quads[COLS / 8];
#pragma unroll
  for (int dt = 0; dt < COLS / 8; dt++) {
    // Even lanes keep row g's pair (hf 0) and give row g + 8's; odd lanes the other way round.
    // (Selects, not an index by odd, which would put dq in local memory.)
    const float row0 = dq[dt * 4] * scale, row0b = dq[dt * 4 + 1] * scale;
    const float row8 = dq[dt * 4 + 2] * scale, row8b = dq[dt * 4 + 3] * scale;
    const float keep0 = odd ? row8 : row0, keep1 = odd ? row8b : row0b;
    const float give0 = odd ? row0 : row8, give1 = odd ? row0b : row8b;
    const float got0 = __shfl_xor_sync(0xffffffffu, give0, 1),
                got1 = __shfl_xor_sync(0xffffffffu, give1, 1);
    quads[dt] = odd ? make_float4(got0, got1, keep0, keep1) : make_float4(keep0, keep1, got0, got1);
  }
  if (i >= p.tq) return;
  float *dq_row = p.dq + (((int64_t)b * p.tq + i) * p.hq + h) * D + col0 + 2 * (c - odd);
#pragma unroll
  for (int dt = 0; dt < COLS / 8; dt++) atomic_add4(dq_row + dt * 8, quads[dt]);
}

#endif
