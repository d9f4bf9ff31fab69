#include "data/loader.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/rng.h"
#include "data/permutation.h"
#include "layers/layer.h" // LT_IGNORE_INDEX: the batch contract

int lt_loader_create(lt_loader *loader, lt_dataset *data, const lt_loader_spec *spec) {
  *loader = (lt_loader){.data = data, .spec = *spec};
  const int64_t T = spec->seq_len;
  loader->n_total = data->n_tokens > 0 ? (data->n_tokens - 1) / T : 0;
  LT_CHECK(loader->n_total >= 1, LT_ERR_DATA,
           "%s: has %lld tokens, too few for one sequence of train.seq_len %lld + 1: lower "
           "train.seq_len or prepare more text",
           data->path, (long long)data->n_tokens, (long long)T);
  if (spec->held_out > 0) {
    loader->n_held = (int64_t)llround(spec->held_out * (double)loader->n_total);
    if (loader->n_held < 1) loader->n_held = 1;
    LT_CHECK(loader->n_held < loader->n_total, LT_ERR_DATA,
             "%s: data.val_fraction %g holds out all %lld windows of %lld tokens: lower "
             "data.val_fraction or prepare more text",
             data->path, spec->held_out, (long long)loader->n_total, (long long)T + 1);
  }
  loader->n_windows = spec->role == LT_LOADER_TRAIN ? loader->n_total - loader->n_held
                      : loader->n_held              ? loader->n_held
                                                    : loader->n_total;
  loader->window = malloc((size_t)(T + 1) * sizeof *loader->window);
  loader->starts = malloc((size_t)(T + 1) * sizeof *loader->starts);
  LT_CHECK(loader->window && loader->starts, LT_ERR_MEMORY, "out of memory for the data loader");
  if (spec->packing == LT_PACK_DOCUMENTS) return lt_doc_index_create(&loader->docs, data);
  return LT_OK;
}

void lt_loader_destroy(lt_loader *loader) {
  free(loader->window);
  free(loader->starts);
  lt_doc_index_destroy(&loader->docs);
  *loader = (lt_loader){0};
}

// The permutation of all windows that decides which are held out: its first n_held positions.
static uint64_t split_window(const lt_loader *loader, uint64_t position) {
  uint64_t key = lt_rng_split_name(lt_rng_seed(loader->spec.seed), "validation split").key;
  lt_permutation split = lt_permutation_make((uint64_t)loader->n_total, key);
  return lt_permutation_apply(&split, position);
}

int64_t lt_loader_window_of(const lt_loader *loader, int64_t index) {
  const uint64_t n = (uint64_t)loader->n_windows;
  if (loader->spec.role == LT_LOADER_EVAL)
    return (int64_t)split_window(loader, (uint64_t)index % n);
  uint64_t epoch = (uint64_t)index / n;
  uint64_t key = lt_rng_split(lt_rng_seed(loader->spec.seed), epoch).key;
  lt_permutation perm = lt_permutation_make(n, key);
  uint64_t local = lt_permutation_apply(&perm, (uint64_t)index % n);
  if (loader->n_held == 0) return (int64_t)local;
  return (int64_t)split_window(loader, (uint64_t)loader->n_held + local);
}

// Documents packing of the window starting at token `first`: document ids count up from 0 at
// each document start, positions restart there, and a target across a boundary is ignored.
static int pack_documents(lt_loader *loader, uint64_t first, int32_t *targets, int32_t *pos,
                          int32_t *doc) {
  const int64_t T = loader->spec.seq_len;
  int64_t n_starts;
  LT_TRY(lt_doc_index_starts(&loader->docs, first, first + (uint64_t)T + 1, loader->starts,
                             &n_starts));
  int64_t next = 0; // the next document start, as an index into the window
  int32_t id = 0, p = 0;
  for (int64_t t = 0; t < T; t++) {
    if (next < n_starts && loader->starts[next] == first + (uint64_t)t) id++, p = 0, next++;
    doc[t] = id;
    pos[t] = p++;
    if (next < n_starts && loader->starts[next] == first + (uint64_t)t + 1)
      targets[t] = LT_IGNORE_INDEX;
  }
  return LT_OK;
}

int lt_loader_read(lt_loader *loader, int64_t first, int64_t count, lt_samples out) {
  const int64_t T = loader->spec.seq_len;
  for (int64_t b = 0; b < count; b++) {
    const int64_t w = lt_loader_window_of(loader, first + b);
    LT_TRY(lt_dataset_read(loader->data, w * T, T + 1, loader->window));
    int32_t *tokens = out.tokens + b * T, *targets = out.targets + b * T, *pos = out.pos + b * T;
    memcpy(tokens, loader->window, (size_t)T * sizeof *tokens);
    memcpy(targets, loader->window + 1, (size_t)T * sizeof *targets);
    if (loader->spec.packing == LT_PACK_DOCUMENTS) {
      LT_TRY(pack_documents(loader, (uint64_t)(w * T), targets, pos, out.doc + b * T));
    } else {
      for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)t;
    }
  }
  return LT_OK;
}

int lt_loader_next(lt_loader *loader, int64_t global_batch, int rank, int world, lt_samples out) {
  LT_ASSERT(world >= 1 && rank >= 0 && rank < world && global_batch % world == 0);
  const int64_t local = global_batch / world;
  LT_TRY(lt_loader_read(loader, loader->next_sample + rank * local, local, out));
  loader->next_sample += global_batch;
  return LT_OK;
}
