// The pipeline's plan, without any process: the 1F1B order of every stage, the micro-batches it
// keeps in flight, and its transfers, which are simulated across all stages with the strictest
// semantics (a send completes only when its receive is posted) to show that every one is matched
// by the right receive and that no stage waits forever. Also the stage split of the layers.
#include <stdio.h>
#include <string.h>

#include "core/config.h"
#include "parallel/pipeline.h"
#include "testing.h"

enum { MAX_STAGES = 8, MAX_MICRO = 12, MAX_STEPS = 2 * MAX_MICRO, MAX_EXCHANGES = 2 * MAX_STEPS };

static void order_of(const lt_pipeline_step *steps, int n, char *out, size_t cap) {
  out[0] = '\0';
  for (int i = 0; i < n; i++)
    snprintf(out + strlen(out), cap - strlen(out), "%s%c%d", i ? " " : "",
             steps[i].action.op == LT_PP_FORWARD ? 'F' : 'B', steps[i].action.micro);
}

static void expect_orders(int stages, int n_micro, const char *const *expected) {
  for (int s = 0; s < stages; s++) {
    lt_pipeline_step steps[MAX_STEPS];
    char order[256];
    const int n = lt_pipeline_plan(s, stages, n_micro, true, steps);
    assert_int_equal(n, 2 * n_micro);
    order_of(steps, n, order, sizeof order);
    assert_string_equal(order, expected[s]);
  }
}

static void test_1f1b_order_of_four_stages_is_warm_up_alternation_and_cool_down(void **state) {
  (void)state;
  static const char *const six[] = {
      "F0 F1 F2 F3 B0 F4 B1 F5 B2 B3 B4 B5",
      "F0 F1 F2 B0 F3 B1 F4 B2 F5 B3 B4 B5",
      "F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 B5",
      "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5",
  };
  expect_orders(4, 6, six);
  static const char *const two[] = {"F0 F1 B0 B1", "F0 F1 B0 B1", "F0 F1 B0 B1", "F0 B0 F1 B1"};
  expect_orders(4, 2, two);
  static const char *const one_stage[] = {"F0 B0 F1 B1 F2 B2"};
  expect_orders(1, 3, one_stage);
}

// Each micro-batch's forward once, then its backward once; both in micro-batch order; and at most
// lt_pipeline_slots micro-batches between their forward and their backward, that many reached.
static void test_every_micro_batch_runs_forward_then_backward_within_the_slots(void **state) {
  (void)state;
  for (int stages = 1; stages <= MAX_STAGES; stages++)
    for (int n_micro = 1; n_micro <= MAX_MICRO; n_micro++)
      for (int s = 0; s < stages; s++) {
        lt_pipeline_step steps[MAX_STEPS];
        const int n = lt_pipeline_plan(s, stages, n_micro, true, steps);
        int next_forward = 0, next_backward = 0, in_flight = 0, most = 0;
        for (int i = 0; i < n; i++) {
          const lt_pipeline_action a = steps[i].action;
          if (a.op == LT_PP_FORWARD) {
            assert_int_equal(a.micro, next_forward++);
            if (++in_flight > most) most = in_flight;
          } else {
            assert_int_equal(a.micro, next_backward++);
            assert_true(a.micro < next_forward);
            in_flight--;
          }
        }
        assert_int_equal(next_forward, n_micro);
        assert_int_equal(next_backward, n_micro);
        assert_int_equal(most, lt_pipeline_slots(s, stages, n_micro, true));
        assert_true(most <= stages - s);
      }
}

static void test_forwards_alone_keep_one_micro_batch_and_pair_no_transfers(void **state) {
  (void)state;
  lt_pipeline_step steps[MAX_STEPS];
  const int n = lt_pipeline_plan(1, 3, 4, false, steps);
  char order[64];
  order_of(steps, n, order, sizeof order);
  assert_string_equal(order, "F0 F1 F2 F3");
  assert_int_equal(lt_pipeline_slots(1, 3, 4, false), 1);
  for (int i = 0; i < n; i++) assert_true(steps[i].recv_first && steps[i].send_after);
  for (int i = 0; i < n; i++) assert_false(steps[i].recv_next);
}

// --- the transfers of all stages, simulated ---

typedef struct transfer {
  bool send;
  int peer;
  char kind; // 'A' an activation (forward), 'G' a gradient (backward)
  int micro;
  bool done;
} transfer;

typedef struct exchange {
  transfer t[2];
  int n;
} exchange;

// What a step takes in, and gives out, as transfers of stage `s`.
static transfer input_of(lt_pipeline_action a, int s) {
  const bool forward = a.op == LT_PP_FORWARD;
  return (transfer){false, forward ? s - 1 : s + 1, forward ? 'A' : 'G', a.micro, false};
}

static transfer output_of(lt_pipeline_action a, int s) {
  const bool forward = a.op == LT_PP_FORWARD;
  return (transfer){true, forward ? s + 1 : s - 1, forward ? 'A' : 'G', a.micro, false};
}

// The exchanges stage s posts and waits for, in order, as the executor runs its plan.
static int exchanges_of(int s, int stages, const lt_pipeline_step *steps, int n, exchange *out) {
  int k = 0;
  for (int i = 0; i < n; i++) {
    const lt_pipeline_action a = steps[i].action;
    if (steps[i].recv_first) out[k++] = (exchange){{input_of(a, s)}, 1};
    exchange e = {.n = 0};
    if (steps[i].send_after) e.t[e.n++] = output_of(a, s);
    if (steps[i].recv_next) e.t[e.n++] = input_of(steps[i + 1].action, s);
    if (e.n) out[k++] = e;
  }
  for (int j = 0; j < k; j++)
    for (int t = 0; t < out[j].n; t++)
      assert_true(out[j].t[t].peer >= 0 && out[j].t[t].peer < stages);
  return k;
}

// MPI matches messages between two ranks in the order they were posted: the k-th send from s to p
// must carry what the k-th receive on p from s expects.
static void expect_matching_sequences(exchange ex[][MAX_EXCHANGES], const int *count, int stages) {
  for (int s = 0; s < stages; s++)
    for (int p = 0; p < stages; p++) {
      transfer sent[MAX_EXCHANGES], received[MAX_EXCHANGES];
      int n_sent = 0, n_received = 0;
      for (int j = 0; j < count[s]; j++)
        for (int t = 0; t < ex[s][j].n; t++)
          if (ex[s][j].t[t].send && ex[s][j].t[t].peer == p) sent[n_sent++] = ex[s][j].t[t];
      for (int j = 0; j < count[p]; j++)
        for (int t = 0; t < ex[p][j].n; t++)
          if (!ex[p][j].t[t].send && ex[p][j].t[t].peer == s)
            received[n_received++] = ex[p][j].t[t];
      assert_int_equal(n_sent, n_received);
      for (int k = 0; k < n_sent; k++) {
        assert_int_equal(sent[k].kind, received[k].kind);
        assert_int_equal(sent[k].micro, received[k].micro);
      }
    }
}

// Every stage posts its current exchange; a transfer completes when its partner is posted in the
// partner's current exchange; a stage moves on when its whole exchange completed. Whether every
// stage gets through all its exchanges.
static bool all_stages_finish(exchange ex[][MAX_EXCHANGES], const int *count, int stages) {
  int at[MAX_STAGES] = {0};
  for (bool moved = true; moved;) {
    moved = false;
    for (int s = 0; s < stages; s++) {
      if (at[s] == count[s]) continue;
      exchange *mine = &ex[s][at[s]];
      for (int t = 0; t < mine->n; t++) {
        transfer *x = &mine->t[t];
        const int p = x->peer;
        if (x->done || at[p] == count[p]) continue;
        exchange *theirs = &ex[p][at[p]];
        for (int u = 0; u < theirs->n; u++) {
          transfer *y = &theirs->t[u];
          if (!y->done && y->send != x->send && y->peer == s && y->kind == x->kind &&
              y->micro == x->micro)
            x->done = y->done = moved = true;
        }
      }
    }
    for (int s = 0; s < stages; s++) {
      if (at[s] == count[s]) continue;
      bool complete = true;
      for (int t = 0; t < ex[s][at[s]].n; t++) complete = complete && ex[s][at[s]].t[t].done;
      if (complete) at[s]++, moved = true;
    }
  }
  for (int s = 0; s < stages; s++)
    if (at[s] != count[s]) {
      printf("%d stages: stage %d stopped at exchange %d of %d\n", stages, s, at[s], count[s]);
      return false;
    }
  return true;
}

static void simulate(int stages, int n_micro, bool train) {
  static exchange ex[MAX_STAGES][MAX_EXCHANGES];
  int count[MAX_STAGES];
  for (int s = 0; s < stages; s++) {
    lt_pipeline_step steps[MAX_STEPS];
    const int n = lt_pipeline_plan(s, stages, n_micro, train, steps);
    count[s] = exchanges_of(s, stages, steps, n, ex[s]);
    // Each input arrives once: alone before its step, or with the step before.
    for (int i = 0; i < n; i++) {
      const bool forward = steps[i].action.op == LT_PP_FORWARD;
      const bool needs = forward ? s > 0 : s < stages - 1;
      const bool arrives = steps[i].recv_first + (i > 0 && steps[i - 1].recv_next);
      assert_int_equal(arrives, needs);
    }
  }
  expect_matching_sequences(ex, count, stages);
  assert_true(all_stages_finish(ex, count, stages));
}

static void test_transfers_meet_their_receives_and_no_stage_waits_forever(void **state) {
  (void)state;
  for (int stages = 1; stages <= MAX_STAGES; stages++)
    for (int n_micro = 1; n_micro <= MAX_MICRO; n_micro++) {
      simulate(stages, n_micro, true);
      simulate(stages, n_micro, false);
    }
}

// The simulation can fail: two neighbours that each send before receiving, one transfer at a
// time, wait on each other forever when a send completes only once its receive is posted.
static void test_the_simulation_catches_neighbours_that_both_send_first(void **state) {
  (void)state;
  static exchange ex[MAX_STAGES][MAX_EXCHANGES];
  ex[0][0] = (exchange){{{true, 1, 'A', 0, false}}, 1};
  ex[0][1] = (exchange){{{false, 1, 'G', 0, false}}, 1};
  ex[1][0] = (exchange){{{true, 0, 'G', 0, false}}, 1};
  ex[1][1] = (exchange){{{false, 0, 'A', 0, false}}, 1};
  assert_false(all_stages_finish(ex, (const int[]){2, 2}, 2));
  // In one exchange each, both directions complete.
  ex[0][0] = (exchange){{{true, 1, 'A', 0, false}, {false, 1, 'G', 0, false}}, 2};
  ex[1][0] = (exchange){{{true, 0, 'G', 0, false}, {false, 0, 'A', 0, false}}, 2};
  assert_true(all_stages_finish(ex, (const int[]){1, 1}, 2));
}

// --- the stage split (parallel.pp_layers) ---

static void expect_split(const char *pp_layers, int stages, int n_layers, const int *begins) {
  for (int s = 0; s < stages; s++) {
    int begin, end;
    assert_ok(lt_config_stage_layers(pp_layers, stages, n_layers, s, &begin, &end));
    assert_int_equal(begin, begins[s]);
    assert_int_equal(end, begins[s + 1]);
  }
}

static void test_layers_split_evenly_or_as_listed(void **state) {
  (void)state;
  expect_split("", 4, 12, (const int[]){0, 3, 6, 9, 12});
  expect_split("", 1, 5, (const int[]){0, 5});
  expect_split("5,6,6,5", 4, 22, (const int[]){0, 5, 11, 17, 22});
  expect_split("1,3", 2, 4, (const int[]){0, 1, 4});
}

static void expect_config_error(const char *const *sets, int n_sets, const char *const *parts) {
  lt_config cfg;
  lt_test_expect_error(lt_config_load_string(&cfg, "", "run.yaml", n_sets, (char *const *)sets),
                       LT_ERR_CONFIG, parts);
}

static void test_stage_split_errors_name_the_key_and_the_fix(void **state) {
  (void)state;
  expect_config_error((const char *const[]){"model.n_layers=12", "parallel.pp=5"}, 2,
                      (const char *const[]){"run.yaml", "parallel.pp (5) does not divide",
                                            "model.n_layers (12)", "parallel.pp_layers",
                                            "\"3,3,2,2,2\"", NULL});
  expect_config_error((const char *const[]){"model.n_layers=2", "parallel.pp=3"}, 2,
                      (const char *const[]){"parallel.pp (3) exceeds model.n_layers (2)",
                                            "lower parallel.pp", NULL});
  expect_config_error(
      (const char *const[]){"model.n_layers=8", "parallel.pp=2", "parallel.pp_layers=3,4"}, 3,
      (const char *const[]){"parallel.pp_layers \"3,4\" lists 2 stages of 7 layers",
                            "model.n_layers 8", "\"4,4\"", NULL});
  expect_config_error(
      (const char *const[]){"model.n_layers=8", "parallel.pp=2", "parallel.pp_layers=8"}, 3,
      (const char *const[]){"lists 1 stage of 8 layers", "parallel.pp is 2", NULL});
  expect_config_error(
      (const char *const[]){"model.n_layers=8", "parallel.pp=2", "parallel.pp_layers=8,0"}, 3,
      (const char *const[]){"parallel.pp_layers \"8,0\"", "each at least 1", NULL});
  expect_config_error(
      (const char *const[]){"model.n_layers=8", "parallel.pp=2", "parallel.pp_layers=4,x"}, 3,
      (const char *const[]){"parallel.pp_layers \"4,x\"", "each stage's layer count", NULL});
  expect_config_error(
      (const char *const[]){"model.n_layers=8", "parallel.pp=2", "parallel.pp_layers=4,4,"}, 3,
      (const char *const[]){"parallel.pp_layers \"4,4,\" ends with a comma", NULL});
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_1f1b_order_of_four_stages_is_warm_up_alternation_and_cool_down),
      cmocka_unit_test(test_every_micro_batch_runs_forward_then_backward_within_the_slots),
      cmocka_unit_test(test_forwards_alone_keep_one_micro_batch_and_pair_no_transfers),
      cmocka_unit_test(test_transfers_meet_their_receives_and_no_stage_waits_forever),
      cmocka_unit_test(test_the_simulation_catches_neighbours_that_both_send_first),
      cmocka_unit_test(test_layers_split_evenly_or_as_listed),
      cmocka_unit_test(test_stage_split_errors_name_the_key_and_the_fix),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
