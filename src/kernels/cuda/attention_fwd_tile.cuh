// The forward's tensor-core steps on Hopper, shared by its kernels (attention_fwd.cu: the one
// every mask runs; attention_fwd_ws.cu: dense attention's warp-specialized one): a warpgroup's
// S = Q K^T and O += P V on wgmma, straight from the swizzled tiles (attention_common.cuh) and,
// for P, from registers, as FlashAttention-3 does.
#ifndef LT_ATTENTION_FWD_TILE_CUH
#define LT_ATTENTION_FWD_TILE_CUH

#include "kernels/cuda/attention_common.cuh"

// S = Q K^T for warpgroup wg's 64 rows of a BM-row Q tile: Q (A) and K (B) K-major from their
// swizzled tiles; a k-step of 16 columns is 32 bytes into a 128-byte row, column block ks / 4.
// Issued and committed as one group; the caller waits.
template <int D, int BN, int BM>
__device__ __forceinline__ void fwd_scores_wgmma(float (&s)[BN / 2], uint32_t q_base,
                                                 uint32_t k_base, int wg) {
  const uint64_t a0 = make_desc(q_base + wg * 64 * 128, 16, 1024), b0 = make_desc(k_base, 16, 1024);
  wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < D / 16; ks++) {
    const uint32_t in_row = (ks & 3) * 32; // column block ks / 4, then 32 bytes per k-step
    const uint64_t a = desc_at(a0, (ks >> 2) * BM * 128 + in_row);
    const uint64_t bd = desc_at(b0, (ks >> 2) * BN * 128 + in_row);
    if constexpr (BN == 128)
      wgmma_ss_n128<0, 0>(s, a, bd, ks > 0);
    else
      wgmma_ss_n64<0, 0>(s, a, bd, ks > 0);
  }
  wgmma_commit();
}

// The probabilities of a score tile as the A fragments of O += P V's k-steps (bf16).
template <int BN>
__device__ __forceinline__ void probs_fragments(uint32_t (&a)[BN / 16][4],
                                                const float (&s)[BN / 2]) {
#pragma unroll
  for (int kk = 0; kk < BN / 16; kk++) probs_fragment<BN / 8>(a[kk], s, kk);
}

// O += P V on wgmma: P (A) from registers, V (B) N-major from its swizzled tile: a k-step is 16
// key rows (2048 bytes); the 64-column blocks of V are BN * 128 bytes apart. Issued and
// committed as one group: the caller waits, and keeps `a` unchanged until then.
template <int D, int BN>
__device__ __forceinline__ void fwd_pv_wgmma(float (&o)[D / 2], const uint32_t (&a)[BN / 16][4],
                                             uint32_t v_base) {
  const uint64_t b0 = make_desc(v_base, BN * 128, 1024);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < BN / 16; kk++) {
    const uint64_t bd = desc_at(b0, kk * 16 * 128);
    if constexpr (D == 64)
      wgmma_rs_n64<1>(o, a[kk], bd, true);
    else
      wgmma_rs_n128<1>(o, a[kk], bd, true);
  }
  wgmma_commit();
}

// Classifies key tile t (of BN keys) against query tile qt for a dense kernel's tile list
// (build_tile_list): SPARSE as in classify_tiles.
template <int BN, bool SPARSE>
__device__ __forceinline__ int classify_key_tile(const attn_params &p, int b, int qt, int t) {
  const int4 q_info = p.q_tiles[(int64_t)b * p.n_q_tiles + qt];
  const int4 k_info = p.k_tiles[(int64_t)b * p.n_k_tiles + t];
  return classify_tiles<SPARSE>(p.mask, q_info, k_info, (int64_t)(t + 1) * BN > p.tk);
}

#endif
