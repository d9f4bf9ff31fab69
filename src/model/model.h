// The decoder-only transformer: embedding, n_layers pre-norm blocks (token mixer + feed-forward,
// each with a residual), final RMSNorm and the LM head with its loss.
#ifndef LT_MODEL_H
#define LT_MODEL_H

#include "core/config.h"
#include "layers/embedding.h"
#include "layers/layer.h"
#include "layers/lm_head.h"
#include "layers/norm.h"

typedef struct lt_block {
  int first_param; // index of its first parameter (the table holds them in forward order)
  lt_rmsnorm attn_norm, ffn_norm;
  lt_layer *mixer, *ffn;
  lt_tensor x_in;                    // (N, D) block input; kept even with recomputation
  lt_tensor attn_in, attn_rstd;      // what the block saves for backward; with recomputation
  lt_tensor x_mid, ffn_in, ffn_rstd; // these are shared by all blocks and rebuilt in backward
} lt_block;

// Data parallelism's hook (parallel/dp.h): lt_model_backward calls it as gradients become final,
// with the lowest parameter index whose gradient is now final (every later one is final too), so
// their reduction can start while the earlier layers' backward runs.
typedef int (*lt_grads_ready_fn)(void *arg, int first);

typedef struct lt_model {
  lt_model_config cfg;
  lt_device device;
  lt_params params;
  lt_embedding embed;
  lt_block *blocks; // n_layers of them; a pipeline stage builds [layer_begin, layer_end) only
  lt_rmsnorm final_norm;
  lt_lm_head head;
  // Pipeline parallelism (mesh pp > 1): this process is one stage, holding a contiguous range of
  // blocks (parallel.pp_layers); the first stage also holds the embedding, the last the final
  // norm, the LM head and the loss. Without it, one stage holds everything.
  int layer_begin, layer_end;
  bool first_stage, last_stage;
  int head_first_param;          // the final norm's index; the untied LM head follows it
  int64_t n_params;              // the whole model's, in every layout (lt_model_n_params)
  lt_grads_ready_fn grads_ready; // NULL: not called
  void *grads_ready_arg;
  // Step memory, planned for one (B, T) by lt_model_plan.
  int64_t B, T;
  bool recompute;
  lt_arena acts, scratch;
  // Several micro-batches in flight (the pipeline's 1F1B schedule): each slot holds one
  // micro-batch's saved activations. Slot 0 is the front `saved_bytes` of acts, the others are
  // arenas of their own; what lives only within one pass stays in acts, shared by all slots.
  lt_arena *extra_slots; // n_slots - 1
  int n_slots, slot;
  size_t saved_bytes;
  // A stage's input arrives in blocks[layer_begin].x_in, its output leaves from x_out, and in the
  // backward the gradient of its output arrives in d_resid, which returns the input's.
  lt_tensor x_out; // (N, D) residual stream after the last block
  lt_tensor final_in, final_rstd;
  lt_tensor branch;                     // (N, D) a sublayer's output before the residual add
  lt_tensor d_resid, d_branch, d_final; // (N, D) gradients
} lt_model;

// RoPE's base after context extension: rope_theta * rope_ntk_factor^(d/(d-2)), d the head width.
// lt_model_create stores it in model->cfg.rope_theta, which is what the layers read.
double lt_model_rope_theta(const lt_model_config *cfg);
// Registers and allocates the parameters (not initialised: lt_params_init, or load them).
// `mesh` says how the model is split over processes (tensor, pipeline parallel); NULL for one.
// The stages of a pipeline call it together (they add up the parameter count).
int lt_model_create(lt_model *model, const lt_model_config *cfg, lt_device device,
                    const lt_mesh *mesh);
void lt_model_destroy(lt_model *model);
// Sizes and allocates activation memory for micro-batches of B sequences of T tokens. Cheap to
// call again with the same shape.
int lt_model_plan(lt_model *model, int64_t B, int64_t T, bool recompute);
// Room for `n_slots` micro-batches' saved activations at once (after lt_model_plan, which resets
// it to one); cheap to call again with the same count.
int lt_model_plan_slots(lt_model *model, int n_slots);
// Points every saved-activation view at slot `slot`: a micro-batch's forward and backward must
// run on the same slot, and no other micro-batch may use it in between.
int lt_model_use_slot(lt_model *model, int slot);
// Forward and loss. Each token's loss goes to model->head.losses and their sum to *loss_sum.
// With want_grad, the LM head's backward runs fused with the loss, scaled by grad_scale (usually
// 1 / the number of target tokens in the whole optimizer step), and lt_model_backward may follow.
// A pipeline stage runs its own part: it reads its input from blocks[layer_begin].x_in unless it
// is the first, and leaves its output in x_out (and *loss_sum 0) unless it is the last.
int lt_model_forward(lt_model *model, lt_ctx *ctx, const lt_batch *batch, bool want_grad,
                     float grad_scale, double *loss_sum);
// Backward through the blocks and the embedding; parameter gradients accumulate. A pipeline stage
// before the last starts from the gradient of its output in d_resid; one after the first leaves
// the gradient of its input there.
int lt_model_backward(lt_model *model, lt_ctx *ctx, const lt_batch *batch);
// Forward to full logits (B*T, vocab) f32, for evaluation and tests; the whole model only.
int lt_model_logits(lt_model *model, lt_ctx *ctx, const lt_batch *batch, lt_tensor logits);
// Parameters and FLOPs per token of a training step (6 per weight a token uses, a MoE layer's
// top_k experts only, plus attention's: 12 L T d / 2 for causal softmax layers, less for windows,
// MoH and the linear kinds; model.c), of the whole model: the same numbers whatever its split over
// tensor-parallel ranks and stages.
int64_t lt_model_n_params(const lt_model *model);
double lt_model_train_flops_per_token(const lt_model *model, int64_t T);

#endif
