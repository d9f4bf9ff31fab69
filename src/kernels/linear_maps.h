// Linear attention's pointwise maps, shared by the CPU reference (cpu/linear_attention_io.c) and
// the CUDA kernels (cuda/linear_attention_io.cu) so that both compute the same function: the
// feature map phi on q and k, the output gate g on u, and their derivatives.
#ifndef LT_LINEAR_MAPS_H
#define LT_LINEAR_MAPS_H

#include <math.h>

#include "kernels/kernels.h"

#ifdef __CUDACC__
#define LT_MAP_FN static inline __host__ __device__
#else
#define LT_MAP_FN static inline
#endif

LT_MAP_FN float lt_sigmoid(float x) {
  return 1.0f / (1.0f + expf(-x));
}

LT_MAP_FN float lt_feature(lt_feature_map map, float x) {
  switch (map) {
  case LT_FEATURE_ELU1: // 1 + elu(x) (Katharopoulos et al. 2020)
    return x > 0.0f ? 1.0f + x : expf(x);
  case LT_FEATURE_RELU:
    return x > 0.0f ? x : 0.0f;
  case LT_FEATURE_SILU:
    return x * lt_sigmoid(x);
  case LT_FEATURE_IDENTITY:
    break;
  }
  return x;
}

LT_MAP_FN float lt_feature_grad(lt_feature_map map, float x) {
  switch (map) {
  case LT_FEATURE_ELU1:
    return x > 0.0f ? 1.0f : expf(x);
  case LT_FEATURE_RELU:
    return x > 0.0f ? 1.0f : 0.0f;
  case LT_FEATURE_SILU: {
    const float s = lt_sigmoid(x);
    return s * (1.0f + x * (1.0f - s));
  }
  case LT_FEATURE_IDENTITY:
    break;
  }
  return 1.0f;
}

LT_MAP_FN float lt_gate_value(lt_gate gate, float u) {
  switch (gate) {
  case LT_GATE_NONE:
    return 1.0f;
  case LT_GATE_LINEAR:
    return u;
  case LT_GATE_SIGMOID:
    return lt_sigmoid(u);
  case LT_GATE_SILU:
    break;
  }
  return u * lt_sigmoid(u);
}

LT_MAP_FN float lt_gate_grad(lt_gate gate, float u) {
  switch (gate) {
  case LT_GATE_NONE:
    return 0.0f;
  case LT_GATE_LINEAR:
    return 1.0f;
  case LT_GATE_SIGMOID: {
    const float s = lt_sigmoid(u);
    return s * (1.0f - s);
  }
  case LT_GATE_SILU:
    break;
  }
  const float s = lt_sigmoid(u);
  return s * (1.0f + u * (1.0f - s));
}

#undef LT_MAP_FN

#endif
