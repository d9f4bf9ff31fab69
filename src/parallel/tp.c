#include "parallel/tp.h"

#include <mpi.h>
#include <string.h>

#include "core/error.h"

lt_tp lt_tp_of(const lt_params *params) {
  const lt_mesh *mesh = params->mesh;
  if (!mesh || mesh->size[LT_AXIS_TP] == 1) return (lt_tp){.group = NULL, .rank = 0, .size = 1};
  const lt_group *g = &mesh->axis[LT_AXIS_TP];
  return (lt_tp){.group = g, .rank = g->rank, .size = g->size};
}

int64_t lt_tp_count(const lt_tp *tp, int64_t n) {
  return n / tp->size;
}

int64_t lt_tp_start(const lt_tp *tp, int64_t n) {
  return tp->rank * lt_tp_count(tp, n);
}

lt_param_spec lt_tp_shard(lt_param_spec spec, const lt_tp *tp, int dim, int64_t length) {
  if (tp->size == 1) return spec;
  spec.shard_dim = dim;
  spec.shard_start = lt_tp_start(tp, length);
  spec.shard_length = lt_tp_count(tp, length);
  return spec;
}

int lt_tp_all_reduce_sum(const lt_tp *tp, lt_tensor t) {
  return tp->group ? lt_all_reduce_sum(tp->group, t) : LT_OK;
}

int lt_tp_all_reduce_max(const lt_tp *tp, lt_tensor t) {
  return tp->group ? lt_all_reduce_max(tp->group, t) : LT_OK;
}

int lt_tp_reduce_output(const lt_tp *tp, lt_tensor out) {
  return lt_tp_all_reduce_sum(tp, out);
}

int lt_tp_reduce_input_grad(const lt_tp *tp, lt_tensor dx) {
  return lt_tp_all_reduce_sum(tp, dx);
}

// (rows, part) against (rows, part * size): the operands of a split or a gather.
static int check_parts(const char *op, const lt_tp *tp, lt_tensor part, lt_tensor whole) {
  char a[96], b[96];
  const int64_t cols = part.shape[part.ndim - 1], rows = lt_numel(part) / cols;
  if (part.dtype == whole.dtype && lt_numel(whole) == lt_numel(part) * tp->size &&
      whole.shape[whole.ndim - 1] == cols * tp->size && lt_numel(whole) / (cols * tp->size) == rows)
    return LT_OK;
  return lt_fail(LT_ERR_INTERNAL, "internal error: %s over tp (%d ranks): %s vs %s", op, tp->size,
                 lt_tensor_desc(part, a, sizeof a), lt_tensor_desc(whole, b, sizeof b));
}

// The split and the gather move host memory through MPI; device tensors wait for NCCL.
static int host_only(const char *op, lt_tensor t) {
  if (t.device == LT_CPU) return LT_OK;
  char desc[96];
  return lt_fail(LT_ERR_COMM,
                 "%s over tp of a device tensor %s needs NCCL, which this build does not have yet",
                 op, lt_tensor_desc(t, desc, sizeof desc));
}

int lt_tp_split_last_dim(const lt_tp *tp, lt_tensor out, lt_tensor in) {
  LT_TRY(check_parts("split of the last dimension", tp, out, in));
  LT_TRY(host_only("split of the last dimension", in));
  const size_t part = (size_t)out.shape[out.ndim - 1] * lt_dtype_size(out.dtype);
  const int64_t rows = (int64_t)(lt_nbytes(out) / part);
  const char *src = (const char *)in.data + (size_t)tp->rank * part;
  for (int64_t r = 0; r < rows; r++)
    memcpy((char *)out.data + (size_t)r * part, src + (size_t)r * part * tp->size, part);
  return LT_OK;
}

int lt_tp_gather_last_dim(const lt_tp *tp, lt_tensor out, lt_tensor in) {
  LT_TRY(check_parts("gather of the last dimension", tp, in, out));
  if (!tp->group) return lt_tp_split_last_dim(tp, out, in); // one part: a plain copy
  LT_TRY(host_only("gather of the last dimension", in));
  // Rank i's (rows, C) lands in columns [i C, (i + 1) C) of every row: one strided datatype,
  // resized so that rank i's copy starts i C elements in, lets MPI place it without a copy.
  const int part = (int)(in.shape[in.ndim - 1] * (int64_t)lt_dtype_size(in.dtype));
  const int rows = (int)(lt_nbytes(in) / (size_t)part);
  MPI_Datatype strided, placed;
  MPI_Type_vector(rows, part, part * tp->size, MPI_BYTE, &strided);
  MPI_Type_create_resized(strided, 0, part, &placed);
  MPI_Type_commit(&placed);
  int rc = MPI_Allgather(in.data, rows * part, MPI_BYTE, out.data, 1, placed, tp->group->comm);
  MPI_Type_free(&placed);
  MPI_Type_free(&strided);
  char desc[96];
  LT_CHECK(rc == MPI_SUCCESS, LT_ERR_COMM,
           "gather of the last dimension over the tp group (rank %d of %d) of %s failed", tp->rank,
           tp->size, lt_tensor_desc(in, desc, sizeof desc));
  return LT_OK;
}

