// The CPU reference kernels on plain pointers and sizes; kernels/dispatch.c calls them after
// checking shapes. fp32 throughout; the math here is what the CUDA kernels must match.
#ifndef LT_CPU_KERNELS_H
#define LT_CPU_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/kernels.h"

void lt_cpu_matmul(float *c, const float *a, bool trans_a, const float *b, bool trans_b, int64_t m,
                   int64_t n, int64_t k, float alpha, float beta);
void lt_cpu_add(float *out, const float *a, const float *b, int64_t n);
void lt_cpu_scale(float *x, float s, int64_t n);
double lt_cpu_sum_squares(const float *x, int64_t n);
double lt_cpu_sum(const float *x, int64_t n);

// table holds the rows [vocab_start, vocab_start + rows) of the whole table.
void lt_cpu_embedding_fwd(float *out, const int32_t *tokens, const float *table, int64_t n,
                          int64_t d, int64_t vocab_start, int64_t rows);
void lt_cpu_embedding_bwd(float *dtable, const float *dout, const int32_t *tokens, int64_t n,
                          int64_t d, int64_t vocab_start, int64_t rows);

void lt_cpu_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *weight, int64_t n,
                        int64_t c, float eps);
void lt_cpu_rmsnorm_bwd(float *dx, float *dweight, const float *dout, const float *x,
                        const float *weight, const float *rstd, int64_t n, int64_t c);

// v NULL: qkv's rows hold the q and k heads only (lt_rope_qkv_fwd).
void lt_cpu_rope_qkv_fwd(float *q, float *k, float *v, const float *qkv, const int32_t *pos,
                         int64_t n, int hq, int hkv, int d, float theta);
void lt_cpu_rope_qkv_bwd(float *dqkv, const float *dq, const float *dk, const float *dv,
                         const int32_t *pos, int64_t n, int hq, int hkv, int d, float theta);

void lt_cpu_swiglu_fwd(float *h, const float *gate_up, int64_t n, int64_t f);
// h may be NULL (not wanted).
void lt_cpu_swiglu_bwd(float *dgate_up, float *h, const float *dh, const float *gate_up, int64_t n,
                       int64_t f);

// dlogits may be NULL (no gradient) or alias logits.
void lt_cpu_cross_entropy(float *losses, float *dlogits, const float *logits,
                          const int32_t *targets, int64_t n, int64_t v, int ignore_index,
                          float grad_scale);
void lt_cpu_cross_entropy_shard_max(float *stats, const float *logits, const int32_t *targets,
                                    int64_t n, int64_t v, int64_t vocab_start);
void lt_cpu_cross_entropy_shard_sum_exp(float *stats, const float *logits, int64_t n, int64_t v);
void lt_cpu_cross_entropy_shard_finish(float *losses, float *logits, const int32_t *targets,
                                       const float *stats, int64_t n, int64_t v,
                                       int64_t vocab_start, int ignore_index, bool want_grad,
                                       float grad_scale);

// The attention kernels' tile: queries and keys in blocks of this many rows.
#define LT_CPU_ATTN_TILE 32

// Attention sizes shared by the forward and backward.
typedef struct lt_cpu_attn_dims {
  int64_t b, tq, tk;
  int hq, hkv, d;
} lt_cpu_attn_dims;

void lt_cpu_attn_fwd(float *o, float *lse, const float *q, const float *k, const float *v,
                     const lt_cpu_attn_dims *dims, const lt_attn_spec *spec);
void lt_cpu_attn_merge(float *o, float *lse, const float *o_part, const float *lse_part, int64_t b,
                       int64_t t, int h, int d);
void lt_cpu_attn_bwd_delta(float *delta, const float *dout, const float *o, int64_t b, int64_t t,
                           int h, int d);
void lt_cpu_attn_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q,
                     const float *k, const float *v, const float *lse, const float *delta,
                     const lt_cpu_attn_dims *dims, const lt_attn_spec *spec);

// Mixture of experts (kernels/cpu/moe.c); sizes as in kernels.h: n tokens, e experts, k choices.
void lt_cpu_moe_route(float *gate, int32_t *expert, float *probs, float *lse, float *prob_sum,
                      const float *logits, int64_t n, int e, int k, bool renormalize);
void lt_cpu_moe_route_bwd(float *dlogits, const float *dgate, const float *gate,
                          const int32_t *expert, const float *probs, const float *lse,
                          const float *balance, float z_scale, int64_t n, int e, int k,
                          bool renormalize);
void lt_cpu_moe_dispatch_plan(int32_t *slot_row, int32_t *row_token, int32_t *offsets,
                              int32_t *counts, const int32_t *expert, int64_t n, int e, int k,
                              int64_t capacity);
void lt_cpu_moe_dispatch(float *xe, const float *x, const int32_t *row_token, int64_t rows,
                         int64_t d);
void lt_cpu_moe_dispatch_bwd(float *dx, const float *dxe, const int32_t *slot_row, int64_t n, int k,
                             int64_t d);
void lt_cpu_moe_combine(float *out, const float *ye, const float *gate, const int32_t *slot_row,
                        int64_t n, int k, int64_t d);
void lt_cpu_moe_combine_bwd(float *dye, float *dgate, const float *dout, const float *ye,
                            const float *gate, const int32_t *slot_row, int64_t n, int k,
                            int64_t d);
void lt_cpu_grouped_matmul(float *c, const float *a, const float *b, bool trans_b,
                           const int64_t *rows, int groups, int64_t n, int64_t k);
void lt_cpu_grouped_matmul_wgrad(float *c, const float *a, const float *b, const int64_t *rows,
                                 int groups, int64_t m, int64_t n);
void lt_cpu_moh_route_fwd(float *gates, float *probs, int32_t *topk, float *load,
                          const float *logits, int64_t n, int n_shared, int n_routed, int top_k);
void lt_cpu_moh_route_bwd(float *dlogits, const float *dgates, const float *probs,
                          const int32_t *topk, const float *load, int64_t n, int n_shared,
                          int n_routed, int top_k, float balance_grad);
void lt_cpu_head_gate_fwd(float *out, const float *x, const float *gates, int64_t n, int h, int d);
void lt_cpu_head_gate_bwd(float *dx, float *dgates, const float *dout, const float *x,
                          const float *gates, int64_t n, int h, int d);
void lt_cpu_head_gate_bwd_delta(float *d_o, float *dgates, float *delta, const float *d_gated,
                                const float *o, const float *gates, int64_t b, int64_t t, int h,
                                int d);

// Linear attention sizes shared by its kernels: v and o rows are e wide, q and k rows d.
typedef struct lt_cpu_linear_dims {
  int64_t b, t;
  int hq, hkv, d, e;
} lt_cpu_linear_dims;

// These two allocate a per-thread workspace and fail with LT_ERR_MEMORY without it.
int lt_cpu_linear_attn_fwd(float *o, const float *q, const float *k, const float *v,
                           const float *prefix, const lt_cpu_linear_dims *dims,
                           const lt_linear_attn_spec *spec);
int lt_cpu_linear_attn_bwd(float *dq, float *dk, float *dv, float *dprefix, const float *dout,
                           const float *q, const float *k, const float *v, const float *prefix,
                           const lt_cpu_linear_dims *dims, const lt_linear_attn_spec *spec);
void lt_cpu_linear_attn_state(float *state, const float *k, const float *v,
                              const lt_cpu_linear_dims *dims, const lt_linear_attn_spec *spec);
void lt_cpu_linear_attn_state_bwd(float *dk, float *dv, const float *dstate, const float *k,
                                  const float *v, const lt_cpu_linear_dims *dims,
                                  const lt_linear_attn_spec *spec);
void lt_cpu_linear_qkv_fwd(float *q, float *k, float *v, const float *qkv, int64_t n, int hq,
                           int hkv, int d, int e, lt_feature_map map);
void lt_cpu_linear_qkv_bwd(float *dqkv, const float *dq, const float *dk, const float *dv,
                           const float *qkv, int64_t n, int hq, int hkv, int d, int e,
                           lt_feature_map map);
void lt_cpu_linear_out_fwd(float *y, float *rstd, const float *o, const float *u, int64_t n, int h,
                           int d, int e, lt_linear_norm norm, lt_gate gate, float eps,
                           const float *row_stat);
void lt_cpu_linear_out_bwd(float *d_o, float *du, const float *dy, const float *o, const float *u,
                           const float *rstd, int64_t n, int h, int d, int e, lt_linear_norm norm,
                           lt_gate gate, float eps, const float *row_stat);
// width: this rank's H*D; row_width: the whole row's over every rank.
void lt_cpu_linear_out_rms_stat(float *row_stat, const float *o, int64_t n, int64_t width,
                                int64_t row_width);
void lt_cpu_linear_out_rms_grad_stat(float *row_stat, const float *dy, const float *o,
                                     const float *u, const float *rstd, int64_t n, int64_t width,
                                     int64_t row_width, lt_gate gate);

void lt_cpu_adamw(float *param, const float *grad, float *m, float *v, const lt_adamw_args *args);

#endif
