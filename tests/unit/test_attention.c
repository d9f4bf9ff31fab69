// The softmax attention primitive against a naive reference, and the properties ring attention
// builds on: partial results over key chunks merge to the full result, and the backward of each
// partial, given the final lse and delta, sums to the full backward.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention_case.h"
#include "kernels/kernels.h"
#include "testing.h"

static lt_ctx ctx;

// Outputs, lse and gradients here are O(1): errors are measured against that scale (floor 1.0),
// and fp32 against the double reference stays near 1e-6.

static void run_fwd(lt_test_attn_case *c) {
  assert_ok(lt_attn_fwd(&ctx, lt_test_attn_q(c, c->o), lt_test_attn_lse(c, c->lse),
                        lt_test_attn_q(c, c->q), lt_test_attn_kv(c, c->k), lt_test_attn_kv(c, c->v),
                        &c->spec));
}

// Softmax over all visible keys, in double.
static void naive_attention(const lt_test_attn_case *c, float *o, float *lse) {
  const int group = c->hq / c->hkv;
  double *s = malloc(sizeof(double) * c->Tk);
  for (int64_t b = 0; b < c->B; b++)
    for (int h = 0; h < c->hq; h++)
      for (int64_t i = 0; i < c->Tq; i++) {
        double mx = -INFINITY;
        for (int64_t j = 0; j < c->Tk; j++) {
          bool vis = c->k_pos[b * c->Tk + j] <= c->q_pos[b * c->Tq + i];
          if (c->spec.q_doc.data) vis = vis && c->q_doc[b * c->Tq + i] == c->k_doc[b * c->Tk + j];
          s[j] = -INFINITY;
          if (!vis) continue;
          double dot = 0;
          for (int x = 0; x < c->d; x++)
            dot += (double)c->q[((b * c->Tq + i) * c->hq + h) * c->d + x] *
                   c->k[((b * c->Tk + j) * c->hkv + h / group) * c->d + x];
          s[j] = dot * c->spec.scale;
          mx = fmax(mx, s[j]);
        }
        double sum = 0, acc[256] = {0};
        for (int64_t j = 0; j < c->Tk; j++) {
          if (s[j] == -INFINITY) continue;
          double p = exp(s[j] - mx);
          sum += p;
          for (int x = 0; x < c->d; x++)
            acc[x] += p * c->v[((b * c->Tk + j) * c->hkv + h / group) * c->d + x];
        }
        for (int x = 0; x < c->d; x++)
          o[((b * c->Tq + i) * c->hq + h) * c->d + x] = sum > 0 ? (float)(acc[x] / sum) : 0.0f;
        lse[(b * c->hq + h) * c->Tq + i] = sum > 0 ? (float)(mx + log(sum)) : -INFINITY;
      }
  free(s);
}

static void expect_matches_naive(int64_t B, int64_t Tq, int64_t Tk, int hq, int hkv, int d,
                                 bool docs) {
  lt_test_attn_case c;
  lt_test_attn_case_make(&c, B, Tq, Tk, hq, hkv, d, docs ? 19 : 0, false, 21);
  run_fwd(&c);
  float *o = malloc(sizeof(float) * B * Tq * hq * d), *lse = malloc(sizeof(float) * B * hq * Tq);
  naive_attention(&c, o, lse);
  assert_true(lt_test_max_rel_diff(c.o, o, B * Tq * hq * d, 1.0) < 1e-5);
  assert_true(lt_test_max_rel_diff(c.lse, lse, B * hq * Tq, 1.0) < 1e-5);
  free(o), free(lse);
  lt_test_attn_case_free(&c);
}

static void test_tiled_attention_matches_naive(void **state) {
  (void)state;
  expect_matches_naive(2, 77, 77, 4, 4, 16, false); // 77: three tiles, the last partial
}

static void test_tiled_attention_with_grouped_heads_matches_naive(void **state) {
  (void)state;
  expect_matches_naive(2, 70, 70, 6, 2, 8, false);
}

static void test_tiled_attention_with_document_mask_matches_naive(void **state) {
  (void)state;
  expect_matches_naive(1, 90, 90, 4, 2, 8, true);
}

static void test_query_chunk_at_the_end_of_the_keys_matches_naive(void **state) {
  (void)state;
  expect_matches_naive(2, 33, 100, 4, 2, 8, false); // queries at positions 67..99
}

static void test_query_seeing_no_key_gets_zero_output_and_empty_lse(void **state) {
  (void)state;
  lt_test_attn_case c;
  lt_test_attn_case_make(&c, 1, 4, 8, 2, 2, 4, 0, false, 3);
  for (int j = 0; j < 8; j++) c.k_pos[j] = 100 + j; // all keys in the queries' future
  run_fwd(&c);
  for (int i = 0; i < 2 * 4; i++) assert_true(c.lse[i] == -INFINITY);
  assert_true(lt_test_max_abs(c.o, 4 * 2 * 4) == 0.0);
  lt_test_attn_case_free(&c);
}

static void test_grouped_query_attention_equals_multi_head_with_repeated_kv(void **state) {
  (void)state;
  lt_test_attn_case g, m;
  lt_test_attn_case_make(&g, 2, 40, 40, 6, 2, 8, 0, false, 5);
  lt_test_attn_case_make(&m, 2, 40, 40, 6, 6, 8, 0, false, 5);
  memcpy(m.q, g.q, sizeof(float) * 2 * 40 * 6 * 8);
  for (int64_t t = 0; t < 2 * 40; t++)
    for (int h = 0; h < 6; h++) {
      memcpy(m.k + (t * 6 + h) * 8, g.k + (t * 2 + h / 3) * 8, 8 * sizeof(float));
      memcpy(m.v + (t * 6 + h) * 8, g.v + (t * 2 + h / 3) * 8, 8 * sizeof(float));
    }
  run_fwd(&g);
  run_fwd(&m);
  assert_true(lt_test_max_rel_diff(g.o, m.o, 2 * 40 * 6 * 8, 1e-6) == 0.0);
  assert_true(lt_test_max_rel_diff(g.lse, m.lse, 2 * 6 * 40, 1e-6) == 0.0);
  lt_test_attn_case_free(&g), lt_test_attn_case_free(&m);
}

static void test_merged_partials_over_key_chunks_equal_full_attention(void **state) {
  (void)state;
  lt_test_attn_case full, parts[3];
  lt_test_attn_case_make(&full, 2, 60, 60, 4, 2, 8, 19, false, 9);
  run_fwd(&full);
  const int64_t starts[3] = {0, 25, 41}, counts[3] = {25, 16, 19};
  float *o = calloc(2 * 60 * 4 * 8, sizeof(float)), *lse = malloc(sizeof(float) * 2 * 4 * 60);
  for (int i = 0; i < 2 * 4 * 60; i++) lse[i] = -INFINITY; // the empty partial
  for (int p = 2; p >= 0; p--) {                           // any order: the merge is commutative
    lt_test_attn_key_chunk(&full, &parts[p], starts[p], counts[p]);
    run_fwd(&parts[p]);
    assert_ok(lt_attn_merge(&ctx, lt_test_attn_q(&full, o), lt_test_attn_lse(&full, lse),
                            lt_test_attn_q(&full, parts[p].o),
                            lt_test_attn_lse(&full, parts[p].lse)));
  }
  assert_true(lt_test_max_rel_diff(o, full.o, 2 * 60 * 4 * 8, 1.0) < 1e-5);
  assert_true(lt_test_max_rel_diff(lse, full.lse, 2 * 4 * 60, 1.0) < 1e-5);
  // Backward: each chunk's partial backward with the final lse and delta gives that chunk's dk, dv
  // and a share of dq; the shares sum to the full dq.
  const int64_t nq = 2 * 60 * 4 * 8, nk = 2 * 60 * 2 * 8;
  float *dout = malloc(sizeof(float) * nq), *delta = malloc(sizeof(float) * 2 * 4 * 60);
  lt_test_fill_normal(dout, nq, 77, 1.0f);
  assert_ok(lt_attn_bwd_delta(&ctx, lt_test_attn_lse(&full, delta), lt_test_attn_q(&full, dout),
                              lt_test_attn_q(&full, full.o)));
  float *dq = calloc(nq, 4), *dk = calloc(nk, 4), *dv = calloc(nk, 4);
  assert_ok(lt_attn_bwd(&ctx, lt_test_attn_q(&full, dq), lt_test_attn_kv(&full, dk),
                        lt_test_attn_kv(&full, dv), lt_test_attn_q(&full, dout),
                        lt_test_attn_q(&full, full.q), lt_test_attn_kv(&full, full.k),
                        lt_test_attn_kv(&full, full.v), lt_test_attn_lse(&full, full.lse),
                        lt_test_attn_lse(&full, delta), &full.spec));
  float *dq_sum = calloc(nq, 4);
  for (int p = 0; p < 3; p++) {
    lt_test_attn_case *c = &parts[p];
    const int64_t n = 2 * counts[p] * 2 * 8, row = 2 * 8;
    float *pdk = malloc(4 * n), *pdv = malloc(4 * n);
    for (int64_t i = 0; i < n; i++) pdk[i] = pdv[i] = NAN; // written, whatever they held
    assert_ok(lt_attn_bwd(&ctx, lt_test_attn_q(c, dq_sum), lt_test_attn_kv(c, pdk),
                          lt_test_attn_kv(c, pdv), lt_test_attn_q(c, dout), lt_test_attn_q(c, c->q),
                          lt_test_attn_kv(c, c->k), lt_test_attn_kv(c, c->v),
                          lt_test_attn_lse(&full, full.lse), lt_test_attn_lse(&full, delta),
                          &c->spec));
    for (int64_t b = 0; b < 2; b++) {
      assert_true(lt_test_max_rel_diff(pdk + b * counts[p] * row, dk + (b * 60 + starts[p]) * row,
                                       counts[p] * row, 1.0) < 1e-5);
      assert_true(lt_test_max_rel_diff(pdv + b * counts[p] * row, dv + (b * 60 + starts[p]) * row,
                                       counts[p] * row, 1.0) < 1e-5);
    }
    free(pdk), free(pdv);
    lt_test_attn_case_free(c);
  }
  assert_true(lt_test_max_rel_diff(dq_sum, dq, nq, 1.0) < 1e-5);
  free(o), free(lse), free(dout), free(delta), free(dq), free(dk), free(dv), free(dq_sum);
  lt_test_attn_case_free(&full);
}

static void test_fully_masked_tiles_are_skipped_without_changing_results(void **state) {
  (void)state;
  // Keys far in the queries' past and future: the future tiles must contribute nothing.
  lt_test_attn_case c;
  lt_test_attn_case_make(&c, 1, 32, 96, 2, 2, 8, 0, false, 4);
  for (int j = 0; j < 96; j++) c.k_pos[j] = j < 48 ? j : 1000 + j; // second half in the future
  for (int i = 0; i < 32; i++) c.q_pos[i] = 40 + i;
  run_fwd(&c);
  float *o = malloc(sizeof(float) * 32 * 2 * 8), *lse = malloc(sizeof(float) * 2 * 32);
  naive_attention(&c, o, lse);
  assert_true(lt_test_max_rel_diff(c.o, o, 32 * 2 * 8, 1.0) < 1e-5);
  free(o), free(lse);
  lt_test_attn_case_free(&c);
}

int main(void) {
  lt_ctx_init(&ctx, LT_CPU, 2);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tiled_attention_matches_naive),
      cmocka_unit_test(test_tiled_attention_with_grouped_heads_matches_naive),
      cmocka_unit_test(test_tiled_attention_with_document_mask_matches_naive),
      cmocka_unit_test(test_query_chunk_at_the_end_of_the_keys_matches_naive),
      cmocka_unit_test(test_query_seeing_no_key_gets_zero_output_and_empty_lse),
      cmocka_unit_test(test_grouped_query_attention_equals_multi_head_with_repeated_kv),
      cmocka_unit_test(test_merged_partials_over_key_chunks_equal_full_attention),
      cmocka_unit_test(test_fully_masked_tiles_are_skipped_without_changing_results),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
