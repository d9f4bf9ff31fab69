// The flash attention kernels against the CPU reference (itself checked against naive softmax in
// tests/unit/test_attention.c): causal and not, grouped-query heads, document masks, query chunks
// at an offset, sequence lengths that are no multiple of the tiles, queries that see no key, more
// tiles than one pass of the kernels' tile list, and the partial/merge contract of ring attention;
// every sparse pattern (tests/unit/test_sparse_attention.c checks the CPU's against dense
// attention), alone and combined, with documents, chunks and positions out of order; MoH's head
// gates, and the gated output (gates * o) the forward writes beside o for them; and the work of
// a sliding window, which grows with T, not T^2; the backward joined into a fused dqkv with RoPE's
// transpose (lt_attn_bwd_rope). Every case runs under each
// of the forward's and the backward's variants (LT_ATTN_FWD, LT_ATTN_BWD).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "gpu_testing.h"
#include "kernels/cuda/attention_schedule.h"

// The kernels' variants, LT_ATTN_FWD's (attention_fwd.cu: v2 and v3 on Hopper for dense specs)
// and LT_ATTN_BWD's (attention_bwd.cu: v2 and v3 on Hopper at d = 64, and v4 for dense specs
// there); elsewhere all of a list run one kernel. Run r of a case sets each variable to its r-th
// value, so that each forward and each backward runs every case, the backward from its run's
// forward's lse; the last run leaves both to the dispatch's choice (empty: as unset; the
// forward's is v2 for the cases at d = 64 with 8192 queries or more, v1 for the rest).
static const char *const fwd_variants[] = {"v1", "v2", "v3", "v2", ""};
static const char *const bwd_variants[] = {"v2", "v1", "v3", "v4", ""};
enum {
  N_FWD_VARIANTS = sizeof fwd_variants / sizeof fwd_variants[0],
  N_BWD_VARIANTS = sizeof bwd_variants / sizeof bwd_variants[0],
  N_RUNS = N_FWD_VARIANTS > N_BWD_VARIANTS ? N_FWD_VARIANTS : N_BWD_VARIANTS
};

// A variable as the program started (set: it was), which use_variants restores.
typedef struct saved_env {
  const char *name;
  char value[64];
  bool set;
} saved_env;
static saved_env saved_fwd = {.name = "LT_ATTN_FWD"}, saved_bwd = {.name = "LT_ATTN_BWD"};

static void save_env(saved_env *e) {
  const char *now = getenv(e->name);
  e->set = now != NULL;
  if (now) snprintf(e->value, sizeof e->value, "%s", now);
}

static void restore_env(const saved_env *e) {
  if (e->set)
    setenv(e->name, e->value, 1);
  else
    unsetenv(e->name);
}

// Sets the variables for run r, or for r = N_RUNS back to what they were at the start.
static void use_variants(int r) {
  if (r == N_RUNS) {
    restore_env(&saved_fwd), restore_env(&saved_bwd);
    return;
  }
  const char *fwd = fwd_variants[r < N_FWD_VARIANTS ? r : N_FWD_VARIANTS - 1];
  const char *bwd = bwd_variants[r < N_BWD_VARIANTS ? r : N_BWD_VARIANTS - 1];
  setenv("LT_ATTN_FWD", fwd, 1), setenv("LT_ATTN_BWD", bwd, 1);
  printf("  LT_ATTN_FWD=%s LT_ATTN_BWD=%s\n", *fwd ? fwd : "(default)", *bwd ? bwd : "(default)");
}

typedef struct attn_case {
  int64_t B, Tq, Tk;
  int hq, hkv, d;
  bool causal, docs;
  lt_attn_sparsity sparse;
  float *q, *k, *v, *dout; // bf16-exact
  float *gates;            // (B, Tq, hq) MoH head weights, or NULL
  int32_t *q_pos, *k_pos, *q_doc, *k_doc;
  int64_t *tiles_visited; // when set, the GPU's kernels add the tiles they computed
} attn_case;

// Queries are the last Tq positions of the Tk keys (a chunk at the end of the sequence);
// documents are runs of doc_len tokens.
static void make_case(attn_case *c, int64_t B, int64_t Tq, int64_t Tk, int hq, int hkv, int d,
                      bool causal, int doc_len) {
  *c = (attn_case){.B = B,
                   .Tq = Tq,
                   .Tk = Tk,
                   .hq = hq,
                   .hkv = hkv,
                   .d = d,
                   .causal = causal,
                   .docs = doc_len > 0};
  c->q = lt_gpu_random(B * Tq * hq * d, 1.0f, true);
  c->k = lt_gpu_random(B * Tk * hkv * d, 1.0f, true);
  c->v = lt_gpu_random(B * Tk * hkv * d, 1.0f, true);
  c->dout = lt_gpu_random(B * Tq * hq * d, 1.0f, true);
  c->q_pos = malloc(sizeof(int32_t) * B * Tq), c->q_doc = malloc(sizeof(int32_t) * B * Tq);
  c->k_pos = malloc(sizeof(int32_t) * B * Tk), c->k_doc = malloc(sizeof(int32_t) * B * Tk);
  for (int64_t b = 0; b < B; b++) {
    for (int64_t j = 0; j < Tk; j++)
      c->k_pos[b * Tk + j] = (int32_t)j,
                        c->k_doc[b * Tk + j] = doc_len ? (int32_t)(j / doc_len) : 0;
    for (int64_t i = 0; i < Tq; i++) {
      const int32_t p = (int32_t)(Tk - Tq + i);
      c->q_pos[b * Tq + i] = p, c->q_doc[b * Tq + i] = doc_len ? p / doc_len : 0;
    }
  }
}

// make_case under a sparse pattern, with positions restarting at each document when `restart`
// (as the loader packs documents).
static void make_sparse_case(attn_case *c, int64_t B, int64_t Tq, int64_t Tk, int hq, int hkv,
                             int d, lt_attn_sparsity pattern, int doc_len, bool restart) {
  make_case(c, B, Tq, Tk, hq, hkv, d, true, doc_len);
  c->sparse = pattern;
  if (!restart || doc_len == 0) return;
  for (int64_t b = 0; b < B; b++) {
    for (int64_t j = 0; j < Tk; j++) c->k_pos[b * Tk + j] = (int32_t)(j % doc_len);
    for (int64_t i = 0; i < Tq; i++) c->q_pos[b * Tq + i] = (int32_t)((Tk - Tq + i) % doc_len);
  }
}

// MoH head weights: 0 (the head left out) for about `off` of the (query, head) pairs, and for
// every query of head 0 when `head0_off` (whole tiles gated off), else in [0.5, 1.5).
static void add_gates(attn_case *c, double off, bool head0_off) {
  const int64_t n = c->B * c->Tq * c->hq;
  c->gates = malloc(sizeof(float) * n);
  lt_rng rng = lt_rng_seed(lt_gpu_next_seed());
  for (int64_t i = 0; i < n; i++) {
    const double u = lt_rng_uniform(&rng);
    c->gates[i] = u < off || (head0_off && i % c->hq == 0) ? 0.0f : (float)(0.5 + u);
  }
}

static void free_case(attn_case *c) {
  free(c->q), free(c->k), free(c->v), free(c->dout), free(c->gates);
  free(c->q_pos), free(c->k_pos), free(c->q_doc), free(c->k_doc);
}

static lt_attn_spec cpu_spec(const attn_case *c) {
  lt_attn_spec s = {.scale = 1.0f / sqrtf((float)c->d),
                    .causal = c->causal,
                    .q_pos = lt_view2(c->q_pos, LT_I32, LT_CPU, c->B, c->Tq),
                    .k_pos = lt_view2(c->k_pos, LT_I32, LT_CPU, c->B, c->Tk),
                    .sparse = c->sparse};
  if (c->docs) {
    s.q_doc = lt_view2(c->q_doc, LT_I32, LT_CPU, c->B, c->Tq);
    s.k_doc = lt_view2(c->k_doc, LT_I32, LT_CPU, c->B, c->Tk);
  }
  if (c->gates) s.head_gates = lt_view3(c->gates, LT_F32, LT_CPU, c->B, c->Tq, c->hq);
  return s;
}

static lt_attn_spec gpu_spec(const attn_case *c) {
  lt_attn_spec s = cpu_spec(c);
  s.q_pos = lt_gpu_upload_i32(c->q_pos, 2, LT_SHAPE(c->B, c->Tq));
  s.k_pos = lt_gpu_upload_i32(c->k_pos, 2, LT_SHAPE(c->B, c->Tk));
  if (c->docs) {
    s.q_doc = lt_gpu_upload_i32(c->q_doc, 2, LT_SHAPE(c->B, c->Tq));
    s.k_doc = lt_gpu_upload_i32(c->k_doc, 2, LT_SHAPE(c->B, c->Tk));
  }
  if (c->gates) s.head_gates = lt_gpu_upload(c->gates, LT_F32, 3, LT_SHAPE(c->B, c->Tq, c->hq));
  s.tiles_visited = c->tiles_visited;
  return s;
}

#define QSHAPE(c) 4, LT_SHAPE((c)->B, (c)->Tq, (c)->hq, (c)->d)
#define KSHAPE(c) 4, LT_SHAPE((c)->B, (c)->Tk, (c)->hkv, (c)->d)
#define LSHAPE(c) 3, LT_SHAPE((c)->B, (c)->hq, (c)->Tq)

typedef struct attn_result {
  float *o, *lse, *dq, *dk, *dv; // host f32
  float *gated;                  // gates * o (spec.gated_out) where the case has gates, else NULL
  float *dqkv;                   // lt_attn_bwd_rope's join, where run_gpu was given a rope_join
} attn_result;

static void free_result(attn_result *r) {
  free(r->o), free(r->lse), free(r->dq), free(r->dk), free(r->dv), free(r->gated), free(r->dqkv);
}

// run_gpu's backward as lt_attn_bwd_rope at the queries' positions: dqkv (B Tq, Hq + 2 Hkv, D)
// starts as dqkv0.
typedef struct rope_join {
  float theta;
  const float *dqkv0;
} rope_join;
#define JSHAPE(c) 3, LT_SHAPE((c)->B * (c)->Tq, (c)->hq + 2 * (c)->hkv, (c)->d)

// Forward, delta and backward on the CPU; dk and dv start as NaN (the backward writes them).
static attn_result run_cpu(const attn_case *c) {
  const int64_t nq = c->B * c->Tq * c->hq * c->d, nk = c->B * c->Tk * c->hkv * c->d;
  const int64_t nl = c->B * c->hq * c->Tq;
  attn_result r = {malloc(4 * nq), malloc(4 * nl), calloc(nq, 4),
                   malloc(4 * nk), malloc(4 * nk), c->gates ? malloc(4 * nq) : NULL, NULL};
  for (int64_t i = 0; i < nk; i++) r.dk[i] = r.dv[i] = NAN;
  float *delta = malloc(4 * nl);
  lt_attn_spec s = cpu_spec(c);
#define H(x, shape) lt_view(x, LT_F32, LT_CPU, shape)
  if (c->gates) s.gated_out = H(r.gated, QSHAPE(c));
  assert_ok(lt_attn_fwd(&lt_test_cpu, H(r.o, QSHAPE(c)), H(r.lse, LSHAPE(c)), H(c->q, QSHAPE(c)),
                        H(c->k, KSHAPE(c)), H(c->v, KSHAPE(c)), &s));
  // The backward sees the o the GPU will see: rounded to bf16.
  lt_gpu_round_bf16(r.o, nq);
  assert_ok(lt_attn_bwd_delta(&lt_test_cpu, H(delta, LSHAPE(c)), H(c->dout, QSHAPE(c)),
                              H(r.o, QSHAPE(c))));
  assert_ok(lt_attn_bwd(&lt_test_cpu, H(r.dq, QSHAPE(c)), H(r.dk, KSHAPE(c)), H(r.dv, KSHAPE(c)),
                        H(c->dout, QSHAPE(c)), H(c->q, QSHAPE(c)), H(c->k, KSHAPE(c)),
                        H(c->v, KSHAPE(c)), H(r.lse, LSHAPE(c)), H(delta, LSHAPE(c)), &s));
#undef H
  free(delta);
  return r;
}

// The same on the GPU; dk and dv start as dk0 and dv0 (poison: the backward writes them). With
// rope, the backward is lt_attn_bwd_rope's, and r.dqkv its join.
static attn_result run_gpu_with(const attn_case *c, const float *dk0, const float *dv0,
                                const rope_join *rope) {
  lt_attn_spec s = gpu_spec(c);
  lt_tensor q = lt_gpu_upload(c->q, LT_BF16, QSHAPE(c)),
            k = lt_gpu_upload(c->k, LT_BF16, KSHAPE(c));
  lt_tensor v = lt_gpu_upload(c->v, LT_BF16, KSHAPE(c));
  lt_tensor dout = lt_gpu_upload(c->dout, LT_BF16, QSHAPE(c));
  lt_tensor o = lt_gpu_upload(c->dout, LT_BF16, QSHAPE(c));            // poisoned with other values
  if (c->gates) s.gated_out = lt_gpu_upload(c->q, LT_BF16, QSHAPE(c)); // poisoned too
  float *poison = lt_gpu_random(c->B * c->hq * c->Tq, 100.0f, false);
  lt_tensor lse = lt_gpu_upload(poison, LT_F32, LSHAPE(c)),
            delta = lt_gpu_upload(poison, LT_F32, LSHAPE(c));
  free(poison);
  assert_ok(lt_attn_fwd(&lt_test_gpu, o, lse, q, k, v, &s));
  assert_ok(lt_attn_bwd_delta(&lt_test_gpu, delta, dout, o));
  lt_tensor dq = lt_gpu_upload(c->dout, LT_F32, QSHAPE(c));
  assert_ok(lt_zero(&lt_test_gpu, dq));
  lt_tensor dk = lt_gpu_upload(dk0, LT_BF16, KSHAPE(c)),
            dv = lt_gpu_upload(dv0, LT_BF16, KSHAPE(c));
  lt_tensor dqkv = {0};
  if (rope) {
    dqkv = lt_gpu_upload(rope->dqkv0, LT_BF16, JSHAPE(c));
    assert_ok(lt_attn_bwd_rope(&lt_test_gpu, dqkv, dq, dk, dv, dout, q, k, v, lse, delta, &s,
                               lt_reshape(s.q_pos, 1, LT_SHAPE(c->B * c->Tq)), rope->theta));
  } else {
    assert_ok(lt_attn_bwd(&lt_test_gpu, dq, dk, dv, dout, q, k, v, lse, delta, &s));
  }
  attn_result r = {lt_gpu_fetch(o),  lt_gpu_fetch(lse),
                   lt_gpu_fetch(dq), lt_gpu_fetch(dk),
                   lt_gpu_fetch(dv), c->gates ? lt_gpu_fetch(s.gated_out) : NULL,
                   rope ? lt_gpu_fetch(dqkv) : NULL};
  lt_gpu_free_all();
  return r;
}

static attn_result run_gpu(const attn_case *c, const float *dk0, const float *dv0) {
  return run_gpu_with(c, dk0, dv0, NULL);
}

// lse is f32 from f32 scores on both sides; -inf must match exactly.
static void expect_lse_close(const float *got, const float *want, int64_t n) {
  double worst = 0.0;
  for (int64_t i = 0; i < n; i++) {
    if (isinf(want[i]) || isinf(got[i])) {
      if (got[i] != want[i]) fail_msg("lse[%lld] = %g, want %g", (long long)i, got[i], want[i]);
      continue;
    }
    const double e = fabs((double)got[i] - want[i]);
    if (!(e <= worst)) worst = e;
  }
  printf("  %-40s max abs. error %.3g (tolerance 1e-3)\n", "lse (f32)", worst);
  if (!(worst < 1e-3)) fail_msg("lse: max abs. error %.4g", worst);
}

// The GPU's forward and backward of case c against the CPU's, under every backward variant;
// frees the case.
static void expect_case_matches_cpu(const char *what, attn_case *c) {
  printf("%s\n", what);
  const int64_t nq = c->B * c->Tq * c->hq * c->d, nk = c->B * c->Tk * c->hkv * c->d;
  float *dk0 = lt_gpu_random(nk, 100.0f, true), *dv0 = lt_gpu_random(nk, 100.0f, true);
  attn_result want = run_cpu(c);
  for (int v = 0; v < N_RUNS; v++) {
    use_variants(v);
    attn_result got = run_gpu(c, dk0, dv0);
    lt_gpu_expect_close("o (bf16)", got.o, want.o, nq, 1e-2);
    if (want.gated)
      lt_gpu_expect_close("gated_out = gates * o (bf16)", got.gated, want.gated, nq, 1e-2);
    expect_lse_close(got.lse, want.lse, c->B * c->hq * c->Tq);
    lt_gpu_expect_close("dq (f32)", got.dq, want.dq, nq, 1e-2);
    lt_gpu_expect_close("dk (bf16)", got.dk, want.dk, nk, 1e-2);
    lt_gpu_expect_close("dv (bf16)", got.dv, want.dv, nk, 1e-2);
    free_result(&got);
  }
  use_variants(N_RUNS);
  free_result(&want), free(dk0), free(dv0);
  free_case(c);
}

static void expect_matches_cpu(const char *what, int64_t B, int64_t Tq, int64_t Tk, int hq, int hkv,
                               int d, bool causal, int doc_len) {
  attn_case c;
  make_case(&c, B, Tq, Tk, hq, hkv, d, causal, doc_len);
  expect_case_matches_cpu(what, &c);
}

// A sparse pattern over T tokens against the CPU: documents of doc_len tokens (0: none), with
// positions restarting at each one when `restart`.
static void expect_sparse_matches_cpu(const char *what, int64_t T, int hq, int hkv, int d,
                                      lt_attn_sparsity pattern, int doc_len, bool restart) {
  attn_case c;
  make_sparse_case(&c, 1, T, T, hq, hkv, d, pattern, doc_len, restart);
  expect_case_matches_cpu(what, &c);
}

static void test_causal_attention_matches_cpu_for_head_dims_64_and_128(void **state) {
  SKIP_WITHOUT_GPU();
  // 300 tokens: neither a multiple of the 64- nor of the 128-row tiles.
  expect_matches_cpu("causal, d = 64", 2, 300, 300, 4, 4, 64, true, 0);
  expect_matches_cpu("causal, d = 128", 2, 300, 300, 4, 4, 128, true, 0);
}

// Scores that rise along the keys by several powers of 2 a 64-key tile (every query and key has a
// component along the first dimension, the keys' growing with their index), and that fall so:
// rising, the running max outgrows the Hopper forward's lazy slack (softmax_probs_lazy) tile
// after tile, so the output is rescaled mid-row while the last tile's P V is in flight; falling,
// the first tile sets it for good.
static void test_scores_rising_and_falling_along_the_keys_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  for (int d = 64; d <= 128; d += 64)
    for (int sign = 1; sign >= -1; sign -= 2) {
      attn_case c;
      make_case(&c, 1, 300, 300, 2, 2, d, true, 0);
      for (int64_t j = 0; j < c.Tk; j++)
        for (int h = 0; h < c.hkv; h++) c.k[(j * c.hkv + h) * d] = 0.5f * sign * (float)(j / 8);
      for (int64_t i = 0; i < c.Tq; i++)
        for (int h = 0; h < c.hq; h++) c.q[(i * c.hq + h) * d] = 8.0f;
      char what[64];
      snprintf(what, sizeof what, "scores %s along the keys, d = %d",
               sign > 0 ? "rising" : "falling", d);
      expect_case_matches_cpu(what, &c);
    }
}

static void test_grouped_query_attention_matches_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_matches_cpu("6 query heads on 2 kv heads, d = 64", 1, 257, 257, 6, 2, 64, true, 0);
  expect_matches_cpu("4 query heads on 1 kv head, d = 128", 2, 190, 190, 4, 1, 128, true, 0);
}

// lt_attn_bwd_rope against the CPU's lt_attn_bwd then lt_rope_qkv_bwd, under every backward
// variant: the GPU's backward stores dK, rotated back, and dV straight into dqkv and one pass joins
// dq, so its dk and dv scratch keeps its poison (which shows the joined path ran). Positions
// start at 50000: angles up to 50300 radians, where sincosf's range reduction matters.
static void expect_rope_join_matches_cpu(const char *what, attn_case *c) {
  printf("%s\n", what);
  for (int64_t b = 0; b < c->B; b++)
    for (int64_t j = 0; j < c->Tk; j++)
      c->q_pos[b * c->Tq + j] = c->k_pos[b * c->Tk + j] = 50000 + (int32_t)j;
  const int64_t nq = c->B * c->Tq * c->hq * c->d, nk = c->B * c->Tk * c->hkv * c->d;
  const int64_t nj = nq + 2 * nk;
  float *dk0 = lt_gpu_random(nk, 100.0f, true), *dv0 = lt_gpu_random(nk, 100.0f, true);
  const rope_join rope = {500000.0f, lt_gpu_random(nj, 100.0f, true)};
  attn_result want = run_cpu(c);
  float *dqkv = malloc(4 * nj);
#define H(x, shape) lt_view(x, LT_F32, LT_CPU, shape)
  assert_ok(lt_rope_qkv_bwd(&lt_test_cpu, H(dqkv, JSHAPE(c)), H(want.dq, QSHAPE(c)),
                            H(want.dk, KSHAPE(c)), H(want.dv, KSHAPE(c)),
                            lt_view1(c->q_pos, LT_I32, LT_CPU, c->B * c->Tq), rope.theta));
#undef H
  for (int v = 0; v < N_RUNS; v++) {
    use_variants(v);
    attn_result got = run_gpu_with(c, dk0, dv0, &rope);
    lt_gpu_expect_close("dq (f32)", got.dq, want.dq, nq, 1e-2);
    lt_gpu_expect_close("dqkv = [R^T dq, R^T dk, dv] (bf16)", got.dqkv, dqkv, nj, 1e-2);
    assert_memory_equal(got.dk, dk0, 4 * nk);
    assert_memory_equal(got.dv, dv0, 4 * nk);
    free_result(&got);
  }
  use_variants(N_RUNS);
  free_result(&want), free(dqkv), free(dk0), free(dv0), free((float *)rope.dqkv0);
  free_case(c);
}

static void test_backward_joined_into_dqkv_with_rope_matches_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  attn_case c;
  make_case(&c, 2, 300, 300, 4, 4, 64, true, 0);
  expect_rope_join_matches_cpu("causal, d = 64", &c);
  make_case(&c, 1, 257, 257, 6, 2, 128, true, 0);
  expect_rope_join_matches_cpu("6 query heads on 2 kv heads, d = 128", &c);
  make_case(&c, 2, 1000, 1000, 3, 1, 64, true, 90);
  expect_rope_join_matches_cpu("3 query heads on 1 kv head, documents of 90 tokens", &c);
}

// Grids of a few waves go out in groups of (batch row, head) pairs, each group's longest tiles
// first (block_work_of): with 132 SMs (an H100) this forward has 2 groups of 45 pairs and this
// backward 2 groups of 15, each split 23 + 22 and 8 + 7.
static void test_blocks_in_groups_of_heads_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  printf("groups of pairs on 132 SMs: forward (2 blocks an SM) %d of 45, backward (1) %d of 15\n",
         lt_cuda_attn_head_groups(16, 45, 264), lt_cuda_attn_head_groups(16, 15, 132));
  expect_matches_cpu("3 x 15 query heads on 5 kv heads, 2048 tokens", 3, 2048, 2048, 15, 5, 64,
                     true, 0);
}

// The blocks' order (no GPU needed): every (tile rank, head, batch row) once, groups in order,
// and within a group rank by rank over its pairs; the groups chosen for shapes of the benchmarks.
static void test_block_order_covers_every_tile_once_longest_first(void **state) {
  (void)state;
  enum { MAX_TILES = 9, MAX_HEADS = 7, MAX_B = 3 };
  for (int n = 1; n <= MAX_TILES; n++)
    for (int heads = 1; heads <= MAX_HEADS; heads++)
      for (int batch = 1; batch <= MAX_B; batch++) {
        const int pairs = heads * batch;
        for (int groups = 1; groups <= pairs; groups++) {
          int seen[MAX_TILES * MAX_HEADS * MAX_B] = {0}, last_pair = -1, last_rank = 0;
          for (int l = 0; l < n * pairs; l++) {
            int rank, h, b;
            lt_cuda_attn_block_work(l, n, pairs, heads, groups, &rank, &h, &b);
            assert_true(rank >= 0 && rank < n && h >= 0 && h < heads && b >= 0 && b < batch);
            const int pair = b * heads + h;
            seen[pair * n + rank]++;
            // A new group starts at rank 0 with a pair past every earlier one; inside a group the
            // rank never falls.
            if (pair > last_pair)
              last_pair = pair, assert_true(rank == 0 || rank >= last_rank);
            else
              assert_true(rank >= last_rank);
            last_rank = rank;
          }
          for (int i = 0; i < n * pairs; i++) assert_int_equal(seen[i], 1);
        }
      }
  // An H100 (132 SMs): the d = 64 forward (2 blocks an SM) at B=1 H=16 T=16384 in groups of 2
  // heads, its backward (1 block) and the d = 128 forward at that length head by head, and at
  // T=4096 (32 tiles) the d = 128 forward in groups of 4 heads, the d = 64 one at B=8 H=12 of 16.
  assert_int_equal(lt_cuda_attn_head_groups(128, 16, 264), 8);
  assert_int_equal(lt_cuda_attn_head_groups(128, 16, 132), 16);
  assert_int_equal(lt_cuda_attn_head_groups(32, 16, 132), 4);
  assert_int_equal(lt_cuda_attn_head_groups(32, 96, 264), 6);
  // Fewer blocks than slots: any order finishes with the longest block; head by head.
  assert_int_equal(lt_cuda_attn_head_groups(4, 10, 264), 10);
}

static void test_document_masks_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_matches_cpu("documents of 19 tokens", 1, 333, 333, 2, 2, 64, true, 19);
  expect_matches_cpu("documents of 250 tokens, d = 128", 2, 600, 600, 2, 1, 128, true, 250);
  expect_matches_cpu("documents, not causal", 1, 200, 200, 2, 2, 64, false, 70);
}

static void test_query_chunk_at_the_end_of_the_keys_matches_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_matches_cpu("100 queries after 233 earlier keys", 2, 100, 333, 4, 2, 128, true, 0);
  expect_matches_cpu("not causal, Tq != Tk", 1, 70, 150, 2, 2, 64, false, 0);
}

static void test_more_tiles_than_one_list_pass_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  // The forward walks 1032 key tiles of 64, the backward 1032 query tiles of 64.
  expect_matches_cpu("64 queries over 66000 keys", 1, 64, 66000, 1, 1, 128, true, 0);
  expect_matches_cpu("66000 queries over 64 keys", 1, 66000, 64, 1, 1, 64, false, 0);
  // LT_ATTN_BWD v2 and v3 step 128 queries at a time: 1055 query tiles, and a dQ still pending
  // from the first pass; v4's producer lists them 32 a ballot through its ring of two buffers.
  expect_matches_cpu("135000 queries over 128 keys", 1, 135000, 128, 1, 1, 64, false, 0);
  // LT_ATTN_FWD v2 and v3 walk 128 keys at a time: 1055 key tiles through their rings of K and V
  // buffers, listed 32 a ballot by the producer, the causal diagonal last.
  expect_matches_cpu("130 queries over 135000 keys", 1, 130, 135000, 1, 1, 64, true, 0);
}

static void test_query_seeing_no_key_gets_zero_output_and_empty_lse(void **state) {
  SKIP_WITHOUT_GPU();
  attn_case c;
  make_case(&c, 1, 40, 64, 2, 2, 64, true, 0);
  for (int j = 0; j < 64; j++) c.k_pos[j] = 1000 + j; // every key in the queries' future
  const int64_t nk = 64 * 2 * 64;
  float *zeros = calloc(nk, 4);
  for (int v = 0; v < N_RUNS; v++) {
    use_variants(v);
    attn_result got = run_gpu(&c, zeros, zeros);
    for (int i = 0; i < 2 * 40; i++) assert_true(got.lse[i] == -INFINITY);
    assert_true(lt_test_max_abs(got.o, 40 * 2 * 64) == 0.0);
    assert_true(lt_test_max_abs(got.dq, 40 * 2 * 64) == 0.0);
    assert_true(lt_test_max_abs(got.dk, nk) == 0.0 && lt_test_max_abs(got.dv, nk) == 0.0);
    free_result(&got);
  }
  use_variants(N_RUNS);
  free(zeros);
  free_case(&c);
}

static void test_merge_matches_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  const int64_t B = 2, T = 70;
  const int H = 3, D = 64, n = B * T * H * D, nl = B * H * T;
  float *o = lt_gpu_random(n, 1.0f, true), *op = lt_gpu_random(n, 1.0f, true);
  float *lse = lt_gpu_random(nl, 2.0f, false), *lp = lt_gpu_random(nl, 2.0f, false);
  lse[0] = -INFINITY, lp[1] = -INFINITY; // an empty running result, an empty partial
  lt_tensor go = lt_gpu_upload(o, LT_BF16, 4, LT_SHAPE(B, T, H, D)),
            gl = lt_gpu_upload(lse, LT_F32, 3, LT_SHAPE(B, H, T));
  assert_ok(lt_attn_merge(&lt_test_gpu, go, gl, lt_gpu_upload(op, LT_BF16, 4, LT_SHAPE(B, T, H, D)),
                          lt_gpu_upload(lp, LT_F32, 3, LT_SHAPE(B, H, T))));
  assert_ok(lt_attn_merge(
      &lt_test_cpu, lt_view4(o, LT_F32, LT_CPU, B, T, H, D), lt_view3(lse, LT_F32, LT_CPU, B, H, T),
      lt_view4(op, LT_F32, LT_CPU, B, T, H, D), lt_view3(lp, LT_F32, LT_CPU, B, H, T)));
  float *got_o = lt_gpu_fetch(go), *got_l = lt_gpu_fetch(gl);
  lt_gpu_expect_close("merged o", got_o, o, n, 1e-2);
  expect_lse_close(got_l, lse, nl);
  free(o), free(op), free(lse), free(lp), free(got_o), free(got_l);
  lt_gpu_free_all();
}

// Ring attention's contract on the GPU: partials over key chunks merge to the full result, and
// their backwards, given the final lse and delta, sum to the full backward.
static void expect_partials_merge_and_sum_to_the_full_result(void) {
  attn_case c;
  make_case(&c, 1, 200, 200, 4, 2, 64, true, 0);
  const int64_t nq = 200 * 4 * 64, row = 2 * 64, nl = 4 * 200;
  const int64_t starts[2] = {0, 90}, counts[2] = {90, 110};
  lt_attn_spec full = gpu_spec(&c);
  lt_tensor q = lt_gpu_upload(c.q, LT_BF16, QSHAPE(&c)),
            dout = lt_gpu_upload(c.dout, LT_BF16, QSHAPE(&c));
  lt_tensor o = lt_gpu_upload(c.q, LT_BF16, QSHAPE(&c)),
            lse = lt_gpu_upload(c.q, LT_F32, LSHAPE(&c));
  assert_ok(lt_attn_fwd(&lt_test_gpu, o, lse, q, lt_gpu_upload(c.k, LT_BF16, KSHAPE(&c)),
                        lt_gpu_upload(c.v, LT_BF16, KSHAPE(&c)), &full));
  float *neg_inf = malloc(4 * nl);
  for (int64_t i = 0; i < nl; i++) neg_inf[i] = -INFINITY;
  lt_tensor o_run = lt_gpu_upload(c.q, LT_BF16, QSHAPE(&c)),
            lse_run = lt_gpu_upload(neg_inf, LT_F32, LSHAPE(&c));
  assert_ok(lt_zero(&lt_test_gpu, o_run));
  lt_tensor delta = lt_gpu_upload(neg_inf, LT_F32, LSHAPE(&c));
  assert_ok(lt_attn_bwd_delta(&lt_test_gpu, delta, dout, o));
  lt_tensor dq_sum = lt_gpu_upload(c.q, LT_F32, QSHAPE(&c));
  assert_ok(lt_zero(&lt_test_gpu, dq_sum));
  float *dk_parts = malloc(4 * 200 * row), *dv_parts = malloc(4 * 200 * row);
  for (int p = 0; p < 2; p++) {
    const int64_t kshape[4] = {1, counts[p], 2, 64};
    lt_tensor k = lt_gpu_upload(c.k + starts[p] * row, LT_BF16, 4, kshape);
    lt_tensor v = lt_gpu_upload(c.v + starts[p] * row, LT_BF16, 4, kshape);
    lt_attn_spec part = full;
    part.k_pos = lt_gpu_upload_i32(c.k_pos + starts[p], 2, LT_SHAPE(1, counts[p]));
    lt_tensor o_part = lt_gpu_upload(c.q, LT_BF16, QSHAPE(&c)),
              lse_part = lt_gpu_upload(c.q, LT_F32, LSHAPE(&c));
    assert_ok(lt_attn_fwd(&lt_test_gpu, o_part, lse_part, q, k, v, &part));
    assert_ok(lt_attn_merge(&lt_test_gpu, o_run, lse_run, o_part, lse_part));
    float *zeros = calloc(counts[p] * row, 4);
    lt_tensor dk = lt_gpu_upload(zeros, LT_F32, 4, kshape),
              dv = lt_gpu_upload(zeros, LT_F32, 4, kshape);
    assert_ok(lt_attn_bwd(&lt_test_gpu, dq_sum, dk, dv, dout, q, k, v, lse, delta, &part));
    float *gk = lt_gpu_fetch(dk), *gv = lt_gpu_fetch(dv);
    memcpy(dk_parts + starts[p] * row, gk, 4 * counts[p] * row);
    memcpy(dv_parts + starts[p] * row, gv, 4 * counts[p] * row);
    free(gk), free(gv), free(zeros);
  }
  float *want_o = lt_gpu_fetch(o), *got_o = lt_gpu_fetch(o_run);
  float *want_l = lt_gpu_fetch(lse), *got_l = lt_gpu_fetch(lse_run);
  lt_gpu_expect_close("merged partials vs full o", got_o, want_o, nq, 1e-2);
  expect_lse_close(got_l, want_l, nl);
  // The full backward (f32 dk, dv) against the partials'.
  float *zeros = calloc(200 * row, 4);
  lt_tensor dq = lt_gpu_upload(zeros, LT_F32, QSHAPE(&c)),
            dk = lt_gpu_upload(zeros, LT_F32, KSHAPE(&c));
  lt_tensor dv = lt_gpu_upload(zeros, LT_F32, KSHAPE(&c));
  assert_ok(lt_zero(&lt_test_gpu, dq));
  assert_ok(lt_attn_bwd(&lt_test_gpu, dq, dk, dv, dout, q, lt_gpu_upload(c.k, LT_BF16, KSHAPE(&c)),
                        lt_gpu_upload(c.v, LT_BF16, KSHAPE(&c)), lse, delta, &full));
  float *want_dq = lt_gpu_fetch(dq), *got_dq = lt_gpu_fetch(dq_sum);
  float *want_dk = lt_gpu_fetch(dk), *want_dv = lt_gpu_fetch(dv);
  lt_gpu_expect_close("dq summed over partials", got_dq, want_dq, nq, 1e-5);
  lt_gpu_expect_close("dk of the partials (f32)", dk_parts, want_dk, 200 * row, 1e-5);
  lt_gpu_expect_close("dv of the partials (f32)", dv_parts, want_dv, 200 * row, 1e-5);
  free(want_o), free(got_o), free(want_l), free(got_l), free(want_dq), free(got_dq), free(want_dk),
      free(want_dv), free(dk_parts), free(dv_parts), free(zeros), free(neg_inf);
  lt_gpu_free_all();
  free_case(&c);
}

static void test_partials_over_key_chunks_merge_and_sum_to_the_full_result(void **state) {
  SKIP_WITHOUT_GPU();
  for (int v = 0; v < N_RUNS; v++) {
    use_variants(v);
    expect_partials_merge_and_sum_to_the_full_result();
  }
  use_variants(N_RUNS);
}

#define PATTERN(...) ((lt_attn_sparsity){__VA_ARGS__})

static void test_sliding_windows_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_sparse_matches_cpu("window 100, d = 64, grouped heads", 600, 4, 2, 64,
                            PATTERN(.window = 100), 0, false);
  expect_sparse_matches_cpu("window 200, d = 128, 333 tokens", 333, 2, 1, 128,
                            PATTERN(.window = 200), 0, false);
  expect_sparse_matches_cpu("window 1: each query sees itself", 200, 2, 2, 64, PATTERN(.window = 1),
                            0, false);
}

static void test_sink_tokens_alone_and_with_a_window_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_sparse_matches_cpu("sinks 4", 500, 2, 2, 64, PATTERN(.sinks = 4), 0, false);
  expect_sparse_matches_cpu("window 64 + sinks 3, d = 128", 700, 2, 1, 128,
                            PATTERN(.window = 64, .sinks = 3), 0, false);
}

static void test_local_strided_and_global_blocks_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_sparse_matches_cpu("local blocks 2 of 32", 450, 2, 2, 64,
                            PATTERN(.block_size = 32, .local_blocks = 2), 0, false);
  expect_sparse_matches_cpu("stride 3 + local 1, blocks of 16", 400, 2, 1, 64,
                            PATTERN(.block_size = 16, .local_blocks = 1, .stride = 3), 0, false);
  expect_sparse_matches_cpu("global blocks 2 + local 1, blocks of 64, d = 128", 520, 2, 2, 128,
                            PATTERN(.block_size = 64, .local_blocks = 1, .global_blocks = 2), 0,
                            false);
  expect_sparse_matches_cpu("every part at once", 600, 4, 2, 64,
                            PATTERN(.window = 50, .sinks = 2, .block_size = 40, .local_blocks = 1,
                                    .stride = 4, .global_blocks = 1),
                            0, false);
}

static void test_sparse_patterns_with_documents_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_sparse_matches_cpu("window 90 + sinks 2, documents of 150, positions restart", 700, 2, 2,
                            64, PATTERN(.window = 90, .sinks = 2), 150, true);
  expect_sparse_matches_cpu("local 2 + global 1 of 32, documents of 230, d = 128", 600, 2, 1, 128,
                            PATTERN(.block_size = 32, .local_blocks = 2, .global_blocks = 1), 230,
                            false);
  expect_sparse_matches_cpu("stride 2 of 16 + sinks 5, documents of 97, positions restart", 400, 2,
                            2, 64, PATTERN(.block_size = 16, .stride = 2, .sinks = 5), 97, true);
}

static void test_sparse_query_chunk_at_the_end_of_the_keys_matches_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  attn_case c;
  make_sparse_case(&c, 2, 150, 600, 2, 2, 64, PATTERN(.window = 128, .sinks = 4), 0, false);
  expect_case_matches_cpu("150 queries after 450 keys, window 128 + sinks 4", &c);
  make_sparse_case(&c, 1, 200, 500, 2, 1, 128, PATTERN(.block_size = 50, .local_blocks = 2), 170,
                   true);
  expect_case_matches_cpu("200 queries after 300 keys, local blocks, documents of 170", &c);
}

static void test_sparse_patterns_without_causality_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  attn_case c;
  make_sparse_case(&c, 1, 300, 300, 2, 2, 64, PATTERN(.window = 50, .sinks = 2), 0, false);
  c.causal = false;
  expect_case_matches_cpu("window 50 + sinks 2, not causal", &c);
  make_sparse_case(&c, 1, 260, 260, 2, 1, 128, PATTERN(.block_size = 32, .local_blocks = 1), 0,
                   false);
  c.causal = false;
  expect_case_matches_cpu("local blocks, not causal, d = 128", &c);
}

// Tiles out of (document, position) order leave the kernels no range to search: they classify
// every tile instead, with the same results.
static void test_sparse_patterns_over_positions_out_of_order_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  attn_case c;
  make_sparse_case(&c, 1, 400, 400, 2, 2, 64, PATTERN(.window = 60, .sinks = 3), 0, false);
  for (int j = 0; j < 400; j++) c.k_pos[j] = c.q_pos[j] = 399 - j;
  expect_case_matches_cpu("window 60 + sinks 3, positions reversed", &c);
}

static void test_sparse_pattern_over_more_tiles_than_one_list_pass_matches_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  // The sink keys' block walks every one of the 1032 query tiles of 64 in the backward.
  expect_sparse_matches_cpu("66000 tokens, window 256 + sinks 4", 66000, 1, 1, 64,
                            PATTERN(.window = 256, .sinks = 4), 0, false);
}

static void test_heads_gated_off_get_zero_output_and_no_gradient(void **state) {
  SKIP_WITHOUT_GPU();
  attn_case c;
  make_case(&c, 2, 300, 300, 4, 2, 64, true, 0);
  add_gates(&c, 0.4, true);
  const int64_t nk = 2 * 300 * 2 * 64, n_gates = 2 * 300 * 4;
  float *zeros = calloc(nk, 4);
  for (int v = 0; v < N_RUNS; v++) {
    use_variants(v);
    attn_result got = run_gpu(&c, zeros, zeros);
    for (int64_t i = 0; i < n_gates; i++) {
      if (c.gates[i] != 0.0f) continue;
      const int64_t b = i / (300 * 4), t = i / 4 % 300, h = i % 4;
      assert_true(got.lse[(b * 4 + h) * 300 + t] == -INFINITY);
      assert_true(lt_test_max_abs(got.o + i * 64, 64) == 0.0);
      assert_true(lt_test_max_abs(got.gated + i * 64, 64) == 0.0);
      assert_true(lt_test_max_abs(got.dq + i * 64, 64) == 0.0);
    }
    free_result(&got);
  }
  use_variants(N_RUNS);
  free(zeros);
  expect_case_matches_cpu("40% of the (query, head) pairs gated off, and all of head 0", &c);
  make_sparse_case(&c, 1, 500, 500, 4, 1, 128, PATTERN(.window = 100, .sinks = 2), 120, true);
  add_gates(&c, 0.5, false);
  expect_case_matches_cpu("gates with a window, sinks and documents, d = 128", &c);
  // The first 70 queries of each row (more than a tile of them) see no key: o and gated_out 0.
  make_case(&c, 2, 260, 260, 4, 2, 64, true, 0);
  for (int64_t j = 0; j < 2 * 260; j++) c.k_pos[j] += 70;
  add_gates(&c, 0.3, false);
  expect_case_matches_cpu("gates with queries that see no key", &c);
}

// The tiles the GPU computes in a forward and backward of T tokens (one head of 128).
static int64_t tiles_for(int64_t T, lt_attn_sparsity pattern) {
  attn_case c;
  int64_t tiles = 0;
  make_sparse_case(&c, 1, T, T, 1, 1, 128, pattern, 0, false);
  c.tiles_visited = &tiles;
  const int64_t nk = T * 128;
  float *zeros = calloc(nk, 4);
  attn_result r = run_gpu(&c, zeros, zeros);
  free_result(&r), free(zeros);
  free_case(&c);
  return tiles;
}

static void test_sliding_window_work_grows_linearly_with_sequence_length(void **state) {
  SKIP_WITHOUT_GPU();
  const lt_attn_sparsity patterns[2] = {PATTERN(.window = 1024),
                                        PATTERN(.window = 1024, .sinks = 4)};
  const int64_t dense = tiles_for(32768, PATTERN(.window = 0));
  for (int i = 0; i < 2; i++) {
    const int64_t short_run = tiles_for(8192, patterns[i]),
                  long_run = tiles_for(32768, patterns[i]);
    const double growth = (double)long_run / (double)short_run;
    printf("  window 1024%s: %lld tiles at 8K, %lld at 32K (x%.2f for 4x the tokens); dense "
           "causal %lld at 32K\n",
           i ? " + sinks 4" : "", (long long)short_run, (long long)long_run, growth,
           (long long)dense);
    assert_true(growth > 3.6 && growth < 4.5);
    assert_true(long_run < 0.15 * (double)dense);
  }
}

static void test_unsupported_head_dim_is_a_config_error(void **state) {
  SKIP_WITHOUT_GPU();
  attn_case c;
  make_case(&c, 1, 16, 16, 1, 1, 96, true, 0);
  lt_attn_spec s = gpu_spec(&c);
  lt_tensor q = lt_gpu_upload(c.q, LT_BF16, QSHAPE(&c)),
            lse = lt_gpu_upload(c.q, LT_F32, LSHAPE(&c));
  EXPECT_ERROR(lt_attn_fwd(&lt_test_gpu, q, lse, q, q, q, &s), LT_ERR_CONFIG,
               "head dims 64 and 128", "96", "model.head_dim");
  lt_gpu_free_all();
  free_case(&c);
}

static void test_unknown_kernel_variants_are_config_errors(void **state) {
  SKIP_WITHOUT_GPU();
  attn_case c;
  make_case(&c, 1, 16, 16, 1, 1, 64, true, 0);
  lt_attn_spec s = gpu_spec(&c);
  lt_tensor x = lt_gpu_upload(c.q, LT_BF16, QSHAPE(&c)),
            dq = lt_gpu_upload(c.q, LT_F32, QSHAPE(&c));
  lt_tensor lse = lt_gpu_upload(c.q, LT_F32, LSHAPE(&c));
  setenv("LT_ATTN_FWD", "v9", 1);
  EXPECT_ERROR(lt_attn_fwd(&lt_test_gpu, x, lse, x, x, x, &s), LT_ERR_CONFIG, "LT_ATTN_FWD=v9",
               "attention forward", "v1 to v3");
  use_variants(N_RUNS);
  setenv("LT_ATTN_BWD", "v9", 1);
  EXPECT_ERROR(lt_attn_bwd(&lt_test_gpu, dq, x, x, x, x, x, x, lse, lse, &s), LT_ERR_CONFIG,
               "LT_ATTN_BWD=v9", "attention backward", "v1 to v4");
  use_variants(N_RUNS);
  lt_gpu_free_all();
  free_case(&c);
}

int main(void) {
  save_env(&saved_fwd), save_env(&saved_bwd);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_causal_attention_matches_cpu_for_head_dims_64_and_128),
      cmocka_unit_test(test_scores_rising_and_falling_along_the_keys_match_cpu),
      cmocka_unit_test(test_grouped_query_attention_matches_cpu),
      cmocka_unit_test(test_backward_joined_into_dqkv_with_rope_matches_cpu),
      cmocka_unit_test(test_blocks_in_groups_of_heads_match_cpu),
      cmocka_unit_test(test_block_order_covers_every_tile_once_longest_first),
      cmocka_unit_test(test_document_masks_match_cpu),
      cmocka_unit_test(test_query_chunk_at_the_end_of_the_keys_matches_cpu),
      cmocka_unit_test(test_more_tiles_than_one_list_pass_match_cpu),
      cmocka_unit_test(test_query_seeing_no_key_gets_zero_output_and_empty_lse),
      cmocka_unit_test(test_merge_matches_cpu),
      cmocka_unit_test(test_partials_over_key_chunks_merge_and_sum_to_the_full_result),
      cmocka_unit_test(test_sliding_windows_match_cpu),
      cmocka_unit_test(test_sink_tokens_alone_and_with_a_window_match_cpu),
      cmocka_unit_test(test_local_strided_and_global_blocks_match_cpu),
      cmocka_unit_test(test_sparse_patterns_with_documents_match_cpu),
      cmocka_unit_test(test_sparse_query_chunk_at_the_end_of_the_keys_matches_cpu),
      cmocka_unit_test(test_sparse_patterns_without_causality_match_cpu),
      cmocka_unit_test(test_sparse_patterns_over_positions_out_of_order_match_cpu),
      cmocka_unit_test(test_sparse_pattern_over_more_tiles_than_one_list_pass_matches_cpu),
      cmocka_unit_test(test_heads_gated_off_get_zero_output_and_no_gradient),
      cmocka_unit_test(test_sliding_window_work_grows_linearly_with_sequence_length),
      cmocka_unit_test(test_unsupported_head_dim_is_a_config_error),
      cmocka_unit_test(test_unknown_kernel_variants_are_config_errors),
  };
  return cmocka_run_group_tests(tests, lt_gpu_group_setup, lt_gpu_group_teardown);
}
