// parallel.tp splits the query and key/value heads, the feed-forward's and the experts' hidden
// units and the vocabulary: a size it cannot split evenly is a one-line config error that names
// the key, parallel.tp and the sizes that would work.
#include "core/config.h"
#include "testing.h"

// The model of a small run at tp = 4, with the overrides after it.
static int load(lt_config *cfg, int n, char *const *overrides) {
  char *all[16] = {"model.d_model=64",  "model.n_heads=8",      "model.n_kv_heads=4",
                   "model.ffn_dim=128", "model.vocab_size=256", "model.n_layers=2",
                   "train.seq_len=64",  "parallel.tp=4"};
  for (int i = 0; i < n; i++) all[8 + i] = overrides[i];
  return lt_config_load_string(cfg, "", "run.yaml", 8 + n, all);
}
#define LOAD(cfg, ...)                                                                             \
  load((cfg), (int)(sizeof((char *[]){__VA_ARGS__}) / sizeof(char *)), (char *[]){__VA_ARGS__})

static void test_sizes_that_split_evenly_load(void **state) {
  (void)state;
  lt_config cfg;
  assert_ok(LOAD(&cfg, "model.ffn=swiglu,moe", "model.moe.ffn_dim=64",
                 "model.attention=moh,lightning", "model.moh.shared_heads=2", "model.moh.top_k=2"));
  assert_int_equal(cfg.parallel.tp, 4);
}

static void test_query_heads_tp_cannot_split_are_a_config_error(void **state) {
  (void)state;
  lt_config cfg;
  EXPECT_ERROR(
      LOAD(&cfg, "model.n_heads=12", "model.head_dim=8", "model.n_kv_heads=0", "parallel.tp=8"),
      LT_ERR_CONFIG, "run.yaml", "model.n_heads (12)", "parallel.tp (8)",
      "set model.n_heads to 8 or 16");
}

static void test_fewer_kv_heads_than_tp_ranks_are_a_config_error(void **state) {
  (void)state;
  lt_config cfg;
  EXPECT_ERROR(LOAD(&cfg, "model.n_kv_heads=2"), LT_ERR_CONFIG, "model.n_kv_heads (2)",
               "parallel.tp (4)", "set model.n_kv_heads to 4,");
}

static void test_feed_forward_width_tp_cannot_split_is_a_config_error(void **state) {
  (void)state;
  lt_config cfg;
  EXPECT_ERROR(LOAD(&cfg, "model.ffn_dim=102", "model.ffn=swiglu"), LT_ERR_CONFIG,
               "model.ffn_dim (102)", "parallel.tp (4)", "set model.ffn_dim to 100 or 104");
}

static void test_expert_width_tp_cannot_split_is_a_config_error(void **state) {
  (void)state;
  lt_config cfg;
  // Only MoE layers: model.ffn_dim is unused when the experts have their own width.
  assert_ok(LOAD(&cfg, "model.ffn=moe", "model.moe.ffn_dim=64", "model.ffn_dim=102"));
  EXPECT_ERROR(LOAD(&cfg, "model.ffn=moe", "model.moe.ffn_dim=30"), LT_ERR_CONFIG,
               "model.moe.ffn_dim (30)", "parallel.tp (4)", "experts");
  EXPECT_ERROR(LOAD(&cfg, "model.ffn=moe", "model.ffn_dim=90"), LT_ERR_CONFIG, "model.ffn_dim (90)",
               "experts");
}

static void test_vocabulary_tp_cannot_split_is_a_config_error_that_says_to_pad(void **state) {
  (void)state;
  lt_config cfg;
  EXPECT_ERROR(LOAD(&cfg, "model.vocab_size=258"), LT_ERR_CONFIG, "model.vocab_size (258)",
               "parallel.tp (4)", "set model.vocab_size to 260,", "padding");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sizes_that_split_evenly_load),
      cmocka_unit_test(test_query_heads_tp_cannot_split_are_a_config_error),
      cmocka_unit_test(test_fewer_kv_heads_than_tp_ranks_are_a_config_error),
      cmocka_unit_test(test_feed_forward_width_tp_cannot_split_is_a_config_error),
      cmocka_unit_test(test_expert_width_tp_cannot_split_is_a_config_error),
      cmocka_unit_test(test_vocabulary_tp_cannot_split_is_a_config_error_that_says_to_pad),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
