#include "train/trainer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/device.h"
#include "core/error.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "optim/schedule.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int open_data(lt_trainer *tr) {
  const lt_config *cfg = &tr->cfg;
  LT_CHECK(cfg->data.path[0], LT_ERR_CONFIG,
           "%s: data.path is not set: give the dataset made by `longtrain prepare`", cfg->source);
  int rc = lt_dataset_open(&tr->data, cfg->data.path);
  if (rc) return lt_error_context(rc, "data.path");
  LT_CHECK(tr->data.vocab_size <= cfg->model.vocab_size, LT_ERR_DATA,
           "data.path: %s has vocab_size %d but model.vocab_size is %d: set model.vocab_size to "
           "at least %d",
           cfg->data.path, tr->data.vocab_size, cfg->model.vocab_size, tr->data.vocab_size);
  return lt_loader_create(&tr->loader, &tr->data, tr->seq_len, (uint64_t)cfg->run.seed);
}

static int allocate_batches(lt_trainer *tr) {
  size_t n = (size_t)(tr->accum * tr->micro_batch * tr->seq_len);
  tr->host_tokens = malloc(n * sizeof(int32_t));
  tr->host_targets = malloc(n * sizeof(int32_t));
  tr->host_pos = malloc(n * sizeof(int32_t));
  LT_CHECK(tr->host_tokens && tr->host_targets && tr->host_pos, LT_ERR_MEMORY,
           "out of host memory for %zu batch tokens", n);
  const int64_t micro_tokens = tr->micro_batch * tr->seq_len;
  tr->batch = (lt_batch){.B = tr->micro_batch, .T = tr->seq_len, .aux = &tr->aux};
  if (tr->ctx.device == LT_CPU) return LT_OK; // views of the host buffers, set per micro-step
  LT_TRY(lt_arena_create(&tr->batch_arena, tr->ctx.device, 3 * (size_t)micro_tokens * 4 + 3 * 256,
                         "batch"));
  LT_TRY(lt_arena_alloc1(&tr->batch_arena, &tr->batch.tokens, LT_I32, micro_tokens));
  LT_TRY(lt_arena_alloc1(&tr->batch_arena, &tr->batch.targets, LT_I32, micro_tokens));
  return lt_arena_alloc1(&tr->batch_arena, &tr->batch.pos, LT_I32, micro_tokens);
}

int lt_trainer_create(lt_trainer *tr, const lt_config *cfg, lt_world *world) {
  *tr = (lt_trainer){.cfg = *cfg, .world = world};
  const lt_train_config *t = &tr->cfg.train;
  tr->seq_len = t->seq_len;
  tr->micro_batch = t->micro_batch ? t->micro_batch : t->batch;
  tr->accum = t->batch / tr->micro_batch;
  lt_device device = cfg->run.device == LT_DEVICE_CUDA ? LT_CUDA : LT_CPU;
  LT_TRY(lt_ctx_init(&tr->ctx, device, cfg->run.threads));
  LT_TRY(open_data(tr));
  LT_TRY(lt_model_create(&tr->model, &tr->cfg.model, device));
  LT_TRY(lt_model_plan(&tr->model, tr->micro_batch, tr->seq_len, t->recompute));
  LT_TRY(lt_optimizer_create(&tr->opt, &tr->model.params, t));
  return allocate_batches(tr);
}

void lt_trainer_destroy(lt_trainer *tr) {
  lt_metrics_close(&tr->metrics);
  free(tr->host_tokens);
  free(tr->host_targets);
  free(tr->host_pos);
  lt_arena_destroy(&tr->batch_arena);
  lt_optimizer_destroy(&tr->opt);
  lt_model_destroy(&tr->model);
  lt_loader_destroy(&tr->loader);
  lt_dataset_close(&tr->data);
  lt_ctx_destroy(&tr->ctx);
}

// Points tr->batch at micro-batch m of the step's host buffers (copying to the device if needed).
static int stage_micro_batch(lt_trainer *tr, int64_t m) {
  const int64_t n = tr->micro_batch * tr->seq_len;
  int32_t *src[3] = {tr->host_tokens + m * n, tr->host_targets + m * n, tr->host_pos + m * n};
  lt_tensor *dst[3] = {&tr->batch.tokens, &tr->batch.targets, &tr->batch.pos};
  for (int i = 0; i < 3; i++) {
    if (tr->ctx.device == LT_CPU)
      *dst[i] = lt_view1(src[i], LT_I32, LT_CPU, n);
    else
      LT_TRY(lt_tensor_from_host(*dst[i], src[i]));
  }
  return LT_OK;
}

int lt_trainer_step(lt_trainer *tr, lt_step_metrics *out) {
  const int64_t n_micro = tr->micro_batch * tr->seq_len, n_step = tr->accum * n_micro;
  LT_TRY(lt_loader_next(&tr->loader, tr->accum * tr->micro_batch, tr->host_tokens, tr->host_targets,
                        tr->host_pos));
  // The loss is the mean over every target token of the step, whatever the accumulation: each
  // micro-batch's gradient is scaled by 1 / (the step's target count), known before any runs.
  double counts[1] = {0};
  for (int64_t i = 0; i < n_step; i++) counts[0] += tr->host_targets[i] != LT_IGNORE_INDEX;
  LT_TRY(lt_world_allreduce_sum(tr->world, counts, 1));
  LT_CHECK(counts[0] > 0, LT_ERR_DATA, "%s: a whole step has no target tokens", tr->data.path);
  const float grad_scale = (float)(1.0 / counts[0]);
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
  double loss = loss_sum / counts[0];
  LT_CHECK(isfinite(loss), LT_ERR_NUMERIC,
           "the loss is %g at step %lld: lower train.lr or raise train.warmup, or resume from an "
           "earlier checkpoint",
           loss, (long long)tr->opt.step + 1);
  double lr = lt_lr_at(&tr->cfg.train, tr->opt.step + 1), grad_norm;
  LT_TRY(lt_optimizer_step(&tr->opt, &tr->ctx, lr, &grad_norm));
  tr->tokens_seen += n_step;
  *out = (lt_step_metrics){.step = tr->opt.step,
                           .steps = tr->cfg.train.steps,
                           .loss = loss,
                           .aux_loss = aux_sum / (double)tr->accum,
                           .lr = lr,
                           .grad_norm = grad_norm,
                           .tokens_seen = tr->tokens_seen};
  return LT_OK;
}

static int write_resolved_config(const lt_config *cfg) {
  char path[LT_PATH_MAX + 32], tmp[LT_PATH_MAX + 48];
  snprintf(path, sizeof path, "%s/config.yaml", cfg->run.dir);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  char *yaml;
  LT_TRY(lt_config_to_yaml(cfg, &yaml));
  FILE *f = fopen(tmp, "w");
  int ok = f && fputs(yaml, f) >= 0;
  if (f && fclose(f) != 0) ok = 0;
  free(yaml);
  if (!ok) {
    remove(tmp);
    return lt_fail(LT_ERR_IO, "%s: cannot write the resolved config (check run.dir)", path);
  }
  return lt_commit_file(tmp, path);
}

static void describe(const lt_trainer *tr) {
  const lt_model_config *m = &tr->model.cfg;
  lt_info("model: %lld parameters, %d layers, d_model %d, %d heads (%d kv) of %d, ffn %d, vocab %d",
          (long long)lt_model_n_params(&tr->model), m->n_layers, m->d_model, m->n_heads,
          m->n_kv_heads, m->head_dim, m->ffn_dim, m->vocab_size);
  lt_info("data: %s, %lld tokens, %lld documents, %lld windows of %lld", tr->data.path,
          (long long)tr->data.n_tokens, (long long)tr->data.n_docs, (long long)tr->loader.n_windows,
          (long long)tr->seq_len + 1);
  char acts[32];
  lt_info("batch: %d sequences x %lld tokens per step (%lld micro-batch%s of %lld); %s activations "
          "on %s, %d threads",
          tr->cfg.train.batch, (long long)tr->seq_len, (long long)tr->accum,
          tr->accum == 1 ? "" : "es", (long long)tr->micro_batch,
          lt_format_bytes((double)(tr->model.acts.capacity + tr->model.scratch.capacity), acts,
                          sizeof acts),
          lt_device_name(tr->ctx.device), tr->ctx.n_threads);
}

static const char *train_usage =
    "usage: longtrain train --config FILE.yaml [--set key=value ...]\n"
    "\n"
    "Trains a model. Keys in the YAML file override the defaults, and each --set overrides the\n"
    "file (e.g. --set train.lr=1e-3 --set model.n_layers=4). `longtrain config --docs` lists "
    "every\n"
    "key. Progress goes to stdout and to RUN_DIR/metrics.jsonl; the resolved config to\n"
    "RUN_DIR/config.yaml.\n";

int lt_train_main(int argc, char **argv, lt_world *world) {
  const char *config_path = NULL;
  char **overrides = calloc((size_t)argc, sizeof *overrides);
  LT_CHECK(overrides, LT_ERR_MEMORY, "out of memory");
  int n_overrides = 0, rc = LT_OK;
  for (int i = 1; i < argc && rc == LT_OK; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      fputs(train_usage, stdout);
      free(overrides);
      return LT_OK;
    } else if ((strcmp(argv[i], "--config") == 0 || strcmp(argv[i], "--set") == 0) &&
               i + 1 == argc) {
      rc = lt_fail(LT_ERR_USAGE, "train: %s needs a value (see longtrain train --help)", argv[i]);
    } else if (strcmp(argv[i], "--config") == 0) {
      config_path = argv[++i];
    } else if (strcmp(argv[i], "--set") == 0) {
      overrides[n_overrides++] = argv[++i];
    } else {
      rc = lt_fail(LT_ERR_USAGE, "train: unexpected argument '%s' (see longtrain train --help)",
                   argv[i]);
    }
  }
  lt_config cfg;
  if (rc == LT_OK && !config_path)
    rc =
        lt_fail(LT_ERR_USAGE, "train: --config FILE.yaml is required (see longtrain train --help)");
  if (rc == LT_OK) rc = lt_config_load(&cfg, config_path, n_overrides, overrides);
  free(overrides);
  LT_TRY(rc);

  lt_trainer tr;
  rc = lt_trainer_create(&tr, &cfg, world);
  if (rc == LT_OK) rc = lt_params_init(&tr.model.params, (uint64_t)cfg.run.seed);
  if (rc == LT_OK && (rc = lt_make_dirs(cfg.run.dir)) != LT_OK) lt_error_context(rc, "run.dir");
  if (rc == LT_OK && world->rank == 0) rc = write_resolved_config(&cfg);
  if (rc == LT_OK) rc = lt_metrics_open(&tr.metrics, cfg.run.dir);
  if (rc == LT_OK) describe(&tr);
  double start = now_s(), interval_start = start, first_step_end = 0;
  int64_t interval_tokens = 0;
  for (int64_t s = 0; rc == LT_OK && s < cfg.train.steps; s++) {
    lt_step_metrics m;
    rc = lt_trainer_step(&tr, &m);
    if (rc) break;
    double t = now_s();
    interval_tokens += cfg.train.batch * tr.seq_len;
    if (s == 0) first_step_end = t;
    m.elapsed_s = t - start;
    // The first step pays for page faults and thread start-up: estimate from the ones after it.
    double per_step = s > 0 ? (t - first_step_end) / (double)s : m.elapsed_s;
    m.eta_s = per_step * (double)(cfg.train.steps - m.step);
    bool print = m.step % cfg.run.log_every == 0 || m.step == cfg.train.steps || m.step == 1;
    m.tokens_per_s = interval_tokens / (t - interval_start);
    if (world->rank == 0) rc = lt_metrics_log(&tr.metrics, &m, print);
    if (print) interval_start = t, interval_tokens = 0;
  }
  if (rc == LT_OK)
    lt_info("done: %lld steps, %lld tokens in %.1f s; metrics in %s", (long long)cfg.train.steps,
            (long long)tr.tokens_seen, now_s() - start, tr.metrics.path);
  lt_trainer_destroy(&tr);
  return rc;
}
