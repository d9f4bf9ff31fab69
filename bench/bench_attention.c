// longtrain's flash attention, forward and forward + backward, against PyTorch's
// scaled_dot_product_attention on the same GPU in the same run (causal, bf16).
//   bench_attention [--seq T ...] [--heads 16] [--head-dim 128] [--batch 1]
//                   [--reference "python3 .gpu/torch_reference.py"] [--bwd-variants v1 v2 ...]
//                   [--fwd-variants v1 v2 ...]
// Times are medians of 5 trials of back-to-back repetitions after a warm-up. FLOPs count the
// causal half: forward 2 matmuls of 2 T^2 H D / 2, backward 2.5 times the forward.
// --bwd-variants also times forward + backward under each named LT_ATTN_BWD (attention_bwd.cu's
// variants of the Hopper d = 64 backward), --fwd-variants the forward and forward + backward
// under each named LT_ATTN_FWD (attention_fwd.cu's), printed after the table with their ratios to
// SDPA.
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention_timing.h"
#include "bench_common.h"
#include "core/error.h"
#include "kernels/kernels.h"

enum { MAX_SEQS = BENCH_MAX_SEQS, MAX_VARIANTS = 4 };

typedef struct sdpa_result {
  int n;
  long seq[MAX_SEQS];
  double fwd_ms[MAX_SEQS], fwd_bwd_ms[MAX_SEQS];
} sdpa_result;

static void on_sdpa(const char *line, void *arg) {
  sdpa_result *r = arg;
  if (r->n == MAX_SEQS) return;
  r->seq[r->n] = (long)bench_json_number(line, "seq");
  r->fwd_ms[r->n] = bench_json_number(line, "fwd_ms");
  r->fwd_bwd_ms[r->n++] = bench_json_number(line, "fwd_bwd_ms");
}

// FLOPs of a causal forward, and of forward + backward (see the top).
static double causal_fwd_flops(int64_t t, int heads, int head_dim, int batch) {
  return 2.0 * 2.0 * (double)t * (double)t * heads * head_dim * batch / 2.0;
}
static double causal_fwd_bwd_flops(int64_t t, int heads, int head_dim, int batch) {
  return causal_fwd_flops(t, heads, head_dim, batch) * 3.5;
}

// The kernel variants named on the command line for one environment variable, and their times.
typedef struct variant_runs {
  const char *env, *names[MAX_VARIANTS];
  int n;
  double fwd[MAX_VARIANTS][MAX_SEQS], both[MAX_VARIANTS][MAX_SEQS];
} variant_runs;

// Reads the names after argv[*i] (up to the next option) into r.
static void read_variants(int argc, char **argv, int *i, variant_runs *r) {
  while (*i + 1 < argc && argv[*i + 1][0] != '-' && r->n < MAX_VARIANTS)
    r->names[r->n++] = argv[++*i];
}

// Times the forward and forward + backward at every length under each variant, restoring the
// variable afterwards.
static int time_variants(lt_ctx *ctx, const bench_shape *shape, variant_runs *r) {
  const char *chosen = getenv(r->env);
  char saved[64] = "";
  if (chosen) snprintf(saved, sizeof saved, "%s", chosen);
  int rc = LT_OK;
  for (int v = 0; v < r->n && rc == LT_OK; v++) {
    setenv(r->env, r->names[v], 1);
    for (int s = 0; s < shape->n_seqs && rc == LT_OK; s++)
      rc = attn_bench_causal_ms(ctx, shape->batch, shape->seqs[s], shape->heads, shape->head_dim,
                                &r->fwd[v][s], &r->both[v][s]);
  }
  if (chosen)
    setenv(r->env, saved, 1);
  else
    unsetenv(r->env);
  return rc;
}

// SDPA's forward and forward + backward at t tokens (NaN where the reference gave none).
static void sdpa_at(const sdpa_result *ref, int64_t t, double *fwd, double *fwd_bwd) {
  *fwd = *fwd_bwd = NAN;
  for (int r = 0; r < ref->n; r++)
    if (ref->seq[r] == t) *fwd = ref->fwd_ms[r], *fwd_bwd = ref->fwd_bwd_ms[r];
}

int main(int argc, char **argv) {
  bench_shape shape = {
      .seqs = {4096, 16384, 65536}, .n_seqs = 3, .heads = 16, .head_dim = 128, .batch = 1};
  const char *reference = NULL;
  variant_runs bwd_runs = {.env = "LT_ATTN_BWD"}, fwd_runs = {.env = "LT_ATTN_FWD"};
  for (int i = 1; i < argc; i++) {
    if (bench_shape_arg(argc, argv, &i, &shape)) continue;
    if (strcmp(argv[i], "--reference") == 0 && i + 1 < argc) {
      reference = argv[++i];
    } else if (strcmp(argv[i], "--bwd-variants") == 0 && i + 1 < argc) {
      read_variants(argc, argv, &i, &bwd_runs);
    } else if (strcmp(argv[i], "--fwd-variants") == 0 && i + 1 < argc) {
      read_variants(argc, argv, &i, &fwd_runs);
    } else {
      fprintf(stderr,
              "usage: %s [--seq T ...] [--heads H] [--head-dim D] [--batch B] "
              "[--reference COMMAND] [--bwd-variants NAME ...] [--fwd-variants NAME ...]\n",
              argv[0]);
      return 2;
    }
  }
  const int64_t *seqs = shape.seqs;
  const int n_seqs = shape.n_seqs, heads = shape.heads, head_dim = shape.head_dim;
  const int batch = shape.batch;
  lt_ctx ctx;
  int rc = lt_ctx_init(&ctx, LT_CUDA, 0);
  double fwd[MAX_SEQS], both[MAX_SEQS];
  for (int s = 0; s < n_seqs && rc == LT_OK; s++)
    rc = attn_bench_causal_ms(&ctx, batch, seqs[s], heads, head_dim, &fwd[s], &both[s]);
  if (rc == LT_OK) rc = time_variants(&ctx, &shape, &bwd_runs);
  if (rc == LT_OK) rc = time_variants(&ctx, &shape, &fwd_runs);
  if (rc != LT_OK) {
    fprintf(stderr, "bench_attention: error: %s\n", lt_error_message());
    return rc;
  }
  lt_ctx_destroy(&ctx);
  sdpa_result ref = {0};
  if (reference) {
    char command[2048];
    int len = snprintf(command, sizeof command, "%s sdpa --batch %d --heads %d --head-dim %d --seq",
                       reference, batch, heads, head_dim);
    for (int s = 0; s < n_seqs; s++)
      len += snprintf(command + len, sizeof command - (size_t)len, " %lld", (long long)seqs[s]);
    bench_reference(command, "sdpa_causal", on_sdpa, &ref);
  }
  struct cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  printf("\nattention, causal, bf16, batch %d, %d heads of %d, on %s\n", batch, heads, head_dim,
         prop.name);
  printf("%7s | %9s %9s %8s | %9s %9s %8s | %s\n", "T", "ours fwd", "fwd+bwd", "TFLOP/s",
         "SDPA fwd", "fwd+bwd", "TFLOP/s", "speed vs SDPA (fwd+bwd)");
  for (int s = 0; s < n_seqs; s++) {
    const double flops = causal_fwd_bwd_flops(seqs[s], heads, head_dim, batch);
    double sf, sb;
    sdpa_at(&ref, seqs[s], &sf, &sb);
    printf("%7lld | %7.3f ms %6.3f ms %8.1f | %7.3f ms %6.3f ms %8.1f | %.2fx\n",
           (long long)seqs[s], fwd[s], both[s], flops / both[s] / 1e9, sf, sb, flops / sb / 1e9,
           sb / both[s]);
  }
  if (bwd_runs.n > 0) {
    printf("\nbackward variants (LT_ATTN_BWD): fwd+bwd, TFLOP/s, speed vs SDPA\n");
    for (int s = 0; s < n_seqs; s++) {
      const double flops = causal_fwd_bwd_flops(seqs[s], heads, head_dim, batch);
      double sf, sb;
      sdpa_at(&ref, seqs[s], &sf, &sb);
      for (int v = 0; v < bwd_runs.n; v++)
        printf("%7lld | %-4s | %6.3f ms %8.1f | %.2fx\n", (long long)seqs[s], bwd_runs.names[v],
               bwd_runs.both[v][s], flops / bwd_runs.both[v][s] / 1e9, sb / bwd_runs.both[v][s]);
    }
  }
  if (fwd_runs.n > 0) {
    printf("\nforward variants (LT_ATTN_FWD): fwd, TFLOP/s, speed vs SDPA fwd | fwd+bwd, TFLOP/s, "
           "speed vs SDPA\n");
    for (int s = 0; s < n_seqs; s++) {
      const double flops_f = causal_fwd_flops(seqs[s], heads, head_dim, batch);
      const double flops_b = causal_fwd_bwd_flops(seqs[s], heads, head_dim, batch);
      double sf, sb;
      sdpa_at(&ref, seqs[s], &sf, &sb);
      for (int v = 0; v < fwd_runs.n; v++) {
        const double f = fwd_runs.fwd[v][s], b = fwd_runs.both[v][s];
        printf("%7lld | %-4s | %6.3f ms %8.1f %.2fx | %6.3f ms %8.1f %.2fx\n", (long long)seqs[s],
               fwd_runs.names[v], f, flops_f / f / 1e9, sf / f, b, flops_b / b / 1e9, sb / b);
      }
    }
  }
  return 0;
}
