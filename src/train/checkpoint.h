// Checkpoints: everything a run needs to continue bit for bit, in HDF5 files readable with h5py.
//
// On disk (format_version 1), one folder per checkpoint:
//   RUN_DIR/checkpoints/step_00001000/
//     meta.h5                      attributes: format_version, step, tokens_seen, data_position,
//                                  seed, train_seconds, n_shards, n_params, config (the resolved
//                                  YAML), config_source
//     shard-00000-of-00001.h5      groups /weights, /adam_m, /adam_v: one f32 dataset per
//                                  parameter, named by its logical name ("layers.0.attn.wq")
//     manifest.txt                 every other file's name, size and CRC-32C; written last
//                                  (checkpoint_manifest.h)
//
// A shard dataset holds a slice of the logical (unsharded) tensor: its shape is the slice's
// extent, attribute `offset` says where the slice starts along each dimension and
// `logical_shape` gives the whole tensor's shape. One process writes one shard of whole tensors;
// a run of several ranks writes one shard per rank (shard-RRRRR-of-NNNNN.h5, R the world rank),
// each with the slices that rank owns (lt_checkpoint_write_params). A shard may hold several
// slices of one tensor (a ZeRO-1 shard that begins mid-row): the first is named NAME, the others
// NAME@1, NAME@2, ... The reader assembles any requested slice from whichever shards cover it,
// so any parallel layout loads any checkpoint.
//
// Integrity: the reader checks every file whole against the manifest (size, CRC-32C) before HDF5
// opens it, so a damaged file never reaches HDF5's parser. Behind that, files use HDF5's 1.10
// format (checksummed metadata), every tensor is chunked with Fletcher-32 (verified by HDF5 on
// every read), and reads are checked against the file's size and chunk index before HDF5 decodes
// them (core/h5util.h). Atomicity: a checkpoint is written under RUN_DIR/checkpoints/.tmp-step_N,
// every file and the folder are fsynced, and the folder is renamed to step_N, then the parent is
// fsynced. Only a folder named step_N holding manifest.txt counts as a checkpoint, so a crash or a
// full disk mid-write leaves the earlier checkpoints as they were.
#ifndef LT_CHECKPOINT_H
#define LT_CHECKPOINT_H

#include <stdbool.h>
#include <stdint.h>

#include "core/config.h"
#include "model/params.h"

#define LT_CHECKPOINT_FORMAT_VERSION 1

// The tensors of a checkpoint, one HDF5 group each.
typedef enum lt_ckpt_kind {
  LT_CKPT_WEIGHTS,
  LT_CKPT_ADAM_M,
  LT_CKPT_ADAM_V,
  LT_CKPT_KINDS
} lt_ckpt_kind;
const char *lt_ckpt_kind_group(lt_ckpt_kind kind);

// What a checkpoint records besides tensors. All random streams in longtrain are counter-based
// (core/rng.h): the seed with the step and the data position is the whole random state.
typedef struct lt_checkpoint_meta {
  int64_t format_version;
  int64_t step;          // optimizer steps taken
  int64_t tokens_seen;   // training tokens consumed
  int64_t data_position; // samples consumed from the training loader (global, over all ranks)
  int64_t seed;          // run.seed
  int64_t n_shards, n_params;
  double train_seconds;            // wall time spent training so far
  char *config_yaml;               // the resolved config (owned; lt_checkpoint_meta_free)
  char config_source[LT_PATH_MAX]; // where that config came from ("run.yaml with --set ...")
} lt_checkpoint_meta;

void lt_checkpoint_meta_free(lt_checkpoint_meta *meta);

// --- writing (checkpoint_write.c) ---

typedef struct lt_checkpoint_writer {
  char root[LT_PATH_MAX];     // RUN_DIR/checkpoints
  char dir[LT_PATH_MAX + 32]; // root/step_N, where it goes
  char tmp[LT_PATH_MAX + 48]; // root/.tmp-step_N, where it is written
  char shard_path[LT_PATH_MAX + 96];
  int64_t step;
  int shard, n_shards;
  int64_t file, groups[LT_CKPT_KINDS]; // HDF5 handles of this rank's shard
  int64_t fail_after_bytes; // LT_FAULT_INJECT=ckpt_write:after_bytes=N (tests); -1 when unset
} lt_checkpoint_writer;

// Starts checkpoint `step` under `root`, this rank writing shard `shard` of `n_shards`. A stale
// temporary folder of the same step (from a killed run) is replaced.
int lt_checkpoint_begin(lt_checkpoint_writer *w, const char *root, int64_t step, int shard,
                        int n_shards);
// The slice [offset, offset + extent) of tensor `name` (logical shape `logical`), from host
// memory holding exactly the slice, row-major.
int lt_checkpoint_write_slice(lt_checkpoint_writer *w, lt_ckpt_kind kind, const char *name,
                              int ndim, const int64_t *logical, const int64_t *offset,
                              const int64_t *extent, const float *data);
// This process's part of every parameter and, with `optimizer`, of the AdamW moments: the part of
// its shard of the flat buffer (lt_params.shard_*) of each parameter it counts (not a copy another
// process writes: lt_param_is_copy), as slices of the logical tensors. A single process writes
// every tensor whole; data-parallel ranks split the writing between them, and under ZeRO-1 each
// writes exactly the moments it keeps.
int lt_checkpoint_write_params(lt_checkpoint_writer *w, const lt_params *params, bool optimizer);
// Closes and fsyncs this rank's shard: what every rank but 0 does last.
int lt_checkpoint_finish_shard(lt_checkpoint_writer *w);
// On rank 0, once every rank finished its shard (a parallel run puts a barrier here): finishes
// shard 0, writes meta.h5, then manifest.txt (reading every shard back to checksum it), makes the
// folder durable and renames it into place. On failure the temporary folder is removed and the
// earlier checkpoints are untouched.
int lt_checkpoint_commit(lt_checkpoint_writer *w, const lt_checkpoint_meta *meta);
// After a failure: closes this rank's shard; on rank 0 (shard 0) also removes the temporary
// folder, once the other ranks have aborted theirs.
void lt_checkpoint_abort(lt_checkpoint_writer *w);

// --- reading (checkpoint_read.c) ---

typedef struct lt_ckpt_piece {
  lt_ckpt_kind kind;
  char name[96]; // the tensor's name
  int part;      // its dataset is NAME@part when part > 0
  int shard, ndim;
  int64_t offset[LT_MAX_DIMS], extent[LT_MAX_DIMS], logical[LT_MAX_DIMS];
} lt_ckpt_piece;

typedef struct lt_checkpoint {
  char dir[LT_PATH_MAX];
  lt_checkpoint_meta meta;
  int64_t *files;      // HDF5 handles of the shards
  int64_t *file_sizes; // bytes, for the read checks
  lt_ckpt_piece *pieces;
  int n_pieces;
} lt_checkpoint;

// Opens the checkpoint folder `dir`: checks every file against manifest.txt (reading each whole),
// then reads meta.h5 and indexes every slice in every shard. A missing, incomplete (no manifest),
// truncated, corrupt or newer checkpoint is LT_ERR_CKPT naming the file and the fix.
int lt_checkpoint_open(lt_checkpoint *ck, const char *dir);
void lt_checkpoint_close(lt_checkpoint *ck);
// Whether piece i is the first of its tensor (kind and name) in ck->pieces: a tensor split over
// shards, or cut into NAME@k pieces, has several. Counting first pieces counts tensors.
bool lt_checkpoint_first_piece(const lt_checkpoint *ck, int i);
// The logical shape of tensor `name`; LT_ERR_CKPT naming it when the checkpoint lacks it.
int lt_checkpoint_shape(const lt_checkpoint *ck, lt_ckpt_kind kind, const char *name, int *ndim,
                        int64_t *shape);
// Assembles the slice [offset, offset + extent) of tensor `name` into `out` (row-major, exactly
// the slice) from every shard piece that overlaps it; fails unless the pieces cover it whole.
int lt_checkpoint_read_slice(lt_checkpoint *ck, lt_ckpt_kind kind, const char *name, int ndim,
                             const int64_t *offset, const int64_t *extent, float *out);
// Every parameter of `params` by logical name, its own slice of each (and with `optimizer`, the
// AdamW moments this process keeps: lt_params.state_*). A tensor missing from either side, or of
// another shape, is LT_ERR_CKPT naming it and both shapes.
int lt_checkpoint_read_params(lt_checkpoint *ck, lt_params *params, bool optimizer);

// The resolved config of an open checkpoint, then each "a.b=value" override. An unreadable saved
// config is LT_ERR_CKPT; a bad override LT_ERR_CONFIG.
int lt_checkpoint_load_config(const lt_checkpoint *ck, int n_overrides, char *const *overrides,
                              lt_config *cfg);
// For `longtrain eval` and fine-tuning: the resolved config saved in checkpoint `dir`, and its
// weights (not the optimizer state) into `params` (refreshing the compute copy).
int lt_checkpoint_read_config(const char *dir, lt_config *cfg);
int lt_checkpoint_load_weights(const char *dir, lt_params *params);

// --- the run's checkpoint folder (checkpoint_dir.c) ---

// RUN_DIR/checkpoints for a run folder.
void lt_checkpoint_root(const char *run_dir, char *out, size_t cap);
// The newest complete checkpoint under `root` into out, or "" when there is none.
int lt_checkpoint_latest(const char *root, char *out, size_t cap);
// Deletes complete checkpoints beyond the newest `keep`, and temporary folders that killed runs
// left behind.
int lt_checkpoint_prune(const char *root, int keep);

#endif
