// The parameter table: sharded parameters hold exactly their slice of the unsharded tensor, so
// every tensor-parallel layout starts from the same model.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/params.h"
#include "optim/adamw.h"
#include "parallel/mesh.h"
#include "testing.h"

// Registers one (rows, cols) normal parameter, whole or as the shard [start, start + length) of
// `dim`, initialises it and returns a copy of its values.
static float *init_param(int64_t rows, int64_t cols, int dim, int64_t start, int64_t length) {
  lt_params params;
  lt_param bind;
  lt_params_begin(&params, NULL);
  lt_param_spec spec = {.init = LT_INIT_NORMAL,
                        .std = 1.0f,
                        .group = LT_GROUP_ATTN,
                        .shard_dim = dim,
                        .shard_start = start,
                        .shard_length = length};
  assert_ok(lt_params_add(&params, &bind, "layers.0.attn.wq", 2, LT_SHAPE(rows, cols), spec));
  assert_ok(lt_params_allocate(&params, LT_CPU));
  assert_ok(lt_params_init(&params, 99));
  const lt_param_info *p = &params.info[0];
  float *copy = malloc(sizeof(float) * (size_t)p->numel);
  memcpy(copy, params.master + p->offset, sizeof(float) * (size_t)p->numel);
  assert_int_equal(p->logical_shape[0], rows);
  assert_int_equal(p->logical_shape[1], cols);
  assert_int_equal(p->slice_start[dim], length ? start : 0);
  lt_params_free(&params);
  return copy;
}

static void test_row_shard_holds_the_rows_of_the_whole_tensor(void **state) {
  (void)state;
  float *whole = init_param(12, 5, 0, 0, 0);
  float *shard = init_param(12, 5, 0, 4, 6); // rows 4..9
  assert_memory_equal(shard, whole + 4 * 5, sizeof(float) * 6 * 5);
  free(whole), free(shard);
}

static void test_column_shard_holds_the_columns_of_the_whole_tensor(void **state) {
  (void)state;
  float *whole = init_param(7, 10, 0, 0, 0);
  float *shard = init_param(7, 10, 1, 3, 4); // columns 3..6
  for (int r = 0; r < 7; r++)
    assert_memory_equal(shard + r * 4, whole + r * 10 + 3, sizeof(float) * 4);
  free(whole), free(shard);
}

static void test_shard_outside_the_tensor_is_refused(void **state) {
  (void)state;
  lt_params params;
  lt_param bind;
  lt_params_begin(&params, NULL);
  lt_param_spec spec = {.init = LT_INIT_ONES, .shard_dim = 0, .shard_start = 10, .shard_length = 4};
  EXPECT_ERROR(lt_params_add(&params, &bind, "w", 2, LT_SHAPE(12, 3), spec), LT_ERR_INTERNAL, "w",
               "outside its shape");
  lt_params_free(&params);
}

// Every range [lo, hi) of a parameter's data, cut into boxes: they follow one another, hold
// exactly the range, and each element of a box sits, by its logical coordinates, at its place in
// the range.
static void check_boxes(int ndim, const int64_t *shape, int shard_dim, int64_t start,
                        int64_t length) {
  lt_params params;
  lt_param bind;
  lt_params_begin(&params, NULL);
  lt_param_spec spec = {
      .init = LT_INIT_ZEROS, .shard_dim = shard_dim, .shard_start = start, .shard_length = length};
  assert_ok(lt_params_add(&params, &bind, "w", ndim, shape, spec));
  const lt_param_info *p = &params.info[0];
  int most = 0;
  for (int64_t lo = 0; lo < p->numel; lo++)
    for (int64_t hi = lo + 1; hi <= p->numel; hi++) {
      lt_param_box boxes[LT_PARAM_MAX_BOXES];
      const int n = lt_param_boxes(p, lo, hi, boxes);
      assert_true(n >= 1 && n <= LT_PARAM_MAX_BOXES);
      if (n > most) most = n;
      int64_t next = lo;
      for (int b = 0; b < n; b++) {
        assert_int_equal(boxes[b].start, next);
        int64_t count = 1;
        for (int d = 0; d < ndim; d++) count *= boxes[b].extent[d];
        assert_int_equal(boxes[b].numel, count);
        for (int64_t k = 0; k < count; k++) {
          int64_t rest = k, flat = 0, index[LT_MAX_DIMS];
          for (int d = ndim - 1; d >= 0; d--) {
            index[d] = boxes[b].offset[d] + rest % boxes[b].extent[d] - p->slice_start[d];
            rest /= boxes[b].extent[d];
          }
          for (int d = 0; d < ndim; d++) {
            assert_true(index[d] >= 0 && index[d] < p->shape[d]);
            flat = flat * p->shape[d] + index[d];
          }
          assert_int_equal(flat, next + k);
        }
        next += count;
      }
      assert_int_equal(next, hi);
    }
  // From mid-row to mid-row with whole rows between needs them all (every dimension holds 2 or
  // more, the first 3 or more).
  assert_int_equal(most, 2 * ndim - 1);
  lt_params_free(&params);
}

static void test_a_range_of_a_parameter_is_cut_into_boxes_of_the_logical_tensor(void **state) {
  (void)state;
  check_boxes(1, LT_SHAPE(7), 0, 0, 0);
  check_boxes(2, LT_SHAPE(5, 6), 0, 0, 0);
  check_boxes(3, LT_SHAPE(3, 4, 5), 0, 0, 0);
  check_boxes(4, LT_SHAPE(3, 2, 2, 3), 0, 0, 0);
  check_boxes(2, LT_SHAPE(5, 9), 1, 2, 4);    // a tensor-parallel shard: columns 2..5
  check_boxes(3, LT_SHAPE(5, 3, 4), 0, 1, 3); // rows 1..3
}

// A mesh of `n` data-parallel ranks in which this process is `rank`, built without MPI (the
// table only reads the sizes).
static lt_mesh fake_mesh(int n, int rank, bool zero, int tp_rank) {
  lt_mesh mesh;
  lt_mesh_single(&mesh);
  mesh.dp_cp.size = n, mesh.dp_cp.rank = rank, mesh.parallel.zero = zero;
  mesh.size[LT_AXIS_TP] = 2, mesh.coord[LT_AXIS_TP] = tp_rank;
  return mesh;
}

static void register_three(lt_params *params, lt_param *binds, const lt_mesh *mesh) {
  lt_params_begin(params, mesh);
  lt_param_spec spec = {.init = LT_INIT_ONES};
  assert_ok(lt_params_add(params, &binds[0], "a", 2, LT_SHAPE(10, 7), spec));
  assert_ok(lt_params_add(params, &binds[1], "b", 1, LT_SHAPE(5), spec));
  spec.shard_dim = 0, spec.shard_start = 3, spec.shard_length = 3;
  assert_ok(lt_params_add(params, &binds[2], "c", 2, LT_SHAPE(12, 4), spec));
  assert_ok(lt_params_allocate(params, LT_CPU));
}

static void
test_the_buffer_splits_into_equal_shards_and_zero1_keeps_its_shards_state(void **state) {
  (void)state;
  lt_param binds[3];
  for (int zero = 0; zero < 2; zero++) {
    lt_mesh mesh = fake_mesh(3, 1, zero, 0);
    lt_params params;
    register_three(&params, binds, &mesh);
    assert_int_equal(params.numel % (64 * 3), 0); // padded so that 3 shards of 64s divide it
    assert_true(params.numel >= params.info[2].offset + (size_t)params.info[2].numel);
    assert_int_equal(params.shard_numel * 3, params.numel);
    assert_int_equal(params.shard_start, params.shard_numel);
    assert_int_equal(params.state_start, zero ? params.shard_start : 0);
    assert_int_equal(params.state_numel, zero ? params.shard_numel : params.numel);
    lt_params_free(&params);
  }
}

static void test_unsharded_parameters_are_counted_by_tensor_parallel_rank_0_only(void **state) {
  (void)state;
  lt_param binds[3];
  for (int tp_rank = 0; tp_rank < 2; tp_rank++) {
    lt_mesh mesh = fake_mesh(1, 0, false, tp_rank);
    lt_params params;
    register_three(&params, binds, &mesh);
    assert_int_equal(lt_param_is_copy(&params, &params.info[0]), tp_rank == 1);
    assert_int_equal(lt_param_is_copy(&params, &params.info[1]), tp_rank == 1);
    assert_false(lt_param_is_copy(&params, &params.info[2])); // each tp rank's own slice
    lt_params_free(&params);
  }
}

// The squared gradient norm this process counts, every gradient element set to 1: the number of
// elements it counts.
static double counted_elements(int n_shards, int shard, int tp_rank) {
  lt_mesh mesh = fake_mesh(n_shards, shard, false, tp_rank);
  lt_params params;
  lt_param binds[3];
  register_three(&params, binds, &mesh);
  for (int i = 0; i < 3; i++)
    for (int64_t j = 0; j < lt_numel(binds[i].grad); j++) lt_f32(binds[i].grad)[j] = 1.0f;
  lt_ctx ctx;
  assert_ok(lt_ctx_init(&ctx, LT_CPU, 1));
  double norm;
  assert_ok(lt_grad_norm(&ctx, &params, &norm));
  lt_ctx_destroy(&ctx);
  lt_params_free(&params);
  return norm * norm;
}

static void test_the_gradient_norm_counts_each_element_once(void **state) {
  (void)state;
  // a (10 x 7) and b (5) are whole; c is a (3 x 4) tensor-parallel slice.
  assert_true(fabs(counted_elements(1, 0, 0) - 87) < 1e-9);
  assert_true(fabs(counted_elements(1, 0, 1) - 12) < 1e-9); // tp rank 0 counts a and b
  // Three data-parallel ranks count a third of the buffer each (the last third is padding here):
  // together, everything once.
  double together = 0;
  int counting = 0;
  for (int r = 0; r < 3; r++) {
    const double mine = counted_elements(3, r, 0);
    assert_true(mine < 87);
    together += mine, counting += mine > 0;
  }
  assert_int_equal(counting, 2);
  assert_true(fabs(together - 87) < 1e-9);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_row_shard_holds_the_rows_of_the_whole_tensor),
      cmocka_unit_test(test_column_shard_holds_the_columns_of_the_whole_tensor),
      cmocka_unit_test(test_shard_outside_the_tensor_is_refused),
      cmocka_unit_test(test_a_range_of_a_parameter_is_cut_into_boxes_of_the_logical_tensor),
      cmocka_unit_test(test_the_buffer_splits_into_equal_shards_and_zero1_keeps_its_shards_state),
      cmocka_unit_test(test_unsharded_parameters_are_counted_by_tensor_parallel_rank_0_only),
      cmocka_unit_test(test_the_gradient_norm_counts_each_element_once),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
