// The memory-bound passes of a training step (everything but the matmuls, attention itself and
// the optimizer), each against a device-to-device copy of the same number of bytes measured in
// the same run: the copy is what the GPU's memory allows, so copy ms / ours is the fraction of
// that bandwidth a pass reaches (1.0 is the limit).
//   bench_passes [--seq 4096] [--batch 8] [--heads 12] [--head-dim 64] [--ffn 2048] [--vocab 32768]
// Defaults: the 135M Llama model's layer (d 768 = 12 heads of 64, SwiGLU 2048) at T = 4096, B = 8.
// The loss runs on the LM head's chunks (lm_head.c: 8192 rows of a 32K vocabulary), bf16 logits
// in and the bf16 gradient out (the model writes it in place; here beside them, the same bytes, so
// that every repetition reads the same logits), once per chunk of the step's tokens.
// The step's total counts each pass as often as a step of that model runs it (per layer: the
// SwiGLU forward and backward, two fused add + norms (the FFN's, and the block's closing add with
// the next block's norm or the final one), two norm backwards, RoPE both ways, attention's delta;
// plus the first block's norm, the final norm's backward, the loss once per chunk and the
// embedding's backward once). Timed outside the step's total: the plain norm and residual add
// (which the fused passes replace), MoH's backward of its head weights with attention's delta,
// fused (our op) and as the two passes it replaces (the 135M model has no MoH), and the
// embedding's backward on text-like tokens (Zipf's law, s = 1: the commonest token is ~9% of
// them). The embedding backward's bytes are dout's read and the f32 table rows its tokens touch,
// read and written. Times are medians of 5 trials of back-to-back repetitions after a warm-up.
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "core/device.h"
#include "core/error.h"
#include "layers/lm_head.h"

enum { N_LAYERS = 12 };

typedef struct passes {
  lt_ctx *ctx;
  lt_tensor gate_up, dgate_up, h, dh;  // SwiGLU: (N, 2F), (N, 2F), (N, F), (N, F) bf16
  lt_tensor x, y, sum, out, dx, w, dw; // rows (N, C) bf16; weight (C) bf16, dweight (C) f32
  lt_tensor rstd;                      // (N) f32
  lt_tensor qkv, q, k, v, dq, pos;     // RoPE: (N, 3H, D), (N, H, D) bf16, dq f32, pos (N)
  lt_tensor o, dout, delta;            // attention's delta: (B, T, H, D) bf16, (B, H, T) f32
  lt_tensor d_o, gates, dgates;        // MoH: d_o (B, T, H, D) bf16 (dout is d_gated), (N, H) f32
  lt_tensor logits, dlogits;           // cross-entropy: (R, V) bf16, (R, V) bf16
  lt_tensor targets, losses;           // (R) i32, (R) f32
  lt_tensor dtable, uniform, zipf;     // embedding: (V, C) f32; tokens (N) i32 of two laws
  lt_tensor copy_src, copy_dst;        // bf16, half the largest pass's bytes each
  int64_t copy_numel;                  // the elements the reference copies now
} passes;

static int swiglu_fwd(void *arg) {
  passes *p = arg;
  return lt_swiglu_fwd(p->ctx, p->h, p->gate_up);
}
static int swiglu_bwd_with_h(void *arg) {
  passes *p = arg;
  return lt_swiglu_bwd(p->ctx, p->dgate_up, p->h, p->dh, p->gate_up);
}
static int rmsnorm_fwd(void *arg) {
  passes *p = arg;
  return lt_rmsnorm_fwd(p->ctx, p->out, p->rstd, p->x, p->w, 1e-5f);
}
static int add_rmsnorm_fwd(void *arg) {
  passes *p = arg;
  return lt_add_rmsnorm_fwd(p->ctx, p->sum, p->out, p->rstd, p->x, p->y, p->w, 1e-5f);
}
static int residual_add(void *arg) {
  passes *p = arg;
  return lt_add(p->ctx, p->sum, p->x, p->y);
}
static int rmsnorm_bwd(void *arg) {
  passes *p = arg;
  return lt_rmsnorm_bwd(p->ctx, p->dx, p->dw, p->y, p->x, p->w, p->rstd);
}
static int rope_fwd(void *arg) {
  passes *p = arg;
  return lt_rope_qkv_fwd(p->ctx, p->q, p->k, p->v, p->qkv, p->pos, 10000.0f);
}
static int rope_bwd(void *arg) {
  passes *p = arg;
  return lt_rope_qkv_bwd(p->ctx, p->qkv, p->dq, p->k, p->v, p->pos, 10000.0f);
}
static int attn_delta(void *arg) {
  passes *p = arg;
  return lt_attn_bwd_delta(p->ctx, p->delta, p->dout, p->o);
}
static int moh_gate_bwd_delta(void *arg) {
  passes *p = arg;
  return lt_head_gate_bwd_delta(p->ctx, p->d_o, p->dgates, p->delta, p->dout, p->o, p->gates);
}
static int moh_gate_bwd_then_delta(void *arg) {
  passes *p = arg;
  LT_TRY(lt_head_gate_bwd(p->ctx, p->d_o, p->dgates, p->dout, p->o, p->gates));
  return lt_attn_bwd_delta(p->ctx, p->delta, p->d_o, p->o);
}
static int cross_entropy(void *arg) {
  passes *p = arg;
  return lt_cross_entropy(p->ctx, p->losses, p->dlogits, p->logits, p->targets, -100, 1e-4f);
}
static int embedding_bwd_uniform(void *arg) {
  passes *p = arg;
  return lt_embedding_bwd(p->ctx, p->dtable, p->y, p->uniform);
}
static int embedding_bwd_zipf(void *arg) {
  passes *p = arg;
  return lt_embedding_bwd(p->ctx, p->dtable, p->y, p->zipf);
}
static int reference_copy(void *arg) {
  passes *p = arg;
  return lt_copy(p->ctx, lt_view1(p->copy_dst.data, LT_BF16, LT_CUDA, p->copy_numel),
                 lt_view1(p->copy_src.data, LT_BF16, LT_CUDA, p->copy_numel));
}

typedef struct pass_case {
  const char *name;
  int (*run)(void *arg);
  double bytes;       // read + written
  int calls_per_step; // in a step of the N_LAYERS-layer model
} pass_case;

// A device tensor of n int32 values copied from the host; t->data freed with lt_device_free.
static int device_i32(lt_tensor *t, const int32_t *host, int64_t n, const char *what) {
  *t = lt_view1(NULL, LT_I32, LT_CUDA, n);
  LT_TRY(lt_device_alloc(LT_CUDA, sizeof(int32_t) * n, what, &t->data));
  return lt_device_copy(t->data, LT_CUDA, host, LT_CPU, sizeof(int32_t) * n);
}

// A device tensor of `dtype`: bf16 ones random, the others zeroed.
static int device_tensor(lt_ctx *ctx, lt_tensor *t, lt_dtype dtype, int ndim, const int64_t *shape,
                         uint64_t seed) {
  if (dtype == LT_BF16) return bench_random_bf16(t, ndim, shape, seed);
  *t = lt_view(NULL, dtype, LT_CUDA, ndim, shape);
  LT_TRY(lt_device_alloc(LT_CUDA, lt_nbytes(*t), "a benchmark tensor", &t->data));
  return lt_zero(ctx, *t);
}

// n tokens of a vocabulary of v, the same every run: uniform, or by Zipf's law (token k with
// probability proportional to 1 / (k + 1)). Returns how many distinct tokens there are, or -1
// when out of host memory.
static int64_t embedding_tokens(int32_t *ids, int64_t n, int64_t v, bool zipf) {
  double *cdf = malloc(sizeof(double) * (size_t)v);
  char *seen = calloc((size_t)v, 1);
  if (!cdf || !seen) {
    free(cdf), free(seen);
    return -1;
  }
  double total = 0;
  for (int64_t k = 0; k < v; k++) cdf[k] = total += zipf ? 1.0 / (double)(k + 1) : 1.0;
  uint64_t state = 88172645463325252ull;
  int64_t distinct = 0;
  for (int64_t i = 0; i < n; i++) {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17; // xorshift64
    const double goal = (double)(state >> 11) / 9007199254740992.0 * total;
    int64_t lo = 0, hi = v - 1; // the first k with cdf[k] > goal
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (cdf[mid] > goal)
        hi = mid;
      else
        lo = mid + 1;
    }
    ids[i] = (int32_t)lo;
    distinct += !seen[lo], seen[lo] = 1;
  }
  free(cdf), free(seen);
  return distinct;
}

static int make_passes(passes *p, int64_t B, int64_t T, int64_t H, int64_t D, int64_t F, int64_t V,
                       int64_t copy_numel) {
  const int64_t n = B * T, c = H * D, r = lt_lm_head_chunk_rows(V, n);
  uint64_t seed = 1;
  struct {
    lt_tensor *t;
    lt_dtype dtype;
    int ndim;
    int64_t shape[4];
  } specs[] = {
      {&p->gate_up, LT_BF16, 2, {n, 2 * F}},
      {&p->dgate_up, LT_BF16, 2, {n, 2 * F}},
      {&p->h, LT_BF16, 2, {n, F}},
      {&p->dh, LT_BF16, 2, {n, F}},
      {&p->x, LT_BF16, 2, {n, c}},
      {&p->y, LT_BF16, 2, {n, c}},
      {&p->sum, LT_BF16, 2, {n, c}},
      {&p->out, LT_BF16, 2, {n, c}},
      {&p->dx, LT_BF16, 2, {n, c}},
      {&p->w, LT_BF16, 1, {c}},
      {&p->dw, LT_F32, 1, {c}},
      {&p->rstd, LT_F32, 1, {n}},
      {&p->qkv, LT_BF16, 3, {n, 3 * H, D}},
      {&p->q, LT_BF16, 3, {n, H, D}},
      {&p->k, LT_BF16, 3, {n, H, D}},
      {&p->v, LT_BF16, 3, {n, H, D}},
      {&p->dq, LT_F32, 3, {n, H, D}},
      {&p->o, LT_BF16, 4, {B, T, H, D}},
      {&p->dout, LT_BF16, 4, {B, T, H, D}},
      {&p->delta, LT_F32, 3, {B, H, T}},
      {&p->d_o, LT_BF16, 4, {B, T, H, D}},
      {&p->gates, LT_F32, 2, {n, H}},
      {&p->dgates, LT_F32, 2, {n, H}},
      {&p->logits, LT_BF16, 2, {r, V}},
      {&p->dlogits, LT_BF16, 2, {r, V}},
      {&p->losses, LT_F32, 1, {r}},
      {&p->dtable, LT_F32, 2, {V, c}},
      {&p->copy_src, LT_BF16, 1, {copy_numel}},
      {&p->copy_dst, LT_BF16, 1, {copy_numel}},
  };
  for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++)
    LT_TRY(
        device_tensor(p->ctx, specs[i].t, specs[i].dtype, specs[i].ndim, specs[i].shape, seed++));
  // rstd as the forward leaves it (about 1 for unit-variance rows), random normal logits (the
  // bf16 gradient's random values, before any pass overwrites them), positions 0..T-1 per row and
  // targets spread over the vocabulary.
  LT_TRY(rmsnorm_fwd(p));
  LT_TRY(lt_copy(p->ctx, p->logits, p->dlogits));
  int32_t *ids = malloc(sizeof(int32_t) * (n > r ? n : r));
  LT_CHECK(ids, LT_ERR_MEMORY, "out of host memory");
  for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)(i % T);
  int rc = device_i32(&p->pos, ids, n, "positions");
  for (int64_t i = 0; i < r; i++) ids[i] = (int32_t)(i * 7919 % V);
  if (rc == LT_OK) rc = device_i32(&p->targets, ids, r, "targets");
  for (int zipf = 0; zipf < 2 && rc == LT_OK; zipf++)
    rc = embedding_tokens(ids, n, V, zipf) < 0
             ? lt_fail(LT_ERR_MEMORY, "out of host memory for the tokens")
             : device_i32(zipf ? &p->zipf : &p->uniform, ids, n, "tokens");
  free(ids);
  return rc;
}

static void free_passes(passes *p) {
  lt_tensor *all[] = {
      &p->gate_up,  &p->dgate_up, &p->h,      &p->dh,      &p->x,       &p->y,       &p->sum,
      &p->out,      &p->dx,       &p->w,      &p->dw,      &p->rstd,    &p->qkv,     &p->q,
      &p->k,        &p->v,        &p->dq,     &p->pos,     &p->o,       &p->dout,    &p->delta,
      &p->d_o,      &p->gates,    &p->dgates, &p->logits,  &p->dlogits, &p->targets, &p->losses,
      &p->copy_src, &p->copy_dst, &p->dtable, &p->uniform, &p->zipf};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    if (all[i]->data) lt_device_free(LT_CUDA, all[i]->data);
}

int main(int argc, char **argv) {
  bench_shape shape = {.seqs = {4096}, .n_seqs = 1, .heads = 12, .head_dim = 64, .batch = 8};
  int64_t F = 2048, V = 32768;
  for (int i = 1; i < argc; i++) {
    if (bench_shape_arg(argc, argv, &i, &shape)) continue;
    if (strcmp(argv[i], "--ffn") == 0 && i + 1 < argc) {
      F = atoll(argv[++i]);
    } else if (strcmp(argv[i], "--vocab") == 0 && i + 1 < argc) {
      V = atoll(argv[++i]);
    } else {
      fprintf(stderr,
              "usage: %s [--seq T] [--batch B] [--heads H] [--head-dim D] [--ffn F] [--vocab V]\n",
              argv[0]);
      return 2;
    }
  }
  const int64_t B = shape.batch, T = shape.seqs[0], H = shape.heads, D = shape.head_dim;
  const double n = (double)(B * T), c = (double)(H * D), f = (double)F, qkv = 3.0 * c;
  const int64_t loss_rows = lt_lm_head_chunk_rows(V, B * T),
                loss_chunks = (B * T + loss_rows - 1) / loss_rows;
  // The embedding backward's tokens, for the table rows they touch (make_passes draws the same).
  int32_t *ids = malloc(sizeof(int32_t) * (size_t)(B * T));
  const int64_t rows_uniform = ids ? embedding_tokens(ids, B * T, V, false) : -1,
                rows_zipf = ids ? embedding_tokens(ids, B * T, V, true) : -1;
  free(ids);
  if (rows_uniform < 0 || rows_zipf < 0) {
    fprintf(stderr, "bench_passes: out of host memory for %lld tokens\n", (long long)(B * T));
    return 1;
  }
  const pass_case cases[] = {
      {"swiglu_fwd", swiglu_fwd, n * 3 * f * 2, N_LAYERS},
      {"swiglu_bwd (+ h)", swiglu_bwd_with_h, n * 6 * f * 2, N_LAYERS},
      {"add_rmsnorm_fwd", add_rmsnorm_fwd, n * 4 * c * 2, 2 * N_LAYERS},
      {"rmsnorm_fwd", rmsnorm_fwd, n * 2 * c * 2, 1},
      {"add (residual)", residual_add, n * 3 * c * 2, 0},
      {"rmsnorm_bwd (dx +=)", rmsnorm_bwd, n * 4 * c * 2, 2 * N_LAYERS + 1},
      {"rope_qkv_fwd", rope_fwd, n * 2 * qkv * 2, N_LAYERS},
      {"rope_qkv_bwd (f32 dq)", rope_bwd, n * (c * 4 + 2 * c * 2 + qkv * 2), N_LAYERS},
      {"attn_bwd_delta", attn_delta, n * (2 * c * 2 + H * 4), N_LAYERS},
      {"moh gate_bwd_delta", moh_gate_bwd_delta, n * (3 * c * 2 + 3 * H * 4), 0},
      {"moh gate_bwd + delta", moh_gate_bwd_then_delta, n * (5 * c * 2 + 3 * H * 4), 0},
      {"cross_entropy (bf16)", cross_entropy, (double)loss_rows * ((double)V * (2 + 2) + 4 + 4),
       (int)loss_chunks},
      {"embedding_bwd", embedding_bwd_uniform, n * c * 2 + (double)rows_uniform * c * 8, 1},
      {"embedding_bwd (Zipf)", embedding_bwd_zipf, n * c * 2 + (double)rows_zipf * c * 8, 0},
  };
  const int n_cases = (int)(sizeof cases / sizeof cases[0]);
  double most_bytes = 0;
  for (int i = 0; i < n_cases; i++)
    if (cases[i].bytes > most_bytes) most_bytes = cases[i].bytes;
  lt_ctx ctx;
  int rc = lt_ctx_init(&ctx, LT_CUDA, 0);
  passes p = {.ctx = &ctx};
  if (rc == LT_OK) rc = make_passes(&p, B, T, H, D, F, V, (int64_t)(most_bytes / 4));
  double ours[32], copy[32];
  for (int i = 0; i < n_cases && rc == LT_OK; i++) {
    rc = bench_time_ms(&ctx, cases[i].run, &p, &ours[i]);
    p.copy_numel = (int64_t)(cases[i].bytes / 4); // reads and writes half the bytes each
    if (rc == LT_OK) rc = bench_time_ms(&ctx, reference_copy, &p, &copy[i]);
  }
  if (rc != LT_OK) {
    fprintf(stderr, "bench_passes: error: %s\n", lt_error_message());
    return rc;
  }
  free_passes(&p);
  lt_ctx_destroy(&ctx);
  struct cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  printf("\nmemory-bound passes, bf16, %lld tokens (B %lld, T %lld), %lld heads of %lld, SwiGLU "
         "%lld, loss on %lld x %lld bf16 logits, on %s\n",
         (long long)(B * T), (long long)B, (long long)T, (long long)H, (long long)D, (long long)F,
         (long long)loss_rows, (long long)V, prop.name);
  printf("reference: a device-to-device copy of the same bytes, in this run\n");
  printf("embedding_bwd: %lld tokens touch %lld table rows (uniform) or %lld (Zipf)\n",
         (long long)(B * T), (long long)rows_uniform, (long long)rows_zipf);
  printf("%-22s | %8s | %8s %7s | %8s | %s\n", "pass", "MB", "ours ms", "GB/s", "copy ms",
         "copy / ours");
  double step_ours = 0, step_copy = 0;
  for (int i = 0; i < n_cases; i++) {
    printf("%-22s | %8.1f | %8.4f %7.0f | %8.4f | %.2f\n", cases[i].name, cases[i].bytes / 1e6,
           ours[i], cases[i].bytes / (ours[i] * 1e6), copy[i], copy[i] / ours[i]);
    step_ours += cases[i].calls_per_step * ours[i];
    step_copy += cases[i].calls_per_step * copy[i];
  }
  printf("per step of the %d-layer model: ours %.3f ms, at copy bandwidth %.3f ms, ratio %.2f\n",
         N_LAYERS, step_ours, step_copy, step_copy / step_ours);
  return 0;
}
