// Lightning attention as TransNormerLLM uses it (Qin et al. 2023, arXiv:2307.14995; Lightning
// Attention-2, Qin et al. 2024, arXiv:2401.04658): linear attention with silu feature maps and a
// fixed per-head decay lambda_h = exp(-m_h), m_h the ALiBi slopes scaled down over depth, computed
// in blocks (intra-block masked and decayed q k^T v, inter-block decayed state); its output goes
// through a simple RMSNorm (no gain) and the output gate u = x Wu^T before the output projection.
// Configured by model.lightning.*.
#ifndef LT_ATTENTION_LIGHTNING_H
#define LT_ATTENTION_LIGHTNING_H

#include "core/config.h"
#include "layers/layer.h"

// log lambda_h for each head of layer `layer` of `n_layers`: -m_h, times 1 - layer/(n_layers-1)
// + 1e-5 when depth_scaled (1 + 1e-5 for a single layer), as in TransNormerLLM's released code.
void lt_lightning_log_decay(float *log_decay, int n_heads, int layer, int n_layers,
                            bool depth_scaled);

int lt_lightning_attention_create(lt_layer **out, lt_params *params, const char *prefix,
                                  const lt_model_config *cfg, int layer_index, lt_init_stds stds);

#endif
