// Training samples from a token dataset: windows of T + 1 tokens (inputs and next-token
// targets) at multiples of T, visited in an order fixed by the seed.
//
// - Packing (data.packing): `stream` cuts windows across documents; `documents` cuts the same
//   windows but gives every token its document's id (attention never crosses a boundary),
//   restarts positions at each document's start, and ignores the target of a document's last
//   token (the next document's first token is not predictable from it). This is Megatron-LM's
//   reset_attention_mask + reset_position_ids + eod_mask_loss.
// - Validation split: a fraction of the windows, chosen by a permutation keyed by the seed, is
//   held out; the training loader never reads them and the evaluation loader reads only them,
//   always in the same order.
// - Data parallel: the global batch of a step is samples [next, next + B); rank r of W reads its
//   B / W consecutive ones, so the ranks together read exactly what one process would.
// The loader's whole state is next_sample, which checkpoints save.
#ifndef LT_LOADER_H
#define LT_LOADER_H

#include <stdint.h>

#include "core/config.h"
#include "data/dataset.h"
#include "data/doc_index.h"

typedef enum lt_loader_role {
  LT_LOADER_TRAIN, // the windows not held out, reshuffled every epoch
  LT_LOADER_EVAL,  // the held-out windows (all of them when none are), in one fixed order
} lt_loader_role;

typedef struct lt_loader_spec {
  int64_t seq_len;
  lt_packing packing;
  uint64_t seed;
  double held_out; // fraction of the dataset's windows held out for validation
  lt_loader_role role;
} lt_loader_spec;

// B*T int32 each, in host memory; doc is NULL in stream packing.
typedef struct lt_samples {
  int32_t *tokens, *targets, *pos, *doc;
} lt_samples;

typedef struct lt_loader {
  lt_dataset *data;
  lt_loader_spec spec;
  int64_t n_total;   // windows in the dataset: window w covers tokens [w T, w T + T + 1)
  int64_t n_held;    // of those, held out for validation
  int64_t n_windows; // this loader's windows (n_total - n_held for training)
  int64_t next_sample;
  int32_t *window;   // T + 1 tokens
  uint64_t *starts;  // document starts inside a window
  lt_doc_index docs; // documents packing only
} lt_loader;

int lt_loader_create(lt_loader *loader, lt_dataset *data, const lt_loader_spec *spec);
void lt_loader_destroy(lt_loader *loader);
// This rank's share of the next global batch of `global_batch` samples, into out (global_batch
// / world samples); advances next_sample by global_batch.
int lt_loader_next(lt_loader *loader, int64_t global_batch, int rank, int world, lt_samples out);
// Samples [first, first + count) into out, whatever next_sample is.
int lt_loader_read(lt_loader *loader, int64_t first, int64_t count, lt_samples out);
// Which window of the dataset sample `index` reads.
int64_t lt_loader_window_of(const lt_loader *loader, int64_t index);

#endif
