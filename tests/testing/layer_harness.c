#include "layer_harness.h"

#include <math.h>

#include "testing.h"

void lt_test_layer_finish(lt_test_layer *l, int64_t B, int64_t T) {
  assert_ok(lt_params_allocate(&l->params, LT_CPU));
  for (int i = 0; i < l->params.count; i++) {
    lt_param_info *p = &l->params.info[i];
    uint64_t seed = 0;
    for (const char *c = p->name; *c; c++) seed = seed * 131 + (uint64_t)*c;
    lt_test_fill_normal(l->params.master + p->offset, p->numel, seed,
                        1.0f / sqrtf((float)p->shape[p->ndim - 1]));
  }
  lt_test_plan_layer(l->layer, &l->acts, &l->scratch, B, T);
}

void lt_test_plan_layer(lt_layer *layer, lt_arena *acts, lt_arena *scratch, int64_t B, int64_t T) {
  lt_arena ma, ms;
  lt_arena_measure(&ma, LT_CPU, "acts");
  lt_arena_measure(&ms, LT_CPU, "scratch");
  lt_plan plan = {.B = B, .T = T, .act_dtype = LT_F32, .acts = &ma, .scratch = &ms};
  assert_ok(layer->ops->plan(layer, &plan));
  assert_ok(lt_arena_create(acts, LT_CPU, ma.peak, "acts"));
  assert_ok(lt_arena_create(scratch, LT_CPU, ms.peak, "scratch"));
  plan.acts = acts, plan.scratch = scratch;
  assert_ok(layer->ops->plan(layer, &plan));
}

void lt_test_layer_destroy(lt_test_layer *l) {
  l->layer->ops->destroy(l->layer);
  lt_arena_destroy(&l->acts);
  lt_arena_destroy(&l->scratch);
  lt_params_free(&l->params);
}

static const lt_param_info *find(lt_test_layer *l, const char *name) {
  const lt_param_info *p = lt_params_find(&l->params, name);
  if (!p) fail_msg("the layer has no parameter %s", name);
  return p;
}

float *lt_test_layer_param(lt_test_layer *l, const char *name) {
  return l->params.master + find(l, name)->offset;
}

float *lt_test_layer_grad(lt_test_layer *l, const char *name) {
  return l->params.grad + find(l, name)->offset;
}

int64_t lt_test_layer_numel(lt_test_layer *l, const char *name) {
  return find(l, name)->numel;
}
