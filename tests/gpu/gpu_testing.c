#include "gpu_testing.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/device.h"
#include "core/rng.h"
#include "data/dataset.h"
#include "kernels/cuda/cuda_runtime_glue.h"
#include "train/trainer.h"

bool lt_gpu_available(void) {
  static int available = -1;
  if (available < 0) {
    available = lt_cuda_device_count() > 0;
    if (!available) printf("no usable GPU: the GPU tests skip\n");
  }
  return available;
}

bool lt_gpu_hopper(void) {
  return lt_gpu_available() && lt_cuda_compute_major() == 9;
}

lt_ctx lt_test_cpu, lt_test_gpu;

int lt_gpu_group_setup(void **state) {
  (void)state;
  lt_ctx_init(&lt_test_cpu, LT_CPU, 0);
  if (lt_gpu_available()) assert_ok(lt_ctx_init(&lt_test_gpu, LT_CUDA, 0));
  return 0;
}

int lt_gpu_group_teardown(void **state) {
  (void)state;
  if (lt_gpu_available()) lt_ctx_destroy(&lt_test_gpu);
  return 0;
}

uint64_t lt_gpu_next_seed(void) {
  static uint64_t seed = 0;
  static bool started = false;
  if (!started) {
    const char *fixed = getenv("LT_TEST_SEED");
    seed = fixed ? strtoull(fixed, NULL, 10) : (uint64_t)time(NULL);
    printf("random inputs from seed %llu (LT_TEST_SEED=%llu replays them)\n",
           (unsigned long long)seed, (unsigned long long)seed);
    started = true;
  }
  return seed++ * 1000003u;
}

void lt_gpu_round_bf16(float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) x[i] = lt_bf16_to_f32(lt_f32_to_bf16(x[i]));
}

float *lt_gpu_random(int64_t n, float std, bool bf16) {
  float *x = malloc((size_t)(n > 0 ? n : 1) * sizeof *x);
  lt_test_fill_normal(x, n, lt_gpu_next_seed(), std);
  if (bf16) lt_gpu_round_bf16(x, n);
  return x;
}

static void *allocations[4096];
static int n_allocations = 0;

static void *device_buffer(size_t bytes) {
  void *p;
  assert_ok(lt_device_alloc(LT_CUDA, bytes ? bytes : 1, "a test tensor", &p));
  if (n_allocations == 4096) fail_msg("more than 4096 device buffers in one test");
  allocations[n_allocations++] = p;
  return p;
}

lt_tensor lt_gpu_upload(const float *host, lt_dtype dtype, int ndim, const int64_t *shape) {
  lt_tensor t = lt_view(NULL, dtype, LT_CUDA, ndim, shape);
  const int64_t n = lt_numel(t);
  t.data = device_buffer(lt_nbytes(t));
  if (dtype == LT_F32) {
    assert_ok(lt_tensor_from_host(t, host));
  } else if (dtype == LT_BF16) {
    lt_bf16 *bits = malloc((size_t)(n > 0 ? n : 1) * sizeof *bits);
    for (int64_t i = 0; i < n; i++) bits[i] = lt_f32_to_bf16(host[i]);
    assert_ok(lt_tensor_from_host(t, bits));
    free(bits);
  } else {
    fail_msg("lt_gpu_upload: f32 or bf16 only");
  }
  return t;
}

lt_tensor lt_gpu_upload_i32(const int32_t *host, int ndim, const int64_t *shape) {
  lt_tensor t = lt_view(NULL, LT_I32, LT_CUDA, ndim, shape);
  t.data = device_buffer(lt_nbytes(t));
  assert_ok(lt_tensor_from_host(t, host));
  return t;
}

float *lt_gpu_fetch(lt_tensor t) {
  const int64_t n = lt_numel(t);
  float *out = malloc((size_t)(n > 0 ? n : 1) * sizeof *out);
  if (t.dtype == LT_F32) {
    assert_ok(lt_tensor_to_host(out, t));
  } else if (t.dtype == LT_BF16) {
    lt_bf16 *bits = malloc((size_t)(n > 0 ? n : 1) * sizeof *bits);
    assert_ok(lt_tensor_to_host(bits, t));
    for (int64_t i = 0; i < n; i++) out[i] = lt_bf16_to_f32(bits[i]);
    free(bits);
  } else {
    fail_msg("lt_gpu_fetch: f32 or bf16 only");
  }
  return out;
}

void lt_gpu_free_all(void) {
  for (int i = 0; i < n_allocations; i++) lt_device_free(LT_CUDA, allocations[i]);
  n_allocations = 0;
}

double lt_gpu_rel_l2(const float *a, const float *b, int64_t n) {
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < n; i++) {
    const double d = (double)a[i] - (double)b[i];
    num += d * d;
    den += (double)b[i] * b[i];
  }
  return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

void lt_gpu_expect_close(const char *what, const float *got, const float *want, int64_t n,
                         double tol) {
  const double err = lt_gpu_rel_l2(got, want, n);
  printf("  %-40s rel. L2 error %.3g (tolerance %.1g)\n", what, err, tol);
  if (!(err < tol)) fail_msg("%s: relative L2 error %.4g, tolerance %.1g", what, err, tol);
}

double lt_gpu_loss_and_grads(lt_model *m, lt_ctx *ctx, const lt_batch *b, double n_targets) {
  double sum;
  assert_ok(lt_params_zero_grad(&m->params));
  assert_ok(lt_model_forward(m, ctx, b, true, (float)(1.0 / n_targets), &sum));
  assert_ok(lt_model_backward(m, ctx, b));
  return sum / n_targets;
}

lt_model_config lt_gpu_small_model(void) {
  return (lt_model_config){.d_model = 128,
                           .n_layers = 2,
                           .n_heads = 2,
                           .n_kv_heads = 1,
                           .ffn_dim = 256,
                           .vocab_size = LT_GPU_SMALL_VOCAB,
                           .max_seq_len = 256,
                           .rope_theta = 10000,
                           .norm_eps = 1e-5,
                           .init = LT_INIT_SCALED,
                           .init_std = 0.02};
}

void lt_gpu_write_dataset(const char *path, int64_t n_tokens) {
  lt_dataset_writer w;
  assert_ok(lt_dataset_writer_open(&w, path, "byte", LT_GPU_SMALL_VOCAB, LT_GPU_SMALL_VOCAB - 1));
  int32_t *ids = malloc(sizeof(int32_t) * (size_t)n_tokens);
  lt_rng rng = lt_rng_seed(lt_gpu_next_seed());
  for (int64_t i = 0; i < n_tokens; i++) ids[i] = (int32_t)lt_rng_below(&rng, LT_GPU_SMALL_VOCAB);
  for (int64_t at = 0, n; at < n_tokens; at += n) { // documents of 1 to 200 tokens
    n = 1 + (int64_t)lt_rng_below(&rng, 200);
    if (n > n_tokens - at) n = n_tokens - at;
    assert_ok(lt_dataset_writer_add(&w, ids + at, n));
  }
  assert_ok(lt_dataset_writer_commit(&w));
  free(ids);
}

void lt_gpu_perturb_like_bf16(float *x, int64_t n, uint64_t seed) {
  lt_rng rng = lt_rng_seed(seed);
  for (int64_t i = 0; i < n; i++) x[i] *= 1.0f + (2.0f * lt_rng_uniform(&rng) - 1.0f) / 256.0f;
}

void lt_gpu_noisiest_gradients(lt_model *m, lt_ctx *ctx, const lt_batch *b, double n_targets,
                               const float *g_cpu, float *g_noisy, uint64_t seed) {
  lt_params *p = &m->params;
  const size_t bytes = p->numel * sizeof(float);
  float *master = malloc(bytes);
  double *moved = calloc((size_t)p->count, sizeof(double));
  assert_non_null(master), assert_non_null(moved);
  memcpy(master, p->master, bytes);
  for (int k = 0; k < LT_GPU_PERTURBATIONS; k++) {
    memcpy(p->master, master, bytes);
    lt_gpu_perturb_like_bf16(p->master, (int64_t)p->numel, seed + (uint64_t)k);
    lt_gpu_loss_and_grads(m, ctx, b, n_targets);
    for (int i = 0; i < p->count; i++) {
      const int64_t off = (int64_t)p->info[i].offset, n = p->info[i].numel;
      const double e = lt_gpu_rel_l2(p->grad + off, g_cpu + off, n);
      if (k > 0 && e <= moved[i]) continue;
      moved[i] = e;
      memcpy(g_noisy + off, p->grad + off, (size_t)n * sizeof(float));
    }
  }
  memcpy(p->master, master, bytes);
  free(master), free(moved);
}

// The tolerance of one gradient (or all of them): tol, or the noise factor times how far the
// perturbed weights' CPU gradient (noisy, or NULL) moved from the CPU's.
static double noise_tolerance(double tol, const float *noisy, const float *g_cpu, int64_t n,
                              double *moved) {
  *moved = noisy ? lt_gpu_rel_l2(noisy, g_cpu, n) : 0.0;
  return fmax(tol, LT_GPU_NOISE_FACTOR * *moved);
}

// Prints the parameters over 1e-2 (and their sensitivity, given noisy) and the worst, which it
// leaves in *worst; returns whether every one is within its tolerance (none: tol = INFINITY).
static bool gradients_within(const lt_params *p, const float *g_gpu, const float *g_cpu,
                             const float *noisy, double tol, double *worst_out) {
  double worst = 0, worst_tol = tol;
  const char *worst_name = "";
  bool ok = true;
  for (int i = 0; i < p->count; i++) {
    const lt_param_info *info = &p->info[i];
    const int64_t off = (int64_t)info->offset, n = info->numel;
    const double e = lt_gpu_rel_l2(g_gpu + off, g_cpu + off, n);
    double moved;
    const double t = noise_tolerance(tol, noisy ? noisy + off : NULL, g_cpu + off, n, &moved);
    if (e > 1e-2) {
      printf("  %-40s rel. L2 error %.3g", info->name, e); // where the error lies
      if (noisy) printf(" (CPU's sensitivity %.3g, tolerance %.2g)", moved, t);
      printf("\n");
    }
    if (!(e <= worst)) worst = e, worst_name = info->name, worst_tol = t;
    ok = ok && e < t;
  }
  printf("  worst parameter gradient: %s, rel. L2 error %.3g", worst_name, worst);
  if (isfinite(worst_tol)) printf(" (tolerance %.2g)", worst_tol);
  printf("\n");
  *worst_out = worst;
  return ok;
}

double lt_gpu_print_gradient_errors(const lt_params *p, const float *g_gpu, const float *g_cpu) {
  double worst;
  gradients_within(p, g_gpu, g_cpu, NULL, INFINITY, &worst);
  return worst;
}

void lt_gpu_expect_gradients_within(const lt_params *p, const float *g_gpu, const float *g_cpu,
                                    const float *g_noisy, double worst_tol) {
  double worst, moved;
  assert_true(gradients_within(p, g_gpu, g_cpu, g_noisy, worst_tol, &worst));
  const int64_t n = (int64_t)p->numel;
  lt_gpu_expect_close("all gradients", g_gpu, g_cpu, n,
                      noise_tolerance(2e-2, g_noisy, g_cpu, n, &moved));
}

void lt_gpu_expect_trainer_matches_cpu(lt_config *cfg, int steps, double aux_tol) {
  lt_world world = {.rank = 0, .size = 1};
  double *losses = calloc((size_t)(4 * steps), sizeof *losses), *aux = losses + 2 * steps;
  for (int dev = 0; dev < 2; dev++) {
    cfg->run.device = dev ? LT_DEVICE_CUDA : LT_DEVICE_CPU;
    assert_ok(lt_config_validate(cfg));
    lt_trainer tr;
    assert_ok(lt_trainer_create(&tr, cfg, &world));
    assert_ok(lt_params_init(&tr.model.params, 99));
    for (int s = 0; s < steps; s++) {
      lt_step_metrics m;
      assert_ok(lt_trainer_step(&tr, &m));
      losses[dev * steps + s] = m.loss, aux[dev * steps + s] = m.aux_loss;
    }
    lt_trainer_destroy(&tr);
  }
  for (int s = 0; s < steps; s++) {
    const double cpu = losses[s], gpu = losses[steps + s];
    printf("  step %d: loss cpu %.6f, gpu %.6f", s + 1, cpu, gpu);
    if (aux_tol > 0) printf("; auxiliary cpu %.6f, gpu %.6f", aux[s], aux[steps + s]);
    printf("\n");
    assert_true(fabs(gpu - cpu) < 1e-3 * cpu);
    if (aux_tol > 0) assert_true(aux[s] > 0 && fabs(aux[steps + s] - aux[s]) < aux_tol * aux[s]);
  }
  free(losses);
}
