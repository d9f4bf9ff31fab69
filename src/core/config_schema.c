// Every config key: its type, default, range and meaning. Adding a key is one line here and a
// field in config.h; the parser, overrides, docs and resolved YAML follow from this table.
#include <float.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/error.h"

#define FIELD(f) offsetof(lt_config, f), sizeof(((lt_config *)0)->f)
#define INT(path, f, def, lo, hi, doc)                                                             \
  { path, LT_CFG_INT, FIELD(f), def, lo, hi, NULL, doc }
#define INT64(path, f, def, lo, hi, doc)                                                           \
  { path, LT_CFG_INT64, FIELD(f), def, lo, hi, NULL, doc }
#define FLOAT(path, f, def, lo, hi, doc)                                                           \
  { path, LT_CFG_FLOAT, FIELD(f), def, lo, hi, NULL, doc }
#define BOOL(path, f, def, doc)                                                                    \
  { path, LT_CFG_BOOL, FIELD(f), def, 0, 0, NULL, doc }
#define STRING(path, f, def, doc)                                                                  \
  { path, LT_CFG_STRING, FIELD(f), def, 0, 0, NULL, doc }
#define ENUM(path, f, def, choices, doc)                                                           \
  { path, LT_CFG_ENUM, FIELD(f), def, 0, 0, choices, doc }

#define BIG 2147483647.0

const char *const lt_attention_kinds[] = {"softmax", NULL};
const char *const lt_ffn_kinds[] = {"swiglu", NULL};

const lt_config_key lt_config_keys[] = {
    STRING("model.attention", model.attention, "softmax",
           "Token mixer of each layer: a kind (softmax), or a pattern of kinds with repeat counts, "
           "cycled over the layers: \"lightning*7,softmax\" makes every 8th layer softmax. "
           "n_layers must be a multiple of the pattern's length."),
    STRING("model.ffn", model.ffn, "swiglu",
           "Feed-forward of each layer: a kind (swiglu), or a pattern as for model.attention."),
    INT("model.d_model", model.d_model, "768", 1, BIG, "Width of the residual stream."),
    INT("model.n_layers", model.n_layers, "12", 1, 4096, "Number of transformer blocks."),
    INT("model.n_heads", model.n_heads, "12", 1, 4096, "Query heads per attention layer."),
    INT("model.n_kv_heads", model.n_kv_heads, "0", 0, 4096,
        "Key/value heads (grouped-query attention); 0 means n_heads (multi-head attention)."),
    INT("model.head_dim", model.head_dim, "0", 0, 256,
        "Width of one head, at most 256; 0 means d_model / n_heads. Must be even (RoPE rotates "
        "pairs)."),
    INT("model.ffn_dim", model.ffn_dim, "2048", 1, BIG, "Hidden width of the SwiGLU feed-forward."),
    INT("model.vocab_size", model.vocab_size, "32768", 2, BIG,
        "Embedding rows; at least the dataset's vocab_size (larger pads for speed)."),
    INT("model.max_seq_len", model.max_seq_len, "4096", 1, BIG,
        "Longest sequence the model is built for; train.seq_len may not exceed it."),
    FLOAT("model.rope_theta", model.rope_theta, "10000", 1, DBL_MAX, "RoPE base frequency."),
    FLOAT("model.norm_eps", model.norm_eps, "1e-5", 0, 1, "RMSNorm epsilon."),
    BOOL("model.tie_embeddings", model.tie_embeddings, "false",
         "Share the LM head's weight with the token embedding."),
    ENUM("model.init", model.init, "scaled", "llama|scaled|neox",
         "Weight initialisation. llama: N(0, init_std) everywhere (Hugging Face Llama). scaled: as "
         "llama, with the output projections (attn.wo, ffn.w_down) scaled by 1/sqrt(2*n_layers) "
         "(GPT-2, Megatron). neox: GPT-NeoX's small_init, N(0, sqrt(2/(5*d_model))), and wang_init "
         "for output projections, N(0, 2/(n_layers*sqrt(d_model)))."),
    FLOAT("model.init_std", model.init_std, "0.02", 0, 10,
          "Standard deviation for llama/scaled init."),

    INT64("train.steps", train.steps, "1000", 1, 1e15, "Optimizer steps to train for."),
    INT("train.batch", train.batch, "8", 1, BIG,
        "Global batch in sequences per optimizer step, over all data-parallel ranks. Must be a "
        "multiple of train.micro_batch; the quotient is the number of gradient-accumulation "
        "micro-steps."),
    INT("train.micro_batch", train.micro_batch, "0", 0, BIG,
        "Sequences per forward/backward on one rank; 0 means train.batch (no accumulation)."),
    INT("train.seq_len", train.seq_len, "1024", 1, BIG, "Tokens per training sequence (T)."),
    FLOAT("train.lr", train.lr, "3e-4", 0, 10, "Peak learning rate, reached after warmup."),
    FLOAT("train.min_lr", train.min_lr, "3e-5", 0, 10,
          "Learning rate floor that the decay ends at (absolute, not a ratio)."),
    INT("train.warmup", train.warmup, "100", 0, BIG, "Steps of linear warmup from 0 to train.lr."),
    ENUM(
        "train.decay", train.decay, "cosine", "cosine|linear|constant",
        "Shape of the decay from train.lr to train.min_lr after warmup, over the remaining steps."),
    FLOAT("train.weight_decay", train.weight_decay, "0.1", 0, 10,
          "AdamW decoupled weight decay, applied to 2-D weight matrices."),
    BOOL("train.decay_embeddings", train.decay_embeddings, "false",
         "Also apply weight decay to the token embedding."),
    BOOL("train.decay_norms", train.decay_norms, "false",
         "Also apply weight decay to RMSNorm weights."),
    FLOAT("train.beta1", train.beta1, "0.9", 0, 0.999999, "AdamW beta1."),
    FLOAT("train.beta2", train.beta2, "0.95", 0, 0.99999999, "AdamW beta2."),
    FLOAT("train.eps", train.eps, "1e-8", 0, 1, "AdamW epsilon."),
    FLOAT("train.clip_norm", train.clip_norm, "1.0", 0, DBL_MAX,
          "Clip the global gradient norm to this value; 0 disables clipping."),
    BOOL("train.recompute", train.recompute, "false",
         "Recompute each block's activations in the backward pass instead of keeping them "
         "(activation memory becomes one block's worth plus each block's input)."),

    STRING("data.path", data.path, "",
           "HDF5 token dataset made by `longtrain prepare` (required for training)."),

    STRING("run.dir", run.dir, "runs/default",
           "Folder for this run's metrics.jsonl and resolved config.yaml."),
    INT64("run.seed", run.seed, "1234", 0, 9.2e18,
          "Seed for initialisation and data order; same seed and config give the same run."),
    INT("run.log_every", run.log_every, "1", 1, BIG,
        "Print a progress line every this many steps."),
    INT("run.threads", run.threads, "0", 0, 4096,
        "CPU threads for the CPU kernels and OpenBLAS; 0 means all cores."),
    ENUM("run.device", run.device, "cpu", "cpu|cuda", "Where to train."),
};

const int lt_config_n_keys = (int)(sizeof lt_config_keys / sizeof lt_config_keys[0]);

// The CUDA kernels read rows as 16-byte vectors and the flash attention kernels are built for two
// head widths: shapes outside that fail here, naming the key, instead of deep inside a kernel.
static int validate_cuda_shapes(const lt_config *cfg, int head_dim) {
  const lt_model_config *m = &cfg->model;
  const char *src = cfg->source;
  LT_CHECK(m->d_model % 8 == 0, LT_ERR_CONFIG,
           "%s: model.d_model (%d) must be a multiple of 8 with run.device: cuda", src, m->d_model);
  LT_CHECK(m->ffn_dim % 8 == 0, LT_ERR_CONFIG,
           "%s: model.ffn_dim (%d) must be a multiple of 8 with run.device: cuda", src, m->ffn_dim);
  for (int l = 0; l < m->n_layers; l++) {
    const char *kind;
    LT_TRY(lt_config_layer_kind(m->attention, lt_attention_kinds, m->n_layers, l, "model.attention",
                                &kind));
    LT_CHECK(strcmp(kind, "softmax") != 0 || head_dim == 64 || head_dim == 128, LT_ERR_CONFIG,
             "%s: softmax attention with run.device: cuda needs a head width of 64 or 128, not %d: "
             "set model.head_dim (or model.n_heads so that d_model / n_heads is 64 or 128)",
             src, head_dim);
  }
  return LT_OK;
}

int lt_config_validate(const lt_config *cfg) {
  const lt_model_config *m = &cfg->model;
  const lt_train_config *t = &cfg->train;
  const char *src = cfg->source;
  const char *kind;
  LT_TRY(lt_config_layer_kind(m->attention, lt_attention_kinds, m->n_layers, 0, "model.attention",
                              &kind));
  LT_TRY(lt_config_layer_kind(m->ffn, lt_ffn_kinds, m->n_layers, 0, "model.ffn", &kind));
  int kv = m->n_kv_heads ? m->n_kv_heads : m->n_heads;
  LT_CHECK(m->n_heads % kv == 0, LT_ERR_CONFIG,
           "%s: model.n_heads (%d) must be a multiple of model.n_kv_heads (%d)", src, m->n_heads,
           kv);
  if (m->head_dim == 0)
    LT_CHECK(
        m->d_model % m->n_heads == 0, LT_ERR_CONFIG,
        "%s: model.d_model (%d) must be divisible by model.n_heads (%d), or set model.head_dim",
        src, m->d_model, m->n_heads);
  int head_dim = m->head_dim ? m->head_dim : m->d_model / m->n_heads;
  LT_CHECK(head_dim <= 256, LT_ERR_CONFIG,
           "%s: the head width d_model / n_heads (%d) exceeds 256: raise model.n_heads or set "
           "model.head_dim",
           src, head_dim);
  LT_CHECK(head_dim % 2 == 0, LT_ERR_CONFIG,
           "%s: the head width (%d) must be even for RoPE: set model.head_dim or model.n_heads",
           src, head_dim);
  if (cfg->run.device == LT_DEVICE_CUDA) LT_TRY(validate_cuda_shapes(cfg, head_dim));
  LT_CHECK(t->seq_len <= m->max_seq_len, LT_ERR_CONFIG,
           "%s: train.seq_len (%d) exceeds model.max_seq_len (%d): raise model.max_seq_len", src,
           t->seq_len, m->max_seq_len);
  int micro = t->micro_batch ? t->micro_batch : t->batch;
  LT_CHECK(t->batch % micro == 0, LT_ERR_CONFIG,
           "%s: train.batch (%d) must be a multiple of train.micro_batch (%d)", src, t->batch,
           micro);
  LT_CHECK(t->min_lr <= t->lr, LT_ERR_CONFIG, "%s: train.min_lr (%g) must not exceed train.lr (%g)",
           src, t->min_lr, t->lr);
  return LT_OK;
}

// A pattern is "kind[*count],kind[*count],...". Parsed on every call: patterns are short and
// the model asks once per layer at build time.
int lt_config_layer_kind(const char *pattern, const char *const *kinds, int n_layers, int layer,
                         const char *key, const char **kind) {
  const char *chosen[4096];
  int length = 0;
  for (const char *p = pattern; *p;) {
    size_t len = strcspn(p, ",*");
    int count = 1;
    const char *match = NULL;
    for (int k = 0; kinds[k]; k++)
      if (strlen(kinds[k]) == len && strncmp(kinds[k], p, len) == 0) match = kinds[k];
    if (!match) {
      char names[256] = "";
      for (int k = 0; kinds[k]; k++)
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", k ? ", " : "",
                 kinds[k]);
      return lt_fail(LT_ERR_CONFIG, "%s: unknown kind '%.*s' in \"%s\" (known: %s)", key, (int)len,
                     p, pattern, names);
    }
    p += len;
    if (*p == '*') {
      char *end;
      long n = strtol(p + 1, &end, 10);
      LT_CHECK(end != p + 1 && n >= 1 && n <= 4096, LT_ERR_CONFIG,
               "%s: a repeat count after '*' must be 1 to 4096 in \"%s\"", key, pattern);
      count = (int)n;
      p = end;
    }
    LT_CHECK(*p == '\0' || (*p == ',' && p[1] != '\0'), LT_ERR_CONFIG,
             "%s: expected kind[*count],... in \"%s\"", key, pattern);
    if (*p == ',') p++;
    LT_CHECK(length + count <= 4096, LT_ERR_CONFIG, "%s: pattern \"%s\" is longer than 4096 layers",
             key, pattern);
    for (int i = 0; i < count; i++) chosen[length++] = match;
  }
  LT_CHECK(length > 0, LT_ERR_CONFIG, "%s is empty: give a kind such as %s", key, kinds[0]);
  LT_CHECK(n_layers % length == 0, LT_ERR_CONFIG,
           "%s: the pattern \"%s\" has %d layers, which does not divide model.n_layers (%d)", key,
           pattern, length, n_layers);
  *kind = chosen[layer % length];
  return LT_OK;
}
