// The CUDA side of the kernel API (kernels/kernels.h): the same ops on the same lt_tensor
// arguments, called by kernels/dispatch.c after its shape checks when ctx->device == LT_CUDA.
// Activations are bf16 with fp32 accumulation inside every kernel; statistics (rstd, lse, delta,
// losses), gradients of parameters and optimizer state are f32. Each op names in its source the
// CPU function (kernels/cpu/) it must match.
#ifndef LT_CUDA_KERNELS_H
#define LT_CUDA_KERNELS_H

#include <stddef.h>

#include "kernels/kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

// Picks the GPU (the node-local rank modulo the visible GPUs), creates the stream, the cuBLASLt
// handle and the workspaces; ctx->cuda holds them.
int lt_cuda_ctx_init(lt_ctx *ctx);
void lt_cuda_ctx_destroy(lt_ctx *ctx);
int lt_cuda_sync(lt_ctx *ctx);
int lt_cuda_upload(lt_ctx *ctx, lt_tensor dst, const void *src);
// With LT_CUDA_PROFILE=1 the context sums the GPU time of every op and prints the totals when it
// ends; this starts the sums over (e.g. after warm-up steps). A no-op otherwise.
void lt_cuda_profile_reset(lt_ctx *ctx);
void lt_cuda_profile_mark(lt_ctx *ctx, const char *what);

// f32 -> bf16 outside a context, on the default stream (the parameters' compute copy).
int lt_cuda_f32_to_bf16(void *dst, const float *src, size_t n);

int lt_cuda_matmul(lt_ctx *ctx, lt_tensor c, lt_tensor a, bool trans_a, lt_tensor b, bool trans_b,
                   float alpha, float beta);
int lt_cuda_add(lt_ctx *ctx, lt_tensor out, lt_tensor a, lt_tensor b);
int lt_cuda_scale(lt_ctx *ctx, lt_tensor x, float s);
int lt_cuda_zero(lt_ctx *ctx, lt_tensor x);
int lt_cuda_copy(lt_ctx *ctx, lt_tensor dst, lt_tensor src);
int lt_cuda_sum_squares(lt_ctx *ctx, double *out, lt_tensor x);
int lt_cuda_sum(lt_ctx *ctx, double *out, lt_tensor x);

int lt_cuda_embedding_fwd(lt_ctx *ctx, lt_tensor out, lt_tensor tokens, lt_tensor table);
int lt_cuda_embedding_bwd(lt_ctx *ctx, lt_tensor dtable, lt_tensor dout, lt_tensor tokens);
int lt_cuda_rmsnorm_fwd(lt_ctx *ctx, lt_tensor out, lt_tensor rstd, lt_tensor x, lt_tensor weight,
                        float eps);
int lt_cuda_rmsnorm_bwd(lt_ctx *ctx, lt_tensor dx, lt_tensor dweight, lt_tensor dout, lt_tensor x,
                        lt_tensor weight, lt_tensor rstd);
// sum = a + b, then out = rmsnorm(sum): one pass (lt_add_rmsnorm_fwd).
int lt_cuda_add_rmsnorm_fwd(lt_ctx *ctx, lt_tensor sum, lt_tensor out, lt_tensor rstd, lt_tensor a,
                            lt_tensor b, lt_tensor weight, float eps);
int lt_cuda_rope_qkv_fwd(lt_ctx *ctx, lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor qkv,
                         lt_tensor pos, float theta);
int lt_cuda_rope_qkv_bwd(lt_ctx *ctx, lt_tensor dqkv, lt_tensor dq, lt_tensor dk, lt_tensor dv,
                         lt_tensor pos, float theta);
// dqkv's q heads alone: [R^T dq, (left), (left)] (lt_cuda_attn_bwd_rope's last pass).
int lt_cuda_rope_q_bwd(lt_ctx *ctx, lt_tensor dqkv, lt_tensor dq, lt_tensor pos, float theta);
int lt_cuda_swiglu_fwd(lt_ctx *ctx, lt_tensor h, lt_tensor gate_up);
int lt_cuda_swiglu_bwd(lt_ctx *ctx, lt_tensor dgate_up, lt_tensor h, lt_tensor dh,
                       lt_tensor gate_up);
bool lt_cuda_swiglu_linear_fused(lt_ctx *ctx, int64_t f, int64_t k);
bool lt_cuda_qkv_rope_fused(lt_ctx *ctx, int64_t head_dim, int64_t k);
int lt_cuda_qkv_rope_fwd(lt_ctx *ctx, lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor qk,
                         lt_tensor x, lt_tensor w, lt_tensor pos, float theta);
int lt_cuda_swiglu_linear_fwd(lt_ctx *ctx, lt_tensor gate_up, lt_tensor h, lt_tensor x,
                              lt_tensor w);
int lt_cuda_swiglu_linear_bwd(lt_ctx *ctx, lt_tensor dgate_up, lt_tensor h, lt_tensor dh,
                              lt_tensor dy, lt_tensor w_down, lt_tensor gate_up);
int lt_cuda_cross_entropy(lt_ctx *ctx, lt_tensor losses, lt_tensor dlogits, lt_tensor logits,
                          lt_tensor targets, int ignore_index, float grad_scale);

int lt_cuda_attn_fwd(lt_ctx *ctx, lt_tensor o, lt_tensor lse, lt_tensor q, lt_tensor k, lt_tensor v,
                     const lt_attn_spec *spec);
int lt_cuda_attn_merge(lt_ctx *ctx, lt_tensor o, lt_tensor lse, lt_tensor o_part,
                       lt_tensor lse_part);
int lt_cuda_attn_bwd_delta(lt_ctx *ctx, lt_tensor delta, lt_tensor dout, lt_tensor o);
int lt_cuda_attn_bwd(lt_ctx *ctx, lt_tensor dq, lt_tensor dk, lt_tensor dv, lt_tensor dout,
                     lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor lse, lt_tensor delta,
                     const lt_attn_spec *spec);
int lt_cuda_attn_bwd_rope(lt_ctx *ctx, lt_tensor dqkv, lt_tensor dq, lt_tensor dout, lt_tensor q,
                          lt_tensor k, lt_tensor v, lt_tensor lse, lt_tensor delta,
                          const lt_attn_spec *spec, lt_tensor pos, float theta);

int lt_cuda_adamw(lt_ctx *ctx, lt_tensor param, lt_tensor grad, lt_tensor m, lt_tensor v,
                  lt_tensor compute, const lt_adamw_args *args);

#ifdef __cplusplus
}
#endif

#endif
