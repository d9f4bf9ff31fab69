#include "model/hf_names.h"

#include <stdio.h>
#include <string.h>

static const char *const whole_model[][2] = {
    {"embed", "model.embed_tokens.weight"},
    {"final_norm", "model.norm.weight"},
    {"lm_head", "lm_head.weight"},
};

static const char *const per_layer[][2] = {
    {"attn_norm", "input_layernorm.weight"}, {"attn.wq", "self_attn.q_proj.weight"},
    {"attn.wk", "self_attn.k_proj.weight"},  {"attn.wv", "self_attn.v_proj.weight"},
    {"attn.wo", "self_attn.o_proj.weight"},  {"ffn_norm", "post_attention_layernorm.weight"},
    {"ffn.w_gate", "mlp.gate_proj.weight"},  {"ffn.w_up", "mlp.up_proj.weight"},
    {"ffn.w_down", "mlp.down_proj.weight"},
};

bool lt_hf_name_of(const char *name, char *out, size_t cap) {
  for (size_t i = 0; i < sizeof whole_model / sizeof whole_model[0]; i++)
    if (strcmp(name, whole_model[i][0]) == 0)
      return (size_t)snprintf(out, cap, "%s", whole_model[i][1]) < cap;
  int layer, used = 0;
  if (sscanf(name, "layers.%d.%n", &layer, &used) != 1 || used == 0 || layer < 0) return false;
  for (size_t i = 0; i < sizeof per_layer / sizeof per_layer[0]; i++)
    if (strcmp(name + used, per_layer[i][0]) == 0)
      return (size_t)snprintf(out, cap, "model.layers.%d.%s", layer, per_layer[i][1]) < cap;
  return false;
}

bool lt_hf_is_ignored_buffer(const char *hf_name) {
  const char *suffix = ".rotary_emb.inv_freq";
  size_t n = strlen(hf_name), k = strlen(suffix);
  return n > k && strcmp(hf_name + n - k, suffix) == 0;
}
