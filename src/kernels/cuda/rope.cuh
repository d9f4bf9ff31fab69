// RoPE's angles, shared by rope.cu's kernels and the attention backward's dK epilogue
// (attention_bwd_tile.cuh), which rotates dK back as it stores it into a fused dqkv.
#ifndef LT_ROPE_CUH
#define LT_ROPE_CUH

#include <stdint.h>

// theta^(-2i/D), the frequency of rotation pair i, in fp32 as lt_cpu_rope_qkv_fwd computes it.
__device__ __forceinline__ float rope_inv_freq(int i, int d, float theta) {
  return 1.0f / powf(theta, (float)(2 * i) / (float)d);
}

// cos and sign * sin of pos * inv_freq.
__device__ __forceinline__ void rope_sincos(int32_t pos, float inv_freq, float sign, float *c,
                                            float *s) {
  sincosf((float)pos * inv_freq, s, c);
  *s *= sign;
}

// Both for pair i at position pos.
__device__ __forceinline__ void rope_angle(int32_t pos, int i, int d, float theta, float sign,
                                           float *c, float *s) {
  rope_sincos(pos, rope_inv_freq(i, d, theta), sign, c, s);
}

#endif
