#include "layers/registry.h"

#include <string.h>

#include "core/error.h"
#include "layers/attention/moh.h"
#include "layers/attention/lightning.h"
#include "layers/attention/linear.h"
#include "layers/attention/softmax.h"
#include "layers/mlp.h"
#include "layers/moe.h"

typedef int (*create_fn)(lt_layer **out, lt_params *params, const char *prefix,
                         const lt_model_config *cfg, int layer_index, lt_init_stds stds);

typedef struct kind_entry {
  const char *name;
  create_fn create;
} kind_entry;

static int create_softmax(lt_layer **out, lt_params *params, const char *prefix,
                          const lt_model_config *cfg, int layer_index, lt_init_stds stds) {
  (void)layer_index;
  return lt_softmax_attention_create(out, params, prefix, cfg, stds);
}

static int create_sparse(lt_layer **out, lt_params *params, const char *prefix,
                         const lt_model_config *cfg, int layer_index, lt_init_stds stds) {
  (void)layer_index;
  return lt_sparse_attention_create(out, params, prefix, cfg, stds);
}

static int create_moh(lt_layer **out, lt_params *params, const char *prefix,
                      const lt_model_config *cfg, int layer_index, lt_init_stds stds) {
  (void)layer_index;
  return lt_moh_attention_create(out, params, prefix, cfg, stds);
}

static int create_linear(lt_layer **out, lt_params *params, const char *prefix,
                         const lt_model_config *cfg, int layer_index, lt_init_stds stds) {
  (void)layer_index;
  return lt_linear_attention_create(out, params, prefix, cfg, stds);
}

// Lightning's decay depends on the layer's depth.
static int create_lightning(lt_layer **out, lt_params *params, const char *prefix,
                            const lt_model_config *cfg, int layer_index, lt_init_stds stds) {
  return lt_lightning_attention_create(out, params, prefix, cfg, layer_index, stds);
}

static int create_swiglu(lt_layer **out, lt_params *params, const char *prefix,
                         const lt_model_config *cfg, int layer_index, lt_init_stds stds) {
  (void)layer_index;
  return lt_swiglu_mlp_create(out, params, prefix, cfg->d_model, cfg->ffn_dim, stds);
}

static int create_moe(lt_layer **out, lt_params *params, const char *prefix,
                      const lt_model_config *cfg, int layer_index, lt_init_stds stds) {
  (void)layer_index;
  return lt_moe_create(out, params, prefix, cfg, stds);
}

static const kind_entry mixers[] = {
    {"softmax", create_softmax}, {"sparse", create_sparse},       {"moh", create_moh},
    {"linear", create_linear},   {"lightning", create_lightning},
};
static const kind_entry ffns[] = {{"swiglu", create_swiglu}, {"moe", create_moe}};

static int create(const kind_entry *table, int n, const char *what, lt_layer **out,
                  const char *kind, lt_params *params, const char *prefix,
                  const lt_model_config *cfg, int layer_index, lt_init_stds stds) {
  *out = NULL;
  for (int i = 0; i < n; i++)
    if (strcmp(table[i].name, kind) == 0)
      return table[i].create(out, params, prefix, cfg, layer_index, stds);
  return lt_fail(LT_ERR_CONFIG, "%s: no %s kind named '%s'", prefix, what, kind);
}

int lt_mixer_create(lt_layer **out, const char *kind, lt_params *params, const char *prefix,
                    const lt_model_config *cfg, int layer_index, lt_init_stds stds) {
  return create(mixers, (int)(sizeof mixers / sizeof mixers[0]), "attention", out, kind, params,
                prefix, cfg, layer_index, stds);
}

int lt_ffn_create(lt_layer **out, const char *kind, lt_params *params, const char *prefix,
                  const lt_model_config *cfg, int layer_index, lt_init_stds stds) {
  return create(ffns, (int)(sizeof ffns / sizeof ffns[0]), "feed-forward", out, kind, params,
                prefix, cfg, layer_index, stds);
}
