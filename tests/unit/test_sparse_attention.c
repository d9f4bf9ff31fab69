// Sparse attention: sliding windows, sink tokens and block patterns in the tiled kernel equal
// dense attention under the same explicit mask (forward and backward, in double precision),
// compose with document masks and with query and key chunks (context parallelism), and the work
// (tiles visited) grows with the visible blocks, not with the square of the sequence. The layer
// (kind sparse) applies model.sparse's pattern, and bad settings are one-line config errors.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "attention_case.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/kernels.h"
#include "layer_harness.h"
#include "layers/attention/softmax.h"
#include "testing.h"

static lt_ctx ctx;

// A case (attention_case.h) under a sparse pattern.
static void make_case(lt_test_attn_case *c, int64_t B, int64_t Tq, int64_t Tk, int hq, int hkv,
                      int d, lt_attn_sparsity pattern, int doc_len, bool restart, uint64_t seed) {
  lt_test_attn_case_make(c, B, Tq, Tk, hq, hkv, d, doc_len, restart, seed);
  c->spec.sparse = pattern;
}

// The mask written out from the definitions, independently of the kernel's tile logic: the
// window as the key range [q - w + 1, q + w - 1], strided blocks by stepping back `stride` blocks
// at a time.
static bool reference_visible(const lt_test_attn_case *c, int64_t b, int64_t i, int64_t j) {
  const int32_t qp = c->q_pos[b * c->Tq + i], kp = c->k_pos[b * c->Tk + j];
  if (c->spec.causal && kp > qp) return false;
  if (c->spec.q_doc.data && c->q_doc[b * c->Tq + i] != c->k_doc[b * c->Tk + j]) return false;
  const lt_attn_sparsity *p = &c->spec.sparse;
  if (!p->window && !p->sinks && !p->local_blocks && !p->stride && !p->global_blocks) return true;
  if (p->window && kp > qp - p->window && kp < qp + p->window) return true;
  if (p->sinks && kp < p->sinks) return true;
  if (!p->block_size) return false;
  const int32_t qb = qp / p->block_size, kb = kp / p->block_size;
  if (p->local_blocks && kb > qb - p->local_blocks && kb < qb + p->local_blocks) return true;
  if (p->global_blocks && kb < p->global_blocks) return true;
  if (p->stride)
    for (int32_t blk = qb; blk >= 0; blk -= p->stride)
      if (blk == kb) return true;
  if (p->stride && !c->spec.causal)
    for (int32_t blk = qb; blk <= kb; blk += p->stride)
      if (blk == kb) return true;
  return false;
}

// Dense attention in double under reference_visible: o and lse, and with dout the gradients
// (P = exp(S - lse), dV = P^T dO, dS = P (dO V^T - rowsum(dO o)), dQ = s dS K, dK = s dS^T Q).
static void dense_reference(const lt_test_attn_case *c, const float *dout, double *o, double *lse,
                            double *dq, double *dk, double *dv) {
  const int group = c->hq / c->hkv, d = c->d;
  double *p = malloc(sizeof(double) * c->Tk);
  for (int64_t b = 0; b < c->B; b++)
    for (int h = 0; h < c->hq; h++)
      for (int64_t i = 0; i < c->Tq; i++) {
        const int64_t qo = ((b * c->Tq + i) * c->hq + h) * d;
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < c->Tk; j++) {
          p[j] = -INFINITY;
          if (!reference_visible(c, b, i, j)) continue;
          const int64_t ko = ((b * c->Tk + j) * c->hkv + h / group) * d;
          double s = 0;
          for (int x = 0; x < d; x++) s += (double)c->q[qo + x] * c->k[ko + x];
          p[j] = s * c->spec.scale;
          mx = fmax(mx, p[j]);
        }
        for (int64_t j = 0; j < c->Tk; j++) sum += p[j] == -INFINITY ? 0 : exp(p[j] - mx);
        lse[(b * c->hq + h) * c->Tq + i] = sum > 0 ? mx + log(sum) : -INFINITY;
        for (int x = 0; x < d; x++) o[qo + x] = 0;
        for (int64_t j = 0; j < c->Tk; j++) {
          p[j] = p[j] == -INFINITY ? 0 : exp(p[j] - mx) / sum;
          const int64_t ko = ((b * c->Tk + j) * c->hkv + h / group) * d;
          for (int x = 0; x < d; x++) o[qo + x] += p[j] * c->v[ko + x];
        }
        if (!dout) continue;
        double delta = 0;
        for (int x = 0; x < d; x++) delta += dout[qo + x] * o[qo + x];
        for (int64_t j = 0; j < c->Tk; j++) {
          if (p[j] == 0) continue;
          const int64_t ko = ((b * c->Tk + j) * c->hkv + h / group) * d;
          double dp = 0;
          for (int x = 0; x < d; x++) dp += (double)dout[qo + x] * c->v[ko + x];
          const double ds = p[j] * (dp - delta) * c->spec.scale;
          for (int x = 0; x < d; x++) {
            dv[ko + x] += p[j] * dout[qo + x];
            dq[qo + x] += ds * c->k[ko + x];
            dk[ko + x] += ds * c->q[qo + x];
          }
        }
      }
  free(p);
}

static double max_diff(const float *a, const double *b, int64_t n) {
  double worst = 0;
  for (int64_t i = 0; i < n; i++) {
    if (isinf(b[i]) && a[i] == b[i]) continue;
    worst = fmax(worst, fabs(a[i] - b[i]) / fmax(fabs(b[i]), 1.0));
  }
  return worst;
}

// The kernel's forward and backward against dense_reference; returns the worst relative error.
static double sparse_vs_dense(lt_test_attn_case *c) {
  const int64_t nq = c->B * c->Tq * c->hq * c->d, nk = c->B * c->Tk * c->hkv * c->d;
  const int64_t nl = c->B * c->hq * c->Tq;
  float *dout = malloc(sizeof(float) * nq), *delta = malloc(sizeof(float) * nl);
  float *dq = calloc(nq, 4), *dk = calloc(nk, 4), *dv = calloc(nk, 4);
  double *ro = calloc(nq, 8), *rl = calloc(nl, 8), *rdq = calloc(nq, 8), *rdk = calloc(nk, 8),
         *rdv = calloc(nk, 8);
  lt_test_fill_normal(dout, nq, 99, 1.0f);
  assert_ok(lt_attn_fwd(&ctx, lt_test_attn_q(c, c->o), lt_test_attn_lse(c, c->lse),
                        lt_test_attn_q(c, c->q), lt_test_attn_kv(c, c->k), lt_test_attn_kv(c, c->v),
                        &c->spec));
  assert_ok(lt_attn_bwd_delta(&ctx, lt_test_attn_lse(c, delta), lt_test_attn_q(c, dout),
                              lt_test_attn_q(c, c->o)));
  assert_ok(lt_attn_bwd(&ctx, lt_test_attn_q(c, dq), lt_test_attn_kv(c, dk), lt_test_attn_kv(c, dv),
                        lt_test_attn_q(c, dout), lt_test_attn_q(c, c->q), lt_test_attn_kv(c, c->k),
                        lt_test_attn_kv(c, c->v), lt_test_attn_lse(c, c->lse),
                        lt_test_attn_lse(c, delta), &c->spec));
  dense_reference(c, dout, ro, rl, rdq, rdk, rdv);
  double worst = fmax(max_diff(c->o, ro, nq), max_diff(c->lse, rl, nl));
  worst =
      fmax(worst, fmax(max_diff(dq, rdq, nq), fmax(max_diff(dk, rdk, nk), max_diff(dv, rdv, nk))));
  free(dout), free(delta), free(dq), free(dk), free(dv);
  free(ro), free(rl), free(rdq), free(rdk), free(rdv);
  return worst;
}

// The fraction of visible (query, key) pairs among the causal ones: a case must mask a real share
// of pairs, or its comparison with dense attention shows nothing.
static double visible_share(const lt_test_attn_case *c) {
  int64_t seen = 0, causal = 0;
  for (int64_t i = 0; i < c->Tq; i++)
    for (int64_t j = 0; j < c->Tk; j++) {
      causal += c->k_pos[j] <= c->q_pos[i];
      seen += reference_visible(c, 0, i, j);
    }
  return (double)seen / (double)causal;
}

static void expect_equals_dense(lt_attn_sparsity pattern, int64_t Tq, int64_t Tk, int doc_len,
                                bool restart) {
  lt_test_attn_case c;
  make_case(&c, 2, Tq, Tk, 4, 2, 8, pattern, doc_len, restart, 31);
  double share = visible_share(&c);
  assert_true(share > 0.05 && share < 0.7);
  assert_true(sparse_vs_dense(&c) < 1e-5);
  lt_test_attn_case_free(&c);
}

static void test_sliding_window_equals_dense_attention_under_the_same_mask(void **state) {
  (void)state;
  expect_equals_dense((lt_attn_sparsity){.window = 20}, 100, 100, 0, false);
}

static void test_sinks_with_a_window_equal_dense_attention_under_the_same_mask(void **state) {
  (void)state;
  expect_equals_dense((lt_attn_sparsity){.window = 16, .sinks = 5}, 110, 110, 0, false);
}

static void test_local_and_strided_blocks_equal_dense_attention_under_the_same_mask(void **state) {
  (void)state;
  expect_equals_dense((lt_attn_sparsity){.block_size = 8, .local_blocks = 2, .stride = 5}, 130, 130,
                      0, false);
}

static void test_local_and_global_blocks_equal_dense_attention_under_the_same_mask(void **state) {
  (void)state;
  expect_equals_dense((lt_attn_sparsity){.block_size = 16, .local_blocks = 1, .global_blocks = 2},
                      140, 140, 0, false);
}

static void test_every_part_together_equals_dense_attention_under_the_same_mask(void **state) {
  (void)state;
  expect_equals_dense((lt_attn_sparsity){.window = 9,
                                         .sinks = 3,
                                         .block_size = 12,
                                         .local_blocks = 1,
                                         .stride = 4,
                                         .global_blocks = 1},
                      150, 150, 0, false);
}

static void test_document_masks_compose_with_sparse_patterns(void **state) {
  (void)state;
  const lt_attn_sparsity pattern = {
      .window = 10, .sinks = 2, .block_size = 8, .local_blocks = 1, .stride = 3};
  expect_equals_dense(pattern, 140, 140, 53, false);
  // Positions restarting at each document: the sinks and blocks count from each one's start.
  expect_equals_dense(pattern, 140, 140, 53, true);
}

static void test_query_chunk_at_an_offset_masks_by_absolute_position(void **state) {
  (void)state;
  // Queries at positions 90..129 over keys 0..129: what a later context-parallel rank holds.
  expect_equals_dense((lt_attn_sparsity){.window = 24, .sinks = 4}, 40, 130, 0, false);
  expect_equals_dense((lt_attn_sparsity){.block_size = 8, .local_blocks = 2, .stride = 4}, 40, 130,
                      0, false);
}

static void test_bidirectional_window_and_blocks_equal_dense_attention(void **state) {
  (void)state;
  lt_test_attn_case c;
  make_case(&c, 2, 90, 90, 2, 2, 8,
            (lt_attn_sparsity){.window = 7, .block_size = 8, .local_blocks = 1, .stride = 4}, 0,
            false, 5);
  c.spec.causal = false;
  assert_true(sparse_vs_dense(&c) < 1e-5);
  lt_test_attn_case_free(&c);
}

static void test_partials_over_key_chunks_merge_to_full_sparse_attention(void **state) {
  (void)state;
  // Ring attention's contract under a sparse pattern: a key chunk that only the sinks make
  // visible, one that the window reaches, one that nothing reaches (lse -inf everywhere).
  lt_test_attn_case full, part;
  const lt_attn_sparsity pattern = {.window = 20, .sinks = 4};
  make_case(&full, 1, 40, 160, 4, 2, 8, pattern, 0, false, 13);
  assert_ok(lt_attn_fwd(&ctx, lt_test_attn_q(&full, full.o), lt_test_attn_lse(&full, full.lse),
                        lt_test_attn_q(&full, full.q), lt_test_attn_kv(&full, full.k),
                        lt_test_attn_kv(&full, full.v), &full.spec));
  const int64_t nq = 40 * 4 * 8, nl = 4 * 40;
  float *o = calloc(nq, 4), *lse = malloc(sizeof(float) * nl);
  for (int64_t i = 0; i < nl; i++) lse[i] = -INFINITY;
  const int64_t starts[4] = {0, 32, 64, 100}, counts[4] = {32, 32, 36, 60};
  for (int p = 0; p < 4; p++) {
    lt_test_attn_key_chunk(&full, &part, starts[p], counts[p]);
    assert_ok(lt_attn_fwd(&ctx, lt_test_attn_q(&part, part.o), lt_test_attn_lse(&part, part.lse),
                          lt_test_attn_q(&part, part.q), lt_test_attn_kv(&part, part.k),
                          lt_test_attn_kv(&part, part.v), &part.spec));
    if (p == 1) assert_true(lt_test_max_abs(part.o, nq) == 0.0); // keys 32..63: nothing visible
    assert_ok(lt_attn_merge(&ctx, lt_test_attn_q(&full, o), lt_test_attn_lse(&full, lse),
                            lt_test_attn_q(&part, part.o), lt_test_attn_lse(&part, part.lse)));
    lt_test_attn_case_free(&part);
  }
  assert_true(lt_test_max_rel_diff(o, full.o, nq, 1.0) < 1e-5);
  assert_true(lt_test_max_rel_diff(lse, full.lse, nl, 1.0) < 1e-5);
  free(o), free(lse);
  lt_test_attn_case_free(&full);
}

// Tiles of LT_CPU_ATTN_TILE queries by LT_CPU_ATTN_TILE keys that hold a visible pair, for one
// batch row and head, counted from reference_visible.
static int64_t tiles_with_a_visible_pair(const lt_test_attn_case *c) {
  const int64_t t = LT_CPU_ATTN_TILE;
  int64_t count = 0;
  for (int64_t i0 = 0; i0 < c->Tq; i0 += t)
    for (int64_t j0 = 0; j0 < c->Tk; j0 += t) {
      bool any = false;
      for (int64_t i = i0; i < i0 + t && i < c->Tq && !any; i++)
        for (int64_t j = j0; j < j0 + t && j < c->Tk && !any; j++)
          any = reference_visible(c, 0, i, j);
      count += any;
    }
  return count;
}

// Tiles the forward visits for one batch row and head (the case has one of each).
static int64_t forward_tiles(lt_test_attn_case *c) {
  int64_t visited = 0;
  c->spec.tiles_visited = &visited;
  assert_ok(lt_attn_fwd(&ctx, lt_test_attn_q(c, c->o), lt_test_attn_lse(c, c->lse),
                        lt_test_attn_q(c, c->q), lt_test_attn_kv(c, c->k), lt_test_attn_kv(c, c->v),
                        &c->spec));
  c->spec.tiles_visited = NULL;
  return visited;
}

static int64_t window_tiles(int64_t T, int window) {
  lt_test_attn_case c;
  make_case(&c, 1, T, T, 1, 1, 8, (lt_attn_sparsity){.window = window}, 0, false, 3);
  int64_t visited = forward_tiles(&c);
  assert_int_equal(visited, tiles_with_a_visible_pair(&c));
  lt_test_attn_case_free(&c);
  return visited;
}

static void test_window_work_grows_with_the_sequence_times_the_window(void **state) {
  (void)state;
  const int64_t tile = LT_CPU_ATTN_TILE, n = 1024 / tile;
  // Causal dense attention visits n (n + 1) / 2 tiles: 528 at T = 1024.
  lt_test_attn_case dense;
  make_case(&dense, 1, 1024, 1024, 1, 1, 8, (lt_attn_sparsity){0}, 0, false, 3);
  assert_int_equal(forward_tiles(&dense), n * (n + 1) / 2);
  lt_test_attn_case_free(&dense);
  // A window of w reaches back w - 1 positions: each query tile visits its own tile and the
  // ceil((w - 1) / tile) before it (fewer at the start), about T / tile * (1 + w / tile) tiles,
  // linear in T and in w.
  assert_int_equal(window_tiles(1024, 64), n * 3 - 2 - 1);
  assert_int_equal(window_tiles(2048, 64), 2 * n * 3 - 2 - 1);
  assert_int_equal(window_tiles(1024, 128), n * 5 - 4 - 3 - 2 - 1);
  assert_int_equal(window_tiles(1024, 33), n * 2 - 1);
}

static void test_block_pattern_work_equals_the_tiles_with_a_visible_pair(void **state) {
  (void)state;
  lt_test_attn_case c;
  make_case(&c, 1, 1024, 1024, 1, 1, 8,
            (lt_attn_sparsity){.sinks = 8, .block_size = 64, .local_blocks = 2, .stride = 4}, 0,
            false, 3);
  int64_t visited = forward_tiles(&c);
  assert_int_equal(visited, tiles_with_a_visible_pair(&c));
  // 16 blocks of 64: each query block sees itself, the block before, every 4th block back and
  // the sinks' block (a quarter of the causal tiles or less).
  assert_true(visited < 528 / 2);
  lt_test_attn_case_free(&c);
}

static void test_backward_visits_the_tiles_the_forward_visits(void **state) {
  (void)state;
  lt_test_attn_case c;
  make_case(&c, 2, 300, 300, 4, 2, 8,
            (lt_attn_sparsity){.window = 40, .sinks = 4, .block_size = 32, .stride = 3}, 0, false,
            3);
  int64_t fwd = 0, bwd = 0;
  c.spec.tiles_visited = &fwd;
  assert_ok(lt_attn_fwd(&ctx, lt_test_attn_q(&c, c.o), lt_test_attn_lse(&c, c.lse),
                        lt_test_attn_q(&c, c.q), lt_test_attn_kv(&c, c.k), lt_test_attn_kv(&c, c.v),
                        &c.spec));
  const int64_t nq = 2 * 300 * 4 * 8, nk = 2 * 300 * 2 * 8;
  float *dout = calloc(nq, 4), *delta = calloc(2 * 4 * 300, 4);
  float *dq = calloc(nq, 4), *dk = calloc(nk, 4), *dv = calloc(nk, 4);
  assert_ok(lt_attn_bwd_delta(&ctx, lt_test_attn_lse(&c, delta), lt_test_attn_q(&c, dout),
                              lt_test_attn_q(&c, c.o)));
  c.spec.tiles_visited = &bwd;
  assert_ok(lt_attn_bwd(&ctx, lt_test_attn_q(&c, dq), lt_test_attn_kv(&c, dk),
                        lt_test_attn_kv(&c, dv), lt_test_attn_q(&c, dout), lt_test_attn_q(&c, c.q),
                        lt_test_attn_kv(&c, c.k), lt_test_attn_kv(&c, c.v),
                        lt_test_attn_lse(&c, c.lse), lt_test_attn_lse(&c, delta), &c.spec));
  // Two batch rows and four query heads of the tiles one row and head has.
  c.spec.tiles_visited = NULL;
  assert_int_equal(fwd, 2 * 4 * tiles_with_a_visible_pair(&c));
  assert_int_equal(bwd, fwd);
  free(dout), free(delta), free(dq), free(dk), free(dv);
  lt_test_attn_case_free(&c);
}

// --- the layer ---

enum { LAYER_T = 40, LAYER_D = 16 };

static void build_layer(lt_test_layer *l, bool sparse, lt_sparse_config pattern) {
  lt_model_config cfg = {.d_model = LAYER_D,
                         .n_heads = 4,
                         .n_kv_heads = 2,
                         .head_dim = 6,
                         .rope_theta = 10000.0,
                         .sparse = pattern};
  lt_params_begin(&l->params, NULL);
  if (sparse)
    assert_ok(
        lt_sparse_attention_create(&l->layer, &l->params, "attn", &cfg, (lt_init_stds){1, 1}));
  else
    assert_ok(
        lt_softmax_attention_create(&l->layer, &l->params, "attn", &cfg, (lt_init_stds){1, 1}));
  lt_test_layer_finish(l, 1, LAYER_T);
}

static void layer_forward(lt_test_layer *l, float *x, float *out) {
  int32_t pos[LAYER_T];
  for (int i = 0; i < LAYER_T; i++) pos[i] = i;
  lt_batch batch = {.B = 1, .T = LAYER_T, .pos = lt_view1(pos, LT_I32, LT_CPU, LAYER_T)};
  assert_ok(l->layer->ops->forward(l->layer, &ctx, lt_view2(out, LT_F32, LT_CPU, LAYER_T, LAYER_D),
                                   lt_view2(x, LT_F32, LT_CPU, LAYER_T, LAYER_D), &batch));
}

static void test_sparse_layer_output_ignores_the_tokens_its_pattern_hides(void **state) {
  (void)state;
  lt_test_layer l;
  build_layer(&l, true, (lt_sparse_config){.window = 4, .sinks = 2, .block_size = 8});
  assert_string_equal(l.layer->ops->kind, "sparse");
  float x[LAYER_T * LAYER_D], x_moved[LAYER_T * LAYER_D];
  float out[LAYER_T * LAYER_D], moved[LAYER_T * LAYER_D];
  lt_test_fill_normal(x, LAYER_T * LAYER_D, 8, 1.0f);
  layer_forward(&l, x, out);
  // Changing token p changes exactly the outputs of the queries that see it (and its own).
  for (int p = 0; p < LAYER_T; p += 3) {
    memcpy(x_moved, x, sizeof x);
    for (int c = 0; c < LAYER_D; c++) x_moved[p * LAYER_D + c] += 0.5f;
    layer_forward(&l, x_moved, moved);
    for (int t = 0; t < LAYER_T; t++) {
      bool sees = p <= t && (t - p < 4 || p < 2);
      bool changed = memcmp(out + t * LAYER_D, moved + t * LAYER_D, LAYER_D * sizeof(float)) != 0;
      if (sees != changed) fail_msg("token %d %s query %d", p, changed ? "moved" : "missed", t);
    }
  }
  lt_test_layer_destroy(&l);
}

static void test_sparse_layer_whose_window_spans_the_sequence_is_softmax_attention(void **state) {
  (void)state;
  lt_test_layer sparse, dense;
  build_layer(&sparse, true, (lt_sparse_config){.window = LAYER_T, .block_size = 8});
  build_layer(&dense, false, (lt_sparse_config){0});
  float x[LAYER_T * LAYER_D], a[LAYER_T * LAYER_D], b[LAYER_T * LAYER_D];
  lt_test_fill_normal(x, LAYER_T * LAYER_D, 9, 1.0f);
  layer_forward(&sparse, x, a);
  layer_forward(&dense, x, b);
  assert_memory_equal(a, b, sizeof a);
  lt_test_layer_destroy(&sparse), lt_test_layer_destroy(&dense);
}

// --- config ---

static int load_yaml(const char *sparse_settings) {
  char yaml[1024];
  snprintf(yaml, sizeof yaml,
           "model:\n  attention: sparse*3,softmax\n  n_layers: 4\n  sparse:\n%s"
           "train:\n  seq_len: 512\n",
           sparse_settings);
  lt_config cfg;
  return lt_config_load_string(&cfg, yaml, "sparse.yaml", 0, NULL);
}

static void test_sparse_config_with_no_part_on_is_an_error(void **state) {
  (void)state;
  EXPECT_ERROR(load_yaml("    block_size: 32\n"), LT_ERR_CONFIG, "sparse.yaml",
               "model.sparse turns no part on", "set model.sparse.window");
}

static void test_sparse_window_longer_than_the_sequence_is_an_error(void **state) {
  (void)state;
  assert_ok(load_yaml("    window: 512\n"));
  EXPECT_ERROR(load_yaml("    window: 513\n"), LT_ERR_CONFIG,
               "model.sparse.window (513) exceeds train.seq_len (512)", "lower it");
}

static void test_sparse_sinks_must_be_fewer_than_the_sequence(void **state) {
  (void)state;
  EXPECT_ERROR(load_yaml("    window: 64\n    sinks: 512\n"), LT_ERR_CONFIG,
               "model.sparse.sinks (512) must be below train.seq_len (512)");
}

static void test_sparse_block_larger_than_the_sequence_is_an_error(void **state) {
  (void)state;
  EXPECT_ERROR(load_yaml("    block_size: 1024\n    local_blocks: 1\n"), LT_ERR_CONFIG,
               "model.sparse.block_size (1024) exceeds train.seq_len (512)");
}

static void test_sparse_stride_of_one_is_an_error(void **state) {
  (void)state;
  EXPECT_ERROR(load_yaml("    local_blocks: 2\n    stride: 1\n"), LT_ERR_CONFIG,
               "model.sparse.stride 1 makes every block visible", "use 0 (off) or 2 and above");
}

static void test_sparse_settings_are_checked_only_where_a_layer_uses_sparse(void **state) {
  (void)state;
  lt_config cfg;
  assert_ok(lt_config_load_string(&cfg, "model:\n  sparse:\n    window: 100000\n", "dense.yaml", 0,
                                  NULL));
}

// As a user meets them: `longtrain config` with bad sparse (and MoH) settings exits 3 (bad
// config) with one line naming the key.
static void test_bad_attention_settings_exit_3_with_one_line(void **state) {
  (void)state;
  const char *cases[][2] = {
      {"--set model.attention=sparse --set model.sparse.window=2048 --set train.seq_len=1024",
       "model.sparse.window (2048) exceeds train.seq_len (1024)"},
      {"--set model.attention=moh --set model.n_heads=8 --set model.d_model=256 "
       "--set model.moh.shared_heads=4 --set model.moh.top_k=5",
       "model.moh.top_k (5) exceeds the 4 routed heads"}};
  for (int i = 0; i < 2; i++) {
    char command[2048], out[4096];
    snprintf(command, sizeof command, "%s config %s", lt_test_binary(), cases[i][0]);
    assert_int_equal(lt_test_run(command, out, sizeof out), LT_ERR_CONFIG);
    assert_true(strncmp(out, "longtrain: error: ", 18) == 0);
    assert_non_null(strstr(out, cases[i][1]));
    assert_ptr_equal(strchr(out, '\n'), out + strlen(out) - 1);
  }
}

int main(void) {
  lt_ctx_init(&ctx, LT_CPU, 2);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sliding_window_equals_dense_attention_under_the_same_mask),
      cmocka_unit_test(test_sinks_with_a_window_equal_dense_attention_under_the_same_mask),
      cmocka_unit_test(test_local_and_strided_blocks_equal_dense_attention_under_the_same_mask),
      cmocka_unit_test(test_local_and_global_blocks_equal_dense_attention_under_the_same_mask),
      cmocka_unit_test(test_every_part_together_equals_dense_attention_under_the_same_mask),
      cmocka_unit_test(test_document_masks_compose_with_sparse_patterns),
      cmocka_unit_test(test_query_chunk_at_an_offset_masks_by_absolute_position),
      cmocka_unit_test(test_bidirectional_window_and_blocks_equal_dense_attention),
      cmocka_unit_test(test_partials_over_key_chunks_merge_to_full_sparse_attention),
      cmocka_unit_test(test_window_work_grows_with_the_sequence_times_the_window),
      cmocka_unit_test(test_block_pattern_work_equals_the_tiles_with_a_visible_pair),
      cmocka_unit_test(test_backward_visits_the_tiles_the_forward_visits),
      cmocka_unit_test(test_sparse_layer_output_ignores_the_tokens_its_pattern_hides),
      cmocka_unit_test(test_sparse_layer_whose_window_spans_the_sequence_is_softmax_attention),
      cmocka_unit_test(test_sparse_config_with_no_part_on_is_an_error),
      cmocka_unit_test(test_sparse_window_longer_than_the_sequence_is_an_error),
      cmocka_unit_test(test_sparse_sinks_must_be_fewer_than_the_sequence),
      cmocka_unit_test(test_sparse_block_larger_than_the_sequence_is_an_error),
      cmocka_unit_test(test_sparse_stride_of_one_is_an_error),
      cmocka_unit_test(test_sparse_settings_are_checked_only_where_a_layer_uses_sparse),
      cmocka_unit_test(test_bad_attention_settings_exit_3_with_one_line),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
