// Models with linear-family token mixers train on the GPU as on the CPU's fp32: a lightning
// model, a hybrid (lightning then softmax) and a linear model with the denominator, decay and a
// gate; the loss and every parameter's gradient of one step agree to bf16 accuracy, with and
// without document masks; the trainer's losses over a few steps agree.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "core/rng.h"
#include "gpu_testing.h"
#include "layers/attention/linear.h"
#include "model/model.h"

enum { B = 2, T = 96, VOCAB = LT_GPU_SMALL_VOCAB }; // T is no multiple of the 64-token chunk

// The small model of the GPU tests with `attention` layers; lightning as TransNormerLLM's (silu,
// the linear gate, decays scaled over depth); linear with the denominator, ALiBi decays, a gate.
static lt_model_config tiny_model(const char *attention) {
  lt_model_config m = lt_gpu_small_model();
  m.lightning = (lt_lightning_config){.block_size = 64,
                                      .feature_map = LT_FEATURE_SILU,
                                      .gate = LT_GATE_LINEAR,
                                      .depth_scaled_decay = true};
  m.linear = (lt_linear_config){.feature_map = LT_FEATURE_ELU1,
                                .normalization = LT_LINEAR_NORM_DENOMINATOR,
                                .decay = LT_LINEAR_DECAY_ALIBI,
                                .gate = LT_GATE_SIGMOID,
                                .chunk_size = 32};
  snprintf(m.attention, sizeof m.attention, "%s", attention);
  return m;
}

// Tokens, targets and, with documents, runs of 1 to 40 tokens whose positions restart.
typedef struct batch_data {
  int32_t tokens[B * T], targets[B * T], pos[B * T], doc[B * T];
  double n_targets;
} batch_data;

static void make_batch(batch_data *d, bool docs) {
  lt_rng rng = lt_rng_seed(lt_gpu_next_seed());
  d->n_targets = 0;
  int32_t id = 0, start = 0;
  for (int i = 0; i < B * T; i++) {
    if (i % T == 0 || (docs && lt_rng_below(&rng, 40) == 0)) id++, start = i;
    d->doc[i] = id, d->pos[i] = i - start;
    d->tokens[i] = (int32_t)lt_rng_below(&rng, VOCAB);
    d->targets[i] = i % 17 == 5 ? LT_IGNORE_INDEX : (int32_t)lt_rng_below(&rng, VOCAB);
    d->n_targets += d->targets[i] != LT_IGNORE_INDEX;
  }
}

typedef struct model_run {
  lt_ctx ctx;
  lt_model model;
  lt_batch batch;
} model_run;

static lt_tensor batch_tensor(int32_t *host, lt_device device) {
  return device == LT_CPU ? lt_view1(host, LT_I32, LT_CPU, B * T)
                          : lt_gpu_upload_i32(host, 1, LT_SHAPE(B * T));
}

// Builds the model on `device` and runs one forward and backward on batch d: the mean loss, and
// the gradients left in the model's buffer.
static double step(model_run *r, const char *attention, lt_device device, batch_data *d,
                   bool docs) {
  assert_ok(lt_ctx_init(&r->ctx, device, 0));
  lt_model_config cfg = tiny_model(attention);
  assert_ok(lt_model_create(&r->model, &cfg, device, NULL));
  assert_ok(lt_params_init(&r->model.params, 4321));
  assert_ok(lt_model_plan(&r->model, B, T, false));
  r->batch = (lt_batch){.B = B,
                        .T = T,
                        .tokens = batch_tensor(d->tokens, device),
                        .targets = batch_tensor(d->targets, device),
                        .pos = batch_tensor(d->pos, device)};
  if (docs) r->batch.doc = batch_tensor(d->doc, device);
  return lt_gpu_loss_and_grads(&r->model, &r->ctx, &r->batch, d->n_targets);
}

// worst_tol: the worst parameter gradient's relative L2 tolerance, raised for a batch whose
// gradients bf16-sized changes of the weights move further (lt_gpu_expect_gradients_within).
static void expect_step_matches_cpu(const char *attention, bool docs, double worst_tol) {
  printf("%s%s\n", attention, docs ? ", documents" : "");
  batch_data d;
  make_batch(&d, docs);
  model_run cpu, gpu;
  const double loss_cpu = step(&cpu, attention, LT_CPU, &d, docs);
  const double loss_gpu = step(&gpu, attention, LT_CUDA, &d, docs);
  printf("  loss: cpu %.6f, gpu %.6f (rel. diff %.2g)\n", loss_cpu, loss_gpu,
         fabs(loss_gpu - loss_cpu) / loss_cpu);
  assert_true(fabs(loss_gpu - loss_cpu) < 1e-3 * loss_cpu);
  const lt_params *p = &cpu.model.params;
  const size_t bytes = p->numel * sizeof(float);
  float *g_cpu = malloc(bytes), *g_gpu = malloc(bytes), *g_noisy = malloc(bytes);
  assert_ok(lt_device_copy(g_cpu, LT_CPU, p->grad, LT_CPU, bytes));
  assert_ok(lt_device_copy(g_gpu, LT_CPU, gpu.model.params.grad, LT_CUDA, bytes));
  lt_gpu_noisiest_gradients(&cpu.model, &cpu.ctx, &cpu.batch, d.n_targets, g_cpu, g_noisy, 77);
  lt_gpu_expect_gradients_within(p, g_gpu, g_cpu, g_noisy, worst_tol);
  free(g_cpu), free(g_gpu), free(g_noisy);
  lt_model_destroy(&cpu.model), lt_model_destroy(&gpu.model);
  lt_ctx_destroy(&cpu.ctx), lt_ctx_destroy(&gpu.ctx);
  lt_gpu_free_all();
}

// Some batches make this model's gradients several times more sensitive than others: with seed
// 1795517677 (LT_TEST_SEED) ±2^-8 relative changes of the fp32 weights alone move the CPU's
// layers.1.attn.wq gradient by 0.060 (0.016 for seeds 11-15), and an H100's differed by 0.093,
// with every other parameter's error in the same proportion (1.5-1.9 times the CPU's sensitivity,
// as in ordinary batches); document masks make such batches common (0.02-0.06 in six seeds on the
// CPU), which was the "unexplained" 3-6% gap that kept lightning layers off documents on CUDA
// until the tolerance followed that sensitivity (LT_GPU_NOISE_FACTOR).
static void test_lightning_model_step_on_gpu_matches_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_step_matches_cpu("lightning", false, 3e-2);
  expect_step_matches_cpu("lightning", true, 3e-2);
}

static void test_hybrid_model_step_on_gpu_matches_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_step_matches_cpu("lightning,softmax", false, 3e-2);
  expect_step_matches_cpu("lightning,softmax", true, 3e-2);
}

// wq's gradient is inherently noisier in bf16 here. phi = elu + 1 puts q and k near 1 + x with x
// ~0.2, where bf16's spacing (2^-7 at 1) is ~2% of the variation, and the denominator makes y
// invariant to the scale of q_i, so dq_i is orthogonal to q_i: a small difference of large terms
// (d_o . v'_j) k_j, each carrying bf16 error. A float64 model of this layer with bf16 rounding
// exactly where the GPU rounds (activations, weights, o, d_o, dq/dk/dv, the scan's bf16 scores,
// decayed rows and state) gives wq errors 0.020-0.027 without documents and 0.022-0.031 with them
// over 16 seeds (the H100 measured 0.0245 and 0.0317), other weights under 0.01; 5e-2 bounds that.
// (The weights' own sensitivity, ~0.008 here, is not what limits this model.)
static void test_linear_model_with_denominator_step_on_gpu_matches_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_step_matches_cpu("linear", false, 5e-2);
  expect_step_matches_cpu("linear", true, 5e-2);
}

static void expect_trainer_matches_cpu(const char *attention, const char *dir) {
  printf("%s, 3 trainer steps\n", attention);
  lt_config cfg;
  assert_ok(lt_config_defaults(&cfg));
  cfg.model = tiny_model(attention);
  strcpy(cfg.model.ffn, "swiglu");
  cfg.train.batch = 4, cfg.train.micro_batch = 2; // two accumulated micro-batches
  cfg.train.seq_len = 160, cfg.train.steps = 3, cfg.train.warmup = 0, cfg.train.lr = 1e-3;
  cfg.data.packing = LT_PACK_DOCUMENTS;
  snprintf(cfg.data.path, sizeof cfg.data.path, "%s/tokens.h5", dir);
  snprintf(cfg.run.dir, sizeof cfg.run.dir, "%s/run-%s", dir, attention);
  lt_gpu_expect_trainer_matches_cpu(&cfg, 3, 0);
}

static void test_trainer_trains_lightning_and_hybrid_models_on_gpu_as_on_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  const char *dir = lt_test_tmpdir();
  char path[1024];
  snprintf(path, sizeof path, "%s/tokens.h5", dir);
  lt_gpu_write_dataset(path, 20000);
  expect_trainer_matches_cpu("lightning", dir);
  expect_trainer_matches_cpu("lightning,softmax", dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lightning_model_step_on_gpu_matches_cpu),
      cmocka_unit_test(test_hybrid_model_step_on_gpu_matches_cpu),
      cmocka_unit_test(test_linear_model_with_denominator_step_on_gpu_matches_cpu),
      cmocka_unit_test(test_trainer_trains_lightning_and_hybrid_models_on_gpu_as_on_cpu),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
