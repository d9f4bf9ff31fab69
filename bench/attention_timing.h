// What the attention benchmarks share: device operands of one flash attention call (lt_attn_fwd,
// lt_attn_bwd), a forward and a training step's forward + backward on them, timed with
// bench_time_ms: what bench_attention sets against PyTorch's SDPA, bench_sparse against dense
// causal attention and bench_lightning against lightning attention.
#ifndef LT_BENCH_ATTENTION_TIMING_H
#define LT_BENCH_ATTENTION_TIMING_H

#include <stdint.h>

#include "kernels/kernels.h"

typedef struct attn_bench {
  lt_ctx *ctx;
  lt_tensor q, k, v, o, dout, lse, delta, dq, dk, dv, positions;
  lt_attn_spec spec; // causal over positions 0 .. T-1 of every row; the caller may add a pattern
} attn_bench;

// Random bf16 q, k, v, dout of (b, t, h, d) (one key/value head per query head) and the outputs
// and gradients they need, on the GPU of ctx.
int attn_bench_create(attn_bench *a, lt_ctx *ctx, int64_t b, int64_t t, int h, int d);
void attn_bench_destroy(attn_bench *a);
// The forward; and what one training step's attention does: forward, then the backward into a
// zeroed dq. `arg` is the attn_bench (the signature bench_time_ms takes).
int attn_bench_forward(void *arg);
int attn_bench_forward_backward(void *arg);
// Median milliseconds of the causal forward and of forward + backward at batch b, t tokens, h
// heads of width d, on random inputs.
int attn_bench_causal_ms(lt_ctx *ctx, int64_t b, int64_t t, int h, int d, double *fwd,
                         double *both);

#endif
