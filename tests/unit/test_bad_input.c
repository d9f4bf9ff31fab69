// Bad input to `longtrain train` and `longtrain info`, as a user meets it: damaged datasets and
// checkpoints, a checkpoint of another model or a newer format, a disk that fills up while
// saving, and wrong arguments. Each exits with its documented status and exactly one line on
// stderr naming the file or key and the fix; after a failed save the last good checkpoint is
// byte for byte intact and still the one --resume auto takes.
#include <hdf5.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/dataset.h"
#include "fixture.h"
#include "train/checkpoint.h"
#include "train/checkpoint_manifest.h"
#include "runs.h"
#include "testing.h"

enum { OUT_CAP = 1 << 16 };

// Runs `longtrain ARGS` with stdout discarded: what comes back is stderr alone.
static int longtrain_stderr(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int longtrain_stderr(char *out, const char *fmt, ...) {
  char args[4096], command[4400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(args, sizeof args, fmt, ap);
  va_end(ap);
  snprintf(command, sizeof command, "%s %s 2>&1 >/dev/null", lt_test_binary(), args);
  return lt_test_run(command, out, OUT_CAP);
}

// Exit status `expected` and exactly one line "longtrain: error: ..." holding every part.
static void expect_one_line(int status, const char *out, int expected, const char *const *parts) {
  if (status != expected)
    fail_msg("exit status %d, expected %d; stderr:\n%s", status, expected, out);
  const char *newline = strchr(out, '\n');
  if (!newline || newline[1] != '\0')
    fail_msg("expected exactly one line on stderr, got:\n%s", out);
  if (strncmp(out, "longtrain: error: ", 18) != 0) fail_msg("not an error line: %s", out);
  for (int i = 0; parts[i]; i++)
    if (!strstr(out, parts[i])) fail_msg("'%s' is missing from: %s", parts[i], out);
}
#define EXPECT_LINE(status, out, expected, ...)                                                    \
  expect_one_line((status), (out), (expected), (const char *const[]){__VA_ARGS__, NULL})

// A run of `steps` steps with a checkpoint at each multiple of 2 into a new folder (run_dir).
static void trained_run(char *run_dir, size_t cap, int steps) {
  if (snprintf(run_dir, cap, "%s/run", lt_test_tmpdir()) >= (int)cap) fail_msg("path too long");
  char log[600], args[1200];
  snprintf(log, sizeof log, "%s.log", run_dir);
  snprintf(args, sizeof args,
           "train --config %s --set run.dir=%s --set train.steps=%d --set checkpoint.every=2",
           lt_test_run_files_get()->config, run_dir, steps);
  lt_test_expect_run(log, args, 0, "done: ");
}

static void path_in(char *out, size_t cap, const char *dir, const char *name) {
  if (snprintf(out, cap, "%s/%s", dir, name) >= (int)cap) fail_msg("path too long");
}

// --- datasets ---

static void test_dataset_with_flipped_token_bytes_exits_4_naming_it(void **state) {
  (void)state;
  char data[512], *out = malloc(OUT_CAP);
  path_in(data, sizeof data, lt_test_tmpdir(), "flipped.h5");
  lt_test_copy_file(lt_test_run_files_get()->data, data);
  lt_test_flip_byte(data, lt_fixture_data_offset(data, "tokens") + 5000);
  EXPECT_LINE(longtrain_stderr(out, "train --config %s --set data.path=%s --set run.dir=%s/r",
                               lt_test_run_files_get()->config, data, lt_test_tmpdir()),
              out, LT_ERR_DATA, data, "checksum mismatch", "prepare it again");
  free(out);
}

static void test_truncated_dataset_exits_4_naming_it(void **state) {
  (void)state;
  char data[512], *out = malloc(OUT_CAP);
  path_in(data, sizeof data, lt_test_tmpdir(), "truncated.h5");
  lt_test_copy_file(lt_test_run_files_get()->data, data);
  struct stat st;
  assert_int_equal(stat(data, &st), 0);
  assert_int_equal(truncate(data, st.st_size / 2), 0);
  EXPECT_LINE(longtrain_stderr(out, "train --config %s --set data.path=%s --set run.dir=%s/r",
                               lt_test_run_files_get()->config, data, lt_test_tmpdir()),
              out, LT_ERR_DATA, data, "prepare it again");
  free(out);
}

// Not an error: a dataset in h5py's default layout trains, with one warning that says what it
// risks and how to convert it.
static void test_dataset_without_metadata_checksums_trains_with_a_warning(void **state) {
  (void)state;
  char data[512], log[600], args[2000];
  path_in(data, sizeof data, lt_test_tmpdir(), "h5py.h5");
  lt_dataset prepared;
  assert_ok(lt_dataset_open(&prepared, lt_test_run_files_get()->data));
  int32_t *ids = malloc((size_t)prepared.n_tokens * sizeof *ids);
  assert_ok(lt_dataset_read(&prepared, 0, prepared.n_tokens, ids));
  lt_fixture_write_h5py_dataset(data, (const uint32_t *)ids, prepared.n_tokens,
                                prepared.vocab_size);
  free(ids);
  lt_dataset_close(&prepared);
  snprintf(log, sizeof log, "%s/run.log", lt_test_tmpdir());
  snprintf(args, sizeof args,
           "train --config %s --set data.path=%s --set run.dir=%s/r --set train.steps=2 "
           "--set data.packing=stream",
           lt_test_run_files_get()->config, data, lt_test_tmpdir());
  lt_test_expect_run(log, args, 0, "warning: data.path: ", data,
                     "HDF5's earliest format (h5py's default)", "may crash or hang HDF5",
                     "libver=", "done: ");
}

// --- checkpoints ---

static void test_resume_from_a_checkpoint_with_flipped_bytes_exits_5_naming_it(void **state) {
  (void)state;
  char run[512], ckpt[600], shard[700], *out = malloc(OUT_CAP);
  trained_run(run, sizeof run, 2);
  path_in(ckpt, sizeof ckpt, run, "checkpoints/step_00000002");
  path_in(shard, sizeof shard, ckpt, "shard-00000-of-00001.h5");
  lt_test_flip_byte(shard, lt_fixture_data_offset(shard, "adam_v/layers.1.ffn.w_down") + 64);
  EXPECT_LINE(longtrain_stderr(out, "train --config %s --set run.dir=%s --resume auto",
                               lt_test_run_files_get()->config, run),
              out, LT_ERR_CKPT, shard, "corrupt (checksum mismatch)",
              "delete this checkpoint and resume from an earlier one");
  free(out);
}

static void
test_resume_from_a_checkpoint_with_a_flipped_manifest_byte_exits_5_naming_it(void **state) {
  (void)state;
  char run[512], manifest[700], *out = malloc(OUT_CAP);
  trained_run(run, sizeof run, 2);
  path_in(manifest, sizeof manifest, run, "checkpoints/step_00000002/" LT_MANIFEST_FILE);
  lt_test_flip_byte(manifest, 40);
  EXPECT_LINE(longtrain_stderr(out, "train --config %s --set run.dir=%s --resume auto",
                               lt_test_run_files_get()->config, run),
              out, LT_ERR_CKPT, manifest, "corrupt (checksum mismatch)",
              "delete this checkpoint and resume from an earlier one");
  free(out);
}

static void test_resume_from_a_folder_without_a_manifest_exits_5_saying_incomplete(void **state) {
  (void)state;
  char run[512], ckpt[600], manifest[700], *out = malloc(OUT_CAP);
  trained_run(run, sizeof run, 2);
  path_in(ckpt, sizeof ckpt, run, "checkpoints/step_00000002");
  path_in(manifest, sizeof manifest, ckpt, LT_MANIFEST_FILE);
  assert_int_equal(unlink(manifest), 0);
  EXPECT_LINE(longtrain_stderr(out, "train --set run.dir=%s --resume %s", run, ckpt), out,
              LT_ERR_CKPT, ckpt, "not a complete checkpoint (no manifest.txt)", "--resume auto");
  free(out);
}

// A checkpoint from a longtrain that wrote no manifests (meta.h5, no manifest.txt): --resume auto
// and a fresh start into its run.dir both stop, naming it, and the folder is left as it was.
static void test_a_checkpoint_without_a_manifest_stops_resume_auto_and_fresh_runs(void **state) {
  (void)state;
  char run[512], ckpt[600], manifest[700], meta[700], *out = malloc(OUT_CAP);
  trained_run(run, sizeof run, 2);
  path_in(ckpt, sizeof ckpt, run, "checkpoints/step_00000002");
  path_in(manifest, sizeof manifest, ckpt, LT_MANIFEST_FILE);
  path_in(meta, sizeof meta, ckpt, "meta.h5");
  assert_int_equal(unlink(manifest), 0);
  struct stat before, after;
  assert_int_equal(stat(meta, &before), 0);
  const char *fixes[] = {"--resume auto", ""};
  for (int i = 0; i < 2; i++)
    EXPECT_LINE(longtrain_stderr(out, "train --config %s --set run.dir=%s --set train.steps=2 %s",
                                 lt_test_run_files_get()->config, run, fixes[i]),
                out, LT_ERR_CKPT, "step_00000002 has meta.h5 but no manifest.txt", "move it out");
  assert_int_equal(stat(meta, &after), 0); // still there, not rewritten
  assert_int_equal(after.st_size, before.st_size);
  assert_int_equal(after.st_mtim.tv_sec, before.st_mtim.tv_sec);
  assert_int_equal(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);
  free(out);
}

static void test_resume_from_a_truncated_checkpoint_exits_5_naming_it(void **state) {
  (void)state;
  char run[512], shard[700], *out = malloc(OUT_CAP);
  trained_run(run, sizeof run, 2);
  path_in(shard, sizeof shard, run, "checkpoints/step_00000002/shard-00000-of-00001.h5");
  assert_int_equal(truncate(shard, 5000), 0);
  EXPECT_LINE(longtrain_stderr(out, "train --config %s --set run.dir=%s --resume auto",
                               lt_test_run_files_get()->config, run),
              out, LT_ERR_CKPT, shard, "truncated or corrupt (size mismatch)");
  free(out);
}

static void test_resume_into_another_model_shape_exits_5_naming_the_tensor(void **state) {
  (void)state;
  char run[512], *out = malloc(OUT_CAP);
  trained_run(run, sizeof run, 2);
  EXPECT_LINE(longtrain_stderr(out,
                               "train --config %s --set run.dir=%s --set model.ffn_dim=96 "
                               "--resume auto",
                               lt_test_run_files_get()->config, run),
              out, LT_ERR_CKPT, "tensor layers.0.ffn.w_gate", "(160, 64)", "(96, 64)",
              "another model shape");
  free(out);
}

static void test_resume_from_a_newer_format_exits_5_saying_upgrade(void **state) {
  (void)state;
  char run[512], meta[700], *out = malloc(OUT_CAP);
  trained_run(run, sizeof run, 2);
  path_in(meta, sizeof meta, run, "checkpoints/step_00000002/meta.h5");
  hid_t file = H5Fopen(meta, H5F_ACC_RDWR, H5P_DEFAULT);
  hid_t attr = H5Aopen(file, "format_version", H5P_DEFAULT);
  int64_t newer = 99;
  assert_true(H5Awrite(attr, H5T_NATIVE_INT64, &newer) >= 0);
  H5Aclose(attr);
  H5Fclose(file);
  char ckpt[600];
  path_in(ckpt, sizeof ckpt, run, "checkpoints/step_00000002");
  lt_test_reseal_checkpoint(ckpt); // as the newer longtrain would have written it
  EXPECT_LINE(longtrain_stderr(out, "train --config %s --set run.dir=%s --resume auto",
                               lt_test_run_files_get()->config, run),
              out, LT_ERR_CKPT, meta, "format_version 99 is newer", "upgrade longtrain");
  free(out);
}

static void test_info_on_a_corrupt_checkpoint_exits_5(void **state) {
  (void)state;
  char run[512], ckpt[600], meta[700], *out = malloc(OUT_CAP);
  trained_run(run, sizeof run, 2);
  path_in(ckpt, sizeof ckpt, run, "checkpoints/step_00000002");
  path_in(meta, sizeof meta, ckpt, "meta.h5");
  assert_int_equal(truncate(meta, 200), 0);
  EXPECT_LINE(longtrain_stderr(out, "info %s", ckpt), out, LT_ERR_CKPT, meta, "size mismatch");
  free(out);
}

// --- a full disk ---

// The disk fills up during the run: the checkpoint of step 2 fits (1.5 MB of tensors), the one
// of step 4 does not.
static void test_disk_full_while_saving_exits_6_and_keeps_the_last_checkpoint(void **state) {
  (void)state;
  char reference[512], run[512], *out = malloc(OUT_CAP);
  trained_run(reference, sizeof reference, 2);
  if (snprintf(run, sizeof run, "%s/full", lt_test_tmpdir()) >= (int)sizeof run)
    fail_msg("path too long");
  char good[600], failed[600], tmp[600], expected_good[600];
  path_in(good, sizeof good, run, "checkpoints/step_00000002");
  path_in(failed, sizeof failed, run, "checkpoints/step_00000004");
  path_in(tmp, sizeof tmp, run, "checkpoints/.tmp-step_00000004");
  path_in(expected_good, sizeof expected_good, reference, "checkpoints/step_00000002");
  const char *args = "train --config %s --set run.dir=%s --set train.steps=6 "
                     "--set checkpoint.every=2";
  setenv("LT_FAULT_INJECT", "ckpt_write:after_bytes=2000000", 1);
  int status = longtrain_stderr(out, args, lt_test_run_files_get()->config, run);
  unsetenv("LT_FAULT_INJECT");
  EXPECT_LINE(status, out, LT_ERR_IO, failed, "No space left on device", "--resume auto",
              "earlier checkpoints are intact");
  assert_int_equal(access(tmp, F_OK), -1);
  assert_int_equal(access(failed, F_OK), -1);
  lt_test_assert_same_checkpoint(good, expected_good);

  // The next attempt resumes from the checkpoint that survived and completes.
  char log[600], resume[1400];
  snprintf(log, sizeof log, "%s.after.log", run);
  snprintf(resume, sizeof resume, args, lt_test_run_files_get()->config, run);
  strcat(resume, " --resume auto");
  char expected[700];
  snprintf(expected, sizeof expected, "resumed from %s at step 2", good);
  lt_test_expect_run(log, resume, 0, expected);
  free(out);
}

// --- arguments ---

static void test_resume_from_a_path_with_init_from_exits_2(void **state) {
  (void)state;
  char *out = malloc(OUT_CAP);
  EXPECT_LINE(longtrain_stderr(out, "train --config %s --resume some/ckpt --init-from x",
                               lt_test_run_files_get()->config),
              out, LT_ERR_USAGE, "--resume CKPT", "--init-from", "give one of them");
  free(out);
}

static void test_unknown_freeze_entry_exits_3_naming_train_freeze(void **state) {
  (void)state;
  char *out = malloc(OUT_CAP);
  EXPECT_LINE(longtrain_stderr(out, "train --config %s --set train.freeze=attn,mlp",
                               lt_test_run_files_get()->config),
              out, LT_ERR_CONFIG, "train.freeze", "'mlp'", "embed, norm, attn, ffn, head");
  free(out);
}

static void test_eval_every_without_a_validation_set_exits_3(void **state) {
  (void)state;
  char *out = malloc(OUT_CAP);
  EXPECT_LINE(longtrain_stderr(out, "train --config %s --set data.val_fraction=0",
                               lt_test_run_files_get()->config),
              out, LT_ERR_CONFIG, "train.eval_every (10)", "data.val_fraction", "data.val_path");
  free(out);
}

static void test_info_without_a_checkpoint_exits_2(void **state) {
  (void)state;
  char *out = malloc(OUT_CAP);
  EXPECT_LINE(longtrain_stderr(out, "info"), out, LT_ERR_USAGE, "info: give one checkpoint");
  free(out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_dataset_with_flipped_token_bytes_exits_4_naming_it),
      cmocka_unit_test(test_truncated_dataset_exits_4_naming_it),
      cmocka_unit_test(test_dataset_without_metadata_checksums_trains_with_a_warning),
      cmocka_unit_test(test_resume_from_a_checkpoint_with_flipped_bytes_exits_5_naming_it),
      cmocka_unit_test(
          test_resume_from_a_checkpoint_with_a_flipped_manifest_byte_exits_5_naming_it),
      cmocka_unit_test(test_resume_from_a_folder_without_a_manifest_exits_5_saying_incomplete),
      cmocka_unit_test(test_a_checkpoint_without_a_manifest_stops_resume_auto_and_fresh_runs),
      cmocka_unit_test(test_resume_from_a_truncated_checkpoint_exits_5_naming_it),
      cmocka_unit_test(test_resume_into_another_model_shape_exits_5_naming_the_tensor),
      cmocka_unit_test(test_resume_from_a_newer_format_exits_5_saying_upgrade),
      cmocka_unit_test(test_info_on_a_corrupt_checkpoint_exits_5),
      cmocka_unit_test(test_disk_full_while_saving_exits_6_and_keeps_the_last_checkpoint),
      cmocka_unit_test(test_resume_from_a_path_with_init_from_exits_2),
      cmocka_unit_test(test_unknown_freeze_entry_exits_3_naming_train_freeze),
      cmocka_unit_test(test_eval_every_without_a_validation_set_exits_3),
      cmocka_unit_test(test_info_without_a_checkpoint_exits_2),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
