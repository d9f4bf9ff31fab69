#include "parallel/context.h"

#include <string.h>

#include "core/error.h"

const lt_group *lt_cp_group(const lt_mesh *mesh) {
  if (!mesh || mesh->axis[LT_AXIS_CP].size == 1) return NULL;
  return &mesh->axis[LT_AXIS_CP];
}

int64_t lt_cp_local_len(int64_t seq_len, const lt_mesh *mesh) {
  const lt_group *cp = lt_cp_group(mesh);
  return cp ? seq_len / cp->size : seq_len;
}

void lt_zigzag_keep_local(int32_t *tokens, int64_t rows, int64_t seq_len, const lt_mesh *mesh) {
  const lt_group *cp = lt_cp_group(mesh);
  if (!cp || !tokens) return;
  const int64_t chunk = seq_len / (2 * cp->size), local = 2 * chunk;
  // Row r's local tokens go to [r * local, (r + 1) * local), never past where they are read from
  // (r * seq_len + chunk index * chunk, and later rows further on): moving forward is safe.
  for (int64_t r = 0; r < rows; r++)
    for (int half = 0; half < 2; half++) {
      const int64_t from = r * seq_len + lt_zigzag_chunk(cp->rank, cp->size, half) * chunk;
      memmove(tokens + r * local + half * chunk, tokens + from, sizeof(int32_t) * (size_t)chunk);
    }
}

void lt_zigzag_keep_local_samples(lt_samples *samples, int64_t rows, int64_t seq_len,
                                  const lt_mesh *mesh) {
  int32_t *arrays[4] = {samples->tokens, samples->targets, samples->pos, samples->doc};
  for (int i = 0; i < 4; i++) lt_zigzag_keep_local(arrays[i], rows, seq_len, mesh);
}

int lt_cp_check_planned(const char *what, lt_tensor q, int64_t B, int64_t T) {
  if (q.shape[0] == B && q.shape[1] == T) return LT_OK;
  return lt_fail_internal(__FILE__, __LINE__, "%s on (%lld, %lld) tokens, planned for (%lld, %lld)",
                          what, (long long)q.shape[0], (long long)q.shape[1], (long long)B,
                          (long long)T);
}

int lt_cp_mean(const lt_group *cp, lt_ctx *ctx, lt_tensor t) {
  if (!cp) return LT_OK;
  LT_TRY(lt_all_reduce_sum(cp, t));
  return lt_scale(ctx, t, 1.0f / (float)cp->size);
}
