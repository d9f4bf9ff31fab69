// RMSNorm as a layer: its weight, and the kernels' forward and backward.
#ifndef LT_NORM_H
#define LT_NORM_H

#include "kernels/kernels.h"
#include "model/params.h"

typedef struct lt_rmsnorm {
  lt_param weight; // (dim), initialised to ones
  float eps;
} lt_rmsnorm;

int lt_rmsnorm_create(lt_rmsnorm *norm, lt_params *params, const char *name, int64_t dim,
                      float eps);
// out = rmsnorm(x); rstd (N) f32 is saved for the backward.
int lt_rmsnorm_forward(lt_ctx *ctx, const lt_rmsnorm *norm, lt_tensor out, lt_tensor rstd,
                       lt_tensor x);
// sum = a + b, then out = rmsnorm(sum): the residual add and the norm after it, in one pass.
int lt_add_rmsnorm_forward(lt_ctx *ctx, const lt_rmsnorm *norm, lt_tensor sum, lt_tensor out,
                           lt_tensor rstd, lt_tensor a, lt_tensor b);
// dx += ..., weight grad += ...
int lt_rmsnorm_backward(lt_ctx *ctx, const lt_rmsnorm *norm, lt_tensor dx, lt_tensor dout,
                        lt_tensor x, lt_tensor rstd);

#endif
