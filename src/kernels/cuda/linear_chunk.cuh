// Linear attention's forward and backward in parallel over chunks (linear_chunk.cu): a short
// sequential pass over the chunks writes the state before each chunk (and, for the backward, the
// state's gradient after it), then one block per chunk does the chunk's matmuls from them. It
// takes head widths D = E of 64 or 128 with bf16 activations (f32 or bf16 gradients, all three
// alike) and 16-byte aligned rows; anything else, or LT_LINEAR_KERNELS=scan in the environment,
// leaves the call to the scan (linear_scan.cuh), as does a GPU without room for the states
// (B Hq ceil(T / 64) D^2 bf16 forward, twice that backward: the kernels' workspace grows to it).
// LT_LINEAR_KERNELS=chunks turns a call they do not take into an error. The chunks' products run
// on mma.sync (linear_chunk_mma.cu). Where few heads leave the GPU idle, the sequential pass runs
// in segments (linear_chunk_state.cu); LT_LINEAR_SEGMENTS=N (N > 0) asks for N segments (at most
// one per chunk) on every call, to test them; unset or 0, the GPU's size decides. Another value
// of either variable is a config error naming it.
#ifndef LT_LINEAR_CHUNK_CUH
#define LT_LINEAR_CHUNK_CUH

#include "kernels/cuda/cuda_common.cuh"

// Each runs lt_linear_attn_fwd / _bwd (kernels.h) when the chunk kernels take the call, setting
// *done; otherwise leaves *done false and does nothing.
int lt_cuda_linear_chunk_fwd(lt_cuda_state *st, lt_tensor o, lt_tensor q, lt_tensor k, lt_tensor v,
                             lt_tensor prefix, const lt_linear_attn_spec *spec, bool *done);
int lt_cuda_linear_chunk_bwd(lt_cuda_state *st, lt_tensor dq, lt_tensor dk, lt_tensor dv,
                             lt_tensor dprefix, lt_tensor dout, lt_tensor q, lt_tensor k,
                             lt_tensor v, lt_tensor prefix, const lt_linear_attn_spec *spec,
                             bool *done);

#endif
