// Every CUDA kernel but attention against the CPU reference, on fresh random inputs rounded to
// bf16 (so both sides see the same numbers). bf16 outputs carry one rounding of 2^-9 relative,
// so they must match to 1e-2 in relative L2 norm; f32 outputs much closer.
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

static void test_matmul_matches_cpu_for_every_transpose_and_output(void **state) {
  SKIP_WITHOUT_GPU();
  const int64_t m = 77, n = 96, k = 200;
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) {
      const int64_t a_shape[2] = {ta ? k : m, ta ? m : k}, b_shape[2] = {tb ? n : k, tb ? k : n};
      float *a = lt_gpu_random(m * k, 1.0f, true), *b = lt_gpu_random(k * n, 1.0f, true);
      float *c0 = lt_gpu_random(m * n, 1.0f, false), *want = malloc(sizeof(float) * m * n);
      lt_tensor ga = lt_gpu_upload(a, LT_BF16, 2, a_shape),
                gb = lt_gpu_upload(b, LT_BF16, 2, b_shape);
      // bf16 output, overwritten
      memcpy(want, c0, sizeof(float) * m * n);
      assert_ok(lt_matmul(&lt_test_cpu, host(want, 2, LT_SHAPE(m, n)), host(a, 2, a_shape), ta,
                          host(b, 2, b_shape), tb, 1.0f, 0.0f));
      lt_tensor c = lt_gpu_upload(c0, LT_BF16, 2, LT_SHAPE(m, n));
      assert_ok(lt_matmul(&lt_test_gpu, c, ga, ta, gb, tb, 1.0f, 0.0f));
      float *got = lt_gpu_fetch(c);
      lt_gpu_expect_close(ta ? (tb ? "matmul a^T b^T -> bf16" : "matmul a^T b -> bf16")
                             : (tb ? "matmul a b^T -> bf16" : "matmul a b -> bf16"),
                          got, want, m * n, 1e-2);
      free(got);
      // f32 output accumulated (the weight-gradient form): c = 0.5 op(a) op(b) + c
      memcpy(want, c0, sizeof(float) * m * n);
      assert_ok(lt_matmul(&lt_test_cpu, host(want, 2, LT_SHAPE(m, n)), host(a, 2, a_shape), ta,
                          host(b, 2, b_shape), tb, 0.5f, 1.0f));
      lt_tensor cf = lt_gpu_upload(c0, LT_F32, 2, LT_SHAPE(m, n));
      assert_ok(lt_matmul(&lt_test_gpu, cf, ga, ta, gb, tb, 0.5f, 1.0f));
      got = lt_gpu_fetch(cf);
      lt_gpu_expect_close("matmul accumulated into f32", got, want, m * n, 1e-5);
      free(got), free(a), free(b), free(c0), free(want);
    }
  lt_gpu_free_all();
}

static void test_add_scale_copy_and_zero_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 10007; // not a multiple of 8: the scalar tail runs too
  float *a = lt_gpu_random(n, 1.0f, true), *b = lt_gpu_random(n, 1.0f, true);
  float *want = malloc(sizeof(float) * n);
  for (int dt = 0; dt < 2; dt++) {
    const lt_dtype dtype = dt ? LT_BF16 : LT_F32;
    lt_tensor ga = lt_gpu_upload(a, dtype, 1, LT_SHAPE(n)),
              gb = lt_gpu_upload(b, dtype, 1, LT_SHAPE(n));
    assert_ok(lt_add(&lt_test_gpu, ga, ga, gb)); // in place, as the residual adds
    assert_ok(lt_scale(&lt_test_gpu, ga, -0.75f));
    for (int64_t i = 0; i < n; i++) want[i] = (a[i] + b[i]) * -0.75f;
    float *got = lt_gpu_fetch(ga);
    lt_gpu_expect_close(dt ? "add then scale, bf16" : "add then scale, f32", got, want, n,
                        dt ? 1e-2 : 1e-7);
    free(got);
  }
  lt_tensor f = lt_gpu_upload(a, LT_F32, 1, LT_SHAPE(n)),
            h = lt_gpu_upload(b, LT_BF16, 1, LT_SHAPE(n));
  assert_ok(lt_copy(&lt_test_gpu, h, f)); // f32 -> bf16 rounds to nearest even, as lt_f32_to_bf16
  float *got = lt_gpu_fetch(h);
  assert_memory_equal(got, a, sizeof(float) * n); // a is already bf16-exact
  free(got);
  assert_ok(lt_zero(&lt_test_gpu, f));
  got = lt_gpu_fetch(f);
  assert_true(lt_test_max_abs(got, n) == 0.0);
  free(got), free(a), free(b), free(want);
  lt_gpu_free_all();
}

// The sums of squares (the gradient norm) and of values (the loss): each within double rounding of
// the CPU's serial sum, and the same bits when run again.
static void test_sums_match_cpu_and_repeat_exactly(void **state) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 3000017;
  float *x = lt_gpu_random(n, 2.0f, false);
  lt_tensor g = lt_gpu_upload(x, LT_F32, 1, LT_SHAPE(n));
  double want, got, again, scale = 0.0;
  for (int64_t i = 0; i < n; i++) scale += fabs(x[i]);
  assert_ok(lt_sum_squares(&lt_test_cpu, &want, host(x, 1, LT_SHAPE(n))));
  assert_ok(lt_sum_squares(&lt_test_gpu, &got, g));
  assert_ok(lt_sum_squares(&lt_test_gpu, &again, g));
  printf("  sum of squares: rel. error %.3g\n", fabs(got - want) / want);
  assert_true(fabs(got - want) < 1e-12 * want);
  assert_true(got == again);
  assert_ok(lt_sum(&lt_test_cpu, &want, host(x, 1, LT_SHAPE(n))));
  assert_ok(lt_sum(&lt_test_gpu, &got, g));
  assert_ok(lt_sum(&lt_test_gpu, &again, g));
  printf("  sum: %.6f against %.6f, error %.3g of the sum of |x|\n", got, want,
         fabs(got - want) / scale);
  assert_true(fabs(got - want) < 1e-12 * scale);
  assert_true(got == again);
  free(x);
  lt_gpu_free_all();
}

// The backward sorts the tokens and sums chunks of 32 sorted rows a warp, joining the runs that
// span chunks: the cases are a few hot rows (runs over several chunks) among rare ones, one token
// throughout (a run over every chunk), and tokens outside the table, which both skip. Widths: 96
// (one vector of 8 a lane), 100 (the scalar path), 768 (three) and 1104 (two slabs of 1024).
static void test_embedding_lookup_and_scatter_add_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  const int64_t vocab = 1000, n = 5000;
  const int64_t dims[4] = {96, 100, 768, 1104};
  for (int ci = 0; ci < 6; ci++) {
    const int64_t d = dims[ci % 4];
    const bool one_token = ci == 4, out_of_range = ci == 5;
    float *table = lt_gpu_random(vocab * d, 1.0f, true), *dout = lt_gpu_random(n * d, 1.0f, true);
    float *dtable = lt_gpu_random(vocab * d, 1.0f, false);
    int32_t *tokens = malloc(sizeof(int32_t) * n);
    lt_rng rng = lt_rng_seed(lt_gpu_next_seed());
    // Many repeats (a few hot rows), plus the first and last rows.
    for (int64_t i = 0; i < n; i++)
      tokens[i] = i % 3 ? (int32_t)lt_rng_below(&rng, 20) : (int32_t)lt_rng_below(&rng, vocab);
    tokens[0] = 0, tokens[n - 1] = (int32_t)vocab - 1;
    if (one_token)
      for (int64_t i = 0; i < n; i++) tokens[i] = 7;
    lt_tensor tok_gpu = {0};
    if (out_of_range) { // the lookup needs every token in the table: these go to the backward only
      tok_gpu = lt_gpu_upload_i32(tokens, 1, LT_SHAPE(n));
      for (int64_t i = 1; i < n; i += 97) tokens[i] = i % 2 ? -1 : (int32_t)vocab;
    }
    float *out = malloc(sizeof(float) * n * d), *want_dtable = malloc(sizeof(float) * vocab * d);
    memcpy(want_dtable, dtable, sizeof(float) * vocab * d);
    lt_tensor tok_cpu = lt_view1(tokens, LT_I32, LT_CPU, n);
    assert_ok(lt_embedding_fwd(&lt_test_cpu, host(out, 2, LT_SHAPE(n, d)), tok_cpu,
                               host(table, 2, LT_SHAPE(vocab, d))));
    assert_ok(lt_embedding_bwd(&lt_test_cpu, host(want_dtable, 2, LT_SHAPE(vocab, d)),
                               host(dout, 2, LT_SHAPE(n, d)), tok_cpu));
    lt_tensor g_tok = lt_gpu_upload_i32(tokens, 1, LT_SHAPE(n));
    lt_tensor g_out = lt_gpu_upload(out, LT_BF16, 2, LT_SHAPE(n, d));
    assert_ok(lt_zero(&lt_test_gpu, g_out));
    assert_ok(lt_embedding_fwd(&lt_test_gpu, g_out, out_of_range ? tok_gpu : g_tok,
                               lt_gpu_upload(table, LT_BF16, 2, LT_SHAPE(vocab, d))));
    float *got = lt_gpu_fetch(g_out);
    if (!out_of_range) // a lookup of bf16 values is exact
      assert_memory_equal(got, out, sizeof(float) * n * d);
    free(got);
    lt_tensor g_dout = lt_gpu_upload(dout, LT_BF16, 2, LT_SHAPE(n, d));
    float *first = NULL;
    for (int run = 0; run < 2; run++) {
      lt_tensor g_dtable = lt_gpu_upload(dtable, LT_F32, 2, LT_SHAPE(vocab, d));
      assert_ok(lt_embedding_bwd(&lt_test_gpu, g_dtable, g_dout, g_tok));
      got = lt_gpu_fetch(g_dtable);
      if (run == 0) {
        // One token: its row sums 5000 values, which the CPU adds to the row one at a time and
        // the GPU adds up first, so its f32 roundings differ by ~1e-4 of a sum of ~70.
        lt_gpu_expect_close("embedding scatter-add (f32)", got, want_dtable, vocab * d,
                            one_token ? 2e-5 : 1e-6);
        first = got;
      } else { // a fixed summation order: the same bits every time
        assert_memory_equal(got, first, sizeof(float) * vocab * d);
        free(got);
      }
    }
    free(first), free(table), free(dout), free(dtable), free(tokens), free(out), free(want_dtable);
  }
  lt_gpu_free_all();
}

// Widths for both backward kernels: a warp per row with 1, 3 and 4 vectors per lane (enough rows
// that each warp takes several), and a block per row with one and two vectors per thread.
static void test_rmsnorm_forward_and_backward_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  const int64_t widths[5] = {40, 768, 1024, 2048, 12288};
  for (int wi = 0; wi < 5; wi++) {
    const int64_t c = widths[wi], n = c <= 1024 ? 4099 : 300;
    float *x = lt_gpu_random(n * c, 1.0f, true), *w = lt_gpu_random(c, 1.0f, true);
    float *dout = lt_gpu_random(n * c, 1.0f, true), *dx0 = lt_gpu_random(n * c, 1.0f, true);
    float *dw0 = lt_gpu_random(c, 1.0f, false);
    float *out = malloc(sizeof(float) * n * c), *rstd = malloc(sizeof(float) * n);
    float *dx = malloc(sizeof(float) * n * c), *dw = malloc(sizeof(float) * c);
    memcpy(dx, dx0, sizeof(float) * n * c);
    memcpy(dw, dw0, sizeof(float) * c);
    assert_ok(lt_rmsnorm_fwd(&lt_test_cpu, host(out, 2, LT_SHAPE(n, c)), host(rstd, 1, LT_SHAPE(n)),
                             host(x, 2, LT_SHAPE(n, c)), host(w, 1, LT_SHAPE(c)), 1e-5f));
    assert_ok(lt_rmsnorm_bwd(&lt_test_cpu, host(dx, 2, LT_SHAPE(n, c)), host(dw, 1, LT_SHAPE(c)),
                             host(dout, 2, LT_SHAPE(n, c)), host(x, 2, LT_SHAPE(n, c)),
                             host(w, 1, LT_SHAPE(c)), host(rstd, 1, LT_SHAPE(n))));
    lt_tensor gx = lt_gpu_upload(x, LT_BF16, 2, LT_SHAPE(n, c)),
              gw = lt_gpu_upload(w, LT_BF16, 1, LT_SHAPE(c));
    lt_tensor gout = lt_gpu_upload(out, LT_BF16, 2, LT_SHAPE(n, c));
    lt_tensor grstd = lt_gpu_upload(rstd, LT_F32, 1, LT_SHAPE(n));
    assert_ok(lt_rmsnorm_fwd(&lt_test_gpu, gout, grstd, gx, gw, 1e-5f));
    float *got_out = lt_gpu_fetch(gout), *got_rstd = lt_gpu_fetch(grstd);
    printf(" C = %lld\n", (long long)c);
    lt_gpu_expect_close("rmsnorm out (bf16)", got_out, out, n * c, 1e-2);
    lt_gpu_expect_close("rmsnorm rstd (f32)", got_rstd, rstd, n, 1e-6);
    // The backward from the CPU's rstd, so only the backward's own error is measured.
    lt_tensor gdx = lt_gpu_upload(dx0, LT_BF16, 2, LT_SHAPE(n, c)),
              gdw = lt_gpu_upload(dw0, LT_F32, 1, LT_SHAPE(c));
    assert_ok(lt_rmsnorm_bwd(&lt_test_gpu, gdx, gdw,
                             lt_gpu_upload(dout, LT_BF16, 2, LT_SHAPE(n, c)), gx, gw,
                             lt_gpu_upload(rstd, LT_F32, 1, LT_SHAPE(n))));
    float *got_dx = lt_gpu_fetch(gdx), *got_dw = lt_gpu_fetch(gdw);
    lt_gpu_expect_close("rmsnorm dx += (bf16)", got_dx, dx, n * c, 1e-2);
    lt_gpu_expect_close("rmsnorm dweight += (f32)", got_dw, dw, c, 1e-5);
    free(x), free(w), free(dout), free(dx0), free(dw0), free(out), free(rstd), free(dx), free(dw);
    free(got_out), free(got_rstd), free(got_dx), free(got_dw);
    lt_gpu_free_all();
  }
}

// The fused residual add + norm against the CPU's two passes, and to the bit against the GPU's
// own two passes (lt_add, then lt_rmsnorm_fwd on the stored sum), at one and two vectors per
// thread.
static void test_add_rmsnorm_matches_the_add_then_the_norm(void **state) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 300, widths[2] = {768, 12288};
  for (int wi = 0; wi < 2; wi++) {
    const int64_t c = widths[wi];
    float *a = lt_gpu_random(n * c, 1.0f, true), *b = lt_gpu_random(n * c, 1.0f, true);
    float *w = lt_gpu_random(c, 1.0f, true);
    float *sum = malloc(sizeof(float) * n * c), *out = malloc(sizeof(float) * n * c);
    float *rstd = malloc(sizeof(float) * n);
    assert_ok(lt_add_rmsnorm_fwd(&lt_test_cpu, host(sum, 2, LT_SHAPE(n, c)),
                                 host(out, 2, LT_SHAPE(n, c)), host(rstd, 1, LT_SHAPE(n)),
                                 host(a, 2, LT_SHAPE(n, c)), host(b, 2, LT_SHAPE(n, c)),
                                 host(w, 1, LT_SHAPE(c)), 1e-5f));
    lt_tensor ga = lt_gpu_upload(a, LT_BF16, 2, LT_SHAPE(n, c)),
              gb = lt_gpu_upload(b, LT_BF16, 2, LT_SHAPE(n, c));
    lt_tensor gw = lt_gpu_upload(w, LT_F32, 1, LT_SHAPE(c));
    lt_tensor gsum = lt_gpu_upload(sum, LT_BF16, 2, LT_SHAPE(n, c)),
              gout = lt_gpu_upload(out, LT_BF16, 2, LT_SHAPE(n, c));
    lt_tensor grstd = lt_gpu_upload(rstd, LT_F32, 1, LT_SHAPE(n));
    assert_ok(lt_add_rmsnorm_fwd(&lt_test_gpu, gsum, gout, grstd, ga, gb, gw, 1e-5f));
    float *got_sum = lt_gpu_fetch(gsum), *got_out = lt_gpu_fetch(gout);
    float *got_rstd = lt_gpu_fetch(grstd);
    printf(" C = %lld\n", (long long)c);
    lt_gpu_expect_close("add_rmsnorm sum (bf16)", got_sum, sum, n * c, 1e-2);
    lt_gpu_expect_close("add_rmsnorm out (bf16)", got_out, out, n * c, 1e-2);
    // The GPU normalises the bf16-rounded sum, the CPU the exact one.
    lt_gpu_expect_close("add_rmsnorm rstd (f32)", got_rstd, rstd, n, 1e-3);
    lt_tensor two_sum = lt_gpu_upload(sum, LT_BF16, 2, LT_SHAPE(n, c)),
              two_out = lt_gpu_upload(out, LT_BF16, 2, LT_SHAPE(n, c));
    lt_tensor two_rstd = lt_gpu_upload(rstd, LT_F32, 1, LT_SHAPE(n));
    assert_ok(lt_add(&lt_test_gpu, two_sum, ga, gb));
    assert_ok(lt_rmsnorm_fwd(&lt_test_gpu, two_out, two_rstd, two_sum, gw, 1e-5f));
    float *want_sum = lt_gpu_fetch(two_sum), *want_out = lt_gpu_fetch(two_out);
    float *want_rstd = lt_gpu_fetch(two_rstd);
    assert_memory_equal(got_sum, want_sum, sizeof(float) * n * c);
    assert_memory_equal(got_rstd, want_rstd, sizeof(float) * n);
    assert_memory_equal(got_out, want_out, sizeof(float) * n * c);
    free(a), free(b), free(w), free(sum), free(out), free(rstd), free(got_sum), free(got_out),
        free(got_rstd), free(want_sum), free(want_out), free(want_rstd);
    lt_gpu_free_all();
  }
}

// One shape's forward (bf16) and backward (dq f32, dk and dv bf16), against the CPU.
static void expect_rope_matches_cpu(int64_t n, int hq, int hkv, int d) {
  const int heads = hq + 2 * hkv;
  printf("  rope: %lld tokens, %d + 2 x %d heads of %d\n", (long long)n, hq, hkv, d);
  float *qkv = lt_gpu_random(n * heads * d, 1.0f, true);
  int32_t *pos = malloc(sizeof(int32_t) * n);
  lt_rng rng = lt_rng_seed(lt_gpu_next_seed());
  for (int64_t i = 0; i < n; i++) pos[i] = (int32_t)lt_rng_below(&rng, 5000);
  float *q = malloc(sizeof(float) * n * hq * d), *k = malloc(sizeof(float) * n * hkv * d);
  float *v = malloc(sizeof(float) * n * hkv * d), *dqkv = malloc(sizeof(float) * n * heads * d);
  lt_tensor pos_cpu = lt_view1(pos, LT_I32, LT_CPU, n);
  assert_ok(lt_rope_qkv_fwd(&lt_test_cpu, host(q, 3, LT_SHAPE(n, hq, d)),
                            host(k, 3, LT_SHAPE(n, hkv, d)), host(v, 3, LT_SHAPE(n, hkv, d)),
                            host(qkv, 3, LT_SHAPE(n, heads, d)), pos_cpu, 10000.0f));
  lt_tensor gpos = lt_gpu_upload_i32(pos, 1, LT_SHAPE(n));
  lt_tensor gq = lt_gpu_upload(q, LT_BF16, 3, LT_SHAPE(n, hq, d));
  lt_tensor gk = lt_gpu_upload(k, LT_BF16, 3, LT_SHAPE(n, hkv, d));
  lt_tensor gv = lt_gpu_upload(v, LT_BF16, 3, LT_SHAPE(n, hkv, d));
  assert_ok(lt_rope_qkv_fwd(&lt_test_gpu, gq, gk, gv,
                            lt_gpu_upload(qkv, LT_BF16, 3, LT_SHAPE(n, heads, d)), gpos, 10000.0f));
  float *got[3] = {lt_gpu_fetch(gq), lt_gpu_fetch(gk), lt_gpu_fetch(gv)};
  lt_gpu_expect_close("rope q", got[0], q, n * hq * d, 1e-2);
  lt_gpu_expect_close("rope k", got[1], k, n * hkv * d, 1e-2);
  lt_gpu_expect_close("v copied", got[2], v, n * hkv * d, 1e-2);
  // Without v (made by a matmul of its own): fused rows of q and k heads only.
  float *qk = malloc(sizeof(float) * n * (hq + hkv) * d);
  for (int64_t t = 0; t < n; t++)
    memcpy(qk + t * (hq + hkv) * d, qkv + t * heads * d, sizeof(float) * (hq + hkv) * d);
  lt_tensor gq2 = lt_gpu_upload(qkv, LT_BF16, 3, LT_SHAPE(n, hq, d)), // poisoned
      gk2 = lt_gpu_upload(qkv, LT_BF16, 3, LT_SHAPE(n, hkv, d)), no_v = {0};
  assert_ok(lt_rope_qkv_fwd(&lt_test_gpu, gq2, gk2, no_v,
                            lt_gpu_upload(qk, LT_BF16, 3, LT_SHAPE(n, hq + hkv, d)), gpos,
                            10000.0f));
  float *got_qk[2] = {lt_gpu_fetch(gq2), lt_gpu_fetch(gk2)};
  lt_gpu_expect_close("rope q, no v", got_qk[0], q, n * hq * d, 1e-2);
  lt_gpu_expect_close("rope k, no v", got_qk[1], k, n * hkv * d, 1e-2);
  free(got_qk[0]), free(got_qk[1]), free(qk);
  // Backward: dq in f32 (as the attention layer keeps it), dk and dv in bf16.
  float *dq = lt_gpu_random(n * hq * d, 1.0f, false), *dk = lt_gpu_random(n * hkv * d, 1.0f, true);
  float *dv = lt_gpu_random(n * hkv * d, 1.0f, true);
  assert_ok(lt_rope_qkv_bwd(&lt_test_cpu, host(dqkv, 3, LT_SHAPE(n, heads, d)),
                            host(dq, 3, LT_SHAPE(n, hq, d)), host(dk, 3, LT_SHAPE(n, hkv, d)),
                            host(dv, 3, LT_SHAPE(n, hkv, d)), pos_cpu, 10000.0f));
  lt_tensor gdqkv = lt_gpu_upload(qkv, LT_BF16, 3, LT_SHAPE(n, heads, d));
  assert_ok(lt_rope_qkv_bwd(&lt_test_gpu, gdqkv, lt_gpu_upload(dq, LT_F32, 3, LT_SHAPE(n, hq, d)),
                            lt_gpu_upload(dk, LT_BF16, 3, LT_SHAPE(n, hkv, d)),
                            lt_gpu_upload(dv, LT_BF16, 3, LT_SHAPE(n, hkv, d)), gpos, 10000.0f));
  float *got_dqkv = lt_gpu_fetch(gdqkv);
  lt_gpu_expect_close("rope backward dqkv", got_dqkv, dqkv, n * heads * d, 1e-2);
  for (int i = 0; i < 3; i++) free(got[i]);
  free(got_dqkv), free(qkv), free(pos), free(q), free(k), free(v), free(dqkv), free(dq), free(dk),
      free(dv);
  lt_gpu_free_all();
}

static void test_rope_split_and_its_transpose_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_rope_matches_cpu(50, 4, 2, 64); // grouped-query heads
  expect_rope_matches_cpu(50, 4, 2, 128);
  expect_rope_matches_cpu(33, 12, 12, 64); // the 135M model's heads
}

static void test_swiglu_forward_and_backward_with_h_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 100, f = 264;
  float *gu = lt_gpu_random(n * 2 * f, 2.0f, true), *dh = lt_gpu_random(n * f, 1.0f, true);
  float *h = malloc(sizeof(float) * n * f), *dgu = malloc(sizeof(float) * n * 2 * f);
  float *h_bwd = malloc(sizeof(float) * n * f);
  assert_ok(
      lt_swiglu_fwd(&lt_test_cpu, host(h, 2, LT_SHAPE(n, f)), host(gu, 2, LT_SHAPE(n, 2 * f))));
  assert_ok(lt_swiglu_bwd(&lt_test_cpu, host(dgu, 2, LT_SHAPE(n, 2 * f)),
                          host(h_bwd, 2, LT_SHAPE(n, f)), host(dh, 2, LT_SHAPE(n, f)),
                          host(gu, 2, LT_SHAPE(n, 2 * f))));
  // The backward's h is the forward's, to the bit, on the reference too.
  assert_memory_equal(h_bwd, h, sizeof(float) * n * f);
  lt_tensor ggu = lt_gpu_upload(gu, LT_BF16, 2, LT_SHAPE(n, 2 * f));
  lt_tensor gh = lt_gpu_upload(h, LT_BF16, 2, LT_SHAPE(n, f));
  lt_tensor gdgu = lt_gpu_upload(gu, LT_BF16, 2, LT_SHAPE(n, 2 * f));
  lt_tensor gdh = lt_gpu_upload(dh, LT_BF16, 2, LT_SHAPE(n, f));
  assert_ok(lt_swiglu_fwd(&lt_test_gpu, gh, ggu));
  assert_ok(lt_swiglu_bwd(&lt_test_gpu, gdgu, (lt_tensor){0}, gdh, ggu));
  float *got_h = lt_gpu_fetch(gh), *got_dgu = lt_gpu_fetch(gdgu);
  lt_gpu_expect_close("swiglu h", got_h, h, n * f, 1e-2);
  lt_gpu_expect_close("swiglu dgate_up", got_dgu, dgu, n * 2 * f, 1e-2);
  // With h asked for: the same dgate_up, and h equal to the GPU forward's to the bit.
  lt_tensor gdgu2 = lt_gpu_upload(gu, LT_BF16, 2, LT_SHAPE(n, 2 * f));
  lt_tensor gh2 = lt_gpu_upload(dh, LT_BF16, 2, LT_SHAPE(n, f));
  assert_ok(lt_swiglu_bwd(&lt_test_gpu, gdgu2, gh2, gdh, ggu));
  float *got_h2 = lt_gpu_fetch(gh2), *got_dgu2 = lt_gpu_fetch(gdgu2);
  assert_memory_equal(got_dgu2, got_dgu, sizeof(float) * n * 2 * f);
  assert_memory_equal(got_h2, got_h, sizeof(float) * n * f);
  free(gu), free(dh), free(h), free(h_bwd), free(dgu), free(got_h), free(got_dgu), free(got_h2),
      free(got_dgu2);
  lt_gpu_free_all();
}

// The SwiGLU feed-forward's matmuls with the SwiGLU beside them, fused (swiglu_matmul.cu) and with
// LT_SWIGLU_MATMUL=unfused, against the CPU's matmul then SwiGLU, on n rows of width d and f hidden
// units. The backward takes its own random gate_up, so both sides read the same numbers.
static void expect_swiglu_linear_matches_cpu(int64_t n, int64_t d, int64_t f) {
  float *x = lt_gpu_random(n * d, 1.0f, true), *dy = lt_gpu_random(n * d, 1.0f, true);
  float *w = lt_gpu_random(2 * f * d, 1.0f / sqrtf((float)d), true);
  float *wd = lt_gpu_random(d * f, 1.0f / sqrtf((float)f), true);
  float *gu_in = lt_gpu_random(n * 2 * f, 2.0f, true);
  float *gu = malloc(sizeof(float) * n * 2 * f), *h = malloc(sizeof(float) * n * f);
  float *dgu = malloc(sizeof(float) * n * 2 * f), *h_bwd = malloc(sizeof(float) * n * f);
  float *dh = malloc(sizeof(float) * n * f);
  assert_ok(lt_swiglu_linear_fwd(&lt_test_cpu, host(gu, 2, LT_SHAPE(n, 2 * f)),
                                 host(h, 2, LT_SHAPE(n, f)), host(x, 2, LT_SHAPE(n, d)),
                                 host(w, 2, LT_SHAPE(2 * f, d))));
  assert_ok(lt_swiglu_linear_bwd(&lt_test_cpu, host(dgu, 2, LT_SHAPE(n, 2 * f)),
                                 host(h_bwd, 2, LT_SHAPE(n, f)), host(dh, 2, LT_SHAPE(n, f)),
                                 host(dy, 2, LT_SHAPE(n, d)), host(wd, 2, LT_SHAPE(d, f)),
                                 host(gu_in, 2, LT_SHAPE(n, 2 * f))));
  lt_tensor gx = lt_gpu_upload(x, LT_BF16, 2, LT_SHAPE(n, d)),
            gw = lt_gpu_upload(w, LT_BF16, 2, LT_SHAPE(2 * f, d)),
            gdy = lt_gpu_upload(dy, LT_BF16, 2, LT_SHAPE(n, d)),
            gwd = lt_gpu_upload(wd, LT_BF16, 2, LT_SHAPE(d, f)),
            ggu_in = lt_gpu_upload(gu_in, LT_BF16, 2, LT_SHAPE(n, 2 * f));
  for (int fused = 0; fused < 2; fused++) {
    if (fused)
      unsetenv("LT_SWIGLU_MATMUL");
    else
      setenv("LT_SWIGLU_MATMUL", "unfused", 1);
    const bool fuses = lt_swiglu_linear_fused(&lt_test_gpu, f, d);
    printf("n %lld d %lld f %lld: %s\n", (long long)n, (long long)d, (long long)f,
           fuses ? "fused" : "matmul, then the SwiGLU");
    if (fused && lt_gpu_hopper()) assert_int_equal(fuses, f % 128 == 0 && d % 8 == 0 && d >= 64);
    if (!fused) assert_false(fuses);
    lt_tensor ggu = lt_gpu_upload(gu_in, LT_BF16, 2, LT_SHAPE(n, 2 * f)),
              gh = lt_gpu_upload(dh, LT_BF16, 2, LT_SHAPE(n, f));
    assert_ok(lt_swiglu_linear_fwd(&lt_test_gpu, ggu, gh, gx, gw));
    float *got_gu = lt_gpu_fetch(ggu), *got_h = lt_gpu_fetch(gh);
    lt_gpu_expect_close("swiglu_linear forward gate_up", got_gu, gu, n * 2 * f, 1e-2);
    lt_gpu_expect_close("swiglu_linear forward h", got_h, h, n * f, 1e-2);
    // dh is scratch the fused backward leaves as it was: a sentinel there shows which path ran.
    lt_tensor gdgu = lt_gpu_upload(gu_in, LT_BF16, 2, LT_SHAPE(n, 2 * f)),
              gh_bwd = lt_gpu_upload(dh, LT_BF16, 2, LT_SHAPE(n, f)),
              gdh = lt_gpu_upload(h, LT_BF16, 2, LT_SHAPE(n, f));
    assert_ok(lt_swiglu_linear_bwd(&lt_test_gpu, gdgu, gh_bwd, gdh, gdy, gwd, ggu_in));
    float *got_dgu = lt_gpu_fetch(gdgu), *got_h_bwd = lt_gpu_fetch(gh_bwd),
          *got_dh = lt_gpu_fetch(gdh);
    lt_gpu_expect_close("swiglu_linear backward dgate_up", got_dgu, dgu, n * 2 * f, 1e-2);
    lt_gpu_expect_close("swiglu_linear backward h", got_h_bwd, h_bwd, n * f, 1e-2);
    if (fuses) {
      float *sentinel = lt_gpu_fetch(lt_gpu_upload(h, LT_BF16, 2, LT_SHAPE(n, f)));
      assert_memory_equal(got_dh, sentinel, sizeof(float) * n * f);
      free(sentinel);
    } else {
      lt_gpu_expect_close("swiglu_linear backward dh", got_dh, dh, n * f, 1e-2);
    }
    // Without h (the caller kept the forward's): dgate_up alone, into a fresh poisoned buffer.
    lt_tensor gdgu_only = lt_gpu_upload(gu_in, LT_BF16, 2, LT_SHAPE(n, 2 * f));
    assert_ok(lt_swiglu_linear_bwd(&lt_test_gpu, gdgu_only, (lt_tensor){0}, gdh, gdy, gwd, ggu_in));
    float *got_dgu_only = lt_gpu_fetch(gdgu_only);
    lt_gpu_expect_close("swiglu_linear backward dgate_up, no h", got_dgu_only, dgu, n * 2 * f,
                        1e-2);
    free(got_gu), free(got_h), free(got_dgu), free(got_h_bwd), free(got_dh), free(got_dgu_only);
  }
  unsetenv("LT_SWIGLU_MATMUL");
  free(x), free(dy), free(w), free(wd), free(gu_in), free(gu), free(h), free(dgu), free(h_bwd),
      free(dh);
  lt_gpu_free_all();
}

// Rows that end inside a tile, an inner dimension that is not a whole number of 64-wide stages,
// more tiles than SMs (a block's ring of stages running on from tile to tile), and a width the
// fused kernels do not take (264 units: the matmul, then the SwiGLU).
static void test_swiglu_linear_fused_and_unfused_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_swiglu_linear_matches_cpu(300, 200, 256);
  expect_swiglu_linear_matches_cpu(5000, 136, 512);
  expect_swiglu_linear_matches_cpu(100, 64, 264);
}

// The attention's input projection with RoPE (lt_qkv_rope_fwd), fused (swiglu_matmul.cu's q|k|v
// kernel) and with LT_QKV_ROPE_MATMUL=unfused, against the CPU's matmuls then RoPE: n tokens of
// width d_in, hq + 2 hkv heads of hd, at positions up to max_pos. The fused kernel leaves the qk
// scratch as it was (a sentinel there shows which path ran).
static void expect_qkv_rope_matches_cpu(int64_t n, int64_t d_in, int hq, int hkv, int hd,
                                        int32_t max_pos) {
  const int64_t cols = (int64_t)(hq + 2 * hkv) * hd, qk_cols = (int64_t)(hq + hkv) * hd;
  float *x = lt_gpu_random(n * d_in, 1.0f, true);
  float *w = lt_gpu_random(cols * d_in, 1.0f / sqrtf((float)d_in), true);
  float *sentinel = lt_gpu_random(n * qk_cols, 1.0f, true);
  int32_t *pos = malloc(sizeof(int32_t) * n);
  lt_rng rng = lt_rng_seed(lt_gpu_next_seed());
  for (int64_t i = 0; i < n; i++) pos[i] = (int32_t)lt_rng_below(&rng, (uint64_t)max_pos);
  float *q = malloc(sizeof(float) * n * hq * hd), *k = malloc(sizeof(float) * n * hkv * hd);
  float *v = malloc(sizeof(float) * n * hkv * hd), *qk = malloc(sizeof(float) * n * qk_cols);
  assert_ok(lt_qkv_rope_fwd(&lt_test_cpu, host(q, 3, LT_SHAPE(n, hq, hd)),
                            host(k, 3, LT_SHAPE(n, hkv, hd)), host(v, 3, LT_SHAPE(n, hkv, hd)),
                            host(qk, 3, LT_SHAPE(n, hq + hkv, hd)), host(x, 2, LT_SHAPE(n, d_in)),
                            host(w, 2, LT_SHAPE(cols, d_in)), lt_view1(pos, LT_I32, LT_CPU, n),
                            10000.0f));
  lt_tensor gx = lt_gpu_upload(x, LT_BF16, 2, LT_SHAPE(n, d_in)),
            gw = lt_gpu_upload(w, LT_BF16, 2, LT_SHAPE(cols, d_in)),
            gpos = lt_gpu_upload_i32(pos, 1, LT_SHAPE(n));
  for (int fused = 0; fused < 2; fused++) {
    if (fused)
      unsetenv("LT_QKV_ROPE_MATMUL");
    else
      setenv("LT_QKV_ROPE_MATMUL", "unfused", 1);
    const bool fuses = lt_qkv_rope_fused(&lt_test_gpu, hd, d_in);
    printf("n %lld d_in %lld, %d + 2 x %d heads of %d, positions below %d: %s\n", (long long)n,
           (long long)d_in, hq, hkv, hd, max_pos, fuses ? "fused" : "matmuls, then RoPE");
    if (fused && lt_gpu_hopper()) assert_int_equal(fuses, d_in % 8 == 0 && d_in >= 64);
    if (!fused) assert_false(fuses);
    // q, k and v start poisoned (the sentinel's numbers, reshaped).
    lt_tensor gq = lt_gpu_upload(sentinel, LT_BF16, 3, LT_SHAPE(n, hq, hd)),
              gk = lt_gpu_upload(sentinel, LT_BF16, 3, LT_SHAPE(n, hkv, hd)),
              gv = lt_gpu_upload(sentinel, LT_BF16, 3, LT_SHAPE(n, hkv, hd)),
              gqk = lt_gpu_upload(sentinel, LT_BF16, 3, LT_SHAPE(n, hq + hkv, hd));
    assert_ok(lt_qkv_rope_fwd(&lt_test_gpu, gq, gk, gv, gqk, gx, gw, gpos, 10000.0f));
    float *got[4] = {lt_gpu_fetch(gq), lt_gpu_fetch(gk), lt_gpu_fetch(gv), lt_gpu_fetch(gqk)};
    lt_gpu_expect_close("qkv_rope q", got[0], q, n * hq * hd, 1e-2);
    lt_gpu_expect_close("qkv_rope k", got[1], k, n * hkv * hd, 1e-2);
    lt_gpu_expect_close("qkv_rope v", got[2], v, n * hkv * hd, 1e-2);
    if (fuses) {
      float *untouched = lt_gpu_fetch(lt_gpu_upload(sentinel, LT_BF16, 1, LT_SHAPE(n * qk_cols)));
      assert_memory_equal(got[3], untouched, sizeof(float) * n * qk_cols);
      free(untouched);
    } else {
      lt_gpu_expect_close("qkv_rope qk (the q|k matmul)", got[3], qk, n * qk_cols, 1e-2);
    }
    for (int i = 0; i < 4; i++) free(got[i]);
  }
  unsetenv("LT_QKV_ROPE_MATMUL");
  free(x), free(w), free(sentinel), free(pos), free(q), free(k), free(v), free(qk);
  lt_gpu_free_all();
}

// The 135M model's heads (12 + 2 x 12 of 64: 9 whole tiles of 256 columns) on more tiles than SMs
// (each block's ring runs on from tile to tile); an odd head count (3 + 2 x 1 heads of 64: 320
// columns, the last tile's second part past the end), grouped-query heads of 128, rows that end
// inside a tile, an inner dimension that is not a whole number of stages; positions as long
// contexts reach (130000: the fused kernel's angle reduction at its widest).
static void test_qkv_rope_fused_and_unfused_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_qkv_rope_matches_cpu(4000, 768, 12, 12, 64, 16384);
  expect_qkv_rope_matches_cpu(300, 200, 3, 1, 64, 130000);
  expect_qkv_rope_matches_cpu(333, 136, 4, 2, 128, 70000);
}

// Ragged token counts (tiles of 32 tokens cut short), head counts that do not divide a block's
// threads, every head width from one vector per row to a warp's worth, in bf16 and f32.
static void test_attention_delta_matches_cpu_for_every_head_width(void **state) {
  SKIP_WITHOUT_GPU();
  const int64_t shapes[][4] = {{2, 45, 3, 64},  {1, 100, 12, 128}, {3, 7, 5, 32},
                               {2, 33, 7, 256}, {1, 64, 2, 8},     {2, 40, 9, 16}};
  for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
    const int64_t b = shapes[si][0], t = shapes[si][1], h = shapes[si][2], d = shapes[si][3];
    const int64_t n = b * t * h * d;
    float *dout = lt_gpu_random(n, 1.0f, true), *o = lt_gpu_random(n, 1.0f, true);
    float *want = malloc(sizeof(float) * b * h * t);
    assert_ok(lt_attn_bwd_delta(&lt_test_cpu, host(want, 3, LT_SHAPE(b, h, t)),
                                host(dout, 4, LT_SHAPE(b, t, h, d)),
                                host(o, 4, LT_SHAPE(b, t, h, d))));
    for (int dt = 0; dt < 2; dt++) {
      const lt_dtype dtype = dt ? LT_F32 : LT_BF16;
      lt_tensor gdelta = lt_gpu_upload(want, LT_F32, 3, LT_SHAPE(b, h, t));
      assert_ok(lt_zero(&lt_test_gpu, gdelta));
      assert_ok(lt_attn_bwd_delta(&lt_test_gpu, gdelta,
                                  lt_gpu_upload(dout, dtype, 4, LT_SHAPE(b, t, h, d)),
                                  lt_gpu_upload(o, dtype, 4, LT_SHAPE(b, t, h, d))));
      float *got = lt_gpu_fetch(gdelta);
      printf("  (B, T, H, D) = (%lld, %lld, %lld, %lld) %s\n", (long long)b, (long long)t,
             (long long)h, (long long)d, dt ? "f32" : "bf16");
      lt_gpu_expect_close("attention delta (f32)", got, want, b * h * t, 1e-5);
      free(got);
    }
    free(dout), free(o), free(want);
    lt_gpu_free_all();
  }
}

// One cross-entropy case against the CPU over n rows of vocabulary v: row 0's target is column 0,
// row 1's the last column, every fifth row from row 3 is ignored, the rest random. The logits are
// f32 or bf16 (the LM head's in a bf16 model; the CPU then takes the same rounded values) and sit
// `offset` elements into their buffer (1: off 16-byte alignment). The GPU's outputs start as stale
// values (NaN losses, a gradient of the logits), so a row the kernel leaves unwritten fails. Both
// outputs are checked: the bf16 gradient into its own buffer, then the gradient in place.
static void expect_cross_entropy_matches_cpu(int64_t n, int64_t v, int64_t offset, lt_dtype dtype) {
  const bool bf16 = dtype == LT_BF16;
  printf("  rows %lld, vocabulary %lld, %s logits offset %lld elements\n", (long long)n,
         (long long)v, bf16 ? "bf16" : "f32", (long long)offset);
  float *logits = lt_gpu_random(n * v, 3.0f, bf16);
  int32_t *targets = malloc(sizeof(int32_t) * n);
  lt_rng rng = lt_rng_seed(lt_gpu_next_seed());
  for (int64_t i = 0; i < n; i++)
    targets[i] = i % 5 == 3 ? -100 : (int32_t)lt_rng_below(&rng, (uint64_t)v);
  targets[0] = 0, targets[1] = (int32_t)(v - 1);
  float *losses = malloc(sizeof(float) * n), *grad = malloc(sizeof(float) * n * v);
  assert_ok(lt_cross_entropy(&lt_test_cpu, host(losses, 1, LT_SHAPE(n)),
                             host(grad, 2, LT_SHAPE(n, v)), host(logits, 2, LT_SHAPE(n, v)),
                             lt_view1(targets, LT_I32, LT_CPU, n), -100, 0.25f));
  float *padded = calloc((size_t)(n * v + offset), sizeof(float)),
        *stale = malloc(sizeof(float) * n);
  memcpy(padded + offset, logits, sizeof(float) * n * v);
  for (int64_t i = 0; i < n; i++) stale[i] = NAN;
  lt_tensor buffer = lt_gpu_upload(padded, dtype, 1, LT_SHAPE(n * v + offset));
  lt_tensor glogits = lt_view((char *)buffer.data + offset * lt_dtype_size(dtype), dtype, LT_CUDA,
                              2, LT_SHAPE(n, v));
  lt_tensor ggrad = lt_gpu_upload(logits, LT_BF16, 2, LT_SHAPE(n, v));
  lt_tensor gtargets = lt_gpu_upload_i32(targets, 1, LT_SHAPE(n));
  for (int in_place = 0; in_place < 2; in_place++) {
    lt_tensor glosses = lt_gpu_upload(stale, LT_F32, 1, LT_SHAPE(n));
    lt_tensor out = in_place ? glogits : ggrad;
    assert_ok(lt_cross_entropy(&lt_test_gpu, glosses, out, glogits, gtargets, -100, 0.25f));
    float *got_losses = lt_gpu_fetch(glosses), *got_grad = lt_gpu_fetch(out);
    lt_gpu_expect_close("cross-entropy losses (f32)", got_losses, losses, n, 1e-5);
    const bool bf16_grad = !in_place || bf16;
    lt_gpu_expect_close(in_place ? "cross-entropy dlogits in place" : "cross-entropy dlogits",
                        got_grad, grad, n * v, bf16_grad ? 1e-2 : 1e-5);
    for (int64_t i = 3; i < n; i += 5) { // ignored rows: exactly zero
      assert_true(got_losses[i] == 0.0f);
      for (int64_t j = 0; j < v; j++) assert_true(got_grad[i * v + j] == 0.0f);
    }
    free(got_losses), free(got_grad);
  }
  free(logits), free(targets), free(losses), free(grad), free(padded), free(stale);
  lt_gpu_free_all();
}

// Rows that fit a block's registers (a multiple of 8, at most 32768): the model's 32768 fills
// 1024 threads of 32 values exactly; 5000 and 20000 leave the last vectors of the row unfilled.
// f32 and bf16 logits; for bf16 also more rows than blocks.
static void test_cross_entropy_with_rows_in_registers_matches_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  const int64_t vocabs[3] = {32768, 5000, 20000};
  for (int i = 0; i < 3; i++) {
    expect_cross_entropy_matches_cpu(37, vocabs[i], 0, LT_F32);
    expect_cross_entropy_matches_cpu(37, vocabs[i], 0, LT_BF16);
  }
  // bf16 rows go to blocks that each walk several rows, the next one copied in while the current
  // one is computed: more rows than the blocks that fit at once.
  expect_cross_entropy_matches_cpu(600, 32768, 0, LT_BF16);
  expect_cross_entropy_matches_cpu(1500, 5000, 0, LT_BF16);
}

// The two-pass path: a vocabulary not a multiple of 8, one too wide for registers, and logits off
// 16-byte alignment; f32 and bf16 logits.
static void
test_cross_entropy_in_two_passes_matches_cpu_for_odd_wide_and_unaligned_rows(void **state) {
  SKIP_WITHOUT_GPU();
  const lt_dtype dtypes[2] = {LT_F32, LT_BF16};
  for (int i = 0; i < 2; i++) {
    expect_cross_entropy_matches_cpu(37, 1001, 0, dtypes[i]);
    expect_cross_entropy_matches_cpu(37, 40000, 0, dtypes[i]);
    expect_cross_entropy_matches_cpu(37, 4096, 1, dtypes[i]);
  }
}

static void test_adamw_over_runs_matches_cpu_and_writes_the_bf16_copy(void **state) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 100003;
  // Runs with odd edges, a gap the update must leave alone, and more runs than one launch holds.
  lt_adamw_run runs[60];
  int n_runs = 0;
  for (int64_t start = 5; start + 1000 < n && n_runs < 60; start += 1603)
    runs[n_runs] = (lt_adamw_run){.start = start,
                                  .numel = 1000 + n_runs * 7,
                                  .weight_decay = n_runs % 2 ? 0.1f : 0.0f},
    n_runs++;
  float *p = lt_gpu_random(n, 1.0f, false), *g = lt_gpu_random(n, 1.0f, false);
  float *m = lt_gpu_random(n, 0.1f, false), *v = lt_gpu_random(n, 0.1f, false);
  for (int64_t i = 0; i < n; i++) v[i] = fabsf(v[i]);
  lt_tensor gp = lt_gpu_upload(p, LT_F32, 1, LT_SHAPE(n)),
            gg = lt_gpu_upload(g, LT_F32, 1, LT_SHAPE(n));
  lt_tensor gm = lt_gpu_upload(m, LT_F32, 1, LT_SHAPE(n)),
            gv = lt_gpu_upload(v, LT_F32, 1, LT_SHAPE(n));
  lt_tensor gc = lt_gpu_upload(p, LT_BF16, 1, LT_SHAPE(n));
  float *c_before = lt_gpu_fetch(gc);
  for (int step = 1; step <= 3; step++) {
    lt_adamw_args args = {.lr = 1e-2f,
                          .beta1 = 0.9f,
                          .beta2 = 0.95f,
                          .eps = 1e-8f,
                          .grad_scale = 0.5f,
                          .step = step,
                          .runs = runs,
                          .n_runs = n_runs};
    assert_ok(lt_adamw(&lt_test_cpu, host(p, 1, LT_SHAPE(n)), host(g, 1, LT_SHAPE(n)),
                       host(m, 1, LT_SHAPE(n)), host(v, 1, LT_SHAPE(n)), (lt_tensor){0}, &args));
    assert_ok(lt_adamw(&lt_test_gpu, gp, gg, gm, gv, gc, &args));
  }
  float *got_p = lt_gpu_fetch(gp), *got_m = lt_gpu_fetch(gm), *got_v = lt_gpu_fetch(gv);
  float *got_c = lt_gpu_fetch(gc);
  lt_gpu_expect_close("adamw params", got_p, p, n, 1e-6);
  lt_gpu_expect_close("adamw first moments", got_m, m, n, 1e-6);
  lt_gpu_expect_close("adamw second moments", got_v, v, n, 1e-6);
  int in_run = 0;
  for (int64_t i = 0; i < n; i++) {
    bool inside = false;
    for (int r = 0; r < n_runs; r++)
      inside |= i >= runs[r].start && i < runs[r].start + runs[r].numel;
    in_run += inside;
    // The compute copy is the rounded master value inside runs, untouched outside.
    float want = inside ? lt_bf16_to_f32(lt_f32_to_bf16(got_p[i])) : c_before[i];
    if (got_c[i] != want)
      fail_msg("compute copy[%lld] = %g, want %g", (long long)i, got_c[i], want);
  }
  assert_true(in_run > 0 && in_run < n);
  free(p), free(g), free(m), free(v), free(got_p), free(got_m), free(got_v), free(got_c),
      free(c_before);
  lt_gpu_free_all();
}

static void test_out_of_memory_names_the_size_and_what_to_lower(void **state) {
  SKIP_WITHOUT_GPU();
  void *p = NULL;
  int rc = lt_device_alloc(LT_CUDA, (size_t)1 << 50, "activations", &p);
  EXPECT_ERROR(rc, LT_ERR_MEMORY, "out of GPU memory", "1024.00 TiB", "activations",
               "train.micro_batch", "train.seq_len", "train.recompute");
  assert_null(p);
}

// lt_upload goes in stream order: after an op queued before it (here a zero of the same tensor,
// queued behind a large matmul so it is still pending), before one queued after it (a scale);
// the source may be overwritten as soon as it returns; and more uploads than staging slots, of
// growing sizes, each land whole.
static void test_uploads_land_in_stream_order_from_a_reusable_source(void **state) {
  SKIP_WITHOUT_GPU();
  enum { N = 1 << 16, BIG = 2048, ROUNDS = 20 };
  float *src = malloc(sizeof(float) * N), *want = malloc(sizeof(float) * N),
        *zeros = calloc((size_t)BIG * BIG, sizeof(float));
  lt_tensor a = lt_gpu_upload(zeros, LT_BF16, 2, LT_SHAPE(BIG, BIG)),
            c = lt_gpu_upload(zeros, LT_F32, 2, LT_SHAPE(BIG, BIG));
  lt_tensor t = lt_gpu_upload(zeros, LT_F32, 1, LT_SHAPE(N));
  for (int r = 0; r < ROUNDS; r++) {
    const int64_t n = (int64_t)(r + 1) * N / ROUNDS;
    for (int64_t i = 0; i < n; i++) src[i] = (float)(r * 1000 + i % 997), want[i] = 2 * src[i];
    lt_tensor part = lt_view1(t.data, LT_F32, LT_CUDA, n);
    assert_ok(lt_matmul(&lt_test_gpu, c, a, false, a, true, 1.0f, 0.0f));
    assert_ok(lt_zero(&lt_test_gpu, part));
    assert_ok(lt_upload(&lt_test_gpu, part, src));
    for (int64_t i = 0; i < n; i++) src[i] = -1.0f; // the copy was taken: this must not land
    assert_ok(lt_scale(&lt_test_gpu, part, 2.0f));
    float *got = lt_gpu_fetch(part);
    assert_memory_equal(got, want, sizeof(float) * n); // exact: copies and doubling
    free(got);
  }
  printf("  %d uploads of up to %d floats, each between a zero and a scale: exact\n", ROUNDS, N);
  free(src), free(want), free(zeros);
  lt_gpu_free_all();
}

// Where no GPU is usable (CI), asking for one is a device error that names run.device and the fix.
static void test_without_a_gpu_a_cuda_context_fails_naming_run_device(void **state) {
  if (lt_gpu_available()) skip();
  lt_ctx ctx;
  EXPECT_ERROR(lt_ctx_init(&ctx, LT_CUDA, 1), LT_ERR_DEVICE, "run.device is cuda",
               "CUDA_VISIBLE_DEVICES", "run.device: cpu");
}

static void test_unsupported_operands_fail_naming_the_op_and_tensors(void **state) {
  SKIP_WITHOUT_GPU();
  float x[64] = {0};
  lt_tensor a = lt_gpu_upload(x, LT_F32, 2, LT_SHAPE(8, 8)),
            b = lt_gpu_upload(x, LT_BF16, 2, LT_SHAPE(8, 8));
  EXPECT_ERROR(lt_matmul(&lt_test_gpu, a, a, false, b, false, 1.0f, 0.0f), LT_ERR_INTERNAL,
               "matmul", "f32 (8, 8) cuda", "bf16 (8, 8) cuda");
  lt_gpu_free_all();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_matmul_matches_cpu_for_every_transpose_and_output),
      cmocka_unit_test(test_add_scale_copy_and_zero_match_cpu),
      cmocka_unit_test(test_sums_match_cpu_and_repeat_exactly),
      cmocka_unit_test(test_embedding_lookup_and_scatter_add_match_cpu),
      cmocka_unit_test(test_rmsnorm_forward_and_backward_match_cpu),
      cmocka_unit_test(test_add_rmsnorm_matches_the_add_then_the_norm),
      cmocka_unit_test(test_rope_split_and_its_transpose_match_cpu),
      cmocka_unit_test(test_swiglu_forward_and_backward_with_h_match_cpu),
      cmocka_unit_test(test_swiglu_linear_fused_and_unfused_match_cpu),
      cmocka_unit_test(test_qkv_rope_fused_and_unfused_match_cpu),
      cmocka_unit_test(test_attention_delta_matches_cpu_for_every_head_width),
      cmocka_unit_test(test_cross_entropy_with_rows_in_registers_matches_cpu),
      cmocka_unit_test(
          test_cross_entropy_in_two_passes_matches_cpu_for_odd_wide_and_unaligned_rows),
      cmocka_unit_test(test_adamw_over_runs_matches_cpu_and_writes_the_bf16_copy),
      cmocka_unit_test(test_uploads_land_in_stream_order_from_a_reusable_source),
      cmocka_unit_test(test_out_of_memory_names_the_size_and_what_to_lower),
      cmocka_unit_test(test_unsupported_operands_fail_naming_the_op_and_tensors),
      cmocka_unit_test(test_without_a_gpu_a_cuda_context_fails_naming_run_device),
  };
  return cmocka_run_group_tests(tests, lt_gpu_group_setup, lt_gpu_group_teardown);
}
