// A hybrid stack trains: sparse, mixture-of-head and softmax attention layers in one model,
// through the trainer as `longtrain train` runs it, on a dataset prepared from text. The loss
// falls, and the MoH layers' load-balance loss is collected beside it.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testing.h"
#include "train/trainer.h"

// Text with structure a tiny model learns in a few dozen steps: sentences from a small grammar.
static void write_text(const char *path) {
  static const char *subjects[] = {"the cat", "a dog", "my friend", "the old man", "her sister"};
  static const char *verbs[] = {"sees", "likes", "follows", "calls", "visits"};
  static const char *objects[] = {"the river", "a small house", "the market", "our garden"};
  FILE *f = fopen(path, "w");
  if (!f) fail_msg("cannot write %s", path);
  for (int i = 0; i < 3000; i++)
    fprintf(f, "%s %s %s.\n", subjects[(i * 7) % 5], verbs[(i * 3 + i / 5) % 5],
            objects[(i * 11 + i / 7) % 4]);
  fclose(f);
}

static void test_hybrid_stack_of_sparse_moh_and_softmax_layers_learns(void **state) {
  (void)state;
  const char *dir = lt_test_tmpdir();
  char text[1024], data[1024], command[4096], out[4096], yaml[2048];
  snprintf(text, sizeof text, "%s/grammar.txt", dir);
  snprintf(data, sizeof data, "%s/grammar.h5", dir);
  write_text(text);
  snprintf(command, sizeof command, "%s prepare --output %s %s", lt_test_binary(), data, text);
  if (lt_test_run(command, out, sizeof out) != 0) fail_msg("prepare failed:\n%s", out);
  snprintf(yaml, sizeof yaml,
           "model:\n  attention: sparse,moh,softmax\n  d_model: 32\n  n_layers: 3\n"
           "  n_heads: 4\n  n_kv_heads: 2\n  ffn_dim: 64\n  vocab_size: 320\n  max_seq_len: 64\n"
           "  sparse:\n    window: 16\n    sinks: 2\n    block_size: 8\n    stride: 3\n"
           "  moh:\n    shared_heads: 1\n    top_k: 2\n    balance_coef: 0.05\n"
           "train:\n  steps: 60\n  batch: 8\n  micro_batch: 4\n  seq_len: 64\n  lr: 6e-3\n"
           "  min_lr: 6e-4\n  warmup: 5\n  recompute: true\n"
           "data:\n  path: %s\nrun:\n  threads: 1\n",
           data);
  lt_config cfg;
  assert_ok(lt_config_load_string(&cfg, yaml, "hybrid.yaml", 0, NULL));
  lt_world world = {.rank = 0, .size = 1};
  lt_trainer tr;
  assert_ok(lt_trainer_create(&tr, &cfg, &world));
  assert_ok(lt_params_init(&tr.model.params, (uint64_t)cfg.run.seed));
  const char *kinds[3] = {"sparse", "moh", "softmax"};
  for (int l = 0; l < 3; l++) assert_string_equal(tr.model.blocks[l].mixer->ops->kind, kinds[l]);
  lt_step_metrics first, m;
  assert_ok(lt_trainer_step(&tr, &first));
  for (int s = 1; s < cfg.train.steps; s++) assert_ok(lt_trainer_step(&tr, &m));
  print_message("hybrid stack: loss %.3f -> %.3f, aux %.4f -> %.4f\n", first.loss, m.loss,
                first.aux_loss, m.aux_loss);
  // From ln(320) = 5.8 (uniform over the vocabulary) to below 40% of it.
  assert_true(first.loss > 5.0);
  assert_true(m.loss < 0.4 * first.loss);
  // One MoH layer with 3 routed heads, 2 chosen: 0.05 * R * sum_i f_i P_i is 0.05 * K = 0.1 when
  // the routing is balanced, up to 0.05 * R = 0.15 at its most lopsided.
  assert_true(m.aux_loss > 0.05 && m.aux_loss <= 0.15);
  lt_trainer_destroy(&tr);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hybrid_stack_of_sparse_moh_and_softmax_layers_learns),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
