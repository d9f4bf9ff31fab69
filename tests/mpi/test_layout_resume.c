// Checkpoints across combined layouts, with the real binary under mpirun (this program starts
// mpirun itself, to change the rank count between a save and a resume). A hybrid model with a
// MoE layer, tied embeddings and packed documents trains 8 steps, with a checkpoint at step 4:
// - at tp2 x pp2 and at dp2 x cp2 x tp2 (ZeRO-1; 8 ranks) it logs what one process logs
//   (metrics.jsonl, 17 digits) and ends with its tensors, to fp32 rounding;
// - its step-4 checkpoint resumed at tp2 x pp2 continues bit for bit (the records and the final
//   tensors), resumed at dp4 and at one process it continues to fp32 rounding;
// - a ZeRO-1 run at dp2 x tp2 (its moments sharded over dp, its weights split over tp) resumed at
//   pp2 continues likewise.
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "runs.h"
#include "testing.h"

enum { STEPS = 8, SAVED = 4 };

// Losses, gradient norms and validation losses of runs that sum in other orders: measured below
// 2e-8 relative (README, "What is tested end to end"). Final weights and AdamW moments, each
// tensor against its largest element: measured below 1e-5.
#define TOL_RECORDS 1e-6
#define TOL_TENSORS 1e-4

static const char *config_text = "model:\n"
                                 "  d_model: 32\n"
                                 "  n_layers: 4\n"
                                 "  n_heads: 4\n"
                                 "  n_kv_heads: 2\n"
                                 "  ffn_dim: 64\n"
                                 "  vocab_size: 320\n"
                                 "  max_seq_len: 32\n"
                                 "  attention: lightning,softmax\n"
                                 "  ffn: moe,swiglu\n"
                                 "  moe: {n_experts: 4, top_k: 2, ffn_dim: 32}\n"
                                 "  tie_embeddings: true\n"
                                 "train:\n"
                                 "  seq_len: 32\n"
                                 "  batch: 8\n"
                                 "  micro_batch: 2\n"
                                 "  steps: 8\n"
                                 "  warmup: 2\n"
                                 "  lr: 3e-3\n"
                                 "  min_lr: 3e-4\n"
                                 "  eval_every: 4\n"
                                 "  eval_batches: 2\n"
                                 "data:\n"
                                 "  path: %s\n"
                                 "  packing: documents\n"
                                 "  val_fraction: 0.1\n"
                                 "checkpoint:\n"
                                 "  every: 4\n"
                                 "parallel:\n"
                                 "  bucket_mb: 0.004\n"
                                 "  timeout_s: 60\n"
                                 "run:\n"
                                 "  threads: 1\n";

static const char *config(void) {
  static char path[512];
  lt_test_write_run_config(path, sizeof path, "layouts.yaml", config_text);
  return path;
}

typedef struct layout {
  const char *name; // the run folder's
  int ranks;        // 0: a plain process
  const char *sets; // the parallel.* overrides
} layout;

static const layout one_process = {"one", 0, ""};
static const layout tp2_pp2 = {"tp2-pp2", 4, "--set parallel.tp=2 --set parallel.pp=2"};
static const layout dp4 = {"dp4", 4, "--set parallel.dp=4"};
static const layout dp2_tp2_zero = {
    "dp2-tp2-zero", 4, "--set parallel.dp=2 --set parallel.tp=2 --set parallel.zero=true"};
static const layout pp2 = {"pp2", 2, "--set parallel.pp=2"};
static const layout dp2_cp2_tp2_zero = {
    "dp2-cp2-tp2-zero", 8,
    "--set parallel.dp=2 --set parallel.cp=2 --set parallel.tp=2 --set parallel.zero=true"};

// The uninterrupted run of a layout, made once.
static const char *straight(const layout *l) {
  static char made[4][512];
  const int index = l == &one_process ? 0 : l == &tp2_pp2 ? 1 : l == &dp2_tp2_zero ? 2 : 3;
  char *dir = made[index];
  if (dir[0]) return dir;
  char name[64], args[1024];
  snprintf(name, sizeof name, "straight-%s", l->name);
  snprintf(args, sizeof args, "--config %s %s", config(), l->sets);
  snprintf(dir, 512, "%s", lt_test_train(name, l->ranks, args));
  return dir;
}

// Resumes the step-SAVED checkpoint of run `from` in layout `to`, to step STEPS. The parallel
// sizes of the checkpoint's config are reset first: `to` sets only those it changes.
static const char *resume(const char *from, const layout *to) {
  static const char *reset = "--set parallel.dp=1 --set parallel.pp=1 --set parallel.cp=1 --set "
                             "parallel.tp=1 --set parallel.zero=false";
  char ckpt[600], name[128], args[2048];
  lt_test_checkpoint_dir(ckpt, sizeof ckpt, from, SAVED);
  snprintf(name, sizeof name, "%s-resumed-%s", strrchr(from, '/') + 1, to->name);
  snprintf(args, sizeof args, "--resume %s %s %s", ckpt, reset, to->sets);
  return lt_test_train(name, to->ranks, args);
}

// The final checkpoints of two runs, each tensor within `tolerance` of its largest element.
static double expect_final_tensors(const char *a, const char *b, double tolerance) {
  char ca[600], cb[600], what[160];
  lt_test_checkpoint_dir(ca, sizeof ca, a, STEPS);
  lt_test_checkpoint_dir(cb, sizeof cb, b, STEPS);
  const double worst = lt_test_checkpoint_difference(ca, cb, what, sizeof what);
  if (!(worst <= tolerance))
    fail_msg("%s and %s: %s differs by %g of its scale", a, b, what, worst);
  return worst;
}

// `resumed` continues `reference` from step SAVED + 1 to fp32 rounding.
static void expect_continues(const char *reference, const char *resumed) {
  const double records = lt_test_expect_records(reference, resumed, SAVED + 1, TOL_RECORDS);
  const double tensors = expect_final_tensors(reference, resumed, TOL_TENSORS);
  printf("%s continues %s: records %.1e, final tensors %.1e\n", strrchr(resumed, '/') + 1,
         strrchr(reference, '/') + 1, records, tensors);
}

// The line of `longtrain info` about the model of the final checkpoint of run `run`.
static void info_model_line(const char *run, char *line, size_t cap) {
  char ckpt[600], command[1400], out[4096];
  lt_test_checkpoint_dir(ckpt, sizeof ckpt, run, STEPS);
  snprintf(command, sizeof command, "%s info %s", lt_test_binary(), ckpt);
  assert_int_equal(lt_test_run(command, out, sizeof out), 0);
  const char *at = strstr(out, "model: ");
  assert_non_null(at);
  snprintf(line, cap, "%.*s", (int)strcspn(at, "\n"), at);
}

// The whole run of layout `l` against one process's: the records, the final tensors, and the
// model as its checkpoint describes it (the parameter count and tensors of the whole model).
static void expect_logs_of_one_process(const layout *l) {
  const char *split = straight(l), *one = straight(&one_process);
  const double records = lt_test_expect_records(one, split, 1, TOL_RECORDS);
  const double tensors = expect_final_tensors(split, one, TOL_TENSORS);
  char split_model[512], one_model[512];
  info_model_line(split, split_model, sizeof split_model);
  info_model_line(one, one_model, sizeof one_model);
  assert_string_equal(split_model, one_model);
  printf("%s against one process, 8 steps: records %.1e, final tensors %.1e\n", l->name, records,
         tensors);
}

static void test_tp2_x_pp2_logs_what_one_process_logs(void **state) {
  (void)state;
  expect_logs_of_one_process(&tp2_pp2);
}

static void test_dp2_x_cp2_x_tp2_with_zero1_logs_what_one_process_logs(void **state) {
  (void)state;
  expect_logs_of_one_process(&dp2_cp2_tp2_zero);
}

static void test_tp2_x_pp2_checkpoint_resumed_in_its_layout_continues_bit_for_bit(void **state) {
  (void)state;
  const char *split = straight(&tp2_pp2), *again = resume(split, &tp2_pp2);
  lt_test_expect_records(split, again, SAVED + 1, 0);
  expect_final_tensors(split, again, 0);
}

static void test_tp2_x_pp2_checkpoint_resumes_at_dp4_and_at_one_process(void **state) {
  (void)state;
  const char *split = straight(&tp2_pp2);
  expect_continues(split, resume(split, &dp4));
  expect_continues(split, resume(split, &one_process));
}

static void test_zero1_checkpoint_of_dp2_x_tp2_resumes_at_pp2(void **state) {
  (void)state;
  const char *zero = straight(&dp2_tp2_zero);
  expect_continues(zero, resume(zero, &pp2));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tp2_x_pp2_logs_what_one_process_logs),
      cmocka_unit_test(test_dp2_x_cp2_x_tp2_with_zero1_logs_what_one_process_logs),
      cmocka_unit_test(test_tp2_x_pp2_checkpoint_resumed_in_its_layout_continues_bit_for_bit),
      cmocka_unit_test(test_tp2_x_pp2_checkpoint_resumes_at_dp4_and_at_one_process),
      cmocka_unit_test(test_zero1_checkpoint_of_dp2_x_tp2_resumes_at_pp2),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
