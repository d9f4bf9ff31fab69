// Dense attention's warp-specialized Hopper forward (attention_fwd_ws.cu), which lt_cuda_attn_fwd
// runs for LT_ATTN_FWD v2 and v3.
#ifndef LT_ATTENTION_FWD_WS_CUH
#define LT_ATTENTION_FWD_WS_CUH

#include "kernels/cuda/attention_common.cuh"

// Query rows per block and keys per tile: the tiles lt_cuda_attn_setup must plan with.
enum { FWD_WS_BM = 128, FWD_WS_BN = 128 };

// Launches the forward of p (set up with FWD_WS_BM x FWD_WS_BN tiles, a dense spec: no pattern,
// gates or tile count) over b batch rows at head dim d (64 or 128) on a Hopper build; pingpong:
// the two warpgroups take turns at the tensor cores (v3).
int lt_cuda_attn_fwd_ws(lt_cuda_state *st, const attn_params &p, int64_t b, int d, bool pingpong);

#endif
