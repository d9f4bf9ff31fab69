// What the chunk-parallel linear attention kernels share (linear_chunk.cu: the host side;
// linear_chunk_state.cu: the sequential state pass; linear_chunk_mma.cu: the mma.sync output and
// gradient kernels): the arguments every kernel reads, the chunk's decay powers and document ids,
// and the launchers of the two kernel files. The math is in linear_chunk.cu's header comment.
#ifndef LT_LINEAR_CHUNK_COMMON_CUH
#define LT_LINEAR_CHUNK_COMMON_CUH

#include "kernels/cuda/cuda_common.cuh"

enum { CHUNK = 64 }; // tokens per chunk

// What every kernel reads. Activations are (B, T, heads, D) bf16, the states (B, Hq, chunks, D,
// D) bf16, the prefix and its gradient (B, Hq, D, D) f32.
typedef struct chunk_args {
  const bf16 *q, *k, *v, *dout;
  const float *log_decay;    // (Hq) or NULL: lambda = 1
  const int32_t *doc;        // (B, T) or NULL
  const int32_t *prefix_doc; // (B) or NULL: the prefix belongs to token 0's document
  const float *prefix;       // or NULL: H_0 = 0
  float *dprefix;            // or NULL
  bf16 *h_states, *g_states;
  int64_t b, t, chunks;
  int hq, hkv;
} chunk_args;

__device__ __forceinline__ int32_t start_doc(const chunk_args &a, int64_t b) {
  return !a.doc ? 0 : a.prefix_doc ? a.prefix_doc[b] : a.doc[b * a.t];
}

// lambda^m for 0 <= m <= CHUNK.
__device__ __forceinline__ void decay_powers(float *pw, const chunk_args &a, int h) {
  const float log_decay = a.log_decay ? a.log_decay[h] : 0.0f;
  for (int m = threadIdx.x; m <= CHUNK; m += blockDim.x) pw[m] = expf(log_decay * (float)m);
}

// docs[0] = the document of H_c, docs[1 + i] = token cC + i's (i < n; 0 past it); all 0 without
// documents.
__device__ __forceinline__ void load_docs(int32_t *docs, const chunk_args &a, int64_t b, int64_t t0,
                                          int n) {
  for (int i = threadIdx.x; i <= CHUNK; i += blockDim.x) {
    int32_t d = 0;
    if (a.doc && i == 0) d = t0 > 0 ? a.doc[b * a.t + t0 - 1] : start_doc(a, b);
    if (a.doc && i > 0 && i <= n) d = a.doc[b * a.t + t0 + i - 1];
    docs[i] = d;
  }
}

// Multiplies the rows of a (CHUNK, cols) bf16 tile (row stride ld) by weight(row), 8 values at a
// time; `dst` may be `src`.
template <int COLS, typename W>
__device__ __forceinline__ void scale_rows(bf16 *dst, int ld_dst, const bf16 *src, int ld_src,
                                           W &&weight) {
  for (int i = threadIdx.x; i < CHUNK * (COLS / 8); i += blockDim.x) {
    const int r = i / (COLS / 8), c = i % (COLS / 8) * 8;
    const float w = weight(r);
    float x[8];
    load8(src + r * ld_src + c, x);
#pragma unroll
    for (int j = 0; j < 8; j++) x[j] *= w;
    store8(dst + r * ld_dst + c, x);
  }
}

template <typename K> static int allow_smem(K kernel, size_t smem, const char *what) {
  CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
           "%s: %zu bytes of shared memory", what, smem);
  return LT_OK;
}

// How linear_chunk_state.cu cuts a call's chunks for its sequential pass: `segs` segments of
// seg_chunks chunks (the last may have fewer); segs 1: one walk over all of them. workspace: the
// segments' f32 states, lt_cuda_chunk_segment_bytes of them, where segs > 1.
typedef struct chunk_segments {
  int segs;
  int64_t seg_chunks;
  float *workspace;
} chunk_segments;

// linear_chunk_state.cu: the segments for a pass over `passes` state sets (1: H; 2: H and G) of
// width d (64 or 128), from LT_LINEAR_SEGMENTS or the GPU's size; the workspace they need; and the
// pass, writing a.h_states (and a.g_states, and a.dprefix where set).
int lt_cuda_chunk_segments(lt_cuda_state *st, const chunk_args &a, int d, int passes,
                           chunk_segments *sg);
size_t lt_cuda_chunk_segment_bytes(const chunk_args &a, int d, int passes,
                                   const chunk_segments &sg);
int lt_cuda_chunk_states(lt_cuda_state *st, const chunk_args &a, int d, int passes,
                         const chunk_segments &sg);

// linear_chunk_mma.cu: o = A V + Lambda Q H_c for every chunk and query head (d: 64 or 128), from
// the states in a.h_states; and dq, dk, dv (added into) from a.h_states and a.g_states.
int lt_cuda_chunk_output(lt_cuda_state *st, const chunk_args &a, int d, bf16 *o);
int lt_cuda_chunk_grads(lt_cuda_state *st, const chunk_args &a, int d, float *dq, float *dk,
                        float *dv);
int lt_cuda_chunk_grads(lt_cuda_state *st, const chunk_args &a, int d, bf16 *dq, bf16 *dk,
                        bf16 *dv);

#endif
