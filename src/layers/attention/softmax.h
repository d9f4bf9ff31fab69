// Causal softmax attention with grouped-query heads and RoPE (Llama): the token mixer of a
// standard block, and the kinds built on it: sparse attention (the same layer under a sparse
// mask) and mixture-of-head attention (the same heads, weighted per token by a router).
#ifndef LT_ATTENTION_SOFTMAX_H
#define LT_ATTENTION_SOFTMAX_H

#include "core/config.h"
#include "layers/layer.h"

typedef struct lt_head_router lt_head_router; // layers/attention/moh.h

// What sets the kinds built on softmax attention apart.
typedef struct lt_softmax_options {
  lt_attn_sparsity sparsity; // all zero: every causal pair (kind softmax)
  lt_head_router *router;    // NULL: every head at weight 1; otherwise MoH's per-token head
                             // weights, owned by the layer from then on
} lt_softmax_options;

// Kind softmax.
int lt_softmax_attention_create(lt_layer **out, lt_params *params, const char *prefix,
                                const lt_model_config *cfg, lt_init_stds stds);
// Kind sparse: softmax attention under the pattern of cfg->sparse.
int lt_sparse_attention_create(lt_layer **out, lt_params *params, const char *prefix,
                               const lt_model_config *cfg, lt_init_stds stds);
int lt_softmax_attention_create_with(lt_layer **out, lt_params *params, const char *prefix,
                                     const lt_model_config *cfg, const lt_softmax_options *options,
                                     lt_init_stds stds);

#endif
