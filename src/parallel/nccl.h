// The device half of the collectives (CUDA builds only): the same operations as mesh.h on device
// tensors, through the group's NCCL communicator. collectives.c calls these when a tensor lives
// on the GPU; nothing else should.
#ifndef LT_NCCL_H
#define LT_NCCL_H

#ifdef LT_WITH_CUDA

#include "parallel/mesh.h"

// Bootstraps g->nccl over the group's MPI communicator: ncclGetUniqueId on its rank 0, MPI_Bcast,
// ncclCommInitRank. Needs the GPU chosen (cudaSetDevice) first.
int lt_nccl_group_init(lt_group *g);
void lt_nccl_group_destroy(lt_group *g);

// With request == NULL these return when the transfer is done; otherwise lt_wait finishes it.
int lt_nccl_all_reduce(const lt_group *g, lt_tensor t, bool max, const char *op,
                       lt_request *request);
int lt_nccl_all_gather(const lt_group *g, lt_tensor out, lt_tensor in);
// counts == NULL: equal parts (numel(out) each).
int lt_nccl_reduce_scatter(const lt_group *g, lt_tensor out, lt_tensor in, const int64_t *counts,
                           lt_request *request);
int lt_nccl_broadcast(const lt_group *g, lt_tensor t, int root);
int lt_nccl_sendrecv(const lt_group *g, lt_tensor send, int dst, lt_tensor recv, int src,
                     lt_request *request);
int lt_nccl_wait(lt_request *request);
int lt_nccl_test(lt_request *request, bool *done);

#endif
#endif
