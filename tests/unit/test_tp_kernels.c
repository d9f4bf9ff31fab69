// The kernels tensor parallelism adds, checked in one process by playing every rank in turn and
// doing the sums over ranks by hand: vocab-parallel cross-entropy and embedding, and the linear
// attention output stage whose RMS normalisation spans heads held by other ranks. Each must give
// the whole computation back (against lt_cross_entropy, lt_embedding_*, the whole-row output
// stage and a naive double reference), and its backward must pass a gradient check.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "testing.h"

static lt_ctx ctx;

static float *normal(int64_t n, uint64_t seed, float std) {
  float *x = malloc(sizeof(float) * (size_t)n);
  lt_test_fill_normal(x, n, seed, std);
  return x;
}

// --- vocab-parallel cross-entropy ---

enum { CE_N = 7, CE_V = 12, CE_RANKS = 3, CE_PART = CE_V / CE_RANKS };

static const int32_t ce_targets[CE_N] = {0, 5, LT_IGNORE_INDEX, 11, 4, 8, 3};

// rows x width floats from src (rows `src_stride` apart) to dst (rows `dst_stride` apart): a rank's
// columns out of a whole tensor, or back into it.
static void copy_columns(float *dst, int dst_stride, const float *src, int src_stride, int rows,
                         int width) {
  for (int n = 0; n < rows; n++)
    memcpy(dst + n * dst_stride, src + n * src_stride, sizeof(float) * (size_t)width);
}

// Rank r's columns of logits (N, V) as (N, PART), and back.
static void take_columns(float *part, const float *whole, int r) {
  copy_columns(part, CE_PART, whole + r * CE_PART, CE_V, CE_N, CE_PART);
}
static void put_columns(float *whole, const float *part, int r) {
  copy_columns(whole + r * CE_PART, CE_V, part, CE_PART, CE_N, CE_PART);
}

// The three ranks' passes with the all-reduces done here: the losses, and with want_grad the
// gradient written over `logits` (N, V) as lt_cross_entropy does.
static void sharded_cross_entropy(float *losses, float *logits, bool want_grad, float grad_scale) {
  float part[CE_RANKS][CE_N * CE_PART], stats[CE_RANKS][3 * CE_N], rank_losses[CE_N];
  lt_tensor targets = lt_view1((void *)ce_targets, LT_I32, LT_CPU, CE_N);
  for (int r = 0; r < CE_RANKS; r++) {
    take_columns(part[r], logits, r);
    assert_ok(lt_cross_entropy_shard_max(&ctx, lt_view2(stats[r], LT_F32, LT_CPU, 3, CE_N),
                                         lt_view2(part[r], LT_F32, LT_CPU, CE_N, CE_PART), targets,
                                         r * CE_PART));
  }
  for (int n = 0; n < CE_N; n++) // all-reduce max of the row maxima
    for (int r = 1; r < CE_RANKS; r++) stats[0][n] = fmaxf(stats[0][n], stats[r][n]);
  for (int r = 0; r < CE_RANKS; r++) {
    memcpy(stats[r], stats[0], sizeof(float) * CE_N);
    assert_ok(lt_cross_entropy_shard_sum_exp(&ctx, lt_view2(stats[r], LT_F32, LT_CPU, 3, CE_N),
                                             lt_view2(part[r], LT_F32, LT_CPU, CE_N, CE_PART)));
  }
  for (int i = CE_N; i < 3 * CE_N; i++) // all-reduce sum of the sums of exps and target logits
    for (int r = 1; r < CE_RANKS; r++) stats[0][i] += stats[r][i];
  for (int r = 0; r < CE_RANKS; r++) {
    memcpy(stats[r], stats[0], sizeof stats[0]);
    assert_ok(lt_cross_entropy_shard_finish(&ctx, lt_view1(rank_losses, LT_F32, LT_CPU, CE_N),
                                            lt_view2(part[r], LT_F32, LT_CPU, CE_N, CE_PART),
                                            targets, lt_view2(stats[r], LT_F32, LT_CPU, 3, CE_N),
                                            r * CE_PART, LT_IGNORE_INDEX, want_grad, grad_scale));
    if (r == 0) memcpy(losses, rank_losses, sizeof rank_losses);
    assert_memory_equal(losses, rank_losses, sizeof rank_losses); // every rank has every loss
    if (want_grad) put_columns(logits, part[r], r);
  }
}

static void test_vocab_shards_give_the_whole_cross_entropy_and_its_gradient(void **state) {
  (void)state;
  float *logits = normal(CE_N * CE_V, 1, 3.0f);
  float sharded[CE_N * CE_V], whole[CE_N * CE_V], losses[CE_N], whole_losses[CE_N];
  memcpy(sharded, logits, sizeof sharded);
  memcpy(whole, logits, sizeof whole);
  sharded_cross_entropy(losses, sharded, true, 0.5f);
  lt_tensor whole_logits = lt_view2(whole, LT_F32, LT_CPU, CE_N, CE_V); // gradient in place
  assert_ok(lt_cross_entropy(&ctx, lt_view1(whole_losses, LT_F32, LT_CPU, CE_N), whole_logits,
                             whole_logits, lt_view1((void *)ce_targets, LT_I32, LT_CPU, CE_N),
                             LT_IGNORE_INDEX, 0.5f));
  for (int n = 0; n < CE_N; n++) { // and the definition, in double
    double max = -INFINITY, sum = 0.0;
    for (int j = 0; j < CE_V; j++) max = fmax(max, logits[n * CE_V + j]);
    for (int j = 0; j < CE_V; j++) sum += exp(logits[n * CE_V + j] - max);
    const double loss =
        ce_targets[n] == LT_IGNORE_INDEX ? 0.0 : max + log(sum) - logits[n * CE_V + ce_targets[n]];
    assert_true(fabs(losses[n] - loss) < 1e-5);
  }
  assert_true(lt_test_max_rel_diff(losses, whole_losses, CE_N, 1.0) < 1e-6);
  assert_true(lt_test_max_rel_diff(sharded, whole, CE_N * CE_V, 0.1) < 1e-6);
  for (int j = 0; j < CE_V; j++) assert_true(sharded[2 * CE_V + j] == 0.0f); // the ignored row
  free(logits);
}

typedef struct ce_state {
  float *logits, *losses, *dlogits;
} ce_state;

static void ce_forward(void *p) {
  ce_state *s = p;
  float scratch[CE_N * CE_V];
  memcpy(scratch, s->logits, sizeof scratch);
  sharded_cross_entropy(s->losses, scratch, false, 0.0f);
}

static void ce_backward(void *p, const float *dout) {
  ce_state *s = p;
  float grad[CE_N * CE_V], losses[CE_N];
  memcpy(grad, s->logits, sizeof grad);
  sharded_cross_entropy(losses, grad, true, 1.0f);
  for (int i = 0; i < CE_N * CE_V; i++) s->dlogits[i] += dout[i / CE_V] * grad[i];
}

static void test_vocab_sharded_cross_entropy_backward_matches_finite_differences(void **state) {
  (void)state;
  ce_state s = {.logits = normal(CE_N * CE_V, 2, 1.0f),
                .losses = calloc(CE_N, sizeof(float)),
                .dlogits = calloc(CE_N * CE_V, sizeof(float))};
  lt_gradcheck_input in[1] = {{"logits", s.logits, s.dlogits, CE_N * CE_V}};
  lt_gradcheck check = {&s, in, 1, s.losses, CE_N, ce_forward, ce_backward};
  assert_true(lt_gradcheck_run(&check, 3, 4, 1e-3) < 3e-3);
  free(s.logits), free(s.losses), free(s.dlogits);
}

// --- vocab-parallel embedding ---

static void test_vocab_sharded_embedding_sums_to_the_whole_lookup(void **state) {
  (void)state;
  enum { V = 10, D = 3, N = 6, PART = V / 2 };
  const int32_t tokens[N] = {0, 9, 4, 5, 4, 7};
  float *table = normal(V * D, 4, 1.0f), *dout = normal(N * D, 5, 1.0f);
  float whole[N * D], sum[N * D] = {0}, part[N * D];
  float dtable[V * D] = {0}, dparts[V * D] = {0};
  lt_tensor tok = lt_view1((void *)tokens, LT_I32, LT_CPU, N);
  assert_ok(lt_embedding_fwd(&ctx, lt_view2(whole, LT_F32, LT_CPU, N, D), tok,
                             lt_view2(table, LT_F32, LT_CPU, V, D)));
  assert_ok(lt_embedding_bwd(&ctx, lt_view2(dtable, LT_F32, LT_CPU, V, D),
                             lt_view2(dout, LT_F32, LT_CPU, N, D), tok));
  for (int r = 0; r < 2; r++) {
    assert_ok(lt_embedding_shard_fwd(&ctx, lt_view2(part, LT_F32, LT_CPU, N, D), tok,
                                     lt_view2(table + r * PART * D, LT_F32, LT_CPU, PART, D),
                                     r * PART));
    for (int i = 0; i < N * D; i++) {
      // Exactly one rank holds each token: the other's row is zero.
      const bool mine = tokens[i / D] / PART == r;
      assert_true(mine || part[i] == 0.0f);
      sum[i] += part[i];
    }
    assert_ok(lt_embedding_shard_bwd(&ctx, lt_view2(dparts + r * PART * D, LT_F32, LT_CPU, PART, D),
                                     lt_view2(dout, LT_F32, LT_CPU, N, D), tok, r * PART));
  }
  assert_memory_equal(sum, whole, sizeof whole);
  assert_memory_equal(dparts, dtable, sizeof dtable); // token 4 twice: both land in rank 0's rows
  free(table), free(dout);
}

// --- the linear attention output stage with its heads split over ranks ---

enum { OUT_N = 5, OUT_H = 4, OUT_D = 3, OUT_RANKS = 2, OUT_HP = OUT_H / OUT_RANKS };
enum { OUT_W = OUT_H * OUT_D, OUT_WP = OUT_HP * OUT_D };

// Rank r's heads of a (N, H * D) row-major tensor, and back.
static void take_heads(float *part, const float *whole, int r) {
  copy_columns(part, OUT_WP, whole + r * OUT_WP, OUT_W, OUT_N, OUT_WP);
}
static void put_heads(float *whole, const float *part, int r) {
  copy_columns(whole + r * OUT_WP, OUT_W, part, OUT_WP, OUT_N, OUT_WP);
}

typedef struct out_split {
  lt_gate gate;
  float *o, *u;    // (N, H, D), (N, H * D)
  float *y, *rstd; // forward results, whole
  float *d_o, *du; // backward results, whole (+=, for the gradient check)
} out_split;

static const lt_tensor whole_row = {0};

// The forward of every rank, its row statistic summed over the ranks between the two calls.
static void split_forward(out_split *s) {
  float o[OUT_RANKS][OUT_N * OUT_WP], u[OUT_RANKS][OUT_N * OUT_WP], y[OUT_N * OUT_WP];
  float stat[OUT_RANKS][OUT_N], rstd[OUT_N];
  for (int r = 0; r < OUT_RANKS; r++) {
    take_heads(o[r], s->o, r), take_heads(u[r], s->u, r);
    assert_ok(lt_linear_out_rms_stat(&ctx, lt_view1(stat[r], LT_F32, LT_CPU, OUT_N),
                                     lt_view3(o[r], LT_F32, LT_CPU, OUT_N, OUT_HP, OUT_D), OUT_W));
  }
  for (int n = 0; n < OUT_N; n++) stat[0][n] += stat[1][n];
  for (int r = 0; r < OUT_RANKS; r++) {
    assert_ok(lt_linear_out_fwd(&ctx, lt_view2(y, LT_F32, LT_CPU, OUT_N, OUT_WP),
                                lt_view1(rstd, LT_F32, LT_CPU, OUT_N),
                                lt_view3(o[r], LT_F32, LT_CPU, OUT_N, OUT_HP, OUT_D),
                                lt_view2(u[r], LT_F32, LT_CPU, OUT_N, OUT_WP), LT_LINEAR_NORM_RMS,
                                s->gate, 1e-5f, lt_view1(stat[0], LT_F32, LT_CPU, OUT_N)));
    put_heads(s->y, y, r);
    memcpy(s->rstd, rstd, sizeof rstd);
  }
}

static void split_backward(out_split *s, const float *dy_whole) {
  float o[OUT_RANKS][OUT_N * OUT_WP], u[OUT_RANKS][OUT_N * OUT_WP], dy[OUT_RANKS][OUT_N * OUT_WP];
  float stat[OUT_RANKS][OUT_N], d_o[OUT_N * OUT_WP], du[OUT_N * OUT_WP];
  float d_o_whole[OUT_N * OUT_W], du_whole[OUT_N * OUT_W];
  for (int r = 0; r < OUT_RANKS; r++) {
    take_heads(o[r], s->o, r), take_heads(u[r], s->u, r), take_heads(dy[r], dy_whole, r);
    assert_ok(lt_linear_out_rms_grad_stat(&ctx, lt_view1(stat[r], LT_F32, LT_CPU, OUT_N),
                                          lt_view2(dy[r], LT_F32, LT_CPU, OUT_N, OUT_WP),
                                          lt_view3(o[r], LT_F32, LT_CPU, OUT_N, OUT_HP, OUT_D),
                                          lt_view2(u[r], LT_F32, LT_CPU, OUT_N, OUT_WP),
                                          lt_view1(s->rstd, LT_F32, LT_CPU, OUT_N), s->gate,
                                          OUT_W));
  }
  for (int n = 0; n < OUT_N; n++) stat[0][n] += stat[1][n];
  for (int r = 0; r < OUT_RANKS; r++) {
    assert_ok(lt_linear_out_bwd(
        &ctx, lt_view3(d_o, LT_F32, LT_CPU, OUT_N, OUT_HP, OUT_D),
        lt_view2(du, LT_F32, LT_CPU, OUT_N, OUT_WP), lt_view2(dy[r], LT_F32, LT_CPU, OUT_N, OUT_WP),
        lt_view3(o[r], LT_F32, LT_CPU, OUT_N, OUT_HP, OUT_D),
        lt_view2(u[r], LT_F32, LT_CPU, OUT_N, OUT_WP), lt_view1(s->rstd, LT_F32, LT_CPU, OUT_N),
        LT_LINEAR_NORM_RMS, s->gate, 1e-5f, lt_view1(stat[0], LT_F32, LT_CPU, OUT_N)));
    put_heads(d_o_whole, d_o, r), put_heads(du_whole, du, r);
  }
  for (int i = 0; i < OUT_N * OUT_W; i++) {
    s->d_o[i] += d_o_whole[i];
    if (s->gate != LT_GATE_NONE) s->du[i] += du_whole[i];
  }
}

static out_split new_split(lt_gate gate, uint64_t seed) {
  return (out_split){.gate = gate,
                     .o = normal(OUT_N * OUT_W, seed, 1.0f),
                     .u = normal(OUT_N * OUT_W, seed + 1, 1.0f),
                     .y = calloc(OUT_N * OUT_W, sizeof(float)),
                     .rstd = calloc(OUT_N, sizeof(float)),
                     .d_o = calloc(OUT_N * OUT_W, sizeof(float)),
                     .du = calloc(OUT_N * OUT_W, sizeof(float))};
}

static void free_split(out_split *s) {
  free(s->o), free(s->u), free(s->y), free(s->rstd), free(s->d_o), free(s->du);
}

static void test_rms_output_over_heads_split_between_ranks_equals_the_whole_row(void **state) {
  (void)state;
  const lt_gate gates[] = {LT_GATE_NONE, LT_GATE_LINEAR, LT_GATE_SIGMOID, LT_GATE_SILU};
  for (int g = 0; g < 4; g++) {
    out_split s = new_split(gates[g], 10 + 2 * (uint64_t)g);
    float *dy = normal(OUT_N * OUT_W, 30 + (uint64_t)g, 1.0f);
    split_forward(&s);
    split_backward(&s, dy);
    float y[OUT_N * OUT_W], rstd[OUT_N], d_o[OUT_N * OUT_W], du[OUT_N * OUT_W];
    lt_tensor o = lt_view3(s.o, LT_F32, LT_CPU, OUT_N, OUT_H, OUT_D);
    lt_tensor u = lt_view2(s.u, LT_F32, LT_CPU, OUT_N, OUT_W);
    lt_tensor r = lt_view1(rstd, LT_F32, LT_CPU, OUT_N);
    assert_ok(lt_linear_out_fwd(&ctx, lt_view2(y, LT_F32, LT_CPU, OUT_N, OUT_W), r, o, u,
                                LT_LINEAR_NORM_RMS, gates[g], 1e-5f, whole_row));
    assert_ok(lt_linear_out_bwd(&ctx, lt_view3(d_o, LT_F32, LT_CPU, OUT_N, OUT_H, OUT_D),
                                lt_view2(du, LT_F32, LT_CPU, OUT_N, OUT_W),
                                lt_view2(dy, LT_F32, LT_CPU, OUT_N, OUT_W), o, u, r,
                                LT_LINEAR_NORM_RMS, gates[g], 1e-5f, whole_row));
    assert_true(lt_test_max_rel_diff(s.y, y, OUT_N * OUT_W, 1.0) < 1e-6);
    assert_true(lt_test_max_rel_diff(s.rstd, rstd, OUT_N, 1.0) < 1e-6);
    assert_true(lt_test_max_rel_diff(s.d_o, d_o, OUT_N * OUT_W, 1.0) < 1e-6);
    if (gates[g] != LT_GATE_NONE)
      assert_true(lt_test_max_rel_diff(s.du, du, OUT_N * OUT_W, 1.0) < 1e-6);
    free(dy);
    free_split(&s);
  }
}

static void split_forward_cb(void *p) {
  split_forward(p);
}
static void split_backward_cb(void *p, const float *dy) {
  split_backward(p, dy);
}

static void test_rms_output_split_between_ranks_backward_matches_finite_differences(void **state) {
  (void)state;
  out_split s = new_split(LT_GATE_SILU, 40);
  lt_gradcheck_input in[2] = {{"o", s.o, s.d_o, OUT_N * OUT_W}, {"u", s.u, s.du, OUT_N * OUT_W}};
  lt_gradcheck check = {&s, in, 2, s.y, OUT_N * OUT_W, split_forward_cb, split_backward_cb};
  assert_true(lt_gradcheck_run(&check, 41, 3, 1e-3) < 3e-3);
  free_split(&s);
}

int main(void) {
  lt_ctx_init(&ctx, LT_CPU, 2);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_vocab_shards_give_the_whole_cross_entropy_and_its_gradient),
      cmocka_unit_test(test_vocab_sharded_cross_entropy_backward_matches_finite_differences),
      cmocka_unit_test(test_vocab_sharded_embedding_sums_to_the_whole_lookup),
      cmocka_unit_test(test_rms_output_over_heads_split_between_ranks_equals_the_whole_row),
      cmocka_unit_test(test_rms_output_split_between_ranks_backward_matches_finite_differences),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
