// Parameter names between longtrain and Hugging Face's LlamaForCausalLM (the state_dict keys
// that save_pretrained writes to safetensors). Shapes are the same on both sides: nn.Linear
// weights are (out_features, in_features), as longtrain stores them.
//
//   embed                  model.embed_tokens.weight
//   layers.N.attn_norm     model.layers.N.input_layernorm.weight
//   layers.N.attn.wq|wk|wv|wo     model.layers.N.self_attn.q_proj|k_proj|v_proj|o_proj.weight
//   layers.N.ffn_norm      model.layers.N.post_attention_layernorm.weight
//   layers.N.ffn.w_gate|w_up|w_down  model.layers.N.mlp.gate_proj|up_proj|down_proj.weight
//   final_norm             model.norm.weight
//   lm_head                lm_head.weight (absent with tie_word_embeddings)
#ifndef LT_HF_NAMES_H
#define LT_HF_NAMES_H

#include <stdbool.h>
#include <stddef.h>

// The Hugging Face name of longtrain parameter `name` into out; false for a parameter that a
// Llama has not (an MoE router, a linear-attention gate, ...).
bool lt_hf_name_of(const char *name, char *out, size_t cap);
// Buffers that some transformers versions saved beside the parameters and that carry nothing a
// loader needs (RoPE's inv_freq, recomputed from rope_theta).
bool lt_hf_is_ignored_buffer(const char *hf_name);

#endif
