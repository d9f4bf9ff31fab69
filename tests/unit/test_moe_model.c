// MoE layers inside the whole model and the trainer: the model's backward with MoE blocks matches
// finite differences (auxiliary losses included), recomputation counts the auxiliary losses once,
// and `longtrain train` reports the auxiliary loss. (test_model.c shows a MoE model fits a batch.)
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "model/model.h"
#include "testing.h"

typedef struct moe_model {
  lt_ctx ctx;
  lt_model model;
  lt_aux_loss aux;
  lt_batch batch;
  int32_t *tokens, *targets, *pos;
  // The loss and the auxiliary loss, less their values at the start: finite differences see them
  // through f32, whose rounding then shrinks with the perturbation instead of staying at 1e-7.
  float objective[2];
  double baseline[2];
} moe_model;

static lt_model_config moe_model_config(const char *ffn) {
  lt_model_config cfg = {.d_model = 16,
                         .n_layers = 2,
                         .n_heads = 4,
                         .n_kv_heads = 2,
                         .ffn_dim = 12,
                         .vocab_size = 11,
                         .max_seq_len = 64,
                         .rope_theta = 10000,
                         .norm_eps = 1e-5,
                         .init_std = 0.3,
                         .moe = {.n_experts = 4,
                                 .top_k = 2,
                                 .renormalize = true,
                                 .capacity_factor = 1.25,
                                 .aux_loss_coef = 0.1,
                                 .z_loss_coef = 0.01}};
  snprintf(cfg.ffn, sizeof cfg.ffn, "%s", ffn);
  return cfg;
}

static void make_model(moe_model *s, lt_model_config cfg, int64_t B, int64_t T, bool recompute) {
  *s = (moe_model){0};
  assert_ok(lt_ctx_init(&s->ctx, LT_CPU, 2));
  assert_ok(lt_model_create(&s->model, &cfg, LT_CPU, NULL));
  assert_ok(lt_params_init(&s->model.params, 77));
  assert_ok(lt_model_plan(&s->model, B, T, recompute));
  const int64_t n = B * T;
  s->tokens = malloc(n * 4), s->targets = malloc(n * 4), s->pos = malloc(n * 4);
  for (int64_t i = 0; i < n; i++) {
    s->tokens[i] = (int32_t)((i * 7 + 3) % cfg.vocab_size);
    s->targets[i] = (int32_t)((i * 3 + 1) % cfg.vocab_size);
    s->pos[i] = (int32_t)(i % T);
  }
  s->aux.grad_scale = 1.0f;
  s->batch = (lt_batch){.B = B,
                        .T = T,
                        .tokens = lt_view1(s->tokens, LT_I32, LT_CPU, n),
                        .targets = lt_view1(s->targets, LT_I32, LT_CPU, n),
                        .pos = lt_view1(s->pos, LT_I32, LT_CPU, n),
                        .aux = &s->aux};
}

static void free_model(moe_model *s) {
  free(s->tokens), free(s->targets), free(s->pos);
  lt_model_destroy(&s->model);
}

static double forward(moe_model *s, bool want_grad, float grad_scale) {
  double loss;
  s->aux.sum = 0;
  assert_ok(lt_model_forward(&s->model, &s->ctx, &s->batch, want_grad, grad_scale, &loss));
  s->objective[0] = (float)(loss - s->baseline[0]);
  s->objective[1] = (float)(s->aux.sum - s->baseline[1]);
  return loss;
}

static void forward_fn(void *p) {
  forward(p, false, 1.0f);
}

static void backward_fn(void *p, const float *dout) {
  moe_model *s = p;
  s->aux.grad_scale = dout[1];
  forward(s, true, dout[0]);
  assert_ok(lt_model_backward(&s->model, &s->ctx, &s->batch));
}

static void test_model_with_moe_layers_backward_matches_finite_differences(void **state) {
  (void)state;
  moe_model s;
  make_model(&s, moe_model_config("swiglu,moe"), 2, 9, false);
  s.baseline[0] = forward(&s, false, 1.0f);
  s.baseline[1] = s.aux.sum;
  assert_true(s.baseline[1] > 0);
  lt_params *params = &s.model.params;
  lt_gradcheck_input *in = calloc((size_t)params->count, sizeof *in);
  for (int i = 0; i < params->count; i++) {
    lt_param_info *p = &params->info[i];
    in[i] = (lt_gradcheck_input){p->name, params->master + p->offset, params->grad + p->offset,
                                 p->numel};
  }
  lt_gradcheck c = {&s, in, params->count, s.objective, 2, forward_fn, backward_fn};
  assert_true(lt_gradcheck_run(&c, 13, 2, 1e-3) < 3e-3);
  free(in);
  free_model(&s);
}

static void test_recomputation_counts_auxiliary_losses_once(void **state) {
  (void)state;
  moe_model kept, recomputed;
  make_model(&kept, moe_model_config("moe"), 2, 12, false);
  make_model(&recomputed, moe_model_config("moe"), 2, 12, true);
  moe_model *runs[2] = {&kept, &recomputed};
  for (int i = 0; i < 2; i++) {
    assert_ok(lt_params_zero_grad(&runs[i]->model.params));
    forward(runs[i], true, 0.01f);
    assert_ok(lt_model_backward(&runs[i]->model, &runs[i]->ctx, &runs[i]->batch));
  }
  // The recomputed forward in the backward must not add to the collector a second time.
  assert_true(kept.aux.sum > 0 && kept.aux.sum == recomputed.aux.sum);
  assert_true(kept.objective[0] == recomputed.objective[0] && kept.objective[0] > 0);
  assert_memory_equal(kept.model.params.grad, recomputed.model.params.grad,
                      kept.model.params.numel * sizeof(float));
  free_model(&kept), free_model(&recomputed);
}

// --- the trainer ---

enum { OUT_CAP = 1 << 16 };

// A small text, its dataset (by `longtrain prepare`), and a run of configs/moe-tiny.yaml on it.
static void train_tiny(const char *ffn, char *out, char *metrics) {
  const char *dir = lt_test_tmpdir();
  char text[512], data[512], command[4096], path[600];
  snprintf(text, sizeof text, "%s/text.txt", dir);
  snprintf(data, sizeof data, "%s/text.h5", dir);
  char *body = calloc(1, 8192);
  for (int i = 0; strlen(body) < 6000; i++)
    strcat(body, i % 3 ? "The experts route each token to the best two of eight. "
                       : "A load-balance loss keeps every expert busy.\n");
  lt_test_write_file(text, body);
  free(body);
  snprintf(command, sizeof command, "%s prepare --output %s %s", lt_test_binary(), data, text);
  assert_int_equal(lt_test_run(command, out, OUT_CAP), 0);
  snprintf(command, sizeof command,
           "%s train --config %s --set data.path=%s --set run.dir=%s/run --set model.ffn=%s "
           "--set train.seq_len=32 --set train.batch=2 --set train.steps=2 --set run.threads=1",
           lt_test_binary(), lt_test_source_path("configs/moe-tiny.yaml"), data, dir, ffn);
  int status = lt_test_run(command, out, OUT_CAP);
  if (status != 0) fail_msg("train failed (%d):\n%s", status, out);
  snprintf(path, sizeof path, "%s/run/metrics.jsonl", dir);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  size_t n = fread(metrics, 1, OUT_CAP - 1, f);
  metrics[n] = '\0';
  fclose(f);
}

static void test_training_reports_the_auxiliary_loss_only_when_there_is_one(void **state) {
  (void)state;
  char *out = malloc(OUT_CAP), *metrics = malloc(OUT_CAP);
  train_tiny("moe", out, metrics);
  if (!strstr(out, "step 2/2 | loss ") || !strstr(out, " | aux 0.0"))
    fail_msg("no aux in the progress lines:\n%s", out);
  if (!strstr(metrics, "\"aux_loss\": 0.0")) fail_msg("no aux in metrics.jsonl:\n%s", metrics);
  train_tiny("swiglu", out, metrics);
  assert_null(strstr(out, "aux"));
  assert_null(strstr(metrics, "aux"));
  free(out), free(metrics);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_model_with_moe_layers_backward_matches_finite_differences),
      cmocka_unit_test(test_recomputation_counts_auxiliary_losses_once),
      cmocka_unit_test(test_training_reports_the_auxiliary_loss_only_when_there_is_one),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
