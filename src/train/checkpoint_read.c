// Reading a checkpoint: the manifest's check of every file, meta.h5, an index of every slice in
// every shard, and slices assembled from whichever pieces cover them.
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/device.h"
#include "core/error.h"
#include "core/h5util.h"
#include "parallel/pipeline.h"
#include "train/checkpoint.h"
#include "train/checkpoint_manifest.h"

// A checkpoint that cannot be used: the message names the file and what to do instead.
static int corrupt(const lt_checkpoint *ck, const char *file, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int corrupt(const lt_checkpoint *ck, const char *file, const char *fmt, ...) {
  char what[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  return lt_fail(LT_ERR_CKPT,
                 "%s/%s: %s (corrupt or truncated): delete this checkpoint and resume from an "
                 "earlier one",
                 ck->dir, file, what);
}

// meta.h5, once the manifest vouched for it.
static int read_meta(lt_checkpoint *ck) {
  char path[LT_PATH_MAX + 16];
  snprintf(path, sizeof path, "%s/meta.h5", ck->dir);
  lt_h5_init();
  if (H5Fis_hdf5(path) <= 0) return corrupt(ck, "meta.h5", "not an HDF5 file");
  hid_t file = lt_h5_open(path);
  if (file < 0) return corrupt(ck, "meta.h5", "HDF5 cannot open it");
  lt_checkpoint_meta *m = &ck->meta;
  int rc = LT_OK;
  if (lt_h5_read_i64(file, "format_version", &m->format_version) != 0 || m->format_version < 1) {
    rc = corrupt(ck, "meta.h5", "no valid format_version");
  } else if (m->format_version > LT_CHECKPOINT_FORMAT_VERSION) {
    rc = lt_fail(LT_ERR_CKPT,
                 "%s/meta.h5: format_version %lld is newer than this longtrain reads (%d): "
                 "upgrade longtrain to load it",
                 ck->dir, (long long)m->format_version, LT_CHECKPOINT_FORMAT_VERSION);
  } else {
    struct {
      const char *name;
      int64_t *value;
    } ints[] = {
        {"step", &m->step}, {"tokens_seen", &m->tokens_seen}, {"data_position", &m->data_position},
        {"seed", &m->seed}, {"n_shards", &m->n_shards},       {"n_params", &m->n_params}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0] && rc == LT_OK; i++)
      if (lt_h5_read_i64(file, ints[i].name, ints[i].value) != 0 || *ints[i].value < 0)
        rc = corrupt(ck, "meta.h5", "the attribute %s is missing or invalid", ints[i].name);
    if (rc == LT_OK && (m->n_shards < 1 || m->n_shards > 99999))
      rc = corrupt(ck, "meta.h5", "n_shards %lld is out of range", (long long)m->n_shards);
    if (rc == LT_OK &&
        (lt_h5_read_f64(file, "train_seconds", &m->train_seconds) != 0 ||
         lt_h5_read_string_alloc(file, "config", &m->config_yaml) != 0 ||
         lt_h5_read_string(file, "config_source", m->config_source, sizeof m->config_source) != 0))
      rc = corrupt(ck, "meta.h5", "train_seconds, config or config_source is missing");
  }
  H5Fclose(file);
  return rc;
}

static int add_piece(lt_checkpoint *ck, const lt_ckpt_piece *piece, int *capacity) {
  if (ck->n_pieces == *capacity) {
    *capacity = *capacity ? 2 * *capacity : 64;
    lt_ckpt_piece *grown = realloc(ck->pieces, (size_t)*capacity * sizeof *grown);
    LT_CHECK(grown, LT_ERR_MEMORY, "out of memory reading checkpoint %s", ck->dir);
    ck->pieces = grown;
  }
  ck->pieces[ck->n_pieces++] = *piece;
  return LT_OK;
}

// The dataset of a piece: NAME, or NAME@part for a tensor's further slices in one shard.
static const char *piece_link(const lt_ckpt_piece *piece, char *buf, size_t cap) {
  if (piece->part == 0) return piece->name;
  snprintf(buf, cap, "%s@%d", piece->name, piece->part);
  return buf;
}

// One dataset of a shard's group: an f32 slice with its offset and logical shape.
static int index_dataset(lt_checkpoint *ck, hid_t group, const char *file, lt_ckpt_piece *piece,
                         int *capacity) {
  char buf[sizeof piece->name + 16];
  const char *link = piece_link(piece, buf, sizeof buf);
  hid_t set = H5Dopen2(group, link, H5P_DEFAULT);
  if (set < 0) return corrupt(ck, file, "cannot open tensor %s", link);
  hid_t type = H5Dget_type(set), space = H5Dget_space(set);
  bool f32 = H5Tget_class(type) == H5T_FLOAT && H5Tget_size(type) == 4;
  piece->ndim = H5Sget_simple_extent_ndims(space);
  hsize_t dims[LT_MAX_DIMS] = {0};
  if (piece->ndim >= 1 && piece->ndim <= LT_MAX_DIMS) H5Sget_simple_extent_dims(space, dims, NULL);
  int n_offset = -1, n_logical = -1;
  lt_h5_read_i64_array(set, "offset", piece->offset, LT_MAX_DIMS, &n_offset);
  lt_h5_read_i64_array(set, "logical_shape", piece->logical, LT_MAX_DIMS, &n_logical);
  H5Tclose(type);
  H5Sclose(space);
  H5Dclose(set);
  bool ok = f32 && piece->ndim >= 1 && piece->ndim <= LT_MAX_DIMS && n_offset == piece->ndim &&
            n_logical == piece->ndim;
  for (int d = 0; ok && d < piece->ndim; d++) {
    piece->extent[d] = (int64_t)dims[d];
    ok = piece->extent[d] >= 1 && piece->offset[d] >= 0 &&
         piece->offset[d] <= piece->logical[d] - piece->extent[d];
  }
  if (!ok)
    return corrupt(ck, file, "tensor %s/%s is not an f32 slice with a valid offset and shape",
                   lt_ckpt_kind_group(piece->kind), piece->name);
  return add_piece(ck, piece, capacity);
}

// The tensors of one shard, which the manifest must list (and so vouch for).
static int index_shard(lt_checkpoint *ck, const lt_manifest *manifest, int shard, int *capacity) {
  char file[64], path[LT_PATH_MAX + 80];
  snprintf(file, sizeof file, "shard-%05d-of-%05d.h5", shard, (int)ck->meta.n_shards);
  snprintf(path, sizeof path, "%s/%s", ck->dir, file);
  if (!lt_manifest_find(manifest, file))
    return corrupt(ck, file, "not listed in " LT_MANIFEST_FILE);
  if (H5Fis_hdf5(path) <= 0) return corrupt(ck, file, "not an HDF5 file");
  ck->file_sizes[shard] = lt_file_size(path);
  ck->files[shard] = lt_h5_open(path);
  if (ck->files[shard] < 0) return corrupt(ck, file, "HDF5 cannot open it");
  for (int k = 0; k < LT_CKPT_KINDS; k++) {
    hid_t group = H5Gopen2(ck->files[shard], lt_ckpt_kind_group(k), H5P_DEFAULT);
    H5G_info_t info;
    if (group < 0 || H5Gget_info(group, &info) < 0) {
      if (group >= 0) H5Gclose(group);
      return corrupt(ck, file, "the group /%s is missing", lt_ckpt_kind_group(k));
    }
    int rc = LT_OK;
    for (hsize_t i = 0; i < info.nlinks && rc == LT_OK; i++) {
      lt_ckpt_piece piece = {.kind = (lt_ckpt_kind)k, .shard = shard};
      ssize_t len = H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, piece.name,
                                       sizeof piece.name, H5P_DEFAULT);
      char *part = len > 0 ? strchr(piece.name, '@') : NULL, *end = NULL;
      if (part) {
        *part = '\0';
        piece.part = (int)strtol(part + 1, &end, 10);
      }
      if (len <= 0 || len >= (ssize_t)sizeof piece.name || (part && (*end || piece.part < 1)))
        rc = corrupt(ck, file, "a tensor name in /%s is unreadable", lt_ckpt_kind_group(k));
      else
        rc = index_dataset(ck, group, file, &piece, capacity);
    }
    H5Gclose(group);
    LT_TRY(rc);
  }
  return LT_OK;
}

int lt_checkpoint_open(lt_checkpoint *ck, const char *dir) {
  *ck = (lt_checkpoint){0};
  snprintf(ck->dir, sizeof ck->dir, "%s", dir);
  size_t len = strlen(ck->dir);
  while (len > 1 && ck->dir[len - 1] == '/') ck->dir[--len] = '\0';
  if (access(ck->dir, F_OK) != 0)
    return lt_fail(LT_ERR_CKPT, "%s: %s: give a checkpoint folder RUN_DIR/checkpoints/step_N",
                   ck->dir, strerror(errno));
  // Every file is checked whole against the manifest before HDF5 sees any of it.
  lt_manifest manifest;
  int rc = lt_manifest_verify(ck->dir, &manifest);
  if (rc != LT_OK) return rc;
  if (!lt_manifest_find(&manifest, "meta.h5"))
    rc = corrupt(ck, LT_MANIFEST_FILE, "it does not list meta.h5");
  if (rc == LT_OK) rc = read_meta(ck);
  if (rc == LT_OK) {
    ck->files = malloc((size_t)ck->meta.n_shards * sizeof *ck->files);
    ck->file_sizes = calloc((size_t)ck->meta.n_shards, sizeof *ck->file_sizes);
    if (!ck->files || !ck->file_sizes)
      rc = lt_fail(LT_ERR_MEMORY, "out of memory opening checkpoint %s", dir);
    for (int64_t s = 0; ck->files && s < ck->meta.n_shards; s++) ck->files[s] = -1;
  }
  int capacity = 0;
  for (int s = 0; rc == LT_OK && s < ck->meta.n_shards; s++)
    rc = index_shard(ck, &manifest, s, &capacity);
  lt_manifest_free(&manifest);
  if (rc != LT_OK) lt_checkpoint_close(ck);
  return rc;
}

void lt_checkpoint_close(lt_checkpoint *ck) {
  for (int64_t s = 0; ck->files && s < ck->meta.n_shards; s++)
    if (ck->files[s] >= 0) H5Fclose(ck->files[s]);
  free(ck->files);
  free(ck->file_sizes);
  free(ck->pieces);
  lt_checkpoint_meta_free(&ck->meta);
  ck->files = NULL, ck->file_sizes = NULL, ck->pieces = NULL, ck->n_pieces = 0;
}

static const char *shape_text(int ndim, const int64_t *shape, char *buf, size_t cap) {
  size_t n = (size_t)snprintf(buf, cap, "(");
  for (int d = 0; d < ndim && n < cap; d++)
    n += (size_t)snprintf(buf + n, cap - n, "%s%lld", d ? ", " : "", (long long)shape[d]);
  if (n < cap) snprintf(buf + n, cap - n, ")");
  return buf;
}

bool lt_checkpoint_first_piece(const lt_checkpoint *ck, int i) {
  const lt_ckpt_piece *p = &ck->pieces[i];
  for (int j = 0; j < i; j++)
    if (ck->pieces[j].kind == p->kind && strcmp(ck->pieces[j].name, p->name) == 0) return false;
  return true;
}

int lt_checkpoint_shape(const lt_checkpoint *ck, lt_ckpt_kind kind, const char *name, int *ndim,
                        int64_t *shape) {
  const lt_ckpt_piece *first = NULL;
  for (int i = 0; i < ck->n_pieces; i++) {
    const lt_ckpt_piece *p = &ck->pieces[i];
    if (p->kind != kind || strcmp(p->name, name) != 0) continue;
    if (!first) first = p;
    if (p->ndim != first->ndim ||
        memcmp(p->logical, first->logical, (size_t)p->ndim * sizeof *p->logical) != 0)
      return lt_fail(LT_ERR_CKPT,
                     "%s: the shards disagree on the shape of %s/%s: delete this "
                     "checkpoint and resume from an earlier one",
                     ck->dir, lt_ckpt_kind_group(kind), name);
  }
  LT_CHECK(first, LT_ERR_CKPT,
           "%s: has no tensor %s/%s: it was made for another model (compare `longtrain info %s` "
           "with your config)",
           ck->dir, lt_ckpt_kind_group(kind), name, ck->dir);
  *ndim = first->ndim;
  memcpy(shape, first->logical, (size_t)first->ndim * sizeof *shape);
  return LT_OK;
}

// Reads the part of `piece` inside the requested slice into its place in `out`; adds the
// elements read to *covered.
static int read_overlap(lt_checkpoint *ck, const lt_ckpt_piece *piece, const int64_t *offset,
                        const int64_t *extent, float *out, int64_t *covered) {
  const int ndim = piece->ndim;
  uint64_t file_start[LT_MAX_DIMS], mem_start[LT_MAX_DIMS], count[LT_MAX_DIMS];
  hsize_t mem_dims[LT_MAX_DIMS];
  int64_t n = 1;
  for (int d = 0; d < ndim; d++) {
    int64_t lo = offset[d] > piece->offset[d] ? offset[d] : piece->offset[d];
    int64_t hi_req = offset[d] + extent[d], hi_piece = piece->offset[d] + piece->extent[d];
    int64_t hi = hi_req < hi_piece ? hi_req : hi_piece;
    if (hi <= lo) return LT_OK; // no overlap
    file_start[d] = (uint64_t)(lo - piece->offset[d]);
    mem_start[d] = (uint64_t)(lo - offset[d]);
    count[d] = (uint64_t)(hi - lo);
    mem_dims[d] = (hsize_t)extent[d];
    n *= hi - lo;
  }
  char file[64];
  snprintf(file, sizeof file, "shard-%05d-of-%05d.h5", piece->shard, (int)ck->meta.n_shards);
  char path[200], buf[sizeof piece->name + 16];
  const char *link = piece_link(piece, buf, sizeof buf);
  snprintf(path, sizeof path, "%s/%s", lt_ckpt_kind_group(piece->kind), link);
  hid_t group = H5Gopen2(ck->files[piece->shard], lt_ckpt_kind_group(piece->kind), H5P_DEFAULT);
  hid_t set = group < 0 ? -1 : H5Dopen2(group, link, H5P_DEFAULT);
  const char *problem =
      set < 0 ? "cannot open it"
              : lt_h5_check_selection(set, ndim, file_start, count, ck->file_sizes[piece->shard]);
  herr_t rc = -1;
  if (!problem) {
    hid_t file_space = H5Dget_space(set), mem_space = H5Screate_simple(ndim, mem_dims, NULL);
    H5Sselect_hyperslab(file_space, H5S_SELECT_SET, (const hsize_t *)file_start, NULL,
                        (const hsize_t *)count, NULL);
    H5Sselect_hyperslab(mem_space, H5S_SELECT_SET, (const hsize_t *)mem_start, NULL,
                        (const hsize_t *)count, NULL);
    rc = H5Dread(set, H5T_NATIVE_FLOAT, mem_space, file_space, H5P_DEFAULT, out);
    H5Sclose(mem_space);
    H5Sclose(file_space);
    if (rc < 0) problem = "a Fletcher-32 checksum does not match";
  }
  if (set >= 0) H5Dclose(set);
  if (group >= 0) H5Gclose(group);
  if (problem) return corrupt(ck, file, "reading %s: %s", path, problem);
  *covered += n;
  return LT_OK;
}

int lt_checkpoint_read_slice(lt_checkpoint *ck, lt_ckpt_kind kind, const char *name, int ndim,
                             const int64_t *offset, const int64_t *extent, float *out) {
  int logical_ndim;
  int64_t logical[LT_MAX_DIMS], wanted = 1, covered = 0;
  LT_TRY(lt_checkpoint_shape(ck, kind, name, &logical_ndim, logical));
  LT_ASSERT(ndim == logical_ndim);
  for (int d = 0; d < ndim; d++) {
    LT_ASSERT(offset[d] >= 0 && extent[d] >= 1 && offset[d] + extent[d] <= logical[d]);
    wanted *= extent[d];
  }
  for (int i = 0; i < ck->n_pieces; i++) {
    const lt_ckpt_piece *p = &ck->pieces[i];
    if (p->kind == kind && strcmp(p->name, name) == 0)
      LT_TRY(read_overlap(ck, p, offset, extent, out, &covered));
  }
  // Pieces that overlap each other would count some elements twice: also an error.
  LT_CHECK(covered == wanted, LT_ERR_CKPT,
           "%s: the shards hold %lld elements of the %lld asked for of %s/%s (a shard is missing "
           "or they overlap): delete this checkpoint and resume from an earlier one",
           ck->dir, (long long)covered, (long long)wanted, lt_ckpt_kind_group(kind), name);
  return LT_OK;
}

// Every tensor of the checkpoint's weights must be one of the model's: a checkpoint of a model
// with an extra tensor (an untied head, another layer) is another model. A pipeline stage holds
// only its own layers: there each tensor must be one of some stage's.
static int check_no_extra_tensors(const lt_checkpoint *ck, const lt_params *params) {
  double *held = calloc((size_t)ck->n_pieces + 1, sizeof *held);
  LT_CHECK(held, LT_ERR_MEMORY, "out of host memory reading checkpoint %s", ck->dir);
  for (int i = 0; i < ck->n_pieces; i++)
    held[i] = ck->pieces[i].kind != LT_CKPT_WEIGHTS || lt_params_find(params, ck->pieces[i].name);
  int rc = lt_pipeline_sum(params, held, ck->n_pieces);
  for (int i = 0; i < ck->n_pieces && rc == LT_OK; i++)
    if (held[i] == 0)
      rc = lt_fail(LT_ERR_CKPT,
                   "%s: tensor %s is not in this model: the checkpoint was made for another model "
                   "(compare `longtrain info %s` with your config)",
                   ck->dir, ck->pieces[i].name, ck->dir);
  free(held);
  return rc;
}

// The box [offset, offset + extent) of parameter p's logical tensor, once its logical shape is
// checked against the checkpoint's.
static int read_box(lt_checkpoint *ck, lt_ckpt_kind kind, const lt_param_info *p,
                    const int64_t *offset, const int64_t *extent, float *out) {
  int ndim;
  int64_t shape[LT_MAX_DIMS];
  LT_TRY(lt_checkpoint_shape(ck, kind, p->name, &ndim, shape));
  if (ndim != p->ndim || memcmp(shape, p->logical_shape, (size_t)ndim * sizeof *shape) != 0) {
    char have[96], want[96];
    return lt_fail(LT_ERR_CKPT,
                   "%s: tensor %s is %s in the checkpoint but %s in this model: the checkpoint "
                   "was made for another model shape (compare `longtrain info %s` with your "
                   "config)",
                   ck->dir, p->name, shape_text(ndim, shape, have, sizeof have),
                   shape_text(p->ndim, p->logical_shape, want, sizeof want), ck->dir);
  }
  return lt_checkpoint_read_slice(ck, kind, p->name, ndim, offset, extent, out);
}

static size_t clamp(size_t x, size_t lo, size_t hi) {
  return x < lo ? lo : x > hi ? hi : x;
}

// The part [start, end) of the flat buffer of parameter p (kind `kind`) into `host`, whatever
// layout wrote the checkpoint: a sharded parameter reads its own slice, a ZeRO-1 shard the boxes
// of its part of the moments.
static int read_part(lt_checkpoint *ck, lt_ckpt_kind kind, const lt_param_info *p, size_t start,
                     size_t end, float *host) {
  lt_param_box boxes[LT_PARAM_MAX_BOXES];
  const int64_t at = (int64_t)(start - p->offset);
  const int n = lt_param_boxes(p, at, (int64_t)(end - p->offset), boxes);
  for (int b = 0; b < n; b++)
    LT_TRY(read_box(ck, kind, p, boxes[b].offset, boxes[b].extent, host + (boxes[b].start - at)));
  return LT_OK;
}

int lt_checkpoint_read_params(lt_checkpoint *ck, lt_params *params, bool optimizer) {
  LT_TRY(check_no_extra_tensors(ck, params));
  float *buffers[LT_CKPT_KINDS] = {params->master, params->adam_m, params->adam_v};
  int64_t largest = 0;
  for (int i = 0; i < params->count; i++)
    if (params->info[i].numel > largest) largest = params->info[i].numel;
  float *host = malloc((size_t)largest * sizeof *host);
  LT_CHECK(host, LT_ERR_MEMORY, "out of host memory reading checkpoint %s", ck->dir);
  int rc = LT_OK;
  for (int k = 0; k < (optimizer ? LT_CKPT_KINDS : 1) && rc == LT_OK; k++) {
    // Weights everywhere; the moments where this process keeps them (lt_params.state_*).
    const size_t lo = k == LT_CKPT_WEIGHTS ? 0 : params->state_start;
    const size_t hi = k == LT_CKPT_WEIGHTS ? params->numel : lo + params->state_numel;
    for (int i = 0; i < params->count && rc == LT_OK; i++) {
      const lt_param_info *p = &params->info[i];
      const size_t start = clamp(p->offset, lo, hi), end = clamp(p->offset + p->numel, lo, hi);
      if (end == start) continue;
      rc = read_part(ck, (lt_ckpt_kind)k, p, start, end, host);
      if (rc == LT_OK)
        rc = lt_device_copy(buffers[k] + (start - lo), params->device, host, LT_CPU,
                            (end - start) * sizeof(float));
    }
  }
  free(host);
  LT_TRY(rc);
  return lt_params_sync_compute(params);
}

int lt_checkpoint_load_config(const lt_checkpoint *ck, int n_overrides, char *const *overrides,
                              lt_config *cfg) {
  char name[LT_PATH_MAX + 32];
  snprintf(name, sizeof name, "%s/meta.h5 (config)", ck->dir);
  // The config a checkpoint holds was valid when written: a parse failure is damage, or a
  // longtrain that knows other keys. Only then come the overrides, whose errors are the user's.
  if (lt_config_load_string(cfg, ck->meta.config_yaml, name, 0, NULL) != LT_OK)
    return lt_error_context(LT_ERR_CKPT, "checkpoint config unreadable (written by another "
                                         "longtrain version?)");
  if (n_overrides == 0) return LT_OK;
  return lt_config_load_string(cfg, ck->meta.config_yaml, name, n_overrides, overrides);
}

int lt_checkpoint_read_config(const char *dir, lt_config *cfg) {
  lt_checkpoint ck;
  LT_TRY(lt_checkpoint_open(&ck, dir));
  int rc = lt_checkpoint_load_config(&ck, 0, NULL, cfg);
  lt_checkpoint_close(&ck);
  return rc;
}

int lt_checkpoint_load_weights(const char *dir, lt_params *params) {
  lt_checkpoint ck;
  LT_TRY(lt_checkpoint_open(&ck, dir));
  int rc = lt_checkpoint_read_params(&ck, params, false);
  lt_checkpoint_close(&ck);
  return rc;
}
