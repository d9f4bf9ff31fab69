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

const char *const lt_attention_kinds[] = {"softmax", "sparse", "moh", "linear", "lightning", NULL};
const char *const lt_ffn_kinds[] = {"swiglu", "moe", NULL};

const lt_config_key lt_config_keys[] = {
    STRING("model.attention", model.attention, "softmax",
           "Token mixer of each layer: a kind (softmax), or a pattern of kinds with repeat counts, "
           "cycled over the layers: \"lightning*7,softmax\" makes every 8th layer softmax. "
           "n_layers must be a multiple of the pattern's length."),
    STRING("model.ffn", model.ffn, "swiglu",
           "Feed-forward of each layer: a kind (swiglu, moe), or a pattern as for "
           "model.attention: \"swiglu,moe\" makes every other layer a mixture of experts."),
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
    INT("model.moe.n_experts", model.moe.n_experts, "8", 1, 4096,
        "Routed experts per MoE layer (model.ffn: moe), each a SwiGLU of model.moe.ffn_dim."),
    INT("model.moe.top_k", model.moe.top_k, "2", 1, 4096,
        "Experts each token is routed to: the top_k of the router's softmax."),
    INT("model.moe.ffn_dim", model.moe.ffn_dim, "0", 0, BIG,
        "Hidden width of one expert's SwiGLU; 0 means model.ffn_dim."),
    INT("model.moe.n_shared_experts", model.moe.n_shared_experts, "0", 0, 4096,
        "Experts every token goes through besides its routed ones (DeepSeekMoE's shared experts), "
        "run as one SwiGLU of n_shared_experts * ffn_dim; 0 means none."),
    FLOAT("model.moe.capacity_factor", model.moe.capacity_factor, "0", 0, 1e6,
          "Each expert takes at most ceil(capacity_factor * tokens * top_k / n_experts) of a "
          "micro-batch's choices, first choices first; the rest are dropped (their expert output "
          "is zero and the residual carries the token). 0 means dropless: no limit."),
    BOOL("model.moe.renormalize", model.moe.renormalize, "true",
         "Divide the top_k gate weights by their sum, so they add to 1 (Mixtral); false keeps the "
         "softmax probabilities themselves (Switch, GShard). Needs top_k > 1."),
    FLOAT("model.moe.aux_loss_coef", model.moe.aux_loss_coef, "0.01", 0, 1e6,
          "Weight of the Switch Transformer load-balance loss n_experts * sum_i f_i P_i (f_i: "
          "fraction of choices routed to expert i, P_i: its mean router probability), added per "
          "MoE layer; 1 at perfect balance."),
    FLOAT("model.moe.z_loss_coef", model.moe.z_loss_coef, "0.001", 0, 1e6,
          "Weight of the ST-MoE router z-loss, the mean over tokens of logsumexp(router "
          "logits)^2, added per MoE layer; it keeps router logits small."),
    INT("model.sparse.window", model.sparse.window, "0", 0, BIG,
        "Sparse attention (kind sparse): sliding window; a query sees the keys fewer than window "
        "positions back, itself included. A sparse layer sees the union of the parts that are on "
        "(window, sinks, local_blocks, stride, global_blocks), within the causal and document "
        "masks. 0: off."),
    INT("model.sparse.sinks", model.sparse.sinks, "0", 0, BIG,
        "Sparse attention: the first sinks positions stay visible to every later query (attention "
        "sinks, StreamingLLM). 0: none."),
    INT("model.sparse.block_size", model.sparse.block_size, "64", 1, BIG,
        "Sparse attention: tokens per block, the unit of local_blocks, stride and global_blocks."),
    INT("model.sparse.local_blocks", model.sparse.local_blocks, "0", 0, BIG,
        "Sparse attention: a query sees its own block and the local_blocks - 1 blocks before it "
        "(BigBird's sliding blocks). 0: off."),
    INT("model.sparse.stride", model.sparse.stride, "0", 0, BIG,
        "Sparse attention: strided blocks (Sparse Transformer); a query in block b also sees "
        "blocks b - stride, b - 2*stride, ... 0: off; otherwise at least 2."),
    INT("model.sparse.global_blocks", model.sparse.global_blocks, "0", 0, BIG,
        "Sparse attention: the first global_blocks blocks are visible to every later query "
        "(BigBird and Longformer's global tokens, causal). 0: off."),
    INT("model.moh.shared_heads", model.moh.shared_heads, "4", 0, 4096,
        "Mixture-of-head attention (kind moh): heads every token uses; the other n_heads - "
        "shared_heads heads are routed."),
    INT("model.moh.top_k", model.moh.top_k, "4", 1, 4096,
        "Mixture-of-head attention: routed heads each token activates, chosen by its router "
        "(at most n_heads - shared_heads)."),
    FLOAT("model.moh.balance_coef", model.moh.balance_coef, "0.01", 0, 1e6,
          "Mixture-of-head attention: weight beta of the routed heads' load-balance loss in the "
          "objective (MoH eq. 7); 0 turns it off."),
    ENUM("model.linear.feature_map", model.linear.feature_map, "elu1", "elu1|relu|silu|identity",
         "Linear attention: the feature map phi of queries and keys. elu1: 1 + elu(x) "
         "(Katharopoulos et al. 2020); relu; silu (TransNormerLLM); identity."),
    ENUM("model.linear.normalization", model.linear.normalization, "denominator",
         "denominator|rmsnorm|none",
         "Linear attention: how the output is normalised. denominator: divided by phi(q) . "
         "sum_j lambda^(i-j) phi(k_j) (Katharopoulos et al. 2020; needs feature_map elu1 or "
         "relu); rmsnorm: RMSNorm without gain over all heads (TransNormer's NormAttention); "
         "none."),
    ENUM("model.linear.decay", model.linear.decay, "none", "none|retnet|alibi",
         "Linear attention: per-head decay lambda_h of the state, S_t = lambda_h S_{t-1} + "
         "k_t^T v_t. none: lambda = 1; retnet: lambda_h = 1 - 2^(-5-h) (RetNet); alibi: lambda_h "
         "= exp(-m_h) with m_h the ALiBi slopes (as model.lightning, without depth scaling)."),
    ENUM("model.linear.gate", model.linear.gate, "none", "none|linear|sigmoid|silu",
         "Linear attention: output gate, y = norm(o) * g(x Wu^T) before the output projection. "
         "none; linear: g(u) = u (TransNormerLLM); sigmoid; silu."),
    INT("model.linear.chunk_size", model.linear.chunk_size, "64", 1, 65536,
        "Linear attention: tokens per chunk of the chunked form (a masked matmul inside each "
        "chunk, the state carried between chunks). Sets speed and memory, not the result."),
    INT("model.lightning.block_size", model.lightning.block_size, "64", 1, 65536,
        "Lightning attention: tokens per block of the intra-block (masked, decayed q k^T v) / "
        "inter-block (decayed state) split of Lightning Attention-2. Sets speed, not the result."),
    ENUM("model.lightning.feature_map", model.lightning.feature_map, "silu",
         "elu1|relu|silu|identity",
         "Lightning attention: the feature map of queries and keys; silu as in TransNormerLLM."),
    ENUM("model.lightning.gate", model.lightning.gate, "linear", "none|linear|sigmoid|silu",
         "Lightning attention: output gate after the RMSNorm of the attention output; linear "
         "(g(u) = u) as in TransNormerLLM, sigmoid as in TNL."),
    BOOL("model.lightning.depth_scaled_decay", model.lightning.depth_scaled_decay, "true",
         "Lightning attention: scale the heads' decay rates (the ALiBi slopes m_h, lambda_h = "
         "exp(-m_h)) by 1 - l/(L-1) + 1e-5 in layer l of L, as TransNormerLLM does: strong "
         "decay in the first layer, almost none in the last."),

    INT64("train.steps", train.steps, "1000", 1, 1e15, "Optimizer steps to train for."),
    INT("train.batch", train.batch, "8", 1, BIG,
        "Global batch in sequences per optimizer step, over all data-parallel ranks. Must be a "
        "multiple of train.micro_batch; the quotient is the number of gradient-accumulation "
        "micro-steps."),
    INT("train.micro_batch", train.micro_batch, "0", 0, BIG,
        "Sequences per forward/backward on one rank; 0 means train.batch / parallel.dp, each "
        "data-parallel rank's whole share (no accumulation)."),
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
        "Micro-batches of train.micro_batch sequences (train.batch when 0) in each validation "
        "pass, split over the data-parallel ranks: the same held-out sequences every time and "
        "at every parallel.dp, so the values are comparable."),

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
    ENUM("data.task", data.task, "none", "none|mqar|passkey",
         "Train on a synthetic task that longtrain generates, instead of data.path. mqar: "
         "multi-query associative recall (Zoology): key-value pairs, then each key again, to be "
         "answered with its value. passkey: a passkey of digits hidden in filler text, asked for "
         "at the end (Landmark Attention). Only the answers are trained on. Sample i depends only "
         "on run.seed and i (resuming is bit-exact); the validation loss (train.eval_every) and "
         "`longtrain eval` use streams of their own. none: train on data.path."),
    INT("data.task_vocab", data.task_vocab, "0", 0, BIG,
        "Token ids the task uses (below this); 0 means model.vocab_size, which it may not exceed. "
        "mqar: keys are 1 .. V/2-1 and values V/2 .. V-1; passkey: the digits 0-9, two markers "
        "(10, 11), and filler words from 12 up."),
    INT("data.task_pairs", data.task_pairs, "0", 0, BIG,
        "mqar: key-value pairs per sequence; 0 means train.seq_len / 8. Needs train.seq_len of at "
        "least 4 * pairs and data.task_vocab of at least 2 * pairs + 2."),
    FLOAT("data.task_power_a", data.task_power_a, "0.01", 0, 1,
          "mqar: a query's place after the pairs is drawn with weight (g+1)^(a-1) over the free "
          "places g, so most keys are asked soon and a few much later (Zoology's 0.01)."),
    INT("data.task_passkey_len", data.task_passkey_len, "5", 1, 4096,
        "passkey: digits of the passkey."),
    FLOAT("data.task_depth_min", data.task_depth_min, "0", 0, 1,
          "passkey: each sequence hides its passkey at a depth drawn uniformly between "
          "data.task_depth_min and data.task_depth_max (0: the start of the filler, 1: just "
          "before the question); `longtrain eval` reports accuracy per depth bucket of this "
          "range."),
    FLOAT("data.task_depth_max", data.task_depth_max, "1", 0, 1,
          "passkey: the deepest place of the passkey (see data.task_depth_min)."),

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
    FLOAT("run.peak_tflops", run.peak_tflops, "0", 0, 1e6,
          "Peak dense bf16 TFLOP/s of one device, for the model FLOPs utilisation (MFU) in the "
          "progress line and metrics.jsonl; 0: looked up from the GPU's name on CUDA (H100, "
          "H200, A100, ...), and no MFU on the CPU."),

    INT("parallel.dp", parallel.dp, "1", 1, 65536,
        "Data-parallel replicas: each trains on its own share of the global batch and the "
        "gradients "
        "are averaged. dp * pp * cp * tp must equal the number of ranks mpirun or srun starts."),
    INT("parallel.pp", parallel.pp, "1", 1, 4096,
        "Pipeline stages: the layers are split into pp consecutive ranges, one per stage, run with "
        "the 1F1B schedule over the step's micro-batches."),
    STRING("parallel.pp_layers", parallel.pp_layers, "",
           "Layers of each pipeline stage, first to last, as a comma-separated list summing to "
           "model.n_layers (\"5,6,6,5\": lighter first and last stages, which also hold the "
           "embedding and the LM head with the loss). Empty: model.n_layers / parallel.pp each, "
           "which must divide."),
    INT("parallel.cp", parallel.cp, "1", 1, 4096,
        "Context-parallel ranks: each sequence is split over cp ranks (2*cp zigzag chunks, rank r "
        "holding chunks r and 2cp-1-r); softmax-like attention runs as ring attention, linear-like "
        "attention with LASP-2."),
    INT("parallel.tp", parallel.tp, "1", 1, 4096,
        "Tensor-parallel ranks (Megatron-LM): heads, the feed-forward's hidden units and the vocab "
        "are split over tp ranks; the innermost axis, so keep it within a node. model.n_heads, "
        "model.n_kv_heads, model.ffn_dim (model.moe.ffn_dim for experts) and model.vocab_size "
        "must be multiples of it."),
    BOOL("parallel.zero", parallel.zero, "false",
         "ZeRO-1: each data-parallel rank keeps and updates 1/dp of the optimizer state "
         "(gradients reduce-scattered, weights all-gathered). With context parallelism the "
         "state is split over the dp * cp ranks that share the weights."),
    INT("parallel.timeout_s", parallel.timeout_s, "600", 1, 86400,
        "A rank that waits this long in one collective ends the whole job with a message naming "
        "the operation (a peer died or hangs)."),
    FLOAT("parallel.bucket_mb", parallel.bucket_mb, "25", 0.001, 1e6,
          "Data parallelism sums the gradients in buckets of about this many MiB, each started "
          "as soon as backward has finished its layers, so communication overlaps the rest of "
          "the backward (PyTorch DDP's bucket_cap_mb)."),
};

const int lt_config_n_keys = (int)(sizeof lt_config_keys / sizeof lt_config_keys[0]);

// Whether any layer of the stack uses `kind` under `pattern` (the pattern already checked).
static bool uses_kind(const lt_model_config *m, const char *pattern, const char *const *kinds,
                      const char *key, const char *kind) {
  for (int l = 0; l < m->n_layers; l++) {
    const char *k;
    if (lt_config_layer_kind(pattern, kinds, m->n_layers, l, key, &k) == LT_OK &&
        strcmp(k, kind) == 0)
      return true;
  }
  return false;
}

static bool uses_attention(const lt_model_config *m, const char *kind) {
  return uses_kind(m, m->attention, lt_attention_kinds, "model.attention", kind);
}

static bool uses_ffn(const lt_model_config *m, const char *kind) {
  return uses_kind(m, m->ffn, lt_ffn_kinds, "model.ffn", kind);
}

static int validate_sparse(const lt_config *cfg) {
  const lt_sparse_config *s = &cfg->model.sparse;
  const char *src = cfg->source;
  const int seq = cfg->train.seq_len;
  LT_CHECK(s->window || s->sinks || s->local_blocks || s->stride || s->global_blocks, LT_ERR_CONFIG,
           "%s: model.attention uses sparse but model.sparse turns no part on: set "
           "model.sparse.window, model.sparse.sinks, or model.sparse.local_blocks, stride or "
           "global_blocks",
           src);
  LT_CHECK(s->window <= seq, LT_ERR_CONFIG,
           "%s: model.sparse.window (%d) exceeds train.seq_len (%d): every key would be in the "
           "window; lower it, or use softmax attention",
           src, s->window, seq);
  LT_CHECK(s->sinks < seq, LT_ERR_CONFIG,
           "%s: model.sparse.sinks (%d) must be below train.seq_len (%d)", src, s->sinks, seq);
  if (s->local_blocks || s->stride || s->global_blocks)
    LT_CHECK(s->block_size <= seq, LT_ERR_CONFIG,
             "%s: model.sparse.block_size (%d) exceeds train.seq_len (%d): lower it", src,
             s->block_size, seq);
  LT_CHECK(s->stride != 1, LT_ERR_CONFIG,
           "%s: model.sparse.stride 1 makes every block visible: use 0 (off) or 2 and above", src);
  return LT_OK;
}

static int validate_moh(const lt_config *cfg) {
  const lt_model_config *m = &cfg->model;
  const char *src = cfg->source;
  LT_CHECK(m->moh.shared_heads < m->n_heads, LT_ERR_CONFIG,
           "%s: model.moh.shared_heads (%d) must be below model.n_heads (%d): MoH routes the "
           "heads that are not shared",
           src, m->moh.shared_heads, m->n_heads);
  const int routed = m->n_heads - m->moh.shared_heads;
  LT_CHECK(routed <= 256, LT_ERR_CONFIG, // LT_MOH_MAX_HEADS (kernels.h)
           "%s: moh routes at most 256 heads, not %d: raise model.moh.shared_heads or lower "
           "model.n_heads",
           src, routed);
  LT_CHECK(m->moh.top_k <= routed, LT_ERR_CONFIG,
           "%s: model.moh.top_k (%d) exceeds the %d routed heads (model.n_heads %d - "
           "model.moh.shared_heads %d): lower model.moh.top_k",
           src, m->moh.top_k, routed, m->n_heads, m->moh.shared_heads);
  return LT_OK;
}

// Whether the enum key at `path` is set to the choice `name`.
static bool is_choice(const lt_config *cfg, const char *path, const char *name) {
  for (int i = 0; i < lt_config_n_keys; i++) {
    const lt_config_key *key = &lt_config_keys[i];
    if (strcmp(key->path, path) != 0) continue;
    const char *p = key->choices;
    for (int index = *(const int *)((const char *)cfg + key->offset); index > 0; index--)
      p = strchr(p, '|') + 1;
    const size_t len = strcspn(p, "|");
    return strlen(name) == len && strncmp(p, name, len) == 0;
  }
  return false;
}

// The linear kinds' settings matter only where a layer uses them.
static int validate_linear(const lt_config *cfg) {
  if (uses_attention(&cfg->model, "linear"))
    LT_CHECK(!is_choice(cfg, "model.linear.normalization", "denominator") ||
                 is_choice(cfg, "model.linear.feature_map", "elu1") ||
                 is_choice(cfg, "model.linear.feature_map", "relu"),
             LT_ERR_CONFIG,
             "%s: model.linear.normalization: denominator needs a positive feature map: set "
             "model.linear.feature_map to elu1 or relu, or model.linear.normalization to rmsnorm",
             cfg->source);
  return LT_OK;
}

// The CUDA backend has kernels for every layer kind: flash attention for softmax, sparse and MoH
// attention (sparse patterns and MoH's head gates inside the kernel, MoH's router and gating
// beside it), one chunked scan for linear and lightning attention (kernels/cuda/linear_scan.cu),
// and the SwiGLU MLP, dense or a mixture of experts. What it asks of a model: rows read as
// 16-byte vectors, and head widths the attention kernels are built for; the parallel paths run on
// the host until the collectives run on NCCL. Shapes outside that fail here, naming the key,
// instead of deep inside a kernel.
static int validate_cuda(const lt_config *cfg, int head_dim) {
  const lt_model_config *m = &cfg->model;
  const char *src = cfg->source;
  LT_CHECK(m->d_model % 8 == 0, LT_ERR_CONFIG,
           "%s: model.d_model (%d) must be a multiple of 8 with run.device: cuda", src, m->d_model);
  LT_CHECK(m->ffn_dim % 8 == 0, LT_ERR_CONFIG,
           "%s: model.ffn_dim (%d) must be a multiple of 8 with run.device: cuda", src, m->ffn_dim);
  LT_CHECK(!uses_ffn(m, "moe") || m->moe.ffn_dim % 8 == 0, LT_ERR_CONFIG,
           "%s: model.moe.ffn_dim (%d) must be a multiple of 8 with run.device: cuda", src,
           m->moe.ffn_dim);
  LT_CHECK(head_dim == 64 || head_dim == 128, LT_ERR_CONFIG,
           "%s: attention with run.device: cuda needs a head width of 64 or 128, not %d: "
           "set model.head_dim (or model.n_heads so that d_model / n_heads is 64 or 128)",
           src, head_dim);
  const lt_parallel_config *par = &cfg->parallel;
  LT_CHECK(
      par->dp * par->pp * par->cp * par->tp == 1, LT_ERR_CONFIG,
      "%s: run.device: cuda trains on one GPU in this version (parallel.dp, pp, cp and tp must "
      "be 1): the parallel paths run on the CPU until their collectives use NCCL",
      src);
  return LT_OK;
}

// A task generates every sample, and its own validation stream: the dataset keys do not apply.
static int validate_task(const lt_config *cfg) {
  const lt_data_config *d = &cfg->data;
  const char *src = cfg->source;
  const char *task = d->task == LT_DATA_TASK_MQAR ? "mqar" : "passkey";
  LT_CHECK(!d->path[0], LT_ERR_CONFIG,
           "%s: data.task (%s) and data.path are both set: a task generates its samples; unset "
           "data.path (--set data.path=) or data.task (none)",
           src, task);
  LT_CHECK(d->val_fraction == 0 && !d->val_path[0], LT_ERR_CONFIG,
           "%s: data.task (%s) draws its validation sequences from a stream of its own: unset "
           "data.val_fraction and data.val_path",
           src, task);
  LT_CHECK(d->packing == LT_PACK_STREAM, LT_ERR_CONFIG,
           "%s: data.packing documents applies to datasets; data.task (%s) makes every sequence "
           "one document: set data.packing to stream",
           src, task);
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
  if (cfg->run.device == LT_DEVICE_CUDA) LT_TRY(validate_cuda(cfg, head_dim));
  LT_CHECK(t->seq_len <= m->max_seq_len, LT_ERR_CONFIG,
           "%s: train.seq_len (%d) exceeds model.max_seq_len (%d): raise model.max_seq_len", src,
           t->seq_len, m->max_seq_len);
  if (uses_ffn(m, "moe")) LT_TRY(lt_config_validate_moe(&m->moe, src));
  const int cp = cfg->parallel.cp;
  LT_CHECK(cp == 1 || t->seq_len % (2 * cp) == 0, LT_ERR_CONFIG,
           "%s: train.seq_len (%d) must be a multiple of 2 * parallel.cp = %d: context parallelism "
           "cuts every sequence into 2*cp equal chunks; set train.seq_len to a multiple of %d or "
           "change parallel.cp",
           src, t->seq_len, 2 * cp, 2 * cp);
  const int dp = cfg->parallel.dp;
  LT_CHECK(t->batch % dp == 0, LT_ERR_CONFIG,
           "%s: train.batch (%d) must be a multiple of parallel.dp (%d): each data-parallel rank "
           "trains on train.batch / parallel.dp sequences",
           src, t->batch, dp);
  int micro = t->micro_batch ? t->micro_batch : t->batch / dp;
  LT_CHECK(t->batch % ((long long)micro * dp) == 0, LT_ERR_CONFIG,
           "%s: train.batch (%d) must be a multiple of train.micro_batch (%d) times parallel.dp "
           "(%d)",
           src, t->batch, micro, dp);
  LT_CHECK(t->min_lr <= t->lr, LT_ERR_CONFIG, "%s: train.min_lr (%g) must not exceed train.lr (%g)",
           src, t->min_lr, t->lr);
  const lt_data_config *d = &cfg->data;
  LT_CHECK(d->val_fraction == 0 || !d->val_path[0], LT_ERR_CONFIG,
           "%s: data.val_fraction and data.val_path are both set: keep one of them", src);
  LT_CHECK(t->eval_every == 0 || d->val_fraction > 0 || d->val_path[0] || d->task, LT_ERR_CONFIG,
           "%s: train.eval_every (%d) needs a validation set: set data.val_fraction (e.g. 0.01) "
           "or data.val_path (a data.task has its own)",
           src, t->eval_every);
  LT_CHECK(d->task_vocab <= m->vocab_size, LT_ERR_CONFIG,
           "%s: data.task_vocab (%d) exceeds model.vocab_size (%d): the model has no embedding "
           "for the task's larger ids; lower data.task_vocab (0 means model.vocab_size)",
           src, d->task_vocab, m->vocab_size);
  if (d->task) LT_TRY(validate_task(cfg));
  int begin, end;
  int rc = lt_config_stage_layers(cfg->parallel.pp_layers, cfg->parallel.pp, m->n_layers, 0, &begin,
                                  &end);
  if (rc) return lt_error_context(rc, "%s", src);
  if (uses_attention(m, "sparse")) LT_TRY(validate_sparse(cfg));
  if (uses_attention(m, "moh")) LT_TRY(validate_moh(cfg));
  LT_TRY(lt_config_validate_tp(m, cfg->parallel.tp, src));
  return validate_linear(cfg);
}

// One size the tensor-parallel ranks split evenly, or the one-line error that says how to fix it:
// the multiples of tp around it, or with `up_only` the one above (a vocabulary is padded, never
// cut).
static int tp_divides(int size, const char *key, int tp, const char *what, bool up_only,
                      const char *src) {
  if (size % tp == 0) return LT_OK;
  const int below = size / tp * tp, above = below + tp;
  char fix[96];
  if (below > 0 && !up_only)
    snprintf(fix, sizeof fix, "set %s to %d or %d", key, below, above);
  else
    snprintf(fix, sizeof fix, "set %s to %d", key, above);
  return lt_fail(LT_ERR_CONFIG,
                 "%s: %s (%d) must be a multiple of parallel.tp (%d): each tensor-parallel rank "
                 "holds 1/tp of the %s; %s, or change parallel.tp",
                 src, key, size, tp, what, fix);
}

int lt_config_validate_tp(const lt_model_config *m, int tp, const char *src) {
  if (tp <= 1) return LT_OK;
  LT_TRY(tp_divides(m->n_heads, "model.n_heads", tp, "query heads", false, src));
  // Megatron-LM requires the same: every rank keeps its query heads' own key/value heads, so no
  // key/value head is copied across ranks (whose gradients would then need a sum of their own).
  if (m->n_kv_heads)
    LT_TRY(tp_divides(m->n_kv_heads, "model.n_kv_heads", tp, "key/value heads", false, src));
  if (uses_ffn(m, "swiglu"))
    LT_TRY(tp_divides(m->ffn_dim, "model.ffn_dim", tp, "feed-forward's hidden units", false, src));
  if (uses_ffn(m, "moe")) {
    const bool own = m->moe.ffn_dim > 0;
    LT_TRY(tp_divides(own ? m->moe.ffn_dim : m->ffn_dim,
                      own ? "model.moe.ffn_dim" : "model.ffn_dim", tp, "experts' hidden units",
                      false, src));
  }
  // Padding rows are never targets: only their logits cost a little.
  return tp_divides(m->vocab_size, "model.vocab_size", tp, "vocabulary (padding rows are fine)",
                    true, src);
}

int lt_config_validate_moe(const lt_moe_config *moe, const char *src) {
  LT_CHECK(moe->n_experts >= 1, LT_ERR_CONFIG, "%s: model.moe.n_experts (%d) must be at least 1",
           src, moe->n_experts);
  LT_CHECK(moe->top_k >= 1 && moe->top_k <= moe->n_experts, LT_ERR_CONFIG,
           "%s: model.moe.top_k (%d) must be between 1 and model.moe.n_experts (%d): lower top_k "
           "or add experts",
           src, moe->top_k, moe->n_experts);
  // One renormalized gate is always 1: the router would get no gradient from the loss at all.
  LT_CHECK(!(moe->renormalize && moe->top_k == 1), LT_ERR_CONFIG,
           "%s: model.moe.renormalize with model.moe.top_k 1 makes every gate weight 1, so the "
           "router never learns from the loss: set model.moe.renormalize to false (Switch) or "
           "top_k to 2 or more",
           src);
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

// A balanced split for messages: the first n_layers % stages stages take one layer more.
static void suggest_split(int stages, int n_layers, char *out, size_t cap) {
  out[0] = '\0';
  for (int s = 0; s < stages && strlen(out) + 12 < cap; s++)
    snprintf(out + strlen(out), cap - strlen(out), "%s%d", s ? "," : "",
             n_layers / stages + (s < n_layers % stages));
}

int lt_config_stage_layers(const char *pp_layers, int stages, int n_layers, int stage, int *begin,
                           int *end) {
  LT_CHECK(stages <= n_layers, LT_ERR_CONFIG,
           "parallel.pp (%d) exceeds model.n_layers (%d): every pipeline stage needs a layer; "
           "lower parallel.pp",
           stages, n_layers);
  char example[64];
  suggest_split(stages, n_layers, example, sizeof example);
  if (!pp_layers[0]) {
    LT_CHECK(n_layers % stages == 0, LT_ERR_CONFIG,
             "parallel.pp (%d) does not divide model.n_layers (%d): set parallel.pp_layers to "
             "each stage's layer count (e.g. \"%s\"), or a parallel.pp that divides it",
             stages, n_layers, example);
    *begin = stage * (n_layers / stages), *end = *begin + n_layers / stages;
    return LT_OK;
  }
  int count = 0, sum = 0;
  for (const char *p = pp_layers; *p;) {
    char *stop;
    long layers = strtol(p, &stop, 10);
    LT_CHECK(stop != p && layers >= 1 && layers <= 4096 && (*stop == ',' || *stop == '\0'),
             LT_ERR_CONFIG,
             "parallel.pp_layers \"%s\" must list each stage's layer count, each at least 1 "
             "(e.g. \"%s\")",
             pp_layers, example);
    if (count == stage) *begin = sum, *end = sum + (int)layers;
    count++, sum += (int)layers;
    p = *stop ? stop + 1 : stop;
    LT_CHECK(*stop == '\0' || *p, LT_ERR_CONFIG,
             "parallel.pp_layers \"%s\" ends with a comma: list each stage's layer count",
             pp_layers);
  }
  LT_CHECK(count == stages && sum == n_layers, LT_ERR_CONFIG,
           "parallel.pp_layers \"%s\" lists %d stage%s of %d layers in all, but parallel.pp is %d "
           "and model.n_layers %d: list parallel.pp counts that sum to model.n_layers (e.g. "
           "\"%s\")",
           pp_layers, count, count == 1 ? "" : "s", sum, stages, n_layers, example);
  return LT_OK;
}
