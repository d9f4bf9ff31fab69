#include "parallel/dp.h"

#include <stdlib.h>

#include "core/device.h"
#include "core/error.h"

static size_t max_size(size_t a, size_t b) {
  return a > b ? a : b;
}

static size_t min_size(size_t a, size_t b) {
  return a < b ? a : b;
}

int lt_dp_create(lt_dp *dp, lt_params *params, double bucket_mb) {
  const lt_mesh *mesh = params->mesh;
  *dp = (lt_dp){.params = params};
  if (!mesh || mesh->dp_cp.size == 1 || params->count == 0) return LT_OK;
  dp->group = &mesh->dp_cp;
  dp->zero = params->state_numel < params->numel;
  dp->buckets = calloc((size_t)params->count, sizeof *dp->buckets);
  LT_CHECK(dp->buckets, LT_ERR_MEMORY, "out of host memory planning the gradient buckets");
  // From the last parameter back: a bucket closes once it holds bucket_mb, and the first
  // parameter closes the last one. Buckets tile the buffer, padding included.
  const double target = bucket_mb * 1024.0 * 1024.0 / sizeof(float);
  size_t end = params->numel;
  for (int i = params->count - 1; i >= 0; i--) {
    const size_t start = i == 0 ? 0 : params->info[i].offset;
    if ((double)(end - start) < target && i > 0) continue;
    dp->buckets[dp->n_buckets++] = (lt_dp_bucket){.start = start, .end = end, .first_param = i};
    end = start;
  }
  if (!dp->zero) return LT_OK;
  dp->counts = malloc((size_t)dp->group->size * sizeof *dp->counts);
  LT_CHECK(dp->counts, LT_ERR_MEMORY, "out of host memory planning the gradient buckets");
  return lt_device_alloc(params->device, params->shard_numel * sizeof(float),
                         "the ZeRO-1 gradient shard", (void **)&dp->shard_grad);
}

void lt_dp_destroy(lt_dp *dp) {
  if (dp->shard_grad) lt_device_free(dp->params->device, dp->shard_grad);
  free(dp->buckets);
  free(dp->counts);
  *dp = (lt_dp){0};
}

static int start_bucket(lt_dp *dp, lt_dp_bucket *b) {
  const lt_params *p = dp->params;
  lt_tensor grads = lt_view1(p->grad + b->start, LT_F32, p->device, (int64_t)(b->end - b->start));
  if (!dp->zero) return lt_start_all_reduce_sum(dp->group, grads, &b->request);
  // Rank r receives the part of the bucket inside its shard [r S, (r + 1) S).
  const size_t shard = p->shard_numel;
  for (int r = 0; r < dp->group->size; r++) {
    const size_t lo = max_size(b->start, (size_t)r * shard);
    const size_t hi = min_size(b->end, (size_t)(r + 1) * shard);
    dp->counts[r] = hi > lo ? (int64_t)(hi - lo) : 0;
  }
  const size_t mine = max_size(b->start, p->shard_start) - p->shard_start;
  lt_tensor out = lt_view1(dp->shard_grad + (dp->counts[dp->group->rank] ? mine : 0), LT_F32,
                           p->device, dp->counts[dp->group->rank]);
  return lt_start_reduce_scatter_sum(dp->group, out, grads, dp->counts, &b->request);
}

int lt_dp_grads_ready(void *arg, int first) {
  lt_dp *dp = arg;
  while (dp->n_started < dp->n_buckets && dp->buckets[dp->n_started].first_param >= first)
    LT_TRY(start_bucket(dp, &dp->buckets[dp->n_started++]));
  // MPI moves a started transfer along only inside MPI calls: look at each while backward runs.
  for (int i = 0; i < dp->n_started; i++) {
    bool done;
    LT_TRY(lt_test(&dp->buckets[i].request, &done));
  }
  return LT_OK;
}

int lt_dp_finish(lt_dp *dp) {
  if (dp->n_buckets == 0) return LT_OK;
  LT_TRY(lt_dp_grads_ready(dp, 0));
  for (int i = 0; i < dp->n_buckets; i++) LT_TRY(lt_wait(&dp->buckets[i].request));
  dp->n_started = 0;
  if (!dp->zero) return LT_OK;
  lt_params *p = dp->params;
  return lt_device_copy(p->grad + p->shard_start, p->device, dp->shard_grad, p->device,
                        p->shard_numel * sizeof(float));
}

int lt_dp_gather_weights(lt_params *params) {
  if (!params->mesh || params->state_numel == params->numel) return LT_OK;
  lt_tensor all = lt_view1(params->master, LT_F32, params->device, (int64_t)params->numel);
  lt_tensor mine = lt_view1(params->master + params->shard_start, LT_F32, params->device,
                            (int64_t)params->shard_numel);
  return lt_all_gather(&params->mesh->dp_cp, all, mine);
}
