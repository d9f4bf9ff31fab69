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

int lt_optimizer_create(lt_optimizer *opt, lt_params *params, const lt_train_config *cfg) {
  *opt = (lt_optimizer){.cfg = *cfg, .params = params};
  opt->decay = calloc((size_t)params->count, sizeof *opt->decay);
  LT_CHECK(opt->decay, LT_ERR_MEMORY, "out of memory creating the optimizer");
  for (int i = 0; i < params->count; i++) opt->decay[i] = decays(&params->info[i], cfg);
  return LT_OK;
}

void lt_optimizer_destroy(lt_optimizer *opt) {
  free(opt->decay);
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
  for (int i = 0; i < p->count; i++) {
    const lt_param_info *info = &p->info[i];
    lt_adamw_args args = {.lr = (float)lr,
                          .beta1 = (float)opt->cfg.beta1,
                          .beta2 = (float)opt->cfg.beta2,
                          .eps = (float)opt->cfg.eps,
                          .weight_decay = opt->decay[i] ? (float)opt->cfg.weight_decay : 0.0f,
                          .grad_scale = clip,
                          .step = opt->step};
    lt_tensor view = lt_view1(NULL, LT_F32, p->device, info->numel);
    lt_tensor param = view, grad = view, m = view, v = view;
    param.data = p->master + info->offset;
    grad.data = p->grad + info->offset;
    m.data = p->adam_m + info->offset;
    v.data = p->adam_v + info->offset;
    LT_TRY(lt_adamw(ctx, param, grad, m, v, &args));
  }
  return lt_params_sync_compute(p);
}
