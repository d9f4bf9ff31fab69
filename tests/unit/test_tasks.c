// The synthetic tasks: MQAR and passkey sequences are deterministic and have the structure their
// papers define, the accuracy function scores perfect and random predictors as it must, and a
// tiny softmax-attention model learns MQAR far above chance.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tasks.h"
#include "layers/layer.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "testing.h"

typedef struct task_batch {
  int64_t B, T;
  int32_t *tokens, *targets, *pos;
} task_batch;

static task_batch generate(const lt_task *task, int64_t first, int64_t B) {
  task_batch b = {.B = B, .T = task->seq_len};
  b.tokens = malloc(sizeof(int32_t) * B * b.T);
  b.targets = malloc(sizeof(int32_t) * B * b.T);
  b.pos = malloc(sizeof(int32_t) * B * b.T);
  assert_ok(lt_task_generate(task, first, B, b.tokens, b.targets, b.pos));
  return b;
}

static lt_batch as_batch(const task_batch *b) {
  const int64_t n = b->B * b->T;
  return (lt_batch){.B = b->B,
                    .T = b->T,
                    .tokens = lt_view1(b->tokens, LT_I32, LT_CPU, n),
                    .targets = lt_view1(b->targets, LT_I32, LT_CPU, n),
                    .pos = lt_view1(b->pos, LT_I32, LT_CPU, n)};
}

static void free_batch(task_batch *b) {
  free(b->tokens), free(b->targets), free(b->pos);
}

static lt_task mqar(int vocab, int T, int n_pairs, uint64_t seed) {
  lt_task task = lt_task_defaults(LT_TASK_MQAR, vocab, T, seed);
  task.n_pairs = n_pairs;
  return task;
}

// --- determinism ---

static void test_sequences_depend_only_on_the_seed_and_their_index(void **state) {
  (void)state;
  const lt_task tasks[2] = {mqar(64, 48, 6, 7), lt_task_defaults(LT_TASK_PASSKEY, 40, 50, 7)};
  for (int k = 0; k < 2; k++) {
    task_batch a = generate(&tasks[k], 0, 5), again = generate(&tasks[k], 0, 5);
    task_batch tail = generate(&tasks[k], 3, 2);
    const size_t row = sizeof(int32_t) * (size_t)a.T;
    assert_memory_equal(a.tokens, again.tokens, 5 * row);
    assert_memory_equal(a.targets, again.targets, 5 * row);
    assert_memory_equal(a.tokens + 3 * a.T, tail.tokens, 2 * row); // any batch from any index
    assert_memory_equal(a.targets + 3 * a.T, tail.targets, 2 * row);
    assert_memory_not_equal(a.tokens, a.tokens + a.T, row); // sequences differ
    lt_task other_seed = tasks[k];
    other_seed.seed = 8;
    task_batch c = generate(&other_seed, 0, 5);
    assert_memory_not_equal(a.tokens, c.tokens, 5 * row);
    for (int64_t i = 0; i < 5 * a.T; i++) assert_int_equal(a.pos[i], i % a.T);
    free_batch(&a), free_batch(&again), free_batch(&tail), free_batch(&c);
  }
}

// --- MQAR ---

static void test_mqar_answers_every_key_once_with_its_value(void **state) {
  (void)state;
  const int V = 64, T = 64, n = 8, half = V / 2;
  lt_task task = mqar(V, T, n, 3);
  task_batch b = generate(&task, 0, 20);
  for (int64_t s = 0; s < b.B; s++) {
    const int32_t *x = b.tokens + s * T, *y = b.targets + s * T;
    int queried[64] = {0};
    for (int i = 0; i < n; i++) { // the pairs: distinct keys below V/2, distinct values above
      assert_true(x[2 * i] >= 1 && x[2 * i] < half);
      assert_true(x[2 * i + 1] >= half && x[2 * i + 1] < V);
      assert_int_equal(y[2 * i], LT_IGNORE_INDEX), assert_int_equal(y[2 * i + 1], LT_IGNORE_INDEX);
      for (int j = 0; j < i; j++) assert_true(x[2 * j] != x[2 * i] && x[2 * j + 1] != x[2 * i + 1]);
    }
    int answers = 0;
    for (int t = 2 * n; t < T; t++) {
      if (y[t] == LT_IGNORE_INDEX) {
        assert_true(x[t] == 0 || (t - 2 * n) % 2 == 0); // only query places hold keys
        continue;
      }
      answers++;
      assert_int_equal((t - 2 * n) % 2, 0); // queries sit at even offsets after the pairs
      int pair = -1;
      for (int i = 0; i < n; i++)
        if (x[2 * i] == x[t]) pair = i;
      assert_true(pair >= 0);
      assert_int_equal(y[t], x[2 * pair + 1]);      // the answer is the key's value
      if (t + 1 < T) assert_int_equal(x[t + 1], 0); // the value is never shown after a query
      queried[pair]++;
    }
    assert_int_equal(answers, n);
    for (int i = 0; i < n; i++) assert_int_equal(queried[i], 1);
  }
  free_batch(&b);
}

static void test_mqar_queries_come_mostly_soon_after_the_pairs(void **state) {
  (void)state;
  // 4 pairs, 28 places for queries: uniform gaps would put a quarter in the first 7; the power
  // law (g+1)^-0.99 puts most of them there.
  const int T = 64, n = 4, space = (T - 2 * n) / 2;
  lt_task task = mqar(32, T, n, 5);
  task_batch b = generate(&task, 0, 200);
  int early = 0, total = 0;
  for (int64_t i = 0; i < b.B * T; i++) {
    if (b.targets[i] == LT_IGNORE_INDEX) continue;
    const int gap = (int)((i % T) - 2 * n) / 2;
    early += gap < space / 4;
    total++;
  }
  assert_int_equal(total, 200 * n);
  printf("%.1f%% of queries in the first quarter of the gaps\n", 100.0 * early / total);
  assert_true(early > total / 2);
  free_batch(&b);
}

// --- passkey ---

static void expect_passkey_at_depth(double depth, int expected_key_place) {
  const int V = 40, T = 60, L = 5;
  lt_task task = lt_task_defaults(LT_TASK_PASSKEY, V, T, 11);
  task.depth_min = task.depth_max = depth;
  task_batch b = generate(&task, 0, 6);
  for (int64_t s = 0; s < b.B; s++) {
    const int32_t *x = b.tokens + s * T, *y = b.targets + s * T;
    int key = -1;
    for (int t = 0; t < T; t++)
      if (x[t] == LT_PASSKEY_KEY) key = t;
    assert_int_equal(key, expected_key_place);
    assert_int_equal(x[T - L], LT_PASSKEY_ASK);
    for (int t = 0; t < T; t++) {
      const bool answer = t >= T - L;
      // The answer's digits are the hidden passkey's, in order.
      assert_int_equal(y[t], answer ? x[key + 1 + (t - (T - L))] : LT_IGNORE_INDEX);
      const bool digit = (t > key && t <= key + L) || t > T - L;
      if (digit)
        assert_true(x[t] >= LT_PASSKEY_DIGIT0 && x[t] < LT_PASSKEY_DIGIT0 + 10);
      else if (t != key && t != T - L)
        assert_true(x[t] >= LT_PASSKEY_FILLER && x[t] < V);
    }
  }
  free_batch(&b);
}

static void test_passkey_answer_is_the_key_hidden_at_the_chosen_depth(void **state) {
  (void)state;
  // 61 tokens in the stream: 2 * (5 + 1) for the two statements, 49 of filler.
  expect_passkey_at_depth(0.0, 0);
  expect_passkey_at_depth(0.5, 25); // round(0.5 * 49)
  expect_passkey_at_depth(1.0, 49); // the key right before the ask
}

static void test_passkey_depth_is_drawn_from_its_range_and_buckets_split_it(void **state) {
  (void)state;
  // 101 tokens in the stream, 89 of filler: depths 0.25 .. 0.5 put the key at 22 .. 45.
  const int V = 40, T = 100;
  lt_task task = lt_task_defaults(LT_TASK_PASSKEY, V, T, 21);
  task.depth_min = 0.25, task.depth_max = 0.5;
  task_batch b = generate(&task, 0, 300);
  int lowest = T, highest = -1;
  for (int64_t s = 0; s < b.B; s++)
    for (int t = 0; t < T; t++)
      if (b.tokens[s * T + t] == LT_PASSKEY_KEY) {
        lowest = t < lowest ? t : lowest;
        highest = t > highest ? t : highest;
      }
  printf("passkey places %d .. %d for depths 0.25 .. 0.5\n", lowest, highest);
  assert_true(lowest >= 22 && lowest <= 24); // uniform: 300 draws reach near both ends
  assert_true(highest <= 45 && highest >= 43);
  free_batch(&b);
  // Buckets: equal parts of the range, in order, covering it.
  for (int k = 0; k < 5; k++) {
    const lt_task part = lt_task_depth_bucket(&task, k, 5);
    assert_float_equal(part.depth_min, 0.25 + 0.05 * k, 1e-12);
    assert_float_equal(part.depth_max, 0.25 + 0.05 * (k + 1), 1e-12);
    assert_int_equal(part.seed, task.seed);
    assert_int_equal(part.passkey_len, task.passkey_len);
  }
}

static void test_passkey_filler_repeats_one_sentence_the_same_for_every_seed(void **state) {
  (void)state;
  lt_task task = lt_task_defaults(LT_TASK_PASSKEY, 100, 80, 13);
  task.depth_min = task.depth_max = 1.0; // all filler first: tokens 0..filler-1
  lt_task other_seed = task;
  other_seed.seed = 14;
  task_batch b = generate(&task, 0, 3), other = generate(&other_seed, 0, 3);
  const int filler = 81 - 2 * 6;
  for (int64_t s = 0; s < b.B; s++)
    for (int t = 0; t < filler; t++) {
      assert_int_equal(b.tokens[s * 80 + t], b.tokens[t]); // the same text in every sequence
      if (t >= 16) assert_int_equal(b.tokens[s * 80 + t], b.tokens[s * 80 + t - 16]);
      // and for every seed: training and evaluation streams differ only in passkeys and depths
      assert_int_equal(other.tokens[s * 80 + t], b.tokens[t]);
    }
  assert_memory_not_equal(b.tokens + filler + 1, other.tokens + filler + 1, 5 * sizeof(int32_t));
  free_batch(&b), free_batch(&other);
}

// --- accuracy ---

static void test_accuracy_of_perfect_random_and_wrong_predictors(void **state) {
  (void)state;
  const int V = 64;
  lt_task task = mqar(V, 64, 8, 17);
  task_batch b = generate(&task, 0, 40);
  const int64_t n = b.B * b.T;
  float *logits = malloc(sizeof(float) * n * V);
  lt_test_fill_normal(logits, n * V, 19, 1.0f);
  lt_task_score random = {0}, perfect = {0}, wrong = {0};
  lt_task_score_logits(&random, logits, b.targets, b.B, b.T, V);
  for (int64_t i = 0; i < n; i++)
    if (b.targets[i] != LT_IGNORE_INDEX) logits[i * V + b.targets[i]] = 100.0f;
  lt_task_score_logits(&perfect, logits, b.targets, b.B, b.T, V);
  for (int64_t i = 0; i < n; i++)
    if (b.targets[i] != LT_IGNORE_INDEX)
      logits[i * V + (b.targets[i] + 1) % V] = 200.0f; // confidently one off
  lt_task_score_logits(&wrong, logits, b.targets, b.B, b.T, V);
  assert_int_equal(perfect.answers, 40 * 8);
  assert_true(lt_task_accuracy(perfect) == 1.0);
  assert_true(lt_task_accuracy(wrong) == 0.0);
  // A random predictor is right 1 time in V: 5 of 320 expected, 3 sigma is about 6.7.
  printf("random predictor: %lld of %lld right\n", (long long)random.correct,
         (long long)random.answers);
  assert_true(lt_task_accuracy(random) < 12.0 / 320);
  assert_int_equal(perfect.sequences, 40);
  assert_true(lt_task_exact_match(perfect) == 1.0 && lt_task_exact_match(wrong) == 0.0);
  // One wrong answer spoils its sequence's exact match, and only that one's.
  lt_task_score one_off = {0};
  for (int64_t i = 0; i < n; i++)
    if (b.targets[i] != LT_IGNORE_INDEX) logits[i * V + b.targets[i]] = 300.0f;
  int64_t spoiled = 3 * b.T;
  while (b.targets[spoiled] == LT_IGNORE_INDEX) spoiled++;
  logits[spoiled * V + (b.targets[spoiled] + 1) % V] = 400.0f;
  lt_task_score_logits(&one_off, logits, b.targets, b.B, b.T, V);
  assert_int_equal(one_off.correct, 40 * 8 - 1);
  assert_int_equal(one_off.sequences_correct, 39);
  assert_true(lt_task_exact_match(one_off) == 39.0 / 40);
  free(logits);
  free_batch(&b);
}

// --- errors ---

static void test_sizes_that_do_not_fit_are_config_errors(void **state) {
  (void)state;
  lt_task small_vocab = mqar(16, 64, 8, 1);
  EXPECT_ERROR(lt_task_check(&small_vocab), LT_ERR_CONFIG, "data.task_vocab (16)",
               "data.task_pairs (8)", "at least 18");
  lt_task short_seq = mqar(64, 30, 8, 1);
  EXPECT_ERROR(lt_task_check(&short_seq), LT_ERR_CONFIG, "train.seq_len (30)", "at least 32");
  lt_task passkey = lt_task_defaults(LT_TASK_PASSKEY, 64, 10, 1);
  EXPECT_ERROR(lt_task_check(&passkey), LT_ERR_CONFIG, "passkey", "train.seq_len (10)",
               "at least 11");
  lt_task tiny_vocab = lt_task_defaults(LT_TASK_PASSKEY, 12, 100, 1);
  EXPECT_ERROR(lt_task_check(&tiny_vocab), LT_ERR_CONFIG, "data.task_vocab (12)");
  lt_task deep = lt_task_defaults(LT_TASK_PASSKEY, 64, 100, 1);
  deep.depth_min = 0.8, deep.depth_max = 0.2;
  EXPECT_ERROR(lt_task_check(&deep), LT_ERR_CONFIG, "data.task_depth_min (0.8)",
               "data.task_depth_max (0.2)");
  lt_task_kind kind;
  EXPECT_ERROR(lt_task_kind_from_name("needle", &kind), LT_ERR_USAGE, "'needle'", "mqar",
               "passkey");
  assert_ok(lt_task_kind_from_name("passkey", &kind));
  assert_int_equal(kind, LT_TASK_PASSKEY);
}

// --- learning ---

// A 2-layer softmax-attention model trained on fresh MQAR batches through lt_model and the
// optimizer: recall needs an induction-style circuit (find the earlier key, copy the token after
// it), which attention learns; chance is 1 in 16 values.
static void test_softmax_attention_learns_mqar_far_above_chance(void **state) {
  (void)state;
  const int V = 32, T = 32, n_pairs = 4, B = 32, steps = 300;
  const double peak_lr = 3e-3;
  lt_task task = mqar(V, T, n_pairs, 2024);
  lt_ctx ctx;
  // One thread: matrices this small gain nothing from a second, which only spins and waits.
  assert_ok(lt_ctx_init(&ctx, LT_CPU, 1));
  lt_model_config cfg = {.d_model = 64,
                         .n_layers = 2,
                         .n_heads = 4,
                         .ffn_dim = 128,
                         .vocab_size = V,
                         .max_seq_len = T,
                         .rope_theta = 10000,
                         .norm_eps = 1e-5,
                         .init = LT_INIT_SCALED,
                         .init_std = 0.02};
  lt_model model;
  assert_ok(lt_model_create(&model, &cfg, LT_CPU, NULL));
  assert_ok(lt_params_init(&model.params, 1));
  assert_ok(lt_model_plan(&model, B, T, false));
  lt_train_config tc = {.lr = peak_lr,
                        .beta1 = 0.9,
                        .beta2 = 0.98,
                        .eps = 1e-8,
                        .weight_decay = 0.1,
                        .clip_norm = 1.0};
  lt_optimizer opt;
  assert_ok(lt_optimizer_create(&opt, &model.params, &tc));
  float *logits = malloc(sizeof(float) * B * T * V);
  double accuracy[2];
  for (int step = 0; step <= steps; step++) {
    // Held-out sequences (indices past any used for training) before and after training.
    if (step == 0 || step == steps) {
      task_batch eval = generate(&task, 1000000, B);
      lt_batch batch = as_batch(&eval);
      assert_ok(lt_model_logits(&model, &ctx, &batch, lt_view2(logits, LT_F32, LT_CPU, B * T, V)));
      lt_task_score score = {0};
      lt_task_score_logits(&score, logits, eval.targets, B, T, V);
      accuracy[step == steps] = lt_task_accuracy(score);
      free_batch(&eval);
      if (step == steps) break;
    }
    task_batch train = generate(&task, (int64_t)step * B, B);
    lt_batch batch = as_batch(&train);
    double loss, norm;
    assert_ok(lt_params_zero_grad(&model.params));
    assert_ok(lt_model_forward(&model, &ctx, &batch, true, 1.0f / (B * n_pairs), &loss));
    assert_ok(lt_model_backward(&model, &ctx, &batch));
    const double lr = peak_lr * (step < 30 ? (step + 1) / 30.0 : 1.0);
    assert_ok(lt_optimizer_step(&opt, &ctx, lr, &norm));
    if (step % 50 == 0) printf("step %d loss %.4f\n", step, loss / (B * n_pairs));
    free_batch(&train);
  }
  printf("MQAR accuracy %.3f before training, %.3f after %d steps (chance 1/16 = 0.0625)\n",
         accuracy[0], accuracy[1], steps);
  assert_true(accuracy[0] < 0.15);
  assert_true(accuracy[1] > 0.5);
  free(logits);
  lt_optimizer_destroy(&opt);
  lt_model_destroy(&model);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sequences_depend_only_on_the_seed_and_their_index),
      cmocka_unit_test(test_mqar_answers_every_key_once_with_its_value),
      cmocka_unit_test(test_mqar_queries_come_mostly_soon_after_the_pairs),
      cmocka_unit_test(test_passkey_answer_is_the_key_hidden_at_the_chosen_depth),
      cmocka_unit_test(test_passkey_depth_is_drawn_from_its_range_and_buckets_split_it),
      cmocka_unit_test(test_passkey_filler_repeats_one_sentence_the_same_for_every_seed),
      cmocka_unit_test(test_accuracy_of_perfect_random_and_wrong_predictors),
      cmocka_unit_test(test_sizes_that_do_not_fit_are_config_errors),
      cmocka_unit_test(test_softmax_attention_learns_mqar_far_above_chance),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
