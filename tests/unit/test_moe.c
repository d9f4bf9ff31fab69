// The MoE feed-forward layer: its output equals each token's selected experts' SwiGLU computed
// directly, dropped choices add nothing, the auxiliary losses follow their papers' formulas, and
// the backward (router included) matches finite differences.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "layers/mlp.h"
#include "layers/moe.h"
#include "testing.h"

#define GRAD_TOL 3e-3
#define EPS      1e-3

typedef struct moe_case {
  lt_ctx ctx;
  lt_model_config cfg;
  lt_layer *layer;
  lt_params params;
  lt_arena acts, scratch;
  lt_aux_loss aux;
  lt_batch batch;
  int64_t n, d, capacity;
  double aux_baseline; // subtracted from the auxiliary loss before it is stored as f32
  float *x, *out, *dx;
  int32_t *pos;
} moe_case;

static lt_model_config moe_config(int n_experts, int top_k, bool renormalize,
                                  double capacity_factor) {
  return (lt_model_config){.d_model = 12,
                           .ffn_dim = 10,
                           .moe = {.n_experts = n_experts,
                                   .top_k = top_k,
                                   .renormalize = renormalize,
                                   .capacity_factor = capacity_factor,
                                   .aux_loss_coef = 0.1,
                                   .z_loss_coef = 0.01}};
}

static float *param(moe_case *c, const char *fmt, int index) {
  char name[96];
  snprintf(name, sizeof name, fmt, index);
  const lt_param_info *p = lt_params_find(&c->params, name);
  if (!p) fail_msg("no parameter %s", name);
  return c->params.master + p->offset;
}

// Router logits of token t in double.
static void router_logits(moe_case *c, int64_t t, double *logits) {
  const float *wr = param(c, "moe.router", 0);
  for (int e = 0; e < c->cfg.moe.n_experts; e++) {
    logits[e] = 0;
    for (int64_t i = 0; i < c->d; i++) logits[e] += (double)c->x[t * c->d + i] * wr[e * c->d + i];
  }
}

// The gap between the k-th and (k+1)-th largest router logits of token t (infinite when k = E).
static double tie_margin(moe_case *c, int64_t t) {
  double logits[64];
  router_logits(c, t, logits);
  return lt_test_top_k_margin(logits, c->cfg.moe.n_experts, c->cfg.moe.top_k);
}

static void make_case(moe_case *c, lt_model_config cfg, int64_t B, int64_t T, uint64_t seed) {
  *c = (moe_case){.cfg = cfg, .n = B * T, .d = cfg.d_model};
  assert_ok(lt_ctx_init(&c->ctx, LT_CPU, 2));
  lt_params_begin(&c->params, NULL);
  assert_ok(lt_moe_create(&c->layer, &c->params, "moe", &c->cfg, (lt_init_stds){1, 1}));
  assert_ok(lt_params_allocate(&c->params, LT_CPU));
  for (int i = 0; i < c->params.count; i++) // weights of size ~1/sqrt(fan_in): O(1) activations
    lt_test_fill_normal(c->params.master + c->params.info[i].offset, c->params.info[i].numel,
                        seed + 100 + (uint64_t)i, 1.0f / sqrtf((float)c->params.info[i].shape[1]));
  lt_arena ma, ms;
  lt_arena_measure(&ma, LT_CPU, "acts");
  lt_arena_measure(&ms, LT_CPU, "scratch");
  lt_plan plan = {.B = B, .T = T, .act_dtype = LT_F32, .acts = &ma, .scratch = &ms};
  assert_ok(c->layer->ops->plan(c->layer, &plan));
  assert_ok(lt_arena_create(&c->acts, LT_CPU, ma.peak, "acts"));
  assert_ok(lt_arena_create(&c->scratch, LT_CPU, ms.peak, "scratch"));
  plan.acts = &c->acts, plan.scratch = &c->scratch;
  assert_ok(c->layer->ops->plan(c->layer, &plan));
  if (cfg.moe.capacity_factor > 0)
    c->capacity =
        (int64_t)ceil(cfg.moe.capacity_factor * (double)(c->n * cfg.moe.top_k) / cfg.moe.n_experts);
  c->x = malloc(sizeof(float) * c->n * c->d);
  c->out = calloc((size_t)(c->n * c->d + 1), sizeof(float)); // + the auxiliary loss
  c->dx = calloc((size_t)(c->n * c->d), sizeof(float));
  c->pos = malloc(sizeof(int32_t) * c->n);
  lt_test_fill_normal(c->x, c->n * c->d, seed, 1.0f);
  // Inputs far from ties: top-k is piecewise constant, so a finite difference across a change of
  // experts would measure a jump, not a derivative. Redraw any token whose choice is close.
  for (int64_t t = 0; t < c->n; t++)
    for (uint64_t redraw = 1; tie_margin(c, t) < 0.1; redraw++)
      lt_test_fill_normal(c->x + t * c->d, c->d, seed * 1000 + (uint64_t)t * 31 + redraw, 1.0f);
  for (int64_t i = 0; i < c->n; i++) c->pos[i] = (int32_t)(i % T);
  c->aux = (lt_aux_loss){.grad_scale = 1.0f};
  c->batch =
      (lt_batch){.B = B, .T = T, .pos = lt_view1(c->pos, LT_I32, LT_CPU, c->n), .aux = &c->aux};
}

static void free_case(moe_case *c) {
  c->layer->ops->destroy(c->layer);
  lt_arena_destroy(&c->acts), lt_arena_destroy(&c->scratch);
  lt_params_free(&c->params);
  free(c->x), free(c->out), free(c->dx), free(c->pos);
}

static void run_forward(moe_case *c) {
  c->aux.sum = 0;
  assert_ok(c->layer->ops->forward(c->layer, &c->ctx, lt_view2(c->out, LT_F32, LT_CPU, c->n, c->d),
                                   lt_view2(c->x, LT_F32, LT_CPU, c->n, c->d), &c->batch));
  c->out[c->n * c->d] = (float)(c->aux.sum - c->aux_baseline);
}

// y += w * SwiGLU(x) with gate/up/down weights (f, d), (f, d), (d, f), in double.
static void swiglu_direct(double *y, const float *x, const float *w_gate, const float *w_up,
                          const float *w_down, int64_t d, int64_t f, double w) {
  for (int64_t j = 0; j < f; j++) {
    double g = 0, u = 0;
    for (int64_t i = 0; i < d; i++)
      g += (double)w_gate[j * d + i] * x[i], u += (double)w_up[j * d + i] * x[i];
    const double h = g / (1 + exp(-g)) * u;
    for (int64_t i = 0; i < d; i++) y[i] += w * h * w_down[i * f + j];
  }
}

// The layer computed token by token: softmax router, top-k (ties to the lower index), gates,
// admission in priority order (first choices before second choices, then token order) up to the
// capacity, and each kept choice's expert run directly. kept[t * k + s] records admission.
static void reference(moe_case *c, float *out, bool *kept) {
  const int e = c->cfg.moe.n_experts, k = c->cfg.moe.top_k;
  const int64_t d = c->d, f = c->cfg.moe.ffn_dim ? c->cfg.moe.ffn_dim : c->cfg.ffn_dim;
  int *chosen = malloc(sizeof(int) * c->n * k), fill[64] = {0};
  double *gate = malloc(sizeof(double) * c->n * k), *y = malloc(sizeof(double) * d);
  for (int64_t t = 0; t < c->n; t++) {
    double logits[64], sum = 0, kept_sum = 0;
    router_logits(c, t, logits);
    for (int j = 0; j < e; j++) sum += exp(logits[j]);
    for (int s = 0; s < k; s++) {
      int best = -1;
      for (int j = 0; j < e; j++) {
        bool taken = false;
        for (int q = 0; q < s; q++) taken |= chosen[t * k + q] == j;
        if (!taken && (best < 0 || logits[j] > logits[best])) best = j;
      }
      chosen[t * k + s] = best;
      gate[t * k + s] = exp(logits[best]) / sum;
      kept_sum += gate[t * k + s];
    }
    if (c->cfg.moe.renormalize)
      for (int s = 0; s < k; s++) gate[t * k + s] /= kept_sum;
  }
  for (int s = 0; s < k; s++)
    for (int64_t t = 0; t < c->n; t++)
      kept[t * k + s] = c->capacity == 0 || fill[chosen[t * k + s]]++ < c->capacity;
  for (int64_t t = 0; t < c->n; t++) {
    memset(y, 0, sizeof(double) * d);
    const float *xt = c->x + t * d;
    for (int s = 0; s < k; s++) {
      const int x = chosen[t * k + s];
      if (kept[t * k + s])
        swiglu_direct(y, xt, param(c, "moe.experts.%d.w_gate", x),
                      param(c, "moe.experts.%d.w_up", x), param(c, "moe.experts.%d.w_down", x), d,
                      f, gate[t * k + s]);
    }
    if (c->cfg.moe.n_shared_experts)
      swiglu_direct(y, xt, param(c, "moe.shared.w_gate", 0), param(c, "moe.shared.w_up", 0),
                    param(c, "moe.shared.w_down", 0), d, f * c->cfg.moe.n_shared_experts, 1.0);
    for (int64_t i = 0; i < d; i++) out[t * d + i] = (float)y[i];
  }
  free(chosen), free(gate), free(y);
}

static void expect_matches_reference(lt_model_config cfg, int64_t B, int64_t T) {
  moe_case c;
  make_case(&c, cfg, B, T, 3);
  run_forward(&c);
  float *want = malloc(sizeof(float) * c.n * c.d);
  bool *kept = malloc(sizeof(bool) * c.n * cfg.moe.top_k);
  reference(&c, want, kept);
  assert_true(lt_test_max_rel_diff(c.out, want, c.n * c.d, 1.0) < 1e-5);
  free(want), free(kept);
  free_case(&c);
}

static void test_moe_output_equals_the_selected_experts_swiglu_computed_directly(void **state) {
  (void)state;
  expect_matches_reference(moe_config(4, 2, true, 0), 2, 9);  // Mixtral-style
  expect_matches_reference(moe_config(5, 3, false, 0), 3, 5); // GShard-style plain gates
  expect_matches_reference(moe_config(6, 1, false, 0), 1, 8); // Switch
  lt_model_config shared = moe_config(4, 2, true, 0);
  shared.moe.n_shared_experts = 2, shared.moe.ffn_dim = 6;
  expect_matches_reference(shared, 2, 7);
}

static void test_dropped_choices_add_nothing_and_kept_ones_match(void **state) {
  (void)state;
  lt_model_config cfg = moe_config(4, 2, false, 0.5);
  moe_case c;
  make_case(&c, cfg, 2, 12, 5); // capacity ceil(0.5 * 24 * 2 / 4) = 6 of 48 choices over 4 experts
  assert_int_equal(c.capacity, 6);
  run_forward(&c);
  float *want = malloc(sizeof(float) * c.n * c.d);
  bool *kept = malloc(sizeof(bool) * c.n * 2);
  reference(&c, want, kept);
  assert_true(lt_test_max_rel_diff(c.out, want, c.n * c.d, 1.0) < 1e-5);
  int dropped = 0, fully_dropped = 0;
  for (int64_t t = 0; t < c.n; t++) {
    dropped += !kept[t * 2] + !kept[t * 2 + 1];
    if (kept[t * 2] || kept[t * 2 + 1]) continue;
    fully_dropped++; // a token with no expert gets exactly zero: the residual carries it
    for (int64_t i = 0; i < c.d; i++) assert_true(c.out[t * c.d + i] == 0.0f);
  }
  assert_int_equal(dropped, 48 - 4 * 6); // every expert is full at this capacity
  assert_true(fully_dropped > 0);
  free(want), free(kept);
  free_case(&c);
}

static void test_identical_experts_all_chosen_equal_one_dense_swiglu(void **state) {
  (void)state;
  moe_case c;
  make_case(&c, moe_config(3, 3, true, 0), 2, 6, 7);
  const int64_t d = c.d, f = c.cfg.ffn_dim;
  for (int e = 1; e < 3; e++) { // every expert a copy of expert 0
    memcpy(param(&c, "moe.experts.%d.w_gate", e), param(&c, "moe.experts.%d.w_gate", 0), f * d * 4);
    memcpy(param(&c, "moe.experts.%d.w_up", e), param(&c, "moe.experts.%d.w_up", 0), f * d * 4);
    memcpy(param(&c, "moe.experts.%d.w_down", e), param(&c, "moe.experts.%d.w_down", 0), f * d * 4);
  }
  run_forward(&c);
  // The same weights as a dense SwiGLU layer: renormalized gates over all experts sum to 1.
  lt_params dense_params;
  lt_layer *dense;
  lt_params_begin(&dense_params, NULL);
  assert_ok(lt_swiglu_mlp_create(&dense, &dense_params, "mlp", d, f, (lt_init_stds){1, 1}));
  assert_ok(lt_params_allocate(&dense_params, LT_CPU));
  memcpy(dense_params.master + lt_params_find(&dense_params, "mlp.w_gate")->offset,
         param(&c, "moe.experts.%d.w_gate", 0), f * d * 4);
  memcpy(dense_params.master + lt_params_find(&dense_params, "mlp.w_up")->offset,
         param(&c, "moe.experts.%d.w_up", 0), f * d * 4);
  memcpy(dense_params.master + lt_params_find(&dense_params, "mlp.w_down")->offset,
         param(&c, "moe.experts.%d.w_down", 0), f * d * 4);
  lt_arena acts, scratch;
  lt_arena_create(&acts, LT_CPU, 1 << 20, "acts"), lt_arena_create(&scratch, LT_CPU, 1 << 20, "s");
  lt_plan plan = {.B = 2, .T = 6, .act_dtype = LT_F32, .acts = &acts, .scratch = &scratch};
  assert_ok(dense->ops->plan(dense, &plan));
  float *want = malloc(sizeof(float) * c.n * d);
  assert_ok(dense->ops->forward(dense, &c.ctx, lt_view2(want, LT_F32, LT_CPU, c.n, d),
                                lt_view2(c.x, LT_F32, LT_CPU, c.n, d), &c.batch));
  assert_true(lt_test_max_rel_diff(c.out, want, c.n * d, 1.0) < 1e-5);
  free(want);
  dense->ops->destroy(dense);
  lt_arena_destroy(&acts), lt_arena_destroy(&scratch), lt_params_free(&dense_params);
  free_case(&c);
}

// --- auxiliary losses ---

static void test_aux_losses_follow_the_switch_and_st_moe_formulas(void **state) {
  (void)state;
  moe_case c;
  lt_model_config cfg = moe_config(5, 2, true, 0.8); // counts before dropping
  make_case(&c, cfg, 2, 10, 9);
  run_forward(&c);
  const int e = 5, k = 2;
  double counts[5] = {0}, prob_mean[5] = {0}, z = 0;
  for (int64_t t = 0; t < c.n; t++) {
    double logits[5], sum = 0;
    router_logits(&c, t, logits);
    for (int j = 0; j < e; j++) sum += exp(logits[j]);
    z += log(sum) * log(sum) / (double)c.n;
    for (int j = 0; j < e; j++) {
      prob_mean[j] += exp(logits[j]) / sum / (double)c.n;
      int above = 0;
      for (int i = 0; i < e; i++) above += logits[i] > logits[j];
      counts[j] += above < k;
    }
  }
  double balance = 0;
  for (int j = 0; j < e; j++) balance += counts[j] / (double)(c.n * k) * prob_mean[j];
  const double want = cfg.moe.aux_loss_coef * e * balance + cfg.moe.z_loss_coef * z;
  assert_float_equal(c.aux.sum, want, 1e-6 * want);
  free_case(&c);
}

static void test_a_uniform_router_scores_the_balance_coefficient_and_log_e_squared(void **state) {
  (void)state;
  moe_case c;
  lt_model_config cfg = moe_config(4, 2, false, 0);
  cfg.moe.aux_loss_coef = 0.5, cfg.moe.z_loss_coef = 0.25;
  make_case(&c, cfg, 1, 8, 11);
  memset(param(&c, "moe.router", 0), 0, sizeof(float) * 4 * c.d);
  run_forward(&c);
  // P_i = 1/E whatever f is, so E sum f_i P_i = 1; lse = log E for every token.
  assert_float_equal(c.aux.sum, 0.5 + 0.25 * log(4.0) * log(4.0), 1e-6);
  free_case(&c);
}

static void test_nothing_is_added_when_no_collector_is_given(void **state) {
  (void)state;
  moe_case c;
  make_case(&c, moe_config(4, 2, true, 0), 1, 6, 12);
  c.batch.aux = NULL;
  run_forward(&c); // with batch.aux NULL the layer must not touch c.aux
  assert_true(c.aux.sum == 0.0);
  free_case(&c);
}

// --- gradients ---

static void forward_fn(void *p) {
  run_forward(p);
}

// The objective is <r, out> + r_aux * aux: the last element of dout is the auxiliary loss's
// grad_scale. With aux_only, dout is r_aux alone and the outputs' part is zero.
static bool aux_only;

static void backward_fn(void *p, const float *dout) {
  moe_case *c = p;
  const int64_t nd = c->n * c->d;
  float *full = calloc((size_t)nd + 1, sizeof(float)), *tmp = calloc((size_t)nd, sizeof(float));
  if (aux_only)
    full[nd] = dout[0];
  else
    memcpy(full, dout, sizeof(float) * (size_t)(nd + 1));
  c->aux.grad_scale = full[nd];
  assert_ok(c->layer->ops->backward(c->layer, &c->ctx, lt_view2(tmp, LT_F32, LT_CPU, c->n, c->d),
                                    lt_view2(full, LT_F32, LT_CPU, c->n, c->d),
                                    lt_view2(c->x, LT_F32, LT_CPU, c->n, c->d), &c->batch));
  for (int64_t i = 0; i < nd; i++) c->dx[i] += tmp[i];
  free(full), free(tmp);
}

// The largest gradient-check error over x and every parameter; the router must get a gradient.
static double moe_grad_error(lt_model_config cfg, int64_t B, int64_t T, bool only_aux) {
  moe_case c;
  make_case(&c, cfg, B, T, 21);
  aux_only = only_aux;
  int n_inputs = 1 + c.params.count;
  lt_gradcheck_input *in = calloc((size_t)n_inputs, sizeof *in);
  in[0] = (lt_gradcheck_input){"x", c.x, c.dx, c.n * c.d};
  for (int i = 0; i < c.params.count; i++) {
    lt_param_info *p = &c.params.info[i];
    in[1 + i] = (lt_gradcheck_input){p->name, c.params.master + p->offset,
                                     c.params.grad + p->offset, p->numel};
  }
  // Finite differences see the auxiliary loss through an f32: stored relative to its value here,
  // its rounding error shrinks with the perturbation instead of staying at 1e-8 of the loss.
  run_forward(&c);
  c.aux_baseline = c.aux.sum;
  const int64_t nd = c.n * c.d;
  lt_gradcheck check = {
      &c,         in,         n_inputs, only_aux ? c.out + nd : c.out, only_aux ? 1 : nd + 1,
      forward_fn, backward_fn};
  double err = lt_gradcheck_run(&check, 5, 3, EPS);
  const lt_param_info *router = lt_params_find(&c.params, "moe.router");
  assert_true(lt_test_max_abs(c.params.grad + router->offset, router->numel) > 0);
  free(in);
  free_case(&c);
  return err;
}

static void test_moe_backward_matches_finite_differences(void **state) {
  (void)state;
  lt_model_config cfg = moe_config(4, 2, true, 0);
  cfg.moe.n_shared_experts = 1;
  assert_true(moe_grad_error(cfg, 2, 7, false) < GRAD_TOL);
}

static void test_plain_gates_with_dropping_backward_matches(void **state) {
  (void)state;
  assert_true(moe_grad_error(moe_config(5, 2, false, 0.75), 2, 8, false) < GRAD_TOL);
}

static void test_switch_top1_backward_matches(void **state) {
  (void)state;
  assert_true(moe_grad_error(moe_config(4, 1, false, 1.0), 3, 5, false) < GRAD_TOL);
}

static void test_auxiliary_loss_gradient_matches_finite_differences(void **state) {
  (void)state;
  assert_true(moe_grad_error(moe_config(4, 2, true, 0), 2, 9, true) < GRAD_TOL);
}

// --- config ---

// The defaults with the given --set overrides (NULL-terminated, at most 3).
static int load_with_overrides(const char *const *sets) {
  lt_config cfg;
  char *overrides[3];
  int n = 0;
  while (sets[n] && n < 3) overrides[n] = (char *)sets[n], n++;
  return lt_config_load(&cfg, NULL, n, overrides);
}
#define load_with(...) load_with_overrides((const char *const[]){__VA_ARGS__, NULL})

static void test_top_k_larger_than_the_expert_count_is_a_config_error(void **state) {
  (void)state;
  EXPECT_ERROR(load_with("model.ffn=moe", "model.moe.n_experts=4", "model.moe.top_k=5"),
               LT_ERR_CONFIG, "model.moe.top_k (5)", "model.moe.n_experts (4)", "lower top_k");
}

static void test_renormalizing_a_single_choice_is_a_config_error(void **state) {
  (void)state;
  EXPECT_ERROR(load_with("model.ffn=moe", "model.moe.top_k=1", "model.moe.renormalize=true"),
               LT_ERR_CONFIG, "model.moe.renormalize", "set model.moe.renormalize to false");
  assert_ok(load_with("model.moe.top_k=1", "model.moe.renormalize=false"));
}

static void test_out_of_range_moe_keys_are_config_errors(void **state) {
  (void)state;
  EXPECT_ERROR(load_with("model.ffn=moe", "model.moe.n_experts=0"), LT_ERR_CONFIG,
               "model.moe.n_experts", "between 1 and 4096");
  EXPECT_ERROR(load_with("model.ffn=moe", "model.moe.capacity_factor=-1"), LT_ERR_CONFIG,
               "model.moe.capacity_factor");
  EXPECT_ERROR(load_with("model.ffn=mixture", "model.moe.top_k=2"), LT_ERR_CONFIG, "model.ffn",
               "'mixture'", "moe");
}

static void test_moe_layer_rejects_a_bad_config_built_in_code(void **state) {
  (void)state;
  lt_model_config cfg = moe_config(3, 4, true, 0);
  lt_params params;
  lt_layer *layer = NULL;
  lt_params_begin(&params, NULL);
  EXPECT_ERROR(lt_moe_create(&layer, &params, "layers.2.ffn", &cfg, (lt_init_stds){1, 1}),
               LT_ERR_CONFIG, "layers.2.ffn", "model.moe.top_k (4)");
  if (layer) layer->ops->destroy(layer);
  lt_params_free(&params);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_moe_output_equals_the_selected_experts_swiglu_computed_directly),
      cmocka_unit_test(test_dropped_choices_add_nothing_and_kept_ones_match),
      cmocka_unit_test(test_identical_experts_all_chosen_equal_one_dense_swiglu),
      cmocka_unit_test(test_aux_losses_follow_the_switch_and_st_moe_formulas),
      cmocka_unit_test(test_a_uniform_router_scores_the_balance_coefficient_and_log_e_squared),
      cmocka_unit_test(test_nothing_is_added_when_no_collector_is_given),
      cmocka_unit_test(test_moe_backward_matches_finite_differences),
      cmocka_unit_test(test_plain_gates_with_dropping_backward_matches),
      cmocka_unit_test(test_switch_top1_backward_matches),
      cmocka_unit_test(test_auxiliary_loss_gradient_matches_finite_differences),
      cmocka_unit_test(test_top_k_larger_than_the_expert_count_is_a_config_error),
      cmocka_unit_test(test_renormalizing_a_single_choice_is_a_config_error),
      cmocka_unit_test(test_out_of_range_moe_keys_are_config_errors),
      cmocka_unit_test(test_moe_layer_rejects_a_bad_config_built_in_code),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
