#include "data/source.h"

#include <stdio.h>

#include "core/error.h"

int lt_source_open(lt_source **out, const lt_config *cfg, lt_source_role role) {
  *out = NULL;
  if (cfg->data.task == LT_DATA_TASK_NONE) return lt_source_open_dataset(out, cfg, role);
  lt_task task;
  LT_TRY(lt_task_from_config(cfg, (lt_task_kind)cfg->data.task,
                             role == LT_SOURCE_TRAIN ? LT_TASK_TRAIN : LT_TASK_VALIDATION, &task));
  LT_TRY(lt_source_open_task(out, &task));
  if (role == LT_SOURCE_VALIDATION)
    snprintf((*out)->name, sizeof(*out)->name, "task %s, validation stream",
             lt_task_name(task.kind));
  return LT_OK;
}

int lt_source_next(lt_source *src, int64_t global_batch, int rank, int world, lt_samples out) {
  LT_ASSERT(world >= 1 && rank >= 0 && rank < world && global_batch % world == 0);
  const int64_t local = global_batch / world;
  LT_TRY(lt_source_read(src, src->next_sample + rank * local, local, out));
  src->next_sample += global_batch;
  return LT_OK;
}

int lt_source_read(lt_source *src, int64_t first, int64_t count, lt_samples out) {
  return src->ops->read(src, first, count, out);
}

void lt_source_describe(const lt_source *src, char *buf, size_t cap) {
  src->ops->describe(src, buf, cap);
}

void lt_source_close(lt_source *src) {
  if (src) src->ops->destroy(src);
}
