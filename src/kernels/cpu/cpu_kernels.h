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

void lt_cpu_embedding_fwd(float *out, const int32_t *tokens, const float *table, int64_t n,
                          int64_t d);
void lt_cpu_embedding_bwd(float *dtable, const float *dout, const int32_t *tokens, int64_t n,
                          int64_t d);

void lt_cpu_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *weight, int64_t n,
                        int64_t c, float eps);
void lt_cpu_rmsnorm_bwd(float *dx, float *dweight, const float *dout, const float *x,
                        const float *weight, const float *rstd, int64_t n, int64_t c);

void lt_cpu_rope_qkv_fwd(float *q, float *k, float *v, const float *qkv, const int32_t *pos,
                         int64_t n, int hq, int hkv, int d, float theta);
void lt_cpu_rope_qkv_bwd(float *dqkv, const float *dq, const float *dk, const float *dv,
                         const int32_t *pos, int64_t n, int hq, int hkv, int d, float theta);

void lt_cpu_swiglu_fwd(float *h, const float *gate_up, int64_t n, int64_t f);
void lt_cpu_swiglu_bwd(float *dgate_up, const float *dh, const float *gate_up, int64_t n,
                       int64_t f);

// dlogits may be NULL (no gradient) or alias logits.
void lt_cpu_cross_entropy(float *losses, float *dlogits, const float *logits,
                          const int32_t *targets, int64_t n, int64_t v, int ignore_index,
                          float grad_scale);

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

void lt_cpu_adamw(float *param, const float *grad, float *m, float *v, const lt_adamw_args *args);

#endif
