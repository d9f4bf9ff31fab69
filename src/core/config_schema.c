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
    FLOAT("model.rope_ntk_factor", model.rope_ntk_factor, "1", 1, 1e6,
          "Context extension by NTK-aware RoPE scaling: the base becomes rope_theta * "
          "s^(d/(d-2)), d the head width (YaRN paper, eq. 16). Set s to the new context over the "
          "one the weights were trained at (e.g. 4 to fine-tune a 4K model at 16K with "
          "--init-from and a larger max_seq_len); 1 leaves RoPE unchanged."),
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
    STRING("train.freeze", train.freeze, "",
           "Parameters left untrained (fine-tuning): a comma-separated list of groups (embed, "
           "norm, attn, ffn, head) and parameter-name prefixes (\"layers.0.\"). Frozen "
           "parameters get no update, no weight decay and no optimizer state, and count for "
           "nothing in the gradient norm."),
    INT("train.eval_every", train.eval_every, "0", 0, BIG,
        "Compute the validation loss every this many steps and at the last step; 0 never. "
        "Needs data.val_fraction or data.val_path."),
    INT("train.eval_batches", train.eval_batches, "8", 1, BIG,
        "Micro-batches of train.micro_batch sequences in each validation pass: the same "
        "held-out sequences every time, so the values are comparable."),

    STRING("data.path", data.path, "",
           "HDF5 token dataset made by `longtrain prepare` (required for training)."),
    ENUM("data.packing", data.packing, "stream", "stream|documents",
         "How sequences are cut from the token stream. stream: windows of seq_len + 1 tokens at "
         "multiples of seq_len, across document boundaries. documents: the same windows, but "
         "attention never crosses a document boundary, positions restart at each document's "
         "start, and the token that ends a document is not asked to predict the next one."),
    FLOAT("data.val_fraction", data.val_fraction, "0", 0, 0.5,
          "Fraction of data.path's windows held out for validation, chosen by run.seed; "
          "training never sees them."),
    STRING("data.val_path", data.val_path, "",
           "A separate HDF5 token dataset for the validation loss (instead of "
           "data.val_fraction)."),

    INT64("checkpoint.every", checkpoint.every, "1000", 0, 1e15,
          "Write a checkpoint (RUN_DIR/checkpoints/step_N) every this many steps; 0: only at the "
          "end. One is also written at the last step and on SIGTERM or SIGUSR1."),
    INT("checkpoint.keep", checkpoint.keep, "3", 1, BIG,
        "Complete checkpoints to keep; older ones are deleted once a newer one is complete."),

    STRING("run.dir", run.dir, "runs/default",
           "Folder for this run's metrics.jsonl, resolved config.yaml and checkpoints/."),
    INT64("run.seed", run.seed, "1234", 0, 9.2e18,
          "Seed for initialisation and data order; same seed and config give the same run."),
    INT("run.log_every", run.log_every, "1", 1, BIG,
        "Print a progress line every this many steps."),
    INT("run.threads", run.threads, "0", 0, 4096,
        "CPU threads for the CPU kernels and OpenBLAS; 0 means all cores."),
    ENUM("run.device", run.device, "cpu", "cpu|cuda", "Where to train."),
};

const int lt_config_n_keys = (int)(sizeof lt_config_keys / sizeof lt_config_keys[0]);

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
  LT_CHECK(t->seq_len <= m->max_seq_len, LT_ERR_CONFIG,
           "%s: train.seq_len (%d) exceeds model.max_seq_len (%d): raise model.max_seq_len", src,
           t->seq_len, m->max_seq_len);
  int micro = t->micro_batch ? t->micro_batch : t->batch;
  LT_CHECK(t->batch % micro == 0, LT_ERR_CONFIG,
           "%s: train.batch (%d) must be a multiple of train.micro_batch (%d)", src, t->batch,
           micro);
  LT_CHECK(t->min_lr <= t->lr, LT_ERR_CONFIG, "%s: train.min_lr (%g) must not exceed train.lr (%g)",
           src, t->min_lr, t->lr);
  const lt_data_config *d = &cfg->data;
  LT_CHECK(d->val_fraction == 0 || !d->val_path[0], LT_ERR_CONFIG,
           "%s: data.val_fraction and data.val_path are both set: keep one of them", src);
  LT_CHECK(t->eval_every == 0 || d->val_fraction > 0 || d->val_path[0], LT_ERR_CONFIG,
           "%s: train.eval_every (%d) needs a validation set: set data.val_fraction (e.g. 0.01) "
           "or data.val_path",
           src, t->eval_every);
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
