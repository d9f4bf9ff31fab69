// Token embedding lookup and its scatter-add backward, on the whole table or on the rows
// [vocab_start, vocab_start + rows) that one tensor-parallel rank holds.
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"

void lt_cpu_embedding_fwd(float *out, const int32_t *tokens, const float *table, int64_t n,
                          int64_t d, int64_t vocab_start, int64_t rows) {
  for (int64_t i = 0; i < n; i++) {
    const int64_t row = (int64_t)tokens[i] - vocab_start;
    // A token of another rank's rows: that rank adds its embedding (vocab-parallel lookup).
    if (row < 0 || row >= rows)
      memset(out + i * d, 0, (size_t)d * 4);
    else
      memcpy(out + i * d, table + row * d, (size_t)d * 4);
  }
}

void lt_cpu_embedding_bwd(float *dtable, const float *dout, const int32_t *tokens, int64_t n,
                          int64_t d, int64_t vocab_start, int64_t rows) {
  // Serial over tokens: a token repeated in the batch adds into the same row, and a fixed order
  // keeps the sum deterministic.
  for (int64_t i = 0; i < n; i++) {
    const int64_t row = (int64_t)tokens[i] - vocab_start;
    if (row < 0 || row >= rows) continue;
    float *dst = dtable + row * d;
    const float *g = dout + i * d;
    for (int64_t j = 0; j < d; j++) dst[j] += g[j];
  }
}
