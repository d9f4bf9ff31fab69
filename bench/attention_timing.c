#include "attention_timing.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "core/device.h"
#include "core/error.h"
#include "core/rng.h"

enum { TRIALS = 5 };

bool attn_bench_shape_arg(attn_bench_shape *shape, int argc, char **argv, int *i) {
  const char *flag = argv[*i];
  if (strcmp(flag, "--seq") == 0) {
    shape->n_seqs = 0;
    while (*i + 1 < argc && argv[*i + 1][0] != '-' && shape->n_seqs < ATTN_BENCH_MAX_SEQS)
      shape->seqs[shape->n_seqs++] = atoll(argv[++*i]);
    return true;
  }
  if (*i + 1 >= argc) return false;
  int *value = strcmp(flag, "--heads") == 0      ? &shape->heads
               : strcmp(flag, "--head-dim") == 0 ? &shape->head_dim
               : strcmp(flag, "--batch") == 0    ? &shape->batch
                                                 : NULL;
  if (value) *value = atoi(argv[++*i]);
  return value != NULL;
}

// A device tensor of random bf16 values (a random block repeated: timing needs no more).
static int random_bf16(lt_tensor *t, int ndim, const int64_t *shape, uint64_t seed) {
  *t = lt_view(NULL, LT_BF16, LT_CUDA, ndim, shape);
  LT_TRY(lt_device_alloc(LT_CUDA, lt_nbytes(*t), "a benchmark tensor", &t->data));
  const int64_t n = lt_numel(*t), block = n < (1 << 22) ? n : (1 << 22);
  lt_bf16 *host = malloc((size_t)block * sizeof *host);
  LT_CHECK(host, LT_ERR_MEMORY, "out of host memory");
  lt_rng rng = lt_rng_seed(seed);
  for (int64_t i = 0; i < block; i++) host[i] = lt_f32_to_bf16(lt_rng_normal(&rng));
  for (int64_t at = 0; at < n; at += block) {
    const int64_t count = n - at < block ? n - at : block;
    LT_TRY(lt_device_copy((lt_bf16 *)t->data + at, LT_CUDA, host, LT_CPU, (size_t)count * 2));
  }
  free(host);
  return LT_OK;
}

int attn_bench_create(attn_bench *a, lt_ctx *ctx, int64_t b, int64_t t, int h, int d) {
  *a = (attn_bench){.ctx = ctx};
  const int64_t qs[4] = {b, t, h, d}, ls[3] = {b, h, t}, ps[2] = {b, t};
  LT_TRY(random_bf16(&a->q, 4, qs, 1));
  LT_TRY(random_bf16(&a->k, 4, qs, 2));
  LT_TRY(random_bf16(&a->v, 4, qs, 3));
  LT_TRY(random_bf16(&a->dout, 4, qs, 4));
  LT_TRY(random_bf16(&a->o, 4, qs, 5));
  LT_TRY(random_bf16(&a->dk, 4, qs, 6));
  LT_TRY(random_bf16(&a->dv, 4, qs, 7));
  a->lse = lt_view(NULL, LT_F32, LT_CUDA, 3, ls);
  a->delta = a->lse;
  a->dq = lt_view(NULL, LT_F32, LT_CUDA, 4, qs);
  a->positions = lt_view(NULL, LT_I32, LT_CUDA, 2, ps);
  LT_TRY(lt_device_alloc(LT_CUDA, lt_nbytes(a->lse), "lse", &a->lse.data));
  LT_TRY(lt_device_alloc(LT_CUDA, lt_nbytes(a->delta), "delta", &a->delta.data));
  LT_TRY(lt_device_alloc(LT_CUDA, lt_nbytes(a->dq), "dq", &a->dq.data));
  LT_TRY(lt_device_alloc(LT_CUDA, lt_nbytes(a->positions), "positions", &a->positions.data));
  int32_t *pos = malloc((size_t)(b * t) * sizeof *pos);
  LT_CHECK(pos, LT_ERR_MEMORY, "out of host memory");
  for (int64_t i = 0; i < b * t; i++) pos[i] = (int32_t)(i % t);
  const int rc = lt_tensor_from_host(a->positions, pos);
  free(pos);
  a->spec = (lt_attn_spec){.scale = 1.0f / sqrtf((float)d),
                           .causal = true,
                           .q_pos = a->positions,
                           .k_pos = a->positions};
  return rc;
}

void attn_bench_destroy(attn_bench *a) {
  lt_tensor all[] = {a->q,  a->k,   a->v,     a->o,  a->dout,     a->dk,
                     a->dv, a->lse, a->delta, a->dq, a->positions};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) lt_device_free(LT_CUDA, all[i].data);
  *a = (attn_bench){0};
}

int attn_bench_forward(attn_bench *a) {
  return lt_attn_fwd(a->ctx, a->o, a->lse, a->q, a->k, a->v, &a->spec);
}

int attn_bench_forward_backward(attn_bench *a) {
  LT_TRY(attn_bench_forward(a));
  LT_TRY(lt_attn_bwd_delta(a->ctx, a->delta, a->dout, a->o));
  LT_TRY(lt_zero(a->ctx, a->dq));
  LT_TRY(lt_zero(a->ctx, a->dk));
  LT_TRY(lt_zero(a->ctx, a->dv));
  return lt_attn_bwd(a->ctx, a->dq, a->dk, a->dv, a->dout, a->q, a->k, a->v, a->lse, a->delta,
                     &a->spec);
}

int attn_bench_time_ms(attn_bench *a, int (*fn)(attn_bench *), double *ms) {
  for (int i = 0; i < 2; i++) LT_TRY(fn(a));
  LT_TRY(lt_ctx_sync(a->ctx));
  double start = bench_now_s();
  LT_TRY(fn(a));
  LT_TRY(lt_ctx_sync(a->ctx));
  const double once = bench_now_s() - start;
  const int reps = once > 0.2 ? 1 : (int)(0.2 / once) + 1;
  double trials[TRIALS];
  for (int t = 0; t < TRIALS; t++) {
    start = bench_now_s();
    for (int r = 0; r < reps; r++) LT_TRY(fn(a));
    LT_TRY(lt_ctx_sync(a->ctx));
    trials[t] = (bench_now_s() - start) * 1e3 / reps;
  }
  *ms = bench_median(trials, TRIALS);
  return LT_OK;
}
