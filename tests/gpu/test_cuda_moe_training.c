// The MoE layer and a MoE model on the GPU against the CPU: the whole layer (router, plan read back
// to the host, grouped GEMMs, combine, shared expert, auxiliary losses) forward and backward on the
// same bf16-exact weights and inputs, and the trainer training a tiny MoE model a few steps with
// the CPU's fp32 losses.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "gpu_testing.h"
#include "layers/moe.h"
#include "train/trainer.h"

// One MoE layer with its parameters and arenas on one device.
typedef struct layer_run {
  lt_device device;
  lt_layer *layer;
  lt_params params;
  lt_arena acts, scratch;
} layer_run;

static void layer_create(layer_run *r, lt_device device, const lt_model_config *cfg, int64_t B,
                         int64_t T) {
  *r = (layer_run){.device = device};
  lt_params_begin(&r->params, NULL);
  assert_ok(lt_moe_create(&r->layer, &r->params, "moe", cfg, (lt_init_stds){1, 1}));
  assert_ok(lt_params_allocate(&r->params, device));
  lt_arena measure_acts, measure_scratch;
  lt_arena_measure(&measure_acts, device, "acts");
  lt_arena_measure(&measure_scratch, device, "scratch");
  lt_plan plan = {.B = B,
                  .T = T,
                  .act_dtype = device == LT_CUDA ? LT_BF16 : LT_F32,
                  .acts = &measure_acts,
                  .scratch = &measure_scratch};
  assert_ok(r->layer->ops->plan(r->layer, &plan));
  assert_ok(lt_arena_create(&r->acts, device, measure_acts.peak, "acts"));
  assert_ok(lt_arena_create(&r->scratch, device, measure_scratch.peak, "scratch"));
  plan.acts = &r->acts, plan.scratch = &r->scratch;
  assert_ok(r->layer->ops->plan(r->layer, &plan));
}

static void layer_destroy(layer_run *r) {
  r->layer->ops->destroy(r->layer);
  lt_arena_destroy(&r->acts), lt_arena_destroy(&r->scratch);
  lt_params_free(&r->params);
}

// Weights of size ~1/sqrt(fan_in) (O(1) activations), rounded to bf16 so the GPU's compute copy
// holds exactly the CPU's values.
static void fill_weights(lt_params *p) {
  for (int i = 0; i < p->count; i++) {
    const lt_param_info *info = &p->info[i];
    float *w = p->master + info->offset;
    lt_test_fill_normal(w, info->numel, lt_gpu_next_seed(), 1.0f / sqrtf((float)info->shape[1]));
    lt_gpu_round_bf16(w, info->numel);
  }
}

// The gap between the k-th and (k+1)-th largest router logits of token row x.
static double tie_margin(const float *router, const float *x, int e, int k, int64_t d) {
  double logits[64];
  for (int j = 0; j < e; j++) {
    logits[j] = 0;
    for (int64_t i = 0; i < d; i++) logits[j] += (double)router[j * d + i] * x[i];
  }
  return lt_test_top_k_margin(logits, e, k);
}

static lt_model_config layer_config(int e, int k, bool renormalize, double capacity_factor,
                                    int shared, int ffn) {
  return (lt_model_config){.d_model = 64,
                           .ffn_dim = ffn,
                           .moe = {.n_experts = e,
                                   .top_k = k,
                                   .ffn_dim = ffn,
                                   .n_shared_experts = shared,
                                   .renormalize = renormalize,
                                   .capacity_factor = capacity_factor,
                                   .aux_loss_coef = 0.1,
                                   .z_loss_coef = 0.01}};
}

static void expect_layer_matches_cpu(lt_model_config cfg, int64_t B, int64_t T) {
  const int64_t n = B * T, d = cfg.d_model;
  const int e = cfg.moe.n_experts, k = cfg.moe.top_k;
  printf(" E = %d, top-%d, capacity factor %.2f, %d shared expert(s), N = %lld\n", e, k,
         cfg.moe.capacity_factor, cfg.moe.n_shared_experts, (long long)n);
  layer_run cpu, gpu;
  layer_create(&cpu, LT_CPU, &cfg, B, T);
  layer_create(&gpu, LT_CUDA, &cfg, B, T);
  fill_weights(&cpu.params);
  const size_t param_bytes = cpu.params.numel * sizeof(float);
  assert_ok(lt_device_copy(gpu.params.master, LT_CUDA, cpu.params.master, LT_CPU, param_bytes));
  assert_ok(lt_params_sync_compute(&gpu.params));
  assert_ok(lt_params_zero_grad(&cpu.params));
  assert_ok(lt_params_zero_grad(&gpu.params));
  // Inputs far from ties, so both devices choose the same experts (bf16 rounding moves logits by
  // ~1e-6 here, the redraw threshold is 0.05).
  const float *router = cpu.params.master + lt_params_find(&cpu.params, "moe.router")->offset;
  float *x = lt_gpu_random(n * d, 1.0f, true);
  for (int64_t t = 0; t < n; t++)
    while (tie_margin(router, x + t * d, e, k, d) < 0.05) {
      lt_test_fill_normal(x + t * d, d, lt_gpu_next_seed(), 1.0f);
      lt_gpu_round_bf16(x + t * d, d);
    }
  float *dout = lt_gpu_random(n * d, 1.0f, true);
  float *out = malloc(sizeof(float) * n * d), *dx = malloc(sizeof(float) * n * d);
  lt_aux_loss aux_cpu = {.grad_scale = 1.0f}, aux_gpu = {.grad_scale = 1.0f};
  lt_batch batch_cpu = {.B = B, .T = T, .aux = &aux_cpu},
           batch_gpu = {.B = B, .T = T, .aux = &aux_gpu};
  lt_tensor x_cpu = lt_view2(x, LT_F32, LT_CPU, n, d);
  assert_ok(cpu.layer->ops->forward(cpu.layer, &lt_test_cpu, lt_view2(out, LT_F32, LT_CPU, n, d),
                                    x_cpu, &batch_cpu));
  assert_ok(cpu.layer->ops->backward(cpu.layer, &lt_test_cpu, lt_view2(dx, LT_F32, LT_CPU, n, d),
                                     lt_view2(dout, LT_F32, LT_CPU, n, d), x_cpu, &batch_cpu));
  lt_tensor g_x = lt_gpu_upload(x, LT_BF16, 2, LT_SHAPE(n, d));
  lt_tensor g_out = lt_gpu_upload(out, LT_BF16, 2, LT_SHAPE(n, d));
  lt_tensor g_dx = lt_gpu_upload(dx, LT_BF16, 2, LT_SHAPE(n, d));
  assert_ok(lt_zero(&lt_test_gpu, g_out));
  assert_ok(lt_zero(&lt_test_gpu, g_dx));
  assert_ok(gpu.layer->ops->forward(gpu.layer, &lt_test_gpu, g_out, g_x, &batch_gpu));
  assert_ok(gpu.layer->ops->backward(gpu.layer, &lt_test_gpu, g_dx,
                                     lt_gpu_upload(dout, LT_BF16, 2, LT_SHAPE(n, d)), g_x,
                                     &batch_gpu));
  float *got = lt_gpu_fetch(g_out);
  lt_gpu_expect_close("layer output (bf16)", got, out, n * d, 1e-2);
  free(got);
  got = lt_gpu_fetch(g_dx);
  lt_gpu_expect_close("layer dx (bf16)", got, dx, n * d, 1e-2);
  free(got);
  printf("  auxiliary losses: cpu %.8f, gpu %.8f\n", aux_cpu.sum, aux_gpu.sum);
  assert_true(fabs(aux_gpu.sum - aux_cpu.sum) < 1e-5 * fabs(aux_cpu.sum));
  // Every parameter's gradient: the router's, each expert's, the shared expert's.
  float *g_cpu = malloc(param_bytes), *g_gpu = malloc(param_bytes);
  memcpy(g_cpu, cpu.params.grad, param_bytes);
  assert_ok(lt_device_copy(g_gpu, LT_CPU, gpu.params.grad, LT_CUDA, param_bytes));
  assert_true(lt_gpu_print_gradient_errors(&cpu.params, g_gpu, g_cpu) < 2e-2);
  free(g_cpu), free(g_gpu), free(x), free(dout), free(out), free(dx);
  layer_destroy(&cpu), layer_destroy(&gpu);
  lt_gpu_free_all();
}

static void test_moe_layer_on_gpu_matches_cpu_with_drops_and_a_shared_expert(void **state) {
  SKIP_WITHOUT_GPU();
  expect_layer_matches_cpu(layer_config(6, 2, true, 1.0, 1, 32), 2, 48);
}

static void test_switch_layer_top1_dropless_on_gpu_matches_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_layer_matches_cpu(layer_config(5, 1, false, 0.0, 0, 48), 1, 77);
}

// Routing is piecewise constant in the router logits, which bf16 moves by ~1e-3 here: a token
// near a tie may go to another expert on the GPU than on the CPU. A few such tokens change the
// loss by far less than the tolerance; they are why this compares losses, not expert gradients.
static void test_trainer_trains_a_moe_model_on_gpu_as_on_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  enum { STEPS = 3 };
  const char *dir = lt_test_tmpdir();
  lt_config cfg;
  assert_ok(lt_config_defaults(&cfg));
  cfg.model = lt_gpu_small_model();
  cfg.model.moe = (lt_moe_config){.n_experts = 4,
                                  .top_k = 2,
                                  .ffn_dim = 128,
                                  .n_shared_experts = 1,
                                  .renormalize = true,
                                  .capacity_factor = 1.25,
                                  .aux_loss_coef = 0.01,
                                  .z_loss_coef = 0.001};
  strcpy(cfg.model.attention, "softmax");
  strcpy(cfg.model.ffn, "moe");
  cfg.train.batch = 4, cfg.train.micro_batch = 2; // two accumulated micro-batches
  cfg.train.seq_len = 80, cfg.train.steps = STEPS, cfg.train.warmup = 0, cfg.train.lr = 1e-3;
  snprintf(cfg.data.path, sizeof cfg.data.path, "%s/random.h5", dir);
  snprintf(cfg.run.dir, sizeof cfg.run.dir, "%s/run", dir);
  lt_gpu_write_dataset(cfg.data.path, 20000);
  lt_gpu_expect_trainer_matches_cpu(&cfg, STEPS, 2e-2);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_moe_layer_on_gpu_matches_cpu_with_drops_and_a_shared_expert),
      cmocka_unit_test(test_switch_layer_top1_dropless_on_gpu_matches_cpu),
      cmocka_unit_test(test_trainer_trains_a_moe_model_on_gpu_as_on_cpu),
  };
  return cmocka_run_group_tests(tests, lt_gpu_group_setup, lt_gpu_group_teardown);
}
