#include "train/trainer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/device.h"
#include "core/error.h"
#include "core/log.h"
#include "optim/schedule.h"
#include "parallel/context.h"
#include "parallel/pipeline.h"
#include "parallel/watchdog.h"
#include "train/checkpoint.h"

// A dataset whose HDF5 metadata no checksum covers (data/dataset.h): nothing cheap makes HDF5
// safe on a damaged copy of it (README, Data), so say so once, and how to convert it.
static void warn_unchecked(const lt_trainer *tr, const lt_source *src, const char *key) {
  if (!src || !src->unchecked || tr->world->rank != 0) return;
  lt_warn("%s: %s %s: a damaged copy may crash or hang HDF5 instead of failing with an error; "
          "write it with h5py.File(..., libver=(\"v108\", \"v110\")) and "
          "attrs[\"tokenizer\"] = numpy.bytes_(...) (README, Data)",
          key, src->name, src->unchecked);
}

static int allocate_samples(lt_samples *s, size_t n, int n_buffers) {
  int32_t **buffers[4] = {&s->tokens, &s->targets, &s->pos, &s->doc};
  for (int i = 0; i < n_buffers; i++) {
    *buffers[i] = malloc(n * sizeof(int32_t));
    LT_CHECK(*buffers[i], LT_ERR_MEMORY, "out of host memory for %zu batch tokens", n);
  }
  return LT_OK;
}

static void free_samples(lt_samples *s) {
  free(s->tokens), free(s->targets), free(s->pos), free(s->doc);
}

static int allocate_batches(lt_trainer *tr) {
  size_t n = (size_t)(tr->accum * tr->micro_batch * tr->seq_len);
  const int n_buffers = tr->data->documents ? 4 : 3;
  LT_TRY(allocate_samples(&tr->host, n, n_buffers));
  LT_TRY(allocate_samples(&tr->ahead, n, n_buffers));
  const int64_t micro_tokens = tr->micro_batch * tr->model.T;
  tr->batch = (lt_batch){.B = tr->micro_batch, .T = tr->model.T, .aux = &tr->aux};
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
  lt_mesh_single(&tr->mesh);
  const lt_train_config *t = &tr->cfg.train;
  if (world->size > 1) LT_TRY(lt_watchdog_start(cfg->parallel.timeout_s, world->rank));
  LT_TRY(lt_mesh_create(&tr->mesh, world, &cfg->parallel));
  // lt_config_validate checked that train.batch divides into micro-batches on every dp rank.
  const int dp = tr->mesh.size[LT_AXIS_DP];
  tr->seq_len = t->seq_len;
  tr->micro_batch = t->micro_batch ? t->micro_batch : t->batch / dp;
  tr->accum = t->batch / (tr->micro_batch * dp);
  lt_device device = cfg->run.device == LT_DEVICE_CUDA ? LT_CUDA : LT_CPU;
  LT_TRY(lt_ctx_init(&tr->ctx, device, cfg->run.threads));
#ifdef LT_WITH_CUDA
  if (device == LT_CUDA) LT_TRY(lt_mesh_init_nccl(&tr->mesh));
#endif
  LT_TRY(lt_source_open(&tr->data, cfg, LT_SOURCE_TRAIN));
  LT_TRY(lt_source_open(&tr->val_data, cfg, LT_SOURCE_VALIDATION));
  warn_unchecked(tr, tr->data, "data.path");
  if (cfg->data.val_path[0]) warn_unchecked(tr, tr->val_data, "data.val_path");
  LT_TRY(lt_model_create(&tr->model, &tr->cfg.model, device, &tr->mesh));
  // Context parallel: the model sees this rank's seq_len / cp tokens of each sequence (model.T).
  LT_TRY(lt_model_plan(&tr->model, tr->micro_batch, lt_cp_local_len(tr->seq_len, &tr->mesh),
                       t->recompute));
  LT_TRY(lt_optimizer_create(&tr->opt, &tr->model.params, t));
  LT_TRY(lt_dp_create(&tr->dp, &tr->model.params, cfg->parallel.bucket_mb));
  return allocate_batches(tr);
}

void lt_trainer_destroy(lt_trainer *tr) {
  lt_metrics_close(&tr->metrics);
  free_samples(&tr->host);
  free_samples(&tr->ahead);
  lt_arena_destroy(&tr->batch_arena);
  lt_dp_destroy(&tr->dp);
  lt_optimizer_destroy(&tr->opt);
  lt_model_destroy(&tr->model);
  lt_source_close(tr->data);
  lt_source_close(tr->val_data);
  lt_ctx_destroy(&tr->ctx);
  lt_mesh_destroy(&tr->mesh);
  if (tr->world->size > 1) lt_watchdog_stop();
}

// Points tr->batch at micro-batch m of the host buffers (copying to the device if needed).
static int stage_micro_batch(lt_trainer *tr, int64_t m) {
  const int64_t n = tr->micro_batch * tr->model.T;
  int32_t *src[4] = {tr->host.tokens, tr->host.targets, tr->host.pos, tr->host.doc};
  lt_tensor *dst[4] = {&tr->batch.tokens, &tr->batch.targets, &tr->batch.pos, &tr->batch.doc};
  for (int i = 0; i < 4; i++) {
    if (!src[i]) continue; // no document ids in stream packing: batch.doc stays empty
    if (tr->ctx.device == LT_CPU)
      *dst[i] = lt_view1(src[i] + m * n, LT_I32, LT_CPU, n);
    else
      LT_TRY(lt_upload(&tr->ctx, *dst[i], src[i] + m * n));
  }
  return LT_OK;
}

// The pipeline schedule's view of the host buffers: micro-batch m into tr->batch.
static int load_micro_batch(void *trainer, int64_t m, lt_batch *batch) {
  lt_trainer *tr = trainer;
  LT_ASSERT(batch == &tr->batch);
  return stage_micro_batch(tr, m);
}

static lt_micro_batches micro_batches(lt_trainer *tr, int64_t count) {
  return (lt_micro_batches){
      .count = count, .load = load_micro_batch, .state = tr, .batch = &tr->batch};
}

// The target tokens among the first n of the host buffers, summed over the data-parallel ranks
// (dp x cp: together they hold the step's tokens once; tp and pp ranks hold the same ones).
static int count_targets(lt_trainer *tr, int64_t n, double *count) {
  *count = 0;
  for (int64_t i = 0; i < n; i++) *count += tr->host.targets[i] != LT_IGNORE_INDEX;
  return lt_all_reduce_sum_f64(&tr->mesh.dp_cp, count, 1);
}

// LT_FAULT_INJECT=hang:rank=R,step=S (tests): world rank R stops answering at the start of step
// S, as a rank stuck in a loop or on a dead file system would; the other ranks' watchdogs must
// end the job (parallel/watchdog.h).
static void injected_hang(const lt_trainer *tr) {
  const char *spec = getenv("LT_FAULT_INJECT");
  int rank;
  long long step;
  if (!spec || sscanf(spec, "hang:rank=%d,step=%lld", &rank, &step) != 2) return;
  if (rank != tr->world->rank || step != tr->opt.step + 1) return;
  for (;;) pause();
}

// This rank's share of the next step's samples into s.
static int read_step(lt_trainer *tr, lt_samples *s) {
  const lt_mesh *mesh = &tr->mesh;
  // Every rank of one data-parallel replica (its cp, tp and pp ranks) reads the same sequences.
  LT_TRY(lt_source_next(tr->data, tr->cfg.train.batch, mesh->coord[LT_AXIS_DP],
                        mesh->size[LT_AXIS_DP], *s));
  // Context parallel: keep this rank's zigzag chunks, so it stages and counts only its own tokens.
  lt_zigzag_keep_local_samples(s, tr->accum * tr->micro_batch, tr->seq_len, mesh);
  return LT_OK;
}

// The next step's samples into tr->ahead, unless this step is the run's last (train.steps), so
// that the host reads them while the device runs the backward just queued, instead of the
// device waiting for the read at the start of the next step.
static int read_ahead(lt_trainer *tr) {
  if (tr->opt.step + 2 > tr->cfg.train.steps) return LT_OK;
  tr->ahead_position = tr->data->next_sample;
  int rc = read_step(tr, &tr->ahead);
  if (rc != LT_OK) {
    tr->data->next_sample = tr->ahead_position;
    return rc;
  }
  tr->have_ahead = true;
  return LT_OK;
}

int64_t lt_trainer_data_position(const lt_trainer *tr) {
  return tr->have_ahead ? tr->ahead_position : tr->data->next_sample;
}

int lt_trainer_forward_backward(lt_trainer *tr, double *loss, double *aux) {
  injected_hang(tr);
  lt_profile_mark(&tr->ctx, "(idle) the host between steps");
  const int64_t n_step = tr->accum * tr->micro_batch * tr->model.T;
  const lt_mesh *mesh = &tr->mesh;
  if (tr->have_ahead) { // read during the last step
    const lt_samples read = tr->ahead;
    tr->ahead = tr->host, tr->host = read, tr->have_ahead = false;
  } else {
    LT_TRY(read_step(tr, &tr->host));
  }
  // The loss is the mean over every target token of the step, whatever the accumulation: each
  // micro-batch's gradient is scaled by 1 / (the step's target count), known before any runs.
  double count;
  LT_TRY(count_targets(tr, n_step, &count));
  LT_CHECK(count > 0, LT_ERR_DATA, "%s: a whole step has no target tokens", tr->data->name);
  const float grad_scale = (float)(1.0 / count);
  lt_profile_mark(&tr->ctx, "(idle) the host reading the batch");
  LT_TRY(lt_params_zero_grad(&tr->model.params));
  lt_profile_mark(&tr->ctx, "zero the gradients");
  // Auxiliary losses are means over a micro-batch's tokens already: the step's is their mean over
  // every data-parallel replica's micro-batches, as one process running them all would take it.
  // Under context parallelism each cp rank's routers see the whole sequence's statistics (every
  // cp rank reports the same value), while their gradients are shares that the cp sum completes.
  const double replica_micro_batches = (double)tr->accum * mesh->size[LT_AXIS_DP];
  tr->aux.grad_scale = (float)(1.0 / replica_micro_batches);
  double sums[2] = {0.0, 0.0}; // loss, auxiliary loss
  // Pipeline parallelism: the stages run the micro-batches in the 1F1B order instead, every stage
  // getting the loss and auxiliary losses summed as this loop sums them; the data-parallel sum
  // then runs once the whole pipeline is done (after its tied-embedding sum), not overlapped.
  const lt_micro_batches micro = micro_batches(tr, tr->accum);
  const bool pipelined = lt_pipeline_stages(&tr->model) > 1;
  if (pipelined)
    LT_TRY(
        lt_pipeline_train_step(&tr->model, &tr->ctx, &micro, grad_scale, &sums[0], &sums[1], NULL));
  for (int64_t m = 0; m < tr->accum && !pipelined; m++) {
    double micro_loss;
    LT_TRY(stage_micro_batch(tr, m));
    tr->aux.sum = 0.0; // read before backward, which may run the forward again (recompute)
    LT_TRY(lt_model_forward(&tr->model, &tr->ctx, &tr->batch, true, grad_scale, &micro_loss));
    lt_profile_mark(&tr->ctx, "(idle) the host reading the loss");
    sums[1] += tr->aux.sum;
    // The gradients are summed over the data-parallel ranks once, as the last backward ends.
    tr->model.grads_ready = m + 1 == tr->accum ? lt_dp_grads_ready : NULL;
    tr->model.grads_ready_arg = &tr->dp;
    int rc = lt_model_backward(&tr->model, &tr->ctx, &tr->batch);
    tr->model.grads_ready = NULL;
    LT_TRY(rc);
    sums[0] += micro_loss;
  }
  LT_TRY(read_ahead(tr));
  LT_TRY(lt_dp_finish(&tr->dp));
  LT_TRY(lt_all_reduce_sum_f64(&mesh->dp_cp, sums, 2));
  *loss = sums[0] / count;
  *aux = sums[1] / (replica_micro_batches * mesh->size[LT_AXIS_CP]);
  return LT_OK;
}

int lt_trainer_step(lt_trainer *tr, lt_step_metrics *out) {
  double loss, aux;
  LT_TRY(lt_trainer_forward_backward(tr, &loss, &aux));
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
                           .aux_loss = aux,
                           .lr = lr,
                           .grad_norm = grad_norm,
                           .tokens_seen = tr->tokens_seen};
  return LT_OK;
}

int lt_trainer_eval(lt_trainer *tr, double *loss) {
  LT_ASSERT(tr->val_data);
  // The validation set is what one process reads, whatever the layout: train.eval_batches
  // micro-batches of train.micro_batch sequences (train.batch when 0). It is cut into this run's
  // micro-batches, dealt to the data-parallel ranks in turn, so the value can be compared across
  // runs at another dp; the cp, tp and pp ranks of a replica take the same ones.
  const lt_train_config *t = &tr->cfg.train;
  const int64_t n = tr->micro_batch * tr->model.T,
                single = t->micro_batch ? t->micro_batch : t->batch;
  const int64_t parts = t->eval_batches * single / tr->micro_batch;
  double sums[2] = {0, 0}; // loss, target tokens
  for (int64_t c = tr->mesh.coord[LT_AXIS_DP]; c < parts; c += tr->mesh.size[LT_AXIS_DP]) {
    LT_TRY(lt_source_read(tr->val_data, c * tr->micro_batch, tr->micro_batch, tr->host));
    lt_zigzag_keep_local_samples(&tr->host, tr->micro_batch, tr->seq_len, &tr->mesh);
    double micro_loss;
    const lt_micro_batches one = micro_batches(tr, 1);
    if (lt_pipeline_stages(&tr->model) > 1) {
      LT_TRY(lt_pipeline_eval(&tr->model, &tr->ctx, &one, &micro_loss));
    } else {
      LT_TRY(stage_micro_batch(tr, 0));
      LT_TRY(lt_model_forward(&tr->model, &tr->ctx, &tr->batch, false, 0.0f, &micro_loss));
    }
    sums[0] += micro_loss;
    for (int64_t i = 0; i < n; i++) sums[1] += tr->host.targets[i] != LT_IGNORE_INDEX;
  }
  LT_TRY(lt_all_reduce_sum_f64(&tr->mesh.dp_cp, sums, 2));
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
    tr->have_ahead = false;
    tr->train_seconds = ck.meta.train_seconds;
    if (tr->mesh.world_rank == 0) // one warning per run, not one per rank
      warn_config_differences(tr, ck.meta.config_yaml, ck.dir);
  }
  lt_checkpoint_close(&ck);
  return rc;
}

// Every rank learns the worst status of all (LT_OK when all succeeded); a rank that did not fail
// itself fails with a message pointing at the one that did.
static int agree(const lt_trainer *tr, int rc, const char *what) {
  float worst = (float)rc;
  LT_TRY(lt_all_reduce_max(&tr->mesh.world, lt_view1(&worst, LT_F32, LT_CPU, 1)));
  if (rc != LT_OK || worst == LT_OK) return rc;
  return lt_fail((int)worst, "%s failed on another rank (its message says why)", what);
}

// Rank 0, once every shard is on disk: meta.h5, then the folder into place (or, on failure, away).
static int commit(const lt_trainer *tr, lt_checkpoint_writer *w, double train_seconds) {
  lt_checkpoint_meta meta = {.step = tr->opt.step,
                             .tokens_seen = tr->tokens_seen,
                             .data_position = lt_trainer_data_position(tr),
                             .seed = tr->cfg.run.seed,
                             .n_params = lt_model_n_params(&tr->model),
                             .train_seconds = train_seconds};
  snprintf(meta.config_source, sizeof meta.config_source, "%s", tr->cfg.source);
  int rc = lt_config_to_yaml(&tr->cfg, &meta.config_yaml);
  if (rc == LT_OK)
    rc = lt_checkpoint_commit(w, &meta); // removes the temporary folder itself on failure
  else
    lt_checkpoint_abort(w);
  lt_checkpoint_meta_free(&meta);
  return rc;
}

int lt_trainer_save(lt_trainer *tr, double train_seconds, char *written, size_t cap) {
  const int rank = tr->mesh.world_rank, n_ranks = tr->mesh.world_size;
  char root[LT_PATH_MAX + 16];
  lt_checkpoint_root(tr->cfg.run.dir, root, sizeof root);
  // Rank 0 makes the temporary folder; then every rank writes its shard file into it, rank 0
  // commits once all are on disk, and all learn whether it worked.
  lt_checkpoint_writer w;
  int rc = rank == 0 ? lt_checkpoint_begin(&w, root, tr->opt.step, 0, n_ranks) : LT_OK;
  if (rc != LT_OK) lt_checkpoint_abort(&w);
  LT_TRY(agree(tr, rc, "starting the checkpoint"));
  if (rank != 0) rc = lt_checkpoint_begin(&w, root, tr->opt.step, rank, n_ranks);
  if (rc == LT_OK) rc = lt_checkpoint_write_params(&w, &tr->model.params, true);
  if (rc == LT_OK && rank != 0) rc = lt_checkpoint_finish_shard(&w);
  rc = agree(tr, rc, "writing the checkpoint's shards");
  if (rc == LT_OK && rank == 0)
    rc = commit(tr, &w, train_seconds);
  else if (rc != LT_OK)
    lt_checkpoint_abort(&w);
  LT_TRY(agree(tr, rc, "committing the checkpoint"));
  snprintf(written, cap, "%s", w.dir);
  return rank == 0 ? lt_checkpoint_prune(root, tr->cfg.checkpoint.keep) : LT_OK;
}
