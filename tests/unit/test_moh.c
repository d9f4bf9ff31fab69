// Mixture-of-head attention: with every head on at weight 1 it is multi-head attention (the
// softmax layer with the same weights), forward and backward; in general its output is the
// router-weighted sum of the heads' outputs, with the weights and the load-balance loss of the
// MoH paper written out here in double precision; the weighting fused into the attention (the
// forward's gated output, gates * o; the backward's one pass for d_o, the gates' gradient and
// delta) matches the separate ops; and its config is checked with one-line errors.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "layers/attention/moh.h"
#include "layers/attention/softmax.h"
#include "layer_harness.h"
#include "testing.h"

static lt_ctx ctx;

enum { B = 2, T = 20, D = 16, H = 4, HKV = 2, HD = 6, N = B * T };

static lt_model_config moh_config(int shared, int top_k) {
  return (lt_model_config){.d_model = D,
                           .n_heads = H,
                           .n_kv_heads = HKV,
                           .head_dim = HD,
                           .rope_theta = 10000.0,
                           .moh = {.shared_heads = shared, .top_k = top_k, .balance_coef = 0.1}};
}

// A MoH or softmax layer for batches of (B, T), weights seeded by name: the attention weights of
// the two kinds are the same.
static void build(lt_test_layer *l, bool moh, const lt_model_config *cfg) {
  lt_params_begin(&l->params, NULL);
  if (moh)
    assert_ok(lt_moh_attention_create(&l->layer, &l->params, "attn", cfg, (lt_init_stds){1, 1}));
  else
    assert_ok(
        lt_softmax_attention_create(&l->layer, &l->params, "attn", cfg, (lt_init_stds){1, 1}));
  lt_test_layer_finish(l, B, T);
}

typedef struct inputs {
  float x[N * D];
  int32_t pos[N];
  lt_batch batch;
} inputs;

static void make_inputs(inputs *in, uint64_t seed) {
  lt_test_fill_normal(in->x, N * D, seed, 1.0f);
  for (int i = 0; i < N; i++) in->pos[i] = i % T;
  in->batch = (lt_batch){.B = B, .T = T, .pos = lt_view1(in->pos, LT_I32, LT_CPU, N)};
}

static void forward(lt_test_layer *l, inputs *in, float *out) {
  assert_ok(l->layer->ops->forward(l->layer, &ctx, lt_view2(out, LT_F32, LT_CPU, N, D),
                                   lt_view2(in->x, LT_F32, LT_CPU, N, D), &in->batch));
}

static void backward(lt_test_layer *l, inputs *in, const float *dout, float *dx) {
  assert_ok(lt_params_zero_grad(&l->params));
  assert_ok(l->layer->ops->backward(l->layer, &ctx, lt_view2(dx, LT_F32, LT_CPU, N, D),
                                    lt_view2((float *)dout, LT_F32, LT_CPU, N, D),
                                    lt_view2(in->x, LT_F32, LT_CPU, N, D), &in->batch));
}

static void expect_multi_head_attention_when_every_head_weighs_one(int shared) {
  lt_model_config cfg = moh_config(shared, H - shared);
  lt_test_layer moh, mha;
  build(&moh, true, &cfg);
  build(&mha, false, &cfg);
  // Zero router weights: uniform softmaxes, and with every routed head chosen each weight is 1.
  for (int i = 0; i < moh.params.count; i++)
    if (strstr(moh.params.info[i].name, "router"))
      memset(moh.params.master + moh.params.info[i].offset, 0, 4 * moh.params.info[i].numel);
  const char *shared_names[] = {"attn.wq", "attn.wk", "attn.wv", "attn.wo"};
  for (int i = 0; i < 4; i++)
    assert_memory_equal(lt_test_layer_param(&moh, shared_names[i]),
                        lt_test_layer_param(&mha, shared_names[i]),
                        4 * lt_test_layer_numel(&mha, shared_names[i]));
  inputs in;
  make_inputs(&in, 5);
  float out_moh[N * D], out_mha[N * D], dout[N * D], dx_moh[N * D], dx_mha[N * D];
  forward(&moh, &in, out_moh);
  forward(&mha, &in, out_mha);
  assert_true(lt_test_max_rel_diff(out_moh, out_mha, N * D, 1.0) < 1e-6);
  lt_test_fill_normal(dout, N * D, 6, 1.0f);
  backward(&moh, &in, dout, dx_moh);
  backward(&mha, &in, dout, dx_mha);
  assert_true(lt_test_max_rel_diff(dx_moh, dx_mha, N * D, 1.0) < 1e-6);
  for (int i = 0; i < 4; i++)
    assert_true(lt_test_max_rel_diff(lt_test_layer_grad(&moh, shared_names[i]),
                                     lt_test_layer_grad(&mha, shared_names[i]),
                                     lt_test_layer_numel(&mha, shared_names[i]), 1.0) < 1e-6);
  lt_test_layer_destroy(&moh), lt_test_layer_destroy(&mha);
}

static void test_moh_with_every_head_at_weight_one_equals_multi_head_attention(void **state) {
  (void)state;
  expect_multi_head_attention_when_every_head_weighs_one(0); // routed heads only
  expect_multi_head_attention_when_every_head_weighs_one(1); // one shared: no shared router
  expect_multi_head_attention_when_every_head_weighs_one(2); // shared router and mix
}

// MoH eqs. 4-6 with the official code's normalisation, in double: the head weights of each token
// and the load-balance loss R sum_i f_i P_i.
static double reference_gates(lt_test_layer *l, const lt_model_config *cfg, const float *x,
                              double gates[N][H]) {
  const int S = cfg->moh.shared_heads, R = H - S, K = cfg->moh.top_k;
  const float *w_routed = lt_test_layer_param(l, "attn.router_routed");
  const float *w_shared = S >= 2 ? lt_test_layer_param(l, "attn.router_shared") : NULL;
  const float *w_mix = S >= 1 ? lt_test_layer_param(l, "attn.router_mix") : NULL;
  double f[H] = {0}, P[H] = {0};
  for (int t = 0; t < N; t++) {
    double z[H], p[H], sum = 0, a[2] = {0.5, 0.5};
    for (int i = 0; i < R; i++) {
      z[i] = 0;
      for (int c = 0; c < D; c++) z[i] += (double)w_routed[i * D + c] * x[t * D + c];
      sum += p[i] = exp(z[i]);
    }
    for (int i = 0; i < R; i++) p[i] /= sum, P[i] += p[i] / N;
    if (w_mix) {
      double m[2];
      for (int j = 0; j < 2; j++) {
        m[j] = 0;
        for (int c = 0; c < D; c++) m[j] += (double)w_mix[j * D + c] * x[t * D + c];
      }
      a[0] = 1 / (1 + exp(m[1] - m[0])), a[1] = 1 - a[0];
    }
    // A routed head is chosen when fewer than K others beat it (ties go to the lower index).
    double chosen_mass = 0;
    bool chosen[H];
    for (int i = 0; i < R; i++) {
      int better = 0;
      for (int j = 0; j < R; j++) better += p[j] > p[i] || (p[j] == p[i] && j < i);
      chosen[i] = better < K;
      if (chosen[i]) chosen_mass += p[i], f[i] += 1.0 / N;
    }
    double shared_sum = 0, s[H];
    for (int i = 0; i < S; i++) {
      s[i] = 0;
      if (w_shared)
        for (int c = 0; c < D; c++) s[i] += (double)w_shared[i * D + c] * x[t * D + c];
      shared_sum += s[i] = exp(s[i]);
    }
    for (int i = 0; i < S; i++) gates[t][i] = 2 * a[0] * S * s[i] / shared_sum;
    for (int i = 0; i < R; i++)
      gates[t][S + i] = chosen[i] ? (S ? 2 * a[1] : 1.0) * K * p[i] / chosen_mass : 0.0;
  }
  double balance = 0;
  for (int i = 0; i < R; i++) balance += f[i] * P[i];
  return R * balance;
}

static void expect_router_weighted_sum_of_heads(int shared, int top_k) {
  lt_model_config cfg = moh_config(shared, top_k);
  lt_test_layer moh, mha;
  build(&moh, true, &cfg);
  build(&mha, false, &cfg);
  inputs in;
  make_inputs(&in, 9);
  lt_aux_loss aux = {0};
  in.batch.aux = &aux;
  float out[N * D], head_out[N * D];
  forward(&moh, &in, out);
  double gates[N][H], expected[N * D] = {0};
  double balance = reference_gates(&moh, &cfg, in.x, gates);
  assert_true(fabs(aux.sum - cfg.moh.balance_coef * balance) < 1e-6);
  // Each head's share of multi-head attention's output: Wo with the other heads' columns zeroed.
  float *wo = lt_test_layer_param(&mha, "attn.wo");
  float wo_full[D * H * HD];
  memcpy(wo_full, wo, sizeof wo_full);
  in.batch.aux = NULL;
  for (int h = 0; h < H; h++) {
    for (int r = 0; r < D; r++)
      for (int c = 0; c < H * HD; c++)
        wo[r * H * HD + c] = c / HD == h ? wo_full[r * H * HD + c] : 0;
    forward(&mha, &in, head_out);
    for (int t = 0; t < N; t++)
      for (int c = 0; c < D; c++) expected[t * D + c] += gates[t][h] * head_out[t * D + c];
  }
  double worst = 0;
  for (int i = 0; i < N * D; i++)
    worst = fmax(worst, fabs(out[i] - expected[i]) / fmax(fabs(expected[i]), 1.0));
  assert_true(worst < 1e-5);
  lt_test_layer_destroy(&moh), lt_test_layer_destroy(&mha);
}

static void test_moh_output_is_the_router_weighted_sum_of_the_heads(void **state) {
  (void)state;
  expect_router_weighted_sum_of_heads(0, 2);
  expect_router_weighted_sum_of_heads(1, 1);
  expect_router_weighted_sum_of_heads(2, 1);
}

static void test_moh_routes_each_token_to_top_k_heads(void **state) {
  (void)state;
  lt_model_config cfg = moh_config(1, 2);
  lt_test_layer moh;
  build(&moh, true, &cfg);
  inputs in;
  make_inputs(&in, 11);
  float out[N * D];
  forward(&moh, &in, out);
  double gates[N][H];
  reference_gates(&moh, &cfg, in.x, gates);
  // One routed head of the three is off for every token, and the choice varies over tokens.
  int off_count[H] = {0};
  for (int t = 0; t < N; t++) {
    int off = 0;
    for (int h = 1; h < H; h++)
      if (gates[t][h] == 0) off++, off_count[h]++;
    assert_int_equal(off, 1);
  }
  int heads_ever_off = 0;
  for (int h = 1; h < H; h++) heads_ever_off += off_count[h] > 0;
  assert_true(heads_ever_off >= 2);
  lt_test_layer_destroy(&moh);
}

// --- the attention kernel's head gates: a head a token did not choose is not computed ---

typedef struct attention_run {
  float o[N * H * HD], lse[N * H], delta[N * H], dq[N * H * HD], dk[N * HKV * HD], dv[N * HKV * HD];
} attention_run;

static lt_tensor q_view(const float *x) {
  return lt_view4((float *)x, LT_F32, LT_CPU, B, T, H, HD);
}
static lt_tensor kv_view(const float *x) {
  return lt_view4((float *)x, LT_F32, LT_CPU, B, T, HKV, HD);
}
static lt_tensor lse_view(const float *x) {
  return lt_view3((float *)x, LT_F32, LT_CPU, B, H, T);
}

static void run_attention(const float *q, const float *k, const float *v, const float *dout,
                          float *gates, attention_run *r) {
  int32_t pos[N];
  for (int i = 0; i < N; i++) pos[i] = i % T;
  lt_attn_spec spec = {.scale = 0.4f,
                       .causal = true,
                       .q_pos = lt_view2(pos, LT_I32, LT_CPU, B, T),
                       .k_pos = lt_view2(pos, LT_I32, LT_CPU, B, T)};
  if (gates) spec.head_gates = lt_view3(gates, LT_F32, LT_CPU, B, T, H);
  memset(r, 0, sizeof *r);
  assert_ok(
      lt_attn_fwd(&ctx, q_view(r->o), lse_view(r->lse), q_view(q), kv_view(k), kv_view(v), &spec));
  assert_ok(lt_attn_bwd_delta(&ctx, lse_view(r->delta), q_view(dout), q_view(r->o)));
  assert_ok(lt_attn_bwd(&ctx, q_view(r->dq), kv_view(r->dk), kv_view(r->dv), q_view(dout),
                        q_view(q), kv_view(k), kv_view(v), lse_view(r->lse), lse_view(r->delta),
                        &spec));
}

static void test_heads_a_token_left_out_are_not_computed(void **state) {
  (void)state;
  static float q[N * H * HD], k[N * HKV * HD], v[N * HKV * HD], dout[N * H * HD],
      dout_on[N * H * HD], gates[N * H];
  lt_test_fill_normal(q, N * H * HD, 1, 1.0f);
  lt_test_fill_normal(k, N * HKV * HD, 2, 1.0f);
  lt_test_fill_normal(v, N * HKV * HD, 3, 1.0f);
  lt_test_fill_normal(dout, N * H * HD, 4, 1.0f);
  for (int i = 0; i < N * H; i++) gates[i] = (i * 7) % 3 == 0 ? 0.0f : 0.5f + (float)(i % 5);
  memcpy(dout_on, dout, sizeof dout);
  for (int i = 0; i < N * H; i++)
    if (gates[i] == 0) memset(dout_on + i * HD, 0, HD * sizeof(float));
  static attention_run gated, plain;
  run_attention(q, k, v, dout, gates, &gated);
  run_attention(q, k, v, dout_on, NULL, &plain);
  for (int t = 0; t < N; t++)
    for (int h = 0; h < H; h++) {
      const int row = t * H + h, l = (t / T * H + h) * T + t % T;
      if (gates[row] == 0) {
        assert_true(gated.lse[l] == -INFINITY);
        assert_true(lt_test_max_abs(gated.o + row * HD, HD) == 0.0);
      } else {
        assert_true(gated.lse[l] == plain.lse[l]);
        assert_memory_equal(gated.o + row * HD, plain.o + row * HD, HD * sizeof(float));
      }
    }
  // The backward: what a left-out head would have sent back is what a zero dout sends.
  assert_true(lt_test_max_rel_diff(gated.dq, plain.dq, N * H * HD, 1.0) < 1e-6);
  assert_true(lt_test_max_rel_diff(gated.dk, plain.dk, N * HKV * HD, 1.0) < 1e-6);
  assert_true(lt_test_max_rel_diff(gated.dv, plain.dv, N * HKV * HD, 1.0) < 1e-6);
}

// --- MoH's weighting fused into the attention's epilogue and into the delta's pass ---

static lt_tensor gates_view(const float *x) {
  return lt_view2((float *)x, LT_F32, LT_CPU, N, H);
}

// Head weights with every third (token, head) pair left out (0), the rest in [0.5, 4.5].
static void fill_gates(float *gates) {
  for (int i = 0; i < N * H; i++) gates[i] = (i * 7) % 3 == 0 ? 0.0f : 0.5f + (float)(i % 5);
}

static void fill_nan(float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) x[i] = NAN;
}

// The first NO_KEY queries of each sequence see no key: every key sits NO_KEY positions later.
enum { NO_KEY = 3 };

static void test_attention_gated_output_is_the_gates_times_the_output(void **state) {
  (void)state;
  static float q[N * H * HD], k[N * HKV * HD], v[N * HKV * HD], gates[N * H];
  static float o[N * H * HD], lse[N * H], gated[N * H * HD];
  lt_test_fill_normal(q, N * H * HD, 1, 1.0f);
  lt_test_fill_normal(k, N * HKV * HD, 2, 1.0f);
  lt_test_fill_normal(v, N * HKV * HD, 3, 1.0f);
  fill_gates(gates);
  int32_t q_pos[N], k_pos[N];
  for (int i = 0; i < N; i++) q_pos[i] = i % T, k_pos[i] = i % T + NO_KEY;
  const lt_attn_spec spec = {.scale = 0.4f,
                             .causal = true,
                             .q_pos = lt_view2(q_pos, LT_I32, LT_CPU, B, T),
                             .k_pos = lt_view2(k_pos, LT_I32, LT_CPU, B, T),
                             .head_gates = lt_view3(gates, LT_F32, LT_CPU, B, T, H),
                             .gated_out = q_view(gated)};
  fill_nan(gated, N * H * HD); // every element must be written
  assert_ok(lt_attn_fwd(&ctx, q_view(o), lse_view(lse), q_view(q), kv_view(k), kv_view(v), &spec));
  int gated_off = 0, no_key = 0;
  for (int row = 0; row < N * H; row++) {
    const int t = row / H % T, h = row % H, b = row / H / T;
    if (t < NO_KEY) {
      assert_true(lse[(b * H + h) * T + t] == -INFINITY);
      no_key += gates[row] != 0.0f;
    } else {
      gated_off += gates[row] == 0.0f;
    }
    for (int x = 0; x < HD; x++) assert_true(gated[row * HD + x] == gates[row] * o[row * HD + x]);
    if (gates[row] == 0.0f || t < NO_KEY) assert_true(lt_test_max_abs(gated + row * HD, HD) == 0.0);
  }
  assert_true(gated_off > 0 && no_key > 0); // both kinds of empty row occur
}

static void test_gated_output_without_head_gates_is_an_error_naming_the_op(void **state) {
  (void)state;
  static float x[N * H * HD], lse[N * H];
  int32_t pos[N] = {0};
  const lt_attn_spec spec = {.scale = 0.4f,
                             .q_pos = lt_view2(pos, LT_I32, LT_CPU, B, T),
                             .k_pos = lt_view2(pos, LT_I32, LT_CPU, B, T),
                             .gated_out = q_view(x)};
  EXPECT_ERROR(lt_attn_fwd(&ctx, q_view(x), lse_view(lse), q_view(x), q_view(x), q_view(x), &spec),
               LT_ERR_INTERNAL, "attn_fwd", "gated_out needs head gates");
}

static void test_fused_gate_backward_matches_the_separate_ops(void **state) {
  (void)state;
  static float d_gated[N * H * HD], o[N * H * HD], gates[N * H];
  static float d_o[N * H * HD], dgates[N * H], delta[N * H];
  static float want_d_o[N * H * HD], want_dgates[N * H], want_delta[N * H];
  lt_test_fill_normal(d_gated, N * H * HD, 5, 1.0f);
  lt_test_fill_normal(o, N * H * HD, 6, 1.0f);
  fill_gates(gates);
  assert_ok(lt_head_gate_bwd(&ctx, q_view(want_d_o), gates_view(want_dgates), q_view(d_gated),
                             q_view(o), gates_view(gates)));
  assert_ok(lt_attn_bwd_delta(&ctx, lse_view(want_delta), q_view(want_d_o), q_view(o)));
  fill_nan(d_o, N * H * HD), fill_nan(dgates, N * H), fill_nan(delta, N * H);
  assert_ok(lt_head_gate_bwd_delta(&ctx, q_view(d_o), gates_view(dgates), lse_view(delta),
                                   q_view(d_gated), q_view(o), gates_view(gates)));
  assert_memory_equal(d_o, want_d_o, sizeof d_o);
  // delta: gates * sum(d_gated * o) here, sum(gates * d_gated * o) there.
  assert_true(lt_test_max_rel_diff(dgates, want_dgates, N * H, 1.0) < 1e-6);
  assert_true(lt_test_max_rel_diff(delta, want_delta, N * H, 1.0) < 1e-5);
  // A head left out sends nothing back into the attention.
  for (int row = 0; row < N * H; row++)
    if (gates[row] == 0.0f) {
      const int t = row / H % T, h = row % H, b = row / H / T;
      assert_true(delta[(b * H + h) * T + t] == 0.0f);
      assert_true(lt_test_max_abs(d_o + row * HD, HD) == 0.0);
    }
}

// --- config ---

static int load_yaml(const char *yaml) {
  lt_config cfg;
  return lt_config_load_string(&cfg, yaml, "moh.yaml", 0, NULL);
}

static void test_moh_top_k_above_the_routed_heads_is_a_config_error(void **state) {
  (void)state;
  EXPECT_ERROR(load_yaml("model:\n  attention: moh\n  d_model: 64\n  n_heads: 8\n  moh:\n"
                         "    shared_heads: 3\n    top_k: 6\n"),
               LT_ERR_CONFIG, "moh.yaml", "model.moh.top_k (6) exceeds the 5 routed heads",
               "lower model.moh.top_k");
}

static void test_moh_needs_a_routed_head(void **state) {
  (void)state;
  EXPECT_ERROR(load_yaml("model:\n  attention: moh\n  d_model: 64\n  n_heads: 4\n  moh:\n"
                         "    shared_heads: 4\n    top_k: 1\n"),
               LT_ERR_CONFIG, "model.moh.shared_heads (4) must be below model.n_heads (4)");
}

static void test_moh_routes_at_most_256_heads(void **state) {
  (void)state;
  EXPECT_ERROR(load_yaml("model:\n  attention: moh\n  d_model: 600\n  n_heads: 300\n"),
               LT_ERR_CONFIG, "moh routes at most 256 heads, not 296",
               "raise model.moh.shared_heads");
}

static void test_moh_heads_must_divide_into_kv_groups(void **state) {
  (void)state;
  EXPECT_ERROR(load_yaml("model:\n  attention: moh\n  d_model: 72\n  n_heads: 6\n"
                         "  n_kv_heads: 4\n  moh:\n    shared_heads: 2\n"),
               LT_ERR_CONFIG, "model.n_heads (6) must be a multiple of model.n_kv_heads (4)");
}

static void test_moh_settings_are_checked_only_where_a_layer_uses_moh(void **state) {
  (void)state;
  const char *settings = "  d_model: 64\n  n_layers: 2\n  n_heads: 4\n  moh:\n"
                         "    shared_heads: 2\n    top_k: 3\n";
  char yaml[512];
  snprintf(yaml, sizeof yaml, "model:\n  attention: softmax\n%s", settings);
  assert_ok(load_yaml(yaml));
  snprintf(yaml, sizeof yaml, "model:\n  attention: softmax,moh\n%s", settings);
  EXPECT_ERROR(load_yaml(yaml), LT_ERR_CONFIG, "model.moh.top_k (3) exceeds the 2 routed heads");
}

int main(void) {
  lt_ctx_init(&ctx, LT_CPU, 2);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_moh_with_every_head_at_weight_one_equals_multi_head_attention),
      cmocka_unit_test(test_moh_output_is_the_router_weighted_sum_of_the_heads),
      cmocka_unit_test(test_moh_routes_each_token_to_top_k_heads),
      cmocka_unit_test(test_heads_a_token_left_out_are_not_computed),
      cmocka_unit_test(test_attention_gated_output_is_the_gates_times_the_output),
      cmocka_unit_test(test_gated_output_without_head_gates_is_an_error_naming_the_op),
      cmocka_unit_test(test_fused_gate_backward_matches_the_separate_ops),
      cmocka_unit_test(test_moh_top_k_above_the_routed_heads_is_a_config_error),
      cmocka_unit_test(test_moh_needs_a_routed_head),
      cmocka_unit_test(test_moh_routes_at_most_256_heads),
      cmocka_unit_test(test_moh_heads_must_divide_into_kv_groups),
      cmocka_unit_test(test_moh_settings_are_checked_only_where_a_layer_uses_moh),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
