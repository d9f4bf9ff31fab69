// The linear and lightning layer kinds: their decay schedules, their config keys and errors, and
// layer-level properties (documents are independent sequences, the block size changes nothing).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "layer_harness.h"
#include "layers/attention/lightning.h"
#include "layers/attention/linear.h"
#include "layers/attention/linear_mixer.h"
#include "model/model.h"
#include "testing.h"

static lt_ctx ctx;

// --- decay schedules ---

// ALiBi's slopes for 8 heads are 2^-1 .. 2^-8; for 6 heads, those for 4 (2^-2, 2^-4, 2^-6, 2^-8)
// then every other one of those for 8 (2^-1, 2^-3).
static void test_lightning_decay_rates_are_the_alibi_slopes(void **state) {
  (void)state;
  float ld[8];
  lt_lightning_log_decay(ld, 8, 0, 1, false);
  for (int h = 0; h < 8; h++) assert_float_equal(ld[h], -ldexp(1.0, -(h + 1)), 1e-7);
  const double six[6] = {0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125};
  lt_lightning_log_decay(ld, 6, 0, 1, false);
  for (int h = 0; h < 6; h++) assert_float_equal(ld[h], -six[h], 1e-7);
}

// TransNormerLLM scales layer l of L by 1 - l/(L-1) + 1e-5: the first layer decays fully, the last
// almost not at all; a single layer keeps 1 + 1e-5.
static void test_lightning_decay_weakens_with_depth(void **state) {
  (void)state;
  float ld[4];
  const double scale[4] = {1 + 1e-5, 2.0 / 3 + 1e-5, 1.0 / 3 + 1e-5, 1e-5};
  for (int l = 0; l < 4; l++) {
    lt_lightning_log_decay(ld, 4, l, 4, true);
    for (int h = 0; h < 4; h++)
      assert_float_equal(ld[h], -pow(2.0, -2.0 * (h + 1)) * scale[l], 1e-7);
  }
  lt_lightning_log_decay(ld, 4, 0, 1, true);
  assert_float_equal(ld[0], -0.25 * (1 + 1e-5), 1e-7);
}

static void test_retnet_decay_is_one_minus_two_to_the_minus_five_minus_h(void **state) {
  (void)state;
  for (int h = 0; h < 6; h++)
    assert_float_equal(exp(-lt_retnet_decay_rate(h)), 1.0 - ldexp(1.0, -5 - h), 1e-12);
}

// --- a layer on its own ---

typedef struct one_layer {
  lt_layer *layer;
  lt_params params;
  lt_arena acts, scratch;
} one_layer;

static lt_model_config layer_config(const char *kind) {
  lt_model_config cfg = {.d_model = 16,
                         .n_layers = 2,
                         .n_heads = 4,
                         .n_kv_heads = 2,
                         .head_dim = 6,
                         .norm_eps = 1e-5,
                         .linear = {.feature_map = LT_FEATURE_ELU1,
                                    .normalization = LT_LINEAR_NORM_DENOMINATOR,
                                    .decay = LT_LINEAR_DECAY_RETNET,
                                    .gate = LT_GATE_SIGMOID,
                                    .chunk_size = 64},
                         .lightning = {.block_size = 64,
                                       .feature_map = LT_FEATURE_SILU,
                                       .gate = LT_GATE_LINEAR,
                                       .depth_scaled_decay = true}};
  snprintf(cfg.attention, sizeof cfg.attention, "%s", kind);
  return cfg;
}

static void layer_create(one_layer *l, const lt_model_config *cfg) {
  *l = (one_layer){0};
  lt_params_begin(&l->params, NULL);
  const lt_init_stds stds = {0.3f, 0.3f};
  if (strcmp(cfg->attention, "linear") == 0)
    assert_ok(lt_linear_attention_create(&l->layer, &l->params, "attn", cfg, stds));
  else
    assert_ok(lt_lightning_attention_create(&l->layer, &l->params, "attn", cfg, 0, stds));
  assert_ok(lt_params_allocate(&l->params, LT_CPU));
  assert_ok(lt_params_init(&l->params, 5));
}

static void layer_destroy(one_layer *l) {
  l->layer->ops->destroy(l->layer);
  lt_arena_destroy(&l->acts), lt_arena_destroy(&l->scratch);
  lt_params_free(&l->params);
}

// out (T, D) = layer(x) for one sequence of T tokens, with document ids or none.
static void layer_run(one_layer *l, float *out, float *x, int64_t T, int32_t *doc, float *dout,
                      float *dx) {
  lt_arena_destroy(&l->acts), lt_arena_destroy(&l->scratch);
  lt_test_plan_layer(l->layer, &l->acts, &l->scratch, 1, T);
  int32_t *pos = malloc(sizeof(int32_t) * (size_t)T);
  for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)t;
  lt_batch batch = {.B = 1, .T = T, .pos = lt_view1(pos, LT_I32, LT_CPU, T)};
  if (doc) batch.doc = lt_view1(doc, LT_I32, LT_CPU, T);
  lt_tensor tx = lt_view2(x, LT_F32, LT_CPU, T, 16);
  assert_ok(
      l->layer->ops->forward(l->layer, &ctx, lt_view2(out, LT_F32, LT_CPU, T, 16), tx, &batch));
  if (dout)
    assert_ok(l->layer->ops->backward(l->layer, &ctx, lt_view2(dx, LT_F32, LT_CPU, T, 16),
                                      lt_view2(dout, LT_F32, LT_CPU, T, 16), tx, &batch));
  free(pos);
}

static double max_rel(const float *a, const float *b, int64_t n) {
  return lt_test_max_rel_diff(a, b, n, fmax(lt_test_max_abs(b, n), 1e-30));
}

// A packed sequence of three documents gives, row for row, what each document gives alone, and
// so do the input gradients.
static void expect_documents_independent(const char *kind) {
  lt_model_config cfg = layer_config(kind);
  one_layer l;
  layer_create(&l, &cfg);
  const int64_t lens[3] = {17, 30, 9}, T = 56;
  float *x = malloc(sizeof(float) * T * 16), *dout = malloc(sizeof(float) * T * 16);
  lt_test_fill_normal(x, T * 16, 1, 1.0f);
  lt_test_fill_normal(dout, T * 16, 2, 1.0f);
  float *out = malloc(sizeof(float) * T * 16), *dx = malloc(sizeof(float) * T * 16);
  int32_t doc[56];
  for (int64_t t = 0; t < T; t++) doc[t] = t < 17 ? 0 : t < 47 ? 1 : 2;
  const int64_t n_params = (int64_t)l.params.numel;
  float *grads = malloc(sizeof(float) * (size_t)n_params);
  assert_ok(lt_params_zero_grad(&l.params));
  layer_run(&l, out, x, T, doc, dout, dx);
  memcpy(grads, l.params.grad, sizeof(float) * (size_t)n_params);
  float *alone = malloc(sizeof(float) * T * 16), *dx_alone = malloc(sizeof(float) * T * 16);
  assert_ok(lt_params_zero_grad(&l.params)); // the documents' parameter gradients add up
  for (int64_t i = 0, start = 0; i < 3; start += lens[i], i++)
    layer_run(&l, alone + start * 16, x + start * 16, lens[i], NULL, dout + start * 16,
              dx_alone + start * 16);
  assert_true(max_rel(out, alone, T * 16) < 1e-5);
  assert_true(max_rel(dx, dx_alone, T * 16) < 1e-5);
  assert_true(max_rel(grads, l.params.grad, n_params) < 1e-5);
  free(grads);
  // Without the mask the later documents do see the earlier ones.
  layer_run(&l, out, x, T, NULL, NULL, NULL);
  assert_true(max_rel(out, alone, T * 16) > 1e-2);
  free(x), free(dout), free(out), free(dx), free(alone), free(dx_alone);
  layer_destroy(&l);
}

static void test_linear_layer_treats_documents_as_separate_sequences(void **state) {
  (void)state;
  expect_documents_independent("linear");
}

static void test_lightning_layer_treats_documents_as_separate_sequences(void **state) {
  (void)state;
  expect_documents_independent("lightning");
}

// The block size is a schedule, not a model: 1, 7 and 64 give the same outputs and gradients.
static void test_block_size_changes_neither_output_nor_gradients(void **state) {
  (void)state;
  const char *kinds[2] = {"linear", "lightning"};
  const int64_t T = 50;
  float *x = malloc(sizeof(float) * T * 16), *dout = malloc(sizeof(float) * T * 16);
  lt_test_fill_normal(x, T * 16, 3, 1.0f);
  lt_test_fill_normal(dout, T * 16, 4, 1.0f);
  for (int k = 0; k < 2; k++) {
    float *ref = malloc(sizeof(float) * T * 16), *dref = malloc(sizeof(float) * T * 16);
    const int blocks[3] = {64, 1, 7};
    for (int b = 0; b < 3; b++) {
      lt_model_config cfg = layer_config(kinds[k]);
      cfg.linear.chunk_size = cfg.lightning.block_size = blocks[b];
      one_layer l;
      layer_create(&l, &cfg);
      float *out = malloc(sizeof(float) * T * 16), *dx = malloc(sizeof(float) * T * 16);
      layer_run(&l, b ? out : ref, x, T, NULL, dout, b ? dx : dref);
      if (b) {
        assert_true(max_rel(out, ref, T * 16) < 1e-5);
        assert_true(max_rel(dx, dref, T * 16) < 1e-5);
      }
      free(out), free(dx);
      layer_destroy(&l);
    }
    free(ref), free(dref);
  }
  free(x), free(dout);
}

// A hybrid pattern builds the kinds it names, layer by layer.
static void test_hybrid_pattern_builds_lightning_and_softmax_layers(void **state) {
  (void)state;
  lt_model_config cfg = layer_config("lightning*3,softmax");
  cfg.n_layers = 8, cfg.ffn_dim = 24, cfg.vocab_size = 11, cfg.max_seq_len = 16;
  cfg.rope_theta = 10000;
  lt_model model;
  assert_ok(lt_model_create(&model, &cfg, LT_CPU, NULL));
  for (int l = 0; l < 8; l++)
    assert_string_equal(model.blocks[l].mixer->ops->kind, l % 4 == 3 ? "softmax" : "lightning");
  // Lightning layers have a gate projection; the parameter table says so by name.
  assert_non_null(lt_params_find(&model.params, "layers.0.attn.wu"));
  assert_null(lt_params_find(&model.params, "layers.3.attn.wu"));
  lt_model_destroy(&model);
}

// --- config ---

static int load(lt_config *cfg, const char *yaml, int n, char *const *overrides) {
  return lt_config_load_string(cfg, yaml, "run.yaml", n, overrides);
}

static void test_linear_keys_parse_to_the_kernels_choices(void **state) {
  (void)state;
  lt_config cfg;
  assert_ok(load(&cfg, "", 0, NULL));
  assert_int_equal(cfg.model.linear.feature_map, LT_FEATURE_ELU1);
  assert_int_equal(cfg.model.linear.normalization, LT_LINEAR_NORM_DENOMINATOR);
  assert_int_equal(cfg.model.linear.decay, LT_LINEAR_DECAY_NONE);
  assert_int_equal(cfg.model.linear.gate, LT_GATE_NONE);
  assert_int_equal(cfg.model.lightning.feature_map, LT_FEATURE_SILU);
  assert_int_equal(cfg.model.lightning.gate, LT_GATE_LINEAR);
  assert_true(cfg.model.lightning.depth_scaled_decay);
  const char *yaml = "model:\n"
                     "  attention: linear*2,lightning\n"
                     "  n_layers: 3\n"
                     "  linear:\n"
                     "    feature_map: identity\n"
                     "    normalization: rmsnorm\n"
                     "    decay: alibi\n"
                     "    gate: silu\n"
                     "    chunk_size: 32\n"
                     "  lightning:\n"
                     "    block_size: 128\n"
                     "    feature_map: relu\n"
                     "    gate: sigmoid\n"
                     "    depth_scaled_decay: false\n";
  assert_ok(load(&cfg, yaml, 0, NULL));
  assert_int_equal(cfg.model.linear.feature_map, LT_FEATURE_IDENTITY);
  assert_int_equal(cfg.model.linear.normalization, LT_LINEAR_NORM_RMS);
  assert_int_equal(cfg.model.linear.decay, LT_LINEAR_DECAY_ALIBI);
  assert_int_equal(cfg.model.linear.gate, LT_GATE_SILU);
  assert_int_equal(cfg.model.linear.chunk_size, 32);
  assert_int_equal(cfg.model.lightning.block_size, 128);
  assert_int_equal(cfg.model.lightning.feature_map, LT_FEATURE_RELU);
  assert_int_equal(cfg.model.lightning.gate, LT_GATE_SIGMOID);
  assert_false(cfg.model.lightning.depth_scaled_decay);
  char *set[2] = {"model.linear.feature_map=silu", "model.linear.gate=linear"};
  assert_ok(load(&cfg, yaml, 2, set));
  assert_int_equal(cfg.model.linear.feature_map, LT_FEATURE_SILU);
  assert_int_equal(cfg.model.linear.gate, LT_GATE_LINEAR);
}

static void test_unknown_feature_map_names_the_key_and_the_choices(void **state) {
  (void)state;
  lt_config cfg;
  int rc = load(&cfg, "model:\n  linear:\n    feature_map: cosine\n", 0, NULL);
  EXPECT_ERROR(rc, LT_ERR_CONFIG, "run.yaml:3", "model.linear.feature_map",
               "elu1|relu|silu|identity", "cosine");
  char *set[1] = {"model.lightning.feature_map=softmax"};
  EXPECT_ERROR(load(&cfg, "", 1, set), LT_ERR_CONFIG, "model.lightning.feature_map", "softmax");
}

static void test_block_sizes_below_one_are_rejected(void **state) {
  (void)state;
  lt_config cfg;
  char *set[1] = {"model.lightning.block_size=0"};
  EXPECT_ERROR(load(&cfg, "", 1, set), LT_ERR_CONFIG, "model.lightning.block_size",
               "between 1 and 65536", "got 0");
  int rc = load(&cfg, "model:\n  linear:\n    chunk_size: -4\n", 0, NULL);
  EXPECT_ERROR(rc, LT_ERR_CONFIG, "run.yaml:3", "model.linear.chunk_size", "got -4");
}

// A layer built from a config made in code (not through the schema) checks its block size too.
static void test_layer_with_a_zero_block_size_is_a_config_error(void **state) {
  (void)state;
  lt_model_config cfg = layer_config("lightning");
  cfg.lightning.block_size = 0;
  lt_params params;
  lt_params_begin(&params, NULL);
  lt_layer *layer = NULL;
  EXPECT_ERROR(lt_lightning_attention_create(&layer, &params, "layers.0.attn", &cfg, 0,
                                             (lt_init_stds){1, 1}),
               LT_ERR_CONFIG, "layers.0.attn", "block size (0) must be at least 1");
  lt_params_free(&params);
}

static void test_denominator_with_a_signed_feature_map_is_rejected(void **state) {
  (void)state;
  lt_config cfg;
  const char *yaml = "model:\n  attention: linear\n  linear:\n    feature_map: silu\n";
  EXPECT_ERROR(load(&cfg, yaml, 0, NULL), LT_ERR_CONFIG, "run.yaml", "model.linear.normalization",
               "model.linear.feature_map to elu1 or relu");
  char *set[1] = {"model.linear.normalization=rmsnorm"};
  assert_ok(load(&cfg, yaml, 1, set));
  // Only layers that use the settings make them matter.
  assert_ok(
      load(&cfg, "model:\n  attention: lightning\n  linear:\n    feature_map: silu\n", 0, NULL));
}

static void test_pattern_with_an_unknown_kind_lists_linear_and_lightning(void **state) {
  (void)state;
  lt_config cfg;
  char *set[1] = {"model.attention=lightening*3,softmax"};
  EXPECT_ERROR(load(&cfg, "", 1, set), LT_ERR_CONFIG, "model.attention", "lightening",
               "linear", "lightning");
}

int main(void) {
  lt_ctx_init(&ctx, LT_CPU, 2);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lightning_decay_rates_are_the_alibi_slopes),
      cmocka_unit_test(test_lightning_decay_weakens_with_depth),
      cmocka_unit_test(test_retnet_decay_is_one_minus_two_to_the_minus_five_minus_h),
      cmocka_unit_test(test_linear_layer_treats_documents_as_separate_sequences),
      cmocka_unit_test(test_lightning_layer_treats_documents_as_separate_sequences),
      cmocka_unit_test(test_block_size_changes_neither_output_nor_gradients),
      cmocka_unit_test(test_hybrid_pattern_builds_lightning_and_softmax_layers),
      cmocka_unit_test(test_linear_keys_parse_to_the_kernels_choices),
      cmocka_unit_test(test_unknown_feature_map_names_the_key_and_the_choices),
      cmocka_unit_test(test_block_sizes_below_one_are_rejected),
      cmocka_unit_test(test_layer_with_a_zero_block_size_is_a_config_error),
      cmocka_unit_test(test_denominator_with_a_signed_feature_map_is_rejected),
      cmocka_unit_test(test_pattern_with_an_unknown_kind_lists_linear_and_lightning),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
