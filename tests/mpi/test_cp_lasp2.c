// Run under mpirun with 4 ranks: LASP-2 over cp = 2 (two groups of two ranks) and cp = 4 gives, at
// every rank's zigzag tokens, what the single-device linear attention kernel computes over the
// whole sequence (o, dq, dk, dv): with and without decay, with grouped heads, with the
// denominator's extra value column, and with documents that start inside chunks, at a chunk's
// first token, and run across chunks held by other ranks.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cp_case.h"
#include "parallel/context.h"
#include "parallel/lasp2.h"
#include "testing.h"

static lt_world world;
static lt_mesh meshes[2];

enum { HQ = 4, HKV = 2, D = 8 };

typedef struct lasp_case {
  int64_t B, T, block;
  int e; // value width: D, or D + 1 as with the denominator's column of ones
  bool decay, documents;
} lasp_case;

typedef struct linear_run {
  int64_t B, T;
  int e;
  float *q, *k, *v, *dout, *o, *dq, *dk, *dv;
  int32_t *doc;
  float log_decay[HQ];
  lt_linear_attn_spec spec;
} linear_run;

static float *floats(int64_t n) {
  float *x = calloc((size_t)n, sizeof(float));
  assert_non_null(x);
  return x;
}

static void run_alloc(linear_run *r, const lasp_case *c, int64_t T) {
  const int64_t n = c->B * T;
  *r = (linear_run){.B = c->B, .T = T, .e = c->e};
  r->q = floats(n * HQ * D), r->dq = floats(n * HQ * D);
  r->k = floats(n * HKV * D), r->dk = floats(n * HKV * D);
  r->v = floats(n * HKV * c->e), r->dv = floats(n * HKV * c->e);
  r->o = floats(n * HQ * c->e), r->dout = floats(n * HQ * c->e);
  r->doc = calloc((size_t)n, sizeof(int32_t));
  // Decays from strong (half-life of 7 tokens) to weak, as lightning's heads have.
  for (int h = 0; h < HQ; h++) r->log_decay[h] = -0.1f / (float)(1 << (2 * h));
  r->spec = (lt_linear_attn_spec){.block = c->block};
  if (c->decay) r->spec.log_decay = lt_view1(r->log_decay, LT_F32, LT_CPU, HQ);
  if (c->documents) r->spec.doc = lt_view2(r->doc, LT_I32, LT_CPU, c->B, T);
}

static void run_free(linear_run *r) {
  float *f[] = {r->q, r->k, r->v, r->dout, r->o, r->dq, r->dk, r->dv};
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) free(f[i]);
  free(r->doc);
}

static lt_tensor heads(const linear_run *r, float *x, int h, int w) {
  return lt_view4(x, LT_F32, LT_CPU, r->B, r->T, h, w);
}

static void make_whole(linear_run *w, const lasp_case *c) {
  run_alloc(w, c, c->T);
  const int64_t n = c->B * c->T;
  // Scaled so that sums over a hundred tokens stay near 1.
  lt_test_fill_normal(w->q, n * HQ * D, 21, 0.3f);
  lt_test_fill_normal(w->k, n * HKV * D, 22, 0.3f);
  lt_test_fill_normal(w->v, n * HKV * c->e, 23, 1.0f);
  lt_test_fill_normal(w->dout, n * HQ * c->e, 24, 1.0f);
  int32_t *pos = malloc(sizeof(int32_t) * (size_t)n);
  lt_test_cp_documents(pos, w->doc, c->B, c->T, c->documents);
  free(pos);
}

static void share_of(linear_run *l, const linear_run *w, const lasp_case *c, const lt_mesh *mesh) {
  const int64_t T = c->T, B = c->B;
  run_alloc(l, c, T / mesh->axis[LT_AXIS_CP].size);
  lt_test_zigzag_take(l->q, w->q, B, T, HQ * D, mesh);
  lt_test_zigzag_take(l->k, w->k, B, T, HKV * D, mesh);
  lt_test_zigzag_take(l->v, w->v, B, T, HKV * c->e, mesh);
  lt_test_zigzag_take(l->dout, w->dout, B, T, HQ * c->e, mesh);
  int32_t *rows = malloc(sizeof(int32_t) * (size_t)(B * T));
  memcpy(rows, w->doc, sizeof(int32_t) * (size_t)(B * T));
  lt_zigzag_keep_local(rows, B, T, mesh);
  memcpy(l->doc, rows, sizeof(int32_t) * (size_t)(l->B * l->T));
  free(rows);
}

typedef struct lasp_plan {
  lt_lasp2 *lasp;
  int e;
} lasp_plan;

static int plan_lasp(void *object, const lt_plan *p) {
  lasp_plan *lp = object;
  return lt_lasp2_plan(lp->lasp, p, HQ, D, lp->e);
}

// Forward and backward: with LASP-2 when given, else the kernels on one process.
static void run_linear(linear_run *r, lt_lasp2 *lasp) {
  lt_ctx ctx;
  assert_ok(lt_ctx_init(&ctx, LT_CPU, 1));
  lt_tensor q = heads(r, r->q, HQ, D), k = heads(r, r->k, HKV, D), v = heads(r, r->v, HKV, r->e);
  assert_ok(lt_lasp2_forward(lasp, &ctx, heads(r, r->o, HQ, r->e), q, k, v, &r->spec));
  assert_ok(lt_lasp2_backward(lasp, &ctx, heads(r, r->dq, HQ, D), heads(r, r->dk, HKV, D),
                              heads(r, r->dv, HKV, r->e), heads(r, r->dout, HQ, r->e), q, k, v,
                              &r->spec));
  lt_ctx_destroy(&ctx);
}

static double compare_with_one_process(const lt_mesh *mesh, const void *case_) {
  const lasp_case *c = case_;
  linear_run whole, mine, expect;
  make_whole(&whole, c);
  run_linear(&whole, NULL);
  share_of(&mine, &whole, c, mesh);
  share_of(&expect, &whole, c, mesh);
  lt_test_zigzag_take(expect.o, whole.o, c->B, c->T, HQ * c->e, mesh);
  lt_test_zigzag_take(expect.dq, whole.dq, c->B, c->T, HQ * D, mesh);
  lt_test_zigzag_take(expect.dk, whole.dk, c->B, c->T, HKV * D, mesh);
  lt_test_zigzag_take(expect.dv, whole.dv, c->B, c->T, HKV * c->e, mesh);
  lasp_plan lp = {.e = c->e};
  assert_ok(lt_lasp2_create(&lp.lasp, mesh, HQ, c->decay ? whole.log_decay : NULL));
  assert_non_null(lp.lasp);
  lt_arena acts, scratch;
  lt_test_plan_object(plan_lasp, &lp, &acts, &scratch, mine.B, mine.T);
  run_linear(&mine, lp.lasp);
  const int64_t n = mine.B * mine.T;
  const double diffs[4] = {lt_test_scaled_diff(mine.o, expect.o, n * HQ * c->e),
                           lt_test_scaled_diff(mine.dq, expect.dq, n * HQ * D),
                           lt_test_scaled_diff(mine.dk, expect.dk, n * HKV * D),
                           lt_test_scaled_diff(mine.dv, expect.dv, n * HKV * c->e)};
  const double worst = lt_test_worst(diffs, 4);
  lt_lasp2_destroy(lp.lasp);
  lt_arena_destroy(&acts), lt_arena_destroy(&scratch);
  run_free(&whole), run_free(&mine), run_free(&expect);
  return worst;
}

static void expect_equal_on_both_meshes(const lasp_case *c, const char *what) {
  lt_test_cp_expect_close(meshes, compare_with_one_process, c, what, 2e-6);
}

static void test_lasp2_without_decay_equals_one_process(void **state) {
  (void)state;
  const lasp_case c = {.B = 2, .T = 128, .block = 5, .e = D};
  expect_equal_on_both_meshes(&c, "no decay");
}

static void test_lasp2_with_decay_equals_one_process(void **state) {
  (void)state;
  const lasp_case c = {.B = 2, .T = 128, .block = 7, .e = D, .decay = true};
  expect_equal_on_both_meshes(&c, "decay");
}

static void test_lasp2_with_the_denominator_column_equals_one_process(void **state) {
  (void)state;
  const lasp_case c = {.B = 2, .T = 128, .block = 16, .e = D + 1, .decay = true};
  expect_equal_on_both_meshes(&c, "decay, e = d + 1");
}

static void test_documents_across_chunks_equal_one_process(void **state) {
  (void)state;
  const lasp_case plain = {.B = 2, .T = 128, .block = 5, .e = D, .documents = true};
  expect_equal_on_both_meshes(&plain, "documents");
  const lasp_case decay = {.B = 2, .T = 128, .block = 6, .e = D, .decay = true, .documents = true};
  expect_equal_on_both_meshes(&decay, "documents, decay");
}

int main(int argc, char **argv) {
  lt_test_cp_setup(&world, meshes, &argc, &argv);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lasp2_without_decay_equals_one_process),
      cmocka_unit_test(test_lasp2_with_decay_equals_one_process),
      cmocka_unit_test(test_lasp2_with_the_denominator_column_equals_one_process),
      cmocka_unit_test(test_documents_across_chunks_equal_one_process),
  };
  int failures = cmocka_run_group_tests(tests, NULL, NULL);
  lt_test_cp_teardown(&world, meshes);
  return failures;
}
