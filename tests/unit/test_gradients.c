// Gradient checks: every layer's backward against central differences of its forward, and the
// same for the whole model. test_gradcheck_catches_* show that the check fails a wrong backward.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "layer_harness.h"
#include "layers/attention/moh.h"
#include "layers/attention/lightning.h"
#include "layers/attention/linear.h"
#include "layers/attention/softmax.h"
#include "layers/lm_head.h"
#include "layers/mlp.h"
#include "model/model.h"
#include "testing.h"

// With EPS 1e-3 a correct fp32 backward scores below 6e-4 here (the whole model) and a wrong one
// above 1e-1 (test_gradcheck_catches_*), so the tolerance sits well clear of both.
#define GRAD_TOL 3e-3
#define EPS      1e-3

static lt_ctx cpu(void) {
  lt_ctx ctx;
  lt_ctx_init(&ctx, LT_CPU, 2);
  return ctx;
}

static float *normal(int64_t n, uint64_t seed, float std) {
  float *x = malloc((size_t)n * sizeof *x);
  lt_test_fill_normal(x, n, seed, std);
  return x;
}

// --- RMSNorm, and two broken backwards the check must reject ---

typedef struct rms_state {
  lt_ctx ctx;
  int64_t n, c;
  float *x, *w, *out, *rstd, *dx, *dw;
  int broken; // 0: the real backward; 1: drops the normalisation term; 2: dw off by 10%
} rms_state;

static void rms_forward(void *p) {
  rms_state *s = p;
  lt_rmsnorm_fwd(&s->ctx, lt_view2(s->out, LT_F32, LT_CPU, s->n, s->c),
                 lt_view1(s->rstd, LT_F32, LT_CPU, s->n),
                 lt_view2(s->x, LT_F32, LT_CPU, s->n, s->c), lt_view1(s->w, LT_F32, LT_CPU, s->c),
                 1e-5f);
}

static void rms_backward(void *p, const float *dout) {
  rms_state *s = p;
  if (s->broken == 1) { // as if rmsnorm were a plain scaling by a constant rstd
    for (int64_t i = 0; i < s->n; i++)
      for (int64_t j = 0; j < s->c; j++) {
        s->dx[i * s->c + j] += dout[i * s->c + j] * s->w[j] * s->rstd[i];
        s->dw[j] += dout[i * s->c + j] * s->x[i * s->c + j] * s->rstd[i];
      }
    return;
  }
  lt_rmsnorm_bwd(&s->ctx, lt_view2(s->dx, LT_F32, LT_CPU, s->n, s->c),
                 lt_view1(s->dw, LT_F32, LT_CPU, s->c),
                 lt_view2((float *)dout, LT_F32, LT_CPU, s->n, s->c),
                 lt_view2(s->x, LT_F32, LT_CPU, s->n, s->c), lt_view1(s->w, LT_F32, LT_CPU, s->c),
                 lt_view1(s->rstd, LT_F32, LT_CPU, s->n));
  if (s->broken == 2)
    for (int64_t j = 0; j < s->c; j++) s->dw[j] *= 1.1f;
}

static double rmsnorm_error(int broken) {
  rms_state s = {.ctx = cpu(), .n = 7, .c = 24, .broken = broken};
  s.x = normal(s.n * s.c, 1, 1.0f);
  s.w = normal(s.c, 2, 1.0f);
  s.out = calloc((size_t)(s.n * s.c), 4);
  s.rstd = calloc((size_t)s.n, 4);
  s.dx = calloc((size_t)(s.n * s.c), 4);
  s.dw = calloc((size_t)s.c, 4);
  lt_gradcheck_input in[2] = {{"x", s.x, s.dx, s.n * s.c}, {"weight", s.w, s.dw, s.c}};
  lt_gradcheck c = {&s, in, 2, s.out, s.n * s.c, rms_forward, rms_backward};
  double err = lt_gradcheck_run(&c, 42, 3, EPS);
  free(s.x), free(s.w), free(s.out), free(s.rstd), free(s.dx), free(s.dw);
  return err;
}

static void test_rmsnorm_backward_matches_finite_differences(void **state) {
  (void)state;
  assert_true(rmsnorm_error(0) < GRAD_TOL);
}

static void test_gradcheck_catches_missing_term(void **state) {
  (void)state;
  assert_true(rmsnorm_error(1) > 30 * GRAD_TOL);
}

static void test_gradcheck_catches_ten_percent_error(void **state) {
  (void)state;
  assert_true(rmsnorm_error(2) > 3 * GRAD_TOL);
}

// --- RoPE ---

typedef struct rope_state {
  lt_ctx ctx;
  int64_t n;
  int hq, hkv, d;
  float *qkv, *out, *dqkv;
  int32_t *pos;
} rope_state;

static void rope_views(rope_state *s, float *base, lt_tensor *q, lt_tensor *k, lt_tensor *v) {
  *q = lt_view3(base, LT_F32, LT_CPU, s->n, s->hq, s->d);
  *k = lt_view3(base + s->n * s->hq * s->d, LT_F32, LT_CPU, s->n, s->hkv, s->d);
  *v = lt_view3(base + s->n * (s->hq + s->hkv) * s->d, LT_F32, LT_CPU, s->n, s->hkv, s->d);
}

static void rope_forward(void *p) {
  rope_state *s = p;
  lt_tensor q, k, v;
  rope_views(s, s->out, &q, &k, &v);
  lt_rope_qkv_fwd(&s->ctx, q, k, v,
                  lt_view3(s->qkv, LT_F32, LT_CPU, s->n, s->hq + 2 * s->hkv, s->d),
                  lt_view1(s->pos, LT_I32, LT_CPU, s->n), 10000.0f);
}

static void rope_backward(void *p, const float *dout) {
  rope_state *s = p;
  lt_tensor dq, dk, dv;
  rope_views(s, (float *)dout, &dq, &dk, &dv);
  float *tmp = calloc((size_t)(s->n * (s->hq + 2 * s->hkv) * s->d), 4);
  lt_rope_qkv_bwd(&s->ctx, lt_view3(tmp, LT_F32, LT_CPU, s->n, s->hq + 2 * s->hkv, s->d), dq, dk,
                  dv, lt_view1(s->pos, LT_I32, LT_CPU, s->n), 10000.0f);
  for (int64_t i = 0; i < s->n * (s->hq + 2 * s->hkv) * s->d; i++) s->dqkv[i] += tmp[i];
  free(tmp);
}

static void test_rope_backward_matches_finite_differences(void **state) {
  (void)state;
  rope_state s = {.ctx = cpu(), .n = 9, .hq = 4, .hkv = 2, .d = 8};
  int64_t total = s.n * (s.hq + 2 * s.hkv) * s.d;
  s.qkv = normal(total, 3, 1.0f);
  s.out = calloc((size_t)total, 4);
  s.dqkv = calloc((size_t)total, 4);
  s.pos = malloc((size_t)s.n * 4);
  for (int64_t i = 0; i < s.n; i++) s.pos[i] = (int32_t)(i * 37 + 5); // arbitrary positions
  lt_gradcheck_input in[1] = {{"qkv", s.qkv, s.dqkv, total}};
  lt_gradcheck c = {&s, in, 1, s.out, total, rope_forward, rope_backward};
  assert_true(lt_gradcheck_run(&c, 7, 3, EPS) < GRAD_TOL);
  free(s.qkv), free(s.out), free(s.dqkv), free(s.pos);
}

// --- sublayers with parameters: attention and the SwiGLU MLP ---

// A sublayer's output is checked with its auxiliary losses (routers' load balance) as one more
// element: out[n * d] = aux.sum, whose gradient dout[n * d] the backward gets as aux.grad_scale.
typedef struct sublayer_state {
  lt_ctx ctx;
  lt_layer *layer;
  lt_params params;
  lt_arena acts, scratch;
  lt_batch batch;
  lt_aux_loss aux;
  int64_t n, d;
  float *x, *dx, *out;
  int32_t *pos, *doc;
  void (*prepare)(struct sublayer_state *s); // adjusts weights before the check, or NULL
  int top_k;                                 // MoH: routed heads each token picks
} sublayer_state;

static void sublayer_forward(void *p) {
  sublayer_state *s = p;
  lt_tensor x = lt_view2(s->x, LT_F32, LT_CPU, s->n, s->d);
  lt_tensor out = lt_view2(s->out, LT_F32, LT_CPU, s->n, s->d);
  s->aux.sum = 0.0;
  assert_ok(s->layer->ops->forward(s->layer, &s->ctx, out, x, &s->batch));
  s->out[s->n * s->d] = (float)s->aux.sum;
}

static void sublayer_backward(void *p, const float *dout) {
  sublayer_state *s = p;
  s->aux.grad_scale = dout[s->n * s->d];
  float *tmp = calloc((size_t)(s->n * s->d), 4);
  lt_tensor x = lt_view2(s->x, LT_F32, LT_CPU, s->n, s->d);
  assert_ok(s->layer->ops->backward(s->layer, &s->ctx, lt_view2(tmp, LT_F32, LT_CPU, s->n, s->d),
                                    lt_view2((float *)dout, LT_F32, LT_CPU, s->n, s->d), x,
                                    &s->batch));
  for (int64_t i = 0; i < s->n * s->d; i++) s->dx[i] += tmp[i];
  free(tmp);
}

static double sublayer_error(sublayer_state *s, int64_t B, int64_t T, int64_t d, bool with_docs) {
  s->ctx = cpu();
  s->n = B * T, s->d = d;
  assert_ok(lt_params_allocate(&s->params, LT_CPU));
  for (int i = 0; i < s->params.count; i++) // weights of size ~1/sqrt(fan_in): O(1) activations
    lt_test_fill_normal(s->params.master + s->params.info[i].offset, s->params.info[i].numel,
                        100 + (uint64_t)i, 1.0f / sqrtf((float)s->params.info[i].shape[1]));
  lt_test_plan_layer(s->layer, &s->acts, &s->scratch, B, T);
  s->x = normal(s->n * d, 11, 1.0f);
  s->dx = calloc((size_t)(s->n * d), 4);
  s->out = calloc((size_t)(s->n * d + 1), 4);
  s->pos = malloc((size_t)s->n * 4);
  s->doc = malloc((size_t)s->n * 4);
  for (int64_t i = 0; i < s->n; i++)
    s->pos[i] = (int32_t)(i % T), s->doc[i] = (int32_t)((i % T) / 11);
  s->batch =
      (lt_batch){.B = B, .T = T, .pos = lt_view1(s->pos, LT_I32, LT_CPU, s->n), .aux = &s->aux};
  if (with_docs) s->batch.doc = lt_view1(s->doc, LT_I32, LT_CPU, s->n);
  if (s->prepare) s->prepare(s);
  int n_inputs = 1 + s->params.count;
  lt_gradcheck_input *in = calloc((size_t)n_inputs, sizeof *in);
  in[0] = (lt_gradcheck_input){"x", s->x, s->dx, s->n * d};
  for (int i = 0; i < s->params.count; i++) {
    lt_param_info *p = &s->params.info[i];
    in[1 + i] = (lt_gradcheck_input){p->name, s->params.master + p->offset,
                                     s->params.grad + p->offset, p->numel};
  }
  lt_gradcheck c = {s, in, n_inputs, s->out, s->n * d + 1, sublayer_forward, sublayer_backward};
  double err = lt_gradcheck_run(&c, 5, 3, EPS);
  free(in), free(s->x), free(s->dx), free(s->out), free(s->pos), free(s->doc);
  s->layer->ops->destroy(s->layer);
  lt_arena_destroy(&s->acts);
  lt_arena_destroy(&s->scratch);
  lt_params_free(&s->params);
  return err;
}

static lt_model_config small_attention_config(void) {
  return (lt_model_config){
      .d_model = 16, .n_heads = 4, .n_kv_heads = 2, .head_dim = 6, .rope_theta = 10000.0};
}

static void test_softmax_attention_backward_matches_finite_differences(void **state) {
  (void)state;
  sublayer_state s = {0};
  lt_model_config cfg = small_attention_config();
  lt_params_begin(&s.params, NULL);
  assert_ok(lt_softmax_attention_create(&s.layer, &s.params, "attn", &cfg, (lt_init_stds){1, 1}));
  // T = 45 spans two 32-row tiles, one partial.
  assert_true(sublayer_error(&s, 2, 45, cfg.d_model, false) < GRAD_TOL);
}

static void test_softmax_attention_with_document_mask_backward_matches(void **state) {
  (void)state;
  sublayer_state s = {0};
  lt_model_config cfg = small_attention_config();
  lt_params_begin(&s.params, NULL);
  assert_ok(lt_softmax_attention_create(&s.layer, &s.params, "attn", &cfg, (lt_init_stds){1, 1}));
  assert_true(sublayer_error(&s, 2, 45, cfg.d_model, true) < GRAD_TOL);
}

static void test_sparse_attention_backward_matches_finite_differences(void **state) {
  (void)state;
  sublayer_state s = {0};
  lt_model_config cfg = small_attention_config();
  // Every part of the pattern at once, under a document mask; T = 45 over two tiles.
  cfg.sparse = (lt_sparse_config){
      .window = 7, .sinks = 2, .block_size = 8, .local_blocks = 1, .stride = 3, .global_blocks = 1};
  lt_params_begin(&s.params, NULL);
  assert_ok(lt_sparse_attention_create(&s.layer, &s.params, "attn", &cfg, (lt_init_stds){1, 1}));
  assert_string_equal(s.layer->ops->kind, "sparse");
  assert_true(sublayer_error(&s, 2, 45, cfg.d_model, true) < GRAD_TOL);
}

// The MoH router sends every token to its top-K routed heads, a choice that is piecewise
// constant: a finite difference that moved a token across a tie would see a jump. Router weights
// three times the others' size spread the routed logits; each token's K-th and (K+1)-th must then
// lie further apart than 10 times what a perturbation moves them (about EPS * 4 here).
static void spread_moh_router(sublayer_state *s) {
  for (int i = 0; i < s->params.count; i++)
    if (strstr(s->params.info[i].name, "router"))
      for (int64_t j = 0; j < s->params.info[i].numel; j++)
        s->params.master[s->params.info[i].offset + j] *= 3.0f;
  const lt_param_info *w = lt_params_find(&s->params, "attn.router_routed");
  const int64_t routed = w->shape[0];
  double margin = INFINITY;
  for (int64_t t = 0; t < s->n && s->top_k < routed; t++) {
    double z[8];
    for (int64_t i = 0; i < routed; i++) {
      z[i] = 0;
      for (int64_t c = 0; c < s->d; c++)
        z[i] += (double)s->params.master[w->offset + i * s->d + c] * s->x[t * s->d + c];
      for (int64_t j = i; j > 0 && z[j] > z[j - 1]; j--) { // insertion sort, descending
        double swap = z[j];
        z[j] = z[j - 1], z[j - 1] = swap;
      }
    }
    margin = fmin(margin, z[s->top_k - 1] - z[s->top_k]);
  }
  print_message("moh router: smallest K-th to (K+1)-th logit gap %.3f\n", margin);
  assert_true(margin > 10 * 4 * EPS);
}

static double moh_error(int shared, int top_k, double balance_coef) {
  sublayer_state s = {.prepare = spread_moh_router, .top_k = top_k};
  lt_model_config cfg = small_attention_config();
  cfg.moh = (lt_moh_config){.shared_heads = shared, .top_k = top_k, .balance_coef = balance_coef};
  lt_params_begin(&s.params, NULL);
  assert_ok(lt_moh_attention_create(&s.layer, &s.params, "attn", &cfg, (lt_init_stds){1, 1}));
  assert_string_equal(s.layer->ops->kind, "moh");
  return sublayer_error(&s, 2, 9, cfg.d_model, false);
}

static void test_moh_attention_backward_matches_finite_differences(void **state) {
  (void)state;
  assert_true(moh_error(0, 2, 0.5) < GRAD_TOL); // four routed heads, two chosen
  assert_true(moh_error(1, 2, 0.5) < GRAD_TOL); // one shared head, two of three routed
  assert_true(moh_error(2, 2, 0.5) < GRAD_TOL); // the shared heads' router, every routed head on
  // The load-balance loss weighted to dominate the routed heads' router gradient: at 0.5 a
  // backward without it would still pass.
  assert_true(moh_error(1, 2, 100.0) < GRAD_TOL);
}

// Linear and lightning attention: every option of the feature map, normalisation, decay and gate
// appears in one of these, with grouped heads, several blocks (block 4 over T = 19) and documents.
static double linear_error(lt_linear_config lin, int n_kv_heads, bool with_docs) {
  sublayer_state s = {0};
  lt_model_config cfg = small_attention_config();
  cfg.n_kv_heads = n_kv_heads, cfg.norm_eps = 1e-5, cfg.linear = lin;
  lt_params_begin(&s.params, NULL);
  assert_ok(lt_linear_attention_create(&s.layer, &s.params, "attn", &cfg, (lt_init_stds){1, 1}));
  return sublayer_error(&s, 2, 19, cfg.d_model, with_docs);
}

static void test_linear_attention_backward_matches_finite_differences(void **state) {
  (void)state;
  lt_linear_config lin = {.feature_map = LT_FEATURE_ELU1,
                          .normalization = LT_LINEAR_NORM_DENOMINATOR,
                          .decay = LT_LINEAR_DECAY_NONE,
                          .gate = LT_GATE_NONE,
                          .chunk_size = 4};
  assert_true(linear_error(lin, 4, false) < GRAD_TOL);
}

static void
test_linear_attention_with_decay_sigmoid_gate_and_documents_backward_matches(void **state) {
  (void)state;
  lt_linear_config lin = {.feature_map = LT_FEATURE_ELU1,
                          .normalization = LT_LINEAR_NORM_DENOMINATOR,
                          .decay = LT_LINEAR_DECAY_RETNET,
                          .gate = LT_GATE_SIGMOID,
                          .chunk_size = 4};
  assert_true(linear_error(lin, 2, true) < GRAD_TOL);
}

static void test_linear_attention_unnormalised_with_silu_gate_backward_matches(void **state) {
  (void)state;
  lt_linear_config lin = {.feature_map = LT_FEATURE_IDENTITY,
                          .normalization = LT_LINEAR_NORM_NONE,
                          .decay = LT_LINEAR_DECAY_ALIBI,
                          .gate = LT_GATE_SILU,
                          .chunk_size = 4};
  assert_true(linear_error(lin, 2, false) < GRAD_TOL);
}

static void test_linear_attention_with_rmsnorm_and_documents_backward_matches(void **state) {
  (void)state;
  lt_linear_config lin = {.feature_map = LT_FEATURE_ELU1,
                          .normalization = LT_LINEAR_NORM_RMS,
                          .decay = LT_LINEAR_DECAY_RETNET,
                          .gate = LT_GATE_LINEAR,
                          .chunk_size = 4};
  assert_true(linear_error(lin, 4, true) < GRAD_TOL);
}

static double lightning_error(bool with_docs) {
  sublayer_state s = {0};
  lt_model_config cfg = small_attention_config();
  cfg.n_layers = 4, cfg.norm_eps = 1e-5;
  cfg.lightning = (lt_lightning_config){.block_size = 4,
                                        .feature_map = LT_FEATURE_SILU,
                                        .gate = LT_GATE_LINEAR,
                                        .depth_scaled_decay = true};
  lt_params_begin(&s.params, NULL);
  assert_ok(
      lt_lightning_attention_create(&s.layer, &s.params, "attn", &cfg, 1, (lt_init_stds){1, 1}));
  return sublayer_error(&s, 2, 19, cfg.d_model, with_docs);
}

static void test_lightning_attention_backward_matches_finite_differences(void **state) {
  (void)state;
  assert_true(lightning_error(false) < GRAD_TOL);
}

static void test_lightning_attention_with_document_mask_backward_matches(void **state) {
  (void)state;
  assert_true(lightning_error(true) < GRAD_TOL);
}

static void test_swiglu_mlp_backward_matches_finite_differences(void **state) {
  (void)state;
  sublayer_state s = {0};
  lt_params_begin(&s.params, NULL);
  assert_ok(lt_swiglu_mlp_create(&s.layer, &s.params, "ffn", 12, 20, (lt_init_stds){1, 1}));
  assert_true(sublayer_error(&s, 2, 5, 12, false) < GRAD_TOL);
}

// --- embedding, and the LM head with its loss ---

typedef struct head_state {
  lt_ctx ctx;
  lt_lm_head head;
  lt_params params;
  lt_arena acts, scratch;
  int64_t n, d, vocab;
  float *x, *dx;
  int32_t *targets;
  float loss;
} head_state;

static void head_forward(void *p) {
  head_state *s = p;
  assert_ok(lt_lm_head_loss(&s->head, &s->ctx, lt_view2(s->x, LT_F32, LT_CPU, s->n, s->d),
                            lt_view1(s->targets, LT_I32, LT_CPU, s->n), 1.0f,
                            lt_view2(NULL, LT_F32, LT_CPU, s->n, s->d)));
  double sum = 0;
  for (int64_t i = 0; i < s->n; i++) sum += lt_f32(s->head.losses)[i];
  s->loss = (float)sum;
}

static void head_backward(void *p, const float *dout) {
  head_state *s = p;
  float *tmp = calloc((size_t)(s->n * s->d), 4);
  assert_ok(lt_lm_head_loss(&s->head, &s->ctx, lt_view2(s->x, LT_F32, LT_CPU, s->n, s->d),
                            lt_view1(s->targets, LT_I32, LT_CPU, s->n), dout[0],
                            lt_view2(tmp, LT_F32, LT_CPU, s->n, s->d)));
  for (int64_t i = 0; i < s->n * s->d; i++) s->dx[i] += tmp[i];
  free(tmp);
}

// chunk_rows: the head's rows per logits chunk, or 0 for what its plan chose (one chunk here).
static void check_lm_head_gradients(int64_t chunk_rows) {
  head_state s = {.ctx = cpu(), .n = 10, .d = 8, .vocab = 13};
  lt_params_begin(&s.params, NULL);
  assert_ok(lt_lm_head_create(&s.head, &s.params, NULL, s.vocab, s.d, 1.0f));
  assert_ok(lt_params_allocate(&s.params, LT_CPU));
  lt_test_fill_normal(s.params.master, (int64_t)s.params.numel, 3, 0.5f);
  lt_arena_measure(&s.acts, LT_CPU, "acts");
  lt_arena_measure(&s.scratch, LT_CPU, "scratch");
  lt_plan plan = {.B = 1, .T = s.n, .act_dtype = LT_F32, .acts = &s.acts, .scratch = &s.scratch};
  assert_ok(lt_lm_head_plan(&s.head, &plan));
  size_t a = s.acts.peak, b = s.scratch.peak;
  assert_ok(lt_arena_create(&s.acts, LT_CPU, a, "acts"));
  assert_ok(lt_arena_create(&s.scratch, LT_CPU, b, "scratch"));
  assert_ok(lt_lm_head_plan(&s.head, &plan));
  if (chunk_rows) s.head.chunk_rows = chunk_rows; // fewer rows than the scratch was planned for
  s.x = normal(s.n * s.d, 4, 1.0f);
  s.dx = calloc((size_t)(s.n * s.d), 4);
  s.targets = malloc((size_t)s.n * 4);
  for (int64_t i = 0; i < s.n; i++) s.targets[i] = (int32_t)((i * 5) % s.vocab);
  s.targets[3] = LT_IGNORE_INDEX;
  lt_gradcheck_input in[2] = {{"x", s.x, s.dx, s.n * s.d},
                              {"lm_head", s.params.master, s.params.grad, s.vocab * s.d}};
  lt_gradcheck c = {&s, in, 2, &s.loss, 1, head_forward, head_backward};
  assert_true(lt_gradcheck_run(&c, 9, 3, EPS) < GRAD_TOL);
  free(s.x), free(s.dx), free(s.targets);
  lt_arena_destroy(&s.acts), lt_arena_destroy(&s.scratch), lt_params_free(&s.params);
}

static void test_lm_head_loss_backward_matches_finite_differences(void **state) {
  (void)state;
  check_lm_head_gradients(0);
}

// The loop over chunks: four of them (3, 3, 3 and 1 rows), the weight gradient summed over all.
static void test_lm_head_in_chunks_matches_finite_differences(void **state) {
  (void)state;
  check_lm_head_gradients(3);
}

// --- the whole model: every parameter, tied and untied, with and without recomputation ---

typedef struct model_state {
  lt_ctx ctx;
  lt_model model;
  lt_batch batch;
  int32_t *tokens, *targets, *pos;
  float loss;
} model_state;

static void model_forward(void *p) {
  model_state *s = p;
  double sum;
  assert_ok(lt_model_forward(&s->model, &s->ctx, &s->batch, false, 1.0f, &sum));
  s->loss = (float)sum;
}

static void model_backward(void *p, const float *dout) {
  model_state *s = p;
  double sum;
  assert_ok(lt_model_forward(&s->model, &s->ctx, &s->batch, true, dout[0], &sum));
  assert_ok(lt_model_backward(&s->model, &s->ctx, &s->batch));
}

// `attention`: the layers' kinds (model.attention). MoH layers route every token to all their
// routed heads here: a finite difference must not move a token across a tie of its router.
static double model_error(bool tied, bool recompute, const char *attention) {
  model_state s = {.ctx = cpu()};
  lt_model_config cfg = {.lightning = {.block_size = 4,
                                       .feature_map = LT_FEATURE_SILU,
                                       .gate = LT_GATE_LINEAR,
                                       .depth_scaled_decay = true},
                         .d_model = 16,
                         .n_layers = 2,
                         .n_heads = 4,
                         .n_kv_heads = 2,
                         .ffn_dim = 24,
                         .vocab_size = 11,
                         .max_seq_len = 64,
                         .rope_theta = 10000,
                         .norm_eps = 1e-5,
                         .init_std = 0.3,
                         .tie_embeddings = tied,
                         .sparse = {.window = 3, .sinks = 1, .block_size = 4, .stride = 2},
                         .moh = {.shared_heads = 1, .top_k = 3, .balance_coef = 0.01}};
  snprintf(cfg.attention, sizeof cfg.attention, "%s", attention);
  assert_ok(lt_model_create(&s.model, &cfg, LT_CPU, NULL));
  assert_ok(lt_params_init(&s.model.params, 77));
  // Norm gains away from 1 so that their gradients are exercised in general position.
  for (int i = 0; i < s.model.params.count; i++) {
    lt_param_info *p = &s.model.params.info[i];
    if (p->spec.group == LT_GROUP_NORM)
      for (int64_t j = 0; j < p->numel; j++)
        s.model.params.master[p->offset + j] = 1.0f + 0.2f * sinf((float)(j + i));
  }
  const int64_t B = 2, T = 9, n = B * T;
  assert_ok(lt_model_plan(&s.model, B, T, recompute));
  s.tokens = malloc(n * 4), s.targets = malloc(n * 4), s.pos = malloc(n * 4);
  for (int64_t i = 0; i < n; i++) {
    s.tokens[i] = (int32_t)((i * 7 + 3) % cfg.vocab_size);
    s.targets[i] = (int32_t)((i * 3 + 1) % cfg.vocab_size);
    s.pos[i] = (int32_t)(i % T);
  }
  s.batch = (lt_batch){.B = B,
                       .T = T,
                       .tokens = lt_view1(s.tokens, LT_I32, LT_CPU, n),
                       .targets = lt_view1(s.targets, LT_I32, LT_CPU, n),
                       .pos = lt_view1(s.pos, LT_I32, LT_CPU, n)};
  lt_params *params = &s.model.params;
  lt_gradcheck_input *in = calloc((size_t)params->count, sizeof *in);
  for (int i = 0; i < params->count; i++) {
    lt_param_info *p = &params->info[i];
    in[i] = (lt_gradcheck_input){p->name, params->master + p->offset, params->grad + p->offset,
                                 p->numel};
  }
  lt_gradcheck c = {&s, in, params->count, &s.loss, 1, model_forward, model_backward};
  double err = lt_gradcheck_run(&c, 13, 2, EPS);
  free(in), free(s.tokens), free(s.targets), free(s.pos);
  lt_model_destroy(&s.model);
  return err;
}

static void test_model_backward_matches_finite_differences(void **state) {
  (void)state;
  assert_true(model_error(false, false, "softmax") < GRAD_TOL);
}

static void test_model_with_tied_embeddings_backward_matches(void **state) {
  (void)state;
  assert_true(model_error(true, false, "softmax") < GRAD_TOL);
}

static void test_model_with_recomputation_backward_matches(void **state) {
  (void)state;
  assert_true(model_error(false, true, "softmax") < GRAD_TOL);
}

static void test_hybrid_model_of_sparse_and_moh_layers_backward_matches(void **state) {
  (void)state;
  assert_true(model_error(false, false, "sparse,moh") < GRAD_TOL);
  assert_true(model_error(false, true, "moh,sparse") < GRAD_TOL);
}

// A hybrid stack: a lightning layer, then a softmax layer, with and without recomputation.
static void test_hybrid_lightning_softmax_model_backward_matches(void **state) {
  (void)state;
  assert_true(model_error(false, false, "lightning,softmax") < GRAD_TOL);
  assert_true(model_error(false, true, "lightning,softmax") < GRAD_TOL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rmsnorm_backward_matches_finite_differences),
      cmocka_unit_test(test_gradcheck_catches_missing_term),
      cmocka_unit_test(test_gradcheck_catches_ten_percent_error),
      cmocka_unit_test(test_rope_backward_matches_finite_differences),
      cmocka_unit_test(test_softmax_attention_backward_matches_finite_differences),
      cmocka_unit_test(test_softmax_attention_with_document_mask_backward_matches),
      cmocka_unit_test(test_sparse_attention_backward_matches_finite_differences),
      cmocka_unit_test(test_moh_attention_backward_matches_finite_differences),
      cmocka_unit_test(test_linear_attention_backward_matches_finite_differences),
      cmocka_unit_test(
          test_linear_attention_with_decay_sigmoid_gate_and_documents_backward_matches),
      cmocka_unit_test(test_linear_attention_unnormalised_with_silu_gate_backward_matches),
      cmocka_unit_test(test_linear_attention_with_rmsnorm_and_documents_backward_matches),
      cmocka_unit_test(test_lightning_attention_backward_matches_finite_differences),
      cmocka_unit_test(test_lightning_attention_with_document_mask_backward_matches),
      cmocka_unit_test(test_swiglu_mlp_backward_matches_finite_differences),
      cmocka_unit_test(test_lm_head_loss_backward_matches_finite_differences),
      cmocka_unit_test(test_lm_head_in_chunks_matches_finite_differences),
      cmocka_unit_test(test_model_backward_matches_finite_differences),
      cmocka_unit_test(test_model_with_tied_embeddings_backward_matches),
      cmocka_unit_test(test_model_with_recomputation_backward_matches),
      cmocka_unit_test(test_hybrid_model_of_sparse_and_moh_layers_backward_matches),
      cmocka_unit_test(test_hybrid_lightning_softmax_model_backward_matches),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
