// The device mesh: the world's ranks as a dp x pp x cp x tp grid (tp innermost, so a tensor-
// parallel group is made of neighbouring ranks), with one communicator per axis. A layer asks for
// "all-reduce over tp" through the group it was given; it never names MPI or NCCL.
#ifndef LT_MESH_H
#define LT_MESH_H

#include <mpi.h>

#include "core/config.h"
#include "core/tensor.h"
#include "parallel/comm.h"

typedef enum lt_axis { LT_AXIS_DP, LT_AXIS_PP, LT_AXIS_CP, LT_AXIS_TP, LT_N_AXES } lt_axis;

// The ranks that differ only along some axes, as one communicator.
typedef struct lt_group {
  char name[16]; // "dp", "tp", "dp*cp", ... for messages
  int rank, size;
  MPI_Comm comm; // MPI_COMM_NULL when size == 1 or without MPI
  void *nccl;    // the NCCL communicator for device buffers (CUDA builds), or NULL
} lt_group;

typedef struct lt_mesh {
  int world_rank, world_size;
  int size[LT_N_AXES];  // dp, pp, cp, tp
  int coord[LT_N_AXES]; // this rank's place along each axis
  lt_group world;
  lt_group axis[LT_N_AXES];
  lt_group dp_cp; // where replicated parameters' gradients are summed: data and context parallel
  // The first and the last pipeline stage (Megatron's embedding group): a tied embedding lives on
  // both, and its gradient is summed here. Size 1 on the stages between and without pipelining.
  lt_group embed;
  lt_parallel_config parallel; // what the mesh was built from (the pipeline's layer split)
} lt_mesh;

// Splits the world as `cfg` says. The product of the sizes must be the world's size: otherwise a
// config error naming the keys and how many ranks were started.
int lt_mesh_create(lt_mesh *mesh, const lt_world *world, const lt_parallel_config *cfg);
// A world of one process: every group has size 1 and no communicator.
void lt_mesh_single(lt_mesh *mesh);
#ifdef LT_WITH_CUDA
// Gives every group of more than one rank its NCCL communicator (parallel/nccl.c), after the
// CUDA context has chosen this rank's GPU. Device tensors need it; host tensors never do.
int lt_mesh_init_nccl(lt_mesh *mesh);
#endif
void lt_mesh_destroy(lt_mesh *mesh);
// The world rank at the given coordinates.
int lt_mesh_rank_of(const lt_mesh *mesh, const int coord[LT_N_AXES]);

// Collectives over a group, on host tensors through MPI and on device tensors through NCCL (CUDA
// builds; the group's NCCL communicator from lt_mesh_init_nccl). A group of size 1 returns at
// once, so single-process runs never touch MPI. Reductions take f32 (and bf16 on the device; sum
// or max); gathers and point-to-point move any dtype. Every wait is watched: one that outlasts
// parallel.timeout_s ends the job (parallel/watchdog.h).

// t = sum (or max) of every rank's t, in place.
int lt_all_reduce_sum(const lt_group *g, lt_tensor t);
int lt_all_reduce_max(const lt_group *g, lt_tensor t);
// out = the ranks' `in` concatenated in rank order (out holds size * numel(in) elements). `in`
// may be this rank's own place in `out` (an in-place gather).
int lt_all_gather(const lt_group *g, lt_tensor out, lt_tensor in);
// out = this rank's 1/size slice (in rank order) of the sum of every rank's `in`.
int lt_reduce_scatter_sum(const lt_group *g, lt_tensor out, lt_tensor in);
int lt_broadcast(const lt_group *g, lt_tensor t, int root);
// values[0..n) = their sum over the group, on the host, added in rank order: every rank gets the
// same bits, whatever MPI's reduction algorithm (losses, token counts, the gradient norm).
int lt_all_reduce_sum_f64(const lt_group *g, double *values, int n);

// Started calls complete in lt_wait, so communication can overlap compute: start, compute, wait.
typedef struct lt_request {
  MPI_Request req[2];
  int n;
  int *counts;    // a host reduce-scatter's parts: MPI may read them until the call completes
  void *event;    // a device call: the CUDA event recorded where it ends (parallel/nccl.c)
  const char *op; // for the watchdog's and errors' messages
  const lt_group *group;
} lt_request;

// Non-blocking forms. All-reduce: t summed over the group, in place. Reduce-scatter with
// uneven parts: in holds counts[r] elements for each rank r in rank order, and rank r's `out`
// (counts[r] elements, not inside `in`) receives the sum of every rank's part r.
int lt_start_all_reduce_sum(const lt_group *g, lt_tensor t, lt_request *request);
int lt_start_reduce_scatter_sum(const lt_group *g, lt_tensor out, lt_tensor in,
                                const int64_t *counts, lt_request *request);

// Point to point, for rings (context parallel) and pipelines. Either side may be absent
// (data == NULL, or rank < 0).
int lt_start_sendrecv(const lt_group *g, lt_tensor send, int dst, lt_tensor recv, int src,
                      lt_request *request);
int lt_wait(lt_request *request);
// Whether a started call has completed (it still needs lt_wait); lets MPI progress it meanwhile.
int lt_test(lt_request *request, bool *done);
int lt_sendrecv(const lt_group *g, lt_tensor send, int dst, lt_tensor recv, int src);

#endif
