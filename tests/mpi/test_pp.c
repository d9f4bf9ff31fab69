// Run under mpirun with 2 ranks and again with 4: a model split into that many pipeline stages
// and run with the 1F1B schedule (P + 2 micro-batches: 4 on 2 stages, 6 on 4) computes what the
// whole model computes in one process: the same loss, auxiliary losses and gradient of every
// parameter of every stage, the same validation loss, 20 optimizer steps of the same loss curve,
// and one checkpoint. Every rank builds the whole model too, as the reference. On 4 stages the
// middle stages have both neighbours, and a tied embedding's copies sit on stages 0 and 3 only.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "optim/adamw.h"
#include "pipeline_case.h"
#include "testing.h"
#include "train/checkpoint.h"

static lt_world world;
static lt_ctx ctx;

// Two layers a stage, P + 2 micro-batches of 2 x 16 tokens.
static lt_pp_case case_of(const char *attention, bool tie) {
  return (lt_pp_case){.attention = attention,
                      .n_layers = 2 * world.size,
                      .tie = tie,
                      .micro_batches = world.size + 2,
                      .B = 2,
                      .T = 16};
}

// A light first and last stage: 1,3 on 2 stages, 1,3,3,1 on 4.
static const char *uneven_split(void) {
  return world.size == 2 ? "1,3" : "1,3,3,1";
}

static void test_softmax_model_untied_equals_the_single_process(void **state) {
  (void)state;
  const lt_pp_case c = case_of("softmax", false);
  lt_test_pp_expect_same_step(&world, &ctx, &c);
}

static void test_softmax_model_tied_equals_the_single_process(void **state) {
  (void)state;
  const lt_pp_case c = case_of("softmax", true);
  lt_test_pp_expect_same_step(&world, &ctx, &c);
}

static void test_hybrid_lightning_softmax_model_untied_equals_the_single_process(void **state) {
  (void)state;
  const lt_pp_case c = case_of("lightning,softmax", false);
  lt_test_pp_expect_same_step(&world, &ctx, &c);
}

static void test_hybrid_lightning_softmax_model_tied_equals_the_single_process(void **state) {
  (void)state;
  const lt_pp_case c = case_of("lightning,softmax", true);
  lt_test_pp_expect_same_step(&world, &ctx, &c);
}

static void test_recomputation_keeps_the_pipeline_equal_to_the_single_process(void **state) {
  (void)state;
  lt_pp_case c = case_of("lightning,softmax", true);
  c.recompute = true;
  lt_test_pp_expect_same_step(&world, &ctx, &c);
}

// Routers keep per-micro-batch state (MoH's head weights, MoE's dispatch plan) that the forwards
// of other micro-batches in flight must not overwrite; documents restart inside sequences.
static void test_routed_layers_with_documents_equal_the_single_process(void **state) {
  (void)state;
  lt_pp_case c = case_of("moh,softmax", true);
  c.ffn = "moe,swiglu", c.documents = true;
  lt_test_pp_expect_same_step(&world, &ctx, &c);
}

static void test_uneven_split_from_pp_layers_equals_the_single_process(void **state) {
  (void)state;
  lt_pp_case c = case_of("lightning*3,softmax", false);
  c.pp_layers = uneven_split();
  lt_test_pp_expect_same_step(&world, &ctx, &c);
}

static void test_fewer_micro_batches_than_stages_equal_the_single_process(void **state) {
  (void)state;
  lt_pp_case c = case_of("lightning,softmax", true);
  c.micro_batches = world.size / 2;
  lt_test_pp_expect_same_step(&world, &ctx, &c);
}

static void test_stages_hold_their_layers_the_embedding_first_and_the_head_last(void **state) {
  (void)state;
  lt_mesh mesh;
  lt_test_pp_mesh(&mesh, &world, world.size, uneven_split());
  const int stage = mesh.coord[LT_AXIS_PP], last = world.size - 1;
  for (int tie = 0; tie < 2; tie++) {
    lt_pp_case c = case_of("softmax", tie);
    c.micro_batches = 1;
    lt_model m;
    lt_test_pp_model(&m, &c, &mesh);
    // Where each stage begins, for 1,3 and for 1,3,3,1.
    static const int two[] = {0, 1, 4}, four[] = {0, 1, 4, 7, 8};
    const int *begins = world.size == 2 ? two : four, begin = begins[stage];
    assert_int_equal(m.layer_begin, begin);
    assert_int_equal(m.layer_end, begins[stage + 1]);
    char name[64];
    snprintf(name, sizeof name, "layers.%d.attn.wq", begin);
    assert_non_null(lt_params_find(&m.params, name));
    snprintf(name, sizeof name, "layers.%d.ffn.w_down", m.layer_end);
    assert_null(lt_params_find(&m.params, name));
    assert_true((lt_params_find(&m.params, "final_norm") != NULL) == (stage == last));
    assert_true((lt_params_find(&m.params, "lm_head") != NULL) == (stage == last && !tie));
    // Tied, the last stage holds a copy of the embedding, marked as such.
    const lt_param_info *embed = lt_params_find(&m.params, "embed");
    assert_true((embed != NULL) == (stage == 0 || (tie && stage == last)));
    if (embed) assert_true(embed->spec.pipeline_copy == (stage != 0));
    lt_model_destroy(&m);
  }
  lt_mesh_destroy(&mesh);
}

static void test_schedule_is_one_forward_one_backward_after_the_warm_up(void **state) {
  (void)state;
  lt_pp_case c = case_of("softmax", false);
  c.B = 1, c.T = 8;
  // Stage s runs P - 1 - s warm-up forwards, alternates, and ends with the backwards it owes.
  static const char *const two[] = {"F0 F1 B0 F2 B1 F3 B2 B3", "F0 B0 F1 B1 F2 B2 F3 B3"};
  static const char *const four[] = {
      "F0 F1 F2 F3 B0 F4 B1 F5 B2 B3 B4 B5",
      "F0 F1 F2 B0 F3 B1 F4 B2 F5 B3 B4 B5",
      "F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 B5",
      "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5",
  };
  lt_test_pp_expect_order(&world, &ctx, &c, world.size == 2 ? two : four);
}

static void test_schedule_with_fewer_micro_batches_than_stages(void **state) {
  (void)state;
  lt_pp_case c = case_of("softmax", false);
  c.B = 1, c.T = 8, c.micro_batches = world.size / 2;
  // On 4 stages with 2 micro-batches only the last alternates: the others run out of forwards.
  static const char *const two[] = {"F0 B0", "F0 B0"};
  static const char *const four[] = {"F0 F1 B0 B1", "F0 F1 B0 B1", "F0 F1 B0 B1", "F0 B0 F1 B1"};
  lt_test_pp_expect_order(&world, &ctx, &c, world.size == 2 ? two : four);
}

static void test_validation_loss_through_the_pipeline_equals_the_single_process(void **state) {
  (void)state;
  lt_mesh mesh;
  lt_test_pp_mesh(&mesh, &world, world.size, NULL);
  const lt_pp_case c = case_of("lightning,softmax", false);
  lt_model stage, whole;
  lt_test_pp_model(&stage, &c, &mesh);
  lt_test_pp_model(&whole, &c, NULL);
  lt_pp_data d;
  lt_test_pp_data_make(&d, &c, 5);
  lt_micro_batches micro = lt_test_pp_micro_batches(&d);
  double loss, ref_loss = 0.0;
  assert_ok(lt_pipeline_eval(&stage, &ctx, &micro, &loss));
  for (int64_t m = 0; m < d.count; m++) {
    double micro_loss;
    assert_ok(micro.load(&d, m, &d.batch));
    assert_ok(lt_model_forward(&whole, &ctx, &d.batch, false, 0.0f, &micro_loss));
    ref_loss += micro_loss;
  }
  printf("validation loss sum %.9g vs %.9g\n", loss, ref_loss);
  assert_true(loss == ref_loss); // the last stage's forwards, on the same bits
  lt_test_pp_data_free(&d);
  lt_model_destroy(&stage);
  lt_model_destroy(&whole);
  lt_mesh_destroy(&mesh);
}

static void test_twenty_steps_untied_follow_the_single_process_bit_for_bit(void **state) {
  (void)state;
  const lt_pp_case c = case_of("lightning,softmax", false);
  lt_test_pp_expect_same_curve(&world, &ctx, &c, 20);
}

static void test_twenty_steps_tied_follow_the_single_process_loss_curve(void **state) {
  (void)state;
  const lt_pp_case c = case_of("lightning,softmax", true);
  lt_test_pp_expect_same_curve(&world, &ctx, &c, 20);
}

static void barrier(const lt_group *g) {
  float token = 0.0f;
  assert_ok(lt_all_reduce_sum(g, lt_view1(&token, LT_F32, LT_CPU, 1)));
}

// Writes checkpoint step 1 under `root` (the same on every stage): each stage the parameters it
// holds as its own shard, shard 0 first to create the folder, then rank 0 commits.
static void write_checkpoint(const lt_model *m, const lt_group *pp, const char *root) {
  lt_checkpoint_writer w;
  if (pp->rank == 0) assert_ok(lt_checkpoint_begin(&w, root, 1, 0, pp->size));
  barrier(pp);
  if (pp->rank != 0) assert_ok(lt_checkpoint_begin(&w, root, 1, pp->rank, pp->size));
  assert_ok(lt_checkpoint_write_params(&w, &m->params, true));
  if (pp->rank != 0) assert_ok(lt_checkpoint_finish_shard(&w));
  barrier(pp);
  const lt_checkpoint_meta meta = {.step = 1};
  if (pp->rank == 0) assert_ok(lt_checkpoint_commit(&w, &meta));
  barrier(pp);
}

// The stages' shards make one checkpoint (the tied copy left to the first stage): one process
// loads it whole, and a pipeline loads back exactly the weights and AdamW moments it wrote.
static void test_stages_write_one_checkpoint_that_loads_whole_and_back(void **state) {
  (void)state;
  lt_mesh mesh;
  lt_test_pp_mesh(&mesh, &world, world.size, NULL);
  const lt_group *pp = &mesh.axis[LT_AXIS_PP];
  lt_pp_case c = case_of("lightning,softmax", true);
  c.B = 1, c.T = 8;
  lt_model m, whole, again;
  lt_test_pp_model(&m, &c, &mesh);
  const lt_train_config tc = {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8};
  lt_optimizer opt;
  assert_ok(lt_optimizer_create(&opt, &m.params, &tc));
  lt_pp_data d;
  lt_test_pp_data_make(&d, &c, 0);
  double loss, aux, norm;
  lt_test_pp_step(&m, &ctx, &d, &loss, &aux, NULL);
  assert_ok(lt_optimizer_step(&opt, &ctx, tc.lr, &norm));
  char root[256] = "";
  if (pp->rank == 0) snprintf(root, sizeof root, "%s/checkpoints", lt_test_tmpdir());
  assert_ok(lt_broadcast(pp, lt_view1(root, LT_U8, LT_CPU, sizeof root), 0));
  write_checkpoint(&m, pp, root);
  char dir[300];
  snprintf(dir, sizeof dir, "%s/step_00000001", root);
  lt_test_pp_model(&whole, &c, NULL);
  assert_ok(lt_checkpoint_load_weights(dir, &whole.params));
  assert_true(lt_test_pp_max_diff(&m, &whole, false) == 0.0);
  lt_test_pp_model(&again, &c, &mesh);
  lt_checkpoint ck;
  assert_ok(lt_checkpoint_open(&ck, dir));
  assert_ok(lt_checkpoint_read_params(&ck, &again.params, true));
  lt_checkpoint_close(&ck);
  const size_t bytes = sizeof(float) * m.params.numel;
  assert_memory_equal(again.params.master, m.params.master, bytes);
  assert_memory_equal(again.params.adam_m, m.params.adam_m, bytes);
  assert_memory_equal(again.params.adam_v, m.params.adam_v, bytes);
  lt_test_pp_data_free(&d);
  lt_optimizer_destroy(&opt);
  lt_model_destroy(&m);
  lt_model_destroy(&whole);
  lt_model_destroy(&again);
  lt_mesh_destroy(&mesh);
}

static void test_layers_the_stages_cannot_share_evenly_are_a_config_error(void **state) {
  (void)state;
  lt_mesh mesh;
  lt_test_pp_mesh(&mesh, &world, world.size, NULL);
  lt_pp_case c = case_of("softmax", false);
  c.n_layers = world.size + 1;
  lt_model_config cfg = lt_test_pp_model_config(&c);
  char divide[64];
  snprintf(divide, sizeof divide, "parallel.pp (%d) does not divide model.n_layers (%d)",
           world.size, c.n_layers);
  lt_model m;
  EXPECT_ERROR(lt_model_create(&m, &cfg, LT_CPU, &mesh), LT_ERR_CONFIG, divide,
               "parallel.pp_layers", world.size == 2 ? "\"2,1\"" : "\"2,1,1,1\"");
  lt_model_destroy(&m);
  lt_mesh_destroy(&mesh);
}

int main(int argc, char **argv) {
  if (lt_world_init(&world, &argc, &argv) != LT_OK || !world.mpi ||
      (world.size != 2 && world.size != 4)) {
    fprintf(stderr, "test_pp must run under mpirun -np 2 or -np 4\n");
    return 1;
  }
  if (lt_ctx_init(&ctx, LT_CPU, 1) != LT_OK) return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_softmax_model_untied_equals_the_single_process),
      cmocka_unit_test(test_softmax_model_tied_equals_the_single_process),
      cmocka_unit_test(test_hybrid_lightning_softmax_model_untied_equals_the_single_process),
      cmocka_unit_test(test_hybrid_lightning_softmax_model_tied_equals_the_single_process),
      cmocka_unit_test(test_recomputation_keeps_the_pipeline_equal_to_the_single_process),
      cmocka_unit_test(test_routed_layers_with_documents_equal_the_single_process),
      cmocka_unit_test(test_uneven_split_from_pp_layers_equals_the_single_process),
      cmocka_unit_test(test_fewer_micro_batches_than_stages_equal_the_single_process),
      cmocka_unit_test(test_stages_hold_their_layers_the_embedding_first_and_the_head_last),
      cmocka_unit_test(test_schedule_is_one_forward_one_backward_after_the_warm_up),
      cmocka_unit_test(test_schedule_with_fewer_micro_batches_than_stages),
      cmocka_unit_test(test_validation_loss_through_the_pipeline_equals_the_single_process),
      cmocka_unit_test(test_twenty_steps_untied_follow_the_single_process_bit_for_bit),
      cmocka_unit_test(test_twenty_steps_tied_follow_the_single_process_loss_curve),
      cmocka_unit_test(test_stages_write_one_checkpoint_that_loads_whole_and_back),
      cmocka_unit_test(test_layers_the_stages_cannot_share_evenly_are_a_config_error),
  };
  int failures = cmocka_run_group_tests(tests, NULL, NULL);
  lt_ctx_destroy(&ctx);
  lt_world_finalize(&world);
  return failures;
}
