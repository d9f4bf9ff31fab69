// Hugging Face config.json for Llama-architecture models (LlamaForCausalLM), to and from
// lt_model_config: what `longtrain import-hf` and `export-hf` read and write beside the weights.
//
//   hidden_size -> d_model            num_hidden_layers -> n_layers
//   num_attention_heads -> n_heads    num_key_value_heads -> n_kv_heads (absent: n_heads)
//   head_dim -> head_dim              intermediate_size -> ffn_dim
//   vocab_size -> vocab_size          max_position_embeddings -> max_seq_len
//   rope_theta -> rope_theta          rms_norm_eps -> norm_eps
//   tie_word_embeddings -> tie_embeddings, initializer_range -> init_std (init: llama)
//
// Both layouts of RoPE settings are read: top-level rope_theta / rope_scaling (transformers 4) and
// rope_parameters {rope_type, rope_theta} (transformers 5). What longtrain's Llama block cannot
// reproduce (another architecture, RoPE scaling, biases, an activation other than SiLU) is an
// LT_ERR_DATA naming the file and the key, never silently dropped.
#ifndef LT_HF_CONFIG_H
#define LT_HF_CONFIG_H

#include "core/config.h"

enum { LT_HF_MAX_EOS = 8 };

typedef struct lt_hf_config {
  lt_model_config model;
  int bos_token_id;                 // -1 when absent
  int eos_token_ids[LT_HF_MAX_EOS]; // config.json may list several (Llama-3.1 lists three)
  int n_eos;
  char dtype[16]; // torch_dtype / dtype, e.g. "bfloat16" ("" when absent)
} lt_hf_config;

// Reads config.json at `path`, or `path`/config.json when path is a folder.
int lt_hf_config_read(const char *path, lt_hf_config *out);
// The same from JSON text in memory (`name` labels it in messages).
int lt_hf_config_parse(const char *json, size_t len, const char *name, lt_hf_config *out);
// Writes cfg as a LlamaForCausalLM config.json (under a temporary name, then renamed). A model
// that is not a plain Llama (another attention or feed-forward kind in any layer) is an
// LT_ERR_CONFIG naming the key.
int lt_hf_config_write(const char *path, const lt_hf_config *cfg);

#endif
