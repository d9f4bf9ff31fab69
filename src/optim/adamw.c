#include "optim/adamw.h"

#include <math.h>
#include <stdlib.h>

#include "core/error.h"

// Weight decay applies to matrices, not to norm gains; the embedding is a matrix but, as in
// Megatron and most Llama recipes, is excluded unless train.decay_embeddings is set.
static bool decays(const lt_param_info *p, const lt_train_config *cfg) {
  if (p->spec.group == LT_GROUP_NORM || p->ndim < 2) return cfg->decay_norms;
  if (p->spec.group == LT_GROUP_EMBED) return cfg->decay_embeddings;
  return true;
}

// Consecutive parameters with the same decay, and the padding between them (all zero, so AdamW
// leaves it zero), form one run: the whole buffer is updated in one pass of a few runs.
int lt_optimizer_create(lt_optimizer *opt, lt_params *params, const lt_train_config *cfg) {
  *opt = (lt_optimizer){.cfg = *cfg, .params = params};
  opt->runs = calloc((size_t)params->count + 1, sizeof *opt->runs);
  LT_CHECK(opt->runs, LT_ERR_MEMORY, "out of memory creating the optimizer");
  for (int i = 0; i < params->count; i++) {
    const lt_param_info *p = &params->info[i];
    float wd = decays(p, cfg) ? (float)cfg->weight_decay : 0.0f;
    int64_t end = (int64_t)p->offset + p->numel;
    if (opt->n_runs > 0 && opt->runs[opt->n_runs - 1].weight_decay == wd) {
      lt_adamw_run *last = &opt->runs[opt->n_runs - 1];
      last->numel = end - last->start;
    } else {
      int64_t start =
          opt->n_runs ? opt->runs[opt->n_runs - 1].start + opt->runs[opt->n_runs - 1].numel : 0;
      opt->runs[opt->n_runs++] =
          (lt_adamw_run){.start = start, .numel = end - start, .weight_decay = wd};
    }
  }
  return LT_OK;
}

void lt_optimizer_destroy(lt_optimizer *opt) {
  free(opt->runs);
  *opt = (lt_optimizer){0};
}

int lt_grad_norm(lt_ctx *ctx, const lt_params *params, double *norm) {
  double sum = 0.0;
  lt_tensor all = lt_view1(params->grad, LT_F32, params->device, (int64_t)params->numel);
  LT_TRY(lt_sum_squares(ctx, &sum, all)); // padding between parameters is zero
  *norm = sqrt(sum);
  return LT_OK;
}

int lt_optimizer_step(lt_optimizer *opt, lt_ctx *ctx, double lr, double *grad_norm) {
  LT_TRY(lt_grad_norm(ctx, opt->params, grad_norm));
  LT_CHECK(isfinite(*grad_norm), LT_ERR_NUMERIC,
           "the gradient norm is %g at step %lld: lower train.lr or raise train.warmup, or resume "
           "from an earlier checkpoint",
           *grad_norm, (long long)opt->step + 1);
  // As torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (norm + 1e-6)).
  float clip = 1.0f;
  if (opt->cfg.clip_norm > 0) {
    double coef = opt->cfg.clip_norm / (*grad_norm + 1e-6);
    if (coef < 1.0) clip = (float)coef;
  }
  opt->step++;
  lt_params *p = opt->params;
  lt_adamw_args args = {.lr = (float)lr,
                        .beta1 = (float)opt->cfg.beta1,
                        .beta2 = (float)opt->cfg.beta2,
                        .eps = (float)opt->cfg.eps,
                        .grad_scale = clip,
                        .step = opt->step,
                        .runs = opt->runs,
                        .n_runs = opt->n_runs};
  const int64_t n = (int64_t)p->numel;
  lt_tensor master = lt_view1(p->master, LT_F32, p->device, n);
  lt_tensor compute = {0}; // the CPU computes on the master weights themselves
  if (p->compute != p->master)
    compute = lt_view1(p->compute, p->device == LT_CUDA ? LT_BF16 : LT_F32, p->device, n);
  return lt_adamw(ctx, master, lt_view1(p->grad, LT_F32, p->device, n),
                  lt_view1(p->adam_m, LT_F32, p->device, n),
                  lt_view1(p->adam_v, LT_F32, p->device, n), compute, &args);
}
