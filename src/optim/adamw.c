#include "optim/adamw.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "parallel/dp.h"
#include "parallel/mesh.h"
#include "parallel/pipeline.h"

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

static size_t clamp(size_t x, size_t lo, size_t hi) {
  return x < lo ? lo : x > hi ? hi : x;
}

// Consecutive trained parameters with the same decay, and the padding between them (all zero, so
// AdamW leaves it zero), form one run: the whole buffer is updated in one pass of a few runs. A
// frozen parameter is in no run, so the update leaves it alone. Runs cover the AdamW state this
// process keeps (all of it, or its ZeRO-1 shard, where a parameter may begin or end mid-way:
// AdamW is elementwise, so updating it in parts computes what updating it whole does) and count
// from that state's start.
static int build_runs(lt_optimizer *opt) {
  const lt_params *params = opt->params;
  const size_t lo = params->state_start, hi = lo + params->state_numel;
  opt->runs = calloc((size_t)params->count + 1, sizeof *opt->runs);
  LT_CHECK(opt->runs, LT_ERR_MEMORY, "out of memory creating the optimizer");
  bool extend = false; // whether the previous parameter ended a run this one may continue
  for (int i = 0; i < params->count; i++) {
    const lt_param_info *p = &params->info[i];
    const size_t start = clamp(p->offset, lo, hi),
                 end = clamp(p->offset + (size_t)p->numel, lo, hi);
    if (opt->frozen[i] || end == start) {
      extend = false;
      continue;
    }
    float wd = decays(p, &opt->cfg) ? (float)opt->cfg.weight_decay : 0.0f;
    lt_adamw_run *last = opt->n_runs ? &opt->runs[opt->n_runs - 1] : NULL;
    if (extend && last->weight_decay == wd)
      last->numel = (int64_t)(end - lo) - last->start;
    else
      opt->runs[opt->n_runs++] = (lt_adamw_run){
          .start = (int64_t)(start - lo), .numel = (int64_t)(end - start), .weight_decay = wd};
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

static lt_tensor flat_part(const lt_params *p, float *buffer, size_t start, size_t end) {
  return lt_view1(buffer + start, LT_F32, p->device, (int64_t)(end - start));
}

// This rank's part of the squared norm: its shard of the gradient buffer (zero padding included)
// without its copies of parameters that another process counts (lt_param_is_copy). Each
// uninterrupted run is one sum, so a single process sums its whole buffer at once.
static int shard_sum_squares(lt_ctx *ctx, const lt_params *p, double *sum) {
  const size_t lo = p->shard_start, hi = lo + p->shard_numel;
  size_t run = lo;
  *sum = 0.0;
  for (int i = 0; i <= p->count; i++) {
    const lt_param_info *info = i < p->count ? &p->info[i] : NULL;
    if (info && !lt_param_is_copy(p, info)) continue;
    const size_t cut = info ? clamp(info->offset, lo, hi) : hi;
    if (cut > run) {
      double part;
      LT_TRY(lt_sum_squares(ctx, &part, flat_part(p, p->grad, run, cut)));
      *sum += part;
    }
    if (info) run = clamp(info->offset + (size_t)info->numel, run, hi);
  }
  return LT_OK;
}

int lt_grad_norm(lt_ctx *ctx, const lt_params *params, double *norm) {
  double sum;
  LT_TRY(shard_sum_squares(ctx, params, &sum));
  // Every element is counted by exactly one rank: the data-parallel copies by their shards, the
  // parameters several processes hold whole (tp replicas, a tied embedding's pipeline copy) by
  // one of them, and each pipeline stage its own layers.
  if (params->mesh) LT_TRY(lt_all_reduce_sum_f64(&params->mesh->world, &sum, 1));
  *norm = sqrt(sum);
  return LT_OK;
}

int lt_optimizer_step(lt_optimizer *opt, lt_ctx *ctx, double lr, double *grad_norm) {
  lt_params *p = opt->params;
  for (int i = 0; i < p->count && opt->n_frozen; i++) {
    const lt_param_info *info = &p->info[i];
    if (opt->frozen[i])
      LT_TRY(lt_zero(ctx, flat_part(p, p->grad, info->offset, info->offset + (size_t)info->numel)));
  }
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
  lt_profile_mark(ctx, "(idle) the host reading the gradient norm");
  lt_adamw_args args = {.lr = (float)lr,
                        .beta1 = (float)opt->cfg.beta1,
                        .beta2 = (float)opt->cfg.beta2,
                        .eps = (float)opt->cfg.eps,
                        .grad_scale = clip,
                        .step = opt->step,
                        .runs = opt->runs,
                        .n_runs = opt->n_runs};
  // The AdamW state this process keeps: the whole buffer, or under ZeRO-1 its shard (the runs
  // count from its start).
  const size_t lo = p->state_start, n = p->state_numel;
  lt_tensor compute = {0}; // the CPU computes on the master weights themselves
  if (p->compute != p->master) {
    const lt_dtype dt = p->device == LT_CUDA ? LT_BF16 : LT_F32;
    compute = lt_view1((char *)p->compute + lo * lt_dtype_size(dt), dt, p->device, (int64_t)n);
  }
  LT_TRY(lt_adamw(ctx, flat_part(p, p->master, lo, lo + n), flat_part(p, p->grad, lo, lo + n),
                  flat_part(p, p->adam_m, 0, n), flat_part(p, p->adam_v, 0, n), compute, &args));
  if (!(p->mesh && p->mesh->parallel.zero)) return LT_OK;
  // ZeRO-1: every rank gets every shard's new weights, and the compute copy follows them.
  LT_TRY(lt_dp_gather_weights(p));
  return lt_params_sync_compute(p);
}
