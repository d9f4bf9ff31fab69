// Data parallelism: every rank of the dp x cp group (mesh->dp_cp) holds the same parameters and
// computes their gradients on its own tokens; the sum over the group is the gradient of the whole
// batch, since each rank's loss is already scaled by 1 / (the step's target tokens over the group).
//
// The sum is taken in buckets of about parallel.bucket_mb: runs of consecutive parameters, cut
// from the last one registered backwards, the order in which backward finishes them. The model
// reports as it goes (lt_model.grads_ready: every parameter from index `first` on has its final
// gradient), and a bucket starts reducing as soon as all of its parameters are final, so the
// reduction of the late layers overlaps the backward of the early ones: MPI_Iallreduce on the
// host, NCCL on the group's own stream on the GPU. lt_dp_finish waits for the last bucket before
// the optimizer runs. Gradient accumulation reduces once, after the last micro-batch.
//
// ZeRO-1 (parallel.zero; Rajbhandari et al. 2020, "ZeRO", stage P_os): a bucket is
// reduce-scattered instead, each rank receiving the sum over its shard of the flat buffer
// (lt_params.shard_*) only; the optimizer updates that shard of the weights and of the AdamW
// moments, which exist for it alone (optim/adamw.c), and lt_dp_gather_weights all-gathers the
// updated weights. Bucket boundaries need not match shard boundaries: a bucket's parts go to the
// ranks whose shards it overlaps (an uneven reduce-scatter).
#ifndef LT_DP_H
#define LT_DP_H

#include "model/params.h"
#include "parallel/mesh.h"

typedef struct lt_dp_bucket {
  size_t start, end; // the part [start, end) of the flat gradient buffer
  int first_param;   // its lowest parameter index: it is ready once backward is past it
  lt_request request;
} lt_dp_bucket;

typedef struct lt_dp {
  lt_params *params;
  const lt_group *group; // dp x cp: where the gradients are summed
  bool zero;
  lt_dp_bucket *buckets; // in the order backward finishes them: the last parameters first
  int n_buckets, n_started;
  float *shard_grad; // ZeRO-1: where the reduce-scatter puts this rank's shard of the sum
  int64_t *counts;   // ZeRO-1: each rank's part of the bucket being started
} lt_dp;

// Plans the buckets of params (whose mesh says the group and ZeRO); a group of one rank has none
// and every call below returns at once.
int lt_dp_create(lt_dp *dp, lt_params *params, double bucket_mb);
void lt_dp_destroy(lt_dp *dp);
// The model's grads_ready hook (arg: the lt_dp): parameters from index `first` on have their
// final gradients of this step; starts every bucket that holds only such parameters.
int lt_dp_grads_ready(void *dp, int first);
// Starts the buckets not started yet and waits for all of them. Afterwards params->grad holds the
// sum over the group: everywhere, or under ZeRO-1 over this rank's shard only (elsewhere it still
// holds this rank's own gradients, which nothing reads).
int lt_dp_finish(lt_dp *dp);
// ZeRO-1, once the optimizer has updated this rank's shard of params->master: gives every rank
// every shard. A no-op without ZeRO-1.
int lt_dp_gather_weights(lt_params *params);

#endif
