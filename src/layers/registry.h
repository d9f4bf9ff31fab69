// Builds a block's sublayers by kind name: the model asks for "lightning" or "moe" and never
// names a layer's type. A new kind is one line in each table here and its name in
// lt_attention_kinds / lt_ffn_kinds (config_schema.c).
#ifndef LT_REGISTRY_H
#define LT_REGISTRY_H

#include "core/config.h"
#include "layers/layer.h"

// Token mixers: softmax attention and its relatives. `prefix` names the parameters
// ("layers.3.attn"); `layer_index` lets a kind vary over depth.
int lt_mixer_create(lt_layer **out, const char *kind, lt_params *params, const char *prefix,
                    const lt_model_config *cfg, int layer_index, lt_init_stds stds);
// Feed-forward sublayers: dense SwiGLU or mixture-of-experts.
int lt_ffn_create(lt_layer **out, const char *kind, lt_params *params, const char *prefix,
                  const lt_model_config *cfg, int layer_index, lt_init_stds stds);

#endif
