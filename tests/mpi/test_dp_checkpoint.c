// Checkpoints across data-parallel layouts, with the real binary under mpirun: every rank writes
// its shard file, and any layout resumes any checkpoint. A run saved at dp=2 and resumed at dp=2,
// with or without ZeRO-1, continues bit for bit; resumed at dp=1 or dp=4 it continues to fp32
// rounding (other summation orders), as does a single process's checkpoint resumed at dp=2.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runs.h"
#include "testing.h"
#include "train/checkpoint.h"

enum { STEPS = 8, SAVED = 4 };

// Sizes chosen so that the boundary between two ranks' ZeRO-1 shards falls mid-row (in
// layers.1.ffn.w_gate): the case that cuts a tensor's slice of a shard into several boxes.
static const char *config_text = "model:\n"
                                 "  d_model: 40\n"
                                 "  n_layers: 3\n"
                                 "  n_heads: 4\n"
                                 "  n_kv_heads: 2\n"
                                 "  ffn_dim: 80\n"
                                 "  vocab_size: 320\n"
                                 "  max_seq_len: 32\n"
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
  lt_test_write_run_config(path, sizeof path, "dp.yaml", config_text);
  return path;
}

// The straight runs every test compares against, made once each.
static const char *straight(int dp, bool zero) {
  static char made[3][512];
  char *dir = made[dp == 1 ? 0 : zero ? 2 : 1];
  if (dir[0]) return dir;
  char name[64], args[1024];
  snprintf(name, sizeof name, "straight-dp%d%s", dp, zero ? "-zero" : "");
  snprintf(args, sizeof args, "--config %s --set parallel.dp=%d --set parallel.zero=%s", config(),
           dp, zero ? "true" : "false");
  snprintf(dir, 512, "%s", lt_test_train(name, dp == 1 ? 0 : dp, args));
  return dir;
}

// Resumes the checkpoint of step SAVED of run `from` on `ranks` ranks with `sets`, to STEPS.
static const char *resume(const char *name, const char *from, int ranks, const char *sets) {
  char ckpt[600], args[1400];
  lt_test_checkpoint_dir(ckpt, sizeof ckpt, from, SAVED);
  snprintf(args, sizeof args, "--resume %s %s", ckpt, sets);
  return lt_test_train(name, ranks, args);
}

// The records of steps SAVED+1..STEPS of `resumed` equal those of `reference`, bit for bit.
static void assert_continues_bit_for_bit(const char *reference, const char *resumed) {
  lt_test_expect_records(reference, resumed, SAVED + 1, 0);
  char a[600], b[600];
  lt_test_checkpoint_dir(a, sizeof a, reference, STEPS);
  lt_test_checkpoint_dir(b, sizeof b, resumed, STEPS);
  lt_test_assert_same_checkpoint(a, b);
}

static void assert_same_tensors(const char *a_dir, const char *b_dir, double tolerance);

// Two runs of STEPS steps logged the same records and ended with the same tensors, bit for bit
// (however their checkpoints cut them).
static void assert_same_run(const char *a, const char *b) {
  lt_test_expect_records(a, b, 1, 0);
  char ca[600], cb[600];
  lt_test_checkpoint_dir(ca, sizeof ca, a, STEPS);
  lt_test_checkpoint_dir(cb, sizeof cb, b, STEPS);
  assert_same_tensors(ca, cb, 0);
}

// Every tensor of checkpoint `a` read whole, against `b`'s: at most `tolerance` of the largest
// element of the tensor apart (0: bit for bit).
static void assert_same_tensors(const char *a_dir, const char *b_dir, double tolerance) {
  char what[160];
  const double worst = lt_test_checkpoint_difference(a_dir, b_dir, what, sizeof what);
  if (!(worst <= tolerance)) fail_msg("%s differs by %g of its scale", what, worst);
}

static void test_dp2_checkpoint_resumed_at_dp2_continues_bit_for_bit(void **state) {
  (void)state;
  const char *a = straight(2, false);
  assert_continues_bit_for_bit(a, resume("dp2-again", a, 2, ""));
}

static void test_every_rank_writes_its_shard_and_zero1_cuts_moments_into_slices(void **state) {
  (void)state;
  char plain[600], zero[600];
  lt_test_checkpoint_dir(plain, sizeof plain, straight(2, false), SAVED);
  lt_test_checkpoint_dir(zero, sizeof zero, straight(2, true), SAVED);
  lt_checkpoint ck;
  assert_ok(lt_checkpoint_open(&ck, zero));
  assert_int_equal(ck.meta.n_shards, 2);
  int parts = 0, in_shard[2] = {0, 0};
  for (int i = 0; i < ck.n_pieces; i++) {
    parts += ck.pieces[i].part > 0;
    in_shard[ck.pieces[i].shard]++;
  }
  lt_checkpoint_close(&ck);
  assert_true(parts > 0); // a parameter straddled the two ranks' shards mid-row
  assert_true(in_shard[0] > 0 && in_shard[1] > 0);
  // At dp=2 ZeRO-1 computes exactly what plain data parallelism does, so the two checkpoints
  // hold the same numbers, however they are cut.
  assert_same_tensors(zero, plain, 0);
}

static void test_zero1_and_plain_checkpoints_resume_each_other_bit_for_bit(void **state) {
  (void)state;
  const char *plain = straight(2, false), *zero = straight(2, true);
  assert_same_run(plain, zero);
  assert_continues_bit_for_bit(plain,
                               resume("zero-to-plain", zero, 2, "--set parallel.zero=false"));
  assert_continues_bit_for_bit(zero, resume("plain-to-zero", plain, 2, "--set parallel.zero=true"));
}

// Resumes run `from` (dp = 2) at `ranks` ranks with `sets`: it continues to fp32 rounding.
static void assert_resumes_closely(const char *from, const char *name, int ranks,
                                   const char *sets) {
  const char *resumed = resume(name, from, ranks, sets);
  lt_test_expect_records(from, resumed, SAVED + 1, 1e-6);
  char a[600], b[600];
  lt_test_checkpoint_dir(a, sizeof a, from, STEPS);
  lt_test_checkpoint_dir(b, sizeof b, resumed, STEPS);
  assert_same_tensors(b, a, 1e-5);
}

static void test_dp2_checkpoints_resume_at_dp1_and_at_dp4(void **state) {
  (void)state;
  const char *plain = straight(2, false), *zero = straight(2, true);
  assert_resumes_closely(plain, "plain-to-dp1", 0, "--set parallel.dp=1");
  assert_resumes_closely(plain, "plain-to-dp4-zero", 4,
                         "--set parallel.dp=4 --set parallel.zero=true");
  assert_resumes_closely(zero, "zero-to-dp1", 0, "--set parallel.dp=1 --set parallel.zero=false");
  assert_resumes_closely(zero, "zero-to-dp4", 4, "--set parallel.dp=4 --set parallel.zero=false");
}

static void test_single_process_checkpoint_resumes_at_dp2(void **state) {
  (void)state;
  const char *single = straight(1, false);
  const char *two = resume("dp1-to-dp2", single, 2, "--set parallel.dp=2 --set parallel.zero=true");
  lt_test_expect_records(single, two, SAVED + 1, 1e-6);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_dp2_checkpoint_resumed_at_dp2_continues_bit_for_bit),
      cmocka_unit_test(test_every_rank_writes_its_shard_and_zero1_cuts_moments_into_slices),
      cmocka_unit_test(test_zero1_and_plain_checkpoints_resume_each_other_bit_for_bit),
      cmocka_unit_test(test_dp2_checkpoints_resume_at_dp1_and_at_dp4),
      cmocka_unit_test(test_single_process_checkpoint_resumes_at_dp2),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
