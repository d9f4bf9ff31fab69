// Run under mpirun with 4 ranks: ring attention over cp = 2 (two rings of two ranks) and cp = 4
// gives, at every rank's zigzag tokens, what one process computes over the whole sequence (o,
// lse, dq, dk, dv), under every mask (causal, documents across chunks, sparse patterns, MoH's
// head gates); and it skips exactly the steps with nothing visible, doing no more work than the
// single-device kernel.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cp_case.h"
#include "parallel/context.h"
#include "parallel/ring.h"
#include "testing.h"

static lt_world world;
static lt_mesh meshes[2];

enum { HQ = 4, HKV = 2, D = 16 };

typedef struct ring_case {
  int64_t B, T;
  bool documents;
  lt_attn_sparsity sparse;
  bool gates; // MoH-style per-token head weights, some heads off
} ring_case;

// The whole sequence's inputs and single-device results, or one rank's share of them.
typedef struct attn_run {
  int64_t B, T;
  float *q, *k, *v, *dout, *gates;
  int32_t *pos, *doc;
  float *o, *lse, *delta, *dq, *dk, *dv;
  lt_attn_spec spec;
} attn_run;

static float *floats(int64_t n) {
  float *x = calloc((size_t)n, sizeof(float));
  assert_non_null(x);
  return x;
}

static void run_alloc(attn_run *r, const ring_case *c, int64_t T) {
  const int64_t n = c->B * T;
  *r = (attn_run){.B = c->B, .T = T};
  r->q = floats(n * HQ * D), r->dout = floats(n * HQ * D), r->o = floats(n * HQ * D);
  r->dq = floats(n * HQ * D);
  r->k = floats(n * HKV * D), r->v = floats(n * HKV * D);
  r->dk = floats(n * HKV * D), r->dv = floats(n * HKV * D);
  // The backward writes dk and dv, whatever they held: poison them.
  for (int64_t i = 0; i < n * HKV * D; i++) r->dk[i] = r->dv[i] = NAN;
  r->gates = floats(n * HQ), r->lse = floats(n * HQ), r->delta = floats(n * HQ);
  r->pos = calloc((size_t)n, sizeof(int32_t)), r->doc = calloc((size_t)n, sizeof(int32_t));
  r->spec = (lt_attn_spec){.scale = 1.0f / sqrtf((float)D),
                           .causal = true,
                           .q_pos = lt_view2(r->pos, LT_I32, LT_CPU, c->B, T),
                           .k_pos = lt_view2(r->pos, LT_I32, LT_CPU, c->B, T),
                           .sparse = c->sparse};
  if (c->documents) r->spec.q_doc = r->spec.k_doc = lt_view2(r->doc, LT_I32, LT_CPU, c->B, T);
  if (c->gates) r->spec.head_gates = lt_view3(r->gates, LT_F32, LT_CPU, c->B, T, HQ);
}

static void run_free(attn_run *r) {
  float *f[] = {r->q, r->k, r->v, r->dout, r->gates, r->o, r->lse, r->delta, r->dq, r->dk, r->dv};
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) free(f[i]);
  free(r->pos), free(r->doc);
}

static lt_tensor heads(const attn_run *r, float *x, int h) {
  return lt_view4(x, LT_F32, LT_CPU, r->B, r->T, h, D);
}

static void make_whole(attn_run *w, const ring_case *c) {
  run_alloc(w, c, c->T);
  const int64_t n = c->B * c->T;
  lt_test_fill_normal(w->q, n * HQ * D, 11, 1.0f);
  lt_test_fill_normal(w->k, n * HKV * D, 12, 1.0f);
  lt_test_fill_normal(w->v, n * HKV * D, 13, 1.0f);
  lt_test_fill_normal(w->dout, n * HQ * D, 14, 1.0f);
  // Weights in [0.5, 1.5), and about one head in four off, as a MoH router leaves them.
  lt_test_fill_normal(w->gates, n * HQ, 15, 1.0f);
  for (int64_t i = 0; i < n * HQ; i++)
    w->gates[i] = w->gates[i] > 0.67f ? 0.0f : 1.0f + 0.5f * tanhf(w->gates[i]);
  lt_test_cp_documents(w->pos, w->doc, c->B, c->T, c->documents);
}

static void share_of(attn_run *l, const attn_run *w, const ring_case *c, const lt_mesh *mesh) {
  const int64_t T = c->T, B = c->B;
  run_alloc(l, c, T / mesh->axis[LT_AXIS_CP].size);
  lt_test_zigzag_take(l->q, w->q, B, T, HQ * D, mesh);
  lt_test_zigzag_take(l->k, w->k, B, T, HKV * D, mesh);
  lt_test_zigzag_take(l->v, w->v, B, T, HKV * D, mesh);
  lt_test_zigzag_take(l->dout, w->dout, B, T, HQ * D, mesh);
  lt_test_zigzag_take(l->gates, w->gates, B, T, HQ, mesh);
  // Positions and documents as the trainer makes them: the whole rows, cut in place.
  int32_t *ids[2][2] = {{l->pos, w->pos}, {l->doc, w->doc}};
  int32_t *rows = malloc(sizeof(int32_t) * (size_t)(B * T));
  for (int i = 0; i < 2; i++) {
    memcpy(rows, ids[i][1], sizeof(int32_t) * (size_t)(B * T));
    lt_zigzag_keep_local(rows, B, T, mesh);
    memcpy(ids[i][0], rows, sizeof(int32_t) * (size_t)(l->B * l->T));
  }
  free(rows);
}

static int plan_ring(void *ring, const lt_plan *p) {
  return lt_ring_attention_plan(ring, p, HQ, HKV, D);
}

// Forward, delta and backward: through the ring when one is given, else the kernels on one rank.
static void run_attention(attn_run *r, lt_ring_attention *ring, int64_t *tiles) {
  lt_ctx ctx;
  assert_ok(lt_ctx_init(&ctx, LT_CPU, 1));
  r->spec.tiles_visited = tiles;
  lt_tensor q = heads(r, r->q, HQ), k = heads(r, r->k, HKV), v = heads(r, r->v, HKV);
  lt_tensor o = heads(r, r->o, HQ), dout = heads(r, r->dout, HQ);
  lt_tensor lse = lt_view3(r->lse, LT_F32, LT_CPU, r->B, HQ, r->T);
  lt_tensor delta = lt_view3(r->delta, LT_F32, LT_CPU, r->B, HQ, r->T);
  assert_ok(lt_ring_attention_forward(ring, &ctx, o, lse, q, k, v, &r->spec));
  assert_ok(lt_attn_bwd_delta(&ctx, delta, dout, o));
  assert_ok(lt_ring_attention_backward(ring, &ctx, heads(r, r->dq, HQ), heads(r, r->dk, HKV),
                                       heads(r, r->dv, HKV), dout, q, k, v, lse, delta, &r->spec));
  lt_ctx_destroy(&ctx);
}

// lse is -inf exactly where the reference's is (a query that sees nothing, a head gated off) and
// close elsewhere.
static double lse_diff(const float *a, const float *b, int64_t n) {
  double worst = 0;
  for (int64_t i = 0; i < n; i++) {
    if (isinf(b[i]) || isinf(a[i])) {
      if (a[i] != b[i]) return INFINITY;
      continue;
    }
    const double d = fabs((double)a[i] - b[i]) / (fabs((double)b[i]) > 1 ? fabs((double)b[i]) : 1);
    if (!(d <= worst)) worst = d;
  }
  return worst;
}

// Runs the case whole on one process and split over the mesh's cp ring; returns the worst
// difference over o, lse, dq, dk, dv relative to each reference tensor's scale.
static double compare_with_one_process(const lt_mesh *mesh, const void *case_) {
  const ring_case *c = case_;
  attn_run whole, mine, expect;
  make_whole(&whole, c);
  run_attention(&whole, NULL, NULL);
  share_of(&mine, &whole, c, mesh);
  share_of(&expect, &whole, c, mesh); // the reference's results at this rank's tokens
  const int64_t n = mine.B * mine.T;
  lt_test_zigzag_take(expect.o, whole.o, c->B, c->T, HQ * D, mesh);
  lt_test_zigzag_take(expect.dq, whole.dq, c->B, c->T, HQ * D, mesh);
  lt_test_zigzag_take(expect.lse, whole.lse, c->B * HQ, c->T, 1, mesh);
  // dk, dv of this rank's keys: the reference's at the same tokens.
  lt_test_zigzag_take(expect.dk, whole.dk, c->B, c->T, HKV * D, mesh);
  lt_test_zigzag_take(expect.dv, whole.dv, c->B, c->T, HKV * D, mesh);
  lt_ring_attention *ring;
  assert_ok(lt_ring_attention_create(&ring, mesh));
  assert_non_null(ring);
  lt_arena acts, scratch;
  lt_test_plan_object(plan_ring, ring, &acts, &scratch, mine.B, mine.T);
  run_attention(&mine, ring, NULL);
  const double diffs[5] = {lt_test_scaled_diff(mine.o, expect.o, n * HQ * D),
                           lse_diff(mine.lse, expect.lse, n * HQ),
                           lt_test_scaled_diff(mine.dq, expect.dq, n * HQ * D),
                           lt_test_scaled_diff(mine.dk, expect.dk, n * HKV * D),
                           lt_test_scaled_diff(mine.dv, expect.dv, n * HKV * D)};
  const double worst = lt_test_worst(diffs, 5);
  lt_ring_attention_destroy(ring);
  lt_arena_destroy(&acts), lt_arena_destroy(&scratch);
  run_free(&whole), run_free(&mine), run_free(&expect);
  return worst;
}

static void expect_equal_on_both_meshes(const ring_case *c, const char *what) {
  lt_test_cp_expect_close(meshes, compare_with_one_process, c, what, 2e-6);
}

static void test_causal_ring_equals_one_process(void **state) {
  (void)state;
  const ring_case c = {.B = 2, .T = 128};
  expect_equal_on_both_meshes(&c, "causal");
}

static void test_documents_across_chunks_equal_one_process(void **state) {
  (void)state;
  const ring_case c = {.B = 2, .T = 128, .documents = true};
  expect_equal_on_both_meshes(&c, "documents");
}

static void test_window_and_sinks_equal_one_process(void **state) {
  (void)state;
  const ring_case c = {.B = 2, .T = 128, .sparse = {.window = 20, .sinks = 3}};
  expect_equal_on_both_meshes(&c, "window 20, 3 sinks");
  const ring_case docs = {
      .B = 2, .T = 128, .documents = true, .sparse = {.window = 20, .sinks = 3}};
  expect_equal_on_both_meshes(&docs, "window 20, 3 sinks, documents");
}

static void test_block_patterns_equal_one_process(void **state) {
  (void)state;
  const ring_case c = {
      .B = 2,
      .T = 128,
      .sparse = {.block_size = 8, .local_blocks = 2, .stride = 3, .global_blocks = 1}};
  expect_equal_on_both_meshes(&c, "local, strided and global blocks");
}

static void test_head_gates_equal_one_process(void **state) {
  (void)state;
  const ring_case c = {.B = 2, .T = 128, .documents = true, .gates = true};
  expect_equal_on_both_meshes(&c, "MoH head gates, documents");
}

// The ring steps whose block no local query can see, by brute force over the pairs.
static int64_t blind_steps(const lt_mesh *mesh, const ring_case *c) {
  const lt_group *cp = &mesh->axis[LT_AXIS_CP];
  const int64_t local = c->T / cp->size;
  int64_t blind = 0;
  for (int s = 0; s < cp->size; s++) {
    bool seen = false;
    for (int64_t i = 0; i < local && !seen; i++)
      for (int64_t j = 0; j < local && !seen; j++) {
        const int64_t qp = lt_zigzag_global_index(i, cp->rank, cp->size, c->T);
        const int64_t kp = lt_zigzag_global_index(j, s, cp->size, c->T);
        seen = kp <= qp && (c->sparse.window == 0 || qp - kp < c->sparse.window);
      }
    blind += !seen;
  }
  return blind;
}

// Forward and backward through the ring on cp = 4: the steps skipped per pass, and the tiles
// all ranks computed together against the single-device kernel's.
static void count_work(const ring_case *c, int64_t *skipped, int64_t *tiles, int64_t *tiles_one) {
  const lt_mesh *mesh = &meshes[1];
  attn_run whole, mine;
  make_whole(&whole, c);
  *tiles_one = 0;
  run_attention(&whole, NULL, tiles_one);
  share_of(&mine, &whole, c, mesh);
  lt_ring_attention *ring;
  assert_ok(lt_ring_attention_create(&ring, mesh));
  lt_arena acts, scratch;
  lt_test_plan_object(plan_ring, ring, &acts, &scratch, mine.B, mine.T);
  int64_t mine_tiles = 0;
  run_attention(&mine, ring, &mine_tiles);
  const lt_ring_stats stats = lt_ring_attention_stats(ring);
  assert_int_equal(stats.computed + stats.skipped, 2 * mesh->axis[LT_AXIS_CP].size);
  assert_int_equal(stats.skipped % 2, 0); // the backward skips what the forward skipped
  *skipped = stats.skipped / 2;
  double total = (double)mine_tiles;
  assert_ok(lt_all_reduce_sum_f64(&meshes[1].world, &total, 1));
  *tiles = (int64_t)total;
  lt_ring_attention_destroy(ring);
  lt_arena_destroy(&acts), lt_arena_destroy(&scratch);
  run_free(&whole), run_free(&mine);
}

static void test_a_sliding_window_skips_the_steps_that_see_nothing(void **state) {
  (void)state;
  // Chunks of 32 tokens (one kernel tile), a window of 16: a chunk sees only itself and the
  // chunk before, so most of the ring's steps have nothing to compute.
  const ring_case c = {.B = 1, .T = 256, .sparse = {.window = 16}};
  int64_t skipped, tiles, tiles_one;
  count_work(&c, &skipped, &tiles, &tiles_one);
  assert_int_equal(skipped, blind_steps(&meshes[1], &c));
  double total_skipped = (double)skipped;
  assert_ok(lt_all_reduce_sum_f64(&meshes[1].world, &total_skipped, 1));
  assert_true(total_skipped == 6.0); // of 16 steps: ranks 0 and 3 skip 2, ranks 1 and 2 one
  // Tiles count forward and backward, one kernel's and all ranks' together: the same work.
  assert_int_equal(tiles, tiles_one);
  if (world.rank == 0)
    print_message("window 16 over 8 chunks of 32: %d of 16 steps skipped, %lld tiles (one "
                  "process: %lld)\n",
                  (int)total_skipped, (long long)tiles, (long long)tiles_one);
}

static void test_causal_zigzag_skips_nothing_and_does_the_same_work(void **state) {
  (void)state;
  const ring_case c = {.B = 1, .T = 256};
  int64_t skipped, tiles, tiles_one;
  count_work(&c, &skipped, &tiles, &tiles_one);
  assert_int_equal(skipped, 0); // every block holds keys before some local query
  assert_int_equal(tiles, tiles_one);
}

int main(int argc, char **argv) {
  lt_test_cp_setup(&world, meshes, &argc, &argv);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_causal_ring_equals_one_process),
      cmocka_unit_test(test_documents_across_chunks_equal_one_process),
      cmocka_unit_test(test_window_and_sinks_equal_one_process),
      cmocka_unit_test(test_block_patterns_equal_one_process),
      cmocka_unit_test(test_head_gates_equal_one_process),
      cmocka_unit_test(test_a_sliding_window_skips_the_steps_that_see_nothing),
      cmocka_unit_test(test_causal_zigzag_skips_nothing_and_does_the_same_work),
  };
  int failures = cmocka_run_group_tests(tests, NULL, NULL);
  lt_test_cp_teardown(&world, meshes);
  return failures;
}
