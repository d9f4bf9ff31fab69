#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "core/error.h"
#include "core/log.h"
#include "layers/registry.h"
#include "parallel/mesh.h"

static lt_init_stds init_stds(const lt_model_config *cfg) {
  const double d = cfg->d_model, layers = cfg->n_layers;
  switch ((lt_init_scheme)cfg->init) {
  case LT_INIT_LLAMA:
    return (lt_init_stds){(float)cfg->init_std, (float)cfg->init_std};
  case LT_INIT_SCALED:
    return (lt_init_stds){(float)cfg->init_std, (float)(cfg->init_std / sqrt(2.0 * layers))};
  case LT_INIT_NEOX:
    return (lt_init_stds){(float)sqrt(2.0 / (5.0 * d)), (float)(2.0 / (layers * sqrt(d)))};
  }
  return (lt_init_stds){(float)cfg->init_std, (float)cfg->init_std};
}

double lt_model_rope_theta(const lt_model_config *cfg) {
  // NTK-aware scaling (bloc97 2023; Peng et al., YaRN, eq. 16): b' = b * s^(d / (d - 2)) stretches
  // the lowest frequency by s while the highest stays put, so a model trained at context L reads
  // positions up to s * L with a short fine-tune.
  const double s = cfg->rope_ntk_factor > 0 ? cfg->rope_ntk_factor : 1.0;
  const double d = cfg->head_dim ? cfg->head_dim : (double)cfg->d_model / cfg->n_heads;
  return s == 1.0 ? cfg->rope_theta : cfg->rope_theta * pow(s, d / (d - 2.0));
}

// The parameter `name` is this pipeline stage's copy of one that another stage holds too.
static void mark_pipeline_copy(lt_params *params, const char *name) {
  for (int i = 0; i < params->count; i++)
    if (strcmp(params->info[i].name, name) == 0) params->info[i].spec.pipeline_copy = true;
}

// Which blocks this process holds, and whether it holds the embedding and the head.
static int place_stage(lt_model *model, const lt_mesh *mesh) {
  const int stages = mesh ? mesh->size[LT_AXIS_PP] : 1, stage = mesh ? mesh->coord[LT_AXIS_PP] : 0;
  model->first_stage = stage == 0;
  model->last_stage = stage == stages - 1;
  return lt_config_stage_layers(mesh ? mesh->parallel.pp_layers : "", stages, model->cfg.n_layers,
                                stage, &model->layer_begin, &model->layer_end);
}

// model->n_params: the whole model's parameters, as the logs, checkpoints and MFU report them in
// any layout. A tensor-parallel rank holds a slice of each split tensor and registers its whole
// (logical) shape; each stage holds its own layers (a tied embedding's copy is the first
// stage's tensor again): the logical sizes of this rank's tensors, summed over the pipeline.
static int count_parameters(lt_model *model, const lt_mesh *mesh) {
  double n = 0;
  for (int i = 0; i < model->params.count; i++) {
    const lt_param_info *p = &model->params.info[i];
    if (p->spec.pipeline_copy) continue;
    double numel = 1;
    for (int d = 0; d < p->ndim; d++) numel *= (double)p->logical_shape[d];
    n += numel;
  }
  if (mesh) LT_TRY(lt_all_reduce_sum_f64(&mesh->axis[LT_AXIS_PP], &n, 1));
  model->n_params = (int64_t)n;
  return LT_OK;
}

int lt_model_create(lt_model *model, const lt_model_config *cfg, lt_device device,
                    const lt_mesh *mesh) {
  *model = (lt_model){.cfg = *cfg, .device = device, .n_slots = 1};
  lt_model_config *c = &model->cfg;
  // Configs built in code (tests) may leave the kinds empty: the defaults.
  if (!c->attention[0]) strcpy(c->attention, "softmax");
  if (!c->ffn[0]) strcpy(c->ffn, "swiglu");
  if (!c->n_kv_heads) c->n_kv_heads = c->n_heads;
  if (!c->head_dim) c->head_dim = c->d_model / c->n_heads;
  // Every attention kind reads cfg->rope_theta: fold the context-extension factor into it once.
  c->rope_theta = lt_model_rope_theta(c);
  c->rope_ntk_factor = 1.0;
  // Tensor parallelism splits heads, hidden units and the vocabulary evenly over its ranks.
  if (mesh) LT_TRY(lt_config_validate_tp(c, mesh->size[LT_AXIS_TP], "model"));
  lt_init_stds stds = init_stds(c);
  LT_TRY(place_stage(model, mesh));
  lt_params_begin(&model->params, mesh);
  // A tied LM head on the last pipeline stage reads its own copy of the embedding (Megatron's
  // word_embeddings_for_head): the same logical parameter, initialised alike by name, its
  // gradient summed with the first stage's so both copies stay equal (lt_pipeline_train_step).
  const bool tied_copy = c->tie_embeddings && model->last_stage && !model->first_stage;
  if (model->first_stage || tied_copy)
    LT_TRY(lt_embedding_create(&model->embed, &model->params, c->vocab_size, c->d_model, stds.in));
  if (tied_copy) mark_pipeline_copy(&model->params, "embed");
  model->blocks = calloc((size_t)c->n_layers, sizeof *model->blocks);
  LT_CHECK(model->blocks, LT_ERR_MEMORY, "out of memory creating %d blocks", c->n_layers);
  const float eps = (float)c->norm_eps;
  for (int l = model->layer_begin; l < model->layer_end; l++) {
    lt_block *b = &model->blocks[l];
    const char *mixer_kind, *ffn_kind;
    LT_TRY(lt_config_layer_kind(c->attention, lt_attention_kinds, c->n_layers, l, "model.attention",
                                &mixer_kind));
    LT_TRY(lt_config_layer_kind(c->ffn, lt_ffn_kinds, c->n_layers, l, "model.ffn", &ffn_kind));
    char name[96];
    b->first_param = model->params.count;
    snprintf(name, sizeof name, "layers.%d.attn_norm", l);
    LT_TRY(lt_rmsnorm_create(&b->attn_norm, &model->params, name, c->d_model, eps));
    snprintf(name, sizeof name, "layers.%d.attn", l);
    LT_TRY(lt_mixer_create(&b->mixer, mixer_kind, &model->params, name, c, l, stds));
    snprintf(name, sizeof name, "layers.%d.ffn_norm", l);
    LT_TRY(lt_rmsnorm_create(&b->ffn_norm, &model->params, name, c->d_model, eps));
    snprintf(name, sizeof name, "layers.%d.ffn", l);
    LT_TRY(lt_ffn_create(&b->ffn, ffn_kind, &model->params, name, c, l, stds));
  }
  if (model->last_stage) {
    model->head_first_param = model->params.count;
    LT_TRY(lt_rmsnorm_create(&model->final_norm, &model->params, "final_norm", c->d_model, eps));
    LT_TRY(lt_lm_head_create(&model->head, &model->params,
                             c->tie_embeddings ? &model->embed.weight : NULL, c->vocab_size,
                             c->d_model, stds.in));
  }
  LT_TRY(lt_params_allocate(&model->params, device));
  return count_parameters(model, mesh);
}

static void free_extra_slots(lt_model *model) {
  for (int i = 0; i + 1 < model->n_slots; i++) lt_arena_destroy(&model->extra_slots[i]);
  free(model->extra_slots);
  model->extra_slots = NULL;
  model->n_slots = 1, model->slot = 0;
}

void lt_model_destroy(lt_model *model) {
  if (model->blocks)
    for (int l = 0; l < model->cfg.n_layers; l++) {
      lt_block *b = &model->blocks[l];
      if (b->mixer) b->mixer->ops->destroy(b->mixer);
      if (b->ffn) b->ffn->ops->destroy(b->ffn);
    }
  free(model->blocks);
  free_extra_slots(model);
  lt_arena_destroy(&model->acts);
  lt_arena_destroy(&model->scratch);
  lt_params_free(&model->params);
  *model = (lt_model){0};
}

// The views and sublayer memory of this stage's blocks, from p->acts. With recomputation only one
// block's are alive at a time, so every block shares one region.
static int plan_blocks(lt_model *model, const lt_plan *p) {
  const int64_t n = p->B * p->T, d = model->cfg.d_model;
  const lt_dtype dt = p->act_dtype;
  lt_arena *acts = p->acts;
  size_t shared = lt_arena_mark(acts), end = shared;
  for (int l = model->layer_begin; l < model->layer_end; l++) {
    lt_block *b = &model->blocks[l];
    if (model->recompute) lt_arena_release(acts, shared);
    LT_TRY(lt_arena_alloc2(acts, &b->attn_in, dt, n, d));
    LT_TRY(lt_arena_alloc1(acts, &b->attn_rstd, LT_F32, n));
    LT_TRY(lt_arena_alloc2(acts, &b->x_mid, dt, n, d));
    LT_TRY(lt_arena_alloc2(acts, &b->ffn_in, dt, n, d));
    LT_TRY(lt_arena_alloc1(acts, &b->ffn_rstd, LT_F32, n));
    LT_TRY(b->mixer->ops->plan(b->mixer, p));
    LT_TRY(b->ffn->ops->plan(b->ffn, p));
    if (lt_arena_mark(acts) > end) end = lt_arena_mark(acts);
  }
  lt_arena_release(acts, end);
  return LT_OK;
}

// Hands out every view the step needs. Run once on measuring arenas, once on real ones, and again
// whenever the pipeline moves to another micro-batch's slot.
//
// p->acts takes what a micro-batch's backward reads from its forward, and `work` what lives within
// one pass (the residual's gradient, a sublayer's branch). When they are one arena the first part
// comes first: its `saved_bytes` are one slot, and the rest is shared by every slot.
static int plan_views(lt_model *model, const lt_plan *p, lt_arena *work) {
  const int64_t n = p->B * p->T, d = model->cfg.d_model;
  const lt_dtype dt = p->act_dtype;
  lt_arena *acts = p->acts;
  for (int l = model->layer_begin; l < model->layer_end; l++)
    LT_TRY(lt_arena_alloc2(acts, &model->blocks[l].x_in, dt, n, d));
  LT_TRY(lt_arena_alloc2(acts, &model->x_out, dt, n, d));
  if (model->last_stage) {
    LT_TRY(lt_arena_alloc1(acts, &model->final_rstd, LT_F32, n));
    LT_TRY(lt_lm_head_plan(&model->head, p));
  }
  // With recomputation the blocks' saved activations are rebuilt from each block's input just
  // before its backward: they belong to the pass, not to the micro-batch.
  lt_plan pass = *p;
  pass.acts = work;
  if (!model->recompute) LT_TRY(plan_blocks(model, p));
  model->saved_bytes = lt_arena_mark(acts);
  lt_tensor *pass_views[] = {&model->final_in, &model->branch, &model->d_resid, &model->d_branch,
                             &model->d_final};
  for (size_t i = 0; i < sizeof pass_views / sizeof pass_views[0]; i++)
    LT_TRY(lt_arena_alloc2(work, pass_views[i], dt, n, d));
  return model->recompute ? plan_blocks(model, &pass) : LT_OK;
}

static lt_plan model_plan(const lt_model *model, lt_arena *acts, lt_arena *scratch) {
  const lt_dtype dt = model->device == LT_CUDA ? LT_BF16 : LT_F32;
  return (lt_plan){.B = model->B, .T = model->T, .act_dtype = dt, .acts = acts, .scratch = scratch};
}

int lt_model_plan(lt_model *model, int64_t B, int64_t T, bool recompute) {
  if (model->B == B && model->T == T && model->recompute == recompute && model->acts.base)
    return LT_OK;
  free_extra_slots(model);
  lt_arena_destroy(&model->acts);
  lt_arena_destroy(&model->scratch);
  model->B = B, model->T = T, model->recompute = recompute;
  lt_arena acts, scratch;
  lt_arena_measure(&acts, model->device, "activations");
  lt_arena_measure(&scratch, model->device, "scratch");
  lt_plan p = model_plan(model, &acts, &scratch);
  LT_TRY(plan_views(model, &p, &acts));
  LT_TRY(lt_arena_create(&model->acts, model->device, acts.peak, "activations"));
  LT_TRY(lt_arena_create(&model->scratch, model->device, scratch.peak, "scratch"));
  p.acts = &model->acts, p.scratch = &model->scratch;
  LT_TRY(plan_views(model, &p, &model->acts));
  char a[32], s[32];
  lt_debug("activation memory for B=%lld T=%lld: %s saved, %s scratch", (long long)B, (long long)T,
           lt_format_bytes((double)acts.peak, a, sizeof a),
           lt_format_bytes((double)scratch.peak, s, sizeof s));
  return LT_OK;
}

int lt_model_plan_slots(lt_model *model, int n_slots) {
  LT_ASSERT(n_slots >= 1 && (model->acts.base || n_slots == 1));
  if (n_slots == model->n_slots) return LT_OK;
  LT_TRY(lt_model_use_slot(model, 0));
  free_extra_slots(model);
  model->extra_slots = calloc((size_t)n_slots - 1, sizeof *model->extra_slots);
  LT_CHECK(model->extra_slots || n_slots == 1, LT_ERR_MEMORY, "out of memory for %d slots",
           n_slots);
  for (int i = 0; i + 1 < n_slots; i++) {
    LT_TRY(lt_arena_create(&model->extra_slots[i], model->device, model->saved_bytes,
                           "activations of a micro-batch in flight"));
    model->n_slots = i + 2;
  }
  return LT_OK;
}

int lt_model_use_slot(lt_model *model, int slot) {
  LT_ASSERT(slot >= 0 && slot < model->n_slots);
  if (slot == model->slot) return LT_OK;
  // Planning again hands out the same offsets, so the pass's memory stays where it was and only
  // the saved views move to the slot's arena.
  lt_arena *acts = slot == 0 ? &model->acts : &model->extra_slots[slot - 1];
  model->acts.used = slot == 0 ? 0 : model->saved_bytes;
  acts->used = 0;
  lt_plan p = model_plan(model, acts, &model->scratch);
  LT_TRY(plan_views(model, &p, &model->acts));
  model->slot = slot;
  return LT_OK;
}

static int check_planned(const lt_model *model, const lt_batch *batch) {
  if (model->B == batch->B && model->T == batch->T && model->acts.base) return LT_OK;
  return lt_fail_internal(__FILE__, __LINE__, "batch (%lld, %lld) was not planned (%lld, %lld)",
                          (long long)batch->B, (long long)batch->T, (long long)model->B,
                          (long long)model->T);
}

// The block up to its last residual add: branch then holds the FFN's output, which the caller
// adds to x_mid. normed: the previous block's last add already wrote attn_in and attn_rstd.
static int block_forward(lt_ctx *ctx, lt_block *b, lt_tensor branch, const lt_batch *batch,
                         bool normed) {
  if (!normed) LT_TRY(lt_rmsnorm_forward(ctx, &b->attn_norm, b->attn_in, b->attn_rstd, b->x_in));
  LT_TRY(b->mixer->ops->forward(b->mixer, ctx, branch, b->attn_in, batch));
  LT_TRY(
      lt_add_rmsnorm_forward(ctx, &b->ffn_norm, b->x_mid, b->ffn_in, b->ffn_rstd, b->x_in, branch));
  return b->ffn->ops->forward(b->ffn, ctx, branch, b->ffn_in, batch);
}

// d_resid holds d(loss)/d(block output) on entry and d(loss)/d(block input) on return.
static int block_backward(lt_ctx *ctx, lt_block *b, lt_tensor d_resid, lt_tensor d_branch,
                          const lt_batch *batch) {
  LT_TRY(b->ffn->ops->backward(b->ffn, ctx, d_branch, d_resid, b->ffn_in, batch));
  LT_TRY(lt_rmsnorm_backward(ctx, &b->ffn_norm, d_resid, d_branch, b->x_mid, b->ffn_rstd));
  LT_TRY(b->mixer->ops->backward(b->mixer, ctx, d_branch, d_resid, b->attn_in, batch));
  return lt_rmsnorm_backward(ctx, &b->attn_norm, d_resid, d_branch, b->x_in, b->attn_rstd);
}

// Each block's last residual add is fused with the norm that reads its sum next (the next block's
// attn_norm, or the final norm): one pass that writes the sum and its normalised copy, exactly as
// an add and a norm would (lt_add_rmsnorm_fwd rounds the sum before normalising it).
static int blocks_forward(lt_model *model, lt_ctx *ctx, const lt_batch *batch) {
  LT_TRY(check_planned(model, batch));
  const int begin = model->layer_begin, end = model->layer_end;
  if (model->first_stage)
    LT_TRY(lt_embedding_forward(ctx, &model->embed, model->blocks[begin].x_in, batch->tokens));
  for (int l = begin; l < end; l++) {
    lt_block *b = &model->blocks[l];
    LT_TRY(block_forward(ctx, b, model->branch, batch, l > begin));
    if (l + 1 < end) {
      lt_block *next = &model->blocks[l + 1];
      LT_TRY(lt_add_rmsnorm_forward(ctx, &next->attn_norm, next->x_in, next->attn_in,
                                    next->attn_rstd, b->x_mid, model->branch));
    } else if (model->last_stage) {
      LT_TRY(lt_add_rmsnorm_forward(ctx, &model->final_norm, model->x_out, model->final_in,
                                    model->final_rstd, b->x_mid, model->branch));
    } else {
      LT_TRY(lt_add(ctx, model->x_out, b->x_mid, model->branch));
    }
  }
  return LT_OK;
}

int lt_model_forward(lt_model *model, lt_ctx *ctx, const lt_batch *batch, bool want_grad,
                     float grad_scale, double *loss_sum) {
  LT_TRY(blocks_forward(model, ctx, batch));
  *loss_sum = 0.0;
  if (!model->last_stage) return LT_OK; // the loss is the last stage's
  lt_tensor d_final = model->d_final;
  if (!want_grad) d_final.data = NULL;
  LT_TRY(lt_lm_head_loss(&model->head, ctx, model->final_in, batch->targets, grad_scale, d_final));
  // Summed where the losses are: on a GPU the host then waits for the queue once and reads one
  // number, instead of copying the per-token losses and summing them while the GPU idles.
  return lt_sum(ctx, loss_sum, model->head.losses);
}

static int grads_ready(const lt_model *model, int first) {
  return model->grads_ready ? model->grads_ready(model->grads_ready_arg, first) : LT_OK;
}

int lt_model_backward(lt_model *model, lt_ctx *ctx, const lt_batch *batch) {
  LT_TRY(check_planned(model, batch));
  if (model->last_stage) {
    LT_TRY(lt_zero(ctx, model->d_resid));
    LT_TRY(lt_rmsnorm_backward(ctx, &model->final_norm, model->d_resid, model->d_final,
                               model->x_out, model->final_rstd));
    // The untied LM head's gradient came with the loss; a tied one is the embedding's (index 0).
    LT_TRY(grads_ready(model, model->head_first_param));
  }
  // A recomputed forward must not add its auxiliary losses a second time.
  lt_batch replay = *batch;
  replay.aux = NULL;
  for (int l = model->layer_end - 1; l >= model->layer_begin; l--) {
    lt_block *b = &model->blocks[l];
    // The replay stops before the block's last add: its sum is the next block's input, kept.
    if (model->recompute) LT_TRY(block_forward(ctx, b, model->branch, &replay, false));
    LT_TRY(block_backward(ctx, b, model->d_resid, model->d_branch, batch));
    LT_TRY(grads_ready(model, b->first_param));
  }
  if (!model->first_stage) return LT_OK;
  LT_TRY(lt_embedding_backward(ctx, &model->embed, model->d_resid, batch->tokens));
  return grads_ready(model, 0);
}

int lt_model_logits(lt_model *model, lt_ctx *ctx, const lt_batch *batch, lt_tensor logits) {
  LT_CHECK(model->first_stage && model->last_stage, LT_ERR_INTERNAL,
           "logits need the whole model in one process, not one pipeline stage");
  LT_TRY(blocks_forward(model, ctx, batch));
  return lt_lm_head_logits(&model->head, ctx, logits, model->final_in);
}

int64_t lt_model_n_params(const lt_model *model) {
  return model->n_params;
}

// Attention's FLOPs per token of layer l's forward (the step's is 3 times that, PaLM appendix B),
// Hq heads of width hd. Softmax kinds: QK^T and PV over the keys a query sees, 2 * 2 * keys * Hq *
// hd, with T / 2 keys on average under the causal mask, or the window's (sparse, window < T), and
// only the heads a token uses (MoH: shared + top_k). Linear kinds, chunked (Lightning Attention-2):
// QK^T and PV within the chunk (C / 2 keys on average) plus reading and updating the hd x hd state.
static double attention_flops(const lt_model_config *c, int l, int64_t T) {
  const char *kind = "softmax";
  lt_config_layer_kind(c->attention, lt_attention_kinds, c->n_layers, l, "model.attention", &kind);
  double heads = c->n_heads, keys = 0.5 * (double)T;
  const double hd = c->head_dim;
  if (strcmp(kind, "linear") == 0 || strcmp(kind, "lightning") == 0) {
    const double chunk =
        strcmp(kind, "lightning") == 0 ? c->lightning.block_size : c->linear.chunk_size;
    return 2.0 * 2.0 * heads * hd * (0.5 * chunk + hd);
  }
  if (strcmp(kind, "sparse") == 0 && c->sparse.window > 0 && c->sparse.window < T)
    keys = c->sparse.window;
  if (strcmp(kind, "moh") == 0) heads = c->moh.shared_heads + c->moh.top_k;
  return 2.0 * 2.0 * keys * heads * hd;
}

double lt_model_train_flops_per_token(const lt_model *model, int64_t T) {
  const lt_model_config *c = &model->cfg;
  // Matmul FLOPs: 6 per weight a token passes through (forward 2, backward 4), embedding lookup
  // excluded, and in a MoE layer only its top_k experts' weights (3 matrices of d x ffn each).
  double weights = (double)(lt_model_n_params(model) -
                            (int64_t)c->vocab_size * c->d_model * (c->tie_embeddings ? 0 : 1));
  double attn = 0;
  const double expert = 3.0 * c->d_model * (c->moe.ffn_dim ? c->moe.ffn_dim : c->ffn_dim);
  for (int l = 0; l < c->n_layers; l++) {
    attn += 3.0 * attention_flops(c, l, T);
    const char *ffn = "swiglu";
    lt_config_layer_kind(c->ffn, lt_ffn_kinds, c->n_layers, l, "model.ffn", &ffn);
    if (strcmp(ffn, "moe") == 0) weights -= (double)(c->moe.n_experts - c->moe.top_k) * expert;
  }
  const double matmul = 6.0 * weights;
  return matmul + attn;
}
