// The fused matmuls (swiglu_matmul.cu) against what they replace, timed in the same run: cuBLASLt's
// matmuls then our pass (LT_SWIGLU_MATMUL=unfused, LT_QKV_ROPE_MATMUL=unfused), which is also what
// PyTorch runs (a matmul, then the elementwise kernels).
//   forward:  gate_up = x [W_gate; W_up]^T and h = silu(gate) * up
//   backward: dh = dy W_down, then dgate_up and h from gate_up (dh never stored, fused)
//   q|k|v:    q, k = RoPE(x [W_q; W_k]^T), v = x W_v^T (unfused: the q|k matmul, v's, RoPE's pass)
//   bench_swiglu_matmul [--seq 16384] [--batch 2] [--dim 768] [--ffn 2048] [--heads 12]
// Defaults: the 135M Llama model's FFN and attention projection (12 + 2 x 12 heads of 64) at
// T = 16384, B = 2 (32768 rows). TFLOP/s counts the matmul's multiply-adds only. Times are medians
// of 5 trials after a warm-up (bench_time_ms).
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "core/device.h"
#include "core/error.h"

typedef struct ffn {
  lt_ctx *ctx;
  lt_tensor x, w, gate_up, h, dy, w_down, dgate_up, dh;
  lt_tensor q, k, v, qk, wqkv, pos; // the attention's projection
} ffn;

static int forward(void *arg) {
  ffn *p = arg;
  return lt_swiglu_linear_fwd(p->ctx, p->gate_up, p->h, p->x, p->w);
}
static int backward(void *arg) {
  ffn *p = arg;
  return lt_swiglu_linear_bwd(p->ctx, p->dgate_up, p->h, p->dh, p->dy, p->w_down, p->gate_up);
}
static int backward_no_h(void *arg) { // as the model runs it: h kept from the forward
  ffn *p = arg;
  const lt_tensor no_h = {0};
  return lt_swiglu_linear_bwd(p->ctx, p->dgate_up, no_h, p->dh, p->dy, p->w_down, p->gate_up);
}
static int qkv_rope(void *arg) {
  ffn *p = arg;
  return lt_qkv_rope_fwd(p->ctx, p->q, p->k, p->v, p->qk, p->x, p->wqkv, p->pos, 10000.0f);
}

// Times fn fused and unfused (the environment variable `choice` set to "unfused"), in that order,
// then again, keeping each one's best.
static int time_both(lt_ctx *ctx, int (*fn)(void *), ffn *p, const char *choice, double *fused,
                     double *unfused) {
  *fused = *unfused = 1e30;
  for (int round = 0; round < 2; round++)
    for (int f = 1; f >= 0; f--) {
      if (f)
        unsetenv(choice);
      else
        setenv(choice, "unfused", 1);
      double ms;
      LT_TRY(bench_time_ms(ctx, fn, p, &ms));
      double *best = f ? fused : unfused;
      if (ms < *best) *best = ms;
    }
  unsetenv(choice);
  return LT_OK;
}

int main(int argc, char **argv) {
  int64_t T = 16384, B = 2, D = 768, F = 2048, H = 12;
  const int64_t HD = 64;
  for (int i = 1; i < argc; i++) {
    int64_t *dst = NULL;
    if (strcmp(argv[i], "--seq") == 0) dst = &T;
    if (strcmp(argv[i], "--batch") == 0) dst = &B;
    if (strcmp(argv[i], "--dim") == 0) dst = &D;
    if (strcmp(argv[i], "--ffn") == 0) dst = &F;
    if (strcmp(argv[i], "--heads") == 0) dst = &H;
    if (!dst || i + 1 >= argc || atoll(argv[i + 1]) <= 0) {
      fprintf(stderr, "usage: %s [--seq T] [--batch B] [--dim D] [--ffn F] [--heads H]\n", argv[0]);
      return 2;
    }
    *dst = atoll(argv[++i]);
  }
  const int64_t n = B * T;
  lt_ctx ctx;
  int rc = lt_ctx_init(&ctx, LT_CUDA, 0);
  ffn p = {.ctx = &ctx};
  struct {
    lt_tensor *t;
    int64_t rows, cols;
  } specs[] = {{&p.x, n, D},
               {&p.w, 2 * F, D},
               {&p.gate_up, n, 2 * F},
               {&p.h, n, F},
               {&p.dy, n, D},
               {&p.w_down, D, F},
               {&p.dgate_up, n, 2 * F},
               {&p.dh, n, F},
               {&p.q, n, H * HD},
               {&p.k, n, H * HD},
               {&p.v, n, H * HD},
               {&p.qk, n, 2 * H * HD},
               {&p.wqkv, 3 * H * HD, D}};
  const int n_specs = (int)(sizeof specs / sizeof specs[0]);
  for (int i = 0; i < n_specs && rc == LT_OK; i++)
    rc = bench_random_bf16(specs[i].t, 2, LT_SHAPE(specs[i].rows, specs[i].cols), (uint64_t)i + 1);
  // The projection's tensors as its op takes them: heads of HD, and each sequence's positions.
  p.q = lt_reshape(p.q, 3, LT_SHAPE(n, H, HD)), p.k = lt_reshape(p.k, 3, LT_SHAPE(n, H, HD));
  p.v = lt_reshape(p.v, 3, LT_SHAPE(n, H, HD)), p.qk = lt_reshape(p.qk, 3, LT_SHAPE(n, 2 * H, HD));
  int32_t *pos = malloc(sizeof(int32_t) * n);
  for (int64_t i = 0; i < n; i++) pos[i] = (int32_t)(i % T);
  p.pos = lt_view1(NULL, LT_I32, LT_CUDA, n);
  if (rc == LT_OK) rc = lt_device_alloc(LT_CUDA, sizeof(int32_t) * n, "positions", &p.pos.data);
  if (rc == LT_OK) rc = lt_device_copy(p.pos.data, LT_CUDA, pos, LT_CPU, sizeof(int32_t) * n);
  free(pos);
  double fwd_fused = 0, fwd_unfused = 0, bwd_fused = 0, bwd_unfused = 0, bwd0_fused = 0,
         bwd0_unfused = 0, qkv_fused = 0, qkv_unfused = 0;
  if (rc == LT_OK) rc = time_both(&ctx, forward, &p, "LT_SWIGLU_MATMUL", &fwd_fused, &fwd_unfused);
  if (rc == LT_OK) rc = time_both(&ctx, backward, &p, "LT_SWIGLU_MATMUL", &bwd_fused, &bwd_unfused);
  if (rc == LT_OK)
    rc = time_both(&ctx, backward_no_h, &p, "LT_SWIGLU_MATMUL", &bwd0_fused, &bwd0_unfused);
  if (rc == LT_OK)
    rc = time_both(&ctx, qkv_rope, &p, "LT_QKV_ROPE_MATMUL", &qkv_fused, &qkv_unfused);
  if (rc != LT_OK) {
    fprintf(stderr, "bench_swiglu_matmul: error: %s\n", lt_error_message());
    return 1;
  }
  const bool fuses = lt_swiglu_linear_fused(&ctx, F, D) && lt_qkv_rope_fused(&ctx, HD, D);
  for (int i = 0; i < n_specs; i++) lt_device_free(LT_CUDA, specs[i].t->data);
  lt_device_free(LT_CUDA, p.pos.data);
  lt_ctx_destroy(&ctx);
  struct cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  printf(
      "\nFused matmuls, bf16, %lld rows (B %lld, T %lld) of %lld: SwiGLU over %lld hidden units, "
      "q|k|v over %lld + 2 x %lld heads of %lld, on %s%s\n",
      (long long)n, (long long)B, (long long)T, (long long)D, (long long)F, (long long)H,
      (long long)H, (long long)HD, prop.name,
      fuses ? "" : " (the fused kernels do not run here: every row is unfused)");
  printf("reference: cuBLASLt's matmuls, then the SwiGLU or RoPE pass (LT_SWIGLU_MATMUL=unfused, "
         "LT_QKV_ROPE_MATMUL=unfused), this run\n");
  printf("%-34s | %9s %8s | %9s %8s | %s\n", "", "fused ms", "TFLOP/s", "unfused", "TFLOP/s",
         "speed vs unfused");
  const double fwd_flops = 2.0 * n * D * 2 * F, bwd_flops = 2.0 * n * D * F;
  printf("%-34s | %9.4f %8.1f | %9.4f %8.1f | %.2fx\n", "forward (gate_up = x W^T, h)", fwd_fused,
         fwd_flops / (fwd_fused * 1e9), fwd_unfused, fwd_flops / (fwd_unfused * 1e9),
         fwd_unfused / fwd_fused);
  printf("%-34s | %9.4f %8.1f | %9.4f %8.1f | %.2fx\n", "backward (dh = dy W_down, dgate_up, h)",
         bwd_fused, bwd_flops / (bwd_fused * 1e9), bwd_unfused, bwd_flops / (bwd_unfused * 1e9),
         bwd_unfused / bwd_fused);
  printf("%-34s | %9.4f %8.1f | %9.4f %8.1f | %.2fx\n", "backward without h (the model's)",
         bwd0_fused, bwd_flops / (bwd0_fused * 1e9), bwd0_unfused, bwd_flops / (bwd0_unfused * 1e9),
         bwd0_unfused / bwd0_fused);
  char label[64];
  snprintf(label, sizeof label, "q|k|v + RoPE (%lld + 2 x %lld heads)", (long long)H, (long long)H);
  const double qkv_flops = 2.0 * n * D * 3 * H * HD;
  printf("%-34s | %9.4f %8.1f | %9.4f %8.1f | %.2fx\n", label, qkv_fused,
         qkv_flops / (qkv_fused * 1e9), qkv_unfused, qkv_flops / (qkv_unfused * 1e9),
         qkv_unfused / qkv_fused);
  printf(
      "per step of the 12-layer model (its backward without h): fused %.3f ms, unfused %.3f ms\n",
      12 * (fwd_fused + bwd0_fused + qkv_fused), 12 * (fwd_unfused + bwd0_unfused + qkv_unfused));
  return 0;
}
