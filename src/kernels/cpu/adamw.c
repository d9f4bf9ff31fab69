// AdamW (Loshchilov & Hutter 2019, Algorithm 2), written as PyTorch's torch.optim.AdamW computes
// it so a run can be checked against PyTorch step for step:
//   p -= lr * wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
#include <math.h>

#include "kernels/cpu/cpu_kernels.h"

void lt_cpu_adamw(float *param, const float *grad, float *m, float *v, const lt_adamw_args *a) {
  // Bias corrections in double, as PyTorch computes them on the host.
  double bias1 = 1.0 - pow(a->beta1, (double)a->step);
  float bias2_sqrt = (float)sqrt(1.0 - pow(a->beta2, (double)a->step));
  float step_size = (float)(a->lr / bias1);
  for (int r = 0; r < a->n_runs; r++) {
    const int64_t start = a->runs[r].start, end = start + a->runs[r].numel;
    float decay = 1.0f - a->lr * a->runs[r].weight_decay;
#pragma omp parallel for schedule(static) if (end - start > 65536)
    for (int64_t i = start; i < end; i++) {
      float g = grad[i] * a->grad_scale;
      float p = param[i] * decay;
      m[i] += (1.0f - a->beta1) * (g - m[i]); // lerp, as PyTorch
      v[i] = a->beta2 * v[i] + (1.0f - a->beta2) * g * g;
      param[i] = p - step_size * m[i] / (sqrtf(v[i]) / bias2_sqrt + a->eps);
    }
  }
}
