// Runs that survive, tested with the real binary and real signals: a run killed with SIGKILL and
// resumed with --resume auto logs the same losses and ends with the same parameters as one that
// was never interrupted; SIGTERM and SIGUSR1 stop after a checkpoint with status 11; --init-from
// starts from exactly a checkpoint's weights, keeps frozen groups frozen, and extends the
// context; `longtrain info` summarises a checkpoint.
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "data/loader.h"
#include "model/model.h"
#include "runs.h"
#include "testing.h"
#include "train/checkpoint.h"
#include "train/checkpoint_manifest.h"

enum { STEPS = 40 };

static void run_dir(char *out, size_t cap, const char *name) {
  if (snprintf(out, cap, "%s/%s", lt_test_tmpdir(), name) >= (int)cap) fail_msg("path too long");
}

static void checkpoint_dir(char *out, size_t cap, const char *run, int64_t step) {
  if (snprintf(out, cap, "%s/checkpoints/step_%08lld", run, (long long)step) >= (int)cap)
    fail_msg("path too long");
}

// Waits (up to a minute) until `path` exists; false if the process `pid` ended first.
static bool wait_for(const char *path, pid_t pid) {
  for (int i = 0; i < 60000; i++) {
    if (access(path, F_OK) == 0) return true;
    if (waitpid(pid, NULL, WNOHANG) == pid) return false;
    usleep(1000);
  }
  return false;
}

// Waits until RUN/metrics.jsonl holds at least n records; false if the process ended first.
static bool wait_for_records(const char *run, int n, pid_t pid) {
  for (int i = 0; i < 60000; i++) {
    lt_test_records records;
    lt_test_read_records(run, &records);
    if (records.n >= n) return true;
    if (waitpid(pid, NULL, WNOHANG) == pid) return false;
    usleep(1000);
  }
  return false;
}

// The run of STEPS steps that is never interrupted, made once: the reference for the others.
static const char *straight_run(void) {
  static char dir[512];
  if (dir[0]) return dir;
  run_dir(dir, sizeof dir, "straight");
  char log[600], args[1400];
  snprintf(log, sizeof log, "%s.log", dir);
  snprintf(args, sizeof args, "train --config %s --set run.dir=%s", lt_test_run_files_get()->config,
           dir);
  lt_test_expect_run(log, args, 0, "done: 40 steps");
  return dir;
}

static void assert_same_records(const lt_test_records *a, const lt_test_records *b) {
  if (a->n != b->n) fail_msg("%d records against %d", a->n, b->n);
  for (int i = 0; i < a->n; i++)
    if (strcmp(a->lines[i], b->lines[i]) != 0)
      fail_msg("record %d differs:\n  %s\n  %s", i, a->lines[i], b->lines[i]);
}

// --- kill and resume ---

static void test_sigkill_then_resume_auto_reproduces_the_straight_run_bit_for_bit(void **state) {
  (void)state;
  const char *straight = straight_run();
  char dir[512], log[600], args[1400], watch[600];
  run_dir(dir, sizeof dir, "killed");
  snprintf(log, sizeof log, "%s.log", dir);
  snprintf(args, sizeof args, "train --config %s --set run.dir=%s", lt_test_run_files_get()->config,
           dir);
  pid_t pid = lt_test_spawn(log, args);
  // Killed three steps after the checkpoint of step 10: those steps are lost and done again.
  checkpoint_dir(watch, sizeof watch, dir, 10);
  if (!wait_for(watch, pid)) fail_msg("the run ended before writing %s", watch);
  if (!wait_for_records(dir, 13, pid)) fail_msg("the run ended before step 13");
  assert_int_equal(kill(pid, SIGKILL), 0); // no warning: the process gets no say
  int status = lt_test_wait(pid);
  if (status != 128 + SIGKILL) fail_msg("the run was not killed mid-way (status %d)", status);

  // What the killed run logged, including steps after its last checkpoint.
  lt_test_records killed, reference;
  lt_test_read_records(dir, &killed);
  lt_test_read_records(straight, &reference);
  assert_true(killed.n >= 13 && killed.n < STEPS);
  for (int i = 0; i < killed.n; i++) assert_string_equal(killed.lines[i], reference.lines[i]);

  snprintf(args + strlen(args), sizeof args - strlen(args), " --resume auto");
  lt_test_expect_run(log, args, 0, "resumed from");
  lt_test_records resumed;
  lt_test_read_records(dir, &resumed);
  assert_same_records(&reference, &resumed);
  char a[600], b[600];
  checkpoint_dir(a, sizeof a, straight, STEPS);
  checkpoint_dir(b, sizeof b, dir, STEPS);
  lt_test_assert_same_checkpoint(a, b);
}

// Starts the standard run into `name`, sends `signo` once it has logged a step, and expects it to
// finish that step, write its checkpoint and exit 11. Returns the step it stopped after.
static int64_t stop_with(int signo, const char *name, char *dir, size_t cap, char *args,
                         size_t args_cap) {
  char log[600];
  run_dir(dir, cap, name);
  snprintf(log, sizeof log, "%s.log", dir);
  snprintf(args, args_cap, "train --config %s --set run.dir=%s --set checkpoint.every=0",
           lt_test_run_files_get()->config, dir);
  pid_t pid = lt_test_spawn(log, args);
  // A logged step, not merely metrics.jsonl: the file is created before the signal handlers are
  // installed, and a signal in between ends the process as SIGTERM's default does.
  if (!wait_for_records(dir, 1, pid)) fail_msg("the run logged nothing");
  assert_int_equal(kill(pid, signo), 0);
  lt_test_expect_exit(pid, LT_STOPPED, log);
  lt_test_records records;
  lt_test_read_records(dir, &records);
  int64_t step = (int64_t)lt_test_record_value(records.lines[records.n - 1], "step");
  assert_true(step >= 1 && step < STEPS);
  char *out = lt_test_read_text(log), expected[800], ckpt[600];
  checkpoint_dir(ckpt, sizeof ckpt, dir, step);
  snprintf(expected, sizeof expected,
           "longtrain: stopped by %s after step %lld; checkpoint %s written: run the same command "
           "with --resume auto to continue\n",
           signo == SIGTERM ? "SIGTERM" : "SIGUSR1", (long long)step, ckpt);
  if (!strstr(out, expected)) fail_msg("expected the line\n%sin the log:\n%s", expected, out);
  free(out);
  if (access(ckpt, F_OK) != 0) fail_msg("%s was not written", ckpt);
  return step;
}

static void
test_sigterm_stops_after_a_checkpoint_with_status_11_and_resume_completes(void **state) {
  (void)state;
  const char *straight = straight_run();
  char dir[512], args[1400], log[600];
  stop_with(SIGTERM, "sigterm", dir, sizeof dir, args, sizeof args);
  snprintf(log, sizeof log, "%s.resume.log", dir);
  snprintf(args + strlen(args), sizeof args - strlen(args), " --resume auto");
  lt_test_expect_run(log, args, 0, "resumed from");
  lt_test_records resumed, reference;
  lt_test_read_records(dir, &resumed);
  lt_test_read_records(straight, &reference);
  assert_same_records(&reference, &resumed);
}

static void test_sigusr1_also_stops_after_a_checkpoint_with_status_11(void **state) {
  (void)state;
  char dir[512], args[1400];
  stop_with(SIGUSR1, "sigusr1", dir, sizeof dir, args, sizeof args);
}

static void test_resume_auto_without_a_checkpoint_starts_from_step_0(void **state) {
  (void)state;
  char dir[512], log[600], args[1400];
  run_dir(dir, sizeof dir, "fresh");
  snprintf(log, sizeof log, "%s.log", dir);
  snprintf(args, sizeof args,
           "train --config %s --set run.dir=%s --set train.steps=2 --resume auto",
           lt_test_run_files_get()->config, dir);
  lt_test_expect_run(log, args, 0, "no checkpoint in", "starting from step 0");
}

static void test_validation_loss_is_logged_every_eval_every_steps(void **state) {
  (void)state;
  lt_test_records records;
  lt_test_read_records(straight_run(), &records);
  assert_int_equal(records.n, STEPS);
  for (int i = 0; i < records.n; i++) {
    bool has = !strstr(records.lines[i], "val_loss=-");
    if (has != ((i + 1) % 10 == 0)) fail_msg("record %d: %s", i, records.lines[i]);
    if (has) assert_true(lt_test_record_value(records.lines[i], "val_loss") > 0);
  }
}

static void test_resume_with_a_changed_key_warns_naming_it(void **state) {
  (void)state;
  char ckpt[600], log[600], args[1400];
  checkpoint_dir(ckpt, sizeof ckpt, straight_run(), 30);
  snprintf(log, sizeof log, "%s/changed.log", lt_test_tmpdir());
  snprintf(args, sizeof args, "train --resume %s --set run.dir=%s/changed --set train.lr=1e-3",
           ckpt, lt_test_tmpdir());
  lt_test_expect_run(log, args, 0,
                     "warning: resume: train.lr is 0.001, but 0.0030000000000000001 in the "
                     "checkpoint");
}

static void test_resuming_from_an_earlier_checkpoint_warns_about_later_ones(void **state) {
  (void)state;
  char dir[512], from[600], to[600], log[700], args[1400], later[700];
  run_dir(dir, sizeof dir, "branch");
  snprintf(to, sizeof to, "%s/checkpoints", dir);
  assert_ok(lt_make_dirs(to));
  for (int step = 30; step <= 40; step += 10) { // a copy of the straight run's last two
    checkpoint_dir(from, sizeof from, straight_run(), step);
    checkpoint_dir(to, sizeof to, dir, step);
    assert_ok(lt_make_dirs(to));
    const char *files[] = {"meta.h5", "shard-00000-of-00001.h5", LT_MANIFEST_FILE};
    for (int i = 0; i < 3; i++) {
      char a[700], b[700];
      snprintf(a, sizeof a, "%s/%s", from, files[i]);
      snprintf(b, sizeof b, "%s/%s", to, files[i]);
      lt_test_copy_file(a, b);
    }
  }
  checkpoint_dir(from, sizeof from, dir, 30);
  checkpoint_dir(later, sizeof later, dir, 40);
  snprintf(log, sizeof log, "%s.log", dir);
  snprintf(args, sizeof args, "train --resume %s --set run.dir=%s --set train.steps=31", from, dir);
  lt_test_expect_run(log, args, 0, "holds a later checkpoint", later,
                     "--resume auto would take it");
}

// What h5py, the reader users have, sees in a checkpoint (skipped where python3 has no h5py).
static void test_checkpoint_reads_in_h5py(void **state) {
  (void)state;
  char out[4096], command[2000], ckpt[600];
  if (lt_test_run("python3 -c 'import h5py'", out, sizeof out) != 0) {
    print_message("skipped: python3 cannot import h5py here\n");
    skip();
  }
  checkpoint_dir(ckpt, sizeof ckpt, straight_run(), STEPS);
  snprintf(command, sizeof command,
           "python3 -c 'import h5py, sys\n"
           "meta = h5py.File(sys.argv[1] + \"/meta.h5\", \"r\")\n"
           "shard = h5py.File(sys.argv[1] + \"/shard-00000-of-00001.h5\", \"r\")\n"
           "wq = shard[\"weights/layers.0.attn.wq\"]\n"
           "print(int(meta.attrs[\"step\"]), int(meta.attrs[\"format_version\"]), wq.shape, "
           "wq.attrs[\"logical_shape\"].tolist(), wq.attrs[\"offset\"].tolist(), wq.fletcher32, "
           "\"d_model: 64\" in meta.attrs[\"config\"].decode(), repr(float(wq[1, 2])))' %s",
           ckpt);
  if (lt_test_run(command, out, sizeof out) != 0) fail_msg("h5py failed:\n%s", out);
  lt_checkpoint ck;
  float row[3];
  assert_ok(lt_checkpoint_open(&ck, ckpt));
  assert_ok(lt_checkpoint_read_slice(&ck, LT_CKPT_WEIGHTS, "layers.0.attn.wq", 2, LT_SHAPE(1, 0),
                                     LT_SHAPE(1, 3), row));
  lt_checkpoint_close(&ck);
  const char *expected = "40 1 (64, 64) [64, 64] [0, 0] True True ";
  if (strncmp(out, expected, strlen(expected)) != 0) fail_msg("h5py printed: %s", out);
  if (strtod(out + strlen(expected), NULL) != (double)row[2])
    fail_msg("h5py read %s, longtrain %.9g", out + strlen(expected), row[2]);
}

// --- fine-tuning ---

// The loss of the first step of a run with the resolved config RUN_DIR/config.yaml, computed here
// from the weights of checkpoint `weights`.
static double first_step_loss(const char *run, const char *weights) {
  char path[600];
  snprintf(path, sizeof path, "%s/config.yaml", run);
  lt_config cfg;
  assert_ok(lt_config_load(&cfg, path, 0, NULL));
  lt_ctx ctx;
  assert_ok(lt_ctx_init(&ctx, LT_CPU, cfg.run.threads));
  lt_model model;
  assert_ok(lt_model_create(&model, &cfg.model, LT_CPU, NULL));
  assert_ok(lt_checkpoint_load_weights(weights, &model.params));
  lt_dataset ds;
  assert_ok(lt_dataset_open(&ds, cfg.data.path));
  const int64_t T = cfg.train.seq_len, B = cfg.train.batch;
  const int64_t micro = cfg.train.micro_batch ? cfg.train.micro_batch : B;
  lt_loader loader;
  lt_loader_spec spec = {.seq_len = T,
                         .packing = (lt_packing)cfg.data.packing,
                         .seed = (uint64_t)cfg.run.seed,
                         .held_out = cfg.data.val_fraction};
  assert_ok(lt_loader_create(&loader, &ds, &spec));
  int32_t *buf = malloc((size_t)(4 * B * T) * sizeof *buf);
  lt_samples s = {buf, buf + B * T, buf + 2 * B * T, buf + 3 * B * T};
  assert_ok(lt_loader_next(&loader, B, 0, 1, s));
  assert_ok(lt_model_plan(&model, micro, T, false));
  double sum = 0, count = 0;
  for (int64_t i = 0; i < B * T; i++) count += s.targets[i] != LT_IGNORE_INDEX;
  for (int64_t m = 0; m < B / micro; m++) {
    const int64_t at = m * micro * T, n = micro * T;
    lt_batch batch = {.B = micro,
                      .T = T,
                      .tokens = lt_view1(s.tokens + at, LT_I32, LT_CPU, n),
                      .targets = lt_view1(s.targets + at, LT_I32, LT_CPU, n),
                      .pos = lt_view1(s.pos + at, LT_I32, LT_CPU, n)};
    if (cfg.data.packing == LT_PACK_DOCUMENTS) batch.doc = lt_view1(s.doc + at, LT_I32, LT_CPU, n);
    double loss;
    assert_ok(lt_model_forward(&model, &ctx, &batch, false, 0.0f, &loss));
    sum += loss;
  }
  free(buf);
  lt_loader_destroy(&loader);
  lt_dataset_close(&ds);
  lt_model_destroy(&model);
  lt_ctx_destroy(&ctx);
  return sum / count;
}

// Runs a fine-tune from the straight run's last checkpoint with `extra` arguments; returns its
// folder's first record's loss in *logged and what the checkpoint's weights give in *expected.
static void fine_tune(const char *name, const char *extra, char *dir, size_t cap, double *logged,
                      double *expected) {
  char base[600], log[600], args[2000];
  checkpoint_dir(base, sizeof base, straight_run(), STEPS);
  run_dir(dir, cap, name);
  snprintf(log, sizeof log, "%s.log", dir);
  // As a requeued job runs it: --resume auto takes the run's own checkpoint once it has one.
  snprintf(args, sizeof args, "train --config %s --set run.dir=%s --resume auto --init-from %s %s",
           lt_test_run_files_get()->config, dir, base, extra);
  lt_test_expect_run(log, args, 0, "initialised from the weights of");
  lt_test_records records;
  lt_test_read_records(dir, &records);
  *logged = lt_test_record_value(records.lines[0], "loss");
  *expected = first_step_loss(dir, base);
}

static void test_init_from_starts_from_the_checkpoint_weights_and_frozen_groups_stay(void **state) {
  (void)state;
  char dir[512], extra[800];
  snprintf(extra, sizeof extra,
           "--set train.steps=3 --set train.freeze=embed,attn,layers.1.ffn_norm --set data.path=%s "
           "--set run.seed=99",
           lt_test_run_files_get()->other);
  double logged, expected;
  fine_tune("finetune", extra, dir, sizeof dir, &logged, &expected);
  if (logged != expected)
    fail_msg("first loss %.17g, the checkpoint gives %.17g", logged, expected);

  char base[600], tuned[600];
  checkpoint_dir(base, sizeof base, straight_run(), STEPS);
  checkpoint_dir(tuned, sizeof tuned, dir, 3);
  lt_checkpoint a, b;
  assert_ok(lt_checkpoint_open(&a, base));
  assert_ok(lt_checkpoint_open(&b, tuned));
  assert_int_equal(b.meta.step, 3); // a fresh optimizer and schedule
  assert_int_equal(b.meta.data_position, 3 * 8);
  int frozen = 0, trained = 0;
  for (int i = 0; i < a.n_pieces; i++) {
    const lt_ckpt_piece *p = &a.pieces[i];
    if (p->kind != LT_CKPT_WEIGHTS) continue;
    int64_t n = p->logical[0] * (p->ndim > 1 ? p->logical[1] : 1), zeros[LT_MAX_DIMS] = {0};
    float *x = malloc((size_t)n * 4), *y = malloc((size_t)n * 4), *m = malloc((size_t)n * 4);
    assert_ok(lt_checkpoint_read_slice(&a, p->kind, p->name, p->ndim, zeros, p->logical, x));
    assert_ok(lt_checkpoint_read_slice(&b, p->kind, p->name, p->ndim, zeros, p->logical, y));
    assert_ok(lt_checkpoint_read_slice(&b, LT_CKPT_ADAM_M, p->name, p->ndim, zeros, p->logical, m));
    bool should_freeze = strcmp(p->name, "embed") == 0 || strstr(p->name, ".attn.") ||
                         strcmp(p->name, "layers.1.ffn_norm") == 0;
    bool same = memcmp(x, y, (size_t)n * 4) == 0;
    if (should_freeze != same)
      fail_msg("%s %s", p->name, same ? "did not train" : "changed though frozen");
    if (should_freeze && lt_test_max_abs(m, n) != 0) fail_msg("%s has AdamW state", p->name);
    frozen += should_freeze, trained += !should_freeze;
    free(x), free(y), free(m);
  }
  assert_int_equal(frozen, 1 + 2 * 4 + 1); // embed, wq wk wv wo per layer, one norm
  assert_true(trained > 0);
  lt_checkpoint_close(&a);
  lt_checkpoint_close(&b);

  // Requeued, the same command continues the fine-tune instead of starting it over.
  char log[600], args[4000];
  snprintf(log, sizeof log, "%s.again.log", dir);
  snprintf(args, sizeof args,
           "train --config %s --set run.dir=%s --resume auto --init-from %s %s --set "
           "train.steps=4",
           lt_test_run_files_get()->config, dir, base, extra);
  char resumed[800];
  snprintf(resumed, sizeof resumed, "resumed from %s at step 3", tuned);
  lt_test_expect_run(log, args, 0, resumed, "is not used");
}

static void test_init_from_with_a_longer_context_and_ntk_rope_scaling(void **state) {
  (void)state;
  char dir[512];
  double logged, expected;
  fine_tune("longer",
            "--set train.steps=2 --set model.max_seq_len=256 --set train.seq_len=128 "
            "--set model.rope_ntk_factor=4",
            dir, sizeof dir, &logged, &expected);
  if (logged != expected)
    fail_msg("first loss %.17g, the checkpoint gives %.17g", logged, expected);
}

static void test_ntk_factor_scales_the_rope_base_by_s_to_the_d_over_d_minus_2(void **state) {
  (void)state;
  lt_model_config cfg = {.d_model = 64, .n_heads = 8, .rope_theta = 10000, .rope_ntk_factor = 4};
  assert_true(fabs(lt_model_rope_theta(&cfg) - 10000 * pow(4.0, 8.0 / 6.0)) < 1e-6);
  cfg.rope_ntk_factor = 1;
  assert_true(lt_model_rope_theta(&cfg) == 10000);
}

// --- longtrain info ---

static void test_info_summarises_a_checkpoint(void **state) {
  (void)state;
  char ckpt[600], log[600], args[800];
  checkpoint_dir(ckpt, sizeof ckpt, straight_run(), STEPS);
  snprintf(log, sizeof log, "%s/info.log", lt_test_tmpdir());
  snprintf(args, sizeof args, "info %s", ckpt);
  char data[400];
  snprintf(data, sizeof data, "data position: sample %d of %s (documents packing", STEPS * 8,
           lt_test_run_files_get()->data);
  lt_test_expect_run(log, args, 0, "step: 40 of train.steps 40", "tokens seen: 20480", data,
                     "parameters in 21 tensors; 2 layers, d_model 64, 4 heads (2 kv) of 16",
                     "config source: ");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sigkill_then_resume_auto_reproduces_the_straight_run_bit_for_bit),
      cmocka_unit_test(test_sigterm_stops_after_a_checkpoint_with_status_11_and_resume_completes),
      cmocka_unit_test(test_sigusr1_also_stops_after_a_checkpoint_with_status_11),
      cmocka_unit_test(test_resume_auto_without_a_checkpoint_starts_from_step_0),
      cmocka_unit_test(test_validation_loss_is_logged_every_eval_every_steps),
      cmocka_unit_test(test_resume_with_a_changed_key_warns_naming_it),
      cmocka_unit_test(test_resuming_from_an_earlier_checkpoint_warns_about_later_ones),
      cmocka_unit_test(test_checkpoint_reads_in_h5py),
      cmocka_unit_test(test_init_from_starts_from_the_checkpoint_weights_and_frozen_groups_stay),
      cmocka_unit_test(test_init_from_with_a_longer_context_and_ntk_rope_scaling),
      cmocka_unit_test(test_ntk_factor_scales_the_rope_base_by_s_to_the_d_over_d_minus_2),
      cmocka_unit_test(test_info_summarises_a_checkpoint),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
