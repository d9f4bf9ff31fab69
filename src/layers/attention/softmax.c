// x -> [q|k] = x [Wq; Wk]^T, v = x Wv^T -> RoPE(q), RoPE(k) -> o = attention(q, k, v) ->
// out = o Wo^T, with o's heads weighted per token before Wo when a MoH router is given (o -> g o).
//
// Tensor parallel (Megatron-LM): rank r holds query heads [r Hq/tp, (r+1) Hq/tp) and their own
// key/value heads [r Hkv/tp, ...) (grouped-query heads stay grouped: a rank's query heads read only
// its key/value heads), so Wq, Wk, Wv are column-parallel (their rows) and Wo row-parallel (its
// columns); the outputs' partial sums are reduced over tp, and so are the input gradients.
#include "layers/attention/softmax.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/error.h"
#include "layers/attention/moh.h"
#include "layers/linear.h"
#include "parallel/tp.h"
#include "parallel/ring.h"

typedef struct softmax_attention {
  lt_layer base;
  lt_tp tp;
  int n_heads, n_kv_heads, head_dim; // this rank's heads under tensor parallelism
  float rope_theta;
  lt_attn_sparsity sparsity;
  lt_head_router *router;  // NULL: every head at weight 1
  lt_ring_attention *ring; // context parallel: ring attention over the cp group; NULL: one rank
  lt_param wqkv[3];        // wq (Hq*hd, D), wk (Hkv*hd, D), wv (Hkv*hd, D), adjacent in memory
  lt_param wo;             // (D, Hq*hd)
  // saved for backward
  lt_tensor q, k, v; // (B, T, H, hd), q and k rotated
  lt_tensor o;       // (B, T, Hq, hd)
  lt_tensor lse;     // (B, Hq, T) f32
  lt_tensor gates;   // (B*T, Hq) f32, the router's head weights (held by the router)
  // scratch
  lt_tensor qk;                    // (B*T, Hq + Hkv, hd), forward only
  lt_tensor dqkv, d_o, dq, dk, dv; // backward only
  lt_tensor delta;                 // (B, Hq, T) f32
  lt_tensor o_gated, d_gated;      // (B, T, Hq, hd): with a router, g * o and its gradient
  lt_tensor dgates;                // (B*T, Hq) f32
} softmax_attention;

static lt_attn_spec attention_spec(const softmax_attention *s, const lt_batch *batch) {
  lt_tensor pos = lt_reshape(batch->pos, 2, LT_SHAPE(batch->B, batch->T));
  lt_attn_spec spec = {.scale = 1.0f / sqrtf((float)s->head_dim),
                       .causal = true,
                       .q_pos = pos,
                       .k_pos = pos,
                       .sparse = s->sparsity};
  if (batch->doc.data)
    spec.q_doc = spec.k_doc = lt_reshape(batch->doc, 2, LT_SHAPE(batch->B, batch->T));
  // A head a token's router left out gets o = 0: the CPU kernel skips its rows; the CUDA kernels
  // skip a tile of queries only when the head is off for all of them (kernels.h).
  if (s->router) spec.head_gates = s->gates;
  return spec;
}

static int plan(lt_layer *self, const lt_plan *p) {
  softmax_attention *s = (softmax_attention *)self;
  const int64_t B = p->B, T = p->T, hd = s->head_dim, hq = s->n_heads, hkv = s->n_kv_heads;
  const lt_dtype dt = p->act_dtype;
  LT_TRY(lt_arena_alloc4(p->acts, &s->q, dt, B, T, hq, hd));
  LT_TRY(lt_arena_alloc4(p->acts, &s->k, dt, B, T, hkv, hd));
  LT_TRY(lt_arena_alloc4(p->acts, &s->v, dt, B, T, hkv, hd));
  LT_TRY(lt_arena_alloc4(p->acts, &s->o, dt, B, T, hq, hd));
  LT_TRY(lt_arena_alloc3(p->acts, &s->lse, LT_F32, B, hq, T));
  // The weighted heads are rebuilt in backward rather than kept: one multiply per element.
  size_t mark = lt_arena_mark(p->scratch);
  if (s->router) LT_TRY(lt_arena_alloc4(p->scratch, &s->o_gated, dt, B, T, hq, hd));
  // The forward's and the backward's other temporaries never live at once: both start here.
  size_t passes = lt_arena_mark(p->scratch);
  LT_TRY(lt_arena_alloc3(p->scratch, &s->qk, dt, B * T, hq + hkv, hd));
  lt_arena_release(p->scratch, passes);
  LT_TRY(lt_arena_alloc3(p->scratch, &s->dqkv, dt, B * T, hq + 2 * hkv, hd));
  LT_TRY(lt_arena_alloc4(p->scratch, &s->d_o, dt, B, T, hq, hd));
  // dq in f32: key blocks (and, with ring attention, steps) add into it one after another.
  LT_TRY(lt_arena_alloc4(p->scratch, &s->dq, LT_F32, B, T, hq, hd));
  LT_TRY(lt_arena_alloc4(p->scratch, &s->dk, dt, B, T, hkv, hd));
  LT_TRY(lt_arena_alloc4(p->scratch, &s->dv, dt, B, T, hkv, hd));
  LT_TRY(lt_arena_alloc3(p->scratch, &s->delta, LT_F32, B, hq, T));
  if (s->router) {
    LT_TRY(lt_arena_alloc4(p->scratch, &s->d_gated, dt, B, T, hq, hd));
    LT_TRY(lt_arena_alloc2(p->scratch, &s->dgates, LT_F32, B * T, hq));
    // The router's memory comes after all of this layer's, so the two never overlap.
    LT_TRY(lt_head_router_plan(s->router, p, &s->gates));
  }
  LT_TRY(lt_ring_attention_plan(s->ring, p, (int)hq, (int)hkv, (int)hd)); // after all the rest
  lt_arena_release(p->scratch, mark);
  return LT_OK;
}

static int forward(lt_layer *self, lt_ctx *ctx, lt_tensor out, lt_tensor x, const lt_batch *batch) {
  softmax_attention *s = (softmax_attention *)self;
  // q, k (rotated by RoPE) and v into their own tensors: one kernel on a Hopper GPU, else the q|k
  // matmul into qk, v's own, and RoPE's pass.
  lt_tensor wqkv;
  LT_TRY(lt_fused_view(&wqkv, s->wqkv, 3, LT_PARAM_VALUE));
  LT_TRY(lt_qkv_rope_fwd(ctx, s->q, s->k, s->v, s->qk, x, wqkv, batch->pos, s->rope_theta));
  if (s->router) LT_TRY(lt_head_router_forward(s->router, ctx, x, batch));
  lt_attn_spec spec = attention_spec(s, batch);
  // The weighted heads come from the attention's epilogue on one rank, or after the ring's merge.
  if (s->router) spec.gated_out = s->o_gated;
  LT_TRY(lt_ring_attention_forward(s->ring, ctx, s->o, s->lse, s->q, s->k, s->v, &spec));
  LT_TRY(lt_linear_forward(ctx, out, s->router ? s->o_gated : s->o, s->wo.value));
  return lt_tp_reduce_output(&s->tp, out);
}

static int backward(lt_layer *self, lt_ctx *ctx, lt_tensor dx, lt_tensor dout, lt_tensor x,
                    const lt_batch *batch) {
  softmax_attention *s = (softmax_attention *)self;
  if (s->router) {
    LT_TRY(lt_head_gate_fwd(ctx, s->o_gated, s->o, s->gates));
    LT_TRY(lt_linear_backward(ctx, s->d_gated, s->wo.grad, dout, s->o_gated, s->wo.value));
    // d_o, the gates' gradient and delta from one read of d_gated and o.
    LT_TRY(lt_head_gate_bwd_delta(ctx, s->d_o, s->dgates, s->delta, s->d_gated, s->o, s->gates));
  } else {
    LT_TRY(lt_linear_backward(ctx, s->d_o, s->wo.grad, dout, s->o, s->wo.value));
    LT_TRY(lt_attn_bwd_delta(ctx, s->delta, s->d_o, s->o));
  }
  LT_TRY(lt_zero(ctx, s->dq)); // the backward adds into dq, and writes dk and dv
  lt_attn_spec spec = attention_spec(s, batch);
  // dq, dk, dv joined into dqkv (on one GPU, dk and dv are written straight into it).
  LT_TRY(lt_ring_attention_backward_rope(s->ring, ctx, s->dqkv, s->dq, s->dk, s->dv, s->d_o, s->q,
                                         s->k, s->v, s->lse, s->delta, &spec, batch->pos,
                                         s->rope_theta));
  lt_tensor wqkv, dwqkv;
  LT_TRY(lt_fused_view(&wqkv, s->wqkv, 3, LT_PARAM_VALUE));
  LT_TRY(lt_fused_view(&dwqkv, s->wqkv, 3, LT_PARAM_GRAD));
  LT_TRY(lt_linear_backward(ctx, dx, dwqkv, s->dqkv, x, wqkv));
  LT_TRY(lt_tp_reduce_input_grad(&s->tp, dx));
  // The router is whole on every rank: its share of dx is added once, after the sum over tp.
  if (s->router) LT_TRY(lt_head_router_backward(s->router, ctx, dx, s->dgates, x, batch));
  return LT_OK;
}

static void destroy(lt_layer *self) {
  softmax_attention *s = (softmax_attention *)self;
  if (s->router) lt_head_router_destroy(s->router);
  lt_ring_attention_destroy(s->ring);
  free(self);
}

// One implementation, three kinds: the name is what tells them apart in messages.
#define ATTENTION_OPS(name)                                                                        \
  { .kind = name, .plan = plan, .forward = forward, .backward = backward, .destroy = destroy }
static const lt_layer_ops softmax_ops = ATTENTION_OPS("softmax");
static const lt_layer_ops sparse_ops = ATTENTION_OPS("sparse");
static const lt_layer_ops moh_ops = ATTENTION_OPS("moh");

int lt_softmax_attention_create(lt_layer **out, lt_params *params, const char *prefix,
                                const lt_model_config *cfg, lt_init_stds stds) {
  const lt_softmax_options plain = {0};
  return lt_softmax_attention_create_with(out, params, prefix, cfg, &plain, stds);
}

int lt_sparse_attention_create(lt_layer **out, lt_params *params, const char *prefix,
                               const lt_model_config *cfg, lt_init_stds stds) {
  const lt_sparse_config *c = &cfg->sparse;
  const lt_softmax_options sparse = {.sparsity = {.window = c->window,
                                                  .sinks = c->sinks,
                                                  .block_size = c->block_size,
                                                  .local_blocks = c->local_blocks,
                                                  .stride = c->stride,
                                                  .global_blocks = c->global_blocks}};
  return lt_softmax_attention_create_with(out, params, prefix, cfg, &sparse, stds);
}

int lt_softmax_attention_create_with(lt_layer **out, lt_params *params, const char *prefix,
                                     const lt_model_config *cfg, const lt_softmax_options *options,
                                     lt_init_stds stds) {
  softmax_attention *s = calloc(1, sizeof *s);
  if (!s && options->router) lt_head_router_destroy(options->router);
  LT_CHECK(s, LT_ERR_MEMORY, "out of memory creating %s", prefix);
  *out = &s->base;
  const lt_attn_sparsity *p = &options->sparsity;
  const bool sparse = p->window || p->sinks || p->local_blocks || p->stride || p->global_blocks;
  s->base.ops = options->router ? &moh_ops : sparse ? &sparse_ops : &softmax_ops;
  s->sparsity = options->sparsity;
  s->router = options->router;
  s->tp = lt_tp_of(params);
  const int heads = cfg->n_heads, kv_heads = cfg->n_kv_heads ? cfg->n_kv_heads : cfg->n_heads;
  s->n_heads = (int)lt_tp_count(&s->tp, heads);
  s->n_kv_heads = (int)lt_tp_count(&s->tp, kv_heads);
  s->head_dim = cfg->head_dim ? cfg->head_dim : cfg->d_model / cfg->n_heads;
  s->rope_theta = (float)cfg->rope_theta;
  LT_TRY(lt_ring_attention_create(&s->ring, params->mesh));
  const int64_t d = cfg->d_model, hd = s->head_dim;
  const int64_t rows[3] = {heads * hd, kv_heads * hd, kv_heads * hd};
  const char *names[3] = {"wq", "wk", "wv"};
  char name[96];
  for (int i = 0; i < 3; i++) {
    snprintf(name, sizeof name, "%s.%s", prefix, names[i]);
    const lt_param_spec spec = {
        .init = LT_INIT_NORMAL, .std = stds.in, .group = LT_GROUP_ATTN, .fused_with_prev = i > 0};
    LT_TRY(lt_params_add(params, &s->wqkv[i], name, 2, LT_SHAPE(rows[i], d),
                         lt_tp_shard(spec, &s->tp, 0, rows[i])));
  }
  snprintf(name, sizeof name, "%s.wo", prefix);
  const lt_param_spec spec = {.init = LT_INIT_NORMAL, .std = stds.out, .group = LT_GROUP_ATTN};
  return lt_params_add(params, &s->wo, name, 2, LT_SHAPE(d, rows[0]),
                       lt_tp_shard(spec, &s->tp, 1, rows[0]));
}
