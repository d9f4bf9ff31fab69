// Our flash attention timed for the benchmarks (bench_flash.h).
#include "bench_flash.h"

#include <math.h>
#include <stdlib.h>

#include "bench_common.h"
#include "core/device.h"
#include "core/error.h"

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

int bench_flash_ms(lt_ctx *ctx, int64_t b, int64_t t, int h, int d, double *fwd, double *both) {
  attn_bench a = {.ctx = ctx};
  const int64_t qs[4] = {b, t, h, d}, ls[3] = {b, h, t};
  LT_TRY(bench_random_bf16(&a.q, 4, qs, 1));
  LT_TRY(bench_random_bf16(&a.k, 4, qs, 2));
  LT_TRY(bench_random_bf16(&a.v, 4, qs, 3));
  LT_TRY(bench_random_bf16(&a.dout, 4, qs, 4));
  LT_TRY(bench_random_bf16(&a.o, 4, qs, 5));
  LT_TRY(bench_random_bf16(&a.dk, 4, qs, 6));
  LT_TRY(bench_random_bf16(&a.dv, 4, qs, 7));
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
