// Token embedding lookup and its scatter-add backward.
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"

void lt_cpu_embedding_fwd(float *out, const int32_t *tokens, const float *table, int64_t n,
                          int64_t d) {
  for (int64_t i = 0; i < n; i++)
    memcpy(out + i * d, table + (int64_t)tokens[i] * d, (size_t)d * 4);
}

void lt_cpu_embedding_bwd(float *dtable, const float *dout, const int32_t *tokens, int64_t n,
                          int64_t d) {
  // Serial over tokens: a token repeated in the batch adds into the same row, and a fixed order
  // keeps the sum deterministic.
  for (int64_t i = 0; i < n; i++) {
    float *row = dtable + (int64_t)tokens[i] * d;
    const float *g = dout + i * d;
    for (int64_t j = 0; j < d; j++) row[j] += g[j];
  }
}
