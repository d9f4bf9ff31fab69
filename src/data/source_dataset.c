// The dataset source: windows of a token dataset through the loader (data/loader.h), the
// training windows or the held-out ones.
#include <stdio.h>
#include <stdlib.h>

#include "core/error.h"
#include "data/source.h"

typedef struct dataset_source {
  lt_source base;
  lt_source_role role;
  lt_dataset data;
  lt_loader loader;
} dataset_source;

static int dataset_read(lt_source *self, int64_t first, int64_t count, lt_samples out) {
  return lt_loader_read(&((dataset_source *)self)->loader, first, count, out);
}

static void dataset_describe(const lt_source *self, char *buf, size_t cap) {
  const dataset_source *s = (const dataset_source *)self;
  static const char *packing[] = {"stream", "documents"};
  if (s->role == LT_SOURCE_VALIDATION)
    snprintf(buf, cap, "%lld windows of %s", (long long)s->loader.n_windows, s->data.path);
  else
    snprintf(buf, cap,
             "%s, %lld tokens, %lld documents, %lld training windows of %lld (%s packing)",
             s->data.path, (long long)s->data.n_tokens, (long long)s->data.n_docs,
             (long long)s->loader.n_windows, (long long)self->seq_len + 1,
             packing[s->loader.spec.packing]);
}

static void dataset_destroy(lt_source *self) {
  dataset_source *s = (dataset_source *)self;
  lt_loader_destroy(&s->loader);
  lt_dataset_close(&s->data);
  free(s);
}

static const lt_source_ops dataset_ops = {dataset_read, dataset_describe, dataset_destroy};

int lt_source_open_dataset(lt_source **out, const lt_config *cfg, lt_source_role role) {
  *out = NULL;
  const lt_data_config *d = &cfg->data;
  LT_CHECK(d->path[0], LT_ERR_CONFIG,
           "%s: data.path is not set: give the dataset made by `longtrain prepare`, or a "
           "synthetic task with data.task",
           cfg->source);
  if (role == LT_SOURCE_VALIDATION && d->val_fraction == 0 && !d->val_path[0]) return LT_OK;
  // Validation reads data.val_path whole, or data.val_fraction's windows of data.path.
  const bool separate = role == LT_SOURCE_VALIDATION && d->val_path[0];
  const char *key = separate ? "data.val_path" : "data.path",
             *path = separate ? d->val_path : d->path;
  dataset_source *s = calloc(1, sizeof *s);
  LT_CHECK(s, LT_ERR_MEMORY, "out of memory opening %s", path);
  s->base = (lt_source){.ops = &dataset_ops,
                        .seq_len = cfg->train.seq_len,
                        .documents = d->packing == LT_PACK_DOCUMENTS};
  s->role = role;
  snprintf(s->base.name, sizeof s->base.name, "%s", path);
  *out = &s->base; // from here on lt_source_close frees it, whatever fails
  int rc = lt_dataset_open(&s->data, path);
  if (rc) return lt_error_context(rc, "%s", key);
  s->base.unchecked = s->data.unchecked;
  LT_CHECK(s->data.vocab_size <= cfg->model.vocab_size, LT_ERR_DATA,
           "%s: %s has vocab_size %d but model.vocab_size is %d: set model.vocab_size to "
           "at least %d",
           key, path, s->data.vocab_size, cfg->model.vocab_size, s->data.vocab_size);
  lt_loader_spec spec = {.seq_len = cfg->train.seq_len,
                         .packing = (lt_packing)d->packing,
                         .seed = (uint64_t)cfg->run.seed,
                         .held_out = separate ? 0 : d->val_fraction,
                         .role = role == LT_SOURCE_TRAIN ? LT_LOADER_TRAIN : LT_LOADER_EVAL};
  return lt_loader_create(&s->loader, &s->data, &spec);
}
