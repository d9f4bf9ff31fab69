// The mixture-of-experts ops on CUDA (kernels/kernels.h, "mixture of experts"): the router, the
// dispatch plan, the gather into expert order and the weighted combine back, and the per-expert
// GEMMs. kernels/dispatch.c calls them after its shape checks when ctx->device == LT_CUDA.
//
// Routing statistics (probs, lse, gates, prob_sum, dlogits) are f32 as on the CPU; the rows that
// move between tokens and experts (x, xe, ye, out and their gradients) are bf16 or f32. Every
// result is deterministic: sums run in a fixed order, and the plan's integer counts are exact, so
// each expert's rows come in the CPU's token order.
#ifndef LT_CUDA_MOE_H
#define LT_CUDA_MOE_H

#include "kernels/kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

// The most experts the router kernels take (model.moe.n_experts' upper bound).
#define LT_CUDA_MOE_MAX_EXPERTS 4096

int lt_cuda_moe_route(lt_ctx *ctx, lt_tensor gate, lt_tensor expert, lt_tensor probs, lt_tensor lse,
                      lt_tensor prob_sum, lt_tensor logits, bool renormalize);
// dlogits may be f32 or bf16 (what the router's backward matmuls read with bf16 activations).
int lt_cuda_moe_route_bwd(lt_ctx *ctx, lt_tensor dlogits, lt_tensor dgate, lt_tensor gate,
                          lt_tensor expert, lt_tensor probs, lt_tensor lse, lt_tensor balance,
                          float z_scale, bool renormalize);
int lt_cuda_moe_dispatch_plan(lt_ctx *ctx, lt_tensor slot_row, lt_tensor row_token,
                              lt_tensor offsets, lt_tensor counts, lt_tensor expert,
                              int64_t capacity);
int lt_cuda_moe_dispatch(lt_ctx *ctx, lt_tensor xe, lt_tensor x, lt_tensor row_token);
int lt_cuda_moe_dispatch_bwd(lt_ctx *ctx, lt_tensor dx, lt_tensor dxe, lt_tensor slot_row);
int lt_cuda_moe_combine(lt_ctx *ctx, lt_tensor out, lt_tensor ye, lt_tensor gate,
                        lt_tensor slot_row);
int lt_cuda_moe_combine_bwd(lt_ctx *ctx, lt_tensor dye, lt_tensor dgate, lt_tensor dout,
                            lt_tensor ye, lt_tensor gate, lt_tensor slot_row);
int lt_cuda_grouped_matmul(lt_ctx *ctx, lt_tensor c, lt_tensor a, lt_tensor b, bool trans_b,
                           const int64_t *rows);
int lt_cuda_grouped_matmul_wgrad(lt_ctx *ctx, lt_tensor c, lt_tensor a, lt_tensor b,
                                 const int64_t *rows);

#ifdef __cplusplus
}
#endif

#endif
