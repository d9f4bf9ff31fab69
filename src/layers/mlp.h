// The SwiGLU feed-forward of Llama: out = (silu(x Wg^T) * (x Wu^T)) Wd^T.
//
// Tensor parallel (Megatron-LM's MLP): rank r holds hidden units [r F/tp, (r+1) F/tp), the rows of
// Wg and Wu for them (column-parallel) and the matching columns of Wd (row-parallel); the
// output's partial sums are reduced over tp, and so is the input gradient.
#ifndef LT_MLP_H
#define LT_MLP_H

#include "core/config.h"
#include "layers/layer.h"

int lt_swiglu_mlp_create(lt_layer **out, lt_params *params, const char *prefix, int64_t d_model,
                         int64_t ffn_dim, lt_init_stds stds);
// The same layer, but under tensor parallelism its output and input gradient stay this rank's
// partial sums: for a caller that adds partial sums of its own and reduces them once (MoE's shared
// experts beside its routed ones).
int lt_swiglu_mlp_create_partial(lt_layer **out, lt_params *params, const char *prefix,
                                 int64_t d_model, int64_t ffn_dim, lt_init_stds stds);

#endif
