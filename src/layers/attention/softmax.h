// Causal softmax attention with grouped-query heads and RoPE (Llama): the token mixer of a
// standard block.
#ifndef LT_ATTENTION_SOFTMAX_H
#define LT_ATTENTION_SOFTMAX_H

#include "core/config.h"
#include "layers/layer.h"

int lt_softmax_attention_create(lt_layer **out, lt_params *params, const char *prefix,
                                const lt_model_config *cfg, lt_init_stds stds);

#endif
