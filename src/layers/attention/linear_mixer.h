// The token mixer that linear and lightning attention share; each kind is a choice of its options
// (layers/attention/linear.c, lightning.c):
//   [q|k|v] = x Wqkv^T, q = phi(q), k = phi(k)
//   o = linear attention with per-head decay (kernels.h, lt_linear_attn_fwd), within documents
//   y = norm(o) * g(x Wu^T),  out = y Wo^T
#ifndef LT_ATTENTION_LINEAR_MIXER_H
#define LT_ATTENTION_LINEAR_MIXER_H

#include "core/config.h"
#include "layers/layer.h"

typedef struct lt_linear_mixer_options {
  const char *kind; // the layer kind's name ("linear", "lightning")
  lt_feature_map feature_map;
  lt_linear_norm norm;
  lt_gate gate;
  int64_t block;          // tokens per block of the blocked computation
  const float *log_decay; // (n_heads) log lambda_h <= 0 of every head, NULL for no decay; the
                          // layer copies its heads' (a tensor-parallel rank's share)
  float eps;              // of the denominator or the RMSNorm
} lt_linear_mixer_options;

int lt_linear_mixer_create(lt_layer **out, lt_params *params, const char *prefix,
                           const lt_model_config *cfg, lt_init_stds stds,
                           const lt_linear_mixer_options *options);

// Decay schedules, as the rate m_h >= 0 of head h, lambda_h = exp(-m_h).
// ALiBi's geometric slopes (Press et al. 2022): m_h = 2^(-8(h+1)/H) for H a power of two; other H
// take the power of two below and every other slope of the one above, as ALiBi does.
double lt_alibi_slope(int head, int n_heads);
// RetNet's multi-scale decay (Sun et al. 2023): lambda_h = 1 - 2^(-5-h).
double lt_retnet_decay_rate(int head);

#endif
