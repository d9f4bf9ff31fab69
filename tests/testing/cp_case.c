#include "cp_case.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parallel/context.h"
#include "testing.h"

void lt_test_cp_setup(lt_world *world, lt_mesh meshes[2], int *argc, char ***argv) {
  if (lt_world_init(world, argc, argv) != LT_OK || !world->mpi || world->size != 4) {
    fprintf(stderr, "%s must run under mpirun -np 4\n", (*argv)[0]);
    exit(1);
  }
  const lt_parallel_config layouts[2] = {{.dp = 2, .pp = 1, .cp = 2, .tp = 1},
                                         {.dp = 1, .pp = 1, .cp = 4, .tp = 1}};
  for (int i = 0; i < 2; i++)
    if (lt_mesh_create(&meshes[i], world, &layouts[i]) != LT_OK) {
      fprintf(stderr, "%s\n", lt_error_message());
      exit(1);
    }
}

void lt_test_cp_teardown(lt_world *world, lt_mesh meshes[2]) {
  for (int i = 0; i < 2; i++) lt_mesh_destroy(&meshes[i]);
  lt_world_finalize(world);
}

void lt_test_zigzag_take(float *local, const float *whole, int64_t rows, int64_t T, int64_t width,
                         const lt_mesh *mesh) {
  const lt_group *cp = &mesh->axis[LT_AXIS_CP];
  const int64_t local_len = T / cp->size;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t i = 0; i < local_len; i++) {
      const int64_t g = lt_zigzag_global_index(i, cp->rank, cp->size, T);
      memcpy(local + (r * local_len + i) * width, whole + (r * T + g) * width,
             sizeof(float) * (size_t)width);
    }
}

void lt_test_cp_documents(int32_t *pos, int32_t *doc, int64_t B, int64_t T, bool documents) {
  // In 64ths of T: for T = 64, boundaries at 5 (inside a chunk), 16 (a chunk boundary of cp = 2
  // and 4), 43 (inside), and 24, 32 (a boundary of both), 61.
  static const int starts[2][4] = {{0, 5, 16, 43}, {0, 24, 32, 61}};
  for (int64_t b = 0; b < B; b++) {
    int32_t d = 0, start = 0;
    for (int64_t t = 0; t < T; t++) {
      if (documents && d + 1 < 4 && t == starts[b % 2][d + 1] * T / 64) d++, start = (int32_t)t;
      pos[b * T + t] = (int32_t)t - start;
      doc[b * T + t] = documents ? d : 0;
    }
  }
}

double lt_test_scaled_diff(const float *a, const float *b, int64_t n) {
  const double scale = lt_test_max_abs(b, n);
  return lt_test_max_rel_diff(a, b, n, scale > 0 ? scale : 1.0);
}

double lt_test_worst_over_ranks(const lt_mesh *mesh, double value) {
  float worst = isnan(value) ? INFINITY : (float)value;
  assert_ok(lt_all_reduce_max(&mesh->world, lt_view1(&worst, LT_F32, LT_CPU, 1)));
  return worst;
}

double lt_test_worst(const double *values, int n) {
  double worst = 0;
  for (int i = 0; i < n; i++)
    if (!(values[i] <= worst)) worst = values[i];
  return worst;
}

void lt_test_cp_expect_close(lt_mesh meshes[2], double (*compare)(const lt_mesh *, const void *),
                             const void *c, const char *what, double tolerance) {
  for (int m = 0; m < 2; m++) {
    const double worst = lt_test_worst_over_ranks(&meshes[m], compare(&meshes[m], c));
    if (meshes[m].world_rank == 0)
      print_message("%s, cp=%d: worst difference %.2e\n", what, meshes[m].axis[LT_AXIS_CP].size,
                    worst);
    assert_true(worst < tolerance);
  }
}

void lt_test_plan_object(int (*plan)(void *object, const lt_plan *p), void *object, lt_arena *acts,
                         lt_arena *scratch, int64_t B, int64_t T) {
  lt_arena ma, ms;
  lt_arena_measure(&ma, LT_CPU, "acts");
  lt_arena_measure(&ms, LT_CPU, "scratch");
  lt_plan p = {.B = B, .T = T, .act_dtype = LT_F32, .acts = &ma, .scratch = &ms};
  assert_ok(plan(object, &p));
  assert_ok(lt_arena_create(acts, LT_CPU, ma.peak + 1, "acts"));
  assert_ok(lt_arena_create(scratch, LT_CPU, ms.peak + 1, "scratch"));
  p.acts = acts, p.scratch = scratch;
  assert_ok(plan(object, &p));
}
