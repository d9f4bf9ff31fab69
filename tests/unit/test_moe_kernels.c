// The mixture-of-experts kernels against hand-worked cases and naive references: the router's
// softmax and top-k, the dispatch plan (grouping by expert, capacity, priority), the grouped
// GEMMs against one matmul per group, and dispatch / combine against their transposes.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "testing.h"

static lt_ctx ctx;

static int setup(void **state) {
  (void)state;
  return lt_ctx_init(&ctx, LT_CPU, 2);
}

#define F32(p, ...)  lt_view((p), LT_F32, LT_CPU, LT_NDIM(__VA_ARGS__), LT_SHAPE(__VA_ARGS__))
#define I32(p, ...)  lt_view((p), LT_I32, LT_CPU, LT_NDIM(__VA_ARGS__), LT_SHAPE(__VA_ARGS__))
#define LT_NDIM(...) ((int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))

// --- the router ---

static void test_router_picks_the_top_k_best_first_with_ties_to_the_lower_index(void **state) {
  (void)state;
  // Token 0: a clear order 3 > 1 > rest. Token 1: experts 0 and 2 tie for first.
  float logits[2 * 4] = {0.0f, 1.0f, -1.0f, 2.0f, 0.5f, -2.0f, 0.5f, 0.0f};
  float gate[4], probs[8], lse[2], prob_sum[4];
  int32_t expert[4];
  assert_ok(lt_moe_route(&ctx, F32(gate, 2, 2), I32(expert, 2, 2), F32(probs, 2, 4), F32(lse, 2),
                         F32(prob_sum, 4), F32(logits, 2, 4), false));
  assert_int_equal(expert[0], 3), assert_int_equal(expert[1], 1);
  assert_int_equal(expert[2], 0), assert_int_equal(expert[3], 2);
  for (int t = 0; t < 2; t++) {
    double sum = 0;
    for (int j = 0; j < 4; j++) sum += exp(logits[t * 4 + j]);
    assert_float_equal(lse[t], log(sum), 1e-6);
    for (int j = 0; j < 4; j++)
      assert_float_equal(probs[t * 4 + j], exp(logits[t * 4 + j]) / sum, 1e-7);
    // Plain gates are the probabilities themselves.
    for (int s = 0; s < 2; s++)
      assert_float_equal(gate[t * 2 + s], probs[t * 4 + expert[t * 2 + s]], 0);
  }
  for (int j = 0; j < 4; j++) assert_float_equal(prob_sum[j], probs[j] + probs[4 + j], 1e-7);
}

static void test_renormalized_gates_are_the_softmax_over_the_chosen_logits(void **state) {
  (void)state;
  float logits[5] = {0.3f, -1.0f, 2.0f, 1.1f, 0.0f};
  float gate[3], probs[5], lse[1], prob_sum[5];
  int32_t expert[3];
  assert_ok(lt_moe_route(&ctx, F32(gate, 1, 3), I32(expert, 1, 3), F32(probs, 1, 5), F32(lse, 1),
                         F32(prob_sum, 5), F32(logits, 1, 5), true));
  assert_int_equal(expert[0], 2), assert_int_equal(expert[1], 3), assert_int_equal(expert[2], 0);
  double z = exp(2.0) + exp(1.1) + exp(0.3);
  assert_float_equal(gate[0], exp(2.0) / z, 1e-6);
  assert_float_equal(gate[1], exp(1.1) / z, 1e-6);
  assert_float_equal(gate[2], exp(0.3) / z, 1e-6);
}

// --- the dispatch plan ---

static void test_dispatch_plan_groups_rows_by_expert_in_token_order(void **state) {
  (void)state;
  // 4 tokens, 3 experts, k = 2, dropless.
  int32_t expert[8] = {2, 0, /**/ 0, 1, /**/ 2, 1, /**/ 0, 2};
  int32_t slot_row[8], row_token[8], offsets[4], counts[3];
  assert_ok(lt_moe_dispatch_plan(&ctx, I32(slot_row, 4, 2), I32(row_token, 8), I32(offsets, 4),
                                 I32(counts, 3), I32(expert, 4, 2), 0));
  const int32_t want_counts[3] = {3, 2, 3}, want_offsets[4] = {0, 3, 5, 8};
  // Expert 0 holds tokens 0, 1, 3; expert 1 tokens 1, 2; expert 2 tokens 0, 2, 3.
  const int32_t want_rows[8] = {5, 0, 1, 3, 6, 4, 2, 7}, want_tokens[8] = {0, 1, 3, 1, 2, 0, 2, 3};
  assert_memory_equal(counts, want_counts, sizeof counts);
  assert_memory_equal(offsets, want_offsets, sizeof offsets);
  assert_memory_equal(slot_row, want_rows, sizeof slot_row);
  assert_memory_equal(row_token, want_tokens, sizeof row_token);
}

static void test_dispatch_plan_drops_past_capacity_first_choices_first(void **state) {
  (void)state;
  // Expert 0 is the first choice of tokens 2, 3 and the second of tokens 0, 1, 4: with capacity 2
  // it admits the two first choices and drops the rest. Expert 1 admits the first two of its three
  // first choices (tokens 0, 1) and drops token 4's and token 2's second choice.
  int32_t expert[10] = {1, 0, /**/ 1, 0, /**/ 0, 1, /**/ 0, 2, /**/ 1, 0};
  int32_t slot_row[10], row_token[10], offsets[4], counts[3];
  assert_ok(lt_moe_dispatch_plan(&ctx, I32(slot_row, 5, 2), I32(row_token, 10), I32(offsets, 4),
                                 I32(counts, 3), I32(expert, 5, 2), 2));
  const int32_t want_counts[3] = {5, 4, 1}, want_offsets[4] = {0, 2, 4, 5};
  const int32_t want_rows[10] = {2, -1, /**/ 3, -1, /**/ 0, -1, /**/ 1, 4, /**/ -1, -1};
  const int32_t want_tokens[10] = {2, 3, 0, 1, 3, -1, -1, -1, -1, -1};
  assert_memory_equal(counts, want_counts, sizeof counts);
  assert_memory_equal(offsets, want_offsets, sizeof offsets);
  assert_memory_equal(slot_row, want_rows, sizeof slot_row);
  assert_memory_equal(row_token, want_tokens, sizeof row_token);
}

// --- grouped GEMMs ---

// c = a op(b) in double, for one group.
static void naive_matmul(float *c, const float *a, const float *b, bool trans_b, int64_t m,
                         int64_t n, int64_t k) {
  for (int64_t i = 0; i < m; i++)
    for (int64_t j = 0; j < n; j++) {
      double sum = 0;
      for (int64_t x = 0; x < k; x++)
        sum += (double)a[i * k + x] * (trans_b ? b[j * k + x] : b[x * n + j]);
      c[i * n + j] = (float)sum;
    }
}

static void expect_grouped_matmul_matches(bool trans_b) {
  const int64_t groups = 4, n = 7, k = 5, rows[5] = {0, 3, 3, 9, 10}; // group 1 is empty
  const int64_t total = 11; // one row past the last group, which the product leaves alone
  float *a = malloc(sizeof(float) * total * k), *b = malloc(sizeof(float) * groups * n * k);
  float *c = malloc(sizeof(float) * total * n), *want = malloc(sizeof(float) * total * n);
  lt_test_fill_normal(a, total * k, 1, 1.0f);
  lt_test_fill_normal(b, groups * n * k, 2, 1.0f);
  for (int64_t i = 0; i < total * n; i++) c[i] = want[i] = 42.0f;
  for (int64_t g = 0; g < groups; g++)
    naive_matmul(want + rows[g] * n, a + rows[g] * k, b + g * n * k, trans_b, rows[g + 1] - rows[g],
                 n, k);
  lt_tensor bt = trans_b ? F32(b, groups, n, k) : F32(b, groups, k, n);
  assert_ok(lt_grouped_matmul(&ctx, F32(c, total, n), F32(a, total, k), bt, trans_b, rows));
  assert_true(lt_test_max_rel_diff(c, want, total * n, 1.0) < 1e-5);
  free(a), free(b), free(c), free(want);
}

static void test_grouped_matmul_equals_one_matmul_per_group(void **state) {
  (void)state;
  expect_grouped_matmul_matches(true);
  expect_grouped_matmul_matches(false);
}

static void test_grouped_weight_gradient_accumulates_each_groups_product(void **state) {
  (void)state;
  const int64_t groups = 3, m = 4, n = 6, rows[4] = {0, 5, 5, 8};
  float *a = malloc(sizeof(float) * 8 * m), *b = malloc(sizeof(float) * 8 * n);
  float *c = malloc(sizeof(float) * groups * m * n), *want = malloc(sizeof(float) * groups * m * n);
  lt_test_fill_normal(a, 8 * m, 3, 1.0f);
  lt_test_fill_normal(b, 8 * n, 4, 1.0f);
  lt_test_fill_normal(c, groups * m * n, 5, 1.0f);
  memcpy(want, c, sizeof(float) * groups * m * n);
  for (int64_t g = 0; g < groups; g++)
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < n; j++)
        for (int64_t r = rows[g]; r < rows[g + 1]; r++)
          want[(g * m + i) * n + j] += a[r * m + i] * b[r * n + j];
  assert_ok(lt_grouped_matmul_wgrad(&ctx, F32(c, groups, m, n), F32(a, 8, m), F32(b, 8, n), rows));
  assert_true(lt_test_max_rel_diff(c, want, groups * m * n, 1.0) < 1e-5);
  free(a), free(b), free(c), free(want);
}

// --- dispatch and combine, and their backwards as transposes ---

static double dot(const float *a, const float *b, int64_t n) {
  double sum = 0;
  for (int64_t i = 0; i < n; i++) sum += (double)a[i] * b[i];
  return sum;
}

// A plan with two dropped choices: 5 tokens, 3 experts, k = 2, capacity 3.
typedef struct plan_case {
  int32_t expert[10], slot_row[10], row_token[10], offsets[4], counts[3];
  int64_t rows;
} plan_case;

static void make_plan(plan_case *p) {
  const int32_t expert[10] = {0, 1, 1, 2, 0, 2, 1, 0, 0, 1};
  memcpy(p->expert, expert, sizeof expert);
  assert_ok(lt_moe_dispatch_plan(&ctx, I32(p->slot_row, 5, 2), I32(p->row_token, 10),
                                 I32(p->offsets, 4), I32(p->counts, 3), I32(p->expert, 5, 2), 3));
  p->rows = p->offsets[3];
  assert_int_equal(p->rows, 8); // experts 0 and 1 are each offered 4 choices and keep 3
}

static void test_dispatch_backward_is_the_transpose_of_dispatch(void **state) {
  (void)state;
  plan_case p;
  make_plan(&p);
  const int64_t n = 5, d = 6;
  float x[5 * 6], xe[8 * 6], dxe[8 * 6], dx[5 * 6];
  lt_test_fill_normal(x, n * d, 6, 1.0f);
  lt_test_fill_normal(dxe, p.rows * d, 7, 1.0f);
  assert_ok(lt_moe_dispatch(&ctx, F32(xe, p.rows, d), F32(x, n, d), I32(p.row_token, 10)));
  for (int64_t r = 0; r < p.rows; r++)
    assert_memory_equal(xe + r * d, x + p.row_token[r] * d, sizeof(float) * d);
  assert_ok(lt_moe_dispatch_bwd(&ctx, F32(dx, n, d), F32(dxe, p.rows, d), I32(p.slot_row, 5, 2)));
  // <dispatch(x), dxe> = <x, dispatch_bwd(dxe)>
  assert_float_equal(dot(xe, dxe, p.rows * d), dot(x, dx, n * d), 1e-5);
}

static void test_combine_weights_kept_choices_and_its_backward_is_the_transpose(void **state) {
  (void)state;
  plan_case p;
  make_plan(&p);
  const int64_t n = 5, d = 6;
  float ye[8 * 6], gate[10], out[5 * 6], dout[5 * 6], dye[8 * 6], dgate[10];
  lt_test_fill_normal(ye, p.rows * d, 8, 1.0f);
  lt_test_fill_normal(gate, 10, 9, 1.0f);
  lt_test_fill_normal(dout, n * d, 10, 1.0f);
  assert_ok(lt_moe_combine(&ctx, F32(out, n, d), F32(ye, p.rows, d), F32(gate, 5, 2),
                           I32(p.slot_row, 5, 2)));
  for (int64_t t = 0; t < n; t++)
    for (int64_t i = 0; i < d; i++) {
      double want = 0;
      for (int s = 0; s < 2; s++)
        if (p.slot_row[t * 2 + s] >= 0) want += gate[t * 2 + s] * ye[p.slot_row[t * 2 + s] * d + i];
      assert_float_equal(out[t * d + i], want, 1e-6);
    }
  assert_ok(lt_moe_combine_bwd(&ctx, F32(dye, p.rows, d), F32(dgate, 5, 2), F32(dout, n, d),
                               F32(ye, p.rows, d), F32(gate, 5, 2), I32(p.slot_row, 5, 2)));
  // Linear in ye: <combine(ye), dout> = <ye, dye>; and dgate is d<out, dout>/dgate.
  assert_float_equal(dot(out, dout, n * d), dot(ye, dye, p.rows * d), 1e-5);
  for (int t = 0; t < 5; t++)
    for (int s = 0; s < 2; s++) {
      const int32_t row = p.slot_row[t * 2 + s];
      const double want = row < 0 ? 0.0 : dot(dout + t * d, ye + row * d, d);
      assert_float_equal(dgate[t * 2 + s], want, 1e-5);
    }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_router_picks_the_top_k_best_first_with_ties_to_the_lower_index),
      cmocka_unit_test(test_renormalized_gates_are_the_softmax_over_the_chosen_logits),
      cmocka_unit_test(test_dispatch_plan_groups_rows_by_expert_in_token_order),
      cmocka_unit_test(test_dispatch_plan_drops_past_capacity_first_choices_first),
      cmocka_unit_test(test_grouped_matmul_equals_one_matmul_per_group),
      cmocka_unit_test(test_grouped_weight_gradient_accumulates_each_groups_product),
      cmocka_unit_test(test_dispatch_backward_is_the_transpose_of_dispatch),
      cmocka_unit_test(test_combine_weights_kept_choices_and_its_backward_is_the_transpose),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
