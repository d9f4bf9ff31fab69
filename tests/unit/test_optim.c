// The learning-rate schedule, the AdamW kernel against PyTorch's formula, and the optimizer step:
// clipping by the global norm, which parameters decay, and what a non-finite gradient does.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "kernels/kernels.h"
#include "model/params.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "testing.h"

// --- the schedule ---

// lr 1e-3 with 10 warmup steps, then decay to 1e-4 over steps 11..110.
static lt_train_config schedule(lt_lr_decay decay) {
  lt_config cfg;
  assert_ok(lt_config_defaults(&cfg));
  cfg.train.lr = 1e-3;
  cfg.train.min_lr = 1e-4;
  cfg.train.warmup = 10;
  cfg.train.steps = 110;
  cfg.train.decay = decay;
  return cfg.train;
}

static void assert_close(double got, double want, const char *what, int64_t step) {
  if (fabs(got - want) > 1e-12 * fabs(want) + 1e-18)
    fail_msg("%s at step %lld: got %.17g, want %.17g", what, (long long)step, got, want);
}

static void test_warmup_rises_linearly_from_lr_over_warmup_to_lr(void **state) {
  (void)state;
  for (int decay = LT_DECAY_COSINE; decay <= LT_DECAY_CONSTANT; decay++) {
    lt_train_config t = schedule((lt_lr_decay)decay);
    for (int64_t s = 1; s <= 10; s++)
      assert_close(lt_lr_at(&t, s), 1e-3 * (double)s / 10, "warmup", s);
  }
}

static void test_cosine_starts_at_lr_after_warmup_and_ends_at_min_lr(void **state) {
  (void)state;
  lt_train_config t = schedule(LT_DECAY_COSINE);
  assert_close(lt_lr_at(&t, 10), 1e-3, "cosine", 10);
  assert_close(lt_lr_at(&t, 60), (1e-3 + 1e-4) / 2, "cosine", 60); // halfway: cos(pi/2) = 0
  assert_close(lt_lr_at(&t, 35), 1e-4 + 9e-4 * 0.5 * (1 + cos(M_PI / 4)), "cosine", 35);
  assert_close(lt_lr_at(&t, 110), 1e-4, "cosine", 110);
  for (int64_t s = 11; s <= 110; s++)
    if (!(lt_lr_at(&t, s) < lt_lr_at(&t, s - 1)))
      fail_msg("cosine does not fall at step %lld", (long long)s);
}

static void test_linear_decay_is_the_midpoint_halfway(void **state) {
  (void)state;
  lt_train_config t = schedule(LT_DECAY_LINEAR);
  assert_close(lt_lr_at(&t, 10), 1e-3, "linear", 10);
  assert_close(lt_lr_at(&t, 35), 1e-3 - 0.25 * 9e-4, "linear", 35);
  assert_close(lt_lr_at(&t, 60), (1e-3 + 1e-4) / 2, "linear", 60);
  assert_close(lt_lr_at(&t, 110), 1e-4, "linear", 110);
}

static void test_constant_stays_at_lr_after_warmup(void **state) {
  (void)state;
  lt_train_config t = schedule(LT_DECAY_CONSTANT);
  for (int64_t s = 10; s <= 120; s++) assert_close(lt_lr_at(&t, s), 1e-3, "constant", s);
}

static void test_decay_holds_min_lr_past_the_last_step(void **state) {
  (void)state;
  lt_train_config cosine = schedule(LT_DECAY_COSINE), linear = schedule(LT_DECAY_LINEAR);
  assert_close(lt_lr_at(&cosine, 500), 1e-4, "cosine", 500);
  assert_close(lt_lr_at(&linear, 500), 1e-4, "linear", 500);
}

// --- the AdamW kernel ---

static void test_adamw_step_matches_pytorch_formula(void **state) {
  (void)state;
  enum { N = 6, STEPS = 3 };
  const double lr = 0.1, beta1 = 0.9, beta2 = 0.95, eps = 1e-3, wd = 0.1;
  // Gradients from 1e-3 (where eps matters) to 3 (where it does not), changing each step.
  const float grads[STEPS][N] = {{1e-3f, -0.5f, 3.0f, 0.0f, 0.02f, -2.0f},
                                 {2e-3f, 0.25f, -1.0f, 0.5f, 0.02f, -2.0f},
                                 {-1e-3f, 0.5f, 2.0f, -0.5f, 1.0f, 0.1f}};
  float param[N] = {0.5f, -1.0f, 2.0f, 0.0f, 0.25f, -0.75f}, m[N] = {0}, v[N] = {0};
  double ref_p[N], ref_m[N] = {0}, ref_v[N] = {0};
  for (int i = 0; i < N; i++) ref_p[i] = param[i];
  lt_ctx ctx;
  assert_ok(lt_ctx_init(&ctx, LT_CPU, 2));
  for (int t = 1; t <= STEPS; t++) {
    float g[N];
    memcpy(g, grads[t - 1], sizeof g);
    lt_adamw_run all = {.start = 0, .numel = N, .weight_decay = (float)wd};
    lt_adamw_args args = {.lr = (float)lr,
                          .beta1 = (float)beta1,
                          .beta2 = (float)beta2,
                          .eps = (float)eps,
                          .grad_scale = 1.0f,
                          .step = t,
                          .runs = &all,
                          .n_runs = 1};
    assert_ok(lt_adamw(&ctx, lt_view1(param, LT_F32, LT_CPU, N), lt_view1(g, LT_F32, LT_CPU, N),
                       lt_view1(m, LT_F32, LT_CPU, N), lt_view1(v, LT_F32, LT_CPU, N),
                       (lt_tensor){0}, &args));
    // torch.optim.AdamW (Loshchilov & Hutter, Algorithm 2, as PyTorch writes it).
    for (int i = 0; i < N; i++) {
      double gi = grads[t - 1][i];
      ref_p[i] *= 1.0 - lr * wd;
      ref_m[i] = beta1 * ref_m[i] + (1.0 - beta1) * gi;
      ref_v[i] = beta2 * ref_v[i] + (1.0 - beta2) * gi * gi;
      double m_hat = ref_m[i] / (1.0 - pow(beta1, t)), v_hat = ref_v[i] / (1.0 - pow(beta2, t));
      ref_p[i] -= lr * m_hat / (sqrt(v_hat) + eps);
    }
    for (int i = 0; i < N; i++) {
      if (fabs(param[i] - ref_p[i]) > 1e-6 * (1.0 + fabs(ref_p[i])))
        fail_msg("step %d, element %d: param %.9g, PyTorch %.9g", t, i, param[i], ref_p[i]);
      if (fabs(m[i] - ref_m[i]) > 1e-6 * fabs(ref_m[i]) + 1e-12)
        fail_msg("step %d, element %d: m %.9g, PyTorch %.9g", t, i, m[i], ref_m[i]);
      if (fabs(v[i] - ref_v[i]) > 1e-6 * fabs(ref_v[i]) + 1e-15)
        fail_msg("step %d, element %d: v %.9g, PyTorch %.9g", t, i, v[i], ref_v[i]);
    }
  }
  lt_ctx_destroy(&ctx);
}

// --- the optimizer step on a parameter table ---

// An embedding, a norm gain, an attention matrix and an output head, as the model registers them.
typedef struct tiny_model {
  lt_params params;
  lt_param embed, norm, wq, head;
  lt_ctx ctx;
} tiny_model;

static void tiny_create(tiny_model *t) {
  lt_params_begin(&t->params, NULL);
  assert_ok(
      lt_params_add(&t->params, &t->embed, "embed.weight", 2, LT_SHAPE(5, 4),
                    (lt_param_spec){.init = LT_INIT_NORMAL, .std = 0.5f, .group = LT_GROUP_EMBED}));
  assert_ok(lt_params_add(&t->params, &t->norm, "blocks.0.attn_norm.weight", 1, LT_SHAPE(4),
                          (lt_param_spec){.init = LT_INIT_ONES, .group = LT_GROUP_NORM}));
  assert_ok(
      lt_params_add(&t->params, &t->wq, "blocks.0.attn.wq", 2, LT_SHAPE(4, 4),
                    (lt_param_spec){.init = LT_INIT_NORMAL, .std = 0.5f, .group = LT_GROUP_ATTN}));
  assert_ok(
      lt_params_add(&t->params, &t->head, "lm_head.weight", 2, LT_SHAPE(5, 4),
                    (lt_param_spec){.init = LT_INIT_NORMAL, .std = 0.5f, .group = LT_GROUP_HEAD}));
  assert_ok(lt_params_allocate(&t->params, LT_CPU));
  assert_ok(lt_ctx_init(&t->ctx, LT_CPU, 2));
}

static void tiny_destroy(tiny_model *t) {
  lt_params_free(&t->params);
  lt_ctx_destroy(&t->ctx);
}

static void fill(lt_tensor t, float value) {
  for (int64_t i = 0; i < lt_numel(t); i++) lt_f32(t)[i] = value;
}

static lt_train_config optimizer_config(double clip_norm) {
  lt_config cfg;
  assert_ok(lt_config_defaults(&cfg));
  cfg.train.weight_decay = 0.1;
  cfg.train.clip_norm = clip_norm;
  return cfg.train;
}

// Sets wq's gradient to (6, 8, 0, ...) * scale, everything else to 0: a global norm of 10 * scale.
static void set_norm_ten_gradient(tiny_model *t, float scale) {
  assert_ok(lt_params_zero_grad(&t->params));
  lt_f32(t->wq.grad)[0] = 6.0f * scale;
  lt_f32(t->wq.grad)[1] = 8.0f * scale;
}

static void test_step_clips_by_the_global_norm_and_reports_it_before_clipping(void **state) {
  (void)state;
  tiny_model clipped, prescaled;
  tiny_create(&clipped);
  tiny_create(&prescaled);
  assert_ok(lt_params_init(&clipped.params, 1));
  assert_ok(lt_params_init(&prescaled.params, 1));
  lt_train_config clip = optimizer_config(1.0), no_clip = optimizer_config(0.0);
  clip.eps = no_clip.eps = 0.1; // so the update depends on the gradient's scale
  lt_optimizer a, b;
  assert_ok(lt_optimizer_create(&a, &clipped.params, &clip));
  assert_ok(lt_optimizer_create(&b, &prescaled.params, &no_clip));
  // As torch.nn.utils.clip_grad_norm_: the gradient is scaled by max_norm / (norm + 1e-6).
  const float coef = (float)(1.0 / (10.0 + 1e-6));
  double norm_a, norm_b;
  set_norm_ten_gradient(&clipped, 1.0f);
  set_norm_ten_gradient(&prescaled, coef);
  assert_ok(lt_optimizer_step(&a, &clipped.ctx, 1e-2, &norm_a));
  assert_ok(lt_optimizer_step(&b, &prescaled.ctx, 1e-2, &norm_b));
  assert_true(fabs(norm_a - 10.0) < 1e-9);
  // The first moment is (1 - beta1) times the gradient the update used.
  assert_true(fabs(clipped.params.adam_m[clipped.params.info[2].offset] - 0.1 * 6.0 * coef) < 1e-7);
  assert_true(fabs(clipped.params.adam_m[clipped.params.info[2].offset + 1] - 0.1 * 8.0 * coef) <
              1e-7);
  assert_true(lt_test_max_rel_diff(clipped.params.master, prescaled.params.master,
                                   (int64_t)clipped.params.numel, 1e-3) < 1e-6);
  lt_optimizer_destroy(&a);
  lt_optimizer_destroy(&b);
  tiny_destroy(&clipped);
  tiny_destroy(&prescaled);
}

static void test_step_leaves_a_gradient_below_clip_norm_unscaled(void **state) {
  (void)state;
  tiny_model t;
  tiny_create(&t);
  lt_train_config cfg = optimizer_config(1.0);
  lt_optimizer opt;
  assert_ok(lt_optimizer_create(&opt, &t.params, &cfg));
  set_norm_ten_gradient(&t, 0.05f); // norm 0.5
  double norm;
  assert_ok(lt_optimizer_step(&opt, &t.ctx, 1e-2, &norm));
  assert_true(fabs(norm - 0.5) < 1e-7);
  assert_true(fabs(t.params.adam_m[t.params.info[2].offset] - 0.1 * 0.3) < 1e-8);
  lt_optimizer_destroy(&opt);
  tiny_destroy(&t);
}

static void test_clip_adds_pytorchs_1e_6_to_the_norm(void **state) {
  (void)state;
  tiny_model t;
  tiny_create(&t);
  lt_train_config cfg = optimizer_config(1e-6);
  lt_optimizer opt;
  assert_ok(lt_optimizer_create(&opt, &t.params, &cfg));
  set_norm_ten_gradient(&t, 1e-6f); // norm 1e-5, where the 1e-6 changes the scale by 10%
  double norm;
  assert_ok(lt_optimizer_step(&opt, &t.ctx, 1e-2, &norm));
  double coef = 1e-6 / (1e-5 + 1e-6), m0 = t.params.adam_m[t.params.info[2].offset];
  if (fabs(m0 - 0.1 * 6e-6 * coef) > 1e-4 * 0.1 * 6e-6 * coef)
    fail_msg("first moment %.9g, want %.9g", m0, 0.1 * 6e-6 * coef);
  lt_optimizer_destroy(&opt);
  tiny_destroy(&t);
}

// Runs one step with zero gradients from weights of 1: what changes is weight decay alone.
static void step_with_zero_gradient(tiny_model *t, const lt_train_config *cfg) {
  tiny_create(t);
  for (int i = 0; i < t->params.count; i++) fill(t->params.info[i].bind->value, 1.0f);
  lt_optimizer opt;
  assert_ok(lt_optimizer_create(&opt, &t->params, cfg));
  double norm;
  assert_ok(lt_optimizer_step(&opt, &t->ctx, 0.1, &norm));
  assert_true(norm == 0.0);
  lt_optimizer_destroy(&opt);
}

static void assert_all(lt_tensor t, float value, const char *name) {
  for (int64_t i = 0; i < lt_numel(t); i++)
    if (lt_f32(t)[i] != value)
      fail_msg("%s[%lld] is %.9g, want %.9g", name, (long long)i, lt_f32(t)[i], value);
}

static void test_weight_decay_skips_norms_and_embeddings_by_default(void **state) {
  (void)state;
  tiny_model t;
  lt_train_config cfg = optimizer_config(1.0);
  step_with_zero_gradient(&t, &cfg);
  const float decayed = 1.0f - 0.1f * 0.1f; // p *= 1 - lr * weight_decay
  assert_all(t.embed.value, 1.0f, "embed.weight");
  assert_all(t.norm.value, 1.0f, "attn_norm.weight");
  assert_all(t.wq.value, decayed, "attn.wq");
  assert_all(t.head.value, decayed, "lm_head.weight");
  tiny_destroy(&t);
}

static void test_decay_norms_and_decay_embeddings_opt_in(void **state) {
  (void)state;
  tiny_model t;
  lt_train_config cfg = optimizer_config(1.0);
  cfg.decay_norms = cfg.decay_embeddings = true;
  step_with_zero_gradient(&t, &cfg);
  const float decayed = 1.0f - 0.1f * 0.1f;
  assert_all(t.embed.value, decayed, "embed.weight");
  assert_all(t.norm.value, decayed, "attn_norm.weight");
  assert_all(t.wq.value, decayed, "attn.wq");
  tiny_destroy(&t);
}

// --- frozen parameters (train.freeze) ---

static void test_frozen_parameters_get_no_update_no_decay_and_no_norm(void **state) {
  (void)state;
  tiny_model t;
  tiny_create(&t);
  for (int i = 0; i < t.params.count; i++) fill(t.params.info[i].bind->value, 1.0f);
  lt_train_config cfg = optimizer_config(0.0);
  snprintf(cfg.freeze, sizeof cfg.freeze, "attn,lm_head");
  lt_optimizer opt;
  assert_ok(lt_optimizer_create(&opt, &t.params, &cfg));
  assert_int_equal(opt.n_frozen, 2);
  set_norm_ten_gradient(&t, 1.0f); // all of it on the frozen wq
  lt_f32(t.embed.grad)[0] = 3.0f;  // and a norm of 3 on the trained embedding
  lt_f32(t.head.grad)[0] = 100.0f; // frozen too
  double norm;
  assert_ok(lt_optimizer_step(&opt, &t.ctx, 0.1, &norm));
  assert_true(fabs(norm - 3.0) < 1e-9);    // frozen gradients count for nothing
  assert_all(t.wq.value, 1.0f, "attn.wq"); // no update and no weight decay
  assert_all(t.head.value, 1.0f, "lm_head.weight");
  assert_true(lt_f32(t.embed.value)[0] != 1.0f); // the rest trains
  for (int i = 0; i < t.params.count; i++) {
    const lt_param_info *p = &t.params.info[i];
    bool frozen = p->bind == &t.wq || p->bind == &t.head;
    if (frozen && lt_test_max_abs(t.params.adam_m + p->offset, p->numel) != 0)
      fail_msg("%s has AdamW state", p->name);
  }
  lt_optimizer_destroy(&opt);
  tiny_destroy(&t);
}

static void test_freeze_entry_matching_nothing_is_a_config_error(void **state) {
  (void)state;
  tiny_model t;
  tiny_create(&t);
  lt_train_config cfg = optimizer_config(1.0);
  snprintf(cfg.freeze, sizeof cfg.freeze, "embed,blocks.9.");
  lt_optimizer opt;
  EXPECT_ERROR(lt_optimizer_create(&opt, &t.params, &cfg), LT_ERR_CONFIG, "train.freeze",
               "'blocks.9.'", "parameter group");
  lt_optimizer_destroy(&opt);
  snprintf(cfg.freeze, sizeof cfg.freeze, "embed,norm,attn,head");
  EXPECT_ERROR(lt_optimizer_create(&opt, &t.params, &cfg), LT_ERR_CONFIG, "train.freeze",
               "freezes every parameter");
  lt_optimizer_destroy(&opt);
  tiny_destroy(&t);
}

// A step on a gradient holding `bad` must fail and leave weights, moments and step count alone.
static void expect_rejected_gradient(float bad) {
  tiny_model t;
  tiny_create(&t);
  assert_ok(lt_params_init(&t.params, 3));
  lt_train_config cfg = optimizer_config(1.0);
  lt_optimizer opt;
  assert_ok(lt_optimizer_create(&opt, &t.params, &cfg));
  double norm;
  set_norm_ten_gradient(&t, 1.0f);
  assert_ok(lt_optimizer_step(&opt, &t.ctx, 1e-2, &norm)); // moments now nonzero
  size_t bytes = t.params.numel * sizeof(float);
  float *master = malloc(bytes), *m = malloc(bytes), *v = malloc(bytes);
  memcpy(master, t.params.master, bytes);
  memcpy(m, t.params.adam_m, bytes);
  memcpy(v, t.params.adam_v, bytes);
  lt_f32(t.embed.grad)[3] = bad;
  int rc = lt_optimizer_step(&opt, &t.ctx, 1e-2, &norm);
  if (rc != LT_ERR_NUMERIC) fail_msg("expected LT_ERR_NUMERIC, got %d: %s", rc, lt_error_message());
  assert_non_null(strstr(lt_error_message(), "gradient norm"));
  assert_non_null(strstr(lt_error_message(), "step 2"));
  assert_memory_equal(t.params.master, master, bytes);
  assert_memory_equal(t.params.adam_m, m, bytes);
  assert_memory_equal(t.params.adam_v, v, bytes);
  assert_int_equal(opt.step, 1);
  free(master), free(m), free(v);
  lt_optimizer_destroy(&opt);
  tiny_destroy(&t);
}

static void test_nan_gradient_is_a_numeric_error_and_leaves_the_weights(void **state) {
  (void)state;
  expect_rejected_gradient(NAN);
}

static void test_infinite_gradient_is_a_numeric_error_and_leaves_the_weights(void **state) {
  (void)state;
  expect_rejected_gradient(INFINITY);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_warmup_rises_linearly_from_lr_over_warmup_to_lr),
      cmocka_unit_test(test_cosine_starts_at_lr_after_warmup_and_ends_at_min_lr),
      cmocka_unit_test(test_linear_decay_is_the_midpoint_halfway),
      cmocka_unit_test(test_constant_stays_at_lr_after_warmup),
      cmocka_unit_test(test_decay_holds_min_lr_past_the_last_step),
      cmocka_unit_test(test_adamw_step_matches_pytorch_formula),
      cmocka_unit_test(test_step_clips_by_the_global_norm_and_reports_it_before_clipping),
      cmocka_unit_test(test_step_leaves_a_gradient_below_clip_norm_unscaled),
      cmocka_unit_test(test_clip_adds_pytorchs_1e_6_to_the_norm),
      cmocka_unit_test(test_weight_decay_skips_norms_and_embeddings_by_default),
      cmocka_unit_test(test_decay_norms_and_decay_embeddings_opt_in),
      cmocka_unit_test(test_frozen_parameters_get_no_update_no_decay_and_no_norm),
      cmocka_unit_test(test_freeze_entry_matching_nothing_is_a_config_error),
      cmocka_unit_test(test_nan_gradient_is_a_numeric_error_and_leaves_the_weights),
      cmocka_unit_test(test_infinite_gradient_is_a_numeric_error_and_leaves_the_weights),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
