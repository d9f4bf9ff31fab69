#include "layers/attention/lightning.h"

#include <stdlib.h>

#include "core/error.h"
#include "layers/attention/linear_mixer.h"

void lt_lightning_log_decay(float *log_decay, int n_heads, int layer, int n_layers,
                            bool depth_scaled) {
  // The deepest layers barely decay, so that they can see the whole context (TransNormerLLM);
  // the 1e-5 keeps the last layer's decay from vanishing altogether.
  double scale = 1.0;
  if (depth_scaled) scale = (n_layers > 1 ? 1.0 - (double)layer / (n_layers - 1) : 1.0) + 1e-5;
  for (int h = 0; h < n_heads; h++) log_decay[h] = (float)(-lt_alibi_slope(h, n_heads) * scale);
}

int lt_lightning_attention_create(lt_layer **out, lt_params *params, const char *prefix,
                                  const lt_model_config *cfg, int layer_index, lt_init_stds stds) {
  const lt_lightning_config *lc = &cfg->lightning;
  float *log_decay = malloc(sizeof(float) * (size_t)cfg->n_heads);
  LT_CHECK(log_decay, LT_ERR_MEMORY, "out of memory creating %s", prefix);
  lt_lightning_log_decay(log_decay, cfg->n_heads, layer_index, cfg->n_layers,
                         lc->depth_scaled_decay);
  lt_linear_mixer_options opt = {.kind = "lightning",
                                 .feature_map = (lt_feature_map)lc->feature_map,
                                 .norm = LT_LINEAR_NORM_RMS,
                                 .gate = (lt_gate)lc->gate,
                                 .block = lc->block_size,
                                 .log_decay = log_decay,
                                 .eps = (float)cfg->norm_eps};
  int rc = lt_linear_mixer_create(out, params, prefix, cfg, stds, &opt);
  free(log_decay);
  return rc;
}
