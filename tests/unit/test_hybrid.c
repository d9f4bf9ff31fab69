// Hybrid stacks train: a tiny "lightning*3,softmax" model learns a synthetic stream, and the
// configs/ files for lightning and hybrid models run end to end through the command line.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/rng.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "testing.h"

enum { VOCAB = 16, OUT_CAP = 1 << 16 };

// Rows of arithmetic progressions mod VOCAB, each with a random start and a step of 1 to 4: the
// next token follows from the last two, so the loss can fall from ln(16) = 2.77 toward 0 only by
// looking back along the sequence.
static void progressions(lt_rng *rng, int32_t *tokens, int32_t *targets, int64_t B, int64_t T) {
  for (int64_t b = 0; b < B; b++) {
    int32_t x = (int32_t)lt_rng_below(rng, VOCAB), step = 1 + (int32_t)lt_rng_below(rng, 4);
    for (int64_t t = 0; t < T; t++) {
      tokens[b * T + t] = x;
      x = (x + step) % VOCAB;
      targets[b * T + t] = x;
    }
  }
}

static double train(const char *attention, int steps, double *first) {
  lt_ctx ctx;
  assert_ok(lt_ctx_init(&ctx, LT_CPU, 2));
  lt_model_config cfg = {.linear = {.chunk_size = 8},
                         .lightning = {.block_size = 8,
                                       .feature_map = LT_FEATURE_SILU,
                                       .gate = LT_GATE_LINEAR,
                                       .depth_scaled_decay = true},
                         .d_model = 32,
                         .n_layers = 4,
                         .n_heads = 4,
                         .ffn_dim = 64,
                         .vocab_size = VOCAB,
                         .max_seq_len = 32,
                         .rope_theta = 10000,
                         .norm_eps = 1e-5,
                         .init = LT_INIT_SCALED,
                         .init_std = 0.02};
  snprintf(cfg.attention, sizeof cfg.attention, "%s", attention);
  lt_model model;
  assert_ok(lt_model_create(&model, &cfg, LT_CPU, NULL));
  assert_ok(lt_params_init(&model.params, 7));
  const int64_t B = 8, T = 32, n = B * T;
  assert_ok(lt_model_plan(&model, B, T, false));
  lt_train_config tc = {.lr = 3e-3, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .clip_norm = 1.0};
  lt_optimizer opt;
  assert_ok(lt_optimizer_create(&opt, &model.params, &tc));
  int32_t *tokens = malloc(sizeof(int32_t) * n), *targets = malloc(sizeof(int32_t) * n);
  int32_t *pos = malloc(sizeof(int32_t) * n);
  for (int64_t i = 0; i < n; i++) pos[i] = (int32_t)(i % T);
  lt_batch batch = {.B = B,
                    .T = T,
                    .tokens = lt_view1(tokens, LT_I32, LT_CPU, n),
                    .targets = lt_view1(targets, LT_I32, LT_CPU, n),
                    .pos = lt_view1(pos, LT_I32, LT_CPU, n)};
  lt_rng rng = lt_rng_seed(11);
  double last = 0, norm;
  for (int step = 0; step < steps; step++) { // a fresh batch every step: the loss is held out
    progressions(&rng, tokens, targets, B, T);
    double sum;
    assert_ok(lt_params_zero_grad(&model.params));
    assert_ok(lt_model_forward(&model, &ctx, &batch, true, 1.0f / (float)n, &sum));
    assert_ok(lt_model_backward(&model, &ctx, &batch));
    assert_ok(lt_optimizer_step(&opt, &ctx, tc.lr, &norm));
    if (step == 0) *first = sum / (double)n;
    if (step >= steps - 5) last += sum / (double)n / 5; // the mean of the last five
  }
  free(tokens), free(targets), free(pos);
  lt_optimizer_destroy(&opt);
  lt_model_destroy(&model);
  return last;
}

static void test_hybrid_lightning_softmax_stack_loss_falls(void **state) {
  (void)state;
  double first, last = train("lightning*3,softmax", 40, &first);
  printf("lightning*3,softmax: loss %.4f -> %.4f (mean of the last 5) in 40 steps\n", first, last);
  assert_true(fabs(first - log(VOCAB)) < 0.1);
  assert_true(last < 0.5 * first);
}

static void test_hybrid_linear_softmax_stack_loss_falls(void **state) {
  (void)state;
  double first, last = train("linear*3,softmax", 40, &first);
  printf("linear*3,softmax: loss %.4f -> %.4f (mean of the last 5) in 40 steps\n", first, last);
  assert_true(fabs(first - log(VOCAB)) < 0.1);
  assert_true(last < 0.5 * first);
}

// --- the configs in configs/, through the command line ---

static int longtrain(char *out, const char *args) {
  char command[4096];
  snprintf(command, sizeof command, "%s %s", lt_test_binary(), args);
  return lt_test_run(command, out, OUT_CAP);
}

// A small prepared dataset in the test's folder, made once.
static const char *dataset(void) {
  static char data[512];
  if (data[0]) return data;
  const char *dir = lt_test_tmpdir();
  char text_path[512], args[1200], *text = calloc(1, 16384), *out = malloc(OUT_CAP);
  snprintf(text_path, sizeof text_path, "%s/lines.txt", dir);
  snprintf(data, sizeof data, "%s/lines.h5", dir);
  for (int i = 0; strlen(text) < 12000; i++)
    snprintf(text + strlen(text), 16384 - strlen(text),
             "Line %d of the notebook: the state of a linear layer is %d by %d.\n", i, i % 7 + 1,
             i % 5 + 2);
  lt_test_write_file(text_path, text);
  snprintf(args, sizeof args, "prepare --output %s %s", data, text_path);
  int status = longtrain(out, args);
  if (status != 0) fail_msg("prepare exited %d:\n%s", status, out);
  free(text), free(out);
  return data;
}

// Two short steps of the config, shrunk to a short sequence: it must load, build and train.
static void expect_config_trains(const char *config) {
  char args[2048], *out = malloc(OUT_CAP);
  snprintf(args, sizeof args,
           "train --config %s --set data.path=%s --set run.dir=%s/run --set train.steps=2 "
           "--set train.batch=2 --set train.seq_len=64 --set run.log_every=1",
           lt_test_source_path(config), dataset(), lt_test_tmpdir());
  int status = longtrain(out, args);
  if (status != 0) fail_msg("%s: train exited %d:\n%s", config, status, out);
  if (!strstr(out, "step 2/2")) fail_msg("%s: no second step in:\n%s", config, out);
  free(out);
}

static void test_lightning_tiny_config_trains(void **state) {
  (void)state;
  expect_config_trains("configs/lightning-tiny.yaml");
}

static void test_hybrid_tiny_config_trains(void **state) {
  (void)state;
  expect_config_trains("configs/hybrid-tiny.yaml");
}

// A bad setting of these kinds stops the command with status 3 and one line naming the key.
static void test_bad_lightning_setting_exits_3_with_one_line(void **state) {
  (void)state;
  char args[2048], *out = malloc(OUT_CAP);
  snprintf(args, sizeof args, "train --config %s --set model.lightning.feature_map=tanh",
           lt_test_source_path("configs/hybrid-tiny.yaml"));
  assert_int_equal(longtrain(out, args), LT_ERR_CONFIG);
  assert_non_null(strstr(out, "longtrain: error: "));
  assert_non_null(strstr(out, "model.lightning.feature_map"));
  assert_true(strchr(out, '\n') == out + strlen(out) - 1); // exactly one line
  free(out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hybrid_lightning_softmax_stack_loss_falls),
      cmocka_unit_test(test_hybrid_linear_softmax_stack_loss_falls),
      cmocka_unit_test(test_lightning_tiny_config_trains),
      cmocka_unit_test(test_hybrid_tiny_config_trains),
      cmocka_unit_test(test_bad_lightning_setting_exits_3_with_one_line),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
