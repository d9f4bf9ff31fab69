// Run under mpirun with 4 ranks: four pipeline stages, where the middle stages have both
// neighbours and a tied embedding's two copies sit on stages 0 and 3, compute what the whole
// model computes in one process (loss, auxiliary losses, every gradient, 20 steps of the loss
// curve), and run the 1F1B order with at most 4 - stage micro-batches in flight.
#include <stdio.h>

#include "pipeline_case.h"
#include "testing.h"

enum { STAGES = 4 };

static lt_world world;
static lt_ctx ctx;

static void test_softmax_model_untied_equals_the_single_process(void **state) {
  (void)state;
  const lt_pp_case c = {.n_layers = 4, .micro_batches = 6, .B = 2, .T = 16};
  lt_test_pp_expect_same_step(&world, &ctx, &c);
}

static void test_softmax_model_tied_equals_the_single_process(void **state) {
  (void)state;
  const lt_pp_case c = {.n_layers = 8, .tie = true, .micro_batches = 6, .B = 2, .T = 16};
  lt_test_pp_expect_same_step(&world, &ctx, &c);
}

static void test_hybrid_model_untied_with_an_uneven_split_equals_the_single_process(void **state) {
  (void)state;
  const lt_pp_case c = {.attention = "lightning*3,softmax",
                        .n_layers = 8,
                        .micro_batches = 6,
                        .B = 2,
                        .T = 16,
                        .pp_layers = "1,3,3,1"};
  lt_test_pp_expect_same_step(&world, &ctx, &c);
}

static void test_hybrid_model_tied_with_recomputation_equals_the_single_process(void **state) {
  (void)state;
  const lt_pp_case c = {.attention = "lightning,softmax",
                        .n_layers = 8,
                        .tie = true,
                        .recompute = true,
                        .micro_batches = 5,
                        .B = 2,
                        .T = 16};
  lt_test_pp_expect_same_step(&world, &ctx, &c);
}

static void test_routed_layers_with_documents_equal_the_single_process(void **state) {
  (void)state;
  const lt_pp_case c = {.attention = "moh,softmax",
                        .ffn = "moe,swiglu",
                        .n_layers = 4,
                        .tie = true,
                        .documents = true,
                        .micro_batches = 6,
                        .B = 2,
                        .T = 16};
  lt_test_pp_expect_same_step(&world, &ctx, &c);
}

static void test_fewer_micro_batches_than_stages_equal_the_single_process(void **state) {
  (void)state;
  const lt_pp_case c = {.attention = "lightning,softmax",
                        .n_layers = 4,
                        .tie = true,
                        .micro_batches = 2,
                        .B = 2,
                        .T = 16};
  lt_test_pp_expect_same_step(&world, &ctx, &c);
}

static void test_schedule_is_one_forward_one_backward_after_the_warm_up(void **state) {
  (void)state;
  const lt_pp_case c = {.n_layers = 4, .micro_batches = 6, .B = 1, .T = 8};
  // Stage s runs 3 - s warm-up forwards, alternates, and ends with the backwards it owes.
  static const char *const expected[STAGES] = {
      "F0 F1 F2 F3 B0 F4 B1 F5 B2 B3 B4 B5",
      "F0 F1 F2 B0 F3 B1 F4 B2 F5 B3 B4 B5",
      "F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 B5",
      "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5",
  };
  lt_test_pp_expect_order(&world, &ctx, &c, expected);
}

static void test_schedule_with_fewer_micro_batches_than_stages(void **state) {
  (void)state;
  const lt_pp_case c = {.n_layers = 4, .micro_batches = 2, .B = 1, .T = 8};
  // Only the last stage has a steady part long enough to show: the others run out of forwards.
  static const char *const expected[STAGES] = {"F0 F1 B0 B1", "F0 F1 B0 B1", "F0 F1 B0 B1",
                                               "F0 B0 F1 B1"};
  lt_test_pp_expect_order(&world, &ctx, &c, expected);
}

static void test_twenty_steps_follow_the_single_process_loss_curve(void **state) {
  (void)state;
  const lt_pp_case c = {.attention = "lightning,softmax",
                        .n_layers = 4,
                        .tie = true,
                        .micro_batches = 4,
                        .B = 2,
                        .T = 16};
  lt_test_pp_expect_same_curve(&world, &ctx, &c, 20);
}

int main(int argc, char **argv) {
  if (lt_world_init(&world, &argc, &argv) != LT_OK || !world.mpi || world.size != STAGES) {
    fprintf(stderr, "test_pp4 must run under mpirun -np %d\n", STAGES);
    return 1;
  }
  if (lt_ctx_init(&ctx, LT_CPU, 1) != LT_OK) return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_softmax_model_untied_equals_the_single_process),
      cmocka_unit_test(test_softmax_model_tied_equals_the_single_process),
      cmocka_unit_test(test_hybrid_model_untied_with_an_uneven_split_equals_the_single_process),
      cmocka_unit_test(test_hybrid_model_tied_with_recomputation_equals_the_single_process),
      cmocka_unit_test(test_routed_layers_with_documents_equal_the_single_process),
      cmocka_unit_test(test_fewer_micro_batches_than_stages_equal_the_single_process),
      cmocka_unit_test(test_schedule_is_one_forward_one_backward_after_the_warm_up),
      cmocka_unit_test(test_schedule_with_fewer_micro_batches_than_stages),
      cmocka_unit_test(test_twenty_steps_follow_the_single_process_loss_curve),
  };
  int failures = cmocka_run_group_tests(tests, NULL, NULL);
  lt_ctx_destroy(&ctx);
  lt_world_finalize(&world);
  return failures;
}
