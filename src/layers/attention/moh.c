// The MoH router: per token, logits z = x [W_shared | W_routed | W_mix]^T (one matmul), then the
// head weights of eqs. 4-5 and the load-balance loss of eq. 6 (kernels.h: lt_moh_route_fwd).
//
// Tensor parallel: the attention's heads are split over the tp ranks, but a token's top-k and its
// normalisations span all routed heads, so the router stays whole on every rank (its weights are
// replicated, like a norm's): every rank computes the same weights for all heads and keeps its
// heads' columns. Backward, the ranks' columns of the weights' gradient are gathered, and each
// rank runs the same router backward: the same weight gradients everywhere, and a balance loss
// (and its gradient) equal to the single process's, counted once.
#include "layers/attention/moh.h"

#include <stdio.h>
#include <stdlib.h>

#include "core/device.h"
#include "core/error.h"
#include "layers/attention/softmax.h"
#include "layers/linear.h"
#include "parallel/tp.h"
#include "parallel/context.h"

struct lt_head_router {
  lt_tp tp;
  int n_shared, n_routed, top_k, n_logits;
  float balance_coef;
  const lt_group *cp; // context parallel: the sequence's other tokens are on these ranks; or NULL
  // w_shared (S, D) when S >= 2 (one shared head needs no weighing), w_routed (R, D), w_mix (2, D)
  // when S >= 1: adjacent, read as one (n_logits, D) matrix.
  lt_param weights[3];
  int n_weights;
  // saved for backward
  lt_tensor gates;       // (N, S + R) f32
  lt_tensor probs;       // (N, n_logits) f32
  lt_tensor topk;        // (N, K) i32
  lt_tensor load;        // (2, R) f32: f_i and P_i
  lt_tensor gates_local; // (N, (S + R) / tp) f32: this tensor-parallel rank's heads' columns
  // scratch
  lt_tensor logits, dlogits; // (N, n_logits)
  lt_tensor dgates_all;      // (N, S + R) f32, gathered from the tensor-parallel ranks
  float host_load[2 * LT_MOH_MAX_HEADS];
};

int lt_head_router_plan(lt_head_router *r, const lt_plan *p, lt_tensor *gates) {
  const int64_t n = p->B * p->T;
  LT_TRY(lt_arena_alloc2(p->acts, &r->gates, LT_F32, n, r->n_shared + r->n_routed));
  LT_TRY(lt_arena_alloc2(p->acts, &r->probs, LT_F32, n, r->n_logits));
  LT_TRY(lt_arena_alloc2(p->acts, &r->topk, LT_I32, n, r->top_k));
  LT_TRY(lt_arena_alloc2(p->acts, &r->load, LT_F32, 2, r->n_routed));
  const int64_t heads = r->n_shared + r->n_routed;
  if (r->tp.size > 1)
    LT_TRY(lt_arena_alloc2(p->acts, &r->gates_local, LT_F32, n, lt_tp_count(&r->tp, heads)));
  *gates = r->tp.size > 1 ? r->gates_local : r->gates; // the layer's heads' weights
  size_t mark = lt_arena_mark(p->scratch);
  LT_TRY(lt_arena_alloc2(p->scratch, &r->logits, p->act_dtype, n, r->n_logits));
  LT_TRY(lt_arena_alloc2(p->scratch, &r->dlogits, p->act_dtype, n, r->n_logits));
  if (r->tp.size > 1) LT_TRY(lt_arena_alloc2(p->scratch, &r->dgates_all, LT_F32, n, heads));
  lt_arena_release(p->scratch, mark);
  return LT_OK;
}

int lt_head_router_forward(lt_head_router *r, lt_ctx *ctx, lt_tensor x, const lt_batch *batch) {
  lt_tensor w;
  LT_TRY(lt_fused_view(&w, r->weights, r->n_weights, LT_PARAM_VALUE));
  LT_TRY(lt_linear_forward(ctx, r->logits, x, w));
  LT_TRY(lt_moh_route_fwd(ctx, r->gates, r->probs, r->topk, r->load, r->logits, r->n_shared));
  // Under context parallelism the balance loss is over the whole sequence, as on one rank: the
  // loads f_i and P_i are means over tokens, and every cp rank holds as many.
  LT_TRY(lt_cp_mean(r->cp, ctx, r->load));
  // Under tensor parallelism the layer reads this rank's heads' columns (the planned view).
  if (r->tp.size > 1) LT_TRY(lt_tp_split_last_dim(&r->tp, r->gates_local, r->gates));
  if (!batch->aux || r->balance_coef == 0.0f) return LT_OK;
  // L_b = R sum_i f_i P_i (K when balanced), from 2R numbers brought to the host.
  LT_TRY(lt_tensor_to_host(r->host_load, r->load));
  double balance = 0.0;
  for (int i = 0; i < r->n_routed; i++)
    balance += (double)r->host_load[i] * r->host_load[r->n_routed + i];
  batch->aux->sum += r->balance_coef * r->n_routed * balance;
  return LT_OK;
}

int lt_head_router_backward(lt_head_router *r, lt_ctx *ctx, lt_tensor dx, lt_tensor dgates,
                            lt_tensor x, const lt_batch *batch) {
  // The kernel divides by this rank's token count; the loss's mean is over the cp ranks' tokens.
  const float cp_ranks = r->cp ? (float)r->cp->size : 1.0f;
  const float balance_grad =
      batch->aux ? batch->aux->grad_scale * r->balance_coef / cp_ranks : 0.0f;
  if (r->tp.size > 1) {
    LT_TRY(lt_tp_gather_last_dim(&r->tp, r->dgates_all, dgates));
    dgates = r->dgates_all;
  }
  LT_TRY(lt_moh_route_bwd(ctx, r->dlogits, dgates, r->probs, r->topk, r->load, r->n_shared,
                          balance_grad));
  lt_tensor w, dw, x2 = lt_flatten2(x), dx2 = lt_flatten2(dx);
  LT_TRY(lt_fused_view(&w, r->weights, r->n_weights, LT_PARAM_VALUE));
  LT_TRY(lt_fused_view(&dw, r->weights, r->n_weights, LT_PARAM_GRAD));
  LT_TRY(lt_matmul(ctx, dw, r->dlogits, true, x2, false, 1.0f, 1.0f));
  return lt_matmul(ctx, dx2, r->dlogits, false, w, false, 1.0f, 1.0f);
}

void lt_head_router_destroy(lt_head_router *r) {
  free(r);
}

int lt_moh_attention_create(lt_layer **out, lt_params *params, const char *prefix,
                            const lt_model_config *cfg, lt_init_stds stds) {
  const int n_shared = cfg->moh.shared_heads, n_routed = cfg->n_heads - n_shared;
  // lt_config_validate explains these to the user; a config built in code must keep them too.
  LT_ASSERT(n_shared >= 0 && n_routed >= 1 && n_routed <= LT_MOH_MAX_HEADS);
  LT_ASSERT(cfg->moh.top_k >= 1 && cfg->moh.top_k <= n_routed);
  lt_head_router *r = calloc(1, sizeof *r);
  LT_CHECK(r, LT_ERR_MEMORY, "out of memory creating %s", prefix);
  *r = (lt_head_router){.tp = lt_tp_of(params),
                        .n_shared = n_shared,
                        .n_routed = n_routed,
                        .top_k = cfg->moh.top_k,
                        .balance_coef = (float)cfg->moh.balance_coef,
                        .cp = lt_cp_group(params->mesh)};
  // The attention layer owns the router from here, and frees it with itself.
  const lt_softmax_options options = {.router = r};
  LT_TRY(lt_softmax_attention_create_with(out, params, prefix, cfg, &options, stds));
  const struct {
    const char *name;
    int rows;
  } parts[3] = {{"router_shared", n_shared >= 2 ? n_shared : 0},
                {"router_routed", n_routed},
                {"router_mix", n_shared >= 1 ? 2 : 0}};
  for (int i = 0; i < 3; i++) {
    if (parts[i].rows == 0) continue;
    char name[96];
    snprintf(name, sizeof name, "%s.%s", prefix, parts[i].name);
    LT_TRY(lt_params_add(params, &r->weights[r->n_weights], name, 2,
                         LT_SHAPE(parts[i].rows, cfg->d_model),
                         (lt_param_spec){.init = LT_INIT_NORMAL,
                                         .std = stds.in,
                                         .group = LT_GROUP_ATTN,
                                         .fused_with_prev = r->n_weights > 0}));
    r->n_weights++;
    r->n_logits += parts[i].rows;
  }
  return LT_OK;
}
