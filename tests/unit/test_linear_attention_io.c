// The elementwise ends of linear attention against finite differences and a double-precision
// reference: the feature maps that make q and k (and the ones column that turns the attention into
// its own normaliser), and the output stage's normalisations and gates.
#include <math.h>
#include <stdlib.h>

#include "gradcheck.h"
#include "kernels/kernels.h"
#include "testing.h"

static lt_ctx ctx;

static float *normal(int64_t n, uint64_t seed, float std) {
  float *x = malloc(sizeof(float) * (size_t)n);
  lt_test_fill_normal(x, n, seed, std);
  return x;
}

typedef struct qkv_state {
  int64_t n;
  int hq, hkv, d, e;
  lt_feature_map map;
  float *qkv, *out, *dqkv; // out: q | k | v, one after the other
} qkv_state;

static void qkv_views(const qkv_state *s, float *base, lt_tensor *q, lt_tensor *k, lt_tensor *v) {
  *q = lt_view3(base, LT_F32, LT_CPU, s->n, s->hq, s->d);
  *k = lt_view3(base + s->n * s->hq * s->d, LT_F32, LT_CPU, s->n, s->hkv, s->d);
  *v = lt_view3(base + s->n * (s->hq + s->hkv) * s->d, LT_F32, LT_CPU, s->n, s->hkv, s->e);
}

static lt_tensor qkv_in(const qkv_state *s, float *x) {
  return lt_view3(x, LT_F32, LT_CPU, s->n, s->hq + 2 * s->hkv, s->d);
}

static void qkv_forward(void *p) {
  qkv_state *s = p;
  lt_tensor q, k, v;
  qkv_views(s, s->out, &q, &k, &v);
  assert_ok(lt_linear_qkv_fwd(&ctx, q, k, v, qkv_in(s, s->qkv), s->map));
}

static void qkv_backward(void *p, const float *dout) {
  qkv_state *s = p;
  lt_tensor dq, dk, dv;
  qkv_views(s, (float *)dout, &dq, &dk, &dv);
  const int64_t total = s->n * (s->hq + 2 * s->hkv) * s->d;
  float *tmp = malloc(sizeof(float) * (size_t)total);
  assert_ok(lt_linear_qkv_bwd(&ctx, qkv_in(s, tmp), dq, dk, dv, qkv_in(s, s->qkv), s->map));
  for (int64_t i = 0; i < total; i++) s->dqkv[i] += tmp[i];
  free(tmp);
}

// Inputs at least 0.2 away from 0, so that no step of the finite differences crosses relu's kink.
static void test_feature_map_backwards_match_finite_differences(void **state) {
  (void)state;
  const lt_feature_map maps[] = {LT_FEATURE_ELU1, LT_FEATURE_RELU, LT_FEATURE_SILU,
                                 LT_FEATURE_IDENTITY};
  for (int m = 0; m < 4; m++) {
    qkv_state s = {.n = 7, .hq = 4, .hkv = 2, .d = 6, .e = 7, .map = maps[m]};
    const int64_t total = s.n * (s.hq + 2 * s.hkv) * s.d;
    const int64_t n_out = s.n * ((s.hq + s.hkv) * s.d + s.hkv * s.e);
    s.qkv = normal(total, 30 + (uint64_t)m, 1.0f);
    for (int64_t i = 0; i < total; i++) s.qkv[i] = copysignf(0.2f + fabsf(s.qkv[i]), s.qkv[i]);
    s.out = calloc((size_t)n_out, 4), s.dqkv = calloc((size_t)total, 4);
    lt_gradcheck_input in[1] = {{"qkv", s.qkv, s.dqkv, total}};
    lt_gradcheck c = {&s, in, 1, s.out, n_out, qkv_forward, qkv_backward};
    assert_true(lt_gradcheck_run(&c, 31, 3, 1e-3) < 3e-3);
    // The ones column that makes the attention compute its own denominator.
    for (int64_t t = 0; t < s.n * s.hkv; t++)
      assert_true(s.out[s.n * (s.hq + s.hkv) * s.d + t * s.e + s.d] == 1.0f);
    free(s.qkv), free(s.out), free(s.dqkv);
  }
}

// q and k through elu + 1, v with its ones column, the attention, and the output stage with the
// denominator: Katharopoulos et al.'s causal linear attention, o_i = phi(q_i) sum_j phi(k_j) v_j^T
// / (phi(q_i) . sum_j phi(k_j) + eps), in double.
static void test_denominator_normalisation_is_katharopoulos_linear_attention(void **state) {
  (void)state;
  const int64_t T = 21;
  const int h = 2, d = 4, e = d + 1;
  const float eps = 1e-6f;
  float *qkv = normal(T * 3 * h * d, 40, 1.0f);
  float *q = malloc(sizeof(float) * T * h * d), *k = malloc(sizeof(float) * T * h * d);
  float *v = malloc(sizeof(float) * T * h * e), *o = malloc(sizeof(float) * T * h * e);
  float *y = malloc(sizeof(float) * T * h * d), *ref = malloc(sizeof(float) * T * h * d);
  assert_ok(lt_linear_qkv_fwd(&ctx, lt_view3(q, LT_F32, LT_CPU, T, h, d),
                              lt_view3(k, LT_F32, LT_CPU, T, h, d),
                              lt_view3(v, LT_F32, LT_CPU, T, h, e),
                              lt_view3(qkv, LT_F32, LT_CPU, T, 3 * h, d), LT_FEATURE_ELU1));
  lt_linear_attn_spec spec = {.block = 8};
  lt_tensor none = {0};
  assert_ok(lt_linear_attn_fwd(&ctx, lt_view4(o, LT_F32, LT_CPU, 1, T, h, e),
                               lt_view4(q, LT_F32, LT_CPU, 1, T, h, d),
                               lt_view4(k, LT_F32, LT_CPU, 1, T, h, d),
                               lt_view4(v, LT_F32, LT_CPU, 1, T, h, e), none, &spec));
  assert_ok(lt_linear_out_fwd(&ctx, lt_view2(y, LT_F32, LT_CPU, T, h * d), none,
                              lt_view3(o, LT_F32, LT_CPU, T, h, e), none,
                              LT_LINEAR_NORM_DENOMINATOR, LT_GATE_NONE, eps, none));
  for (int64_t i = 0; i < T; i++)
    for (int hh = 0; hh < h; hh++) {
      double num[4] = {0}, den = 0;
      for (int64_t j = 0; j <= i; j++) {
        double a = 0;
        for (int y2 = 0; y2 < d; y2++) {
          const double qx = qkv[(i * 3 * h + hh) * d + y2], kx = qkv[(j * 3 * h + h + hh) * d + y2];
          a += (qx > 0 ? 1 + qx : exp(qx)) * (kx > 0 ? 1 + kx : exp(kx));
        }
        den += a;
        for (int x = 0; x < d; x++) num[x] += a * qkv[(j * 3 * h + 2 * h + hh) * d + x];
      }
      for (int x = 0; x < d; x++) ref[(i * h + hh) * d + x] = (float)(num[x] / (den + eps));
    }
  assert_true(lt_test_max_rel_diff(y, ref, T * h * d, lt_test_max_abs(ref, T * h * d)) < 1e-5);
  free(qkv), free(q), free(k), free(v), free(o), free(y), free(ref);
}

// row_stat of the output stage: none, the row is whole here.
static const lt_tensor whole_row = {0};

typedef struct out_state {
  int64_t n;
  int h, d, e;
  lt_linear_norm norm;
  lt_gate gate;
  float *o, *u, *y, *rstd, *d_o, *du;
} out_state;

static void out_forward(void *p) {
  out_state *s = p;
  assert_ok(lt_linear_out_fwd(
      &ctx, lt_view2(s->y, LT_F32, LT_CPU, s->n, s->h * s->d),
      lt_view1(s->rstd, LT_F32, LT_CPU, s->n), lt_view3(s->o, LT_F32, LT_CPU, s->n, s->h, s->e),
      lt_view2(s->u, LT_F32, LT_CPU, s->n, s->h * s->d), s->norm, s->gate, 1e-5f, whole_row));
}

static void out_backward(void *p, const float *dy) {
  out_state *s = p;
  float *g_o = malloc(sizeof(float) * (size_t)(s->n * s->h * s->e));
  float *g_u = malloc(sizeof(float) * (size_t)(s->n * s->h * s->d));
  assert_ok(lt_linear_out_bwd(&ctx, lt_view3(g_o, LT_F32, LT_CPU, s->n, s->h, s->e),
                              lt_view2(g_u, LT_F32, LT_CPU, s->n, s->h * s->d),
                              lt_view2((float *)dy, LT_F32, LT_CPU, s->n, s->h * s->d),
                              lt_view3(s->o, LT_F32, LT_CPU, s->n, s->h, s->e),
                              lt_view2(s->u, LT_F32, LT_CPU, s->n, s->h * s->d),
                              lt_view1(s->rstd, LT_F32, LT_CPU, s->n), s->norm, s->gate, 1e-5f,
                              whole_row));
  for (int64_t i = 0; i < s->n * s->h * s->e; i++) s->d_o[i] += g_o[i];
  if (s->gate != LT_GATE_NONE)
    for (int64_t i = 0; i < s->n * s->h * s->d; i++) s->du[i] += g_u[i];
  free(g_o), free(g_u);
}

static void test_output_stage_backwards_match_finite_differences(void **state) {
  (void)state;
  const lt_linear_norm norms[] = {LT_LINEAR_NORM_DENOMINATOR, LT_LINEAR_NORM_RMS,
                                  LT_LINEAR_NORM_NONE};
  const lt_gate gates[] = {LT_GATE_NONE, LT_GATE_LINEAR, LT_GATE_SIGMOID, LT_GATE_SILU};
  for (int nm = 0; nm < 3; nm++)
    for (int g = 0; g < 4; g++) {
      out_state s = {.n = 5, .h = 3, .d = 4, .norm = norms[nm], .gate = gates[g]};
      s.e = s.d + (s.norm == LT_LINEAR_NORM_DENOMINATOR);
      const int64_t no_ = s.n * s.h * s.e, ny = s.n * s.h * s.d;
      s.o = normal(no_, 50 + (uint64_t)(4 * nm + g), 1.0f);
      if (s.norm == LT_LINEAR_NORM_DENOMINATOR) // a positive normaliser, as elu + 1 makes it
        for (int64_t t = 0; t < s.n * s.h; t++)
          s.o[t * s.e + s.d] = 1.0f + fabsf(s.o[t * s.e + s.d]);
      s.u = normal(ny, 70 + (uint64_t)(4 * nm + g), 1.0f);
      s.y = calloc((size_t)ny, 4), s.rstd = calloc((size_t)s.n, 4);
      s.d_o = calloc((size_t)no_, 4), s.du = calloc((size_t)ny, 4);
      lt_gradcheck_input in[2] = {{"o", s.o, s.d_o, no_}, {"u", s.u, s.du, ny}};
      lt_gradcheck c = {&s, in, s.gate == LT_GATE_NONE ? 1 : 2, s.y, ny, out_forward, out_backward};
      assert_true(lt_gradcheck_run(&c, 51, 3, 1e-3) < 3e-3);
      free(s.o), free(s.u), free(s.y), free(s.rstd), free(s.d_o), free(s.du);
    }
}

int main(void) {
  lt_ctx_init(&ctx, LT_CPU, 2);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_feature_map_backwards_match_finite_differences),
      cmocka_unit_test(test_denominator_normalisation_is_katharopoulos_linear_attention),
      cmocka_unit_test(test_output_stage_backwards_match_finite_differences),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
