// Whole training steps on the GPU against the CPU's fp32 steps: the loss, every parameter's
// gradient, the global gradient norm and the loss after the AdamW update agree to bf16 accuracy;
// recomputation changes nothing; two identical runs give the same losses; the trainer runs from a
// dataset on the GPU.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "core/rng.h"
#include "gpu_testing.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "train/trainer.h"

enum { B = 2, T = 96, VOCAB = LT_GPU_SMALL_VOCAB }; // T is no multiple of the attention tiles

static lt_train_config adamw_config(void) {
  return (lt_train_config){.lr = 1e-3,
                           .beta1 = 0.9,
                           .beta2 = 0.95,
                           .eps = 1e-8,
                           .weight_decay = 0.1,
                           .clip_norm = 1.0,
                           .decay = LT_DECAY_CONSTANT};
}

typedef struct batch_data {
  int32_t tokens[B * T], targets[B * T], pos[B * T];
  double n_targets;
} batch_data;

static void make_batch(batch_data *d) {
  lt_rng rng = lt_rng_seed(lt_gpu_next_seed());
  d->n_targets = 0;
  for (int i = 0; i < B * T; i++) {
    d->tokens[i] = (int32_t)lt_rng_below(&rng, VOCAB);
    d->targets[i] = i % 17 == 5 ? LT_IGNORE_INDEX : (int32_t)lt_rng_below(&rng, VOCAB);
    d->pos[i] = i % T;
    d->n_targets += d->targets[i] != LT_IGNORE_INDEX;
  }
}

typedef struct run {
  lt_ctx ctx;
  lt_model model;
  lt_optimizer opt;
  lt_batch batch;
} run;

static void run_create(run *r, lt_device device, bool recompute, batch_data *d) {
  assert_ok(lt_ctx_init(&r->ctx, device, 0));
  lt_model_config cfg = lt_gpu_small_model();
  assert_ok(lt_model_create(&r->model, &cfg, device, NULL));
  assert_ok(lt_params_init(&r->model.params, 4321));
  assert_ok(lt_model_plan(&r->model, B, T, recompute));
  lt_train_config tc = adamw_config();
  assert_ok(lt_optimizer_create(&r->opt, &r->model.params, &tc));
  r->batch = (lt_batch){.B = B, .T = T};
  if (device == LT_CPU) {
    r->batch.tokens = lt_view1(d->tokens, LT_I32, LT_CPU, B * T);
    r->batch.targets = lt_view1(d->targets, LT_I32, LT_CPU, B * T);
    r->batch.pos = lt_view1(d->pos, LT_I32, LT_CPU, B * T);
  } else {
    r->batch.tokens = lt_gpu_upload_i32(d->tokens, 1, LT_SHAPE(B * T));
    r->batch.targets = lt_gpu_upload_i32(d->targets, 1, LT_SHAPE(B * T));
    r->batch.pos = lt_gpu_upload_i32(d->pos, 1, LT_SHAPE(B * T));
  }
}

static void run_destroy(run *r) {
  lt_optimizer_destroy(&r->opt);
  lt_model_destroy(&r->model);
  lt_ctx_destroy(&r->ctx);
}

// Loss (mean over targets) and gradients of the batch.
static double loss_and_grads(run *r, const batch_data *d) {
  return lt_gpu_loss_and_grads(&r->model, &r->ctx, &r->batch, d->n_targets);
}

static double loss_only(run *r, const batch_data *d) {
  double sum;
  assert_ok(lt_model_forward(&r->model, &r->ctx, &r->batch, false, 1.0f, &sum));
  return sum / d->n_targets;
}

static float *grads_on_host(const run *r) {
  const lt_params *p = &r->model.params;
  float *g = malloc(p->numel * sizeof(float));
  assert_ok(lt_device_copy(g, LT_CPU, p->grad, p->device, p->numel * sizeof(float)));
  return g;
}

static double norm(const float *x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += (double)x[i] * x[i];
  return sqrt(s);
}

static void test_one_training_step_on_gpu_matches_the_cpu_fp32_step(void **state) {
  SKIP_WITHOUT_GPU();
  batch_data d;
  make_batch(&d);
  run cpu, gpu;
  run_create(&cpu, LT_CPU, false, &d);
  run_create(&gpu, LT_CUDA, false, &d);
  const double loss_cpu = loss_and_grads(&cpu, &d), loss_gpu = loss_and_grads(&gpu, &d);
  printf("  loss: cpu %.6f, gpu %.6f (rel. diff %.2g)\n", loss_cpu, loss_gpu,
         fabs(loss_gpu - loss_cpu) / loss_cpu);
  assert_true(fabs(loss_gpu - loss_cpu) < 5e-4 * loss_cpu);
  // Every parameter's gradient, and the whole gradient.
  float *g_cpu = grads_on_host(&cpu), *g_gpu = grads_on_host(&gpu);
  const lt_params *p = &cpu.model.params;
  lt_gpu_expect_gradients_within(p, g_gpu, g_cpu, NULL, 3e-2);
  // The optimizer step: the global norm it clips by, then the loss at the updated weights.
  double norm_cpu, norm_gpu;
  lt_train_config tc = adamw_config();
  assert_ok(lt_optimizer_step(&cpu.opt, &cpu.ctx, tc.lr, &norm_cpu));
  assert_ok(lt_optimizer_step(&gpu.opt, &gpu.ctx, tc.lr, &norm_gpu));
  printf("  gradient norm: cpu %.6f, gpu %.6f (rel. diff %.2g; host norm %.6f)\n", norm_cpu,
         norm_gpu, fabs(norm_gpu - norm_cpu) / norm_cpu, norm(g_gpu, (int64_t)p->numel));
  assert_true(fabs(norm_gpu - norm_cpu) < 1e-2 * norm_cpu);
  assert_true(fabs(norm_gpu - norm(g_gpu, (int64_t)p->numel)) < 1e-6 * norm_gpu);
  const double after_cpu = loss_only(&cpu, &d), after_gpu = loss_only(&gpu, &d);
  printf("  loss after the step: cpu %.6f, gpu %.6f (rel. diff %.2g)\n", after_cpu, after_gpu,
         fabs(after_gpu - after_cpu) / after_cpu);
  assert_true(after_cpu < loss_cpu && after_gpu < loss_gpu);
  assert_true(fabs(after_gpu - after_cpu) < 5e-4 * after_cpu);
  free(g_cpu), free(g_gpu);
  run_destroy(&cpu), run_destroy(&gpu);
  lt_gpu_free_all();
}

static void test_recomputation_on_gpu_changes_neither_loss_nor_gradients(void **state) {
  SKIP_WITHOUT_GPU();
  batch_data d;
  make_batch(&d);
  run kept, recomputed;
  run_create(&kept, LT_CUDA, false, &d);
  run_create(&recomputed, LT_CUDA, true, &d);
  const double a = loss_and_grads(&kept, &d), b = loss_and_grads(&recomputed, &d);
  assert_true(a == b); // the forward is deterministic
  float *ga = grads_on_host(&kept), *gb = grads_on_host(&recomputed);
  // Attention's dq is summed with atomics, so the gradients may differ in the last bits only.
  lt_gpu_expect_close("gradients with recomputation", gb, ga, (int64_t)kept.model.params.numel,
                      1e-5);
  assert_true(recomputed.model.acts.capacity < kept.model.acts.capacity);
  free(ga), free(gb);
  run_destroy(&kept), run_destroy(&recomputed);
  lt_gpu_free_all();
}

static void test_two_identical_gpu_runs_give_the_same_losses(void **state) {
  SKIP_WITHOUT_GPU();
  enum { STEPS = 4 };
  batch_data d;
  make_batch(&d);
  double losses[2][STEPS], norms[2][STEPS];
  for (int r = 0; r < 2; r++) {
    run gpu;
    run_create(&gpu, LT_CUDA, false, &d);
    for (int s = 0; s < STEPS; s++) {
      losses[r][s] = loss_and_grads(&gpu, &d);
      assert_ok(lt_optimizer_step(&gpu.opt, &gpu.ctx, 1e-3, &norms[r][s]));
    }
    run_destroy(&gpu);
    lt_gpu_free_all();
  }
  double worst_loss = 0, worst_norm = 0;
  for (int s = 0; s < STEPS; s++) {
    worst_loss = fmax(worst_loss, fabs(losses[1][s] - losses[0][s]) / losses[0][s]);
    worst_norm = fmax(worst_norm, fabs(norms[1][s] - norms[0][s]) / norms[0][s]);
  }
  printf("  %d steps twice: losses differ by %.3g at most, gradient norms by %.3g (relative)\n",
         STEPS, worst_loss, worst_norm);
  assert_true(losses[0][0] == losses[1][0]); // the first forward is bit-exact
  assert_true(worst_loss < 1e-5 && worst_norm < 1e-4);
}

static void test_trainer_trains_on_gpu_as_on_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  const char *dir = lt_test_tmpdir();
  lt_config cfg;
  assert_ok(lt_config_defaults(&cfg));
  cfg.model = lt_gpu_small_model();
  strcpy(cfg.model.attention, "softmax");
  strcpy(cfg.model.ffn, "swiglu");
  cfg.train.batch = 4, cfg.train.micro_batch = 2; // two accumulated micro-batches
  cfg.train.seq_len = 80, cfg.train.steps = 3, cfg.train.warmup = 0, cfg.train.lr = 1e-3;
  snprintf(cfg.data.path, sizeof cfg.data.path, "%s/random.h5", dir);
  snprintf(cfg.run.dir, sizeof cfg.run.dir, "%s/run", dir);
  lt_gpu_write_dataset(cfg.data.path, 20000);
  lt_gpu_expect_trainer_matches_cpu(&cfg, 3, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_one_training_step_on_gpu_matches_the_cpu_fp32_step),
      cmocka_unit_test(test_recomputation_on_gpu_changes_neither_loss_nor_gradients),
      cmocka_unit_test(test_two_identical_gpu_runs_give_the_same_losses),
      cmocka_unit_test(test_trainer_trains_on_gpu_as_on_cpu),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
