// The CUDA side of the ops that fuse two memory-bound passes into one (kernels.h:
// lt_add_rmsnorm_fwd), called by kernels/dispatch.c after its shape checks when ctx->device ==
// LT_CUDA.
#ifndef LT_CUDA_FUSED_H
#define LT_CUDA_FUSED_H

#include "kernels/kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

int lt_cuda_add_rmsnorm_fwd(lt_ctx *ctx, lt_tensor sum, lt_tensor out, lt_tensor rstd, lt_tensor a,
                            lt_tensor b, lt_tensor weight, float eps);

#ifdef __cplusplus
}
#endif

#endif
