// The mixture-of-experts feed-forward (Shazeer et al. 2017; Switch Transformer, Fedus et al.
// 2021; ST-MoE, Zoph et al. 2022; Mixtral): a router picks top_k of n_experts SwiGLU experts per
// token and the output is the gate-weighted sum of the chosen experts' outputs,
//   out(x) = sum over chosen e of gate_e(x) * SwiGLU_e(x)   [+ a dense shared SwiGLU(x)]
// with the load-balance and router z-losses added to the objective through lt_batch.aux.
#ifndef LT_MOE_H
#define LT_MOE_H

#include "core/config.h"
#include "layers/layer.h"

// Parameters: PREFIX.router (E, D); PREFIX.experts.E.{w_gate,w_up} (F, D) and
// PREFIX.experts.E.w_down (D, F); with shared experts, PREFIX.shared.{w_gate,w_up,w_down}.
int lt_moe_create(lt_layer **out, lt_params *params, const char *prefix, const lt_model_config *cfg,
                  lt_init_stds stds);

#endif
