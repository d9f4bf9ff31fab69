// Collectives over a mesh group. Host tensors go through MPI; device tensors will go through NCCL
// (bootstrapped over MPI) in CUDA builds. Every failure names the operation, the group and the
// tensor.
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "parallel/mesh.h"

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

static int host_only(const char *op, const lt_group *g, lt_tensor t) {
  if (t.device == LT_CPU) return LT_OK;
  char desc[96];
  return lt_fail(LT_ERR_COMM,
                 "%s over the %s group of a device tensor %s needs NCCL, which this "
                 "build does not have yet",
                 op, g->name, lt_tensor_desc(t, desc, sizeof desc));
}

static int all_reduce(const lt_group *g, lt_tensor t, MPI_Op op, const char *name) {
  if (g->size == 1) return LT_OK;
  LT_TRY(host_only(name, g, t));
  LT_CHECK(t.dtype == LT_F32, LT_ERR_INTERNAL, "%s: only f32 reduces on the host", name);
  int rc = MPI_Allreduce(MPI_IN_PLACE, t.data, (int)lt_numel(t), MPI_FLOAT, op, g->comm);
  return rc == MPI_SUCCESS ? LT_OK : failed(name, g, t, rc);
}

int lt_all_reduce_sum(const lt_group *g, lt_tensor t) {
  return all_reduce(g, t, MPI_SUM, "all-reduce");
}

int lt_all_reduce_max(const lt_group *g, lt_tensor t) {
  return all_reduce(g, t, MPI_MAX, "all-reduce (max)");
}

int lt_all_reduce_sum_f64(const lt_group *g, double *values, int n) {
  if (g->size == 1) return LT_OK;
  uint64_t *all = malloc(sizeof(uint64_t) * (size_t)g->size * (size_t)n);
  LT_CHECK(all, LT_ERR_MEMORY, "out of host memory summing over the %s group", g->name);
  int rc = lt_all_gather(g, lt_view1(all, LT_U64, LT_CPU, (int64_t)g->size * n),
                         lt_view1(values, LT_U64, LT_CPU, n));
  for (int i = 0; i < n && rc == LT_OK; i++) {
    values[i] = 0.0;
    for (int r = 0; r < g->size; r++) {
      double v;
      memcpy(&v, &all[(size_t)r * (size_t)n + (size_t)i], sizeof v);
      values[i] += v;
    }
  }
  free(all);
  return rc;
}

int lt_all_gather(const lt_group *g, lt_tensor out, lt_tensor in) {
  LT_CHECK(lt_numel(out) == (int64_t)g->size * lt_numel(in) && out.dtype == in.dtype,
           LT_ERR_INTERNAL, "all-gather over %s: output must hold %d inputs", g->name, g->size);
  if (g->size == 1) {
    if (out.data != in.data) memmove(out.data, in.data, lt_nbytes(in));
    return LT_OK;
  }
  LT_TRY(host_only("all-gather", g, in));
  int rc = MPI_Allgather(in.data, (int)lt_numel(in), mpi_type(in.dtype), out.data,
                         (int)lt_numel(in), mpi_type(in.dtype), g->comm);
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
  LT_TRY(host_only("reduce-scatter", g, in));
  int rc =
      MPI_Reduce_scatter_block(in.data, out.data, (int)lt_numel(out), MPI_FLOAT, MPI_SUM, g->comm);
  return rc == MPI_SUCCESS ? LT_OK : failed("reduce-scatter", g, in, rc);
}

int lt_broadcast(const lt_group *g, lt_tensor t, int root) {
  if (g->size == 1) return LT_OK;
  LT_TRY(host_only("broadcast", g, t));
  int rc = MPI_Bcast(t.data, (int)lt_numel(t), mpi_type(t.dtype), root, g->comm);
  return rc == MPI_SUCCESS ? LT_OK : failed("broadcast", g, t, rc);
}

int lt_start_sendrecv(const lt_group *g, lt_tensor send, int dst, lt_tensor recv, int src,
                      lt_request *request) {
  request->n = 0;
  if (send.data && dst >= 0) {
    LT_TRY(host_only("send", g, send));
    int rc = MPI_Isend(send.data, (int)lt_numel(send), mpi_type(send.dtype), dst, 0, g->comm,
                       &request->req[request->n++]);
    if (rc != MPI_SUCCESS) return failed("send", g, send, rc);
  }
  if (recv.data && src >= 0) {
    LT_TRY(host_only("receive", g, recv));
    int rc = MPI_Irecv(recv.data, (int)lt_numel(recv), mpi_type(recv.dtype), src, 0, g->comm,
                       &request->req[request->n++]);
    if (rc != MPI_SUCCESS) return failed("receive", g, recv, rc);
  }
  return LT_OK;
}

int lt_wait(lt_request *request) {
  if (request->n == 0) return LT_OK;
  int rc = MPI_Waitall(request->n, request->req, MPI_STATUSES_IGNORE);
  request->n = 0;
  LT_CHECK(rc == MPI_SUCCESS, LT_ERR_COMM, "a point-to-point transfer failed");
  return LT_OK;
}

int lt_sendrecv(const lt_group *g, lt_tensor send, int dst, lt_tensor recv, int src) {
  lt_request request;
  LT_TRY(lt_start_sendrecv(g, send, dst, recv, src, &request));
  return lt_wait(&request);
}
