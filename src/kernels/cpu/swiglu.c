// SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer"): h = silu(gate) * up.
#include <math.h>

#include "kernels/cpu/cpu_kernels.h"

void lt_cpu_swiglu_fwd(float *h, const float *gate_up, int64_t n, int64_t f) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    const float *g = gate_up + i * 2 * f, *u = g + f;
    for (int64_t j = 0; j < f; j++) h[i * f + j] = g[j] / (1.0f + expf(-g[j])) * u[j];
  }
}

// d/dg silu(g) = s (1 + g (1 - s)) with s = sigmoid(g). h (when not NULL) as lt_cpu_swiglu_fwd.
void lt_cpu_swiglu_bwd(float *dgate_up, float *h, const float *dh, const float *gate_up, int64_t n,
                       int64_t f) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    const float *g = gate_up + i * 2 * f, *u = g + f;
    float *dg = dgate_up + i * 2 * f, *du = dg + f;
    for (int64_t j = 0; j < f; j++) {
      float s = 1.0f / (1.0f + expf(-g[j]));
      float d = dh[i * f + j];
      du[j] = d * g[j] * s;
      dg[j] = d * u[j] * s * (1.0f + g[j] * (1.0f - s));
      if (h) h[i * f + j] = g[j] / (1.0f + expf(-g[j])) * u[j];
    }
  }
}
