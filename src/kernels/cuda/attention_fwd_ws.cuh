// Dense attention's warp-specialized, persistent Hopper forward (attention_fwd_ws.cu), which
// lt_cuda_attn_fwd runs for LT_ATTN_FWD v2 and v3.
#ifndef LT_ATTENTION_FWD_WS_CUH
#define LT_ATTENTION_FWD_WS_CUH

#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/attention_tma.cuh"

// Query rows per work item and keys per tile: the tiles lt_cuda_attn_setup must plan with.
enum { FWD_WS_BM = 192, FWD_WS_BN = 128 };

// The TMA descriptions of Q (boxes of FWD_WS_BM rows), K and V (FWD_WS_BN rows) that the kernel
// copies its tiles by.
typedef struct fwd_ws_maps {
  CUtensorMap q, k, v;
} fwd_ws_maps;

// Makes tm for (B, T, H, D) bf16 q, k and v; false where TMA cannot take them (the caller runs v1).
bool lt_cuda_attn_fwd_ws_maps(fwd_ws_maps *tm, lt_tensor q, lt_tensor k, lt_tensor v);

// Launches the forward of p (set up with FWD_WS_BM x FWD_WS_BN tiles, a dense spec: no pattern,
// gates or tile count) over b batch rows at head dim d (64 or 128) on a Hopper build; pingpong:
// the two warpgroups take turns at the tensor cores (v3).
int lt_cuda_attn_fwd_ws(lt_cuda_state *st, const attn_params &p, const fwd_ws_maps &tm, int64_t b,
                        int d, bool pingpong);

#endif
