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
  char path[LT_PATH_MAX + 300];
  snprintf(path, sizeof path, "%s/%s/%s", root, name, LT_MANIFEST_FILE);
  if (access(path, F_OK) == 0) return step;
  // The folder is renamed into place only once complete, so one with meta.h5 and no manifest
  // was written by a longtrain from before manifests (or copied without it): -2, never skipped.
  snprintf(path, sizeof path, "%s/%s/meta.h5", root, name);
  return access(path, F_OK) == 0 ? -2 : -1;
}

typedef struct step_list {
  int64_t *steps;
  int n, capacity;
} step_list;

// The steps of every complete checkpoint under root, ascending; with `stale`, also removes the
// temporary folders (".tmp-", ".old-") of writes that a crash interrupted. A step folder without a
// manifest but with meta.h5 is an error (complete_step).
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
    // Skipping it would let --resume auto start over and a save of its step replace it.
    if (step == -2)
      rc = lt_fail(LT_ERR_CKPT,
                   "%s/%s has meta.h5 but no %s: a checkpoint from a longtrain that wrote no "
                   "manifests, or an incomplete copy; move it out of %s (or resume it with the "
                   "longtrain that wrote it)",
                   root, e->d_name, LT_MANIFEST_FILE, root);
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
    // Renamed aside first (".old-", which list_steps removes as stale): a crash halfway through
    // the removal leaves no half-deleted step folder for --resume auto to pick or to refuse.
    char old[LT_PATH_MAX + 48];
    snprintf(old, sizeof old, "%s/.old-step_%08" PRId64, root, list.steps[i]);
    rc = lt_remove_tree(old);
    if (rc == LT_OK && rename(path, old) != 0)
      rc = lt_fail(LT_ERR_IO, "%s: cannot move aside to delete it: %s", path, strerror(errno));
    if (rc == LT_OK) rc = lt_fsync_path(root);
    if (rc == LT_OK) rc = lt_remove_tree(old);
  }
  free(list.steps);
  return rc;
}
