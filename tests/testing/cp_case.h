// Context-parallel tests: the meshes of a 4-rank world, whole sequences and this rank's zigzag
// share of them, and the comparison against the single-process result.
#ifndef LT_CP_CASE_H
#define LT_CP_CASE_H

#include <stdbool.h>
#include <stdint.h>

#include "layers/layer.h"
#include "parallel/mesh.h"

// Joins the world (which must be 4 ranks under mpirun) and splits it twice: meshes[0] is
// dp 2 x cp 2 (two cp=2 rings on the same data), meshes[1] is cp 4.
void lt_test_cp_setup(lt_world *world, lt_mesh meshes[2], int *argc, char ***argv);
void lt_test_cp_teardown(lt_world *world, lt_mesh meshes[2]);

// local = this rank's zigzag share of `whole`: rows of T tokens of `width` floats each become rows
// of T / cp tokens (parallel/context.h).
void lt_test_zigzag_take(float *local, const float *whole, int64_t rows, int64_t T, int64_t width,
                         const lt_mesh *mesh);

// Positions and documents of B sequences of T tokens. Without documents: positions 0 .. T-1 and
// doc all 0. With: four documents per row, positions restarting at each, whose boundaries fall
// inside chunks, on chunk boundaries (of cp = 2 and 4) and span several ranks' chunks.
void lt_test_cp_documents(int32_t *pos, int32_t *doc, int64_t B, int64_t T, bool documents);

// max |a - b| / max |b|: a difference on the scale of the reference tensor.
double lt_test_scaled_diff(const float *a, const float *b, int64_t n);

// The largest of every rank's `value` (NaN counts as the largest).
double lt_test_worst_over_ranks(const lt_mesh *mesh, double value);
// The largest of n values (NaN counts as the largest).
double lt_test_worst(const double *values, int n);
// Runs compare(mesh, c), this rank's worst difference from one process, on both meshes, prints
// the worst over the ranks as "<what>, cp=N: worst difference ..." and fails above tolerance.
void lt_test_cp_expect_close(lt_mesh meshes[2], double (*compare)(const lt_mesh *, const void *),
                             const void *c, const char *what, double tolerance);

// Plans `object` for (B, T) with `plan` twice, measuring and then for real, on two arenas this
// creates (as lt_test_plan_layer does for layers).
void lt_test_plan_object(int (*plan)(void *object, const lt_plan *p), void *object, lt_arena *acts,
                         lt_arena *scratch, int64_t B, int64_t T);

#endif
