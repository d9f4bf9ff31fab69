// Dense attention's warp-specialized, persistent Hopper backward at d = 64 (attention_bwd_ws.cu),
// which lt_cuda_attn_bwd runs for LT_ATTN_BWD v4.
#ifndef LT_ATTENTION_BWD_WS_CUH
#define LT_ATTENTION_BWD_WS_CUH

#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/attention_tma.cuh"

// Query rows per step and keys per work item: the tiles lt_cuda_attn_setup must plan with.
enum { BWD_WS_BM = 128, BWD_WS_BN = 128 };

// The TMA descriptions the kernel copies by (Q and dO in boxes of BWD_WS_BM rows, K and V of
// BWD_WS_BN) and adds dQ's f32 tiles into the tensor by (`add`, boxes of 64 rows by 32 columns).
typedef struct bwd_ws_maps {
  CUtensorMap q, dout, k, v, add;
} bwd_ws_maps;

// Makes tm for (B, T, H, 64) bf16 q, dout, k, v and f32 dq; false where TMA cannot take them (the
// caller runs another variant).
bool lt_cuda_attn_bwd_ws_maps(bwd_ws_maps *tm, lt_tensor q, lt_tensor dout, lt_tensor k,
                              lt_tensor v, lt_tensor dq);

// Launches the backward of p (set up with BWD_WS_BM x BWD_WS_BN tiles and a dense spec: no
// pattern, gates or tile count; d = 64) over b batch rows on a Hopper build.
int lt_cuda_attn_bwd_ws(lt_cuda_state *st, const attn_params &p, const bwd_ws_maps &tm, int64_t b);

#endif
