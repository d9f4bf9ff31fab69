#include "attention_timing.h"

#include <math.h>
#include <stdlib.h>

#include "bench_common.h"
#include "core/device.h"
#include "core/error.h"

int attn_bench_create(attn_bench *a, lt_ctx *ctx, int64_t b, int64_t t, int h, int d) {
  *a = (attn_bench){.ctx = ctx};
  const int64_t qs[4] = {b, t, h, d}, ls[3] = {b, h, t}, ps[2] = {b, t};
  lt_tensor *randoms[] = {&a->q, &a->k, &a->v, &a->dout, &a->o, &a->dk, &a->dv};
  for (size_t i = 0; i < sizeof randoms / sizeof randoms[0]; i++)
    LT_TRY(bench_random_bf16(randoms[i], 4, qs, i + 1));
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

int attn_bench_forward(void *arg) {
  attn_bench *a = arg;
  return lt_attn_fwd(a->ctx, a->o, a->lse, a->q, a->k, a->v, &a->spec);
}

int attn_bench_forward_backward(void *arg) {
  attn_bench *a = arg;
  LT_TRY(attn_bench_forward(a));
  LT_TRY(lt_attn_bwd_delta(a->ctx, a->delta, a->dout, a->o));
  LT_TRY(lt_zero(a->ctx, a->dq)); // the backward adds into dq, and writes dk and dv
  return lt_attn_bwd(a->ctx, a->dq, a->dk, a->dv, a->dout, a->q, a->k, a->v, a->lse, a->delta,
                     &a->spec);
}

int attn_bench_causal_ms(lt_ctx *ctx, int64_t b, int64_t t, int h, int d, double *fwd,
                         double *both) {
  attn_bench a;
  int rc = attn_bench_create(&a, ctx, b, t, h, d);
  if (rc == LT_OK) rc = bench_time_ms(ctx, attn_bench_forward, &a, fwd);
  if (rc == LT_OK) rc = bench_time_ms(ctx, attn_bench_forward_backward, &a, both);
  attn_bench_destroy(&a);
  return rc;
}
