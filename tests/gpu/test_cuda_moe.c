// The mixture-of-experts kernels on CUDA against the CPU reference, on fresh random inputs: the
// router (top-1 and top-2, plain and renormalized gates, ties, more experts than a warp has
// lanes), its backward, the dispatch plan (exactly the CPU's, with capacity drops and experts that
// receive no tokens), dispatch and combine with their backwards (bf16 and f32 rows, vector and
// scalar paths), and the grouped GEMMs with empty groups. Outputs the kernels must write start as
// NaN (or -7 for integers), so a row a kernel skips fails the comparison.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "core/rng.h"
#include "gpu_testing.h"

static lt_tensor host(float *x, int ndim, const int64_t *shape) {
  return lt_view(x, LT_F32, LT_CPU, ndim, shape);
}

static lt_tensor host_i32(int32_t *x, int ndim, const int64_t *shape) {
  return lt_view(x, LT_I32, LT_CPU, ndim, shape);
}

static int64_t count_of(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  return n;
}

// A device tensor full of NaN: whatever a kernel leaves unwritten fails every comparison.
static lt_tensor gpu_nan(lt_dtype dtype, int ndim, const int64_t *shape) {
  const int64_t n = count_of(ndim, shape);
  float *h = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
  for (int64_t i = 0; i < n; i++) h[i] = NAN;
  lt_tensor t = lt_gpu_upload(h, dtype, ndim, shape);
  free(h);
  return t;
}

static lt_tensor gpu_i32_filled(int32_t value, int ndim, const int64_t *shape) {
  const int64_t n = count_of(ndim, shape);
  int32_t *h = malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
  for (int64_t i = 0; i < n; i++) h[i] = value;
  lt_tensor t = lt_gpu_upload_i32(h, ndim, shape);
  free(h);
  return t;
}

static int32_t *fetch_i32(lt_tensor t) {
  int32_t *h = malloc(lt_nbytes(t) + sizeof(int32_t));
  assert_ok(lt_tensor_to_host(h, t));
  return h;
}

// --- the router ---

typedef struct route_case {
  int e, k;
  bool renormalize;
} route_case;

static const route_case route_cases[] = {
    {8, 2, true}, {8, 1, false}, {8, 2, false}, {40, 2, false}, {40, 3, true}};

// Router logits whose first tokens tie: token 0 has every logit equal (the top k are then experts
// 0..k-1), token 1 a tie for first place between experts 3 and 5.
static float *router_logits(int64_t n, int e) {
  float *logits = lt_gpu_random(n * e, 1.5f, false);
  for (int j = 0; j < e; j++) logits[j] = 0.25f;
  logits[e + 3] = logits[e + 5] = 10.0f; // far above the others (standard deviation 1.5)
  return logits;
}

typedef struct routed {
  float *gate, *probs, *lse, *prob_sum;
  int32_t *expert;
} routed;

static routed route_on_cpu(const float *logits, int64_t n, route_case c) {
  routed r = {.gate = malloc(sizeof(float) * n * c.k),
              .probs = malloc(sizeof(float) * n * c.e),
              .lse = malloc(sizeof(float) * n),
              .prob_sum = malloc(sizeof(float) * c.e),
              .expert = malloc(sizeof(int32_t) * n * c.k)};
  assert_ok(lt_moe_route(&lt_test_cpu, host(r.gate, 2, LT_SHAPE(n, c.k)),
                         host_i32(r.expert, 2, LT_SHAPE(n, c.k)),
                         host(r.probs, 2, LT_SHAPE(n, c.e)), host(r.lse, 1, LT_SHAPE(n)),
                         host(r.prob_sum, 1, LT_SHAPE(c.e)),
                         host((float *)logits, 2, LT_SHAPE(n, c.e)), c.renormalize));
  return r;
}

static void routed_free(routed *r) {
  free(r->gate), free(r->probs), free(r->lse), free(r->prob_sum), free(r->expert);
}

static void test_router_matches_cpu_with_ties_to_the_lower_expert(void **state) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 1001; // not a multiple of the tokens per block
  for (size_t ci = 0; ci < sizeof route_cases / sizeof route_cases[0]; ci++) {
    const route_case c = route_cases[ci];
    float *logits = router_logits(n, c.e);
    routed want = route_on_cpu(logits, n, c);
    assert_int_equal(want.expert[0], 0); // the tie cases are as intended
    assert_int_equal(want.expert[c.k], 3);
    lt_tensor g_logits = lt_gpu_upload(logits, LT_F32, 2, LT_SHAPE(n, c.e));
    float *first_sum = NULL;
    for (int run = 0; run < 2; run++) {
      lt_tensor gate = gpu_nan(LT_F32, 2, LT_SHAPE(n, c.k));
      lt_tensor expert = gpu_i32_filled(-7, 2, LT_SHAPE(n, c.k));
      lt_tensor probs = gpu_nan(LT_F32, 2, LT_SHAPE(n, c.e)), lse = gpu_nan(LT_F32, 1, LT_SHAPE(n));
      lt_tensor prob_sum = gpu_nan(LT_F32, 1, LT_SHAPE(c.e));
      assert_ok(
          lt_moe_route(&lt_test_gpu, gate, expert, probs, lse, prob_sum, g_logits, c.renormalize));
      int32_t *got_expert = fetch_i32(expert);
      float *got_gate = lt_gpu_fetch(gate), *got_probs = lt_gpu_fetch(probs);
      float *got_lse = lt_gpu_fetch(lse), *got_sum = lt_gpu_fetch(prob_sum);
      if (run == 0) {
        printf(" E = %d, top-%d, %s gates\n", c.e, c.k, c.renormalize ? "renormalized" : "plain");
        assert_memory_equal(got_expert, want.expert, sizeof(int32_t) * n * c.k);
        lt_gpu_expect_close("router probs", got_probs, want.probs, n * c.e, 1e-6);
        lt_gpu_expect_close("router lse", got_lse, want.lse, n, 1e-6);
        lt_gpu_expect_close("router gates", got_gate, want.gate, n * c.k, 1e-6);
        lt_gpu_expect_close("router prob_sum", got_sum, want.prob_sum, c.e, 1e-6);
        first_sum = got_sum;
      } else { // sums in a fixed order: the same bits every run
        assert_memory_equal(got_sum, first_sum, sizeof(float) * c.e);
        free(got_sum);
      }
      free(got_expert), free(got_gate), free(got_probs), free(got_lse);
    }
    free(first_sum), free(logits);
    routed_free(&want);
    lt_gpu_free_all();
  }
}

static void test_router_backward_matches_cpu_into_f32_and_bf16(void **state) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 777;
  const float z_scale = 0.3f;
  for (size_t ci = 0; ci < sizeof route_cases / sizeof route_cases[0]; ci++) {
    const route_case c = route_cases[ci];
    float *logits = router_logits(n, c.e);
    routed r = route_on_cpu(logits, n, c);
    float *dgate = lt_gpu_random(n * c.k, 1.0f, false), *balance = lt_gpu_random(c.e, 0.1f, false);
    float *want = malloc(sizeof(float) * n * c.e);
    assert_ok(lt_moe_route_bwd(&lt_test_cpu, host(want, 2, LT_SHAPE(n, c.e)),
                               host(dgate, 2, LT_SHAPE(n, c.k)), host(r.gate, 2, LT_SHAPE(n, c.k)),
                               host_i32(r.expert, 2, LT_SHAPE(n, c.k)),
                               host(r.probs, 2, LT_SHAPE(n, c.e)), host(r.lse, 1, LT_SHAPE(n)),
                               host(balance, 1, LT_SHAPE(c.e)), z_scale, c.renormalize));
    printf(" E = %d, top-%d, %s gates\n", c.e, c.k, c.renormalize ? "renormalized" : "plain");
    for (int dt = 0; dt < 2; dt++) {
      lt_tensor dlogits = gpu_nan(dt ? LT_BF16 : LT_F32, 2, LT_SHAPE(n, c.e));
      assert_ok(lt_moe_route_bwd(
          &lt_test_gpu, dlogits, lt_gpu_upload(dgate, LT_F32, 2, LT_SHAPE(n, c.k)),
          lt_gpu_upload(r.gate, LT_F32, 2, LT_SHAPE(n, c.k)),
          lt_gpu_upload_i32(r.expert, 2, LT_SHAPE(n, c.k)),
          lt_gpu_upload(r.probs, LT_F32, 2, LT_SHAPE(n, c.e)),
          lt_gpu_upload(r.lse, LT_F32, 1, LT_SHAPE(n)),
          lt_gpu_upload(balance, LT_F32, 1, LT_SHAPE(c.e)), z_scale, c.renormalize));
      float *got = lt_gpu_fetch(dlogits);
      lt_gpu_expect_close(dt ? "router dlogits (bf16)" : "router dlogits (f32)", got, want, n * c.e,
                          dt ? 1e-2 : 1e-6);
      free(got);
    }
    free(logits), free(dgate), free(balance), free(want);
    routed_free(&r);
    lt_gpu_free_all();
  }
}

// --- the dispatch plan ---

// k distinct experts per token from the first `used` of them (the others receive none), skewed
// towards the low ids (the smaller of two uniform draws) so that capacity drops some.
static int32_t *random_choices(int64_t n, int k, int used) {
  lt_rng rng = lt_rng_seed(lt_gpu_next_seed());
  int32_t *expert = malloc(sizeof(int32_t) * n * k);
  for (int64_t t = 0; t < n; t++)
    for (int s = 0; s < k; s++) {
      bool taken;
      do {
        const uint64_t a = lt_rng_below(&rng, (uint64_t)used),
                       b = lt_rng_below(&rng, (uint64_t)used);
        expert[t * k + s] = (int32_t)(a < b ? a : b);
        taken = false;
        for (int q = 0; q < s; q++) taken |= expert[t * k + q] == expert[t * k + s];
      } while (taken);
    }
  return expert;
}

typedef struct plan {
  int32_t *slot_row, *row_token, *offsets, *counts;
} plan;

static plan plan_on_cpu(const int32_t *expert, int64_t n, int e, int k, int64_t capacity) {
  plan p = {.slot_row = malloc(sizeof(int32_t) * n * k),
            .row_token = malloc(sizeof(int32_t) * n * k),
            .offsets = malloc(sizeof(int32_t) * (e + 1)),
            .counts = malloc(sizeof(int32_t) * e)};
  assert_ok(lt_moe_dispatch_plan(&lt_test_cpu, host_i32(p.slot_row, 2, LT_SHAPE(n, k)),
                                 host_i32(p.row_token, 1, LT_SHAPE(n * k)),
                                 host_i32(p.offsets, 1, LT_SHAPE(e + 1)),
                                 host_i32(p.counts, 1, LT_SHAPE(e)),
                                 host_i32((int32_t *)expert, 2, LT_SHAPE(n, k)), capacity));
  return p;
}

static void plan_free(plan *p) {
  free(p->slot_row), free(p->row_token), free(p->offsets), free(p->counts);
}

typedef struct plan_case {
  int64_t n;
  int e, k, used;
  int64_t capacity;
} plan_case;

static void test_dispatch_plan_equals_the_cpu_plan_with_drops_and_idle_experts(void **state) {
  SKIP_WITHOUT_GPU();
  const plan_case cases[] = {
      {3000, 8, 2, 8, 0},  {3000, 8, 2, 8, 500}, {777, 40, 1, 30, 30},
      {777, 40, 4, 30, 0}, {5, 3, 2, 3, 1},      {20000, 64, 2, 64, 700},
  };
  for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
    const plan_case c = cases[ci];
    const int64_t n = c.n, choices = c.n * c.k;
    int32_t *expert = random_choices(n, c.k, c.used);
    plan want = plan_on_cpu(expert, n, c.e, c.k, c.capacity);
    int dropped = 0, idle = 0;
    for (int64_t i = 0; i < choices; i++) dropped += want.slot_row[i] < 0;
    for (int x = 0; x < c.e; x++) idle += want.counts[x] == 0;
    printf("  N = %lld, E = %d, top-%d, capacity %lld: %d choices dropped, %d idle experts\n",
           (long long)n, c.e, c.k, (long long)c.capacity, dropped, idle);
    assert_true(c.capacity == 0 || dropped > 0); // the cases do what they are for
    assert_true(idle >= c.e - c.used);
    lt_tensor slot_row = gpu_i32_filled(-7, 2, LT_SHAPE(n, c.k));
    lt_tensor row_token = gpu_i32_filled(-7, 1, LT_SHAPE(choices));
    lt_tensor offsets = gpu_i32_filled(-7, 1, LT_SHAPE(c.e + 1));
    lt_tensor counts = gpu_i32_filled(-7, 1, LT_SHAPE(c.e));
    assert_ok(lt_moe_dispatch_plan(&lt_test_gpu, slot_row, row_token, offsets, counts,
                                   lt_gpu_upload_i32(expert, 2, LT_SHAPE(n, c.k)), c.capacity));
    int32_t *got_slot = fetch_i32(slot_row), *got_token = fetch_i32(row_token);
    int32_t *got_offsets = fetch_i32(offsets), *got_counts = fetch_i32(counts);
    assert_memory_equal(got_counts, want.counts, sizeof(int32_t) * c.e);
    assert_memory_equal(got_offsets, want.offsets, sizeof(int32_t) * (c.e + 1));
    assert_memory_equal(got_slot, want.slot_row, sizeof(int32_t) * choices);
    assert_memory_equal(got_token, want.row_token, sizeof(int32_t) * choices);
    free(got_slot), free(got_token), free(got_offsets), free(got_counts), free(expert);
    plan_free(&want);
    lt_gpu_free_all();
  }
}

// --- dispatch and combine ---

static void test_dispatch_and_combine_and_their_backwards_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 1500, widths[2] = {96, 100}; // 16-byte vectors, and the scalar path
  const int e = 6, k = 2;
  int32_t *expert = random_choices(n, k, e);
  plan p = plan_on_cpu(expert, n, e, k, 400); // with drops: a dropped choice adds nothing
  const int64_t rows = p.offsets[e];
  for (int wi = 0; wi < 2; wi++) {
    const int64_t d = widths[wi];
    float *x = lt_gpu_random(n * d, 1.0f, true), *ye = lt_gpu_random(rows * d, 1.0f, true);
    float *dxe = lt_gpu_random(rows * d, 1.0f, true), *dout = lt_gpu_random(n * d, 1.0f, true);
    float *gate = lt_gpu_random(n * k, 0.5f, false);
    float *xe = malloc(sizeof(float) * rows * d), *out = malloc(sizeof(float) * n * d);
    float *dx = malloc(sizeof(float) * n * d), *dye = malloc(sizeof(float) * rows * d);
    float *dgate = malloc(sizeof(float) * n * k);
    lt_tensor slot_cpu = host_i32(p.slot_row, 2, LT_SHAPE(n, k));
    assert_ok(lt_moe_dispatch(&lt_test_cpu, host(xe, 2, LT_SHAPE(rows, d)),
                              host(x, 2, LT_SHAPE(n, d)),
                              host_i32(p.row_token, 1, LT_SHAPE(n * k))));
    assert_ok(lt_moe_combine(&lt_test_cpu, host(out, 2, LT_SHAPE(n, d)),
                             host(ye, 2, LT_SHAPE(rows, d)), host(gate, 2, LT_SHAPE(n, k)),
                             slot_cpu));
    assert_ok(lt_moe_dispatch_bwd(&lt_test_cpu, host(dx, 2, LT_SHAPE(n, d)),
                                  host(dxe, 2, LT_SHAPE(rows, d)), slot_cpu));
    assert_ok(lt_moe_combine_bwd(&lt_test_cpu, host(dye, 2, LT_SHAPE(rows, d)),
                                 host(dgate, 2, LT_SHAPE(n, k)), host(dout, 2, LT_SHAPE(n, d)),
                                 host(ye, 2, LT_SHAPE(rows, d)), host(gate, 2, LT_SHAPE(n, k)),
                                 slot_cpu));
    lt_tensor slot = lt_gpu_upload_i32(p.slot_row, 2, LT_SHAPE(n, k));
    lt_tensor row_token = lt_gpu_upload_i32(p.row_token, 1, LT_SHAPE(n * k));
    lt_tensor g_gate = lt_gpu_upload(gate, LT_F32, 2, LT_SHAPE(n, k));
    for (int dt = 0; dt < 2; dt++) {
      const lt_dtype dtype = dt ? LT_BF16 : LT_F32;
      const double tol = dt ? 1e-2 : 1e-6;
      printf(" D = %lld, %s rows\n", (long long)d, dt ? "bf16" : "f32");
      lt_tensor g_xe = gpu_nan(dtype, 2, LT_SHAPE(rows, d));
      assert_ok(lt_moe_dispatch(&lt_test_gpu, g_xe, lt_gpu_upload(x, dtype, 2, LT_SHAPE(n, d)),
                                row_token));
      float *got = lt_gpu_fetch(g_xe);
      assert_memory_equal(got, xe, sizeof(float) * rows * d); // a gather of bf16 values is exact
      free(got);
      lt_tensor g_ye = lt_gpu_upload(ye, dtype, 2, LT_SHAPE(rows, d));
      lt_tensor g_out = gpu_nan(dtype, 2, LT_SHAPE(n, d));
      assert_ok(lt_moe_combine(&lt_test_gpu, g_out, g_ye, g_gate, slot));
      got = lt_gpu_fetch(g_out);
      lt_gpu_expect_close("combine out", got, out, n * d, tol);
      free(got);
      lt_tensor g_dx = gpu_nan(dtype, 2, LT_SHAPE(n, d));
      assert_ok(lt_moe_dispatch_bwd(&lt_test_gpu, g_dx,
                                    lt_gpu_upload(dxe, dtype, 2, LT_SHAPE(rows, d)), slot));
      got = lt_gpu_fetch(g_dx);
      lt_gpu_expect_close("dispatch backward dx", got, dx, n * d, tol);
      free(got);
      lt_tensor g_dye = gpu_nan(dtype, 2, LT_SHAPE(rows, d));
      lt_tensor g_dgate = gpu_nan(LT_F32, 2, LT_SHAPE(n, k));
      assert_ok(lt_moe_combine_bwd(&lt_test_gpu, g_dye, g_dgate,
                                   lt_gpu_upload(dout, dtype, 2, LT_SHAPE(n, d)), g_ye, g_gate,
                                   slot));
      got = lt_gpu_fetch(g_dye);
      lt_gpu_expect_close("combine backward dye", got, dye, rows * d, tol);
      free(got);
      got = lt_gpu_fetch(g_dgate);
      lt_gpu_expect_close("combine backward dgate (f32)", got, dgate, n * k, 1e-5);
      free(got);
    }
    free(x), free(ye), free(dxe), free(dout), free(gate), free(xe), free(out), free(dx);
    free(dye), free(dgate);
    lt_gpu_free_all();
  }
  free(expert);
  plan_free(&p);
}

// --- the experts' GEMMs ---

enum { GROUPS = 5 };
static const int64_t group_rows[GROUPS + 1] = {0, 37, 37, 100, 164, 164}; // groups 1 and 4 empty

static void test_grouped_matmul_matches_cpu_with_empty_groups(void **state) {
  SKIP_WITHOUT_GPU();
  const int64_t r = group_rows[GROUPS], k = 64, n = 96;
  const struct {
    lt_dtype ab, c;
    double tol;
  } types[] = {{LT_BF16, LT_BF16, 1e-2}, {LT_BF16, LT_F32, 1e-5}, {LT_F32, LT_F32, 1e-5}};
  float *a = lt_gpu_random(r * k, 1.0f, true), *b = lt_gpu_random(GROUPS * n * k, 1.0f, true);
  float *want = malloc(sizeof(float) * r * n);
  for (int tb = 0; tb < 2; tb++) {
    const int64_t b_shape[3] = {GROUPS, tb ? n : k, tb ? k : n};
    assert_ok(lt_grouped_matmul(&lt_test_cpu, host(want, 2, LT_SHAPE(r, n)),
                                host(a, 2, LT_SHAPE(r, k)), host(b, 3, b_shape), tb, group_rows));
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
      lt_tensor c = gpu_nan(types[ti].c, 2, LT_SHAPE(r, n));
      assert_ok(lt_grouped_matmul(&lt_test_gpu, c,
                                  lt_gpu_upload(a, types[ti].ab, 2, LT_SHAPE(r, k)),
                                  lt_gpu_upload(b, types[ti].ab, 3, b_shape), tb, group_rows));
      float *got = lt_gpu_fetch(c);
      char what[64];
      snprintf(what, sizeof what, "grouped matmul a b%s, %s -> %s", tb ? "^T" : "",
               lt_dtype_name(types[ti].ab), lt_dtype_name(types[ti].c));
      lt_gpu_expect_close(what, got, want, r * n, types[ti].tol);
      free(got);
    }
    lt_gpu_free_all();
  }
  free(a), free(b), free(want);
}

static void test_grouped_weight_gradient_accumulates_and_leaves_empty_groups_alone(void **state) {
  SKIP_WITHOUT_GPU();
  const int64_t r = group_rows[GROUPS], m = 48, n = 40;
  float *a = lt_gpu_random(r * m, 1.0f, true), *b = lt_gpu_random(r * n, 1.0f, true);
  float *c0 = lt_gpu_random(GROUPS * m * n, 1.0f, false);
  float *want = malloc(sizeof(float) * GROUPS * m * n);
  memcpy(want, c0, sizeof(float) * GROUPS * m * n);
  assert_ok(lt_grouped_matmul_wgrad(&lt_test_cpu, host(want, 3, LT_SHAPE(GROUPS, m, n)),
                                    host(a, 2, LT_SHAPE(r, m)), host(b, 2, LT_SHAPE(r, n)),
                                    group_rows));
  for (int dt = 0; dt < 2; dt++) {
    const lt_dtype dtype = dt ? LT_BF16 : LT_F32;
    lt_tensor c = lt_gpu_upload(c0, LT_F32, 3, LT_SHAPE(GROUPS, m, n));
    assert_ok(lt_grouped_matmul_wgrad(&lt_test_gpu, c, lt_gpu_upload(a, dtype, 2, LT_SHAPE(r, m)),
                                      lt_gpu_upload(b, dtype, 2, LT_SHAPE(r, n)), group_rows));
    float *got = lt_gpu_fetch(c);
    lt_gpu_expect_close(dt ? "grouped wgrad += (bf16 operands)" : "grouped wgrad += (f32)", got,
                        want, GROUPS * m * n, 1e-5);
    for (int g = 0; g < GROUPS; g++)
      if (group_rows[g + 1] == group_rows[g])
        assert_memory_equal(got + g * m * n, c0 + g * m * n, sizeof(float) * m * n);
    free(got);
  }
  free(a), free(b), free(c0), free(want);
  lt_gpu_free_all();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_router_matches_cpu_with_ties_to_the_lower_expert),
      cmocka_unit_test(test_router_backward_matches_cpu_into_f32_and_bf16),
      cmocka_unit_test(test_dispatch_plan_equals_the_cpu_plan_with_drops_and_idle_experts),
      cmocka_unit_test(test_dispatch_and_combine_and_their_backwards_match_cpu),
      cmocka_unit_test(test_grouped_matmul_matches_cpu_with_empty_groups),
      cmocka_unit_test(test_grouped_weight_gradient_accumulates_and_leaves_empty_groups_alone),
  };
  return cmocka_run_group_tests(tests, lt_gpu_group_setup, lt_gpu_group_teardown);
}
