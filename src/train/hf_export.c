// `longtrain export-hf`: a longtrain checkpoint to a folder that transformers' LlamaForCausalLM
// loads with from_pretrained.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "data/hf_config.h"
#include "model/hf_names.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "train/hf_convert.h"

static const char *usage =
    "usage: longtrain export-hf CKPT_DIR --output DIR [--dtype bf16|f32]\n"
    "\n"
    "Writes checkpoint CKPT_DIR's model as a Hugging Face LlamaForCausalLM folder:\n"
    "DIR/config.json and DIR/model.safetensors, in bfloat16 (the default; rounded to nearest\n"
    "even) or float32. Only models of softmax attention and SwiGLU in every layer can be\n"
    "exported. A context extended with model.rope_ntk_factor is written as the scaled\n"
    "rope_theta, which is the same RoPE.\n";

// The model's tensors as safetensors entries, under their Hugging Face names (names[i] holds
// entry i's).
static int collect_entries(const lt_model *model, lt_st_entry *entries, char (*names)[160]) {
  const lt_params *p = &model->params;
  for (int i = 0; i < p->count; i++) {
    const lt_param_info *info = &p->info[i];
    LT_CHECK(lt_hf_name_of(info->name, names[i], sizeof names[i]), LT_ERR_CONFIG,
             "parameter %s has no place in a LlamaForCausalLM: export-hf takes models of "
             "softmax attention and SwiGLU in every layer",
             info->name);
    entries[i] =
        (lt_st_entry){.name = names[i], .ndim = info->ndim, .data = p->master + info->offset};
    for (int d = 0; d < info->ndim; d++) entries[i].shape[d] = info->logical_shape[d];
  }
  return LT_OK;
}

static int write_folder(const lt_model *model, const char *out_dir, lt_st_dtype dtype) {
  // model->cfg has RoPE's base with the NTK factor folded in (lt_model_create): the same RoPE
  // for transformers, which knows no such factor.
  lt_hf_config hf = {.model = model->cfg, .bos_token_id = -1};
  snprintf(hf.dtype, sizeof hf.dtype, "%s", dtype == LT_ST_BF16 ? "bfloat16" : "float32");
  char path[LT_PATH_MAX + 32];
  snprintf(path, sizeof path, "%s/config.json", out_dir);
  LT_TRY(lt_hf_config_write(path, &hf));
  const int n = model->params.count;
  lt_st_entry *entries = calloc((size_t)n, sizeof *entries);
  char(*names)[160] = calloc((size_t)n, sizeof *names);
  int rc = entries && names ? LT_OK : lt_fail(LT_ERR_MEMORY, "out of memory exporting");
  if (rc == LT_OK) rc = collect_entries(model, entries, names);
  for (int i = 0; i < n && rc == LT_OK; i++) entries[i].dtype = dtype;
  static const char *const metadata[] = {"format", "pt", NULL};
  snprintf(path, sizeof path, "%s/model.safetensors", out_dir);
  if (rc == LT_OK) rc = lt_safetensors_write(path, entries, n, metadata);
  free(entries);
  free(names);
  return rc;
}

int lt_hf_export(const char *ckpt_dir, const char *out_dir, lt_st_dtype dtype) {
  char existing[LT_PATH_MAX + 32];
  snprintf(existing, sizeof existing, "%s/model.safetensors", out_dir);
  LT_CHECK(access(existing, F_OK) != 0, LT_ERR_USAGE,
           "export-hf: %s already exists: give a new --output folder", existing);
  lt_config cfg;
  LT_TRY(lt_checkpoint_read_config(ckpt_dir, &cfg));
  int rc = lt_make_dirs(out_dir);
  if (rc) return lt_error_context(rc, "export-hf --output");
  lt_model model;
  LT_TRY(lt_model_create(&model, &cfg.model, LT_CPU, NULL));
  rc = lt_checkpoint_load_weights(ckpt_dir, &model.params);
  if (rc == LT_OK) rc = write_folder(&model, out_dir, dtype);
  lt_model_destroy(&model);
  return rc;
}

int lt_export_hf_main(int argc, char **argv) {
  const char *ckpt = NULL, *out = NULL, *dtype_name = "bf16";
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      fputs(usage, stdout);
      return LT_OK;
    }
    const bool option = strcmp(argv[i], "--output") == 0 || strcmp(argv[i], "--dtype") == 0;
    LT_CHECK(!option || i + 1 < argc, LT_ERR_USAGE,
             "export-hf: %s needs a value (see longtrain export-hf --help)", argv[i]);
    if (strcmp(argv[i], "--output") == 0)
      out = argv[++i];
    else if (strcmp(argv[i], "--dtype") == 0)
      dtype_name = argv[++i];
    else {
      LT_CHECK(argv[i][0] != '-' && !ckpt, LT_ERR_USAGE,
               "export-hf: unexpected argument '%s' (see longtrain export-hf --help)", argv[i]);
      ckpt = argv[i];
    }
  }
  LT_CHECK(ckpt && out, LT_ERR_USAGE,
           "export-hf: give the checkpoint folder and --output DIR (see longtrain export-hf "
           "--help)");
  const bool bf16 = strcmp(dtype_name, "bf16") == 0;
  LT_CHECK(bf16 || strcmp(dtype_name, "f32") == 0, LT_ERR_USAGE,
           "export-hf: --dtype takes bf16 or f32, not '%s'", dtype_name);
  LT_TRY(lt_hf_export(ckpt, out, bf16 ? LT_ST_BF16 : LT_ST_F32));
  lt_info("exported %s to %s (config.json, model.safetensors in %s)", ckpt, out, dtype_name);
  return LT_OK;
}
