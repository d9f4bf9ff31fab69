// The run configuration: a YAML file (libyaml), defaults for every key, `--set a.b=value`
// overrides, and validation with the key's path in every message.
//
// Every key lives in one table (config_schema.c) with its type, default, range and
// documentation; the parser, the overrides, the README's reference (`longtrain config --docs`)
// and the resolved YAML saved with each run all come from that table.
#ifndef LT_CONFIG_H
#define LT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LT_PATH_MAX 1024

typedef enum lt_init_scheme { LT_INIT_LLAMA, LT_INIT_SCALED, LT_INIT_NEOX } lt_init_scheme;
typedef enum lt_lr_decay { LT_DECAY_COSINE, LT_DECAY_LINEAR, LT_DECAY_CONSTANT } lt_lr_decay;
typedef enum lt_device_choice { LT_DEVICE_CPU, LT_DEVICE_CUDA } lt_device_choice;

// The mixture-of-experts feed-forward (model.ffn: moe), keys model.moe.*.
typedef struct lt_moe_config {
  int n_experts, top_k, ffn_dim, n_shared_experts;
  double capacity_factor, aux_loss_coef, z_loss_coef;
  bool renormalize;
} lt_moe_config;
// model.sparse: the pattern of layers of kind "sparse" (the kernel's lt_attn_sparsity).
typedef struct lt_sparse_config {
  int window, sinks, block_size, local_blocks, stride, global_blocks;
} lt_sparse_config;

// model.moh: mixture-of-head attention, layers of kind "moh".
typedef struct lt_moh_config {
  int shared_heads, top_k;
  double balance_coef;
} lt_moh_config;

// model.linear.*: linear attention layers (layers/attention/linear.c). The enums' values are the
// kernels' (lt_feature_map, lt_linear_norm, lt_gate in kernels/kernels.h) and the layer's
// (lt_linear_decay in layers/attention/linear.h), in the order of their config choices.
typedef struct lt_linear_config {
  int feature_map;   // elu1 | relu | silu | identity
  int normalization; // denominator | rmsnorm | none
  int decay;         // none | retnet | alibi
  int gate;          // none | linear | sigmoid | silu
  int chunk_size;
} lt_linear_config;

// model.lightning.*: lightning attention layers (layers/attention/lightning.c).
typedef struct lt_lightning_config {
  int block_size;
  int feature_map; // as lt_linear_config
  int gate;        // as lt_linear_config
  bool depth_scaled_decay;
} lt_lightning_config;

typedef struct lt_model_config {
  char attention[256]; // token mixer per layer: a kind, or a pattern (see lt_config_layer_kind)
  char ffn[256];       // feed-forward per layer, likewise
  int d_model, n_layers, n_heads, n_kv_heads, head_dim, ffn_dim, vocab_size, max_seq_len;
  double rope_theta, norm_eps, init_std;
  double rope_ntk_factor; // context extension: RoPE's base becomes theta * s^(d/(d-2))
  bool tie_embeddings;
  int init; // lt_init_scheme
  lt_moe_config moe;
  lt_sparse_config sparse;
  lt_moh_config moh;

  lt_linear_config linear;
  lt_lightning_config lightning;
} lt_model_config;

typedef struct lt_train_config {
  int64_t steps;
  int batch, micro_batch, seq_len, warmup;
  double lr, min_lr, weight_decay, beta1, beta2, eps, clip_norm;
  int decay; // lt_lr_decay
  bool decay_embeddings, decay_norms, recompute;
  char freeze[256];             // parameter groups and name prefixes that are not trained
  int eval_every, eval_batches; // validation loss cadence and size
} lt_train_config;

typedef enum lt_packing { LT_PACK_STREAM, LT_PACK_DOCUMENTS } lt_packing;
// data.task: a synthetic task instead of a dataset (data/tasks.h).
typedef enum lt_data_task {
  LT_DATA_TASK_NONE,
  LT_DATA_TASK_MQAR,
  LT_DATA_TASK_PASSKEY
} lt_data_task;

typedef struct lt_data_config {
  char path[LT_PATH_MAX];
  int packing; // lt_packing
  double val_fraction;
  char val_path[LT_PATH_MAX];
  int task;                                     // lt_data_task
  int task_vocab, task_pairs, task_passkey_len; // 0: model.vocab_size, train.seq_len / 8
  double task_power_a, task_depth_min, task_depth_max;
} lt_data_config;

typedef struct lt_checkpoint_config {
  int64_t every; // steps between checkpoints; 0: only at the end (and on SIGTERM / SIGUSR1)
  int keep;      // complete checkpoints kept; older ones are deleted
} lt_checkpoint_config;

typedef struct lt_run_config {
  char dir[LT_PATH_MAX];
  int64_t seed;
  int log_every, threads;
  int device;         // lt_device_choice
  double peak_tflops; // one device's peak dense bf16 TFLOP/s for MFU; 0: from the GPU's name
} lt_run_config;

// parallel.*: how the world's ranks are split. World size = dp * pp * cp * tp, tp innermost (the
// ranks of one tensor-parallel group are neighbours: one node's fast links).
typedef struct lt_parallel_config {
  int dp, pp, cp, tp;
  bool zero;            // ZeRO-1: shard the optimizer state over dp (x cp)
  int timeout_s;        // a collective that waits longer ends the job (a dead or hung rank)
  double bucket_mb;     // gradients are summed over dp (x cp) in buckets of about this size
  char pp_layers[256];  // each pipeline stage's layer count ("3,5"); "" for n_layers / pp each
} lt_parallel_config;

typedef struct lt_config {
  lt_model_config model;
  lt_parallel_config parallel;
  lt_train_config train;
  lt_data_config data;
  lt_checkpoint_config checkpoint;
  lt_run_config run;
  char source[LT_PATH_MAX]; // the file it came from, for messages ("<defaults>" if none)
} lt_config;

typedef enum lt_config_type {
  LT_CFG_INT,
  LT_CFG_INT64,
  LT_CFG_FLOAT,
  LT_CFG_BOOL,
  LT_CFG_STRING,
  LT_CFG_ENUM
} lt_config_type;

typedef struct lt_config_key {
  const char *path; // "model.d_model"
  lt_config_type type;
  size_t offset;             // of the field in lt_config
  size_t size;               // of the field (strings: the buffer)
  const char *default_value; // YAML scalar text
  double min, max;           // inclusive range for numbers
  const char *choices;       // enums: "cosine|linear|constant", in the C enum's order
  const char *doc;
} lt_config_key;

extern const lt_config_key lt_config_keys[];
extern const int lt_config_n_keys;

// Every key at its default.
int lt_config_defaults(lt_config *cfg);
// Defaults, then the YAML file at `path` (if not NULL), then each "a.b=value" override in order,
// then cross-key validation.
int lt_config_load(lt_config *cfg, const char *path, int n_overrides, char *const *overrides);
// The same, from YAML text in memory (`name` labels it in messages).
int lt_config_load_string(lt_config *cfg, const char *yaml, const char *name, int n_overrides,
                          char *const *overrides);
// One "a.b=value" override onto an already loaded config.
int lt_config_set(lt_config *cfg, const char *assignment);
// Relations between keys (divisibility, ranges that depend on other keys).
int lt_config_validate(const lt_config *cfg);
// The resolved config as YAML text (caller frees).
int lt_config_to_yaml(const lt_config *cfg, char **out);
// The value of `key` in `cfg` as the resolved YAML writes it, into buf (cut to cap).
void lt_config_format_value(const lt_config *cfg, const lt_config_key *key, char *buf, size_t cap);
// A markdown table of every key: path, type, default, meaning.
void lt_config_print_docs(void);

// The model.moe.* relations (top_k within n_experts, ...); `src` names the config in messages.
int lt_config_validate_moe(const lt_moe_config *moe, const char *src);
// The sizes tensor parallelism splits over `tp` ranks (heads, key/value heads, hidden units, the
// vocabulary) must be multiples of it; `src` names the config in messages.
int lt_config_validate_tp(const lt_model_config *model, int tp, const char *src);

// The kinds a layer pattern may name (NULL-terminated), in config_schema.c.
extern const char *const lt_attention_kinds[];
extern const char *const lt_ffn_kinds[];
// The kind of layer `layer` under a pattern such as "softmax" (every layer) or
// "lightning*7,softmax" (seven lightning layers then one softmax, repeated over the stack).
// `key` names the config key in messages. Fails unless every name is in `kinds` and the pattern's
// length divides n_layers.
int lt_config_layer_kind(const char *pattern, const char *const *kinds, int n_layers, int layer,
                         const char *key, const char **kind);

// Pipeline stage `stage` of `stages` holds layers [*begin, *end): `pp_layers` (parallel.pp_layers)
// lists every stage's count, or is empty for n_layers / stages each (which must then divide).
// Each stage holds at least one layer.
int lt_config_stage_layers(const char *pp_layers, int stages, int n_layers, int stage, int *begin,
                           int *end);

#endif
