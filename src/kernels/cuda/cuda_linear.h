// The CUDA side of linear attention (kernels.h, "linear attention"): the chunked scan of Lightning
// Attention-2 on the tensor cores (linear_attention.cu, linear_scan.cu) and its elementwise ends
// (linear_attention_io.cu). Called by kernels/dispatch.c after its shape checks. q, k, v, o and
// their gradients are bf16; states, prefixes, rstd and the row statistics f32. Each op matches the
// CPU function of the same name in kernels/cpu/linear_attention.c or linear_attention_io.c.
#ifndef LT_CUDA_LINEAR_H
#define LT_CUDA_LINEAR_H

#include "kernels/kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

int lt_cuda_linear_attn_fwd(lt_ctx *ctx, lt_tensor o, lt_tensor q, lt_tensor k, lt_tensor v,
                            lt_tensor prefix, const lt_linear_attn_spec *spec);
int lt_cuda_linear_attn_bwd(lt_ctx *ctx, lt_tensor dq, lt_tensor dk, lt_tensor dv,
                            lt_tensor dprefix, lt_tensor dout, lt_tensor q, lt_tensor k,
                            lt_tensor v, lt_tensor prefix, const lt_linear_attn_spec *spec);
int lt_cuda_linear_attn_state(lt_ctx *ctx, lt_tensor state, lt_tensor k, lt_tensor v,
                              const lt_linear_attn_spec *spec);
int lt_cuda_linear_attn_state_bwd(lt_ctx *ctx, lt_tensor dk, lt_tensor dv, lt_tensor dstate,
                                  lt_tensor k, lt_tensor v, const lt_linear_attn_spec *spec);

int lt_cuda_linear_qkv_fwd(lt_ctx *ctx, lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor qkv,
                           lt_feature_map map);
int lt_cuda_linear_qkv_bwd(lt_ctx *ctx, lt_tensor dqkv, lt_tensor dq, lt_tensor dk, lt_tensor dv,
                           lt_tensor qkv, lt_feature_map map);
int lt_cuda_linear_out_fwd(lt_ctx *ctx, lt_tensor y, lt_tensor rstd, lt_tensor o, lt_tensor u,
                           lt_linear_norm norm, lt_gate gate, float eps, lt_tensor row_stat);
int lt_cuda_linear_out_bwd(lt_ctx *ctx, lt_tensor d_o, lt_tensor du, lt_tensor dy, lt_tensor o,
                           lt_tensor u, lt_tensor rstd, lt_linear_norm norm, lt_gate gate,
                           float eps, lt_tensor row_stat);
int lt_cuda_linear_out_rms_stat(lt_ctx *ctx, lt_tensor row_stat, lt_tensor o, int64_t row_width);
int lt_cuda_linear_out_rms_grad_stat(lt_ctx *ctx, lt_tensor row_stat, lt_tensor dy, lt_tensor o,
                                     lt_tensor u, lt_tensor rstd, lt_gate gate, int64_t row_width);

#ifdef __cplusplus
}
#endif

#endif
