// The parameter table: sharded parameters hold exactly their slice of the unsharded tensor, so
// every tensor-parallel layout starts from the same model.
#include <stdlib.h>
#include <string.h>

#include "model/params.h"
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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_row_shard_holds_the_rows_of_the_whole_tensor),
      cmocka_unit_test(test_column_shard_holds_the_columns_of_the_whole_tensor),
      cmocka_unit_test(test_shard_outside_the_tensor_is_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
