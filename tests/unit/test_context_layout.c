// The token layout of context parallelism (parallel/context.h): rank r of cp holds chunks r and
// 2cp-1-r of every sequence, cut in place from the loader's whole rows; and the config error
// when a sequence does not split into 2*cp chunks.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "parallel/context.h"
#include "testing.h"

// A mesh of one process that believes it is rank `rank` of a cp group of `cp` (no MPI needed:
// the layout only reads the coordinates).
static lt_mesh cp_mesh(int rank, int cp) {
  lt_mesh mesh;
  lt_mesh_single(&mesh);
  mesh.size[LT_AXIS_CP] = mesh.axis[LT_AXIS_CP].size = cp;
  mesh.coord[LT_AXIS_CP] = mesh.axis[LT_AXIS_CP].rank = rank;
  return mesh;
}

static void test_rank_r_holds_chunks_r_and_2cp_minus_1_minus_r(void **state) {
  (void)state;
  assert_int_equal(lt_zigzag_chunk(0, 4, 0), 0);
  assert_int_equal(lt_zigzag_chunk(0, 4, 1), 7);
  assert_int_equal(lt_zigzag_chunk(3, 4, 0), 3);
  assert_int_equal(lt_zigzag_chunk(3, 4, 1), 4);
  for (int cp = 1; cp <= 5; cp++)
    for (int chunk = 0; chunk < 2 * cp; chunk++) {
      int rank, half;
      lt_zigzag_owner(chunk, cp, &rank, &half);
      assert_int_equal(lt_zigzag_chunk(rank, cp, half), chunk);
    }
  // Rank 1 of 2 with T = 16: chunks 1 and 2, tokens 4..7 then 8..11.
  const int64_t expect[8] = {4, 5, 6, 7, 8, 9, 10, 11};
  for (int64_t i = 0; i < 8; i++) assert_int_equal(lt_zigzag_global_index(i, 1, 2, 16), expect[i]);
}

static void test_keeping_local_tokens_gives_every_token_to_exactly_one_rank(void **state) {
  (void)state;
  enum { ROWS = 3 };
  for (int cp = 2; cp <= 4; cp++) {
    const int64_t T = 2 * cp * 5, local = T / cp;
    int *seen = calloc(ROWS * T, sizeof(int));
    for (int rank = 0; rank < cp; rank++) {
      const lt_mesh mesh = cp_mesh(rank, cp);
      assert_int_equal(lt_cp_local_len(T, &mesh), local);
      int32_t tokens[ROWS * 40], targets[ROWS * 40];
      for (int64_t i = 0; i < ROWS * T; i++) tokens[i] = (int32_t)i, targets[i] = (int32_t)-i;
      lt_samples samples = {.tokens = tokens, .targets = targets}; // no positions or documents
      lt_zigzag_keep_local_samples(&samples, ROWS, T, &mesh);
      for (int64_t r = 0; r < ROWS; r++)
        for (int64_t i = 0; i < local; i++) {
          const int32_t global = (int32_t)(r * T + lt_zigzag_global_index(i, rank, cp, T));
          assert_int_equal(tokens[r * local + i], global);
          assert_int_equal(targets[r * local + i], -global);
          seen[global]++;
        }
    }
    for (int64_t i = 0; i < ROWS * T; i++) assert_int_equal(seen[i], 1);
    free(seen);
  }
}

static void test_without_a_cp_group_the_rows_stay_whole(void **state) {
  (void)state;
  int32_t tokens[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  const lt_mesh one = cp_mesh(0, 1);
  lt_zigzag_keep_local(tokens, 2, 4, NULL);
  lt_zigzag_keep_local(tokens, 2, 4, &one);
  for (int i = 0; i < 8; i++) assert_int_equal(tokens[i], i);
  assert_null(lt_cp_group(&one));
  assert_int_equal(lt_cp_local_len(4, NULL), 4);
}

static void test_a_sequence_that_does_not_split_into_2cp_chunks_is_a_config_error(void **state) {
  (void)state;
  lt_config cfg;
  char *bad[] = {"parallel.cp=4", "train.seq_len=36"};
  EXPECT_ERROR(lt_config_load(&cfg, NULL, 2, bad), LT_ERR_CONFIG, "train.seq_len (36)",
               "2 * parallel.cp = 8", "multiple of 8");
  char *good[] = {"parallel.cp=4", "train.seq_len=40"};
  assert_ok(lt_config_load(&cfg, NULL, 2, good));
  char *odd[] = {"train.seq_len=37"}; // without context parallelism any length will do
  assert_ok(lt_config_load(&cfg, NULL, 1, odd));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rank_r_holds_chunks_r_and_2cp_minus_1_minus_r),
      cmocka_unit_test(test_keeping_local_tokens_gives_every_token_to_exactly_one_rank),
      cmocka_unit_test(test_without_a_cp_group_the_rows_stay_whole),
      cmocka_unit_test(test_a_sequence_that_does_not_split_into_2cp_chunks_is_a_config_error),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
