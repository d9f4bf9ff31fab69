// SwiGLU's backward at one hidden unit, shared by swiglu_bwd_kernel (swiglu.cu) and the fused
// backward's epilogue (swiglu_matmul.cu), which each compute s = sigmoid(gate) their own way.
#ifndef LT_SWIGLU_CUH
#define LT_SWIGLU_CUH

struct swiglu_unit {
  float h, dgate, dup;
};

// h = silu(g) u, d/dgate = d u s (1 + g (1 - s)), d/dup = d silu(g), with s = sigmoid(g) and d the
// gradient of h.
__device__ __forceinline__ swiglu_unit swiglu_backward_at(float g, float u, float d, float s) {
  return {g * s * u, d * u * s * (1.0f + g * (1.0f - s)), d * g * s};
}

#endif
