// Lightning attention (linear attention with a decay per head, Lightning Attention-2's chunked
// scan) forward + backward, in tokens per second, against our flash attention at the same shape
// in the same run, and against the published figure of the authors' Triton kernel.
//   bench_lightning [--seq T ...] [--heads 16] [--head-dim 128] [--batch 1] [--flash-max 65536]
// Lightning runs as a training step uses it: lt_linear_attn_fwd, then lt_linear_attn_bwd into
// zeroed bf16 gradients, with the ALiBi decays of a first lightning layer; once on the kernels the
// op chooses (the chunk-parallel ones, linear_chunk.cu, where they apply) and once on the scan
// they replace (LT_LINEAR_KERNELS=scan, linear_scan.cu), for the speedup. Flash attention is
// causal softmax attention (attention_timing.c), timed up to --flash-max tokens (its time grows
// as T^2).
// Times are medians of 5 trials of back-to-back repetitions after a warm-up.
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "attention_timing.h"
#include "core/device.h"
#include "core/error.h"
#include "kernels/kernels.h"
#include "layers/attention/lightning.h"

enum { MAX_SEQS = BENCH_MAX_SEQS, MAX_HEADS = 256 };

// Lightning Attention-2's Triton kernel with decay, fwd + bwd at b=1, h=16, d=128 on one H100
// (DESIGN.md, "Numbers everyone should know"): published here, not measured in this run.
static const double TRITON_LIGHTNING_TOKENS_PER_S = 0.88e6;

typedef struct lightning_bench {
  lt_ctx *ctx;
  lt_tensor q, k, v, o, dout, dq, dk, dv, log_decay;
  lt_linear_attn_spec spec;
} lightning_bench;

static int forward(void *arg) {
  lightning_bench *a = arg;
  const lt_tensor no_prefix = {0};
  return lt_linear_attn_fwd(a->ctx, a->o, a->q, a->k, a->v, no_prefix, &a->spec);
}

static int forward_backward(void *arg) {
  lightning_bench *a = arg;
  const lt_tensor none = {0};
  LT_TRY(forward(a));
  LT_TRY(lt_zero(a->ctx, a->dq));
  LT_TRY(lt_zero(a->ctx, a->dk));
  LT_TRY(lt_zero(a->ctx, a->dv));
  return lt_linear_attn_bwd(a->ctx, a->dq, a->dk, a->dv, none, a->dout, a->q, a->k, a->v, none,
                            &a->spec);
}

// Times forward and forward + backward with LT_LINEAR_KERNELS set to `kernels` (NULL: unset),
// restoring the caller's setting.
static int time_with(const char *kernels, lightning_bench *a, double *fwd, double *both) {
  const char *old = getenv("LT_LINEAR_KERNELS");
  char *saved = old ? strdup(old) : NULL;
  if (kernels)
    setenv("LT_LINEAR_KERNELS", kernels, 1);
  else
    unsetenv("LT_LINEAR_KERNELS");
  int rc = bench_time_ms(a->ctx, forward, a, fwd);
  if (rc == LT_OK) rc = bench_time_ms(a->ctx, forward_backward, a, both);
  if (saved)
    setenv("LT_LINEAR_KERNELS", saved, 1);
  else
    unsetenv("LT_LINEAR_KERNELS");
  free(saved);
  return rc;
}

// ours: the kernels the op picks; scan: the scan's, for the ratio.
typedef struct lightning_times {
  double fwd, both, scan_fwd, scan_both;
} lightning_times;

static int bench_seq(lt_ctx *ctx, int64_t b, int64_t t, int h, int d, lightning_times *times) {
  lightning_bench a = {.ctx = ctx};
  const int64_t shape[4] = {b, t, h, d};
  lt_tensor *all[] = {&a.q, &a.k, &a.v, &a.o, &a.dout, &a.dq, &a.dk, &a.dv};
  for (int i = 0; i < 8; i++) LT_TRY(bench_random_bf16(all[i], 4, shape, (uint64_t)i + 1));
  float log_decay[MAX_HEADS];
  LT_CHECK(h <= MAX_HEADS, LT_ERR_USAGE, "bench_lightning: --heads %d: at most %d", h, MAX_HEADS);
  lt_lightning_log_decay(log_decay, h, 0, 1, false);
  a.log_decay = lt_view(NULL, LT_F32, LT_CUDA, 1, (int64_t[]){h});
  LT_TRY(lt_device_alloc(LT_CUDA, lt_nbytes(a.log_decay), "decays", &a.log_decay.data));
  LT_TRY(lt_tensor_from_host(a.log_decay, log_decay));
  a.spec = (lt_linear_attn_spec){.log_decay = a.log_decay, .block = 64};
  LT_TRY(time_with(getenv("LT_LINEAR_KERNELS"), &a, &times->fwd, &times->both));
  LT_TRY(time_with("scan", &a, &times->scan_fwd, &times->scan_both));
  for (int i = 0; i < 8; i++) lt_device_free(LT_CUDA, all[i]->data);
  lt_device_free(LT_CUDA, a.log_decay.data);
  return LT_OK;
}

int main(int argc, char **argv) {
  bench_shape shape = {
      .seqs = {4096, 16384, 65536, 262144}, .n_seqs = 4, .heads = 16, .head_dim = 128, .batch = 1};
  int64_t flash_max = 65536;
  for (int i = 1; i < argc; i++) {
    if (bench_shape_arg(argc, argv, &i, &shape)) continue;
    if (strcmp(argv[i], "--flash-max") == 0 && i + 1 < argc) {
      flash_max = atoll(argv[++i]);
    } else {
      fprintf(stderr,
              "usage: %s [--seq T ...] [--heads H] [--head-dim D] [--batch B] [--flash-max T]\n",
              argv[0]);
      return 2;
    }
  }
  const int64_t *seqs = shape.seqs;
  const int n_seqs = shape.n_seqs, heads = shape.heads, head_dim = shape.head_dim;
  const int batch = shape.batch;
  lt_ctx ctx;
  int rc = lt_ctx_init(&ctx, LT_CUDA, 0);
  lightning_times times[MAX_SEQS];
  double flash_fwd[MAX_SEQS], flash_both[MAX_SEQS];
  for (int s = 0; s < n_seqs && rc == LT_OK; s++) {
    rc = bench_seq(&ctx, batch, seqs[s], heads, head_dim, &times[s]);
    flash_both[s] = NAN;
    if (rc == LT_OK && seqs[s] <= flash_max)
      rc = attn_bench_causal_ms(&ctx, batch, seqs[s], heads, head_dim, &flash_fwd[s],
                                &flash_both[s]);
  }
  if (rc != LT_OK) {
    fprintf(stderr, "bench_lightning: error: %s\n", lt_error_message());
    return rc;
  }
  lt_ctx_destroy(&ctx);
  struct cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  printf("\nlightning attention (decay per head) vs flash attention (causal), fwd+bwd, bf16, "
         "batch %d, %d heads of %d, on %s\n",
         batch, heads, head_dim, prop.name);
  printf("reference: the authors' Triton Lightning-2 kernel, %.2fM tokens/s on an H100 (published "
         "figure, DESIGN.md; not run here)\n",
         TRITON_LIGHTNING_TOKENS_PER_S / 1e6);
  printf("%7s | %9s %10s %9s | %9s %10s %7s | %10s %9s | %s | %s\n", "T", "ours fwd", "fwd+bwd",
         "Mtok/s", "scan fwd", "fwd+bwd", "vs scan", "flash f+b", "Mtok/s", "vs flash",
         "vs Triton Lightning-2 (published)");
  double lo = INFINITY, hi = 0;
  for (int s = 0; s < n_seqs; s++) {
    const lightning_times *ts = &times[s];
    const double tokens = (double)batch * (double)seqs[s];
    const double rate = tokens / (ts->both * 1e-3), flash_rate = tokens / (flash_both[s] * 1e-3);
    lo = fmin(lo, rate), hi = fmax(hi, rate);
    printf("%7lld | %6.3f ms %7.3f ms %9.2f | %6.3f ms %7.3f ms %6.2fx | %7.3f ms %9.2f | %7.2fx | "
           "%.2fx\n",
           (long long)seqs[s], ts->fwd, ts->both, rate / 1e6, ts->scan_fwd, ts->scan_both,
           ts->scan_both / ts->both, flash_both[s], flash_rate / 1e6, flash_both[s] / ts->both,
           rate / TRITON_LIGHTNING_TOKENS_PER_S);
  }
  printf("lightning tokens/s across T: min %.2fM, max %.2fM (spread %.1f%% of the max)\n", lo / 1e6,
         hi / 1e6, 100.0 * (hi - lo) / hi);
  return 0;
}
