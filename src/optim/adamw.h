// The optimizer step: global gradient norm, clipping, and AdamW on the fp32 master weights.
#ifndef LT_OPTIM_ADAMW_H
#define LT_OPTIM_ADAMW_H

#include "core/config.h"
#include "kernels/kernels.h"
#include "model/params.h"

typedef struct lt_optimizer {
  lt_train_config cfg;
  lt_params *params;
  lt_adamw_run *runs; // the flat buffer as stretches of one weight decay, for one fused update
  int n_runs;
  int64_t step; // optimizer steps taken so far
} lt_optimizer;

int lt_optimizer_create(lt_optimizer *opt, lt_params *params, const lt_train_config *cfg);
void lt_optimizer_destroy(lt_optimizer *opt);
// Global L2 norm of all gradients (before clipping).
int lt_grad_norm(lt_ctx *ctx, const lt_params *params, double *norm);
// One step at learning rate `lr`: clips to cfg.clip_norm by the global norm, updates every
// parameter, refreshes the compute copy. *grad_norm receives the norm before clipping; a
// non-finite norm is an error and leaves the weights untouched.
int lt_optimizer_step(lt_optimizer *opt, lt_ctx *ctx, double lr, double *grad_norm);

#endif
