// The SwiGLU feed-forward of Llama: out = (silu(x Wg^T) * (x Wu^T)) Wd^T.
#ifndef LT_MLP_H
#define LT_MLP_H

#include "core/config.h"
#include "layers/layer.h"

int lt_swiglu_mlp_create(lt_layer **out, lt_params *params, const char *prefix, int64_t d_model,
                         int64_t ffn_dim, lt_init_stds stds);

#endif
