// Where the trainer's samples come from, chosen from the config when the trainer is created: a
// token dataset read through the loader (data.path, data/loader.h), or a synthetic task generated
// on the fly (data.task, data/tasks.h). The trainer sees only this interface.
//
// Both give sample i of a role the same tokens on every rank and after every restart, so a
// source's whole state is next_sample, the count of samples consumed (over all ranks), which
// checkpoints save as the data position.
//
// Data parallel: the global batch of a step is samples [next_sample, next_sample + B); rank r of
// W reads its B / W consecutive ones from next_sample + r * B / W, so the ranks together read
// exactly what one process would.
#ifndef LT_SOURCE_H
#define LT_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "data/loader.h"
#include "data/tasks.h"

typedef enum lt_source_role {
  LT_SOURCE_TRAIN,      // the training samples
  LT_SOURCE_VALIDATION, // the held-out samples of the periodic validation loss
} lt_source_role;

typedef struct lt_source lt_source;
typedef struct lt_source_ops {
  // Samples [first, first + count) into out, count * seq_len tokens each.
  int (*read)(lt_source *self, int64_t first, int64_t count, lt_samples out);
  // What the samples are, for the run's log ("fortunes.h5, 2561459 tokens, ...").
  void (*describe)(const lt_source *self, char *buf, size_t cap);
  void (*destroy)(lt_source *self);
} lt_source_ops;

struct lt_source {
  const lt_source_ops *ops;
  int64_t seq_len;
  int64_t next_sample;
  bool documents;         // the samples carry document ids (lt_samples.doc is filled)
  char name[LT_PATH_MAX]; // the dataset's path or "task mqar", for messages
  const char *unchecked;  // a dataset whose metadata no checksum covers: why (dataset.h); or NULL
};

// The source of `role` that cfg asks for: data.task's generator, or data.path's loader (for
// validation, data.val_fraction's held-out windows or data.val_path). *out is NULL for a
// validation source that the config does not have (no held-out data).
int lt_source_open(lt_source **out, const lt_config *cfg, lt_source_role role);
// The two kinds, for callers that build them directly.
int lt_source_open_dataset(lt_source **out, const lt_config *cfg, lt_source_role role);
int lt_source_open_task(lt_source **out, const lt_task *task);
// This rank's share of the next global batch of `global_batch` samples (global_batch / world of
// them) into out; advances next_sample by global_batch.
int lt_source_next(lt_source *src, int64_t global_batch, int rank, int world, lt_samples out);
// Samples [first, first + count) into out, whatever next_sample is (which stays).
int lt_source_read(lt_source *src, int64_t first, int64_t count, lt_samples out);
void lt_source_describe(const lt_source *src, char *buf, size_t cap);
void lt_source_close(lt_source *src); // NULL is fine

#endif
