// The optimizer step: global gradient norm, clipping, and AdamW on the fp32 master weights.
#ifndef LT_OPTIM_ADAMW_H
#define LT_OPTIM_ADAMW_H

#include "core/config.h"
#include "kernels/kernels.h"
#include "model/params.h"

typedef struct lt_optimizer {
  lt_train_config cfg;
  lt_params *params;
  bool *frozen; // per parameter: left out of training (train.freeze)
  int n_frozen;
  lt_adamw_run *runs; // the trained parameters as stretches of one weight decay: one fused update
  int n_runs;
  int64_t step; // optimizer steps taken so far
} lt_optimizer;

// Fails with LT_ERR_CONFIG when an entry of cfg->freeze matches no parameter, or all of them.
int lt_optimizer_create(lt_optimizer *opt, lt_params *params, const lt_train_config *cfg);
void lt_optimizer_destroy(lt_optimizer *opt);
// Global L2 norm of all gradients (before clipping): of the whole model, over every rank of the
// mesh (each element counted once: lt_params.shard_*, lt_param_is_copy), the same bits on
// every rank. A NaN or infinity anywhere makes it non-finite everywhere.
int lt_grad_norm(lt_ctx *ctx, const lt_params *params, double *norm);
// One step at learning rate `lr`: clips to cfg.clip_norm by the global norm, updates every
// parameter that is not frozen, refreshes the compute copy. Frozen parameters' gradients are
// zeroed first, so they count for nothing in the norm. *grad_norm receives the norm before
// clipping; a non-finite norm is an error (on every rank) and leaves the weights untouched.
// Under ZeRO-1 (params->state_*) it updates this rank's shard, then all-gathers the weights.
int lt_optimizer_step(lt_optimizer *opt, lt_ctx *ctx, double lr, double *grad_norm);

#endif
