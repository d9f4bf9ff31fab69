// longtrain's flash attention, forward and forward + backward, against PyTorch's
// scaled_dot_product_attention on the same GPU in the same run (causal, bf16).
//   bench_attention [--seq T ...] [--heads 16] [--head-dim 128] [--batch 1]
//                   [--reference "python3 .gpu/torch_reference.py"]
// Times are medians of 5 trials of back-to-back repetitions after a warm-up. FLOPs count the
// causal half: forward 2 matmuls of 2 T^2 H D / 2, backward 2.5 times the forward.
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "core/device.h"
#include "core/error.h"
#include "kernels/kernels.h"

enum { MAX_SEQS = 8 };

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

typedef struct attn_bench {
  lt_ctx *ctx;
  lt_tensor q, k, v, o, dout, lse, delta, dq, dk, dv;
  lt_attn_spec spec;
} attn_bench;

static int forward(void *arg) {
  attn_bench *a = arg;
  return lt_attn_fwd(a->ctx, a->o, a->lse, a->q, a->k, a->v, &a->spec);
}

// What one training step's attention does: forward, then the backward from zeroed gradients.
static int forward_backward(void *arg) {
  attn_bench *a = arg;
  LT_TRY(forward(a));
  LT_TRY(lt_attn_bwd_delta(a->ctx, a->delta, a->dout, a->o));
  LT_TRY(lt_zero(a->ctx, a->dq));
  LT_TRY(lt_zero(a->ctx, a->dk));
  LT_TRY(lt_zero(a->ctx, a->dv));
  return lt_attn_bwd(a->ctx, a->dq, a->dk, a->dv, a->dout, a->q, a->k, a->v, a->lse, a->delta,
                     &a->spec);
}

static int bench_seq(lt_ctx *ctx, int64_t b, int64_t t, int h, int d, double *fwd, double *both) {
  attn_bench a = {.ctx = ctx};
  const int64_t qs[4] = {b, t, h, d}, ls[3] = {b, h, t};
  lt_tensor *randoms[] = {&a.q, &a.k, &a.v, &a.dout, &a.o, &a.dk, &a.dv};
  for (size_t i = 0; i < sizeof randoms / sizeof randoms[0]; i++) {
    *randoms[i] = lt_view(NULL, LT_BF16, LT_CUDA, 4, qs);
    LT_TRY(bench_random_bf16(randoms[i], i + 1));
  }
  a.lse = lt_view(NULL, LT_F32, LT_CUDA, 3, ls);
  a.delta = a.lse;
  a.dq = lt_view(NULL, LT_F32, LT_CUDA, 4, qs);
  LT_TRY(lt_device_alloc(LT_CUDA, lt_nbytes(a.lse), "lse", &a.lse.data));
  LT_TRY(lt_device_alloc(LT_CUDA, lt_nbytes(a.delta), "delta", &a.delta.data));
  LT_TRY(lt_device_alloc(LT_CUDA, lt_nbytes(a.dq), "dq", &a.dq.data));
  int32_t *pos = malloc((size_t)(b * t) * sizeof *pos);
  LT_CHECK(pos, LT_ERR_MEMORY, "out of host memory");
  for (int64_t i = 0; i < b * t; i++) pos[i] = (int32_t)(i % t);
  lt_tensor positions = lt_view(NULL, LT_I32, LT_CUDA, 2, (int64_t[]){b, t});
  LT_TRY(lt_device_alloc(LT_CUDA, lt_nbytes(positions), "positions", &positions.data));
  LT_TRY(lt_tensor_from_host(positions, pos));
  free(pos);
  a.spec = (lt_attn_spec){
      .scale = 1.0f / sqrtf((float)d), .causal = true, .q_pos = positions, .k_pos = positions};
  LT_TRY(bench_time_ms(ctx, forward, &a, fwd));
  LT_TRY(bench_time_ms(ctx, forward_backward, &a, both));
  lt_tensor all[] = {a.q, a.k, a.v, a.o, a.dout, a.dk, a.dv, a.lse, a.delta, a.dq, positions};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) lt_device_free(LT_CUDA, all[i].data);
  return LT_OK;
}

int main(int argc, char **argv) {
  int64_t seqs[MAX_SEQS] = {4096, 16384, 65536};
  int n_seqs = 3, heads = 16, head_dim = 128, batch = 1;
  const char *reference = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--seq") == 0) {
      n_seqs = 0;
      while (i + 1 < argc && argv[i + 1][0] != '-' && n_seqs < MAX_SEQS)
        seqs[n_seqs++] = atoll(argv[++i]);
    } else if (strcmp(argv[i], "--heads") == 0 && i + 1 < argc) {
      heads = atoi(argv[++i]);
    } else if (strcmp(argv[i], "--head-dim") == 0 && i + 1 < argc) {
      head_dim = atoi(argv[++i]);
    } else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc) {
      batch = atoi(argv[++i]);
    } else if (strcmp(argv[i], "--reference") == 0 && i + 1 < argc) {
      reference = argv[++i];
    } else {
      fprintf(stderr,
              "usage: %s [--seq T ...] [--heads H] [--head-dim D] [--batch B] "
              "[--reference COMMAND]\n",
              argv[0]);
      return 2;
    }
  }
  lt_ctx ctx;
  int rc = lt_ctx_init(&ctx, LT_CUDA, 0);
  double fwd[MAX_SEQS], both[MAX_SEQS];
  for (int s = 0; s < n_seqs && rc == LT_OK; s++)
    rc = bench_seq(&ctx, batch, seqs[s], heads, head_dim, &fwd[s], &both[s]);
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
    const double t = (double)seqs[s];
    const double flops = 2.0 * 2.0 * t * t * heads * head_dim * batch / 2.0 * 3.5;
    double sf = NAN, sb = NAN;
    for (int r = 0; r < ref.n; r++)
      if (ref.seq[r] == seqs[s]) sf = ref.fwd_ms[r], sb = ref.fwd_bwd_ms[r];
    printf("%7lld | %7.3f ms %6.3f ms %8.1f | %7.3f ms %6.3f ms %8.1f | %.2fx\n",
           (long long)seqs[s], fwd[s], both[s], flops / both[s] / 1e9, sf, sb, flops / sb / 1e9,
           sb / both[s]);
  }
  return 0;
}
