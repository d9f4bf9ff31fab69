#include "pipeline_case.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "optim/adamw.h"
#include "testing.h"

enum { VOCAB = 41 };

void lt_test_pp_mesh(lt_mesh *mesh, const lt_world *world, int pp, const char *pp_layers) {
  lt_parallel_config cfg = {.dp = 1, .pp = pp, .cp = 1, .tp = 1, .timeout_s = 600};
  if (pp_layers) snprintf(cfg.pp_layers, sizeof cfg.pp_layers, "%s", pp_layers);
  assert_ok(lt_mesh_create(mesh, world, &cfg));
}

lt_model_config lt_test_pp_model_config(const lt_pp_case *c) {
  lt_config all;
  assert_ok(lt_config_defaults(&all));
  lt_model_config m = all.model;
  snprintf(m.attention, sizeof m.attention, "%s", c->attention ? c->attention : "softmax");
  snprintf(m.ffn, sizeof m.ffn, "%s", c->ffn ? c->ffn : "swiglu");
  m.d_model = 32, m.n_layers = c->n_layers, m.n_heads = 4, m.n_kv_heads = 2, m.ffn_dim = 48;
  m.vocab_size = VOCAB, m.max_seq_len = 64, m.tie_embeddings = c->tie;
  m.moe.n_experts = 4, m.moe.top_k = 2, m.moe.ffn_dim = 24;
  m.moh.shared_heads = 1, m.moh.top_k = 2, m.moh.balance_coef = 0.1;
  m.lightning.block_size = 8;
  return m;
}

void lt_test_pp_model(lt_model *model, const lt_pp_case *c, const lt_mesh *mesh) {
  lt_model_config cfg = lt_test_pp_model_config(c);
  assert_ok(lt_model_create(model, &cfg, LT_CPU, mesh));
  assert_ok(lt_params_init(&model->params, 77));
  assert_ok(lt_model_plan(model, c->B, c->T, c->recompute));
}

void lt_test_pp_data_make(lt_pp_data *d, const lt_pp_case *c, int step) {
  *d = (lt_pp_data){.B = c->B, .T = c->T, .count = c->micro_batches};
  const int64_t n = d->count * d->B * d->T;
  d->tokens = malloc(sizeof(int32_t) * (size_t)n), d->targets = malloc(sizeof(int32_t) * (size_t)n);
  d->pos = malloc(sizeof(int32_t) * (size_t)n);
  if (c->documents) d->doc = malloc(sizeof(int32_t) * (size_t)n);
  for (int64_t i = 0; i < n; i++) {
    const int64_t k = i + 7919 * (int64_t)step, t = i % d->T;
    d->tokens[i] = (int32_t)((k * k * 7 + k * 3 + 1) % VOCAB);
    d->targets[i] = (int32_t)((k * k * 5 + k * 11 + 2) % VOCAB);
    if (i % 13 == 5) d->targets[i] = LT_IGNORE_INDEX;
    d->pos[i] = (int32_t)t;
    if (!d->doc) continue;
    // Documents of uneven lengths that restart inside sequences: positions restart with them.
    const int64_t start = t < d->T / 3 ? 0 : t < d->T / 3 + 5 ? d->T / 3 : d->T / 3 + 5;
    d->doc[i] = (int32_t)(i - t + start);
    d->pos[i] = (int32_t)(t - start);
  }
  d->batch = (lt_batch){.B = d->B, .T = d->T, .aux = &d->aux};
  d->aux.grad_scale = 1.0f / (float)d->count;
}

void lt_test_pp_data_free(lt_pp_data *d) {
  free(d->tokens), free(d->targets), free(d->pos), free(d->doc);
  *d = (lt_pp_data){0};
}

static int load(void *state, int64_t m, lt_batch *batch) {
  lt_pp_data *d = state;
  const int64_t n = d->B * d->T, off = m * n;
  batch->tokens = lt_view1(d->tokens + off, LT_I32, LT_CPU, n);
  batch->targets = lt_view1(d->targets + off, LT_I32, LT_CPU, n);
  batch->pos = lt_view1(d->pos + off, LT_I32, LT_CPU, n);
  batch->doc = d->doc ? lt_view1(d->doc + off, LT_I32, LT_CPU, n) : (lt_tensor){0};
  return LT_OK;
}

lt_micro_batches lt_test_pp_micro_batches(lt_pp_data *d) {
  return (lt_micro_batches){.count = d->count, .load = load, .state = d, .batch = &d->batch};
}

float lt_test_pp_grad_scale(const lt_pp_data *d) {
  int64_t targets = 0;
  for (int64_t i = 0; i < d->count * d->B * d->T; i++) targets += d->targets[i] != LT_IGNORE_INDEX;
  return 1.0f / (float)targets;
}

void lt_test_pp_step(lt_model *model, lt_ctx *ctx, lt_pp_data *d, double *loss, double *aux,
                     lt_pipeline_trace *trace) {
  assert_ok(lt_params_zero_grad(&model->params));
  const float scale = lt_test_pp_grad_scale(d);
  lt_micro_batches micro = lt_test_pp_micro_batches(d);
  if (model->params.mesh) {
    assert_ok(lt_pipeline_train_step(model, ctx, &micro, scale, loss, aux, trace));
    return;
  }
  *loss = *aux = 0.0;
  for (int64_t m = 0; m < d->count; m++) {
    double micro_loss;
    assert_ok(load(d, m, &d->batch));
    d->aux.sum = 0.0;
    assert_ok(lt_model_forward(model, ctx, &d->batch, true, scale, &micro_loss));
    *aux += d->aux.sum;
    assert_ok(lt_model_backward(model, ctx, &d->batch));
    *loss += micro_loss;
  }
}

double lt_test_pp_max_diff(const lt_model *stage, const lt_model *reference, bool grads) {
  const lt_params *sp = &stage->params, *rp = &reference->params;
  double worst = 0.0;
  for (int i = 0; i < sp->count; i++) {
    const lt_param_info *p = &sp->info[i];
    const lt_param_info *r = lt_params_find(rp, p->name);
    if (!r || r->numel != p->numel)
      fail_msg("%s: no parameter of its size in the reference", p->name);
    const float *a = (grads ? sp->grad : sp->master) + p->offset;
    const float *b = (grads ? rp->grad : rp->master) + r->offset;
    const double scale = lt_test_max_abs(b, r->numel);
    for (int64_t j = 0; j < p->numel; j++) {
      const double diff = fabs((double)a[j] - b[j]) / (scale > 0 ? scale : 1.0);
      if (diff > worst) worst = diff;
    }
  }
  return worst;
}

static bool close_to(double a, double b, double rel) {
  return fabs(a - b) <= rel * fabs(b);
}

void lt_test_pp_expect_same_step(const lt_world *world, lt_ctx *ctx, const lt_pp_case *c) {
  lt_mesh mesh;
  lt_test_pp_mesh(&mesh, world, world->size, c->pp_layers);
  lt_model stage, whole;
  lt_test_pp_model(&stage, c, &mesh);
  lt_test_pp_model(&whole, c, NULL);
  lt_pp_data d;
  lt_test_pp_data_make(&d, c, 0);
  double loss, aux, ref_loss, ref_aux;
  lt_test_pp_step(&stage, ctx, &d, &loss, &aux, NULL);
  lt_test_pp_step(&whole, ctx, &d, &ref_loss, &ref_aux, NULL);
  const double grads = lt_test_pp_max_diff(&stage, &whole, true);
  printf("stage %d (layers %d-%d, %d parameters): loss %.9g vs %.9g, aux %.9g vs %.9g, worst "
         "gradient difference %.2e of the tensor's scale\n",
         mesh.coord[LT_AXIS_PP], stage.layer_begin, stage.layer_end - 1, stage.params.count, loss,
         ref_loss, aux, ref_aux, grads);
  assert_true(close_to(loss, ref_loss, 1e-7));
  assert_true(close_to(aux, ref_aux, 1e-7));
  assert_true(grads < 1e-5);
  lt_test_pp_data_free(&d);
  lt_model_destroy(&stage);
  lt_model_destroy(&whole);
  lt_mesh_destroy(&mesh);
}

// The embedding on the first stage and its copy on the last, bit for bit (true elsewhere).
static bool tied_copies_equal(const lt_model *m, const lt_mesh *mesh) {
  const int stage = mesh->coord[LT_AXIS_PP], last = mesh->size[LT_AXIS_PP] - 1;
  if (!m->cfg.tie_embeddings || (stage != 0 && stage != last)) return true;
  const lt_param_info *embed = lt_params_find(&m->params, "embed");
  const int64_t n = embed->numel;
  float *other = malloc(sizeof(float) * (size_t)n);
  lt_tensor mine = lt_view1(m->params.master + embed->offset, LT_F32, LT_CPU, n);
  const int peer = stage == 0 ? last : 0;
  assert_ok(
      lt_sendrecv(&mesh->axis[LT_AXIS_PP], mine, peer, lt_view1(other, LT_F32, LT_CPU, n), peer));
  const bool same = memcmp(other, mine.data, sizeof(float) * (size_t)n) == 0;
  free(other);
  return same;
}

void lt_test_pp_expect_same_curve(const lt_world *world, lt_ctx *ctx, const lt_pp_case *c,
                                  int steps) {
  lt_mesh mesh;
  lt_test_pp_mesh(&mesh, world, world->size, c->pp_layers);
  lt_model stage, whole;
  lt_test_pp_model(&stage, c, &mesh);
  lt_test_pp_model(&whole, c, NULL);
  // Clipping at a norm the gradients exceed: the norm is then every stage's, and must be right.
  const lt_train_config tc = {.lr = 3e-3,
                              .beta1 = 0.9,
                              .beta2 = 0.95,
                              .eps = 1e-8,
                              .weight_decay = 0.1,
                              .clip_norm = 0.5,
                              .decay = LT_DECAY_CONSTANT};
  lt_optimizer opt, ref_opt;
  assert_ok(lt_optimizer_create(&opt, &stage.params, &tc));
  assert_ok(lt_optimizer_create(&ref_opt, &whole.params, &tc));
  int clipped = 0;
  double first = 0, last = 0;
  for (int step = 0; step < steps; step++) {
    lt_pp_data d;
    lt_test_pp_data_make(&d, c, step);
    const double tokens = 1.0 / lt_test_pp_grad_scale(&d);
    double loss, aux, ref_loss, ref_aux, norm, ref_norm;
    lt_test_pp_step(&stage, ctx, &d, &loss, &aux, NULL);
    lt_test_pp_step(&whole, ctx, &d, &ref_loss, &ref_aux, NULL);
    assert_ok(lt_optimizer_step(&opt, ctx, tc.lr, &norm));
    assert_ok(lt_optimizer_step(&ref_opt, ctx, tc.lr, &ref_norm));
    // Untied, every stage computes what the single process does, in the same order: only the
    // gradient norm's sum of squares is added in another order (in double). Tied, the
    // embedding's gradient is summed in another order too, and AdamW carries the difference on.
    const bool same_loss = c->tie ? close_to(loss, ref_loss, 1e-5) : loss == ref_loss;
    if (!same_loss || !close_to(norm, ref_norm, 1e-5))
      fail_msg("step %d: loss %.9g vs %.9g, gradient norm %.9g vs %.9g", step + 1, loss / tokens,
               ref_loss / tokens, norm, ref_norm);
    clipped += ref_norm > tc.clip_norm;
    if (step == 0) first = loss / tokens;
    last = loss / tokens;
    lt_test_pp_data_free(&d);
  }
  const double weights = lt_test_pp_max_diff(&stage, &whole, false);
  printf("stage %d: loss %.4f -> %.4f in %d steps (%d clipped), weights within %.2e of the single "
         "process\n",
         mesh.coord[LT_AXIS_PP], first, last, steps, clipped, weights);
  assert_true(clipped > 0);
  assert_true(last < first);
  assert_true(c->tie ? weights < 1e-5 : weights == 0.0);
  assert_true(tied_copies_equal(&stage, &mesh));
  lt_optimizer_destroy(&opt);
  lt_optimizer_destroy(&ref_opt);
  lt_model_destroy(&stage);
  lt_model_destroy(&whole);
  lt_mesh_destroy(&mesh);
}

void lt_test_pp_expect_order(const lt_world *world, lt_ctx *ctx, const lt_pp_case *c,
                             const char *const *expected) {
  lt_mesh mesh;
  lt_test_pp_mesh(&mesh, world, world->size, c->pp_layers);
  lt_model m;
  lt_test_pp_model(&m, c, &mesh);
  lt_pp_data d;
  lt_test_pp_data_make(&d, c, 0);
  lt_pipeline_action ran[64];
  lt_pipeline_trace trace = {.actions = ran, .capacity = 64};
  double loss, aux;
  lt_test_pp_step(&m, ctx, &d, &loss, &aux, &trace);
  char order[256] = "";
  for (int i = 0; i < trace.count; i++)
    snprintf(order + strlen(order), sizeof order - strlen(order), "%s%c%d", i ? " " : "",
             ran[i].op == LT_PP_FORWARD ? 'F' : 'B', ran[i].micro);
  const int s = mesh.coord[LT_AXIS_PP], in_flight = world->size - s;
  printf("stage %d ran %s, with room for %d micro-batches in flight\n", s, order, trace.slots);
  assert_string_equal(order, expected[s]);
  const int slots = in_flight < c->micro_batches ? in_flight : (int)c->micro_batches;
  assert_int_equal(trace.slots, slots);
  assert_int_equal(m.n_slots, slots);
  lt_test_pp_data_free(&d);
  lt_model_destroy(&m);
  lt_mesh_destroy(&mesh);
}
