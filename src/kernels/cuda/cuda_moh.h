// The CUDA side of mixture-of-head attention's ops (kernels.h: lt_moh_route_fwd/_bwd,
// lt_head_gate_fwd/_bwd/_bwd_delta), called by kernels/dispatch.c after its shape checks when
// ctx->device == LT_CUDA. Router logits and the gated activations may be bf16 or f32; gates,
// probabilities and loads are f32, as on the CPU.
#ifndef LT_CUDA_MOH_H
#define LT_CUDA_MOH_H

#include "kernels/kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

int lt_cuda_moh_route_fwd(lt_ctx *ctx, lt_tensor gates, lt_tensor probs, lt_tensor topk,
                          lt_tensor load, lt_tensor logits, int n_shared);
int lt_cuda_moh_route_bwd(lt_ctx *ctx, lt_tensor dlogits, lt_tensor dgates, lt_tensor probs,
                          lt_tensor topk, lt_tensor load, int n_shared, float balance_grad);
int lt_cuda_head_gate_fwd(lt_ctx *ctx, lt_tensor out, lt_tensor x, lt_tensor gates);
int lt_cuda_head_gate_bwd(lt_ctx *ctx, lt_tensor dx, lt_tensor dgates, lt_tensor dout, lt_tensor x,
                          lt_tensor gates);
// In attention_aux.cu: one kernel with attention's delta, which it computes along.
int lt_cuda_head_gate_bwd_delta(lt_ctx *ctx, lt_tensor d_o, lt_tensor dgates, lt_tensor delta,
                                lt_tensor d_gated, lt_tensor o, lt_tensor gates);

#ifdef __cplusplus
}
#endif

#endif
