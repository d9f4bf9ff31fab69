// Our flash attention (lt_attn_fwd, lt_attn_bwd), causal, bf16, timed as one training step uses
// it: what bench_attention sets against PyTorch's SDPA and bench_lightning against lightning.
#ifndef LT_BENCH_FLASH_H
#define LT_BENCH_FLASH_H

#include <stdint.h>

#include "kernels/kernels.h"

// Median milliseconds of the forward and of forward + backward (from zeroed gradients) at batch b,
// t tokens, h heads of width d, on random inputs.
int bench_flash_ms(lt_ctx *ctx, int64_t b, int64_t t, int h, int d, double *fwd, double *both);

#endif
