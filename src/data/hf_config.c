#include "data/hf_config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "core/fsutil.h"

typedef struct reader {
  const cJSON *root;
  const char *path;
} reader;

static const cJSON *item(const reader *r, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(r->root, key);
  return cJSON_IsNull(v) ? NULL : v;
}

// A positive integer key; absent keys take `fallback` (0: required).
static int get_int(const reader *r, const char *key, int fallback, int *out) {
  const cJSON *v = item(r, key);
  LT_CHECK(v || fallback, LT_ERR_DATA, "%s: %s is missing", r->path, key);
  if (!v) {
    *out = fallback;
    return LT_OK;
  }
  LT_CHECK(cJSON_IsNumber(v) && v->valuedouble >= 1 && v->valuedouble <= 2147483647.0 &&
               v->valuedouble == floor(v->valuedouble),
           LT_ERR_DATA, "%s: %s must be a positive integer", r->path, key);
  *out = (int)v->valuedouble;
  return LT_OK;
}

static int get_double(const reader *r, const cJSON *v, const char *key, double fallback,
                      double *out) {
  *out = fallback;
  if (!v || cJSON_IsNull(v)) return LT_OK;
  LT_CHECK(cJSON_IsNumber(v) && v->valuedouble > 0, LT_ERR_DATA, "%s: %s must be a positive number",
           r->path, key);
  *out = v->valuedouble;
  return LT_OK;
}

static int get_bool(const reader *r, const char *key, bool *out) {
  const cJSON *v = item(r, key);
  *out = false;
  if (!v) return LT_OK;
  LT_CHECK(cJSON_IsBool(v), LT_ERR_DATA, "%s: %s must be true or false", r->path, key);
  *out = cJSON_IsTrue(v);
  return LT_OK;
}

static int check_architecture(const reader *r) {
  const cJSON *archs = item(r, "architectures");
  const char *type = cJSON_GetStringValue(item(r, "model_type"));
  bool llama = false;
  const cJSON *a;
  cJSON_ArrayForEach(a, archs) llama |=
      cJSON_IsString(a) && !strcmp(a->valuestring, "LlamaForCausalLM");
  if (!archs) llama = type && strcmp(type, "llama") == 0;
  const char *named = cJSON_IsArray(archs) && cJSON_IsString(archs->child)
                          ? archs->child->valuestring
                      : type ? type
                             : "missing";
  LT_CHECK(llama, LT_ERR_DATA,
           "%s: architecture %s is not supported; longtrain imports LlamaForCausalLM models",
           r->path, named);
  LT_CHECK(!type || strcmp(type, "llama") == 0, LT_ERR_DATA,
           "%s: model_type %s is not llama; longtrain imports LlamaForCausalLM models", r->path,
           type);
  return LT_OK;
}

// RoPE: theta, and no scaling (longtrain's RoPE has none to honour it with).
static int read_rope(const reader *r, double *theta) {
  const cJSON *params = item(r, "rope_parameters"), *scaling = item(r, "rope_scaling");
  LT_CHECK(!params || cJSON_IsObject(params), LT_ERR_DATA,
           "%s: rope_parameters must be an object (per-layer-type RoPE is not Llama's)", r->path);
  const char *keys[2] = {"rope_parameters", "rope_scaling"};
  const cJSON *objs[2] = {params, scaling};
  for (int i = 0; i < 2; i++) {
    if (!objs[i]) continue;
    const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(objs[i], "rope_type"));
    if (!type) type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(objs[i], "type"));
    LT_CHECK(type && strcmp(type, "default") == 0, LT_ERR_DATA,
             "%s: %s type %s is not supported: longtrain's RoPE takes rope_theta only, without "
             "scaling",
             r->path, keys[i], type ? type : "(missing)");
  }
  const cJSON *v = item(r, "rope_theta");
  if (!v && params) v = cJSON_GetObjectItemCaseSensitive(params, "rope_theta");
  return get_double(r, v, "rope_theta", 10000.0, theta);
}

// What would change the computation of a Llama block and has no counterpart in longtrain's.
static int check_block(const reader *r) {
  const char *act = cJSON_GetStringValue(item(r, "hidden_act"));
  LT_CHECK(!act || strcmp(act, "silu") == 0, LT_ERR_DATA,
           "%s: hidden_act %s is not supported (longtrain's SwiGLU uses silu)", r->path, act);
  static const char *const biases[] = {"attention_bias", "mlp_bias"};
  for (int i = 0; i < 2; i++) {
    bool set;
    LT_TRY(get_bool(r, biases[i], &set));
    LT_CHECK(!set, LT_ERR_DATA, "%s: %s is true; longtrain's Llama layers have no biases", r->path,
             biases[i]);
  }
  const cJSON *dropout = item(r, "attention_dropout");
  LT_CHECK(!dropout || (cJSON_IsNumber(dropout) && dropout->valuedouble == 0), LT_ERR_DATA,
           "%s: attention_dropout must be 0 (longtrain has no dropout)", r->path);
  return LT_OK;
}

static int read_token_ids(const reader *r, lt_hf_config *out) {
  const cJSON *bos = item(r, "bos_token_id"), *eos = item(r, "eos_token_id");
  out->bos_token_id = cJSON_IsNumber(bos) ? bos->valueint : -1;
  out->n_eos = 0;
  if (cJSON_IsNumber(eos)) out->eos_token_ids[out->n_eos++] = eos->valueint;
  for (const cJSON *e = cJSON_IsArray(eos) ? eos->child : NULL; e; e = e->next) {
    LT_CHECK(cJSON_IsNumber(e) && out->n_eos < LT_HF_MAX_EOS, LT_ERR_DATA,
             "%s: eos_token_id must be an id or a list of at most %d ids", r->path, LT_HF_MAX_EOS);
    out->eos_token_ids[out->n_eos++] = e->valueint;
  }
  const char *dtype = cJSON_GetStringValue(item(r, "torch_dtype"));
  if (!dtype) dtype = cJSON_GetStringValue(item(r, "dtype"));
  snprintf(out->dtype, sizeof out->dtype, "%s", dtype ? dtype : "");
  return LT_OK;
}

static int read_config(const reader *r, lt_hf_config *out) {
  LT_CHECK(cJSON_IsObject(r->root), LT_ERR_DATA, "%s: not a JSON object", r->path);
  LT_TRY(check_architecture(r));
  LT_TRY(check_block(r));
  lt_config defaults;
  LT_TRY(lt_config_defaults(&defaults));
  lt_model_config *m = &out->model;
  *m = defaults.model;
  m->init = LT_INIT_LLAMA;
  LT_TRY(get_int(r, "hidden_size", 0, &m->d_model));
  LT_TRY(get_int(r, "num_hidden_layers", 0, &m->n_layers));
  LT_TRY(get_int(r, "num_attention_heads", 0, &m->n_heads));
  LT_TRY(get_int(r, "num_key_value_heads", m->n_heads, &m->n_kv_heads));
  LT_TRY(get_int(r, "intermediate_size", 0, &m->ffn_dim));
  LT_TRY(get_int(r, "vocab_size", 0, &m->vocab_size));
  LT_TRY(get_int(r, "max_position_embeddings", 2048, &m->max_seq_len));
  LT_CHECK(item(r, "head_dim") || m->d_model % m->n_heads == 0, LT_ERR_DATA,
           "%s: hidden_size %d is not a multiple of num_attention_heads %d and head_dim is not "
           "given",
           r->path, m->d_model, m->n_heads);
  LT_TRY(get_int(r, "head_dim", m->d_model / m->n_heads, &m->head_dim));
  LT_CHECK(m->n_heads % m->n_kv_heads == 0, LT_ERR_DATA,
           "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", r->path,
           m->n_heads, m->n_kv_heads);
  LT_CHECK(m->head_dim % 2 == 0 && m->head_dim <= 256, LT_ERR_DATA,
           "%s: head_dim %d is not supported (longtrain needs an even head_dim of at most 256)",
           r->path, m->head_dim);
  LT_TRY(read_rope(r, &m->rope_theta));
  LT_TRY(get_double(r, item(r, "rms_norm_eps"), "rms_norm_eps", 1e-6, &m->norm_eps));
  LT_TRY(get_double(r, item(r, "initializer_range"), "initializer_range", 0.02, &m->init_std));
  LT_TRY(get_bool(r, "tie_word_embeddings", &m->tie_embeddings));
  return read_token_ids(r, out);
}

int lt_hf_config_parse(const char *json, size_t len, const char *name, lt_hf_config *out) {
  *out = (lt_hf_config){0};
  cJSON *root = cJSON_ParseWithLength(json, len);
  LT_CHECK(root, LT_ERR_DATA, "%s: not valid JSON", name);
  int rc = read_config(&(reader){root, name}, out);
  cJSON_Delete(root);
  return rc;
}

int lt_hf_config_read(const char *path, lt_hf_config *out) {
  char file[LT_PATH_MAX];
  struct stat info;
  bool dir = stat(path, &info) == 0 && S_ISDIR(info.st_mode);
  snprintf(file, sizeof file, dir ? "%s/config.json" : "%s", path);
  char *json;
  size_t len;
  LT_TRY(lt_read_file(file, &json, &len));
  int rc = lt_hf_config_parse(json, len, file, out);
  free(json);
  return rc;
}

// Every layer must be a softmax-attention, SwiGLU block for the file to describe the model.
static int check_plain_llama(const lt_model_config *m) {
  for (int l = 0; l < m->n_layers; l++) {
    const char *mixer = "softmax", *ffn = "swiglu";
    if (m->attention[0])
      LT_TRY(lt_config_layer_kind(m->attention, lt_attention_kinds, m->n_layers, l,
                                  "model.attention", &mixer));
    if (m->ffn[0])
      LT_TRY(lt_config_layer_kind(m->ffn, lt_ffn_kinds, m->n_layers, l, "model.ffn", &ffn));
    LT_CHECK(strcmp(mixer, "softmax") == 0 && strcmp(ffn, "swiglu") == 0, LT_ERR_CONFIG,
             "model.attention '%s' / model.ffn '%s': layer %d is %s + %s, which LlamaForCausalLM "
             "cannot describe (it needs softmax + swiglu in every layer)",
             m->attention, m->ffn, l, mixer, ffn);
  }
  return LT_OK;
}

static cJSON *build_json(const lt_hf_config *cfg) {
  const lt_model_config *m = &cfg->model;
  const int kv_heads = m->n_kv_heads ? m->n_kv_heads : m->n_heads;
  const int head_dim = m->head_dim ? m->head_dim : m->d_model / m->n_heads;
  cJSON *root = cJSON_CreateObject();
  cJSON *archs = cJSON_AddArrayToObject(root, "architectures");
  cJSON_AddItemToArray(archs, cJSON_CreateString("LlamaForCausalLM"));
  cJSON_AddStringToObject(root, "model_type", "llama");
  cJSON_AddNumberToObject(root, "hidden_size", m->d_model);
  cJSON_AddNumberToObject(root, "intermediate_size", m->ffn_dim);
  cJSON_AddNumberToObject(root, "num_hidden_layers", m->n_layers);
  cJSON_AddNumberToObject(root, "num_attention_heads", m->n_heads);
  cJSON_AddNumberToObject(root, "num_key_value_heads", kv_heads);
  cJSON_AddNumberToObject(root, "head_dim", head_dim);
  cJSON_AddNumberToObject(root, "vocab_size", m->vocab_size);
  cJSON_AddNumberToObject(root, "max_position_embeddings", m->max_seq_len);
  cJSON_AddStringToObject(root, "hidden_act", "silu");
  cJSON_AddNumberToObject(root, "rms_norm_eps", m->norm_eps);
  cJSON_AddNumberToObject(root, "initializer_range", m->init_std);
  cJSON_AddBoolToObject(root, "tie_word_embeddings", m->tie_embeddings);
  cJSON_AddBoolToObject(root, "attention_bias", false);
  cJSON_AddBoolToObject(root, "mlp_bias", false);
  cJSON_AddNumberToObject(root, "attention_dropout", 0.0);
  // Both RoPE layouts: transformers 4 reads rope_theta, transformers 5 rope_parameters.
  cJSON_AddNumberToObject(root, "rope_theta", m->rope_theta);
  cJSON_AddNullToObject(root, "rope_scaling");
  cJSON *rope = cJSON_AddObjectToObject(root, "rope_parameters");
  cJSON_AddStringToObject(rope, "rope_type", "default");
  cJSON_AddNumberToObject(rope, "rope_theta", m->rope_theta);
  if (cfg->bos_token_id >= 0) cJSON_AddNumberToObject(root, "bos_token_id", cfg->bos_token_id);
  if (cfg->n_eos == 1) cJSON_AddNumberToObject(root, "eos_token_id", cfg->eos_token_ids[0]);
  if (cfg->n_eos > 1)
    cJSON_AddItemToObject(root, "eos_token_id",
                          cJSON_CreateIntArray(cfg->eos_token_ids, cfg->n_eos));
  cJSON_AddStringToObject(root, "torch_dtype", cfg->dtype[0] ? cfg->dtype : "float32");
  cJSON_AddBoolToObject(root, "use_cache", true);
  return root;
}

int lt_hf_config_write(const char *path, const lt_hf_config *cfg) {
  LT_TRY(check_plain_llama(&cfg->model));
  cJSON *root = build_json(cfg);
  char *text = root ? cJSON_Print(root) : NULL;
  cJSON_Delete(root);
  LT_CHECK(text, LT_ERR_MEMORY, "out of memory writing %s", path);
  char tmp[LT_PATH_MAX + 32];
  snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid());
  FILE *f = fopen(tmp, "w");
  int rc = f ? LT_OK : lt_fail(LT_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
  if (rc == LT_OK && (fputs(text, f) == EOF || fputc('\n', f) == EOF))
    rc = lt_fail(LT_ERR_IO, "%s: write failed: %s", path, strerror(errno));
  if (f && fclose(f) != 0 && rc == LT_OK)
    rc = lt_fail(LT_ERR_IO, "%s: write failed: %s", path, strerror(errno));
  free(text);
  if (rc == LT_OK) rc = lt_commit_file(tmp, path);
  if (rc != LT_OK && f) remove(tmp);
  return rc;
}
