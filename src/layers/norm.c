#include "layers/norm.h"

int lt_rmsnorm_create(lt_rmsnorm *norm, lt_params *params, const char *name, int64_t dim,
                      float eps) {
  norm->eps = eps;
  return lt_params_add(params, &norm->weight, name, 1, LT_SHAPE(dim),
                       (lt_param_spec){.init = LT_INIT_ONES, .group = LT_GROUP_NORM});
}

int lt_rmsnorm_forward(lt_ctx *ctx, const lt_rmsnorm *norm, lt_tensor out, lt_tensor rstd,
                       lt_tensor x) {
  return lt_rmsnorm_fwd(ctx, out, rstd, x, norm->weight.value, norm->eps);
}

int lt_add_rmsnorm_forward(lt_ctx *ctx, const lt_rmsnorm *norm, lt_tensor sum, lt_tensor out,
                           lt_tensor rstd, lt_tensor a, lt_tensor b) {
  return lt_add_rmsnorm_fwd(ctx, sum, out, rstd, a, b, norm->weight.value, norm->eps);
}

int lt_rmsnorm_backward(lt_ctx *ctx, const lt_rmsnorm *norm, lt_tensor dx, lt_tensor dout,
                        lt_tensor x, lt_tensor rstd) {
  return lt_rmsnorm_bwd(ctx, dx, norm->weight.grad, dout, x, norm->weight.value, rstd);
}
