// RoPE's angles, shared by rope.cu's kernels, the attention backward's dK epilogue
// (attention_bwd_tile.cuh), which rotates dK back as it stores it into a fused dqkv, and the q|k|v
// projection's epilogue (swiglu_matmul.cu).
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

// sin and cos of RoPE's angle x = pos * inv_freq (fp32, as lt_cpu_rope_qkv_fwd takes it): x less
// the nearest multiple of 2 pi (a two-part constant: exact to ~1e-7 for the |x| < 2^17 that
// positions below 131072 give), then the special function unit's sine and cosine, ~5e-7 off in
// [-pi, pi]. A quarter of sincosf's instructions, for the q|k|v projection's epilogue (the part of
// a tile its multiplies do not hide), whose bf16 output keeps 2^-9 of the result.
__device__ __forceinline__ void rope_sincos_fast(float x, float *c, float *s) {
  const float k = rintf(x * 0.159154943091895336f);
  const float r = fmaf(-k, -1.7484555314695172e-07f, fmaf(-k, 6.28318548202514648f, x));
  __sincosf(r, s, c);
}

#endif
