// Softmax cross-entropy per row, with the gradient written to dlogits (which may be the logits).
#include <math.h>

#include "kernels/cpu/cpu_kernels.h"

void lt_cpu_cross_entropy(float *losses, float *dlogits, const float *logits,
                          const int32_t *targets, int64_t n, int64_t v, int ignore_index,
                          float grad_scale) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    const float *row = logits + i * v;
    float *grad = dlogits ? dlogits + i * v : NULL;
    int32_t t = targets[i];
    if (t == ignore_index) {
      losses[i] = 0.0f;
      if (grad)
        for (int64_t j = 0; j < v; j++) grad[j] = 0.0f;
      continue;
    }
    float max = row[0];
    for (int64_t j = 1; j < v; j++) max = row[j] > max ? row[j] : max;
    double sum = 0.0;
    for (int64_t j = 0; j < v; j++) sum += exp((double)(row[j] - max));
    float lse = max + (float)log(sum);
    losses[i] = lse - row[t];
    if (grad) {
      // Element j is read before it is written, so grad may alias row.
      for (int64_t j = 0; j < v; j++) grad[j] = grad_scale * expf(row[j] - lse);
      grad[t] -= grad_scale;
    }
  }
}
