// The blocked linear-attention kernels (Lightning Attention-2's intra/inter split) against two
// independent definitions in double precision, forward and backward:
//   the recurrent form  S_t = lambda S_{t-1} + k_t^T v_t, o_t = q_t S_t (reset at documents), and
//   the quadratic form  o_i = sum_{j <= i, same document} lambda^(i-j) (q_i . k_j) v_j;
// and the contract LASP-2 builds on: chunk states combined by decay-weighted prefix sums give the
// whole sequence's result, and the prefix gradients summed the other way give its backward.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "testing.h"

static lt_ctx ctx;

typedef struct lin_case {
  int64_t B, T;
  int hq, hkv, d, e;
  float *q, *k, *v, *dout; // inputs and an upstream gradient
  float log_decay[8];      // per query head
  bool decay;              // use log_decay
  int32_t *doc;            // (B, T) or NULL
  float *prefix;           // (B, Hq, D, E) or NULL
  int32_t prefix_doc[4];   // per batch row
} lin_case;

static int64_t nq(const lin_case *c) {
  return c->B * c->T * c->hq * c->d;
}
static int64_t nk(const lin_case *c) {
  return c->B * c->T * c->hkv * c->d;
}
static int64_t nv(const lin_case *c) {
  return c->B * c->T * c->hkv * c->e;
}
static int64_t no(const lin_case *c) {
  return c->B * c->T * c->hq * c->e;
}
static int64_t ns(const lin_case *c) {
  return c->B * c->hq * (int64_t)c->d * c->e;
}

static float *normal(int64_t n, uint64_t seed, float std) {
  float *x = malloc(sizeof(float) * (size_t)n);
  lt_test_fill_normal(x, n, seed, std);
  return x;
}

static lin_case make_case(int64_t B, int64_t T, int hq, int hkv, int d, int e, bool decay,
                          uint64_t seed) {
  lin_case c = {.B = B, .T = T, .hq = hq, .hkv = hkv, .d = d, .e = e, .decay = decay};
  c.q = normal(nq(&c), seed, 0.5f);
  c.k = normal(nk(&c), seed + 1, 0.5f);
  c.v = normal(nv(&c), seed + 2, 1.0f);
  c.dout = normal(no(&c), seed + 3, 1.0f);
  const float lambdas[8] = {0.9f, 0.6f, 0.99f, 0.75f, 0.95f, 0.5f, 0.8f, 0.97f};
  for (int h = 0; h < hq; h++) c.log_decay[h] = logf(lambdas[h]);
  return c;
}

// Documents of the given lengths, repeated to fill each row, numbered from 0 in every row.
static void set_docs(lin_case *c, const int *lengths, int n_lengths) {
  c->doc = malloc(sizeof(int32_t) * (size_t)(c->B * c->T));
  for (int64_t b = 0; b < c->B; b++) {
    int32_t id = 0, left = lengths[0];
    for (int64_t t = 0; t < c->T; t++) {
      if (left == 0) id++, left = lengths[(id + b) % n_lengths];
      c->doc[b * c->T + t] = id;
      left--;
    }
  }
}

static void free_case(lin_case *c) {
  free(c->q), free(c->k), free(c->v), free(c->dout), free(c->doc), free(c->prefix);
}

static lt_linear_attn_spec spec_of(const lin_case *c, int64_t block) {
  lt_linear_attn_spec spec = {.block = block};
  if (c->decay) spec.log_decay = lt_view1((float *)c->log_decay, LT_F32, LT_CPU, c->hq);
  if (c->doc) {
    spec.doc = lt_view2(c->doc, LT_I32, LT_CPU, c->B, c->T);
    spec.prefix_doc = lt_view1((int32_t *)c->prefix_doc, LT_I32, LT_CPU, c->B);
  }
  return spec;
}

static lt_tensor tq(const lin_case *c, float *x) {
  return lt_view4(x, LT_F32, LT_CPU, c->B, c->T, c->hq, c->d);
}
static lt_tensor tk(const lin_case *c, float *x) {
  return lt_view4(x, LT_F32, LT_CPU, c->B, c->T, c->hkv, c->d);
}
static lt_tensor tv(const lin_case *c, float *x) {
  return lt_view4(x, LT_F32, LT_CPU, c->B, c->T, c->hkv, c->e);
}
static lt_tensor to(const lin_case *c, float *x) {
  return lt_view4(x, LT_F32, LT_CPU, c->B, c->T, c->hq, c->e);
}
static lt_tensor ts(const lin_case *c, float *x) {
  return lt_view4(x, LT_F32, LT_CPU, c->B, c->hq, c->d, c->e);
}

typedef struct grads {
  float *dq, *dk, *dv, *dprefix;
} grads;

static grads zero_grads(const lin_case *c) {
  return (grads){calloc((size_t)nq(c), 4), calloc((size_t)nk(c), 4), calloc((size_t)nv(c), 4),
                 calloc((size_t)ns(c), 4)};
}
static void free_grads(grads *g) {
  free(g->dq), free(g->dk), free(g->dv), free(g->dprefix);
}

static float *kernel_forward(const lin_case *c, int64_t block) {
  float *o = malloc(sizeof(float) * (size_t)no(c));
  lt_linear_attn_spec spec = spec_of(c, block);
  assert_ok(lt_linear_attn_fwd(&ctx, to(c, o), tq(c, c->q), tk(c, c->k), tv(c, c->v),
                               ts(c, c->prefix), &spec));
  return o;
}

static grads kernel_backward(const lin_case *c, int64_t block) {
  grads g = zero_grads(c);
  lt_linear_attn_spec spec = spec_of(c, block);
  assert_ok(lt_linear_attn_bwd(&ctx, tq(c, g.dq), tk(c, g.dk), tv(c, g.dv),
                               ts(c, c->prefix ? g.dprefix : NULL), to(c, c->dout), tq(c, c->q),
                               tk(c, c->k), tv(c, c->v), ts(c, c->prefix), &spec));
  return g;
}

// --- the two definitions, in double ---

static double lambda_of(const lin_case *c, int h) {
  return c->decay ? exp((double)c->log_decay[h]) : 1.0;
}
static int32_t doc_at(const lin_case *c, int64_t b, int64_t t) {
  return c->doc ? c->doc[b * c->T + t] : 0;
}
// The document of the state before token 0.
static int32_t start_doc(const lin_case *c, int64_t b) {
  return c->doc ? (c->prefix ? c->prefix_doc[b] : c->doc[b * c->T]) : 0;
}
static const float *at(const float *x, const lin_case *c, int64_t b, int64_t t, int heads, int h,
                       int width) {
  return x + ((b * c->T + t) * heads + h) * width;
}

// o_i = sum_{j <= i, same doc} lambda^(i-j) (q_i . k_j) v_j + [doc_i = prefix doc] lambda^(i+1) q_i
// P, and its gradients (g != NULL): each pair's weight w_ij = lambda^(i-j) (q_i . k_j).
static void quadratic(const lin_case *c, float *o, grads *g) {
  const int group = c->hq / c->hkv, d = c->d, e = c->e;
  if (o) memset(o, 0, sizeof(float) * (size_t)no(c));
  for (int64_t b = 0; b < c->B; b++)
    for (int h = 0; h < c->hq; h++) {
      const int kvh = h / group;
      const double lambda = lambda_of(c, h);
      const float *p = c->prefix ? c->prefix + (b * c->hq + h) * d * e : NULL;
      for (int64_t i = 0; i < c->T; i++) {
        const float *qi = at(c->q, c, b, i, c->hq, h, d), *gi = at(c->dout, c, b, i, c->hq, h, e);
        double acc[64] = {0}, dqi[64] = {0};
        for (int64_t j = 0; j <= i; j++) {
          if (doc_at(c, b, j) != doc_at(c, b, i)) continue;
          const float *kj = at(c->k, c, b, j, c->hkv, kvh, d),
                      *vj = at(c->v, c, b, j, c->hkv, kvh, e);
          double qk = 0, gv = 0, w = pow(lambda, (double)(i - j));
          for (int y = 0; y < d; y++) qk += (double)qi[y] * kj[y];
          for (int x = 0; x < e; x++) acc[x] += w * qk * vj[x], gv += (double)gi[x] * vj[x];
          if (!g) continue;
          for (int y = 0; y < d; y++) {
            dqi[y] += w * gv * kj[y];
            g->dk[((b * c->T + j) * c->hkv + kvh) * d + y] += (float)(w * gv * qi[y]);
          }
          for (int x = 0; x < e; x++)
            g->dv[((b * c->T + j) * c->hkv + kvh) * e + x] += (float)(w * qk * gi[x]);
        }
        if (p && doc_at(c, b, i) == start_doc(c, b)) {
          const double w = pow(lambda, (double)(i + 1));
          for (int y = 0; y < d; y++)
            for (int x = 0; x < e; x++) {
              acc[x] += w * qi[y] * p[y * e + x];
              if (!g) continue;
              dqi[y] += w * p[y * e + x] * gi[x];
              g->dprefix[(b * c->hq + h) * d * e + y * e + x] += (float)(w * qi[y] * gi[x]);
            }
        }
        if (o)
          for (int x = 0; x < e; x++) o[((b * c->T + i) * c->hq + h) * e + x] = (float)acc[x];
        if (g)
          for (int y = 0; y < d; y++) g->dq[((b * c->T + i) * c->hq + h) * d + y] += (float)dqi[y];
      }
    }
}

// The definition: S_t = [same document as t-1] lambda S_{t-1} + k_t^T v_t, o_t = q_t S_t, S_{-1}
// the prefix; the backward runs the recurrence in reverse. state (if not NULL) gets S_{T-1}
// over the last document only, which is what the recurrence holds there.
static void recurrent(const lin_case *c, float *o, grads *g, float *state) {
  const int group = c->hq / c->hkv, d = c->d, e = c->e;
  double *s = malloc(sizeof(double) * (size_t)(c->T + 1) * d * e); // S_{t-1} at index t
  for (int64_t b = 0; b < c->B; b++)
    for (int h = 0; h < c->hq; h++) {
      const int kvh = h / group;
      const double lambda = lambda_of(c, h);
      for (int x = 0; x < d * e; x++)
        s[x] = c->prefix ? c->prefix[(b * c->hq + h) * d * e + x] : 0.0;
      for (int64_t t = 0; t < c->T; t++) {
        const int32_t before = t ? doc_at(c, b, t - 1) : start_doc(c, b);
        const double keep = doc_at(c, b, t) == before ? lambda : 0.0;
        const float *kt = at(c->k, c, b, t, c->hkv, kvh, d),
                    *vt = at(c->v, c, b, t, c->hkv, kvh, e);
        const float *qt = at(c->q, c, b, t, c->hq, h, d);
        double *prev = s + t * d * e, *cur = prev + d * e;
        for (int y = 0; y < d; y++)
          for (int x = 0; x < e; x++)
            cur[y * e + x] = keep * prev[y * e + x] + (double)kt[y] * vt[x];
        if (!o) continue;
        for (int x = 0; x < e; x++) {
          double acc = 0;
          for (int y = 0; y < d; y++) acc += qt[y] * cur[y * e + x];
          o[((b * c->T + t) * c->hq + h) * e + x] = (float)acc;
        }
      }
      if (state)
        for (int x = 0; x < d * e; x++)
          state[(b * c->hq + h) * d * e + x] = (float)s[c->T * d * e + x];
      if (!g) continue;
      double ds[64 * 64] = {0}; // d/dS_t
      for (int64_t t = c->T - 1; t >= 0; t--) {
        const float *kt = at(c->k, c, b, t, c->hkv, kvh, d),
                    *vt = at(c->v, c, b, t, c->hkv, kvh, e);
        const float *qt = at(c->q, c, b, t, c->hq, h, d), *gt = at(c->dout, c, b, t, c->hq, h, e);
        const double *cur = s + (t + 1) * d * e;
        for (int y = 0; y < d; y++) {
          double dqy = 0, dky = 0;
          for (int x = 0; x < e; x++) {
            ds[y * e + x] += (double)qt[y] * gt[x];
            dqy += cur[y * e + x] * gt[x];
            dky += ds[y * e + x] * vt[x];
          }
          g->dq[((b * c->T + t) * c->hq + h) * d + y] += (float)dqy;
          g->dk[((b * c->T + t) * c->hkv + kvh) * d + y] += (float)dky;
        }
        for (int x = 0; x < e; x++) {
          double dvx = 0;
          for (int y = 0; y < d; y++) dvx += kt[y] * ds[y * e + x];
          g->dv[((b * c->T + t) * c->hkv + kvh) * e + x] += (float)dvx;
        }
        const int32_t before = t ? doc_at(c, b, t - 1) : start_doc(c, b);
        const double keep = doc_at(c, b, t) == before ? lambda : 0.0;
        for (int x = 0; x < d * e; x++) ds[x] *= keep;
      }
      if (c->prefix)
        for (int x = 0; x < d * e; x++) g->dprefix[(b * c->hq + h) * d * e + x] = (float)ds[x];
    }
  free(s);
}

static double worst_err = 0; // over the program, printed at the end

// max |a - b| / max |b|: errors against the size of the result, which grows with T.
static double rel_err(const float *a, const float *b, int64_t n) {
  const double err = lt_test_max_rel_diff(a, b, n, fmax(lt_test_max_abs(b, n), 1e-30));
  if (!(err <= worst_err)) worst_err = err;
  return err;
}

#define TOL 3e-6

static void expect_grads_close(const lin_case *c, const grads *a, const grads *b) {
  assert_true(rel_err(a->dq, b->dq, nq(c)) < TOL);
  assert_true(rel_err(a->dk, b->dk, nk(c)) < TOL);
  assert_true(rel_err(a->dv, b->dv, nv(c)) < TOL);
  if (c->prefix) assert_true(rel_err(a->dprefix, b->dprefix, ns(c)) < TOL);
}

// The kernel against both definitions, forward and backward, at one block size.
static void expect_matches_definitions(const lin_case *c, int64_t block) {
  float *o = kernel_forward(c, block), *oq = malloc(sizeof(float) * (size_t)no(c));
  float *orec = malloc(sizeof(float) * (size_t)no(c));
  quadratic(c, oq, NULL);
  recurrent(c, orec, NULL, NULL);
  assert_true(rel_err(o, oq, no(c)) < TOL);
  assert_true(rel_err(o, orec, no(c)) < TOL);
  grads g = kernel_backward(c, block), gq = zero_grads(c), grec = zero_grads(c);
  quadratic(c, NULL, &gq);
  recurrent(c, NULL, &grec, NULL);
  expect_grads_close(c, &g, &gq);
  expect_grads_close(c, &g, &grec);
  free_grads(&g), free_grads(&gq), free_grads(&grec);
  free(o), free(oq), free(orec);
}

static void test_blocked_form_equals_recurrent_and_quadratic_forms(void **state) {
  (void)state;
  lin_case c = make_case(2, 45, 4, 4, 8, 6, false, 1);
  expect_matches_definitions(&c, 16); // three blocks, the last partial
  free_case(&c);
}

static void test_blocked_form_with_decay_equals_both_forms(void **state) {
  (void)state;
  lin_case c = make_case(2, 45, 4, 4, 8, 6, true, 2);
  expect_matches_definitions(&c, 16);
  free_case(&c);
}

static void test_any_block_size_gives_the_same_result(void **state) {
  (void)state;
  lin_case c = make_case(1, 40, 4, 2, 8, 8, true, 3);
  const int64_t blocks[] = {1, 3, 8, 40, 64};
  for (int i = 0; i < 5; i++) expect_matches_definitions(&c, blocks[i]);
  free_case(&c);
}

static void test_grouped_query_heads_equal_both_forms(void **state) {
  (void)state;
  lin_case c = make_case(2, 33, 6, 2, 8, 9, true, 4); // v one column wider, as with a denominator
  expect_matches_definitions(&c, 8);
  free_case(&c);
}

static void test_document_mask_matches_both_forms(void **state) {
  (void)state;
  lin_case c = make_case(2, 50, 4, 2, 8, 6, true, 5);
  const int lengths[] = {7, 19, 3, 12}; // boundaries inside and at the edges of 16-token blocks
  set_docs(&c, lengths, 4);
  expect_matches_definitions(&c, 16);
  free_case(&c);
}

static void test_prefix_state_matches_both_forms(void **state) {
  (void)state;
  lin_case c = make_case(2, 30, 4, 2, 8, 6, true, 6);
  c.prefix = normal(ns(&c), 60, 1.0f);
  expect_matches_definitions(&c, 8);
  const int lengths[] = {5, 11}; // the prefix's document continues into row 0, not row 1
  set_docs(&c, lengths, 2);
  c.prefix_doc[0] = 0, c.prefix_doc[1] = -1;
  expect_matches_definitions(&c, 8);
  free_case(&c);
}

// Each document run on its own, as a sequence of its own, gives the masked result's rows.
static void test_document_mask_equals_running_each_document_alone(void **state) {
  (void)state;
  lin_case c = make_case(1, 48, 4, 2, 8, 8, true, 7);
  const int lengths[] = {13, 20, 15};
  set_docs(&c, lengths, 3);
  float *o = kernel_forward(&c, 16);
  grads g = kernel_backward(&c, 16);
  int64_t start = 0;
  for (int i = 0; i < 3; i++) {
    const int64_t len = lengths[i];
    lin_case part = c;
    part.T = len, part.doc = NULL;
    part.q = c.q + start * c.hq * c.d, part.k = c.k + start * c.hkv * c.d;
    part.v = c.v + start * c.hkv * c.e, part.dout = c.dout + start * c.hq * c.e;
    float *po = kernel_forward(&part, 16);
    grads pg = kernel_backward(&part, 16);
    assert_true(rel_err(po, o + start * c.hq * c.e, no(&part)) < TOL);
    assert_true(rel_err(pg.dq, g.dq + start * c.hq * c.d, nq(&part)) < TOL);
    assert_true(rel_err(pg.dk, g.dk + start * c.hkv * c.d, nk(&part)) < TOL);
    assert_true(rel_err(pg.dv, g.dv + start * c.hkv * c.e, nv(&part)) < TOL);
    free(po), free_grads(&pg);
    start += len;
  }
  free(o), free_grads(&g);
  free_case(&c);
}

static void test_state_is_the_recurrent_state_of_the_last_document(void **state) {
  (void)state;
  lin_case c = make_case(2, 37, 4, 2, 8, 6, true, 8);
  const int lengths[] = {20, 9};
  set_docs(&c, lengths, 2);
  float *m = malloc(sizeof(float) * (size_t)ns(&c)), *ref = malloc(sizeof(float) * (size_t)ns(&c));
  lt_linear_attn_spec spec = spec_of(&c, 8);
  assert_ok(lt_linear_attn_state(&ctx, ts(&c, m), tk(&c, c.k), tv(&c, c.v), &spec));
  recurrent(&c, NULL, NULL, ref);
  assert_true(rel_err(m, ref, ns(&c)) < TOL);
  free(m), free(ref);
  free_case(&c);
}

// --- LASP-2: chunks, their states, and prefix sums ---

// Rows [start, start + len) of every batch row of x (rows of `width` floats per token).
static float *slice(const float *x, const lin_case *c, int64_t start, int64_t len, int64_t width) {
  float *out = malloc(sizeof(float) * (size_t)(c->B * len * width));
  for (int64_t b = 0; b < c->B; b++)
    memcpy(out + b * len * width, x + (b * c->T + start) * width,
           sizeof(float) * (size_t)(len * width));
  return out;
}
static void unslice_add(float *x, const float *part, const lin_case *c, int64_t start, int64_t len,
                        int64_t width) {
  for (int64_t b = 0; b < c->B; b++)
    for (int64_t i = 0; i < len * width; i++)
      x[(b * c->T + start) * width + i] += part[b * len * width + i];
}

enum { N_CHUNKS = 4 };

typedef struct chunked {
  lin_case part[N_CHUNKS];
  int64_t start[N_CHUNKS], len[N_CHUNKS];
  float *state[N_CHUNKS]; // M_c
} chunked;

static void split(chunked *ch, const lin_case *c, const int64_t *lens) {
  int64_t start = 0;
  for (int i = 0; i < N_CHUNKS; i++) {
    lin_case *p = &ch->part[i];
    *p = *c;
    p->T = lens[i], ch->start[i] = start, ch->len[i] = lens[i];
    p->q = slice(c->q, c, start, lens[i], c->hq * c->d);
    p->k = slice(c->k, c, start, lens[i], c->hkv * c->d);
    p->v = slice(c->v, c, start, lens[i], c->hkv * c->e);
    p->dout = slice(c->dout, c, start, lens[i], c->hq * c->e);
    p->prefix = NULL;
    if (c->doc) {
      p->doc = malloc(sizeof(int32_t) * (size_t)(c->B * lens[i]));
      for (int64_t b = 0; b < c->B; b++) {
        memcpy(p->doc + b * lens[i], c->doc + b * c->T + start, sizeof(int32_t) * (size_t)lens[i]);
        p->prefix_doc[b] = start ? c->doc[b * c->T + start - 1] : 0;
      }
    }
    start += lens[i];
  }
}

// Whether chunk a's state reaches chunk c in row b: it holds only its last document's tokens,
// which c reads only if that document is still the one before c starts.
static bool reaches(const chunked *ch, int a, int c, int64_t b) {
  const lin_case *pa = &ch->part[a], *pc = &ch->part[c];
  return !pa->doc || pa->doc[b * pa->T + pa->T - 1] == pc->prefix_doc[b];
}

// dst[c] = sum over the chunks a on the given side of c that pass `reaches`, of
// lambda^(distance) src[a]: prefix states (earlier chunks) or state gradients (later chunks).
static void decayed_sum(const chunked *ch, const lin_case *c, float *const *src, float *dst,
                        int target, bool from_earlier) {
  const int64_t de = (int64_t)c->d * c->e;
  memset(dst, 0, sizeof(float) * (size_t)ns(c));
  for (int other = 0; other < N_CHUNKS; other++) {
    if (from_earlier ? other >= target : other <= target) continue;
    const int first = from_earlier ? other : target, second = from_earlier ? target : other;
    const int64_t distance = ch->start[second] - (ch->start[first] + ch->len[first]);
    for (int64_t b = 0; b < c->B; b++) {
      if (!reaches(ch, first, second, b)) continue;
      for (int h = 0; h < c->hq; h++) {
        const float w = (float)pow(lambda_of(c, h), (double)distance);
        for (int64_t x = 0; x < de; x++)
          dst[(b * c->hq + h) * de + x] += w * src[other][(b * c->hq + h) * de + x];
      }
    }
  }
}

static void lasp2_equals_whole(lin_case *c) {
  const int64_t lens[N_CHUNKS] = {13, 20, 7, 20};
  chunked ch;
  split(&ch, c, lens);
  // Forward: every chunk's state (all-gathered in LASP-2), then each chunk's output from its
  // prefix.
  for (int i = 0; i < N_CHUNKS; i++) {
    lin_case *p = &ch.part[i];
    ch.state[i] = malloc(sizeof(float) * (size_t)ns(p));
    lt_linear_attn_spec spec = spec_of(p, 8);
    assert_ok(lt_linear_attn_state(&ctx, ts(p, ch.state[i]), tk(p, p->k), tv(p, p->v), &spec));
  }
  float *o = calloc((size_t)no(c), 4);
  grads g = zero_grads(c);
  float *dprefix[N_CHUNKS];
  for (int i = 0; i < N_CHUNKS; i++) {
    lin_case *p = &ch.part[i];
    if (i > 0) {
      p->prefix = malloc(sizeof(float) * (size_t)ns(p));
      decayed_sum(&ch, c, ch.state, p->prefix, i, true);
    }
    float *po = kernel_forward(p, 8);
    unslice_add(o, po, c, ch.start[i], ch.len[i], c->hq * c->e);
    grads pg = kernel_backward(p, 8);
    unslice_add(g.dq, pg.dq, c, ch.start[i], ch.len[i], c->hq * c->d);
    unslice_add(g.dk, pg.dk, c, ch.start[i], ch.len[i], c->hkv * c->d);
    unslice_add(g.dv, pg.dv, c, ch.start[i], ch.len[i], c->hkv * c->e);
    dprefix[i] = pg.dprefix;
    free(po), free(pg.dq), free(pg.dk), free(pg.dv);
  }
  float *full = kernel_forward(c, 8);
  assert_true(rel_err(o, full, no(c)) < TOL);
  // Backward: each chunk's state gradient is the decayed suffix sum of the later prefix
  // gradients (all-gathered in LASP-2); the state's backward adds it into that chunk's dk, dv.
  for (int i = 0; i < N_CHUNKS; i++) {
    lin_case *p = &ch.part[i];
    float *dstate = malloc(sizeof(float) * (size_t)ns(p));
    decayed_sum(&ch, c, dprefix, dstate, i, false);
    float *dk = calloc((size_t)nk(p), 4), *dv = calloc((size_t)nv(p), 4);
    lt_linear_attn_spec spec = spec_of(p, 8);
    assert_ok(lt_linear_attn_state_bwd(&ctx, tk(p, dk), tv(p, dv), ts(p, dstate), tk(p, p->k),
                                       tv(p, p->v), &spec));
    unslice_add(g.dk, dk, c, ch.start[i], ch.len[i], c->hkv * c->d);
    unslice_add(g.dv, dv, c, ch.start[i], ch.len[i], c->hkv * c->e);
    free(dstate), free(dk), free(dv);
  }
  grads whole = kernel_backward(c, 8);
  expect_grads_close(c, &g, &whole);
  for (int i = 0; i < N_CHUNKS; i++) {
    free_case(&ch.part[i]);
    free(ch.state[i]), free(dprefix[i]);
  }
  free(o), free(full), free_grads(&g), free_grads(&whole);
}

static void test_lasp2_chunk_states_and_prefix_sums_equal_the_whole_sequence(void **state) {
  (void)state;
  lin_case c = make_case(2, 60, 4, 2, 8, 6, true, 9);
  lasp2_equals_whole(&c);
  free_case(&c);
}

static void test_lasp2_chunks_without_decay_equal_the_whole_sequence(void **state) {
  (void)state;
  lin_case c = make_case(2, 60, 4, 4, 8, 9, false, 10);
  lasp2_equals_whole(&c);
  free_case(&c);
}

static void test_lasp2_chunks_reset_at_documents(void **state) {
  (void)state;
  lin_case c = make_case(2, 60, 4, 2, 8, 6, true, 11);
  // Row 0: boundaries at 10, 33 (a chunk edge) and 45; row 1 (lengths rotated): 21, 33, 43.
  const int lengths[] = {10, 23, 12};
  set_docs(&c, lengths, 3);
  lasp2_equals_whole(&c);
  free_case(&c);
}

int main(void) {
  lt_ctx_init(&ctx, LT_CPU, 2);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_blocked_form_equals_recurrent_and_quadratic_forms),
      cmocka_unit_test(test_blocked_form_with_decay_equals_both_forms),
      cmocka_unit_test(test_any_block_size_gives_the_same_result),
      cmocka_unit_test(test_grouped_query_heads_equal_both_forms),
      cmocka_unit_test(test_document_mask_matches_both_forms),
      cmocka_unit_test(test_prefix_state_matches_both_forms),
      cmocka_unit_test(test_document_mask_equals_running_each_document_alone),
      cmocka_unit_test(test_state_is_the_recurrent_state_of_the_last_document),
      cmocka_unit_test(test_lasp2_chunk_states_and_prefix_sums_equal_the_whole_sequence),
      cmocka_unit_test(test_lasp2_chunks_without_decay_equal_the_whole_sequence),
      cmocka_unit_test(test_lasp2_chunks_reset_at_documents),
  };
  const int failed = cmocka_run_group_tests(tests, NULL, NULL);
  printf("largest difference between computations that must agree: %.2e of the result's size\n",
         worst_err);
  return failed;
}
