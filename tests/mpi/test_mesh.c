// Run under mpirun with 8 ranks: the mesh's coordinates and groups, and every collective against
// values each rank can predict.
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "parallel/mesh.h"
#include "testing.h"

static lt_world world;
static lt_mesh mesh;

static int setup(void **state) {
  (void)state;
  lt_parallel_config cfg = {.dp = 2, .pp = 1, .cp = 2, .tp = 2};
  if (lt_mesh_create(&mesh, &world, &cfg) != LT_OK) {
    fprintf(stderr, "%s\n", lt_error_message());
    return -1;
  }
  return 0;
}

static void test_tp_is_the_innermost_axis(void **state) {
  (void)state;
  assert_int_equal(world.size, 8);
  // rank = ((dp * pp + pp_i) * cp + cp_i) * tp + tp_i
  assert_int_equal(mesh.coord[LT_AXIS_TP], world.rank % 2);
  assert_int_equal(mesh.coord[LT_AXIS_CP], world.rank / 2 % 2);
  assert_int_equal(mesh.coord[LT_AXIS_DP], world.rank / 4);
  assert_int_equal(lt_mesh_rank_of(&mesh, mesh.coord), world.rank);
  assert_int_equal(mesh.axis[LT_AXIS_TP].size, 2);
  assert_int_equal(mesh.axis[LT_AXIS_PP].size, 1);
  assert_int_equal(mesh.dp_cp.size, 4);
  assert_int_equal(mesh.axis[LT_AXIS_TP].rank, mesh.coord[LT_AXIS_TP]);
}

static void test_all_reduce_sums_over_the_group_only(void **state) {
  (void)state;
  float x[3] = {(float)world.rank, 1.0f, (float)mesh.coord[LT_AXIS_CP]};
  assert_ok(lt_all_reduce_sum(&mesh.axis[LT_AXIS_TP], lt_view1(x, LT_F32, LT_CPU, 3)));
  // The two tp ranks are world.rank and world.rank ^ 1.
  assert_true(x[0] == (float)(world.rank + (world.rank ^ 1)));
  assert_true(x[1] == 2.0f);
  assert_true(x[2] == 2.0f * (float)mesh.coord[LT_AXIS_CP]);
  float m = (float)world.rank;
  assert_ok(lt_all_reduce_max(&mesh.dp_cp, lt_view1(&m, LT_F32, LT_CPU, 1)));
  assert_true(m == (float)(4 + 2 + mesh.coord[LT_AXIS_TP])); // the dp 1, cp 1 rank of my tp column
}

static void test_all_gather_and_reduce_scatter_follow_rank_order(void **state) {
  (void)state;
  const lt_group *g = &mesh.dp_cp;
  int32_t mine[2] = {world.rank, -world.rank}, all[8];
  assert_ok(lt_all_gather(g, lt_view1(all, LT_I32, LT_CPU, 8), lt_view1(mine, LT_I32, LT_CPU, 2)));
  for (int r = 0; r < 4; r++) {
    int coord[LT_N_AXES] = {r / 2, 0, r % 2, mesh.coord[LT_AXIS_TP]};
    assert_int_equal(all[2 * r], lt_mesh_rank_of(&mesh, coord));
    assert_int_equal(all[2 * r + 1], -lt_mesh_rank_of(&mesh, coord));
  }
  float in[8], out[2];
  for (int i = 0; i < 8; i++) in[i] = (float)(i * 10 + g->rank);
  assert_ok(
      lt_reduce_scatter_sum(g, lt_view1(out, LT_F32, LT_CPU, 2), lt_view1(in, LT_F32, LT_CPU, 8)));
  for (int i = 0; i < 2; i++)
    assert_true(out[i] == (float)(4 * (2 * g->rank + i) * 10 + 0 + 1 + 2 + 3));
}

static void test_ring_exchange_passes_to_the_next_rank(void **state) {
  (void)state;
  const lt_group *g = &mesh.dp_cp;
  float send = (float)g->rank, recv = -1.0f;
  lt_request request;
  assert_ok(lt_start_sendrecv(g, lt_view1(&send, LT_F32, LT_CPU, 1), (g->rank + 1) % g->size,
                              lt_view1(&recv, LT_F32, LT_CPU, 1), (g->rank + g->size - 1) % g->size,
                              &request));
  assert_ok(lt_wait(&request));
  assert_true(recv == (float)((g->rank + g->size - 1) % g->size));
}

// pp 4 x tp 2: each tp column is a pipeline; its stages 0 and 3 share the embed group, the
// stages between have none.
static void test_embed_group_joins_the_first_and_last_stage_of_each_pipeline(void **state) {
  (void)state;
  lt_mesh pipes;
  lt_parallel_config cfg = {.dp = 1, .pp = 4, .cp = 1, .tp = 2};
  assert_ok(lt_mesh_create(&pipes, &world, &cfg));
  const int stage = pipes.coord[LT_AXIS_PP], tp = pipes.coord[LT_AXIS_TP];
  const bool member = stage == 0 || stage == 3;
  assert_int_equal(pipes.embed.size, member ? 2 : 1);
  float r = (float)world.rank;
  assert_ok(lt_all_reduce_sum(&pipes.embed, lt_view1(&r, LT_F32, LT_CPU, 1)));
  // World ranks of stages 0 and 3 of tp column c: c and 6 + c.
  assert_true(r == (member ? (float)(tp + 6 + tp) : (float)world.rank));
  if (member) assert_int_equal(pipes.embed.rank, stage == 0 ? 0 : 1);
  lt_mesh_destroy(&pipes);
}

static void test_sizes_that_do_not_match_the_world_are_a_config_error(void **state) {
  (void)state;
  lt_mesh bad;
  lt_parallel_config cfg = {.dp = 2, .pp = 2, .cp = 1, .tp = 1};
  EXPECT_ERROR(lt_mesh_create(&bad, &world, &cfg), LT_ERR_CONFIG, "parallel.dp * pp * cp * tp",
               "= 4", "8 ranks were started");
}

int main(int argc, char **argv) {
  if (lt_world_init(&world, &argc, &argv) != LT_OK || !world.mpi) {
    fprintf(stderr, "test_mesh must run under mpirun -np 8\n");
    return 1;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tp_is_the_innermost_axis),
      cmocka_unit_test(test_all_reduce_sums_over_the_group_only),
      cmocka_unit_test(test_all_gather_and_reduce_scatter_follow_rank_order),
      cmocka_unit_test(test_ring_exchange_passes_to_the_next_rank),
      cmocka_unit_test(test_embed_group_joins_the_first_and_last_stage_of_each_pipeline),
      cmocka_unit_test(test_sizes_that_do_not_match_the_world_are_a_config_error),
  };
  int failures = cmocka_run_group_tests(tests, setup, NULL);
  lt_mesh_destroy(&mesh);
  lt_world_finalize(&world);
  return failures;
}
