#include "optim/adamw.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "parallel/mesh.h"
#include "parallel/pipeline.h"
#include "parallel/tp.h"

// Weight decay applies to matrices, not to norm gains; the embedding is a matrix but, as in
// Megatron and most Llama recipes, is excluded unless train.decay_embeddings is set.
static bool decays(const lt_param_info *p, const lt_train_config *cfg) {
  if (p->spec.group == LT_GROUP_NORM || p->ndim < 2) return cfg->decay_norms;
  if (p->spec.group == LT_GROUP_EMBED) return cfg->decay_embeddings;
  return true;
}

// train.freeze: each comma-separated entry is a group name or a prefix of parameter names. Under
// pipeline parallelism each stage holds some of the parameters: the counts are the pipeline's.
static int parse_freeze(lt_optimizer *opt, const char *spec) {
  const lt_params *params = opt->params;
  for (const char *p = spec; *p;) {
    size_t len = strcspn(p, ",");
    char entry[256];
    snprintf(entry, sizeof entry, "%.*s", (int)len, p);
    p += len + (p[len] == ',');
    if (!entry[0]) continue;
    double matched = 0;
    for (int i = 0; i < params->count; i++) {
      const lt_param_info *info = &params->info[i];
      bool hit = strcmp(lt_param_group_name(info->spec.group), entry) == 0 ||
                 strncmp(info->name, entry, strlen(entry)) == 0;
      if (hit) matched++, opt->frozen[i] = true;
    }
    LT_TRY(lt_pipeline_sum(params, &matched, 1));
    LT_CHECK(matched > 0, LT_ERR_CONFIG,
             "train.freeze: '%s' is neither a parameter group (embed, norm, attn, ffn, head) nor "
             "the start of a parameter name (e.g. layers.0.)",
             entry);
  }
  for (int i = 0; i < params->count; i++) opt->n_frozen += opt->frozen[i];
  double counts[2] = {opt->n_frozen, params->count};
  LT_TRY(lt_pipeline_sum(params, counts, 2));
  LT_CHECK(counts[0] < counts[1], LT_ERR_CONFIG,
           "train.freeze: '%s' freezes every parameter, so nothing would train: freeze fewer",
           spec);
  return LT_OK;
}

// Consecutive trained parameters with the same decay, and the padding between them (all zero, so
// AdamW leaves it zero), form one run: the whole buffer is updated in one pass of a few runs. A
// frozen parameter is in no run, so the update leaves it alone.
static int build_runs(lt_optimizer *opt) {
  const lt_params *params = opt->params;
  opt->runs = calloc((size_t)params->count + 1, sizeof *opt->runs);
  LT_CHECK(opt->runs, LT_ERR_MEMORY, "out of memory creating the optimizer");
  bool extend = false; // whether the previous parameter ended a run this one may continue
  for (int i = 0; i < params->count; i++) {
    const lt_param_info *p = &params->info[i];
    if (opt->frozen[i]) {
      extend = false;
      continue;
    }
    float wd = decays(p, &opt->cfg) ? (float)opt->cfg.weight_decay : 0.0f;
    int64_t end = (int64_t)p->offset + p->numel;
    lt_adamw_run *last = opt->n_runs ? &opt->runs[opt->n_runs - 1] : NULL;
    if (extend && last->weight_decay == wd)
      last->numel = end - last->start;
    else
      opt->runs[opt->n_runs++] =
          (lt_adamw_run){.start = (int64_t)p->offset, .numel = p->numel, .weight_decay = wd};
    extend = true;
  }
  return LT_OK;
}

int lt_optimizer_create(lt_optimizer *opt, lt_params *params, const lt_train_config *cfg) {
  *opt = (lt_optimizer){.cfg = *cfg, .params = params};
  opt->frozen = calloc((size_t)params->count, sizeof *opt->frozen);
  LT_CHECK(opt->frozen, LT_ERR_MEMORY, "out of memory creating the optimizer");
  LT_TRY(parse_freeze(opt, cfg->freeze));
  return build_runs(opt);
}

void lt_optimizer_destroy(lt_optimizer *opt) {
  free(opt->runs);
  free(opt->frozen);
  *opt = (lt_optimizer){0};
}

static lt_tensor param_part(const lt_params *p, const lt_param_info *info, float *buffer) {
  return lt_view1(buffer + info->offset, LT_F32, p->device, info->numel);
}

int lt_grad_norm(lt_ctx *ctx, const lt_params *params, double *norm) {
  double sum = 0.0;
  // The whole model's: each process sums the gradients it counts (a tensor-parallel copy on its
  // first tp rank only, a tied embedding's pipeline copy on the first stage only), then the sums
  // of the tp ranks and of the pipeline stages are added.
  for (int i = 0; i < params->count; i++) {
    const lt_param_info *p = &params->info[i];
    if (p->spec.pipeline_copy || lt_tp_duplicate(params, p)) continue;
    double squares;
    LT_TRY(lt_sum_squares(ctx, &squares,
                          lt_view1(params->grad + p->offset, LT_F32, params->device, p->numel)));
    sum += squares;
  }
  if (params->mesh) {
    LT_TRY(lt_all_reduce_sum_f64(&params->mesh->axis[LT_AXIS_TP], &sum, 1));
    LT_TRY(lt_all_reduce_sum_f64(&params->mesh->axis[LT_AXIS_PP], &sum, 1));
  }
  *norm = sqrt(sum);
  return LT_OK;
}

int lt_optimizer_step(lt_optimizer *opt, lt_ctx *ctx, double lr, double *grad_norm) {
  lt_params *p = opt->params;
  for (int i = 0; i < p->count && opt->n_frozen; i++)
    if (opt->frozen[i]) LT_TRY(lt_zero(ctx, param_part(p, &p->info[i], p->grad)));
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
