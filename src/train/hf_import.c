// `longtrain import-hf`: a Hugging Face Llama folder to a longtrain checkpoint.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "data/hf_config.h"
#include "model/hf_names.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "train/hf_convert.h"

static const char *usage =
    "usage: longtrain import-hf HF_DIR --output CKPT_DIR [--config-out FILE.yaml]\n"
    "\n"
    "Converts a Hugging Face LlamaForCausalLM folder (config.json with model.safetensors, or\n"
    "with model.safetensors.index.json and its shards; F32, F16 or BF16) into the longtrain\n"
    "checkpoint folder CKPT_DIR (a new folder): start a fine-tune from it with\n"
    "`longtrain train --config FILE.yaml --init-from CKPT_DIR`. --config-out writes the\n"
    "checkpoint's config (the model's keys; every other key at its default) as a YAML file to\n"
    "start that config from.\n";

// "4096 x 512" for messages.
static const char *format_shape(int ndim, const int64_t *shape, char *out, size_t cap) {
  size_t used = 0;
  out[0] = '\0';
  for (int d = 0; d < ndim && used < cap; d++)
    used += (size_t)snprintf(out + used, cap - used, d ? " x %lld" : "%lld", (long long)shape[d]);
  return out;
}

// The safetensors tensor that holds longtrain parameter `info`, with its shape checked.
static int find_tensor(const lt_safetensors *st, const lt_param_info *info,
                       const lt_st_tensor **out) {
  char hf_name[160];
  LT_CHECK(lt_hf_name_of(info->name, hf_name, sizeof hf_name), LT_ERR_INTERNAL,
           "%s: no Hugging Face name for parameter %s", st->path, info->name);
  const lt_st_tensor *t = lt_safetensors_find(st, hf_name);
  LT_CHECK(t, LT_ERR_DATA,
           "%s: tensor %s (longtrain's %s) is missing: a partial download or a missing shard? "
           "Give the whole model folder",
           st->path, hf_name, info->name);
  bool same = t->ndim == info->ndim;
  for (int d = 0; same && d < t->ndim; d++) same = t->shape[d] == info->logical_shape[d];
  char file_shape[96], config_shape[96];
  LT_CHECK(same, LT_ERR_DATA,
           "%s: tensor %s has shape %s, but config.json makes it %s: the weights and config.json "
           "are of different models",
           st->path, hf_name, format_shape(t->ndim, t->shape, file_shape, sizeof file_shape),
           format_shape(info->ndim, info->logical_shape, config_shape, sizeof config_shape));
  *out = t;
  return LT_OK;
}

// Every tensor of the files must be a parameter of the model (a tied lm_head equal to the
// embedding, and RoPE's inv_freq buffer, aside): anything else means another architecture.
static int check_no_extra_tensors(const lt_safetensors *st, const lt_model *model) {
  for (int i = 0; i < st->n_tensors; i++) {
    const char *name = st->tensors[i].name;
    if (lt_hf_is_ignored_buffer(name)) continue;
    bool known = false;
    char hf_name[160];
    for (int p = 0; p < model->params.count && !known; p++)
      known = lt_hf_name_of(model->params.info[p].name, hf_name, sizeof hf_name) &&
              strcmp(hf_name, name) == 0;
    if (!known && strcmp(name, "lm_head.weight") == 0 && model->cfg.tie_embeddings) {
      const lt_param_info *embed = lt_params_find(&model->params, "embed");
      float *head = malloc((size_t)embed->numel * sizeof *head);
      LT_CHECK(head, LT_ERR_MEMORY, "out of memory reading %s", name);
      int rc = lt_safetensors_read_f32(st, &st->tensors[i], head);
      known = rc == LT_OK && st->tensors[i].numel == embed->numel &&
              memcmp(head, model->params.master + embed->offset,
                     (size_t)embed->numel * sizeof *head) == 0;
      free(head);
      LT_TRY(rc);
      LT_CHECK(known, LT_ERR_DATA,
               "%s: config.json ties the embeddings (tie_word_embeddings) but lm_head.weight "
               "differs from model.embed_tokens.weight: set tie_word_embeddings to false",
               st->path);
    }
    LT_CHECK(known, LT_ERR_DATA,
             "%s: tensor %s is not a parameter of a Llama model of this config.json: another "
             "architecture, or more layers than num_hidden_layers",
             st->path, name);
  }
  return LT_OK;
}

static int read_weights(const lt_safetensors *st, lt_model *model) {
  for (int p = 0; p < model->params.count; p++) {
    const lt_param_info *info = &model->params.info[p];
    const lt_st_tensor *t = NULL;
    LT_TRY(find_tensor(st, info, &t));
    LT_TRY(lt_safetensors_read_f32(st, t, model->params.master + info->offset));
  }
  return check_no_extra_tensors(st, model);
}

// The config of the imported model: the model's keys from config.json, the rest at defaults
// (a training sequence no longer than the model takes).
static int imported_config(const lt_hf_config *hf, const char *hf_dir, lt_config *cfg) {
  LT_TRY(lt_config_defaults(cfg));
  cfg->model = hf->model;
  if (cfg->train.seq_len > cfg->model.max_seq_len) cfg->train.seq_len = cfg->model.max_seq_len;
  snprintf(cfg->source, sizeof cfg->source, "import-hf %s", hf_dir);
  int rc = lt_config_validate(cfg);
  return rc ? lt_error_context(rc, "%s/config.json", hf_dir) : LT_OK;
}

// Writes the checkpoint under OUT.import-tmp/step_00000000 (atomically, as every checkpoint),
// then moves it to OUT: a failure leaves no OUT behind.
static int write_checkpoint(const lt_model *model, const lt_config *cfg, const char *out_dir) {
  char root[LT_PATH_MAX + 16];
  snprintf(root, sizeof root, "%s.import-tmp", out_dir);
  LT_TRY(lt_remove_tree(root));
  lt_checkpoint_meta meta = {.seed = cfg->run.seed, .n_params = lt_model_n_params(model)};
  snprintf(meta.config_source, sizeof meta.config_source, "%s", cfg->source);
  LT_TRY(lt_config_to_yaml(cfg, &meta.config_yaml));
  lt_checkpoint_writer w;
  int rc = lt_checkpoint_begin(&w, root, 0, 0, 1);
  if (rc == LT_OK) rc = lt_checkpoint_write_params(&w, &model->params, false);
  if (rc == LT_OK)
    rc = lt_checkpoint_commit(&w, &meta);
  else
    lt_checkpoint_abort(&w);
  lt_checkpoint_meta_free(&meta);
  if (rc == LT_OK && rename(w.dir, out_dir) != 0)
    rc = lt_fail(LT_ERR_IO, "%s: cannot move the checkpoint into place: %s", out_dir,
                 strerror(errno));
  if (rc == LT_OK) rc = lt_fsync_path(root);
  lt_remove_tree(root);
  return rc;
}

static int write_yaml(const lt_config *cfg, const char *path) {
  char *yaml, tmp[LT_PATH_MAX + 16];
  LT_TRY(lt_config_to_yaml(cfg, &yaml));
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  bool ok = f && fputs(yaml, f) >= 0;
  if (f && fclose(f) != 0) ok = false;
  free(yaml);
  if (!ok) {
    remove(tmp);
    return lt_fail(LT_ERR_IO, "--config-out %s: cannot write: %s", path, strerror(errno));
  }
  return lt_commit_file(tmp, path);
}

int lt_hf_import(const char *hf_dir, const char *out_dir, const char *config_out) {
  struct stat st_out;
  LT_CHECK(stat(out_dir, &st_out) != 0, LT_ERR_USAGE,
           "import-hf: --output %s already exists: give a new folder for the checkpoint", out_dir);
  lt_hf_config hf;
  LT_TRY(lt_hf_config_read(hf_dir, &hf));
  lt_config cfg;
  LT_TRY(imported_config(&hf, hf_dir, &cfg));
  lt_safetensors st;
  LT_TRY(lt_safetensors_open(&st, hf_dir));
  lt_model model;
  int rc = lt_model_create(&model, &cfg.model, LT_CPU, NULL);
  if (rc == LT_OK) {
    rc = read_weights(&st, &model);
    if (rc == LT_OK) rc = write_checkpoint(&model, &cfg, out_dir);
    lt_model_destroy(&model);
  }
  lt_safetensors_close(&st);
  if (rc == LT_OK && config_out) rc = write_yaml(&cfg, config_out);
  return rc;
}

int lt_import_hf_main(int argc, char **argv) {
  const char *hf_dir = NULL, *out = NULL, *config_out = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      fputs(usage, stdout);
      return LT_OK;
    }
    const bool option = strcmp(argv[i], "--output") == 0 || strcmp(argv[i], "--config-out") == 0;
    LT_CHECK(!option || i + 1 < argc, LT_ERR_USAGE,
             "import-hf: %s needs a value (see longtrain import-hf --help)", argv[i]);
    if (strcmp(argv[i], "--output") == 0)
      out = argv[++i];
    else if (strcmp(argv[i], "--config-out") == 0)
      config_out = argv[++i];
    else {
      LT_CHECK(argv[i][0] != '-' && !hf_dir, LT_ERR_USAGE,
               "import-hf: unexpected argument '%s' (see longtrain import-hf --help)", argv[i]);
      hf_dir = argv[i];
    }
  }
  LT_CHECK(hf_dir && out, LT_ERR_USAGE,
           "import-hf: give the Hugging Face folder and --output CKPT_DIR (see longtrain "
           "import-hf --help)");
  LT_TRY(lt_hf_import(hf_dir, out, config_out));
  lt_info("imported %s into %s%s%s", hf_dir, out, config_out ? "; its config in " : "",
          config_out ? config_out : "");
  return LT_OK;
}
