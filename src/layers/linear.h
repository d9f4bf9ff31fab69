// Linear maps without bias, y = x W^T with W stored (out, in) as in PyTorch. x and y are read as
// rows of `in` and `out` features, so (B, T, in), (B*T, in) and (B, T, H, in / H) are one call.
#ifndef LT_LINEAR_H
#define LT_LINEAR_H

#include "kernels/kernels.h"
#include "model/params.h"

// (..., features) as (rows, features): the weight says how wide a row is, so q as (B, T, H, hd)
// and as (B*T, H*hd) are the same operand.
lt_tensor lt_rows_of(lt_tensor t, int64_t features);

int lt_linear_forward(lt_ctx *ctx, lt_tensor y, lt_tensor x, lt_tensor w);
// dx = dy W (skipped when dx.data is NULL); dw += dy^T x.
int lt_linear_backward(lt_ctx *ctx, lt_tensor dx, lt_tensor dw, lt_tensor dy, lt_tensor x,
                       lt_tensor w);
// Its two products apart, for a layer that makes x only after it has dx (SwiGLU's h).
int lt_linear_backward_input(lt_ctx *ctx, lt_tensor dx, lt_tensor dy, lt_tensor w);
int lt_linear_backward_weight(lt_ctx *ctx, lt_tensor dw, lt_tensor dy, lt_tensor x);

// Parameters registered one after another with fused_with_prev, read as one (sum of rows, in)
// matrix: q|k|v or gate|up, so one matmul computes them all. `which` picks value or grad.
typedef enum lt_param_part { LT_PARAM_VALUE, LT_PARAM_GRAD } lt_param_part;
int lt_fused_view(lt_tensor *out, const lt_param *parts, int n_parts, lt_param_part which);

#endif
