// Collectives over a mesh group. Host tensors go through MPI; device tensors through NCCL
// (parallel/nccl.c, CUDA builds). Every failure names the operation, the group and the tensor;
// every blocking wait is watched (parallel/watchdog.h).
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "parallel/mesh.h"
#include "parallel/watchdog.h"

#ifdef LT_WITH_CUDA
#include "parallel/nccl.h"
#endif

static MPI_Datatype mpi_type(lt_dtype dtype) {
  switch (dtype) {
  case LT_F32:
    return MPI_FLOAT;
  case LT_BF16:
  case LT_U16:
    return MPI_UINT16_T;
  case LT_I32:
    return MPI_INT32_T;
  case LT_U32:
    return MPI_UINT32_T;
  case LT_U8:
    return MPI_UINT8_T;
  case LT_I64:
    return MPI_INT64_T;
  case LT_U64:
    return MPI_UINT64_T;
  }
  return MPI_DATATYPE_NULL;
}

static int failed(const char *op, const lt_group *g, lt_tensor t, int rc) {
  char desc[96], why[MPI_MAX_ERROR_STRING] = "";
  int len = 0;
  MPI_Error_string(rc, why, &len);
  return lt_fail(LT_ERR_COMM, "%s over the %s group (rank %d of %d) of %s failed: %s", op, g->name,
                 g->rank, g->size, lt_tensor_desc(t, desc, sizeof desc), why);
}

// MPI counts are ints: a larger transfer must be split by the caller.
static int mpi_count(const char *op, const lt_group *g, int64_t n, int *count) {
  LT_CHECK(n <= INT_MAX, LT_ERR_INTERNAL,
           "%s over the %s group: %lld elements exceed MPI's int count", op, g->name, (long long)n);
  *count = (int)n;
  return LT_OK;
}

#ifdef LT_WITH_CUDA
#define ON_DEVICE(t, call)                                                                         \
  do {                                                                                             \
    if ((t).device == LT_CUDA) return (call);                                                      \
  } while (0)
#else
// A build without CUDA has no device tensors to move.
#define ON_DEVICE(t, call)                                                                         \
  do {                                                                                             \
    if ((t).device == LT_CUDA)                                                                     \
      return lt_fail(LT_ERR_INTERNAL, "a device tensor reached the collectives of a CPU build");   \
  } while (0)
#endif

static int all_reduce(const lt_group *g, lt_tensor t, MPI_Op op, const char *name) {
  if (g->size == 1) return LT_OK;
  ON_DEVICE(t, lt_nccl_all_reduce(g, t, op == MPI_MAX, name, NULL));
  LT_CHECK(t.dtype == LT_F32, LT_ERR_INTERNAL, "%s: only f32 reduces on the host", name);
  int n = 0;
  LT_TRY(mpi_count(name, g, lt_numel(t), &n));
  lt_watch_begin(name, g->name);
  int rc = MPI_Allreduce(MPI_IN_PLACE, t.data, n, MPI_FLOAT, op, g->comm);
  lt_watch_end();
  return rc == MPI_SUCCESS ? LT_OK : failed(name, g, t, rc);
}

int lt_all_reduce_sum(const lt_group *g, lt_tensor t) {
  return all_reduce(g, t, MPI_SUM, "all-reduce");
}

int lt_all_reduce_max(const lt_group *g, lt_tensor t) {
  return all_reduce(g, t, MPI_MAX, "all-reduce (max)");
}

int lt_all_gather(const lt_group *g, lt_tensor out, lt_tensor in) {
  LT_CHECK(lt_numel(out) == (int64_t)g->size * lt_numel(in) && out.dtype == in.dtype,
           LT_ERR_INTERNAL, "all-gather over %s: output must hold %d inputs", g->name, g->size);
  const bool in_place = in.data == (char *)out.data + (size_t)g->rank * lt_nbytes(in);
  if (g->size == 1) {
    if (!in_place) memmove(out.data, in.data, lt_nbytes(in));
    return LT_OK;
  }
  ON_DEVICE(in, lt_nccl_all_gather(g, out, in));
  int n = 0;
  LT_TRY(mpi_count("all-gather", g, lt_numel(in), &n));
  lt_watch_begin("all-gather", g->name);
  int rc = MPI_Allgather(in_place ? MPI_IN_PLACE : in.data, n, mpi_type(in.dtype), out.data, n,
                         mpi_type(in.dtype), g->comm);
  lt_watch_end();
  return rc == MPI_SUCCESS ? LT_OK : failed("all-gather", g, in, rc);
}

int lt_reduce_scatter_sum(const lt_group *g, lt_tensor out, lt_tensor in) {
  LT_CHECK(
      lt_numel(in) == (int64_t)g->size * lt_numel(out) && in.dtype == LT_F32 && out.dtype == LT_F32,
      LT_ERR_INTERNAL, "reduce-scatter over %s: input must hold %d f32 outputs", g->name, g->size);
  if (g->size == 1) {
    if (out.data != in.data) memmove(out.data, in.data, lt_nbytes(out));
    return LT_OK;
  }
  ON_DEVICE(in, lt_nccl_reduce_scatter(g, out, in, NULL, NULL));
  int n = 0;
  LT_TRY(mpi_count("reduce-scatter", g, lt_numel(out), &n));
  lt_watch_begin("reduce-scatter", g->name);
  int rc = MPI_Reduce_scatter_block(in.data, out.data, n, MPI_FLOAT, MPI_SUM, g->comm);
  lt_watch_end();
  return rc == MPI_SUCCESS ? LT_OK : failed("reduce-scatter", g, in, rc);
}

int lt_broadcast(const lt_group *g, lt_tensor t, int root) {
  if (g->size == 1) return LT_OK;
  ON_DEVICE(t, lt_nccl_broadcast(g, t, root));
  int n = 0;
  LT_TRY(mpi_count("broadcast", g, lt_numel(t), &n));
  lt_watch_begin("broadcast", g->name);
  int rc = MPI_Bcast(t.data, n, mpi_type(t.dtype), root, g->comm);
  lt_watch_end();
  return rc == MPI_SUCCESS ? LT_OK : failed("broadcast", g, t, rc);
}

int lt_all_reduce_sum_f64(const lt_group *g, double *values, int n) {
  if (g->size == 1) return LT_OK;
  double *all = malloc((size_t)g->size * (size_t)n * sizeof *all);
  LT_CHECK(all, LT_ERR_MEMORY, "out of host memory summing over the %s group", g->name);
  lt_watch_begin("all-reduce", g->name);
  int rc = MPI_Allgather(values, n, MPI_DOUBLE, all, n, MPI_DOUBLE, g->comm);
  lt_watch_end();
  for (int i = 0; i < n && rc == MPI_SUCCESS; i++) {
    values[i] = all[i];
    for (int r = 1; r < g->size; r++) values[i] += all[(size_t)r * (size_t)n + (size_t)i];
  }
  free(all);
  return rc == MPI_SUCCESS ? LT_OK
                           : failed("all-reduce", g, lt_view1(values, LT_U64, LT_CPU, n), rc);
}

static void begin_request(lt_request *request, const char *op, const lt_group *g) {
  *request = (lt_request){.op = op, .group = g};
}

int lt_start_all_reduce_sum(const lt_group *g, lt_tensor t, lt_request *request) {
  begin_request(request, "all-reduce", g);
  if (g->size == 1) return LT_OK;
  ON_DEVICE(t, lt_nccl_all_reduce(g, t, false, request->op, request));
  LT_CHECK(t.dtype == LT_F32, LT_ERR_INTERNAL, "all-reduce: only f32 reduces on the host");
  int n = 0;
  LT_TRY(mpi_count(request->op, g, lt_numel(t), &n));
  int rc = MPI_Iallreduce(MPI_IN_PLACE, t.data, n, MPI_FLOAT, MPI_SUM, g->comm, &request->req[0]);
  if (rc != MPI_SUCCESS) return failed(request->op, g, t, rc);
  request->n = 1;
  return LT_OK;
}

int lt_start_reduce_scatter_sum(const lt_group *g, lt_tensor out, lt_tensor in,
                                const int64_t *counts, lt_request *request) {
  begin_request(request, "reduce-scatter", g);
  int64_t total = 0;
  for (int r = 0; r < g->size; r++) total += counts[r];
  LT_CHECK(total == lt_numel(in) && counts[g->rank] == lt_numel(out) && in.dtype == LT_F32 &&
               out.dtype == LT_F32,
           LT_ERR_INTERNAL, "reduce-scatter over %s: the parts must add up to the f32 input",
           g->name);
  if (g->size == 1) {
    memmove(out.data, in.data, lt_nbytes(out));
    return LT_OK;
  }
  ON_DEVICE(in, lt_nccl_reduce_scatter(g, out, in, counts, request));
  // The counts must outlive the call: MPI may read them until it completes.
  int *mpi_counts = malloc((size_t)g->size * sizeof *mpi_counts);
  LT_CHECK(mpi_counts, LT_ERR_MEMORY, "out of host memory for a reduce-scatter");
  request->counts = mpi_counts; // freed by lt_wait
  for (int r = 0; r < g->size; r++) LT_TRY(mpi_count(request->op, g, counts[r], &mpi_counts[r]));
  int rc = MPI_Ireduce_scatter(in.data, out.data, mpi_counts, MPI_FLOAT, MPI_SUM, g->comm,
                               &request->req[0]);
  if (rc != MPI_SUCCESS) return failed(request->op, g, in, rc);
  request->n = 1;
  return LT_OK;
}

int lt_start_sendrecv(const lt_group *g, lt_tensor send, int dst, lt_tensor recv, int src,
                      lt_request *request) {
  begin_request(request, "send/receive", g);
  const bool sending = send.data && dst >= 0, receiving = recv.data && src >= 0;
  if (sending) ON_DEVICE(send, lt_nccl_sendrecv(g, send, dst, recv, src, request));
  if (receiving) ON_DEVICE(recv, lt_nccl_sendrecv(g, send, dst, recv, src, request));
  int n = 0;
  if (sending) {
    LT_TRY(mpi_count("send", g, lt_numel(send), &n));
    int rc =
        MPI_Isend(send.data, n, mpi_type(send.dtype), dst, 0, g->comm, &request->req[request->n++]);
    if (rc != MPI_SUCCESS) return failed("send", g, send, rc);
  }
  if (receiving) {
    LT_TRY(mpi_count("receive", g, lt_numel(recv), &n));
    int rc =
        MPI_Irecv(recv.data, n, mpi_type(recv.dtype), src, 0, g->comm, &request->req[request->n++]);
    if (rc != MPI_SUCCESS) return failed("receive", g, recv, rc);
  }
  return LT_OK;
}

int lt_wait(lt_request *request) {
#ifdef LT_WITH_CUDA
  if (request->event && request->n == 0) return lt_nccl_wait(request);
#endif
  int rc = MPI_SUCCESS;
  if (request->n > 0) {
    lt_watch_begin(request->op, request->group->name);
    rc = MPI_Waitall(request->n, request->req, MPI_STATUSES_IGNORE);
    lt_watch_end();
  }
  free(request->counts);
  request->counts = NULL, request->n = 0;
  LT_CHECK(rc == MPI_SUCCESS, LT_ERR_COMM, "%s over the %s group failed", request->op,
           request->group->name);
  return LT_OK;
}

int lt_test(lt_request *request, bool *done) {
#ifdef LT_WITH_CUDA
  if (request->event && request->n == 0) return lt_nccl_test(request, done);
#endif
  int flag = 1;
  if (request->n > 0 &&
      MPI_Testall(request->n, request->req, &flag, MPI_STATUSES_IGNORE) != MPI_SUCCESS)
    return lt_fail(LT_ERR_COMM, "%s over the %s group failed", request->op, request->group->name);
  *done = flag != 0;
  return LT_OK;
}

int lt_sendrecv(const lt_group *g, lt_tensor send, int dst, lt_tensor recv, int src) {
  lt_request request;
  LT_TRY(lt_start_sendrecv(g, send, dst, recv, src, &request));
  return lt_wait(&request);
}
