// Tensor parallelism (Megatron-LM: Shoeybi et al. 2019, "Megatron-LM: Training Multi-Billion
// Parameter Language Models Using Model Parallelism", section 3).
//
// A block's two sublayers are each split over the tp ranks of the mesh: the projections that read
// the residual stream are column-parallel (q|k|v, the linear gate u, gate|up: each rank holds the
// rows of its heads or hidden units), the projections that write back into it are row-parallel
// (wo, w_down: the matching columns). Between them every rank computes its heads or hidden units
// alone. Two conjugate operations join the halves (the paper's "f" and "g", Megatron-core's
// copy_to_ / reduce_from_tensor_model_parallel_region):
//
//   x --f--> column-parallel --> local heads / hidden units --> row-parallel --g--> out
//   f: forward identity (x is the same on every rank), backward all-reduce of dx
//   g: forward all-reduce of the partial outputs, backward identity
//
// The vocabulary is split the same way: the embedding and the LM head hold vocab / tp rows each
// (layers/embedding.c, layers/lm_head.c). Layers ask this module for these operations; they never
// call MPI or NCCL themselves. With one process, or tp = 1, every operation is a no-op.
#ifndef LT_TP_H
#define LT_TP_H

#include <stdbool.h>

#include "kernels/kernels.h"
#include "model/params.h"
#include "parallel/mesh.h"

// The tensor-parallel split a layer was built under.
typedef struct lt_tp {
  const lt_group *group; // the mesh's tp group; NULL when the layer is whole on this process
  int rank, size;
} lt_tp;

// The split of a model whose parameters register in `params`: the tp axis of params->mesh (which
// must outlive the layers), or none.
lt_tp lt_tp_of(const lt_params *params);

// This rank's contiguous share of n items (heads, hidden units, vocab rows): count = n / size
// from start = rank * count. n is a multiple of size (lt_config_validate_tp).
int64_t lt_tp_count(const lt_tp *tp, int64_t n);
int64_t lt_tp_start(const lt_tp *tp, int64_t n);

// `spec` for a parameter split over tp along dimension `dim` (`length` elements in the whole
// tensor): this rank's shard of it. Column-parallel weights split dim 0 (their output rows),
// row-parallel ones dim 1 (their input columns). Unchanged without a split.
lt_param_spec lt_tp_shard(lt_param_spec spec, const lt_tp *tp, int dim, int64_t length);

// g, forward: the row-parallel projection's partial outputs summed over tp (in place). Every rank
// gets the same bits (the all-reduce algorithms of Open MPI and NCCL combine each element alike
// for all ranks), which the whole routers of MoE and MoH rely on: the same input on every rank
// routes alike (tests/mpi/test_tp.c checks routed models at tp 2 and 4).
int lt_tp_reduce_output(const lt_tp *tp, lt_tensor out);
// f, backward: the column-parallel projections' partial input gradients summed over tp.
int lt_tp_reduce_input_grad(const lt_tp *tp, lt_tensor dx);
// Statistics completed over tp (a row's sum of squares, a logit maximum): sum or max, in place.
int lt_tp_all_reduce_sum(const lt_tp *tp, lt_tensor t);
int lt_tp_all_reduce_max(const lt_tp *tp, lt_tensor t);

// Megatron-core's scatter_to_ and gather_from_tensor_model_parallel_region, on the last
// dimension of (rows, columns) host tensors: each rank's part is its contiguous columns.
// split: out (rows, C) = this rank's columns of in (rows, C * size), no communication.
int lt_tp_split_last_dim(const lt_tp *tp, lt_tensor out, lt_tensor in);
// gather: out (rows, C * size) = every rank's in (rows, C) side by side, in rank order.
int lt_tp_gather_last_dim(const lt_tp *tp, lt_tensor out, lt_tensor in);

#endif
