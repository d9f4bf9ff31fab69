#include "data/loader.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/rng.h"
#include "data/permutation.h"

int lt_loader_create(lt_loader *loader, lt_dataset *data, int64_t seq_len, uint64_t seed) {
  *loader = (lt_loader){.data = data, .seq_len = seq_len, .seed = seed};
  loader->n_windows = (data->n_tokens - 1) / seq_len;
  LT_CHECK(loader->n_windows >= 1, LT_ERR_DATA,
           "%s: has %lld tokens, too few for one sequence of train.seq_len %lld + 1: lower "
           "train.seq_len or prepare more text",
           data->path, (long long)data->n_tokens, (long long)seq_len);
  loader->window = malloc((size_t)(seq_len + 1) * sizeof(int32_t));
  LT_CHECK(loader->window, LT_ERR_MEMORY, "out of memory for the data loader");
  return LT_OK;
}

void lt_loader_destroy(lt_loader *loader) {
  free(loader->window);
  *loader = (lt_loader){0};
}

int64_t lt_loader_window_of(const lt_loader *loader, int64_t index) {
  uint64_t epoch = (uint64_t)(index / loader->n_windows);
  uint64_t key = lt_rng_split(lt_rng_seed(loader->seed), epoch).key;
  lt_permutation perm = lt_permutation_make((uint64_t)loader->n_windows, key);
  return (int64_t)lt_permutation_apply(&perm, (uint64_t)(index % loader->n_windows));
}

int lt_loader_next(lt_loader *loader, int64_t B, int32_t *tokens, int32_t *targets, int32_t *pos) {
  const int64_t T = loader->seq_len;
  for (int64_t b = 0; b < B; b++) {
    int64_t w = lt_loader_window_of(loader, loader->next_sample);
    LT_TRY(lt_dataset_read(loader->data, w * T, T + 1, loader->window));
    memcpy(tokens + b * T, loader->window, (size_t)T * sizeof(int32_t));
    memcpy(targets + b * T, loader->window + 1, (size_t)T * sizeof(int32_t));
    for (int64_t t = 0; t < T; t++) pos[b * T + t] = (int32_t)t;
    loader->next_sample++;
  }
  return LT_OK;
}
