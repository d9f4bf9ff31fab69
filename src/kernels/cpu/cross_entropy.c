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

// Vocab-parallel cross-entropy: the passes of the kernel above, on this rank's columns
// [vocab_start, vocab_start + v), with the row statistics completed over the ranks in between.
// stats is (3, n): the row max, the sum of exps below it, and the target's logit.

void lt_cpu_cross_entropy_shard_max(float *stats, const float *logits, const int32_t *targets,
                                    int64_t n, int64_t v, int64_t vocab_start) {
  float *row_max = stats, *target_logit = stats + 2 * n;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    const float *row = logits + i * v;
    float max = row[0];
    for (int64_t j = 1; j < v; j++) max = row[j] > max ? row[j] : max;
    row_max[i] = max;
    // Only the rank holding the target has its logit; the others add 0 to the sum over ranks.
    const int64_t t = (int64_t)targets[i] - vocab_start;
    target_logit[i] = t >= 0 && t < v ? row[t] : 0.0f;
  }
}

void lt_cpu_cross_entropy_shard_sum_exp(float *stats, const float *logits, int64_t n, int64_t v) {
  const float *row_max = stats;
  float *sum_exp = stats + n;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    const float *row = logits + i * v;
    double sum = 0.0;
    for (int64_t j = 0; j < v; j++) sum += exp((double)(row[j] - row_max[i]));
    sum_exp[i] = (float)sum;
  }
}

void lt_cpu_cross_entropy_shard_finish(float *losses, float *logits, const int32_t *targets,
                                       const float *stats, int64_t n, int64_t v,
                                       int64_t vocab_start, int ignore_index, bool want_grad,
                                       float grad_scale) {
  const float *row_max = stats, *sum_exp = stats + n, *target_logit = stats + 2 * n;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    float *row = logits + i * v;
    if (targets[i] == ignore_index) {
      losses[i] = 0.0f;
      if (want_grad)
        for (int64_t j = 0; j < v; j++) row[j] = 0.0f;
      continue;
    }
    const float lse = row_max[i] + logf(sum_exp[i]);
    losses[i] = lse - target_logit[i];
    if (!want_grad) continue;
    for (int64_t j = 0; j < v; j++) row[j] = grad_scale * expf(row[j] - lse);
    const int64_t t = (int64_t)targets[i] - vocab_start;
    if (t >= 0 && t < v) row[t] -= grad_scale;
  }
}
