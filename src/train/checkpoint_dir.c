// The checkpoints of a run: finding the newest complete one and keeping the last K.
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "core/fsutil.h"
#include "train/checkpoint.h"
#include "train/checkpoint_manifest.h"

void lt_checkpoint_root(const char *run_dir, char *out, size_t cap) {
  snprintf(out, cap, "%s/checkpoints", run_dir);
}

// The step of a complete checkpoint folder "step_N" (digits only) holding manifest.txt (the file
// written last), else -1.
static int64_t complete_step(const char *root, const char *name) {
  if (strncmp(name, "step_", 5) != 0 || !name[5]) return -1;
  int64_t step = 0;
  for (const char *p = name + 5; *p; p++) {
    if (*p < '0' || *p > '9' || step > INT64_MAX / 10 - 9) return -1;
    step = step * 10 + (*p - '0');
  }
  char canonical[32]; // only the names this writer makes: step_%08 with no other spelling
  snprintf(canonical, sizeof canonical, "step_%08" PRId64, step);
  if (strcmp(canonical, name) != 0) return -1;
  char manifest[LT_PATH_MAX + 300];
  snprintf(manifest, sizeof manifest, "%s/%s/%s", root, name, LT_MANIFEST_FILE);
  return access(manifest, F_OK) == 0 ? step : -1;
}

typedef struct step_list {
  int64_t *steps;
  int n, capacity;
} step_list;

// The steps of every complete checkpoint under root, ascending; with `stale`, also removes the
// temporary folders (".tmp-", ".old-") of writes that a crash interrupted.
static int list_steps(const char *root, step_list *list, bool stale) {
  *list = (step_list){0};
  DIR *d = opendir(root);
  if (!d && errno == ENOENT) return LT_OK;
  LT_CHECK(d, LT_ERR_IO, "%s: cannot list: %s", root, strerror(errno));
  int rc = LT_OK;
  for (struct dirent *e; rc == LT_OK && (e = readdir(d));) {
    if (stale && (strncmp(e->d_name, ".tmp-", 5) == 0 || strncmp(e->d_name, ".old-", 5) == 0)) {
      char path[LT_PATH_MAX + 300];
      snprintf(path, sizeof path, "%s/%s", root, e->d_name);
      rc = lt_remove_tree(path);
      continue;
    }
    int64_t step = complete_step(root, e->d_name);
    if (step < 0) continue;
    if (list->n == list->capacity) {
      list->capacity = list->capacity ? 2 * list->capacity : 16;
      int64_t *grown = realloc(list->steps, (size_t)list->capacity * sizeof *grown);
      if (!grown) {
        rc = lt_fail(LT_ERR_MEMORY, "out of memory listing %s", root);
        break;
      }
      list->steps = grown;
    }
    list->steps[list->n++] = step;
  }
  closedir(d);
  for (int i = 1; i < list->n; i++) // insertion sort: a run keeps a handful
    for (int j = i; j > 0 && list->steps[j - 1] > list->steps[j]; j--) {
      int64_t t = list->steps[j];
      list->steps[j] = list->steps[j - 1], list->steps[j - 1] = t;
    }
  return rc;
}

int lt_checkpoint_latest(const char *root, char *out, size_t cap) {
  step_list list;
  LT_TRY(list_steps(root, &list, false));
  if (list.n == 0)
    snprintf(out, cap, "%s", "");
  else
    snprintf(out, cap, "%s/step_%08" PRId64, root, list.steps[list.n - 1]);
  free(list.steps);
  return LT_OK;
}

int lt_checkpoint_prune(const char *root, int keep) {
  step_list list;
  LT_TRY(list_steps(root, &list, true));
  int rc = LT_OK;
  for (int i = 0; i < list.n - keep && rc == LT_OK; i++) {
    char path[LT_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/step_%08" PRId64, root, list.steps[i]);
    // The folder stops counting as a checkpoint once its manifest is gone: a crash halfway
    // through the removal cannot leave a half-deleted checkpoint that --resume auto would pick.
    char manifest[LT_PATH_MAX + 48];
    snprintf(manifest, sizeof manifest, "%s/%s", path, LT_MANIFEST_FILE);
    if (unlink(manifest) != 0 && errno != ENOENT)
      rc = lt_fail(LT_ERR_IO, "%s: cannot delete: %s", manifest, strerror(errno));
    if (rc == LT_OK) rc = lt_remove_tree(path);
  }
  free(list.steps);
  return rc;
}
