// The task source: MQAR or passkey sequences generated on the fly (data/tasks.h). Sample i is
// sequence i of the task's seed, so any rank makes any sample and nothing is stored.
#include <stdio.h>
#include <stdlib.h>

#include "core/error.h"
#include "data/source.h"

typedef struct task_source {
  lt_source base;
  lt_task task;
} task_source;

static int task_read(lt_source *self, int64_t first, int64_t count, lt_samples out) {
  return lt_task_generate(&((task_source *)self)->task, first, count, out.tokens, out.targets,
                          out.pos);
}

static void task_describe(const lt_source *self, char *buf, size_t cap) {
  char task[256];
  lt_task_describe(&((const task_source *)self)->task, task, sizeof task);
  snprintf(buf, cap, "%s, generated: %s", self->name, task);
}

static void task_destroy(lt_source *self) {
  free(self);
}

static const lt_source_ops task_ops = {task_read, task_describe, task_destroy};

int lt_source_open_task(lt_source **out, const lt_task *task) {
  *out = NULL;
  LT_TRY(lt_task_check(task));
  task_source *s = calloc(1, sizeof *s);
  LT_CHECK(s, LT_ERR_MEMORY, "out of memory for task %s", lt_task_name(task->kind));
  s->base = (lt_source){.ops = &task_ops, .seq_len = task->seq_len};
  snprintf(s->base.name, sizeof s->base.name, "task %s", lt_task_name(task->kind));
  s->task = *task;
  *out = &s->base;
  return LT_OK;
}
