#include "layers/attention/linear.h"

#include <stdlib.h>

#include "core/error.h"
#include "layers/attention/linear_mixer.h"

// Katharopoulos et al. (2020) add 1e-6 to the denominator, which elu + 1 keeps positive; relu
// can make it exactly zero (no key seen yet), where the output is then 0.
static const float DENOMINATOR_EPS = 1e-6f;

int lt_linear_attention_create(lt_layer **out, lt_params *params, const char *prefix,
                               const lt_model_config *cfg, lt_init_stds stds) {
  const lt_linear_config *lin = &cfg->linear;
  const bool denominator = lin->normalization == LT_LINEAR_NORM_DENOMINATOR;
  lt_linear_mixer_options opt = {.kind = "linear",
                                 .feature_map = (lt_feature_map)lin->feature_map,
                                 .norm = (lt_linear_norm)lin->normalization,
                                 .gate = (lt_gate)lin->gate,
                                 .block = lin->chunk_size,
                                 .eps = denominator ? DENOMINATOR_EPS : (float)cfg->norm_eps};
  if (lin->decay == LT_LINEAR_DECAY_NONE)
    return lt_linear_mixer_create(out, params, prefix, cfg, stds, &opt);
  float *log_decay = malloc(sizeof(float) * (size_t)cfg->n_heads);
  LT_CHECK(log_decay, LT_ERR_MEMORY, "out of memory creating %s", prefix);
  for (int h = 0; h < cfg->n_heads; h++)
    log_decay[h] = (float)-(lin->decay == LT_LINEAR_DECAY_RETNET ? lt_retnet_decay_rate(h)
                                                                 : lt_alibi_slope(h, cfg->n_heads));
  opt.log_decay = log_decay;
  int rc = lt_linear_mixer_create(out, params, prefix, cfg, stds, &opt);
  free(log_decay);
  return rc;
}
