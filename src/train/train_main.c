// `longtrain train`: the command line, where a run starts from (fresh, resumed, or fine-tuned
// from a checkpoint's weights), and the loop of steps, validation, checkpoints and signals.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/device.h"
#include "core/error.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "parallel/launch_check.h"
#include "train/checkpoint.h"
#include "train/mfu.h"
#include "train/signals.h"
#include "train/trainer.h"

static const char *train_usage =
    "usage: longtrain train --config FILE.yaml [--set key=value ...]\n"
    "                       [--resume auto|CKPT | --init-from CKPT]\n"
    "\n"
    "Trains a model. Keys in the YAML file override the defaults, and each --set overrides the\n"
    "file (e.g. --set train.lr=1e-3). `longtrain config --docs` lists every key. Progress goes to\n"
    "stdout and RUN_DIR/metrics.jsonl, the resolved config to RUN_DIR/config.yaml, checkpoints\n"
    "to RUN_DIR/checkpoints/step_N (every checkpoint.every steps and at the end).\n"
    "\n"
    "  --resume auto     continue from the newest complete checkpoint in RUN_DIR/checkpoints,\n"
    "                    or start afresh when there is none (the same command for every\n"
    "                    attempt of a requeued job)\n"
    "  --resume CKPT     continue from checkpoint folder CKPT; without --config, with its config\n"
    "  --init-from CKPT  start from CKPT's weights only: a fresh optimizer, schedule and data\n"
    "                    position (fine-tuning; see train.freeze, model.rope_ntk_factor); with\n"
    "                    --resume auto, only when RUN_DIR has no checkpoint yet\n"
    "\n"
    "SIGTERM or SIGUSR1 finishes the current step, writes a checkpoint and exits with status 11.\n";

typedef struct train_args {
  const char *config_path, *resume, *init_from;
  char **overrides;
  int n_overrides;
} train_args;

static int parse_args(int argc, char **argv, train_args *args, bool *help) {
  *args = (train_args){0};
  args->overrides = calloc((size_t)argc, sizeof *args->overrides);
  LT_CHECK(args->overrides, LT_ERR_MEMORY, "out of memory");
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
      *help = true;
      return LT_OK;
    }
    bool takes_value = strcmp(arg, "--config") == 0 || strcmp(arg, "--set") == 0 ||
                       strcmp(arg, "--resume") == 0 || strcmp(arg, "--init-from") == 0;
    LT_CHECK(takes_value, LT_ERR_USAGE,
             "train: unexpected argument '%s' (see longtrain train --help)", arg);
    LT_CHECK(i + 1 < argc, LT_ERR_USAGE, "train: %s needs a value (see longtrain train --help)",
             arg);
    const char *value = argv[++i];
    if (strcmp(arg, "--config") == 0) args->config_path = value;
    if (strcmp(arg, "--set") == 0) args->overrides[args->n_overrides++] = argv[i];
    if (strcmp(arg, "--resume") == 0) args->resume = value;
    if (strcmp(arg, "--init-from") == 0) args->init_from = value;
  }
  LT_CHECK(!(args->resume && args->init_from && strcmp(args->resume, "auto") != 0), LT_ERR_USAGE,
           "train: --resume CKPT continues a run and --init-from starts a new one from a "
           "checkpoint's weights: give one of them (--resume auto with --init-from resumes when "
           "the run has a checkpoint and starts from the weights when not)");
  bool resume_path = args->resume && strcmp(args->resume, "auto") != 0;
  LT_CHECK(args->config_path || resume_path, LT_ERR_USAGE,
           "train: --config FILE.yaml is required (or --resume CKPT, which uses the checkpoint's "
           "config; see longtrain train --help)");
  return LT_OK;
}

// The config file with its overrides, or, for `--resume CKPT` alone, the checkpoint's own config
// with the overrides.
static int load_config(const train_args *args, lt_config *cfg) {
  if (args->config_path)
    return lt_config_load(cfg, args->config_path, args->n_overrides, args->overrides);
  lt_checkpoint ck;
  LT_TRY(lt_checkpoint_open(&ck, args->resume));
  int rc = lt_checkpoint_load_config(&ck, args->n_overrides, args->overrides, cfg);
  lt_checkpoint_close(&ck);
  return rc;
}

// The checkpoint to resume from into `path`: the given one, the newest under RUN_DIR for "auto",
// or "" (start afresh).
static int resume_path(const train_args *args, const lt_config *cfg, char *path, size_t cap) {
  path[0] = '\0';
  if (!args->resume) return LT_OK;
  if (strcmp(args->resume, "auto") != 0) {
    snprintf(path, cap, "%s", args->resume);
    return LT_OK;
  }
  char root[LT_PATH_MAX + 16];
  lt_checkpoint_root(cfg->run.dir, root, sizeof root);
  LT_TRY(lt_checkpoint_latest(root, path, cap));
  if (!path[0]) lt_info("resume: no checkpoint in %s yet: starting from step 0", root);
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
  char samples[LT_PATH_MAX + 256];
  lt_source_describe(tr->data, samples, sizeof samples);
  lt_info("data: %s", samples);
  if (tr->val_data && tr->cfg.train.eval_every > 0) {
    lt_source_describe(tr->val_data, samples, sizeof samples);
    lt_info("validation: %s; %d micro-batches every %d steps", samples, tr->cfg.train.eval_batches,
            tr->cfg.train.eval_every);
  }
  const lt_mesh *mesh = &tr->mesh;
  if (mesh->world_size > 1) {
    const lt_params *p = &tr->model.params;
    char state[32];
    lt_info("parallel: dp %d x pp %d x cp %d x tp %d on %d ranks; gradients summed over %d ranks "
            "in %d bucket%s of parallel.bucket_mb %g%s%s%s",
            mesh->size[LT_AXIS_DP], mesh->size[LT_AXIS_PP], mesh->size[LT_AXIS_CP],
            mesh->size[LT_AXIS_TP], mesh->world_size, mesh->dp_cp.size, tr->dp.n_buckets,
            tr->dp.n_buckets == 1 ? "" : "s", tr->cfg.parallel.bucket_mb,
            tr->dp.zero ? "; ZeRO-1: " : "",
            tr->dp.zero
                ? lt_format_bytes(2.0 * (double)p->state_numel * sizeof(float), state, sizeof state)
                : "",
            tr->dp.zero ? " of AdamW state per rank" : "");
  }
  if (tr->opt.n_frozen)
    lt_info("frozen: %d of %d parameter tensors (train.freeze: %s)", tr->opt.n_frozen,
            tr->model.params.count, tr->cfg.train.freeze);
  char acts[32];
  lt_info("batch: %d sequences x %lld tokens per step (%lld micro-batch%s of %lld); %s activations "
          "on %s, %d threads",
          tr->cfg.train.batch, (long long)tr->seq_len, (long long)tr->accum,
          tr->accum == 1 ? "" : "es", (long long)tr->micro_batch,
          lt_format_bytes((double)(tr->model.acts.capacity + tr->model.scratch.capacity), acts,
                          sizeof acts),
          lt_device_name(tr->ctx.device), tr->ctx.n_threads);
}

// A run resumed from an earlier checkpoint of its own folder branches off: the later ones stay,
// and --resume auto (which takes the highest step) would go back to them.
static int warn_about_later_checkpoints(const lt_trainer *tr) {
  char root[LT_PATH_MAX + 16], latest[LT_PATH_MAX + 48];
  lt_checkpoint_root(tr->cfg.run.dir, root, sizeof root);
  LT_TRY(lt_checkpoint_latest(root, latest, sizeof latest));
  const char *step = strrchr(latest, '_');
  if (latest[0] && step && atoll(step + 1) > tr->opt.step)
    lt_warn("resume: %s holds a later checkpoint (%s) than this one; --resume auto would take "
            "it: delete the later ones, or use another run.dir, to continue from here",
            root, latest);
  return LT_OK;
}

// Sets the weights: from a checkpoint's full state, its weights alone, or the seed.
static int start_state(lt_trainer *tr, const train_args *args, const char *resume) {
  if (resume[0]) { // a requeued fine-tune resumes its own run rather than starting over
    if (args->init_from)
      lt_info("resume: %s has a checkpoint: --init-from %s is not used", tr->cfg.run.dir,
              args->init_from);
    LT_TRY(lt_trainer_resume(tr, resume));
    lt_info("resumed from %s at step %lld (%lld tokens seen)", resume, (long long)tr->opt.step,
            (long long)tr->tokens_seen);
    return warn_about_later_checkpoints(tr);
  }
  // A fresh start saves into run.dir too: refuse what a save could replace (checkpoint_dir.c).
  char root[LT_PATH_MAX + 16], latest[LT_PATH_MAX + 48];
  lt_checkpoint_root(tr->cfg.run.dir, root, sizeof root);
  LT_TRY(lt_checkpoint_latest(root, latest, sizeof latest));
  if (!args->init_from) return lt_params_init(&tr->model.params, (uint64_t)tr->cfg.run.seed);
  int rc = lt_checkpoint_load_weights(args->init_from, &tr->model.params);
  if (rc) return lt_error_context(rc, "--init-from");
  lt_info("initialised from the weights of %s (fresh optimizer, schedule and data position)",
          args->init_from);
  return LT_OK;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Whether any rank was asked to stop (*why names the signal, else NULL): every rank must finish
// the same step and save together.
static int stop_requested(lt_trainer *tr, const char **why) {
  const int mine = lt_signals_pending();
  double caught = mine;
  LT_TRY(lt_all_reduce_sum_f64(&tr->mesh.world, &caught, 1));
  *why = mine == SIGTERM   ? "SIGTERM"
         : mine == SIGUSR1 ? "SIGUSR1"
         : caught > 0      ? "a signal to another rank"
                           : NULL;
  return LT_OK;
}

static int train_loop(lt_trainer *tr) {
  const lt_config *cfg = &tr->cfg;
  const double start = now_s();
  double interval_start = start, first_step_end = 0;
  const int64_t first_step = tr->opt.step;
  int64_t interval_tokens = 0;
  const double peak_tflops = lt_run_peak_tflops(&cfg->run, tr->ctx.device);
  const double flops_per_token = lt_model_train_flops_per_token(&tr->model, tr->seq_len);
  for (int64_t s = first_step; s < cfg->train.steps; s++) {
    lt_step_metrics m;
    LT_TRY(lt_trainer_step(tr, &m));
    const int every = cfg->train.eval_every;
    if (every > 0 && (m.step % every == 0 || m.step == cfg->train.steps)) {
      LT_TRY(lt_trainer_eval(tr, &m.val_loss));
      m.has_val_loss = true;
    }
    double t = now_s();
    interval_tokens += (int64_t)cfg->train.batch * tr->seq_len;
    if (s == first_step) first_step_end = t;
    m.elapsed_s = tr->train_seconds + (t - start);
    // The first step pays for page faults and thread start-up: estimate from the ones after it.
    double per_step = s > first_step ? (t - first_step_end) / (double)(s - first_step) : t - start;
    m.eta_s = per_step * (double)(cfg->train.steps - m.step);
    bool print = m.step % cfg->run.log_every == 0 || m.step == cfg->train.steps ||
                 s == first_step || m.has_val_loss;
    m.tokens_per_s = (double)interval_tokens / (t - interval_start);
    m.mfu = lt_mfu(m.tokens_per_s, flops_per_token, peak_tflops, tr->world->size);
    if (tr->world->rank == 0) LT_TRY(lt_metrics_log(&tr->metrics, &m, print));
    if (print) interval_start = t, interval_tokens = 0;

    const char *stop;
    LT_TRY(stop_requested(tr, &stop));
    const int64_t ckpt_every = cfg->checkpoint.every;
    if ((ckpt_every > 0 && m.step % ckpt_every == 0) || m.step == cfg->train.steps || stop) {
      char written[LT_PATH_MAX + 32];
      LT_TRY(lt_trainer_save(tr, m.elapsed_s, written, sizeof written));
      lt_info("checkpoint: %s", written);
      if (stop)
        return lt_fail(LT_STOPPED,
                       "stopped by %s after step %lld; checkpoint %s written: run the same "
                       "command with --resume auto to continue",
                       stop, (long long)m.step, written);
    }
  }
  if (first_step >= cfg->train.steps)
    lt_info("already at step %lld of train.steps %lld: nothing to do (raise train.steps to "
            "train further)",
            (long long)first_step, (long long)cfg->train.steps);
  else
    lt_info("done: %lld steps, %lld tokens in %.1f s; metrics in %s", (long long)cfg->train.steps,
            (long long)tr->tokens_seen, now_s() - start, tr->metrics.path);
  return LT_OK;
}

int lt_train_main(int argc, char **argv, lt_world *world) {
  train_args args;
  bool help = false;
  lt_config cfg;
  char resume[LT_PATH_MAX + 32];
  int rc = parse_args(argc, argv, &args, &help);
  if (rc == LT_OK && help) {
    fputs(train_usage, stdout);
    free(args.overrides);
    return LT_OK;
  }
  if (rc == LT_OK) rc = load_config(&args, &cfg);
  if (rc == LT_OK) rc = lt_launch_check(&cfg.parallel, world, cfg.source);
  if (rc == LT_OK) rc = resume_path(&args, &cfg, resume, sizeof resume);
  if (rc != LT_OK) {
    free(args.overrides);
    return rc;
  }

  lt_trainer tr;
  rc = lt_trainer_create(&tr, &cfg, world);
  if (rc == LT_OK) rc = start_state(&tr, &args, resume);
  if (rc == LT_OK && (rc = lt_make_dirs(cfg.run.dir)) != LT_OK) lt_error_context(rc, "run.dir");
  if (rc == LT_OK && world->rank == 0) rc = write_resolved_config(&cfg);
  if (rc == LT_OK && world->rank == 0)
    rc = lt_metrics_open(&tr.metrics, cfg.run.dir, resume[0] ? tr.opt.step : -1);
  if (rc == LT_OK) describe(&tr);
  if (rc == LT_OK) {
    lt_signals_install();
    rc = train_loop(&tr);
    lt_signals_restore();
  }
  lt_trainer_destroy(&tr);
  free(args.overrides);
  return rc;
}
