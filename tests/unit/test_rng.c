// The counter-based RNG and the O(1)-memory permutation: determinism, independence of streams,
// the stateless forms that sharded initialisation relies on, and the distributions.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "data/permutation.h"
#include "testing.h"

enum { N_DRAWS = 100000 };

static void test_same_seed_gives_the_same_stream(void **state) {
  (void)state;
  lt_rng a = lt_rng_seed(42), b = lt_rng_seed(42);
  for (int i = 0; i < 1000; i++) assert_true(lt_rng_u64(&a) == lt_rng_u64(&b));
  lt_rng c = lt_rng_seed(42), d = lt_rng_seed(42);
  for (int i = 0; i < 1000; i++) assert_true(lt_rng_normal(&c) == lt_rng_normal(&d));
}

// How many of the first 1000 draws of a and b agree.
static int agreements(lt_rng a, lt_rng b) {
  int same = 0;
  for (int i = 0; i < 1000; i++) same += lt_rng_u64(&a) == lt_rng_u64(&b);
  return same;
}

static void test_different_seeds_give_different_streams(void **state) {
  (void)state;
  assert_int_equal(agreements(lt_rng_seed(1), lt_rng_seed(2)), 0);
  assert_int_equal(agreements(lt_rng_seed(0), lt_rng_seed(1)), 0);
}

static void test_splits_give_streams_unlike_each_other_and_the_parent(void **state) {
  (void)state;
  lt_rng parent = lt_rng_seed(7);
  assert_int_equal(agreements(lt_rng_split(parent, 0), lt_rng_split(parent, 1)), 0);
  assert_int_equal(agreements(lt_rng_split(parent, 0), parent), 0);
  assert_int_equal(agreements(lt_rng_split_name(parent, "blocks.0.attn.wq"),
                              lt_rng_split_name(parent, "blocks.0.attn.wk")),
                   0);
  assert_int_equal(agreements(lt_rng_split(lt_rng_seed(1), 5), lt_rng_split(lt_rng_seed(2), 5)), 0);
  // A split depends only on (parent, stream): the same name gives the same child.
  assert_int_equal(
      agreements(lt_rng_split_name(parent, "embed"), lt_rng_split_name(parent, "embed")), 1000);
}

static void test_stream_draw_n_is_the_stateless_value_at_n(void **state) {
  (void)state;
  lt_rng rng = lt_rng_split(lt_rng_seed(3), 11);
  uint64_t key = rng.key;
  for (uint64_t i = 0; i < 1000; i++) assert_true(lt_rng_u64(&rng) == lt_rng_u64_at(key, i));
}

static void test_normal_at_equals_the_streams_normal_at_that_index(void **state) {
  (void)state;
  // The i-th normal of a stream uses draws 2i and 2i + 1, so element i of a weight can be made
  // by whichever rank holds it.
  lt_rng rng = lt_rng_split_name(lt_rng_seed(5), "ffn.w_up");
  uint64_t key = rng.key;
  for (uint64_t i = 0; i < 1000; i++) {
    float streamed = lt_rng_normal(&rng);
    float stateless = lt_rng_normal_at(key, i);
    if (memcmp(&streamed, &stateless, sizeof(float)) != 0)
      fail_msg("normal %llu: stream %.9g, stateless %.9g", (unsigned long long)i, streamed,
               stateless);
  }
}

static void test_normal_at_does_not_depend_on_draw_order(void **state) {
  (void)state;
  enum { N = 512 };
  uint64_t key = lt_rng_seed(9).key;
  float forward[N], backward[N], strided[N];
  for (int i = 0; i < N; i++) forward[i] = lt_rng_normal_at(key, (uint64_t)i);
  for (int i = N - 1; i >= 0; i--) backward[i] = lt_rng_normal_at(key, (uint64_t)i);
  for (int start = 0; start < 7; start++) // as 7 shards would, each its own elements
    for (int i = start; i < N; i += 7) strided[i] = lt_rng_normal_at(key, (uint64_t)i);
  assert_memory_equal(forward, backward, sizeof forward);
  assert_memory_equal(forward, strided, sizeof forward);
}

static void test_normal_samples_have_mean_zero_and_variance_one(void **state) {
  (void)state;
  lt_rng rng = lt_rng_seed(2024);
  double sum = 0.0, sum_sq = 0.0;
  for (int i = 0; i < N_DRAWS; i++) {
    double x = lt_rng_normal(&rng);
    sum += x, sum_sq += x * x;
  }
  double mean = sum / N_DRAWS, var = sum_sq / N_DRAWS - mean * mean;
  // Standard errors: 0.0032 for the mean, 0.0045 for the variance; the bounds sit 4-6 of them out.
  if (fabs(mean) >= 0.02 || fabs(var - 1.0) >= 0.02) fail_msg("mean %g, variance %g", mean, var);
}

static void test_normal_samples_have_the_normal_tails(void **state) {
  (void)state;
  lt_rng rng = lt_rng_seed(77);
  int beyond1 = 0, beyond3 = 0;
  for (int i = 0; i < N_DRAWS; i++) {
    float x = lt_rng_normal(&rng);
    assert_true(isfinite(x));
    beyond1 += fabsf(x) > 1.0f;
    beyond3 += fabsf(x) > 3.0f;
  }
  // P(|x| > 1) = 0.3173, P(|x| > 3) = 0.0027; a uniform or a Laplace of variance 1 misses these.
  double p1 = (double)beyond1 / N_DRAWS, p3 = (double)beyond3 / N_DRAWS;
  if (fabs(p1 - 0.3173) > 0.006 || p3 < 0.0017 || p3 > 0.0037)
    fail_msg("P(|x|>1) = %g, P(|x|>3) = %g", p1, p3);
}

static void test_uniform_stays_in_the_unit_interval_with_mean_one_half(void **state) {
  (void)state;
  lt_rng rng = lt_rng_seed(12);
  double sum = 0.0;
  for (int i = 0; i < N_DRAWS; i++) {
    float u = lt_rng_uniform(&rng);
    assert_true(u >= 0.0f && u < 1.0f);
    sum += u;
  }
  assert_true(fabs(sum / N_DRAWS - 0.5) < 0.005);
}

static void test_below_stays_in_range(void **state) {
  (void)state;
  static const uint64_t bounds[] = {1, 2, 3, 7, 1000, (1ULL << 63) + 1, UINT64_MAX};
  lt_rng rng = lt_rng_seed(31);
  for (int b = 0; b < 7; b++)
    for (int i = 0; i < 10000; i++) assert_true(lt_rng_below(&rng, bounds[b]) < bounds[b]);
}

static void test_below_hits_every_value_about_equally(void **state) {
  (void)state;
  enum { N = 7, DRAWS = 70000 };
  int counts[N] = {0};
  lt_rng rng = lt_rng_seed(8);
  for (int i = 0; i < DRAWS; i++) counts[lt_rng_below(&rng, N)]++;
  for (int v = 0; v < N; v++) // expected 10000 each, standard deviation about 93
    if (abs(counts[v] - DRAWS / N) > 500)
      fail_msg("value %d drawn %d times of %d", v, counts[v], DRAWS);
}

// Fails unless p maps [0, n) onto [0, n) one to one.
static void assert_bijection(const lt_permutation *p, uint64_t n) {
  char *seen = calloc(n, 1);
  for (uint64_t i = 0; i < n; i++) {
    uint64_t j = lt_permutation_apply(p, i);
    if (j >= n)
      fail_msg("n = %llu: %llu maps to %llu", (unsigned long long)n, (unsigned long long)i,
               (unsigned long long)j);
    if (seen[j])
      fail_msg("n = %llu: %llu is hit twice", (unsigned long long)n, (unsigned long long)j);
    seen[j] = 1;
  }
  free(seen);
}

static void test_permutation_is_a_bijection_for_every_size(void **state) {
  (void)state;
  static const uint64_t sizes[] = {1, 2, 3, 4, 5, 7, 16, 17, 1000, 4096, 4097, 65537};
  for (int s = 0; s < 12; s++)
    for (uint64_t key = 0; key < 3; key++) {
      lt_permutation p = lt_permutation_make(sizes[s], lt_rng_seed(key).key);
      assert_bijection(&p, sizes[s]);
    }
}

// How many i in [0, n) the two permutations send to the same place.
static uint64_t fixed_agreements(const lt_permutation *a, const lt_permutation *b, uint64_t n) {
  uint64_t same = 0;
  for (uint64_t i = 0; i < n; i++) same += lt_permutation_apply(a, i) == lt_permutation_apply(b, i);
  return same;
}

static void test_permutation_differs_for_different_keys(void **state) {
  (void)state;
  lt_permutation a = lt_permutation_make(1000, lt_rng_seed(1).key);
  lt_permutation b = lt_permutation_make(1000, lt_rng_seed(2).key);
  lt_permutation a_again = lt_permutation_make(1000, lt_rng_seed(1).key);
  // Two independent random permutations agree in about one place.
  assert_true(fixed_agreements(&a, &b, 1000) < 10);
  assert_int_equal(fixed_agreements(&a, &a_again, 1000), 1000);
}

static void test_permutation_shuffles(void **state) {
  (void)state;
  lt_permutation p = lt_permutation_make(1000, lt_rng_seed(4).key);
  uint64_t fixed_points = 0, ascending = 0;
  for (uint64_t i = 0; i < 1000; i++) {
    fixed_points += lt_permutation_apply(&p, i) == i;
    if (i > 0) ascending += lt_permutation_apply(&p, i) > lt_permutation_apply(&p, i - 1);
  }
  // A random permutation has about 1 fixed point and about half its steps ascending.
  assert_true(fixed_points < 10);
  assert_true(ascending > 400 && ascending < 600);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_same_seed_gives_the_same_stream),
      cmocka_unit_test(test_different_seeds_give_different_streams),
      cmocka_unit_test(test_splits_give_streams_unlike_each_other_and_the_parent),
      cmocka_unit_test(test_stream_draw_n_is_the_stateless_value_at_n),
      cmocka_unit_test(test_normal_at_equals_the_streams_normal_at_that_index),
      cmocka_unit_test(test_normal_at_does_not_depend_on_draw_order),
      cmocka_unit_test(test_normal_samples_have_mean_zero_and_variance_one),
      cmocka_unit_test(test_normal_samples_have_the_normal_tails),
      cmocka_unit_test(test_uniform_stays_in_the_unit_interval_with_mean_one_half),
      cmocka_unit_test(test_below_stays_in_range),
      cmocka_unit_test(test_below_hits_every_value_about_equally),
      cmocka_unit_test(test_permutation_is_a_bijection_for_every_size),
      cmocka_unit_test(test_permutation_differs_for_different_keys),
      cmocka_unit_test(test_permutation_shuffles),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
