// What the attention benchmarks share: device operands of one attention call, a forward and a
// training step's forward + backward on them, and their median time.
#ifndef LT_BENCH_ATTENTION_TIMING_H
#define LT_BENCH_ATTENTION_TIMING_H

#include <stdbool.h>

#include "kernels/kernels.h"

enum { ATTN_BENCH_MAX_SEQS = 8 };

// The shape flags every attention benchmark takes: --seq T ..., --heads H, --head-dim D, --batch B.
typedef struct attn_bench_shape {
  int64_t seqs[ATTN_BENCH_MAX_SEQS];
  int n_seqs, heads, head_dim, batch;
} attn_bench_shape;

// Reads argv[*i] and its values when it is one of the shape flags, moving *i past them; false
// when it is not.
bool attn_bench_shape_arg(attn_bench_shape *shape, int argc, char **argv, int *i);

typedef struct attn_bench {
  lt_ctx *ctx;
  lt_tensor q, k, v, o, dout, lse, delta, dq, dk, dv, positions;
  lt_attn_spec spec; // causal over positions 0 .. T-1 of every row; the caller may add a pattern
} attn_bench;

// Random bf16 q, k, v, dout of (b, t, h, d) (one key/value head per query head) and the outputs
// and gradients they need, on the GPU of ctx.
int attn_bench_create(attn_bench *a, lt_ctx *ctx, int64_t b, int64_t t, int h, int d);
void attn_bench_destroy(attn_bench *a);
int attn_bench_forward(attn_bench *a);
// What one training step's attention does: forward, then the backward from zeroed gradients.
int attn_bench_forward_backward(attn_bench *a);
// Median milliseconds per call of fn over trials of back-to-back calls, after a warm-up.
int attn_bench_time_ms(attn_bench *a, int (*fn)(attn_bench *), double *ms);

#endif
