// Training on a synthetic task (data.task): the trainer's sample sources. A task source gives
// sample i as sequence i of the task's training stream, shards a global batch over data-parallel
// ranks as the dataset loader does, keeps its validation and evaluation streams apart from the
// training one, and a task run resumed from a checkpoint continues bit for bit. A dataset source
// reads exactly the loader's windows. Task settings that do not fit are one-line config errors.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "data/source.h"
#include "runs.h"
#include "testing.h"
#include "train/trainer.h"

enum { T = 32, MAX_B = 64 };

static const char *task_yaml = "model:\n"
                               "  d_model: 32\n"
                               "  n_layers: 2\n"
                               "  n_heads: 2\n"
                               "  ffn_dim: 64\n"
                               "  vocab_size: 48\n"
                               "  max_seq_len: 64\n"
                               "train:\n"
                               "  seq_len: 32\n"
                               "  batch: 8\n"
                               "  micro_batch: 4\n"
                               "  steps: 20\n"
                               "  warmup: 4\n"
                               "  lr: 3e-3\n"
                               "  eval_every: 5\n"
                               "  eval_batches: 2\n"
                               "data:\n"
                               "  task: mqar\n"
                               "  task_vocab: 40\n"
                               "  task_pairs: 6\n"
                               "checkpoint:\n"
                               "  every: 10\n"
                               "  keep: 5\n"
                               "run:\n"
                               "  threads: 1\n"
                               "  log_every: 5\n";

static lt_config task_config(int n_overrides, char *const *overrides) {
  lt_config cfg;
  assert_ok(lt_config_load_string(&cfg, task_yaml, "task.yaml", n_overrides, overrides));
  return cfg;
}

// B samples, T tokens each, in one buffer of every kind.
typedef struct samples {
  int32_t tokens[MAX_B * T], targets[MAX_B * T], pos[MAX_B * T], doc[MAX_B * T];
} samples;

static lt_samples view(samples *s, int64_t first) {
  return (lt_samples){s->tokens + first * T, s->targets + first * T, s->pos + first * T,
                      s->doc + first * T};
}

// --- the task source ---

static void test_task_source_sample_i_is_sequence_i_of_the_training_stream(void **state) {
  (void)state;
  const lt_config cfg = task_config(0, NULL);
  lt_source *src;
  assert_ok(lt_source_open(&src, &cfg, LT_SOURCE_TRAIN));
  assert_false(src->documents);
  lt_task task;
  assert_ok(lt_task_from_config(&cfg, LT_TASK_MQAR, LT_TASK_TRAIN, &task));
  assert_int_equal(task.vocab_size, 40);
  assert_int_equal(task.n_pairs, 6);
  assert_int_equal(task.seq_len, T);
  static samples got, want;
  src->next_sample = 24; // a resumed run: the position is all the state there is
  assert_ok(lt_source_next(src, 8, 0, 1, view(&got, 0)));
  assert_int_equal(src->next_sample, 32);
  assert_ok(lt_task_generate(&task, 24, 8, want.tokens, want.targets, want.pos));
  assert_memory_equal(got.tokens, want.tokens, sizeof(int32_t) * 8 * T);
  assert_memory_equal(got.targets, want.targets, sizeof(int32_t) * 8 * T);
  assert_memory_equal(got.pos, want.pos, sizeof(int32_t) * 8 * T);
  char text[512];
  lt_source_describe(src, text, sizeof text);
  assert_non_null(strstr(text, "task mqar"));
  assert_non_null(strstr(text, "6 key-value pairs"));
  lt_source_close(src);
}

static void
test_ranks_read_disjoint_shares_of_the_task_that_make_the_single_process_batch(void **state) {
  (void)state;
  const lt_config cfg = task_config(0, NULL);
  enum { B = 16 };
  static samples whole, shared;
  lt_source *one;
  assert_ok(lt_source_open(&one, &cfg, LT_SOURCE_TRAIN));
  for (int step = 0; step < 2; step++) assert_ok(lt_source_next(one, B, 0, 1, view(&whole, 0)));
  for (int world = 2; world <= 4; world *= 2) {
    for (int r = 0; r < world; r++) {
      lt_source *rank;
      assert_ok(lt_source_open(&rank, &cfg, LT_SOURCE_TRAIN));
      // The second step: rank r's B / world samples land where they sit in the whole batch.
      for (int step = 0; step < 2; step++)
        assert_ok(lt_source_next(rank, B, r, world, view(&shared, r * (B / world))));
      assert_int_equal(rank->next_sample, 2 * B);
      lt_source_close(rank);
    }
    assert_memory_equal(shared.tokens, whole.tokens, sizeof(int32_t) * B * T);
    assert_memory_equal(shared.targets, whole.targets, sizeof(int32_t) * B * T);
  }
  lt_source_close(one);
}

// Whether any of the first n sequences of `a` equals any of the first n of `b`.
static bool share_a_sequence(const int32_t *a, const int32_t *b, int n) {
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++)
      if (memcmp(a + i * T, b + j * T, sizeof(int32_t) * T) == 0) return true;
  return false;
}

static void test_training_validation_and_eval_streams_share_no_sequence(void **state) {
  (void)state;
  const lt_config cfg = task_config(0, NULL);
  static samples streams[3];
  const lt_task_stream kinds[3] = {LT_TASK_TRAIN, LT_TASK_VALIDATION, LT_TASK_EVAL};
  for (int k = 0; k < 3; k++) {
    lt_task task;
    assert_ok(lt_task_from_config(&cfg, LT_TASK_MQAR, kinds[k], &task));
    assert_ok(
        lt_task_generate(&task, 0, MAX_B, streams[k].tokens, streams[k].targets, streams[k].pos));
  }
  assert_false(share_a_sequence(streams[0].tokens, streams[1].tokens, MAX_B));
  assert_false(share_a_sequence(streams[0].tokens, streams[2].tokens, MAX_B));
  assert_false(share_a_sequence(streams[1].tokens, streams[2].tokens, MAX_B));
  // The validation source is the validation stream, from its first sequence.
  lt_source *val;
  assert_ok(lt_source_open(&val, &cfg, LT_SOURCE_VALIDATION));
  static samples got;
  assert_ok(lt_source_next(val, 4, 0, 1, view(&got, 0)));
  assert_memory_equal(got.tokens, streams[1].tokens, sizeof(int32_t) * 4 * T);
  lt_source_close(val);
  // Another run.seed, other sequences.
  char *seed[] = {"run.seed=99"};
  const lt_config other = task_config(1, seed);
  lt_task task;
  assert_ok(lt_task_from_config(&other, LT_TASK_MQAR, LT_TASK_TRAIN, &task));
  static samples reseeded;
  assert_ok(lt_task_generate(&task, 0, MAX_B, reseeded.tokens, reseeded.targets, reseeded.pos));
  assert_false(share_a_sequence(streams[0].tokens, reseeded.tokens, MAX_B));
}

static void test_passkey_settings_come_from_the_data_task_keys(void **state) {
  (void)state;
  char *keys[] = {"data.task=passkey", "data.task_passkey_len=3", "data.task_depth_min=0.25",
                  "data.task_depth_max=0.5"};
  const lt_config cfg = task_config(4, keys);
  lt_task task;
  assert_ok(lt_task_from_config(&cfg, (lt_task_kind)cfg.data.task, LT_TASK_TRAIN, &task));
  assert_int_equal(task.kind, LT_TASK_PASSKEY);
  assert_int_equal(task.passkey_len, 3);
  assert_true(task.depth_min == 0.25 && task.depth_max == 0.5);
  // data.task_pairs 0 means train.seq_len / 8.
  char *auto_pairs[] = {"data.task_pairs=0"};
  const lt_config mqar = task_config(1, auto_pairs);
  assert_ok(lt_task_from_config(&mqar, LT_TASK_MQAR, LT_TASK_TRAIN, &task));
  assert_int_equal(task.n_pairs, T / 8);
}

// --- the dataset source ---

static void test_dataset_source_reads_the_loader_windows_and_the_held_out_ones(void **state) {
  (void)state;
  const lt_test_run_files *files = lt_test_run_files_get(); // documents packing, 10% held out
  lt_config cfg;
  assert_ok(lt_config_load(&cfg, files->config, 0, NULL));
  const int64_t seq = cfg.train.seq_len;
  lt_dataset ds;
  assert_ok(lt_dataset_open(&ds, files->data));
  const lt_loader_role roles[2] = {LT_LOADER_TRAIN, LT_LOADER_EVAL};
  for (int k = 0; k < 2; k++) {
    lt_loader loader;
    assert_ok(lt_loader_create(&loader, &ds,
                               &(lt_loader_spec){.seq_len = seq,
                                                 .packing = LT_PACK_DOCUMENTS,
                                                 .seed = (uint64_t)cfg.run.seed,
                                                 .held_out = cfg.data.val_fraction,
                                                 .role = roles[k]}));
    lt_source *src;
    assert_ok(lt_source_open(&src, &cfg, k == 0 ? LT_SOURCE_TRAIN : LT_SOURCE_VALIDATION));
    assert_true(src->documents);
    const int64_t n = 4 * seq;
    int32_t *a = malloc(sizeof(int32_t) * 8 * (size_t)n),
            *b = malloc(sizeof(int32_t) * 8 * (size_t)n);
    for (int step = 0; step < 3; step++) {
      assert_ok(lt_loader_next(&loader, 4, 0, 1, (lt_samples){a, a + n, a + 2 * n, a + 3 * n}));
      assert_ok(lt_source_next(src, 4, 0, 1, (lt_samples){b, b + n, b + 2 * n, b + 3 * n}));
      assert_memory_equal(a, b, sizeof(int32_t) * 4 * (size_t)n);
    }
    free(a), free(b);
    lt_source_close(src);
    lt_loader_destroy(&loader);
  }
  lt_dataset_close(&ds);
  // Without held-out data there is no validation source.
  char *no_val[] = {"data.val_fraction=0", "train.eval_every=0"};
  assert_ok(lt_config_load(&cfg, files->config, 2, no_val));
  lt_source *val;
  assert_ok(lt_source_open(&val, &cfg, LT_SOURCE_VALIDATION));
  assert_null(val);
}

// --- config errors ---

static void expect_config_error(int n, char *const *overrides, const char *const *parts) {
  lt_config cfg;
  int rc = lt_config_load_string(&cfg, task_yaml, "task.yaml", n, overrides);
  if (rc == LT_OK) { // sizes that only the task can judge fail when the trainer is made
    lt_world world = {.rank = 0, .size = 1};
    lt_trainer tr;
    rc = lt_trainer_create(&tr, &cfg, &world);
    lt_trainer_destroy(&tr);
  }
  lt_test_expect_error(rc, LT_ERR_CONFIG, parts);
}
#define EXPECT_CONFIG_ERROR(override, ...)                                                         \
  expect_config_error(1, (char *[]){override}, (const char *const[]){__VA_ARGS__, NULL})

static void test_task_settings_that_do_not_fit_are_config_errors_naming_the_key(void **state) {
  (void)state;
  EXPECT_CONFIG_ERROR("data.path=tokens.h5", "task.yaml", "data.task (mqar)", "data.path", "unset");
  EXPECT_CONFIG_ERROR("data.val_fraction=0.1", "task.yaml", "data.val_fraction", "unset");
  EXPECT_CONFIG_ERROR("data.val_path=val.h5", "task.yaml", "data.val_path");
  EXPECT_CONFIG_ERROR("data.packing=documents", "task.yaml", "data.packing", "stream");
  EXPECT_CONFIG_ERROR("data.task_vocab=100", "task.yaml", "data.task_vocab (100)",
                      "model.vocab_size (48)");
  EXPECT_CONFIG_ERROR("data.task_pairs=30", "task.yaml", "task mqar", "data.task_vocab (40)",
                      "data.task_pairs (30)", "at least 62");
  EXPECT_CONFIG_ERROR("data.task_pairs=12", "task.yaml", "train.seq_len (32)", "at least 48");
  EXPECT_CONFIG_ERROR("data.task=unknown", "data.task", "none", "mqar", "passkey");
  EXPECT_CONFIG_ERROR("data.task_power_a=0", "task.yaml", "data.task_power_a (0)");
  expect_config_error(
      3, (char *[]){"data.task=passkey", "data.task_depth_min=0.6", "data.task_depth_max=0.4"},
      (const char *const[]){"task.yaml", "data.task_depth_min (0.6)", "data.task_depth_max (0.4)",
                            NULL});
  expect_config_error(
      2, (char *[]){"data.task=passkey", "data.task_passkey_len=20"},
      (const char *const[]){"task.yaml", "data.task_passkey_len", "at least 41", NULL});
  // A dataset run without data.path is told about both ways to give it samples.
  expect_config_error(
      2, (char *[]){"data.task=none", "train.eval_every=0"},
      (const char *const[]){"task.yaml", "data.path is not set", "data.task", NULL});
}

// --- resuming ---

static void
test_a_task_run_resumed_from_its_checkpoint_matches_the_straight_run_bit_for_bit(void **state) {
  (void)state;
  const char *tmp = lt_test_tmpdir();
  char config[512], straight[512], resumed[512], log[600], args[2048];
  snprintf(config, sizeof config, "%s/task.yaml", tmp);
  lt_test_write_file(config, task_yaml);
  snprintf(straight, sizeof straight, "%s/straight", tmp);
  snprintf(resumed, sizeof resumed, "%s/resumed", tmp);
  snprintf(log, sizeof log, "%s/straight.log", tmp);
  snprintf(args, sizeof args, "train --config %s --set run.dir=%s", config, straight);
  lt_test_expect_run(log, args, 0, "data: task mqar", "val loss", "done: 20 steps");
  // Steps 11 to 20 again, from the checkpoint of step 10, in another folder.
  snprintf(log, sizeof log, "%s/resumed.log", tmp);
  snprintf(args, sizeof args, "train --resume %s/checkpoints/step_00000010 --set run.dir=%s",
           straight, resumed);
  lt_test_expect_run(log, args, 0, "resumed from", "done: 20 steps");
  lt_test_records a, b;
  lt_test_read_records(straight, &a);
  lt_test_read_records(resumed, &b);
  assert_int_equal(a.n, 20);
  assert_int_equal(b.n, 10);
  for (int i = 0; i < 10; i++) assert_string_equal(a.lines[10 + i], b.lines[i]);
  char ckpt_a[600], ckpt_b[600];
  snprintf(ckpt_a, sizeof ckpt_a, "%s/checkpoints/step_00000020", straight);
  snprintf(ckpt_b, sizeof ckpt_b, "%s/checkpoints/step_00000020", resumed);
  lt_test_assert_same_checkpoint(ckpt_a, ckpt_b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_task_source_sample_i_is_sequence_i_of_the_training_stream),
      cmocka_unit_test(
          test_ranks_read_disjoint_shares_of_the_task_that_make_the_single_process_batch),
      cmocka_unit_test(test_training_validation_and_eval_streams_share_no_sequence),
      cmocka_unit_test(test_passkey_settings_come_from_the_data_task_keys),
      cmocka_unit_test(test_dataset_source_reads_the_loader_windows_and_the_held_out_ones),
      cmocka_unit_test(test_task_settings_that_do_not_fit_are_config_errors_naming_the_key),
      cmocka_unit_test(
          test_a_task_run_resumed_from_its_checkpoint_matches_the_straight_run_bit_for_bit),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
