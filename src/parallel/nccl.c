// NCCL for device tensors: one communicator per mesh group (lt_group.nccl), bootstrapped over the
// group's MPI communicator. Compiled in CUDA builds only.
//
// Streams. NCCL runs on the group's own stream, so a gradient bucket's reduction can overlap the
// backward that goes on queueing on the compute stream. Each call first records an event on the
// legacy default stream, which completes only once everything queued before it on every blocking
// stream has run (the CUDA backend's compute stream is a blocking one), and makes the group's
// stream wait for it: NCCL reads complete inputs. Each call's end is an event on the group's
// stream; the host waits for it (watched, parallel/watchdog.h) before a blocking call returns, or
// in lt_wait for a started one, so nothing queued later can read a partial result, and a peer
// that hangs ends the job like a hung MPI call. NCCL_NVLS_ENABLE and the other NCCL_* variables
// are left to the user (NVLink multicast stays as the environment sets it).
#ifdef LT_WITH_CUDA

#include "parallel/nccl.h"

#include <cuda_runtime.h>
#include <nccl.h>
#include <stdlib.h>

#include "core/error.h"
#include "parallel/watchdog.h"

typedef struct nccl_group {
  ncclComm_t comm;
  cudaStream_t stream;
  cudaEvent_t inputs_ready;
} nccl_group;

static int nccl_failed(const char *op, const lt_group *g, ncclResult_t rc) {
  return lt_fail(LT_ERR_DEVICE, "NCCL %s over the %s group (rank %d of %d) failed: %s", op, g->name,
                 g->rank, g->size, ncclGetErrorString(rc));
}

static int cuda_failed(const char *what, const lt_group *g, cudaError_t err) {
  return lt_fail(LT_ERR_DEVICE, "CUDA error %s for the %s group's NCCL: %s", what, g->name,
                 cudaGetErrorString(err));
}

#define NCCL_TRY(op, g, call)                                                                      \
  do {                                                                                             \
    ncclResult_t nccl_rc_ = (call);                                                                \
    if (nccl_rc_ != ncclSuccess) return nccl_failed((op), (g), nccl_rc_);                          \
  } while (0)

#define CUDA_TRY(what, g, call)                                                                    \
  do {                                                                                             \
    cudaError_t cuda_err_ = (call);                                                                \
    if (cuda_err_ != cudaSuccess) return cuda_failed((what), (g), cuda_err_);                      \
  } while (0)

// 2-byte integers have no NCCL type: they are only ever moved, never reduced, so half floats'
// bits carry them unchanged.
static int nccl_type(const lt_group *g, lt_dtype dtype, bool reduce, ncclDataType_t *out) {
  switch (dtype) {
  case LT_F32:
    *out = ncclFloat32;
    return LT_OK;
  case LT_BF16:
    *out = ncclBfloat16;
    return LT_OK;
  default:
    break;
  }
  LT_CHECK(!reduce, LT_ERR_INTERNAL,
           "a reduction over the %s group of %s: only f32 and bf16 reduce", g->name,
           lt_dtype_name(dtype));
  switch (dtype) {
  case LT_I32:
    *out = ncclInt32;
    return LT_OK;
  case LT_U32:
    *out = ncclUint32;
    return LT_OK;
  case LT_U8:
    *out = ncclUint8;
    return LT_OK;
  case LT_I64:
    *out = ncclInt64;
    return LT_OK;
  case LT_U64:
    *out = ncclUint64;
    return LT_OK;
  default:
    *out = ncclFloat16; // LT_U16
    return LT_OK;
  }
}

int lt_nccl_group_init(lt_group *g) {
  ncclUniqueId id;
  if (g->rank == 0) NCCL_TRY("ncclGetUniqueId", g, ncclGetUniqueId(&id));
  lt_watch_begin("NCCL bootstrap", g->name);
  int rc = MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, g->comm);
  lt_watch_end();
  LT_CHECK(rc == MPI_SUCCESS, LT_ERR_COMM, "broadcasting the NCCL id over the %s group failed",
           g->name);
  nccl_group *n = calloc(1, sizeof *n);
  LT_CHECK(n, LT_ERR_MEMORY, "out of host memory for the %s group's NCCL", g->name);
  g->nccl = n;
  CUDA_TRY("creating a stream", g, cudaStreamCreateWithFlags(&n->stream, cudaStreamNonBlocking));
  CUDA_TRY("creating an event", g,
           cudaEventCreateWithFlags(&n->inputs_ready, cudaEventDisableTiming));
  lt_watch_begin("NCCL initialisation", g->name);
  ncclResult_t init = ncclCommInitRank(&n->comm, g->size, id, g->rank);
  lt_watch_end();
  NCCL_TRY("ncclCommInitRank", g, init);
  return LT_OK;
}

void lt_nccl_group_destroy(lt_group *g) {
  nccl_group *n = g->nccl;
  if (!n) return;
  if (n->comm) ncclCommDestroy(n->comm);
  if (n->inputs_ready) cudaEventDestroy(n->inputs_ready);
  if (n->stream) cudaStreamDestroy(n->stream);
  free(n);
  g->nccl = NULL;
}

// The group's stream waits for all compute queued so far (see the top of the file).
static int begin(const lt_group *g, nccl_group **out) {
  nccl_group *n = g->nccl;
  LT_CHECK(n, LT_ERR_INTERNAL, "the %s group has no NCCL communicator (lt_mesh_init_nccl)",
           g->name);
  CUDA_TRY("recording an event", g, cudaEventRecord(n->inputs_ready, cudaStreamLegacy));
  CUDA_TRY("waiting for an event", g, cudaStreamWaitEvent(n->stream, n->inputs_ready, 0));
  *out = n;
  return LT_OK;
}

// Marks the call's end; a blocking call (request NULL) waits for it here.
static int finish(const lt_group *g, nccl_group *n, const char *op, lt_request *request) {
  cudaEvent_t done;
  CUDA_TRY("creating an event", g, cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  CUDA_TRY("recording an event", g, cudaEventRecord(done, n->stream));
  lt_request blocking = {.op = op, .group = g};
  lt_request *r = request ? request : &blocking;
  r->event = done;
  return request ? LT_OK : lt_nccl_wait(r);
}

int lt_nccl_wait(lt_request *request) {
  cudaEvent_t done = request->event;
  request->event = NULL;
  lt_watch_begin(request->op, request->group->name);
  cudaError_t err = cudaEventSynchronize(done);
  lt_watch_end();
  cudaEventDestroy(done);
  CUDA_TRY("waiting for a transfer", request->group, err);
  // A transfer that failed inside NCCL (a peer's network error) reports here.
  ncclResult_t async;
  NCCL_TRY(request->op, request->group,
           ncclCommGetAsyncError(((nccl_group *)request->group->nccl)->comm, &async));
  NCCL_TRY(request->op, request->group, async);
  return LT_OK;
}

int lt_nccl_test(lt_request *request, bool *done) {
  cudaError_t err = cudaEventQuery(request->event);
  *done = err == cudaSuccess;
  if (err == cudaErrorNotReady) return LT_OK;
  CUDA_TRY("querying a transfer", request->group, err);
  return LT_OK;
}

int lt_nccl_all_reduce(const lt_group *g, lt_tensor t, bool max, const char *op,
                       lt_request *request) {
  ncclDataType_t type = ncclFloat32;
  nccl_group *n;
  LT_TRY(nccl_type(g, t.dtype, true, &type));
  LT_TRY(begin(g, &n));
  NCCL_TRY(op, g,
           ncclAllReduce(t.data, t.data, (size_t)lt_numel(t), type, max ? ncclMax : ncclSum,
                         n->comm, n->stream));
  return finish(g, n, op, request);
}

int lt_nccl_all_gather(const lt_group *g, lt_tensor out, lt_tensor in) {
  ncclDataType_t type = ncclFloat32;
  nccl_group *n;
  LT_TRY(nccl_type(g, in.dtype, false, &type));
  LT_TRY(begin(g, &n));
  // In place when `in` is this rank's part of `out`, which NCCL accepts as it is.
  NCCL_TRY("all-gather", g,
           ncclAllGather(in.data, out.data, (size_t)lt_numel(in), type, n->comm, n->stream));
  return finish(g, n, "all-gather", NULL);
}

int lt_nccl_reduce_scatter(const lt_group *g, lt_tensor out, lt_tensor in, const int64_t *counts,
                           lt_request *request) {
  ncclDataType_t type = ncclFloat32;
  nccl_group *n;
  LT_TRY(nccl_type(g, in.dtype, true, &type));
  LT_TRY(begin(g, &n));
  if (!counts) {
    NCCL_TRY("reduce-scatter", g,
             ncclReduceScatter(in.data, out.data, (size_t)lt_numel(out), type, ncclSum, n->comm,
                               n->stream));
    return finish(g, n, "reduce-scatter", request);
  }
  // Uneven parts: NCCL's reduce-scatter takes equal ones, so each part is reduced to its owner,
  // all in one NCCL group (one launch, run concurrently).
  const size_t elem = lt_dtype_size(in.dtype);
  size_t at = 0;
  NCCL_TRY("reduce-scatter", g, ncclGroupStart());
  for (int r = 0; r < g->size; r++) {
    if (counts[r] > 0) {
      ncclResult_t rc = ncclReduce((const char *)in.data + at * elem, out.data, (size_t)counts[r],
                                   type, ncclSum, r, n->comm, n->stream);
      if (rc != ncclSuccess) {
        ncclGroupEnd();
        return nccl_failed("reduce-scatter", g, rc);
      }
    }
    at += (size_t)counts[r];
  }
  NCCL_TRY("reduce-scatter", g, ncclGroupEnd());
  return finish(g, n, "reduce-scatter", request);
}

int lt_nccl_broadcast(const lt_group *g, lt_tensor t, int root) {
  ncclDataType_t type = ncclFloat32;
  nccl_group *n;
  LT_TRY(nccl_type(g, t.dtype, false, &type));
  LT_TRY(begin(g, &n));
  NCCL_TRY("broadcast", g,
           ncclBroadcast(t.data, t.data, (size_t)lt_numel(t), type, root, n->comm, n->stream));
  return finish(g, n, "broadcast", NULL);
}

int lt_nccl_sendrecv(const lt_group *g, lt_tensor send, int dst, lt_tensor recv, int src,
                     lt_request *request) {
  const bool sending = send.data && dst >= 0, receiving = recv.data && src >= 0;
  LT_CHECK((!sending || send.device == LT_CUDA) && (!receiving || recv.device == LT_CUDA),
           LT_ERR_INTERNAL, "send/receive over the %s group mixes host and device tensors",
           g->name);
  ncclDataType_t send_type = ncclFloat32, recv_type = ncclFloat32;
  if (sending) LT_TRY(nccl_type(g, send.dtype, false, &send_type));
  if (receiving) LT_TRY(nccl_type(g, recv.dtype, false, &recv_type));
  nccl_group *n;
  LT_TRY(begin(g, &n));
  NCCL_TRY("send/receive", g, ncclGroupStart());
  ncclResult_t rc = ncclSuccess;
  if (sending) rc = ncclSend(send.data, (size_t)lt_numel(send), send_type, dst, n->comm, n->stream);
  if (rc == ncclSuccess && receiving)
    rc = ncclRecv(recv.data, (size_t)lt_numel(recv), recv_type, src, n->comm, n->stream);
  ncclResult_t end = ncclGroupEnd();
  NCCL_TRY("send/receive", g, rc);
  NCCL_TRY("send/receive", g, end);
  return finish(g, n, "send/receive", request);
}

#endif
