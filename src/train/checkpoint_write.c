// Writing a checkpoint: shards of tensor slices, then meta.h5, then manifest.txt, then fsync and
// one rename.
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/device.h"
#include "core/error.h"
#include "core/fsutil.h"
#include "core/h5util.h"
#include "train/checkpoint.h"
#include "train/checkpoint_manifest.h"

// Tensors are stored in chunks of about 1 MiB (whole rows along dim 0): small enough that a
// reader of one slice decodes little it does not need, large enough that the chunk index stays
// small.
enum { CHUNK_ELEMS = 1 << 18 };

const char *lt_ckpt_kind_group(lt_ckpt_kind kind) {
  static const char *groups[LT_CKPT_KINDS] = {"weights", "adam_m", "adam_v"};
  return kind < LT_CKPT_KINDS ? groups[kind] : "?";
}

void lt_checkpoint_meta_free(lt_checkpoint_meta *meta) {
  free(meta->config_yaml);
  meta->config_yaml = NULL;
}

// The one message every failed write gives: where, why, and what to do.
static int write_failed(const lt_checkpoint_writer *w, const char *what, int err) {
  return lt_fail(LT_ERR_IO,
                 "%s: %s failed: %s: free space under run.dir (or fix its permissions) and rerun "
                 "with --resume auto; the earlier checkpoints are intact",
                 w->dir, what, err ? strerror(err) : "HDF5 error");
}

// LT_FAULT_INJECT=ckpt_write:after_bytes=N makes the writer fail as a full disk would once this
// process has written N bytes of tensors: the test of what a failed save leaves behind (the
// checkpoints before it complete, the one that crosses N fails), where no small filesystem can
// be mounted. Counted over the process, as a disk fills over a run.
static int64_t injected_written = 0;

static int64_t injected_limit(void) {
  const char *spec = getenv("LT_FAULT_INJECT");
  long long n;
  if (spec && sscanf(spec, "ckpt_write:after_bytes=%lld", &n) == 1 && n >= 0) return n;
  return -1;
}

int lt_checkpoint_begin(lt_checkpoint_writer *w, const char *root, int64_t step, int shard,
                        int n_shards) {
  *w = (lt_checkpoint_writer){.step = step, .shard = shard, .n_shards = n_shards, .file = -1};
  for (int k = 0; k < LT_CKPT_KINDS; k++) w->groups[k] = -1;
  w->fail_after_bytes = injected_limit();
  snprintf(w->root, sizeof w->root, "%s", root);
  snprintf(w->dir, sizeof w->dir, "%s/step_%08" PRId64, root, step);
  snprintf(w->tmp, sizeof w->tmp, "%s/.tmp-step_%08" PRId64, root, step);
  snprintf(w->shard_path, sizeof w->shard_path, "%s/shard-%05d-of-%05d.h5", w->tmp, shard,
           n_shards);
  int rc = lt_make_dirs(root);
  if (rc) return lt_error_context(rc, "checkpoint (check run.dir)");
  if (shard == 0) {
    LT_TRY(lt_remove_tree(w->tmp));
    LT_CHECK(mkdir(w->tmp, 0775) == 0, LT_ERR_IO, "%s: cannot create: %s (check run.dir)", w->tmp,
             strerror(errno));
  }
  errno = 0;
  w->file = lt_h5_create(w->shard_path);
  if (w->file < 0) return write_failed(w, "creating the shard", errno);
  hid_t gcpl = lt_h5_no_times(H5Pcreate(H5P_GROUP_CREATE));
  for (int k = 0; k < LT_CKPT_KINDS; k++)
    w->groups[k] = H5Gcreate2(w->file, lt_ckpt_kind_group(k), H5P_DEFAULT, gcpl, H5P_DEFAULT);
  H5Pclose(gcpl);
  for (int k = 0; k < LT_CKPT_KINDS; k++)
    if (w->groups[k] < 0) return write_failed(w, "creating the shard's groups", errno);
  int attrs = lt_h5_write_i64(w->file, "format_version", LT_CHECKPOINT_FORMAT_VERSION) |
              lt_h5_write_i64(w->file, "shard", shard) |
              lt_h5_write_i64(w->file, "n_shards", n_shards);
  if (attrs) return write_failed(w, "writing the shard's attributes", errno);
  return LT_OK;
}

int lt_checkpoint_write_slice(lt_checkpoint_writer *w, lt_ckpt_kind kind, const char *name,
                              int ndim, const int64_t *logical, const int64_t *offset,
                              const int64_t *extent, const float *data) {
  LT_ASSERT(ndim >= 1 && ndim <= LT_MAX_DIMS && w->file >= 0);
  hsize_t dims[LT_MAX_DIMS], chunk[LT_MAX_DIMS];
  int64_t numel = 1, row = 1;
  for (int d = 0; d < ndim; d++) {
    LT_ASSERT(extent[d] >= 1 && offset[d] >= 0 && offset[d] + extent[d] <= logical[d]);
    dims[d] = chunk[d] = (hsize_t)extent[d];
    numel *= extent[d];
    if (d > 0) row *= extent[d];
  }
  chunk[0] = (hsize_t)(CHUNK_ELEMS / row > 0 ? CHUNK_ELEMS / row : 1);
  if (chunk[0] > dims[0]) chunk[0] = dims[0];
  const int64_t bytes = numel * (int64_t)sizeof(float);
  if (w->fail_after_bytes >= 0 && injected_written + bytes > w->fail_after_bytes) {
    char what[160];
    snprintf(what, sizeof what, "writing %s/%s (injected by LT_FAULT_INJECT)",
             lt_ckpt_kind_group(kind), name);
    return write_failed(w, what, ENOSPC);
  }
  hid_t space = H5Screate_simple(ndim, dims, NULL),
        dcpl = lt_h5_no_times(H5Pcreate(H5P_DATASET_CREATE));
  H5Pset_chunk(dcpl, ndim, chunk);
  H5Pset_fletcher32(dcpl);
  errno = 0;
  hid_t set =
      H5Dcreate2(w->groups[kind], name, H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  herr_t rc = set < 0 ? -1 : H5Dwrite(set, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
  int err = errno;
  if (rc >= 0)
    rc = lt_h5_write_i64_array(set, "offset", offset, ndim) |
         lt_h5_write_i64_array(set, "logical_shape", logical, ndim);
  if (set >= 0 && H5Dclose(set) < 0) rc = -1;
  H5Pclose(dcpl);
  H5Sclose(space);
  if (rc < 0) {
    char what[160];
    snprintf(what, sizeof what, "writing %s/%s", lt_ckpt_kind_group(kind), name);
    return write_failed(w, what, err ? err : errno);
  }
  injected_written += bytes;
  return LT_OK;
}

static size_t clamp(size_t x, size_t lo, size_t hi) {
  return x < lo ? lo : x > hi ? hi : x;
}

int lt_checkpoint_write_params(lt_checkpoint_writer *w, const lt_params *params, bool optimizer) {
  const float *buffers[LT_CKPT_KINDS] = {params->master, params->adam_m, params->adam_v};
  const size_t first[LT_CKPT_KINDS] = {0, params->state_start, params->state_start};
  const size_t lo = params->shard_start, hi = lo + params->shard_numel;
  int64_t largest = 0;
  for (int i = 0; i < params->count; i++)
    if (params->info[i].numel > largest) largest = params->info[i].numel;
  float *host = malloc((size_t)largest * sizeof *host);
  LT_CHECK(host, LT_ERR_MEMORY, "out of host memory writing a checkpoint");
  int rc = LT_OK;
  for (int k = 0; k < (optimizer ? LT_CKPT_KINDS : 1) && rc == LT_OK; k++)
    for (int i = 0; i < params->count && rc == LT_OK; i++) {
      const lt_param_info *p = &params->info[i];
      const size_t start = clamp(p->offset, lo, hi), end = clamp(p->offset + p->numel, lo, hi);
      if (end == start || lt_param_is_copy(params, p)) continue;
      rc = lt_device_copy(host, LT_CPU, buffers[k] + (start - first[k]), params->device,
                          (end - start) * sizeof(float));
      lt_param_box boxes[LT_PARAM_MAX_BOXES];
      const int64_t at = (int64_t)(start - p->offset);
      const int n = lt_param_boxes(p, at, (int64_t)(end - p->offset), boxes);
      for (int b = 0; b < n && rc == LT_OK; b++) {
        char name[sizeof p->name + 16];
        snprintf(name, sizeof name, b ? "%s@%d" : "%s", p->name, b);
        rc = lt_checkpoint_write_slice(w, (lt_ckpt_kind)k, name, p->ndim, p->logical_shape,
                                       boxes[b].offset, boxes[b].extent,
                                       host + (boxes[b].start - at));
      }
    }
  free(host);
  return rc;
}

int lt_checkpoint_finish_shard(lt_checkpoint_writer *w) {
  herr_t rc = 0;
  errno = 0;
  for (int k = 0; k < LT_CKPT_KINDS; k++) {
    if (w->groups[k] >= 0 && H5Gclose(w->groups[k]) < 0) rc = -1;
    w->groups[k] = -1;
  }
  // Closing flushes HDF5's caches: on a full disk this is where the failure shows.
  if (w->file >= 0 && H5Fclose(w->file) < 0) rc = -1;
  w->file = -1;
  if (rc < 0) return write_failed(w, "closing the shard", errno);
  return lt_fsync_path(w->shard_path) == LT_OK ? LT_OK : write_failed(w, "fsync", errno);
}

static int write_meta(lt_checkpoint_writer *w, const lt_checkpoint_meta *meta, const char *path) {
  errno = 0;
  hid_t file = lt_h5_create(path);
  if (file < 0) return write_failed(w, "creating meta.h5", errno);
  int attrs = lt_h5_write_i64(file, "format_version", LT_CHECKPOINT_FORMAT_VERSION) |
              lt_h5_write_i64(file, "step", meta->step) |
              lt_h5_write_i64(file, "tokens_seen", meta->tokens_seen) |
              lt_h5_write_i64(file, "data_position", meta->data_position) |
              lt_h5_write_i64(file, "seed", meta->seed) |
              lt_h5_write_i64(file, "n_shards", w->n_shards) |
              lt_h5_write_i64(file, "n_params", meta->n_params) |
              lt_h5_write_f64(file, "train_seconds", meta->train_seconds) |
              lt_h5_write_string(file, "config", meta->config_yaml ? meta->config_yaml : "") |
              lt_h5_write_string(file, "config_source", meta->config_source);
  int err = errno;
  if (H5Fclose(file) < 0) attrs = -1;
  return attrs ? write_failed(w, "writing meta.h5", err ? err : errno) : LT_OK;
}

// Replaces an existing checkpoint of the same step (a run resumed from an earlier one reaches it
// again): the old one moves aside, the new one takes its name, then the old one goes.
static int rename_into_place(lt_checkpoint_writer *w) {
  char old[LT_PATH_MAX + 48];
  snprintf(old, sizeof old, "%s/.old-step_%08" PRId64, w->root, w->step);
  struct stat st;
  bool replacing = stat(w->dir, &st) == 0;
  if (replacing) {
    LT_TRY(lt_remove_tree(old));
    if (rename(w->dir, old) != 0) return write_failed(w, "moving the previous copy aside", errno);
  }
  if (rename(w->tmp, w->dir) != 0) {
    int err = errno;
    if (replacing) rename(old, w->dir); // put the previous copy back under its name
    return write_failed(w, "renaming into place", err);
  }
  LT_TRY(lt_fsync_path(w->root));
  return replacing ? lt_remove_tree(old) : LT_OK;
}

// The manifest, last: every shard (each rank's, all finished by now) and meta.h5, checksummed.
// Reading the shards back costs a read of the checkpoint, mostly from the page cache.
static int write_manifest(lt_checkpoint_writer *w) {
  const int n = w->n_shards + 1;
  char(*names)[64] = malloc((size_t)n * sizeof *names);
  const char **list = malloc((size_t)n * sizeof *list);
  int err = names && list ? 0 : ENOMEM;
  for (int i = 0; !err && i < n; i++) {
    if (i < w->n_shards)
      snprintf(names[i], sizeof names[i], "shard-%05d-of-%05d.h5", i, w->n_shards);
    else
      snprintf(names[i], sizeof names[i], "meta.h5");
    list[i] = names[i];
  }
  if (!err) err = lt_manifest_write(w->tmp, list, n);
  free(names);
  free(list);
  return err ? write_failed(w, "writing " LT_MANIFEST_FILE, err) : LT_OK;
}

int lt_checkpoint_commit(lt_checkpoint_writer *w, const lt_checkpoint_meta *meta) {
  char meta_path[LT_PATH_MAX + 64];
  snprintf(meta_path, sizeof meta_path, "%s/meta.h5", w->tmp);
  int rc = lt_checkpoint_finish_shard(w);
  if (rc == LT_OK) rc = write_meta(w, meta, meta_path);
  if (rc == LT_OK && lt_fsync_path(meta_path) != LT_OK) rc = write_failed(w, "fsync", errno);
  if (rc == LT_OK) rc = write_manifest(w);
  if (rc == LT_OK && lt_fsync_path(w->tmp) != LT_OK) rc = write_failed(w, "fsync", errno);
  if (rc == LT_OK) rc = rename_into_place(w);
  if (rc != LT_OK) lt_checkpoint_abort(w);
  return rc;
}

void lt_checkpoint_abort(lt_checkpoint_writer *w) {
  // The message of the failure that led here is what the user needs, not one of the clean-up.
  char message[1024];
  snprintf(message, sizeof message, "%s", lt_error_message());
  for (int k = 0; k < LT_CKPT_KINDS; k++) {
    if (w->groups[k] >= 0) H5Gclose(w->groups[k]);
    w->groups[k] = -1;
  }
  if (w->file >= 0) H5Fclose(w->file);
  w->file = -1;
  if (w->shard == 0) lt_remove_tree(w->tmp); // the folder is shard 0's: the others close theirs
  lt_fail(LT_OK, "%s", message);
}
