// Training throughput of a model config on the GPU against PyTorch (torch.compile, SDPA, fused
// AdamW, bf16 autocast) on the same GPU in the same run, on random tokens.
//   bench_model --config configs/llama-135m.yaml --seq 4096 --batch 8 [--micro-batch M]
//               [--recompute] [--steps 10] [--warmup 3] [--profile]
//               [--reference "python3 .gpu/torch_reference.py"]
// --profile prints the GPU time of every op (LT_CUDA_PROFILE=1) when the run ends.
// Tokens/s counts whole optimizer steps (data loading, forward, backward, clipping, AdamW) over
// --steps steps after --warmup. MFU uses the reference's count, 6 N + 6 L d T FLOPs per token
// (N: every parameter), against the H100's 989 TFLOP/s, so the two MFUs compare directly; a model
// with other attention kinds uses its own count per layer kind (lt_model_train_flops_per_token).
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "core/device.h"
#include "core/error.h"
#include "core/rng.h"
#include "data/dataset.h"
#include "kernels/cuda/cuda_kernels.h"
#include "train/trainer.h"

typedef struct torch_result {
  double tokens_per_s, mfu, peak_gib;
} torch_result;

static void on_model(const char *line, void *arg) {
  torch_result *r = arg;
  r->tokens_per_s = bench_json_number(line, "tokens_per_s");
  r->mfu = bench_json_number(line, "mfu_of_989");
  r->peak_gib = bench_json_number(line, "peak_mem_gib");
}

static int write_random_tokens(const char *path, int64_t n_tokens, int vocab) {
  lt_dataset_writer w;
  LT_TRY(lt_dataset_writer_open(&w, path, "random", vocab, vocab - 1));
  enum { CHUNK = 1 << 20 };
  int32_t *ids = malloc(CHUNK * sizeof *ids);
  LT_CHECK(ids, LT_ERR_MEMORY, "out of host memory");
  lt_rng rng = lt_rng_seed(7);
  int rc = LT_OK;
  for (int64_t at = 0; at < n_tokens && rc == LT_OK; at += CHUNK) {
    const int64_t count = n_tokens - at < CHUNK ? n_tokens - at : CHUNK;
    for (int64_t i = 0; i < count; i++) ids[i] = (int32_t)lt_rng_below(&rng, (uint64_t)vocab);
    rc = lt_dataset_writer_add(&w, ids, count);
  }
  free(ids);
  if (rc != LT_OK) {
    lt_dataset_writer_abort(&w);
    return rc;
  }
  return lt_dataset_writer_commit(&w);
}

typedef struct bench_args {
  const char *config, *reference;
  int seq, batch, micro_batch, steps, warmup;
  bool recompute;
} bench_args;

static int run(const bench_args *a, double *tokens_per_s, double *flops_per_token, double *gpu_gib,
               double *first_loss) {
  char dir[] = "/tmp/longtrain-bench-XXXXXX";
  LT_CHECK(mkdtemp(dir), LT_ERR_IO, "cannot make a temporary folder under /tmp");
  char data[128], run_dir[128], sets[9][160];
  snprintf(data, sizeof data, "%s/random.h5", dir);
  snprintf(run_dir, sizeof run_dir, "%s/run", dir);
  const int steps = a->warmup + a->steps;
  snprintf(sets[0], sizeof sets[0], "train.seq_len=%d", a->seq);
  snprintf(sets[1], sizeof sets[1], "train.batch=%d", a->batch);
  snprintf(sets[2], sizeof sets[2], "train.micro_batch=%d", a->micro_batch);
  snprintf(sets[3], sizeof sets[3], "train.recompute=%s", a->recompute ? "true" : "false");
  snprintf(sets[4], sizeof sets[4], "train.steps=%d", steps);
  snprintf(sets[5], sizeof sets[5], "data.path=%s", data);
  snprintf(sets[6], sizeof sets[6], "run.dir=%s", run_dir);
  snprintf(sets[7], sizeof sets[7], "run.device=cuda");
  // The config's limit on T is for training runs; a benchmark may go past it (RoPE as configured).
  snprintf(sets[8], sizeof sets[8], "model.max_seq_len=%d", a->seq);
  char *overrides[9];
  for (int i = 0; i < 9; i++) overrides[i] = sets[i];
  lt_config cfg;
  LT_TRY(lt_config_load(&cfg, a->config, 9, overrides));
  LT_TRY(write_random_tokens(data, (int64_t)steps * a->batch * a->seq + 1, cfg.model.vocab_size));
  lt_world world = {.rank = 0, .size = 1};
  lt_trainer tr;
  LT_TRY(lt_trainer_create(&tr, &cfg, &world));
  LT_TRY(lt_params_init(&tr.model.params, 1));
  const lt_model_config *m = &tr.model.cfg;
  // The reference's model (softmax, SwiGLU): its count, so the two MFUs compare directly. Other
  // kinds (which it does not train): the model's own count per layer kind
  // (lt_model_train_flops_per_token).
  const bool reference_model =
      strcmp(m->attention, "softmax") == 0 && strcmp(m->ffn, "swiglu") == 0;
  *flops_per_token = reference_model ? 6.0 * (double)lt_model_n_params(&tr.model) +
                                           6.0 * m->n_layers * (double)m->d_model * a->seq
                                     : lt_model_train_flops_per_token(&tr.model, a->seq);
  char acts[32];
  printf("longtrain: %lld parameters, B=%d (micro-batch %d) T=%d%s, %s of activation memory\n",
         (long long)lt_model_n_params(&tr.model), a->batch, a->micro_batch, a->seq,
         a->recompute ? ", recomputation" : "",
         lt_format_bytes((double)(tr.model.acts.capacity + tr.model.scratch.capacity), acts,
                         sizeof acts));
  double start = 0;
  int rc = LT_OK;
  for (int s = 0; s < steps && rc == LT_OK; s++) {
    if (s == a->warmup) {
      start = bench_now_s();
      lt_cuda_profile_reset(&tr.ctx); // the profile covers the timed steps only
    }
    lt_step_metrics metrics;
    rc = lt_trainer_step(&tr, &metrics);
    if (rc == LT_OK && s == 0) *first_loss = metrics.loss;
    if (rc == LT_OK)
      printf("  step %d: loss %.4f, grad norm %.3f\n", s + 1, metrics.loss, metrics.grad_norm);
  }
  const double elapsed = bench_now_s() - start;
  *tokens_per_s = (double)a->steps * a->batch * a->seq / elapsed;
  size_t free_bytes = 0, total_bytes = 0;
  cudaMemGetInfo(&free_bytes, &total_bytes);
  *gpu_gib = (double)(total_bytes - free_bytes) / (1 << 30);
  lt_trainer_destroy(&tr);
  remove(data);
  char path[160];
  snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
  remove(path);
  snprintf(path, sizeof path, "%s/config.yaml", run_dir);
  remove(path);
  remove(run_dir);
  remove(dir);
  return rc;
}

int main(int argc, char **argv) {
  bench_args a = {
      .config = "configs/llama-135m.yaml", .seq = 4096, .batch = 8, .steps = 10, .warmup = 3};
  for (int i = 1; i < argc; i++) {
    const bool more = i + 1 < argc;
    if (strcmp(argv[i], "--config") == 0 && more)
      a.config = argv[++i];
    else if (strcmp(argv[i], "--seq") == 0 && more)
      a.seq = atoi(argv[++i]);
    else if (strcmp(argv[i], "--batch") == 0 && more)
      a.batch = atoi(argv[++i]);
    else if (strcmp(argv[i], "--micro-batch") == 0 && more)
      a.micro_batch = atoi(argv[++i]);
    else if (strcmp(argv[i], "--steps") == 0 && more)
      a.steps = atoi(argv[++i]);
    else if (strcmp(argv[i], "--warmup") == 0 && more)
      a.warmup = atoi(argv[++i]);
    else if (strcmp(argv[i], "--reference") == 0 && more)
      a.reference = argv[++i];
    else if (strcmp(argv[i], "--recompute") == 0)
      a.recompute = true;
    else if (strcmp(argv[i], "--profile") == 0)
      setenv("LT_CUDA_PROFILE", "1", 1);
    else {
      fprintf(stderr,
              "usage: %s [--config FILE] [--seq T] [--batch B] [--micro-batch M] "
              "[--recompute] [--steps N] [--warmup N] [--profile] [--reference COMMAND]\n",
              argv[0]);
      return 2;
    }
  }
  if (a.micro_batch == 0) a.micro_batch = a.batch;
  double tps = 0, flops = 0, gib = 0, loss = 0;
  int rc = run(&a, &tps, &flops, &gib, &loss);
  if (rc != LT_OK) {
    fprintf(stderr, "bench_model: error: %s\n", lt_error_message());
    return rc;
  }
  torch_result ref = {NAN, NAN, NAN};
  if (a.reference) {
    char command[1024];
    snprintf(command, sizeof command, "%s model --seq %d --batch %d", a.reference, a.seq, a.batch);
    bench_reference(command, "torch_model", on_model, &ref);
  }
  struct cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  printf("\n%s, T=%d B=%d%s, on %s (first loss %.3f; ln V = %.3f)\n", a.config, a.seq, a.batch,
         a.recompute ? ", recomputation" : "", prop.name, loss, log(32768.0));
  printf("%10s | %12s %6s %12s\n", "", "tokens/s", "MFU", "GPU memory");
  printf("%10s | %12.0f %5.1f%% %8.1f GiB (in use)\n", "longtrain", tps,
         100.0 * tps * flops / BENCH_PEAK_FLOPS, gib);
  if (a.reference)
    printf("%10s | %12.0f %5.1f%% %8.1f GiB (peak allocated)\n%10s | %11.2fx\n", "PyTorch",
           ref.tokens_per_s, 100.0 * ref.mfu, ref.peak_gib, "ratio", tps / ref.tokens_per_s);
  return 0;
}
