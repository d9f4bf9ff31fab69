#include "train/trainer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "core/error.h"
#include "core/log.h"
#include "optim/schedule.h"
#include "train/checkpoint.h"

static int allocate_batches(lt_trainer *tr) {
  size_t n = (size_t)(tr->accum * tr->micro_batch * tr->seq_len);
  int32_t **buffers[4] = {&tr->host.tokens, &tr->host.targets, &tr->host.pos, &tr->host.doc};
  const int n_buffers = tr->data->documents ? 4 : 3;
  for (int i = 0; i < n_buffers; i++) {
    *buffers[i] = malloc(n * sizeof(int32_t));
    LT_CHECK(*buffers[i], LT_ERR_MEMORY, "out of host memory for %zu batch tokens", n);
  }
  const int64_t micro_tokens = tr->micro_batch * tr->seq_len;
  tr->batch = (lt_batch){.B = tr->micro_batch, .T = tr->seq_len, .aux = &tr->aux};
  if (tr->ctx.device == LT_CPU) return LT_OK; // views of the host buffers, set per micro-step
  LT_TRY(lt_arena_create(&tr->batch_arena, tr->ctx.device,
                         (size_t)n_buffers * ((size_t)micro_tokens * 4 + 256), "batch"));
  lt_tensor *views[4] = {&tr->batch.tokens, &tr->batch.targets, &tr->batch.pos, &tr->batch.doc};
  for (int i = 0; i < n_buffers; i++)
    LT_TRY(lt_arena_alloc1(&tr->batch_arena, views[i], LT_I32, micro_tokens));
  return LT_OK;
}

int lt_trainer_create(lt_trainer *tr, const lt_config *cfg, lt_world *world) {
  *tr = (lt_trainer){.cfg = *cfg, .world = world};
  const lt_train_config *t = &tr->cfg.train;
  tr->seq_len = t->seq_len;
  tr->micro_batch = t->micro_batch ? t->micro_batch : t->batch;
  LT_CHECK(t->batch % (tr->micro_batch * world->size) == 0, LT_ERR_CONFIG,
           "%s: train.batch (%d) must be a multiple of train.micro_batch (%lld) times the %d "
           "data-parallel ranks",
           cfg->source, t->batch, (long long)tr->micro_batch, world->size);
  tr->accum = t->batch / (tr->micro_batch * world->size);
  lt_device device = cfg->run.device == LT_DEVICE_CUDA ? LT_CUDA : LT_CPU;
  LT_TRY(lt_ctx_init(&tr->ctx, device, cfg->run.threads));
  LT_TRY(lt_source_open(&tr->data, cfg, LT_SOURCE_TRAIN));
  LT_TRY(lt_source_open(&tr->val_data, cfg, LT_SOURCE_VALIDATION));
  LT_TRY(lt_model_create(&tr->model, &tr->cfg.model, device, NULL));
  LT_TRY(lt_model_plan(&tr->model, tr->micro_batch, tr->seq_len, t->recompute));
  LT_TRY(lt_optimizer_create(&tr->opt, &tr->model.params, t));
  return allocate_batches(tr);
}

void lt_trainer_destroy(lt_trainer *tr) {
  lt_metrics_close(&tr->metrics);
  free(tr->host.tokens);
  free(tr->host.targets);
  free(tr->host.pos);
  free(tr->host.doc);
  lt_arena_destroy(&tr->batch_arena);
  lt_optimizer_destroy(&tr->opt);
  lt_model_destroy(&tr->model);
  lt_source_close(tr->data);
  lt_source_close(tr->val_data);
  lt_ctx_destroy(&tr->ctx);
}

// Points tr->batch at micro-batch m of the host buffers (copying to the device if needed).
static int stage_micro_batch(lt_trainer *tr, int64_t m) {
  const int64_t n = tr->micro_batch * tr->seq_len;
  int32_t *src[4] = {tr->host.tokens, tr->host.targets, tr->host.pos, tr->host.doc};
  lt_tensor *dst[4] = {&tr->batch.tokens, &tr->batch.targets, &tr->batch.pos, &tr->batch.doc};
  for (int i = 0; i < 4; i++) {
    if (!src[i]) continue; // no document ids in stream packing: batch.doc stays empty
    if (tr->ctx.device == LT_CPU)
      *dst[i] = lt_view1(src[i] + m * n, LT_I32, LT_CPU, n);
    else
      LT_TRY(lt_tensor_from_host(*dst[i], src[i] + m * n));
  }
  return LT_OK;
}

// The target tokens among the first n of the host buffers, summed over the ranks.
static int count_targets(lt_trainer *tr, int64_t n, double *count) {
  *count = 0;
  for (int64_t i = 0; i < n; i++) *count += tr->host.targets[i] != LT_IGNORE_INDEX;
  return lt_world_allreduce_sum(tr->world, count, 1);
}

int lt_trainer_step(lt_trainer *tr, lt_step_metrics *out) {
  const int64_t n_step = tr->accum * tr->micro_batch * tr->seq_len;
  LT_TRY(lt_source_next(tr->data, tr->cfg.train.batch, tr->world->rank, tr->world->size, tr->host));
  // The loss is the mean over every target token of the step, whatever the accumulation: each
  // micro-batch's gradient is scaled by 1 / (the step's target count), known before any runs.
  double count;
  LT_TRY(count_targets(tr, n_step, &count));
  LT_CHECK(count > 0, LT_ERR_DATA, "%s: a whole step has no target tokens", tr->data->name);
  const float grad_scale = (float)(1.0 / count);
  LT_TRY(lt_params_zero_grad(&tr->model.params));
  // Auxiliary losses are means over a micro-batch's tokens already: the step's is their mean.
  tr->aux.grad_scale = (float)(1.0 / (double)tr->accum);
  double loss_sum = 0.0, aux_sum = 0.0;
  for (int64_t m = 0; m < tr->accum; m++) {
    double micro_loss;
    LT_TRY(stage_micro_batch(tr, m));
    tr->aux.sum = 0.0; // read before backward, which may run the forward again (recompute)
    LT_TRY(lt_model_forward(&tr->model, &tr->ctx, &tr->batch, true, grad_scale, &micro_loss));
    aux_sum += tr->aux.sum;
    LT_TRY(lt_model_backward(&tr->model, &tr->ctx, &tr->batch));
    loss_sum += micro_loss;
  }
  LT_TRY(lt_world_allreduce_sum(tr->world, &loss_sum, 1));
  double loss = loss_sum / count;
  LT_CHECK(isfinite(loss), LT_ERR_NUMERIC,
           "the loss is %g at step %lld: lower train.lr or raise train.warmup, or resume from an "
           "earlier checkpoint",
           loss, (long long)tr->opt.step + 1);
  double lr = lt_lr_at(&tr->cfg.train, tr->opt.step + 1), grad_norm;
  LT_TRY(lt_optimizer_step(&tr->opt, &tr->ctx, lr, &grad_norm));
  tr->tokens_seen += (int64_t)tr->cfg.train.batch * tr->seq_len;
  *out = (lt_step_metrics){.step = tr->opt.step,
                           .steps = tr->cfg.train.steps,
                           .loss = loss,
                           .aux_loss = aux_sum / (double)tr->accum,
                           .lr = lr,
                           .grad_norm = grad_norm,
                           .tokens_seen = tr->tokens_seen};
  return LT_OK;
}

int lt_trainer_eval(lt_trainer *tr, double *loss) {
  LT_ASSERT(tr->val_data);
  const int64_t n = tr->micro_batch * tr->seq_len;
  const int64_t global = tr->micro_batch * tr->world->size;
  double sums[2] = {0, 0}; // loss, target tokens
  tr->val_data->next_sample = 0;
  for (int b = 0; b < tr->cfg.train.eval_batches; b++) {
    LT_TRY(lt_source_next(tr->val_data, global, tr->world->rank, tr->world->size, tr->host));
    double micro_loss;
    LT_TRY(stage_micro_batch(tr, 0));
    LT_TRY(lt_model_forward(&tr->model, &tr->ctx, &tr->batch, false, 0.0f, &micro_loss));
    sums[0] += micro_loss;
    for (int64_t i = 0; i < n; i++) sums[1] += tr->host.targets[i] != LT_IGNORE_INDEX;
  }
  LT_TRY(lt_world_allreduce_sum(tr->world, sums, 2));
  LT_CHECK(sums[1] > 0, LT_ERR_DATA, "the validation set has no target tokens");
  *loss = sums[0] / sums[1];
  return LT_OK;
}

// A resumed run may change keys on purpose (more steps, another checkpoint.every); a changed key
// also ends bit-exactness, so each is named.
static void warn_config_differences(const lt_trainer *tr, const char *yaml, const char *dir) {
  lt_config saved;
  if (lt_config_load_string(&saved, yaml, dir, 0, NULL) != LT_OK) {
    lt_warn("resume: cannot compare the config with %s's: %s", dir, lt_error_message());
    lt_error_clear();
    return;
  }
  for (int i = 0; i < lt_config_n_keys; i++) {
    char now[LT_PATH_MAX + 8], then[LT_PATH_MAX + 8];
    lt_config_format_value(&tr->cfg, &lt_config_keys[i], now, sizeof now);
    lt_config_format_value(&saved, &lt_config_keys[i], then, sizeof then);
    if (strcmp(now, then) != 0)
      lt_warn("resume: %s is %s, but %s in the checkpoint", lt_config_keys[i].path, now, then);
  }
}

int lt_trainer_resume(lt_trainer *tr, const char *dir) {
  lt_checkpoint ck;
  LT_TRY(lt_checkpoint_open(&ck, dir));
  int rc = lt_checkpoint_read_params(&ck, &tr->model.params, true);
  if (rc == LT_OK) {
    tr->opt.step = ck.meta.step;
    tr->tokens_seen = ck.meta.tokens_seen;
    tr->data->next_sample = ck.meta.data_position;
    tr->train_seconds = ck.meta.train_seconds;
    warn_config_differences(tr, ck.meta.config_yaml, ck.dir);
  }
  lt_checkpoint_close(&ck);
  return rc;
}

int lt_trainer_save(lt_trainer *tr, double train_seconds, char *written, size_t cap) {
  // Every data-parallel rank holds the whole model: rank 0 writes it as one shard. The
  // parallelism issue adds a shard per rank for split tensors.
  if (tr->world->rank != 0) return LT_OK;
  char root[LT_PATH_MAX + 16];
  lt_checkpoint_root(tr->cfg.run.dir, root, sizeof root);
  lt_checkpoint_meta meta = {.step = tr->opt.step,
                             .tokens_seen = tr->tokens_seen,
                             .data_position = tr->data->next_sample,
                             .seed = tr->cfg.run.seed,
                             .n_params = lt_model_n_params(&tr->model),
                             .train_seconds = train_seconds};
  snprintf(meta.config_source, sizeof meta.config_source, "%s", tr->cfg.source);
  LT_TRY(lt_config_to_yaml(&tr->cfg, &meta.config_yaml));
  lt_checkpoint_writer w;
  int rc = lt_checkpoint_begin(&w, root, tr->opt.step, 0, 1);
  if (rc == LT_OK) rc = lt_checkpoint_write_params(&w, &tr->model.params, true);
  if (rc == LT_OK)
    rc = lt_checkpoint_commit(&w, &meta);
  else
    lt_checkpoint_abort(&w);
  lt_checkpoint_meta_free(&meta);
  LT_TRY(rc);
  snprintf(written, cap, "%s", w.dir);
  return lt_checkpoint_prune(root, tr->cfg.checkpoint.keep);
}
