// Mixture-of-head attention's ops on the GPU against the CPU reference (tests/unit/test_moh.c
// checks that one against finite differences): the router's weights, probabilities, choices and
// loads, its backward, the per-head gating, and the gating's backward fused with attention's delta
// (lt_head_gate_bwd_delta). Then whole training steps of a tiny model with a
// sparse layer (window and sinks, over packed documents) and a MoH layer, on the GPU and on the
// CPU in fp32: the losses, auxiliary losses and gradients agree to bf16 accuracy.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "core/rng.h"
#include "gpu_testing.h"
#include "model/model.h"
#include "optim/adamw.h"

// A routing of N tokens over S shared and R routed heads, K chosen.
typedef struct route_case {
  int64_t n;
  int shared, routed, k, n_logits;
  float *logits; // (N, n_logits)
} route_case;

static route_case make_route_case(int64_t n, int shared, int routed, int k, bool bf16) {
  route_case c = {.n = n, .shared = shared, .routed = routed, .k = k};
  c.n_logits = (shared >= 2 ? shared : 0) + routed + (shared >= 1 ? 2 : 0);
  c.logits = lt_gpu_random(n * c.n_logits, 1.5f, bf16);
  return c;
}

#define ROUTE_SHAPES(c)                                                                            \
  const int64_t gshape[2] = {(c)->n, (c)->shared + (c)->routed},                                   \
                pshape[2] = {(c)->n, (c)->n_logits};                                               \
  const int64_t tshape[2] = {(c)->n, (c)->k}, lshape[2] = {2, (c)->routed}

typedef struct route_result {
  float *gates, *probs, *load;
  int32_t *topk;
} route_result;

static void free_route(route_result *r) {
  free(r->gates), free(r->probs), free(r->load), free(r->topk);
}

static route_result route_cpu(const route_case *c) {
  ROUTE_SHAPES(c);
  route_result r = {malloc(4 * gshape[0] * gshape[1]), malloc(4 * pshape[0] * pshape[1]),
                    malloc(4 * 2 * c->routed), malloc(4 * tshape[0] * tshape[1])};
  assert_ok(lt_moh_route_fwd(&lt_test_cpu, lt_view(r.gates, LT_F32, LT_CPU, 2, gshape),
                             lt_view(r.probs, LT_F32, LT_CPU, 2, pshape),
                             lt_view(r.topk, LT_I32, LT_CPU, 2, tshape),
                             lt_view(r.load, LT_F32, LT_CPU, 2, lshape),
                             lt_view(c->logits, LT_F32, LT_CPU, 2, pshape), c->shared));
  return r;
}

static route_result route_gpu(const route_case *c, lt_dtype logits_dtype) {
  ROUTE_SHAPES(c);
  float *poison = lt_gpu_random(pshape[0] * pshape[1], 100.0f, false);
  lt_tensor gates = lt_gpu_upload(poison, LT_F32, 2, gshape);
  lt_tensor probs = lt_gpu_upload(poison, LT_F32, 2, pshape);
  lt_tensor load = lt_gpu_upload(poison, LT_F32, 2, lshape);
  int32_t *no_head = malloc(sizeof(int32_t) * tshape[0] * tshape[1]);
  for (int64_t i = 0; i < tshape[0] * tshape[1]; i++) no_head[i] = -7;
  lt_tensor topk = lt_gpu_upload_i32(no_head, 2, tshape);
  assert_ok(lt_moh_route_fwd(&lt_test_gpu, gates, probs, topk, load,
                             lt_gpu_upload(c->logits, logits_dtype, 2, pshape), c->shared));
  route_result r = {lt_gpu_fetch(gates), lt_gpu_fetch(probs), lt_gpu_fetch(load),
                    malloc(sizeof(int32_t) * tshape[0] * tshape[1])};
  assert_ok(lt_tensor_to_host(r.topk, topk));
  free(poison), free(no_head);
  lt_gpu_free_all();
  return r;
}

static void expect_routing_matches_cpu(int64_t n, int shared, int routed, int k,
                                       lt_dtype logits_dtype) {
  printf("%lld tokens, %d shared + %d routed heads, top %d, %s logits\n", (long long)n, shared,
         routed, k, lt_dtype_name(logits_dtype));
  route_case c = make_route_case(n, shared, routed, k, logits_dtype == LT_BF16);
  route_result want = route_cpu(&c), got = route_gpu(&c, logits_dtype);
  for (int64_t i = 0; i < n * k; i++)
    if (got.topk[i] != want.topk[i])
      fail_msg("topk[%lld] = %d, want %d", (long long)i, got.topk[i], want.topk[i]);
  lt_gpu_expect_close("gates", got.gates, want.gates, n * (shared + routed), 1e-5);
  lt_gpu_expect_close("probs", got.probs, want.probs, n * c.n_logits, 1e-5);
  lt_gpu_expect_close("load (f_i, P_i)", got.load, want.load, 2 * routed, 1e-5);
  free_route(&want), free_route(&got), free(c.logits);
}

static void test_moh_routing_matches_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_routing_matches_cpu(300, 0, 8, 2, LT_F32);   // routed heads alone
  expect_routing_matches_cpu(257, 1, 6, 3, LT_F32);   // one shared head: no shared logits
  expect_routing_matches_cpu(300, 2, 4, 2, LT_BF16);  // the layer's bf16 logits
  expect_routing_matches_cpu(100, 3, 13, 13, LT_F32); // every routed head chosen
}

static void expect_routing_backward_matches_cpu(int64_t n, int shared, int routed, int k,
                                                lt_dtype dlogits_dtype, double tol) {
  printf("backward: %lld tokens, %d shared + %d routed, top %d, %s dlogits\n", (long long)n, shared,
         routed, k, lt_dtype_name(dlogits_dtype));
  route_case c = make_route_case(n, shared, routed, k, false);
  route_result fwd = route_cpu(&c); // both backwards from the same routing
  ROUTE_SHAPES(&c);
  float *dgates = lt_gpu_random(gshape[0] * gshape[1], 1.0f, true);
  float *want = malloc(4 * pshape[0] * pshape[1]);
  const float balance_grad = 0.3f;
  assert_ok(lt_moh_route_bwd(&lt_test_cpu, lt_view(want, LT_F32, LT_CPU, 2, pshape),
                             lt_view(dgates, LT_F32, LT_CPU, 2, gshape),
                             lt_view(fwd.probs, LT_F32, LT_CPU, 2, pshape),
                             lt_view(fwd.topk, LT_I32, LT_CPU, 2, tshape),
                             lt_view(fwd.load, LT_F32, LT_CPU, 2, lshape), shared, balance_grad));
  lt_tensor dlogits = lt_gpu_upload(c.logits, dlogits_dtype, 2, pshape); // poisoned
  assert_ok(lt_moh_route_bwd(&lt_test_gpu, dlogits, lt_gpu_upload(dgates, LT_F32, 2, gshape),
                             lt_gpu_upload(fwd.probs, LT_F32, 2, pshape),
                             lt_gpu_upload_i32(fwd.topk, 2, tshape),
                             lt_gpu_upload(fwd.load, LT_F32, 2, lshape), shared, balance_grad));
  float *got = lt_gpu_fetch(dlogits);
  lt_gpu_expect_close("dlogits", got, want, pshape[0] * pshape[1], tol);
  free(got), free(want), free(dgates), free(c.logits);
  free_route(&fwd);
  lt_gpu_free_all();
}

static void test_moh_routing_backward_matches_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_routing_backward_matches_cpu(300, 0, 8, 2, LT_F32, 1e-5);
  expect_routing_backward_matches_cpu(300, 1, 6, 3, LT_F32, 1e-5);
  expect_routing_backward_matches_cpu(257, 2, 4, 2, LT_F32, 1e-5);
  expect_routing_backward_matches_cpu(300, 3, 13, 5, LT_BF16, 1e-2);
}

static void expect_head_gating_matches_cpu(int64_t n, int h, int d, lt_dtype dtype, double tol) {
  printf("gating %lld tokens x %d heads of %d, %s\n", (long long)n, h, d, lt_dtype_name(dtype));
  const int64_t nx = n * h * d, xshape[3] = {n, h, d}, gshape[2] = {n, h};
  float *x = lt_gpu_random(nx, 1.0f, true), *dout = lt_gpu_random(nx, 1.0f, true);
  float *gates = lt_gpu_random(n * h, 1.0f, false);
  for (int64_t i = 0; i < n * h; i += 3) gates[i] = 0.0f; // heads left out
  float *out = malloc(4 * nx), *dx = malloc(4 * nx), *dgates = malloc(4 * n * h);
#define CPU(p, ndim, shape) lt_view(p, LT_F32, LT_CPU, ndim, shape)
  assert_ok(lt_head_gate_fwd(&lt_test_cpu, CPU(out, 3, xshape), CPU(x, 3, xshape),
                             CPU(gates, 2, gshape)));
  assert_ok(lt_head_gate_bwd(&lt_test_cpu, CPU(dx, 3, xshape), CPU(dgates, 2, gshape),
                             CPU(dout, 3, xshape), CPU(x, 3, xshape), CPU(gates, 2, gshape)));
#undef CPU
  lt_tensor gx = lt_gpu_upload(x, dtype, 3, xshape), gg = lt_gpu_upload(gates, LT_F32, 2, gshape);
  lt_tensor gout = lt_gpu_upload(dout, dtype, 3, xshape), gdx = lt_gpu_upload(x, dtype, 3, xshape);
  lt_tensor gdg = lt_gpu_upload(gates, LT_F32, 2, gshape);
  assert_ok(lt_head_gate_fwd(&lt_test_gpu, gout, gx, gg));
  float *got_out = lt_gpu_fetch(gout);
  lt_gpu_expect_close("out = gates * x", got_out, out, nx, tol);
  assert_ok(
      lt_head_gate_bwd(&lt_test_gpu, gdx, gdg, lt_gpu_upload(dout, dtype, 3, xshape), gx, gg));
  float *got_dx = lt_gpu_fetch(gdx), *got_dg = lt_gpu_fetch(gdg);
  lt_gpu_expect_close("dx", got_dx, dx, nx, tol);
  lt_gpu_expect_close("dgates (f32)", got_dg, dgates, n * h, 1e-5);
  free(x), free(dout), free(gates), free(out), free(dx), free(dgates);
  free(got_out), free(got_dx), free(got_dg);
  lt_gpu_free_all();
}

static void test_head_gating_matches_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_head_gating_matches_cpu(200, 6, 64, LT_BF16, 1e-2);
  expect_head_gating_matches_cpu(77, 4, 128, LT_F32, 1e-6);
}

// The fused backward of the gating and attention's delta over (b, t, h, d) outputs, against the
// CPU's, from poisoned outputs; rows gated off must send back exact zeros.
static void expect_gate_backward_with_delta_matches_cpu(int64_t b, int64_t t, int h, int d,
                                                        lt_dtype dtype, double tol) {
  printf("gating backward with delta: (%lld, %lld, %d, %d), %s\n", (long long)b, (long long)t, h, d,
         lt_dtype_name(dtype));
  const int64_t n = b * t, nx = n * h * d;
  const int64_t xshape[4] = {b, t, h, d}, gshape[2] = {n, h}, dshape[3] = {b, h, t};
  float *d_gated = lt_gpu_random(nx, 1.0f, true), *o = lt_gpu_random(nx, 1.0f, true);
  float *gates = lt_gpu_random(n * h, 1.0f, false);
  for (int64_t i = 0; i < n * h; i += 3) gates[i] = 0.0f; // heads left out
  float *d_o = malloc(4 * nx), *dgates = malloc(4 * n * h), *delta = malloc(4 * n * h);
  assert_ok(lt_head_gate_bwd_delta(
      &lt_test_cpu, lt_view(d_o, LT_F32, LT_CPU, 4, xshape),
      lt_view(dgates, LT_F32, LT_CPU, 2, gshape), lt_view(delta, LT_F32, LT_CPU, 3, dshape),
      lt_view(d_gated, LT_F32, LT_CPU, 4, xshape), lt_view(o, LT_F32, LT_CPU, 4, xshape),
      lt_view(gates, LT_F32, LT_CPU, 2, gshape)));
  float *poison = lt_gpu_random(nx, 100.0f, false);
  lt_tensor g_d_o = lt_gpu_upload(poison, dtype, 4, xshape);
  lt_tensor g_dgates = lt_gpu_upload(poison, LT_F32, 2, gshape);
  lt_tensor g_delta = lt_gpu_upload(poison, LT_F32, 3, dshape);
  assert_ok(lt_head_gate_bwd_delta(
      &lt_test_gpu, g_d_o, g_dgates, g_delta, lt_gpu_upload(d_gated, dtype, 4, xshape),
      lt_gpu_upload(o, dtype, 4, xshape), lt_gpu_upload(gates, LT_F32, 2, gshape)));
  float *got_d_o = lt_gpu_fetch(g_d_o), *got_dgates = lt_gpu_fetch(g_dgates);
  float *got_delta = lt_gpu_fetch(g_delta);
  lt_gpu_expect_close("d_o = gates * d_gated", got_d_o, d_o, nx, tol);
  lt_gpu_expect_close("dgates = <d_gated, o> (f32)", got_dgates, dgates, n * h, 1e-5);
  lt_gpu_expect_close("delta = gates * dgates (f32)", got_delta, delta, n * h, 1e-5);
  for (int64_t row = 0; row < n * h; row++) {
    if (gates[row] != 0.0f) continue;
    const int64_t bi = row / h / t, ti = row / h % t, hi = row % h;
    assert_true(got_delta[(bi * h + hi) * t + ti] == 0.0f);
    assert_true(lt_test_max_abs(got_d_o + row * d, d) == 0.0);
  }
  free(d_gated), free(o), free(gates), free(d_o), free(dgates), free(delta), free(poison);
  free(got_d_o), free(got_dgates), free(got_delta);
  lt_gpu_free_all();
}

static void test_gate_backward_fused_with_delta_matches_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_gate_backward_with_delta_matches_cpu(2, 300, 6, 64, LT_BF16, 1e-2);  // T past the tiles
  expect_gate_backward_with_delta_matches_cpu(3, 77, 12, 128, LT_BF16, 1e-2); // d = 128
  expect_gate_backward_with_delta_matches_cpu(1, 50, 5, 32, LT_F32, 1e-6);    // f32, d = 32
}

// --- whole training steps ---

enum { B = 2, T = 96, VOCAB = 512, STEPS = 3 };

// Layer 0 sparse (a window of 24 and 2 sinks), layer 1 MoH (2 shared + 4 routed heads, top_k of
// them).
static lt_model_config sparse_moh_model(int top_k) {
  lt_model_config m = {.d_model = 128,
                       .n_layers = 2,
                       .n_heads = 6,
                       .n_kv_heads = 2,
                       .head_dim = 64,
                       .ffn_dim = 256,
                       .vocab_size = VOCAB,
                       .max_seq_len = 256,
                       .rope_theta = 10000,
                       .norm_eps = 1e-5,
                       .init = LT_INIT_SCALED,
                       .init_std = 0.02,
                       .sparse = {.window = 24, .sinks = 2},
                       .moh = {.shared_heads = 2, .top_k = top_k, .balance_coef = 0.01}};
  strcpy(m.attention, "sparse,moh");
  strcpy(m.ffn, "swiglu");
  return m;
}

// Random tokens packed as documents (positions restart at each, as the loader packs them).
typedef struct packed_batch {
  int32_t tokens[B * T], targets[B * T], pos[B * T], doc[B * T];
  double n_targets;
} packed_batch;

static void make_packed_batch(packed_batch *d) {
  static const int starts[B][3] = {{0, 40, 71}, {0, 55, T}};
  lt_rng rng = lt_rng_seed(lt_gpu_next_seed());
  d->n_targets = 0;
  for (int b = 0; b < B; b++)
    for (int t = 0, id = -1, start = 0; t < T; t++) {
      const int i = b * T + t;
      for (int s = 0; s < 3; s++)
        if (starts[b][s] == t) id++, start = t;
      d->tokens[i] = (int32_t)lt_rng_below(&rng, VOCAB);
      d->pos[i] = t - start, d->doc[i] = id;
      const bool last = t + 1 == T || (id + 1 < 3 && starts[b][id + 1] == t + 1);
      d->targets[i] = last ? LT_IGNORE_INDEX : (int32_t)lt_rng_below(&rng, VOCAB);
      d->n_targets += !last;
    }
}

typedef struct training {
  lt_ctx ctx;
  lt_model model;
  lt_optimizer opt;
  lt_aux_loss aux;
  lt_batch batch;
} training;

static void training_create(training *r, lt_device device, const packed_batch *d, int top_k) {
  assert_ok(lt_ctx_init(&r->ctx, device, 0));
  lt_model_config cfg = sparse_moh_model(top_k);
  assert_ok(lt_model_create(&r->model, &cfg, device, NULL));
  assert_ok(lt_params_init(&r->model.params, 2024));
  assert_ok(lt_model_plan(&r->model, B, T, false));
  lt_train_config tc = {.lr = 1e-3,
                        .beta1 = 0.9,
                        .beta2 = 0.95,
                        .eps = 1e-8,
                        .weight_decay = 0.1,
                        .clip_norm = 1.0,
                        .decay = LT_DECAY_CONSTANT};
  assert_ok(lt_optimizer_create(&r->opt, &r->model.params, &tc));
  r->aux = (lt_aux_loss){.grad_scale = 1.0f};
  r->batch = (lt_batch){.B = B, .T = T, .aux = &r->aux};
  const int32_t *host[4] = {d->tokens, d->targets, d->pos, d->doc};
  lt_tensor *views[4] = {&r->batch.tokens, &r->batch.targets, &r->batch.pos, &r->batch.doc};
  for (int i = 0; i < 4; i++)
    *views[i] = device == LT_CPU ? lt_view1((void *)host[i], LT_I32, LT_CPU, B * T)
                                 : lt_gpu_upload_i32(host[i], 1, LT_SHAPE(B * T));
}

static void training_destroy(training *r) {
  lt_optimizer_destroy(&r->opt);
  lt_model_destroy(&r->model);
  lt_ctx_destroy(&r->ctx);
}

// One step: loss (mean over targets) and auxiliary loss, gradients, AdamW update.
static void training_step(training *r, const packed_batch *d, double *loss, double *aux,
                          float *grads) {
  double sum, norm;
  r->aux.sum = 0.0;
  assert_ok(lt_params_zero_grad(&r->model.params));
  assert_ok(
      lt_model_forward(&r->model, &r->ctx, &r->batch, true, (float)(1.0 / d->n_targets), &sum));
  assert_ok(lt_model_backward(&r->model, &r->ctx, &r->batch));
  *loss = sum / d->n_targets, *aux = r->aux.sum;
  const lt_params *p = &r->model.params;
  if (grads) assert_ok(lt_device_copy(grads, LT_CPU, p->grad, p->device, p->numel * 4));
  assert_ok(lt_optimizer_step(&r->opt, &r->ctx, 1e-3f, &norm));
}

// Three steps of the model on both devices from the same weights and batch: the losses and balance
// losses of every step, and (when `grads`) every parameter's gradient of step 1.
static void expect_steps_match_cpu(int top_k, bool grads) {
  packed_batch d;
  make_packed_batch(&d);
  training cpu, gpu;
  training_create(&cpu, LT_CPU, &d, top_k);
  training_create(&gpu, LT_CUDA, &d, top_k);
  const int64_t numel = (int64_t)cpu.model.params.numel;
  float *g_cpu = malloc(4 * numel), *g_gpu = malloc(4 * numel);
  printf("MoH top %d of 4 routed heads\n", top_k);
  for (int s = 0; s < STEPS; s++) {
    double loss[2], aux[2];
    training_step(&cpu, &d, &loss[0], &aux[0], s == 0 ? g_cpu : NULL);
    training_step(&gpu, &d, &loss[1], &aux[1], s == 0 ? g_gpu : NULL);
    printf("  step %d: loss cpu %.6f, gpu %.6f; balance loss cpu %.6f, gpu %.6f\n", s + 1, loss[0],
           loss[1], aux[0], aux[1]);
    assert_true(fabs(loss[1] - loss[0]) < 2e-3 * loss[0]);
    assert_true(aux[0] > 0.0 && fabs(aux[1] - aux[0]) < 2e-2 * aux[0]);
    if (s == 0 && grads)
      lt_gpu_expect_gradients_within(&cpu.model.params, g_gpu, g_cpu, NULL, 3e-2);
  }
  free(g_cpu), free(g_gpu);
  training_destroy(&cpu), training_destroy(&gpu);
  lt_gpu_free_all();
}

// With every routed head chosen the router makes no discrete choice, so bf16 cannot flip one, and
// the gradients (router, head weights, the sparse layer below) must be the CPU's to bf16 accuracy.
static void test_sparse_and_moh_model_with_every_head_chosen_has_the_cpu_gradients(void **state) {
  SKIP_WITHOUT_GPU();
  expect_steps_match_cpu(4, true);
}

// With 2 of 4 routed heads, a token whose router scores are close to a tie can choose another
// head on the GPU than on the CPU (bf16 activations): measured on an H100, the step-1 gradients
// then differ by 2-11% in every parameter behind the flipped choices, as with MoE's experts. So
// here the losses and balance losses over three steps are compared, which a flip moves little.
static void test_sparse_and_moh_model_with_routing_trains_on_gpu_as_on_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_steps_match_cpu(2, false);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_moh_routing_matches_cpu),
      cmocka_unit_test(test_moh_routing_backward_matches_cpu),
      cmocka_unit_test(test_head_gating_matches_cpu),
      cmocka_unit_test(test_gate_backward_fused_with_delta_matches_cpu),
      cmocka_unit_test(test_sparse_and_moh_model_with_every_head_chosen_has_the_cpu_gradients),
      cmocka_unit_test(test_sparse_and_moh_model_with_routing_trains_on_gpu_as_on_cpu),
  };
  return cmocka_run_group_tests(tests, lt_gpu_group_setup, lt_gpu_group_teardown);
}
