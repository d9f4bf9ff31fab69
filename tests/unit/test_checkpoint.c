// Checkpoints as files: what is written reads back bit for bit, slices written as several shards
// assemble into whole tensors, incomplete checkpoints (no manifest) are never picked, and every
// damaged, mismatched or newer checkpoint is a one-line LT_ERR_CKPT that names the file and the
// fix: a changed byte anywhere fails the manifest's checksums before HDF5 reads the file. A write
// that fails (full disk, injected or real) leaves the previous checkpoint as it was.
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "fixture.h"
#include "model/model.h"
#include "runs.h"
#include "testing.h"
#include "train/checkpoint.h"
#include "train/checkpoint_manifest.h"

static lt_model_config toy_config(int d_model) {
  return (lt_model_config){.d_model = d_model,
                           .n_layers = 2,
                           .n_heads = 4,
                           .ffn_dim = 48,
                           .vocab_size = 40,
                           .max_seq_len = 16,
                           .rope_theta = 10000,
                           .norm_eps = 1e-5,
                           .init = LT_INIT_SCALED,
                           .init_std = 0.02};
}

// A model whose weights and AdamW moments are random, so a lost or swapped value shows.
static void toy_model(lt_model *model, int d_model, uint64_t seed) {
  lt_model_config cfg = toy_config(d_model);
  assert_ok(lt_model_create(model, &cfg, LT_CPU, NULL));
  lt_params *p = &model->params;
  for (int i = 0; i < p->count; i++) {
    const lt_param_info *info = &p->info[i];
    uint64_t s = seed * 1000 + (uint64_t)i * 3;
    lt_test_fill_normal(p->master + info->offset, info->numel, s, 1.0f);
    lt_test_fill_normal(p->adam_m + info->offset, info->numel, s + 1, 0.1f);
    lt_test_fill_normal(p->adam_v + info->offset, info->numel, s + 2, 0.01f);
  }
}

static lt_checkpoint_meta toy_meta(int64_t step) {
  lt_checkpoint_meta meta = {.step = step,
                             .tokens_seen = 100 * step,
                             .data_position = 4 * step,
                             .seed = 7,
                             .n_params = 1,
                             .train_seconds = 1.5};
  lt_config cfg;
  assert_ok(lt_config_defaults(&cfg));
  assert_ok(lt_config_to_yaml(&cfg, &meta.config_yaml));
  snprintf(meta.config_source, sizeof meta.config_source, "toy.yaml");
  return meta;
}

// Writes the whole state of `model` as checkpoint `step` under root.
static int save(const char *root, int64_t step, const lt_model *model) {
  lt_checkpoint_writer w;
  lt_checkpoint_meta meta = toy_meta(step);
  int rc = lt_checkpoint_begin(&w, root, step, 0, 1);
  if (rc == LT_OK) rc = lt_checkpoint_write_params(&w, &model->params, true);
  if (rc == LT_OK)
    rc = lt_checkpoint_commit(&w, &meta);
  else
    lt_checkpoint_abort(&w);
  lt_checkpoint_meta_free(&meta);
  return rc;
}

static void path_in(char *out, size_t cap, const char *dir, const char *name) {
  if (snprintf(out, cap, "%s/%s", dir, name) >= (int)cap) fail_msg("path too long: %s", dir);
}

// Every parameter's value and moments, bit for bit (the padding between them is no state).
static void assert_same_state(const lt_params *a, const lt_params *b) {
  assert_int_equal(a->count, b->count);
  for (int i = 0; i < a->count; i++) {
    const lt_param_info *info = &a->info[i];
    const size_t at = info->offset, bytes = (size_t)info->numel * sizeof(float);
    if (memcmp(a->master + at, b->master + at, bytes) ||
        memcmp(a->adam_m + at, b->adam_m + at, bytes) ||
        memcmp(a->adam_v + at, b->adam_v + at, bytes))
      fail_msg("%s differs", info->name);
  }
}

// --- round trips ---

static void test_weights_and_moments_read_back_bit_for_bit(void **state) {
  (void)state;
  const char *root = lt_test_tmpdir();
  lt_model model, loaded;
  toy_model(&model, 32, 1);
  assert_ok(save(root, 3, &model));
  toy_model(&loaded, 32, 99);
  char dir[512];
  path_in(dir, sizeof dir, root, "step_00000003");
  lt_checkpoint ck;
  assert_ok(lt_checkpoint_open(&ck, dir));
  assert_int_equal(ck.meta.format_version, LT_CHECKPOINT_FORMAT_VERSION);
  assert_int_equal(ck.meta.step, 3);
  assert_int_equal(ck.meta.tokens_seen, 300);
  assert_int_equal(ck.meta.data_position, 12);
  assert_int_equal(ck.meta.seed, 7);
  assert_true(ck.meta.train_seconds == 1.5);
  assert_string_equal(ck.meta.config_source, "toy.yaml");
  assert_ok(lt_checkpoint_read_params(&ck, &loaded.params, true));
  lt_checkpoint_close(&ck);
  assert_same_state(&model.params, &loaded.params);
  lt_model_destroy(&model);
  lt_model_destroy(&loaded);
}

static void test_load_weights_leaves_the_optimizer_state_alone(void **state) {
  (void)state;
  const char *root = lt_test_tmpdir();
  lt_model model, loaded;
  toy_model(&model, 32, 1);
  assert_ok(save(root, 1, &model));
  toy_model(&loaded, 32, 99);
  char dir[512];
  path_in(dir, sizeof dir, root, "step_00000001");
  assert_ok(lt_checkpoint_load_weights(dir, &loaded.params));
  const lt_param_info *wo = lt_params_find(&model.params, "layers.1.attn.wo");
  const size_t at = wo->offset, bytes = (size_t)wo->numel * sizeof(float);
  assert_memory_equal(model.params.master + at, loaded.params.master + at, bytes);
  assert_memory_not_equal(model.params.adam_m + at, loaded.params.adam_m + at, bytes);
  lt_model_destroy(&model);
  lt_model_destroy(&loaded);
}

static void test_read_config_gives_the_saved_config(void **state) {
  (void)state;
  const char *root = lt_test_tmpdir();
  lt_model model;
  toy_model(&model, 32, 1);
  assert_ok(save(root, 1, &model));
  char dir[512];
  path_in(dir, sizeof dir, root, "step_00000001");
  lt_config saved, defaults;
  assert_ok(lt_checkpoint_read_config(dir, &saved));
  assert_ok(lt_config_defaults(&defaults));
  assert_memory_equal(&saved, &defaults, offsetof(lt_config, source));
  lt_model_destroy(&model);
}

// What h5py sees: plain groups, f32 datasets under logical names with their slice attributes,
// Fletcher-32 on every tensor, and the step and config as attributes of meta.h5.
static void test_files_are_plain_hdf5_with_logical_names_and_checksums(void **state) {
  (void)state;
  const char *root = lt_test_tmpdir();
  lt_model model;
  toy_model(&model, 32, 1);
  assert_ok(save(root, 5, &model));
  char shard[512], meta[512];
  path_in(shard, sizeof shard, root, "step_00000005/shard-00000-of-00001.h5");
  path_in(meta, sizeof meta, root, "step_00000005/meta.h5");
  lt_fixture fx;
  lt_fixture_open(&fx, shard);
  float wq[32 * 32];
  lt_fixture_read_f32(&fx, "weights/layers.1.attn.wq", wq, 32 * 32);
  const lt_param_info *info = lt_params_find(&model.params, "layers.1.attn.wq");
  assert_memory_equal(wq, model.params.master + info->offset, sizeof wq);
  hid_t set = H5Dopen2(fx.file, "adam_v/embed", H5P_DEFAULT);
  hid_t dcpl = H5Dget_create_plist(set);
  unsigned flags, cd[4];
  size_t n_cd = 4;
  assert_int_equal(H5Pget_filter2(dcpl, 0, &flags, &n_cd, cd, 0, NULL, NULL),
                   H5Z_FILTER_FLETCHER32);
  int64_t shape[2], offset[2];
  hid_t attr = H5Aopen(set, "logical_shape", H5P_DEFAULT);
  assert_true(H5Aread(attr, H5T_NATIVE_INT64, shape) >= 0);
  H5Aclose(attr);
  attr = H5Aopen(set, "offset", H5P_DEFAULT);
  assert_true(H5Aread(attr, H5T_NATIVE_INT64, offset) >= 0);
  H5Aclose(attr);
  assert_int_equal(shape[0], 40);
  assert_int_equal(shape[1], 32);
  assert_int_equal(offset[0], 0);
  assert_int_equal(offset[1], 0);
  H5Pclose(dcpl);
  H5Dclose(set);
  lt_fixture_close(&fx);
  lt_fixture_open(&fx, meta);
  assert_true(lt_fixture_attr(&fx, "step") == 5.0);
  assert_true(lt_fixture_attr(&fx, "format_version") == LT_CHECKPOINT_FORMAT_VERSION);
  lt_fixture_close(&fx);
  lt_model_destroy(&model);
}

// No times in the files: the same state gives the same bytes, so a checkpoint's checksums depend
// on its content alone.
static void test_the_same_state_saved_twice_gives_identical_files(void **state) {
  (void)state;
  const char *a = lt_test_tmpdir(), *b = lt_test_tmpdir();
  lt_model model;
  toy_model(&model, 32, 1);
  assert_ok(save(a, 2, &model));
  sleep(1); // HDF5 records times in seconds
  assert_ok(save(b, 2, &model));
  const char *files[] = {"meta.h5", "shard-00000-of-00001.h5", LT_MANIFEST_FILE};
  for (int i = 0; i < 3; i++) {
    char x[600], y[600];
    snprintf(x, sizeof x, "%s/step_00000002/%s", a, files[i]);
    snprintf(y, sizeof y, "%s/step_00000002/%s", b, files[i]);
    if (!lt_test_same_file(x, y)) fail_msg("%s and %s differ", x, y);
  }
  lt_model_destroy(&model);
}

// --- several shards ---

// Writes `model` as two shards that split every tensor along dim 0 at its middle (rows
// [0, r/2) in shard 0, the rest in shard 1), as two tensor-parallel ranks would.
static void save_two_shards(const char *root, int64_t step, const lt_model *model) {
  lt_checkpoint_writer w[2];
  assert_ok(lt_checkpoint_begin(&w[0], root, step, 0, 2));
  assert_ok(lt_checkpoint_begin(&w[1], root, step, 1, 2));
  const lt_params *p = &model->params;
  float *buffers[LT_CKPT_KINDS] = {p->master, p->adam_m, p->adam_v};
  for (int k = 0; k < LT_CKPT_KINDS; k++)
    for (int i = 0; i < p->count; i++) {
      const lt_param_info *info = &p->info[i];
      const int64_t rows = info->shape[0], row = info->numel / rows, half = rows / 2;
      for (int s = 0; s < 2; s++) {
        int64_t offset[LT_MAX_DIMS] = {0}, extent[LT_MAX_DIMS];
        memcpy(extent, info->shape, sizeof extent);
        offset[0] = s ? half : 0;
        extent[0] = s ? rows - half : half;
        const float *data = buffers[k] + info->offset + offset[0] * row;
        assert_ok(lt_checkpoint_write_slice(&w[s], (lt_ckpt_kind)k, info->name, info->ndim,
                                            info->shape, offset, extent, data));
      }
    }
  assert_ok(lt_checkpoint_finish_shard(&w[1]));
  lt_checkpoint_meta meta = toy_meta(step);
  assert_ok(lt_checkpoint_commit(&w[0], &meta));
  lt_checkpoint_meta_free(&meta);
}

static void test_two_shards_split_by_rows_load_into_one_process(void **state) {
  (void)state;
  const char *root = lt_test_tmpdir();
  lt_model model, loaded;
  toy_model(&model, 32, 3);
  save_two_shards(root, 2, &model);
  toy_model(&loaded, 32, 77);
  char dir[512];
  path_in(dir, sizeof dir, root, "step_00000002");
  lt_checkpoint ck;
  assert_ok(lt_checkpoint_open(&ck, dir));
  assert_int_equal(ck.meta.n_shards, 2);
  assert_ok(lt_checkpoint_read_params(&ck, &loaded.params, true));
  assert_same_state(&model.params, &loaded.params);

  // A slice across the cut: rows [18, 22), columns [5, 9) of the (40, 32) embedding.
  float block[4 * 4];
  assert_ok(lt_checkpoint_read_slice(&ck, LT_CKPT_WEIGHTS, "embed", 2, LT_SHAPE(18, 5),
                                     LT_SHAPE(4, 4), block));
  const lt_param_info *embed = lt_params_find(&model.params, "embed");
  for (int r = 0; r < 4; r++)
    for (int c = 0; c < 4; c++)
      assert_true(block[r * 4 + c] == model.params.master[embed->offset + (18 + r) * 32 + 5 + c]);
  lt_checkpoint_close(&ck);
  lt_model_destroy(&model);
  lt_model_destroy(&loaded);
}

static void test_missing_shard_is_a_checkpoint_error_naming_it(void **state) {
  (void)state;
  const char *root = lt_test_tmpdir();
  lt_model model;
  toy_model(&model, 32, 3);
  save_two_shards(root, 2, &model);
  char shard[512], dir[512];
  path_in(shard, sizeof shard, root, "step_00000002/shard-00001-of-00002.h5");
  path_in(dir, sizeof dir, root, "step_00000002");
  assert_int_equal(unlink(shard), 0);
  lt_checkpoint ck;
  EXPECT_ERROR(lt_checkpoint_open(&ck, dir), LT_ERR_CKPT, "shard-00001-of-00002.h5",
               "resume from an earlier one");
  lt_model_destroy(&model);
}

// --- incomplete and old checkpoints ---

static void test_only_complete_checkpoints_count_as_the_latest(void **state) {
  (void)state;
  const char *root = lt_test_tmpdir();
  lt_model model;
  toy_model(&model, 32, 1);
  assert_ok(save(root, 4, &model));
  // What a crash leaves: a folder still under its temporary name (even with a manifest in it), a
  // folder moved aside to be deleted (a pruning cut short; its files still there), and names that
  // are not this writer's.
  char path[512], from[600], to[600];
  const char *leftovers[] = {".tmp-step_00000012", ".old-step_00000008", "step_00000009x",
                             "step_9"};
  for (int i = 0; i < 4; i++) {
    path_in(path, sizeof path, root, leftovers[i]);
    assert_int_equal(mkdir(path, 0775), 0);
  }
  const char *copies[][2] = {{"meta.h5", ".tmp-step_00000012"},
                             {LT_MANIFEST_FILE, ".tmp-step_00000012"},
                             {"meta.h5", ".old-step_00000008"},
                             {"shard-00000-of-00001.h5", ".old-step_00000008"},
                             {LT_MANIFEST_FILE, "step_9"}};
  for (int i = 0; i < 5; i++) {
    path_in(path, sizeof path, root, "step_00000004");
    path_in(from, sizeof from, path, copies[i][0]);
    path_in(path, sizeof path, root, copies[i][1]);
    path_in(to, sizeof to, path, copies[i][0]);
    lt_test_copy_file(from, to);
  }
  char latest[600], expected[512];
  assert_ok(lt_checkpoint_latest(root, latest, sizeof latest));
  path_in(expected, sizeof expected, root, "step_00000004");
  assert_string_equal(latest, expected);
  lt_model_destroy(&model);
}

static void test_no_checkpoint_at_all_gives_an_empty_latest(void **state) {
  (void)state;
  char root[512], latest[600] = "x";
  path_in(root, sizeof root, lt_test_tmpdir(), "never-made");
  assert_ok(lt_checkpoint_latest(root, latest, sizeof latest));
  assert_string_equal(latest, "");
}

static void test_prune_keeps_the_newest_and_removes_interrupted_writes(void **state) {
  (void)state;
  const char *root = lt_test_tmpdir();
  lt_model model;
  toy_model(&model, 32, 1);
  for (int step = 1; step <= 4; step++) assert_ok(save(root, step, &model));
  char stale[512];
  path_in(stale, sizeof stale, root, ".tmp-step_00000005");
  assert_int_equal(mkdir(stale, 0775), 0);
  assert_ok(lt_checkpoint_prune(root, 2));
  const char *gone[] = {"step_00000001", "step_00000002", ".tmp-step_00000005"};
  const char *kept[] = {"step_00000003", "step_00000004"};
  char path[512];
  for (int i = 0; i < 3; i++) {
    path_in(path, sizeof path, root, gone[i]);
    if (access(path, F_OK) == 0) fail_msg("%s survived the pruning", path);
  }
  for (int i = 0; i < 2; i++) {
    path_in(path, sizeof path, root, kept[i]);
    if (access(path, F_OK) != 0) fail_msg("%s was pruned", path);
  }
  lt_model_destroy(&model);
}

static void test_saving_a_step_again_replaces_its_checkpoint(void **state) {
  (void)state;
  const char *root = lt_test_tmpdir();
  lt_model first, second, loaded;
  toy_model(&first, 32, 1);
  toy_model(&second, 32, 2);
  toy_model(&loaded, 32, 3);
  assert_ok(save(root, 6, &first));
  assert_ok(save(root, 6, &second));
  char dir[512];
  path_in(dir, sizeof dir, root, "step_00000006");
  lt_checkpoint ck;
  assert_ok(lt_checkpoint_open(&ck, dir));
  assert_ok(lt_checkpoint_read_params(&ck, &loaded.params, true));
  lt_checkpoint_close(&ck);
  assert_same_state(&second.params, &loaded.params);
  lt_model_destroy(&first);
  lt_model_destroy(&second);
  lt_model_destroy(&loaded);
}

// --- damaged and mismatched checkpoints ---

// A checkpoint of a fresh toy model at step 1 under a new root; its folder into dir.
static void saved_checkpoint(char *dir, size_t cap) {
  const char *root = lt_test_tmpdir();
  lt_model model;
  toy_model(&model, 32, 1);
  assert_ok(save(root, 1, &model));
  lt_model_destroy(&model);
  path_in(dir, cap, root, "step_00000001");
}

// Loads checkpoint `dir` into a toy model of width d_model; returns the status.
static int load_into(const char *dir, int d_model, bool tie) {
  lt_model model;
  lt_model_config cfg = toy_config(d_model);
  cfg.tie_embeddings = tie;
  assert_ok(lt_model_create(&model, &cfg, LT_CPU, NULL));
  lt_checkpoint ck;
  int rc = lt_checkpoint_open(&ck, dir);
  if (rc == LT_OK) {
    rc = lt_checkpoint_read_params(&ck, &model.params, true);
    lt_checkpoint_close(&ck);
  }
  lt_model_destroy(&model);
  return rc;
}

static int64_t file_size(const char *path) {
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  return (int64_t)st.st_size;
}

// A flipped byte at the start, in the middle and at the end of each file, the manifest included:
// the checksum error names the file, whatever HDF5 would have made of the byte.
static void test_a_flipped_byte_in_any_file_is_a_checksum_error_naming_it(void **state) {
  (void)state;
  char dir[512], path[600];
  saved_checkpoint(dir, sizeof dir);
  const char *files[] = {"meta.h5", "shard-00000-of-00001.h5", LT_MANIFEST_FILE};
  for (int f = 0; f < 3; f++)
    for (int where = 0; where < 3; where++) {
      path_in(path, sizeof path, dir, files[f]);
      const int64_t size = file_size(path), at = where == 0 ? 0 : where == 1 ? size / 2 : size - 1;
      lt_test_flip_byte(path, at);
      EXPECT_ERROR(load_into(dir, 32, false), LT_ERR_CKPT, path, "corrupt (checksum mismatch)",
                   "resume from an earlier one");
      lt_test_flip_byte(path, at); // back as it was
    }
  assert_ok(load_into(dir, 32, false));
}

// A flipped tensor byte fails the manifest's checksum, naming the shard. Behind the manifest
// (rewritten for the damaged file, as only a forger would), Fletcher-32 still catches it and names
// the tensor.
static void test_flipped_tensor_bytes_fail_the_manifest_and_behind_it_fletcher32(void **state) {
  (void)state;
  char dir[512], shard[600];
  saved_checkpoint(dir, sizeof dir);
  path_in(shard, sizeof shard, dir, "shard-00000-of-00001.h5");
  lt_test_flip_byte(shard, lt_fixture_data_offset(shard, "weights/layers.0.ffn.w_up") + 100);
  EXPECT_ERROR(load_into(dir, 32, false), LT_ERR_CKPT, shard, "corrupt (checksum mismatch)",
               "CRC-32C", "resume from an earlier one");
  lt_test_reseal_checkpoint(dir);
  EXPECT_ERROR(load_into(dir, 32, false), LT_ERR_CKPT, shard, "weights/layers.0.ffn.w_up",
               "Fletcher-32", "resume from an earlier one");
}

static void test_truncated_shard_is_a_size_mismatch_naming_it(void **state) {
  (void)state;
  char dir[512], shard[600];
  saved_checkpoint(dir, sizeof dir);
  path_in(shard, sizeof shard, dir, "shard-00000-of-00001.h5");
  assert_int_equal(truncate(shard, file_size(shard) * 2 / 3), 0);
  EXPECT_ERROR(load_into(dir, 32, false), LT_ERR_CKPT, shard,
               "truncated or corrupt (size mismatch)");
}

static void test_truncated_meta_is_a_size_mismatch_naming_it(void **state) {
  (void)state;
  char dir[512], meta[600];
  saved_checkpoint(dir, sizeof dir);
  path_in(meta, sizeof meta, dir, "meta.h5");
  assert_int_equal(truncate(meta, 100), 0);
  EXPECT_ERROR(load_into(dir, 32, false), LT_ERR_CKPT, meta,
               "truncated or corrupt (size mismatch)");
}

static void test_missing_meta_is_a_checkpoint_error_naming_it(void **state) {
  (void)state;
  char dir[512], meta[600];
  saved_checkpoint(dir, sizeof dir);
  path_in(meta, sizeof meta, dir, "meta.h5");
  assert_int_equal(unlink(meta), 0);
  EXPECT_ERROR(load_into(dir, 32, false), LT_ERR_CKPT, meta, "missing (manifest.txt lists it)");
}

// Not a checkpoint to load, and not one to skip either: --resume auto would start over and a save
// of its step would replace it (a longtrain from before manifests wrote such folders).
static void test_folder_with_meta_but_no_manifest_is_refused_not_skipped(void **state) {
  (void)state;
  char dir[512], manifest[600], root[512], latest[600];
  saved_checkpoint(dir, sizeof dir);
  path_in(manifest, sizeof manifest, dir, LT_MANIFEST_FILE);
  assert_int_equal(unlink(manifest), 0);
  EXPECT_ERROR(load_into(dir, 32, false), LT_ERR_CKPT, dir, "not a complete checkpoint",
               "no manifest.txt", "--resume auto");
  snprintf(root, sizeof root, "%s", dir);
  *strrchr(root, '/') = '\0';
  EXPECT_ERROR(lt_checkpoint_latest(root, latest, sizeof latest), LT_ERR_CKPT, dir,
               "has meta.h5 but no manifest.txt", "move it out");
}

// What a newer longtrain would write: a manifest of a later version, sealed.
static void test_newer_manifest_version_is_refused_saying_upgrade(void **state) {
  (void)state;
  char dir[512], path[600];
  saved_checkpoint(dir, sizeof dir);
  path_in(path, sizeof path, dir, LT_MANIFEST_FILE);
  char *text = lt_test_read_text(path), *newer;
  size_t len;
  lt_manifest m;
  assert_ok(lt_manifest_parse(path, text, strlen(text), &m));
  m.version = LT_MANIFEST_VERSION + 1;
  assert_ok(lt_manifest_format(&m, &newer, &len));
  FILE *f = fopen(path, "wb");
  assert_int_equal(fwrite(newer, 1, len, f), len);
  fclose(f);
  char expected[80];
  snprintf(expected, sizeof expected, "format version %d is newer than this longtrain reads (%d)",
           LT_MANIFEST_VERSION + 1, LT_MANIFEST_VERSION);
  EXPECT_ERROR(load_into(dir, 32, false), LT_ERR_CKPT, path, expected, "upgrade longtrain");
  lt_manifest_free(&m);
  free(newer);
  free(text);
}

static void test_newer_format_version_is_refused_naming_both_versions(void **state) {
  (void)state;
  char dir[512], meta[600];
  saved_checkpoint(dir, sizeof dir);
  path_in(meta, sizeof meta, dir, "meta.h5");
  hid_t file = H5Fopen(meta, H5F_ACC_RDWR, H5P_DEFAULT);
  hid_t attr = H5Aopen(file, "format_version", H5P_DEFAULT);
  int64_t newer = LT_CHECKPOINT_FORMAT_VERSION + 1;
  assert_true(H5Awrite(attr, H5T_NATIVE_INT64, &newer) >= 0);
  H5Aclose(attr);
  H5Fclose(file);
  lt_test_reseal_checkpoint(dir); // as the newer longtrain would have written it
  char expected[64];
  snprintf(expected, sizeof expected, "format_version %lld is newer than this longtrain reads (%d)",
           (long long)newer, LT_CHECKPOINT_FORMAT_VERSION);
  EXPECT_ERROR(load_into(dir, 32, false), LT_ERR_CKPT, meta, expected, "upgrade longtrain");
}

static void test_checkpoint_of_another_width_names_the_tensor_and_both_shapes(void **state) {
  (void)state;
  char dir[512];
  saved_checkpoint(dir, sizeof dir);
  EXPECT_ERROR(load_into(dir, 48, false), LT_ERR_CKPT, dir, "tensor embed", "(40, 32)", "(40, 48)",
               "another model shape");
}

static void test_checkpoint_with_a_tensor_the_model_lacks_names_it(void **state) {
  (void)state;
  char dir[512];
  saved_checkpoint(dir, sizeof dir); // untied: it has lm_head
  EXPECT_ERROR(load_into(dir, 32, true), LT_ERR_CKPT, dir, "tensor lm_head is not in this model");
}

static void test_checkpoint_missing_a_tensor_of_the_model_names_it(void **state) {
  (void)state;
  const char *root = lt_test_tmpdir();
  lt_model tied;
  lt_model_config cfg = toy_config(32);
  cfg.tie_embeddings = true;
  assert_ok(lt_model_create(&tied, &cfg, LT_CPU, NULL));
  assert_ok(save(root, 1, &tied));
  lt_model_destroy(&tied);
  char dir[512];
  path_in(dir, sizeof dir, root, "step_00000001");
  EXPECT_ERROR(load_into(dir, 32, false), LT_ERR_CKPT, dir, "weights/lm_head", "another model");
}

// --- failed writes ---

// Every file of checkpoint folder `dir` into `copy` (a new folder), to compare after a failure.
static void snapshot(const char *dir, const char *copy) {
  assert_int_equal(mkdir(copy, 0775), 0);
  const char *files[] = {"meta.h5", "shard-00000-of-00001.h5", LT_MANIFEST_FILE};
  for (int i = 0; i < 3; i++) {
    char from[600], to[600];
    path_in(from, sizeof from, dir, files[i]);
    path_in(to, sizeof to, copy, files[i]);
    lt_test_copy_file(from, to);
  }
}

static void assert_unchanged(const char *dir, const char *copy) {
  const char *files[] = {"meta.h5", "shard-00000-of-00001.h5", LT_MANIFEST_FILE};
  for (int i = 0; i < 3; i++) {
    char a[600], b[600];
    path_in(a, sizeof a, dir, files[i]);
    path_in(b, sizeof b, copy, files[i]);
    if (!lt_test_same_file(a, b)) fail_msg("%s changed", a);
  }
}

// A failed save: an LT_ERR_IO naming the checkpoint and the fix, nothing left of the new one,
// and the previous one byte for byte as it was and still the latest.
static void expect_failed_save_keeps_the_previous(const char *root, int rc) {
  char tmp[512], failed[512], previous[512], latest[600];
  path_in(tmp, sizeof tmp, root, ".tmp-step_00000002");
  path_in(failed, sizeof failed, root, "step_00000002");
  path_in(previous, sizeof previous, root, "step_00000001");
  EXPECT_ERROR(rc, LT_ERR_IO, failed, "No space left on device", "--resume auto",
               "earlier checkpoints are intact");
  assert_int_equal(access(tmp, F_OK), -1);
  assert_int_equal(access(failed, F_OK), -1);
  assert_ok(lt_checkpoint_latest(root, latest, sizeof latest));
  assert_string_equal(latest, previous);
}

static void test_injected_write_failure_keeps_the_previous_checkpoint(void **state) {
  (void)state;
  const char *root = lt_test_tmpdir();
  lt_model model;
  toy_model(&model, 32, 1);
  assert_ok(save(root, 1, &model));
  char previous[512], copy[512];
  path_in(previous, sizeof previous, root, "step_00000001");
  path_in(copy, sizeof copy, lt_test_tmpdir(), "copy");
  snapshot(previous, copy);
  setenv("LT_FAULT_INJECT", "ckpt_write:after_bytes=20000", 1);
  int rc = save(root, 2, &model);
  unsetenv("LT_FAULT_INJECT");
  expect_failed_save_keeps_the_previous(root, rc);
  assert_unchanged(previous, copy);
  lt_model_destroy(&model);
}

// The real thing where the test may mount: a tmpfs with room for one checkpoint, not two. The
// checks run before the unmount (an assertion would leave the mount behind) and are asserted
// after it.
static void test_full_tmpfs_keeps_the_previous_checkpoint(void **state) {
  (void)state;
  char mnt[512];
  path_in(mnt, sizeof mnt, lt_test_tmpdir(), "small-disk");
  assert_int_equal(mkdir(mnt, 0775), 0);
  if (geteuid() != 0 || mount("tmpfs", mnt, "tmpfs", 0, "size=400k") != 0) {
    print_message("skipped: cannot mount a tmpfs here (not root, or no CAP_SYS_ADMIN); "
                  "test_injected_write_failure_keeps_the_previous_checkpoint covers it\n");
    skip();
  }
  lt_model model;
  toy_model(&model, 32, 1);
  char root[600], previous[700], copy[512], latest[800] = "", message[1024] = "";
  path_in(root, sizeof root, mnt, "checkpoints");
  path_in(previous, sizeof previous, root, "step_00000001");
  path_in(copy, sizeof copy, lt_test_tmpdir(), "copy");
  int first = save(root, 1, &model), second = LT_ERR_INTERNAL;
  bool intact = false;
  if (first == LT_OK) {
    snapshot(previous, copy);
    second = save(root, 2, &model);
    snprintf(message, sizeof message, "%s", lt_error_message());
    char a[800], b[600];
    path_in(a, sizeof a, previous, "shard-00000-of-00001.h5");
    path_in(b, sizeof b, copy, "shard-00000-of-00001.h5");
    intact = lt_test_same_file(a, b);
    lt_checkpoint_latest(root, latest, sizeof latest);
  }
  lt_model_destroy(&model);
  assert_int_equal(umount(mnt), 0);
  assert_ok(first);
  lt_fail(second, "%s", message);
  char failed[700];
  path_in(failed, sizeof failed, root, "step_00000002");
  EXPECT_ERROR(second, LT_ERR_IO, failed, "No space left on device", "--resume auto");
  assert_true(intact);
  assert_string_equal(latest, previous);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_weights_and_moments_read_back_bit_for_bit),
      cmocka_unit_test(test_load_weights_leaves_the_optimizer_state_alone),
      cmocka_unit_test(test_read_config_gives_the_saved_config),
      cmocka_unit_test(test_files_are_plain_hdf5_with_logical_names_and_checksums),
      cmocka_unit_test(test_the_same_state_saved_twice_gives_identical_files),
      cmocka_unit_test(test_two_shards_split_by_rows_load_into_one_process),
      cmocka_unit_test(test_missing_shard_is_a_checkpoint_error_naming_it),
      cmocka_unit_test(test_only_complete_checkpoints_count_as_the_latest),
      cmocka_unit_test(test_no_checkpoint_at_all_gives_an_empty_latest),
      cmocka_unit_test(test_prune_keeps_the_newest_and_removes_interrupted_writes),
      cmocka_unit_test(test_saving_a_step_again_replaces_its_checkpoint),
      cmocka_unit_test(test_a_flipped_byte_in_any_file_is_a_checksum_error_naming_it),
      cmocka_unit_test(test_flipped_tensor_bytes_fail_the_manifest_and_behind_it_fletcher32),
      cmocka_unit_test(test_truncated_shard_is_a_size_mismatch_naming_it),
      cmocka_unit_test(test_truncated_meta_is_a_size_mismatch_naming_it),
      cmocka_unit_test(test_missing_meta_is_a_checkpoint_error_naming_it),
      cmocka_unit_test(test_folder_with_meta_but_no_manifest_is_refused_not_skipped),
      cmocka_unit_test(test_newer_manifest_version_is_refused_saying_upgrade),
      cmocka_unit_test(test_newer_format_version_is_refused_naming_both_versions),
      cmocka_unit_test(test_checkpoint_of_another_width_names_the_tensor_and_both_shapes),
      cmocka_unit_test(test_checkpoint_with_a_tensor_the_model_lacks_names_it),
      cmocka_unit_test(test_checkpoint_missing_a_tensor_of_the_model_names_it),
      cmocka_unit_test(test_injected_write_failure_keeps_the_previous_checkpoint),
      cmocka_unit_test(test_full_tmpfs_keeps_the_previous_checkpoint),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
