// Whole-model behaviour: it can fit a batch, and the memory and batching choices (recomputation,
// gradient accumulation) do not change what it computes.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "optim/adamw.h"
#include "testing.h"

typedef struct toy {
  lt_ctx ctx;
  lt_model model;
  int32_t *tokens, *targets, *pos;
  int64_t B, T;
} toy;

static lt_model_config toy_config(void) {
  return (lt_model_config){.d_model = 32,
                           .n_layers = 2,
                           .n_heads = 4,
                           .n_kv_heads = 2,
                           .ffn_dim = 64,
                           .vocab_size = 37,
                           .max_seq_len = 64,
                           .rope_theta = 10000,
                           .norm_eps = 1e-5,
                           .init = LT_INIT_SCALED,
                           .init_std = 0.02};
}

// A toy whose feed-forward layers are `ffn` (a kind or pattern, as model.ffn).
static void toy_create_ffn(toy *t, int64_t B, int64_t T, bool recompute, const char *ffn) {
  t->B = B, t->T = T;
  assert_ok(lt_ctx_init(&t->ctx, LT_CPU, 2));
  lt_model_config cfg = toy_config();
  snprintf(cfg.ffn, sizeof cfg.ffn, "%s", ffn);
  cfg.moe = (lt_moe_config){.n_experts = 4, .top_k = 2, .renormalize = true, .ffn_dim = 32};
  assert_ok(lt_model_create(&t->model, &cfg, LT_CPU, NULL));
  assert_ok(lt_params_init(&t->model.params, 2024));
  assert_ok(lt_model_plan(&t->model, B, T, recompute));
  // A fixed pseudo-random token stream; each row is its own sequence.
  const int64_t n = 4 * B * T; // room for several batches
  t->tokens = malloc(n * 4), t->targets = malloc(n * 4), t->pos = malloc(n * 4);
  for (int64_t i = 0; i < n; i++) {
    t->tokens[i] = (int32_t)((i * i * 7 + i * 3 + 1) % 37);
    t->targets[i] = (int32_t)((i * i * 5 + i * 11 + 2) % 37);
    t->pos[i] = (int32_t)(i % T);
  }
}

static void toy_create(toy *t, int64_t B, int64_t T, bool recompute) {
  toy_create_ffn(t, B, T, recompute, "swiglu");
}

static void toy_destroy(toy *t) {
  free(t->tokens), free(t->targets), free(t->pos);
  lt_model_destroy(&t->model);
}

// Rows [row, row + B) of the stream as a batch of B sequences.
static lt_batch rows(const toy *t, int64_t row, int64_t B) {
  const int64_t off = row * t->T, n = B * t->T;
  return (lt_batch){.B = B,
                    .T = t->T,
                    .tokens = lt_view1(t->tokens + off, LT_I32, LT_CPU, n),
                    .targets = lt_view1(t->targets + off, LT_I32, LT_CPU, n),
                    .pos = lt_view1(t->pos + off, LT_I32, LT_CPU, n)};
}

static double loss_and_grads(toy *t, int64_t accum) {
  const int64_t micro = t->B / accum;
  assert_ok(lt_model_plan(&t->model, micro, t->T, t->model.recompute));
  assert_ok(lt_params_zero_grad(&t->model.params));
  double total = 0;
  for (int64_t m = 0; m < accum; m++) {
    double loss;
    lt_batch batch = rows(t, m * micro, micro);
    assert_ok(
        lt_model_forward(&t->model, &t->ctx, &batch, true, 1.0f / (float)(t->B * t->T), &loss));
    assert_ok(lt_model_backward(&t->model, &t->ctx, &batch));
    total += loss;
  }
  return total / (double)(t->B * t->T);
}

static void expect_overfits_one_batch(const char *ffn) {
  toy t;
  toy_create_ffn(&t, 4, 16, false, ffn);
  lt_train_config tc = {.steps = 150,
                        .lr = 3e-3,
                        .beta1 = 0.9,
                        .beta2 = 0.95,
                        .eps = 1e-8,
                        .clip_norm = 1.0,
                        .decay = LT_DECAY_CONSTANT};
  lt_optimizer opt;
  assert_ok(lt_optimizer_create(&opt, &t.model.params, &tc));
  double first = 0, loss = 0, norm;
  for (int step = 0; step < 150; step++) {
    loss = loss_and_grads(&t, 1);
    if (step == 0) first = loss;
    assert_ok(lt_optimizer_step(&opt, &t.ctx, tc.lr, &norm));
  }
  printf("%s: loss %.4f -> %.4f after 150 steps on one batch (%lld parameters)\n", ffn, first, loss,
         (long long)lt_model_n_params(&t.model));
  assert_true(first > 3.0); // about ln(37) = 3.6 at initialisation
  assert_true(loss < 0.05);
  lt_optimizer_destroy(&opt);
  toy_destroy(&t);
}

static void test_training_overfits_one_batch(void **state) {
  (void)state;
  expect_overfits_one_batch("swiglu");
}

static void test_training_with_mixture_of_experts_overfits_one_batch(void **state) {
  (void)state;
  expect_overfits_one_batch("moe");
}

static void test_gradient_accumulation_equals_one_large_batch(void **state) {
  (void)state;
  toy t;
  toy_create(&t, 4, 16, false);
  const size_t bytes = t.model.params.numel * sizeof(float);
  double whole = loss_and_grads(&t, 1);
  float *grads = malloc(bytes);
  memcpy(grads, t.model.params.grad, bytes);
  double accumulated = loss_and_grads(&t, 4);
  assert_true(fabs(whole - accumulated) < 1e-6 * whole);
  assert_true(
      lt_test_max_rel_diff(t.model.params.grad, grads, (int64_t)t.model.params.numel, 1e-3) < 1e-4);
  free(grads);
  toy_destroy(&t);
}

static void test_recomputation_gives_bit_identical_loss_and_gradients(void **state) {
  (void)state;
  toy kept, recomputed;
  toy_create(&kept, 2, 24, false);
  toy_create(&recomputed, 2, 24, true);
  double a = loss_and_grads(&kept, 1), b = loss_and_grads(&recomputed, 1);
  assert_true(a == b);
  assert_memory_equal(kept.model.params.grad, recomputed.model.params.grad,
                      kept.model.params.numel * sizeof(float));
  assert_true(recomputed.model.acts.capacity < kept.model.acts.capacity);
  toy_destroy(&kept), toy_destroy(&recomputed);
}

static void test_initialisation_depends_only_on_seed_and_name(void **state) {
  (void)state;
  toy a, b;
  toy_create(&a, 1, 8, false);
  toy_create(&b, 1, 8, true);
  assert_memory_equal(a.model.params.master, b.model.params.master,
                      a.model.params.numel * sizeof(float));
  // Output projections are scaled by 1/sqrt(2 n_layers) under model.init: scaled.
  const lt_param_info *wq = lt_params_find(&a.model.params, "layers.0.attn.wq");
  const lt_param_info *wo = lt_params_find(&a.model.params, "layers.0.attn.wo");
  assert_non_null(wq), assert_non_null(wo);
  assert_true(fabs(wq->spec.std - 0.02f) < 1e-7 && fabs(wo->spec.std - 0.01f) < 1e-7);
  toy_destroy(&a), toy_destroy(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_training_overfits_one_batch),
      cmocka_unit_test(test_training_with_mixture_of_experts_overfits_one_batch),
      cmocka_unit_test(test_gradient_accumulation_equals_one_large_batch),
      cmocka_unit_test(test_recomputation_gives_bit_identical_loss_and_gradients),
      cmocka_unit_test(test_initialisation_depends_only_on_seed_and_name),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
