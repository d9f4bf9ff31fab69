// Models from elsewhere: a Hugging Face LlamaForCausalLM folder (config.json + one or sharded
// safetensors) to a longtrain checkpoint, and back (`longtrain import-hf`, `longtrain export-hf`).
#ifndef LT_HF_CONVERT_H
#define LT_HF_CONVERT_H

#include "data/safetensors.h"

// Reads the Hugging Face folder `hf_dir` and writes a checkpoint folder `out_dir` (step 0, the
// weights only, the model's config with every other key at its default) that --init-from,
// `longtrain info` and export-hf accept; with `config_out`, the checkpoint's config also as YAML
// there, to edit into a fine-tuning config. Another architecture, a missing, extra or misshapen
// tensor, or a damaged safetensors file is an LT_ERR_DATA naming the file and the tensor.
int lt_hf_import(const char *hf_dir, const char *out_dir, const char *config_out);
// Writes checkpoint `ckpt_dir`'s weights as `out_dir`/config.json + model.safetensors, stored as
// `dtype` (LT_ST_F32, or LT_ST_BF16 rounded to nearest even). A model that LlamaForCausalLM cannot
// describe (another attention or feed-forward kind) is an LT_ERR_CONFIG naming the key.
int lt_hf_export(const char *ckpt_dir, const char *out_dir, lt_st_dtype dtype);

// The commands: `longtrain import-hf HF_DIR --output CKPT [--config-out FILE.yaml]` and
// `longtrain export-hf CKPT --output DIR [--dtype bf16|f32]`.
int lt_import_hf_main(int argc, char **argv);
int lt_export_hf_main(int argc, char **argv);

#endif
