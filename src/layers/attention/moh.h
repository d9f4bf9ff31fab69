// Mixture-of-head attention (MoH: Jin, Zhu, Yuan and Yan 2024, arXiv 2410.11842): the heads of
// softmax attention as experts. Shared heads are always on; each token's router picks the top-K
// of the routed heads; every head's output is weighted per token before the output projection
// (the weighted sum of eq. 3), and a load-balance loss (eq. 6) keeps the routed heads in use.
//
// The router is the part softmax attention (softmax.c) calls: forward gives the per-token head
// weights, backward takes their gradient and adds the router's share of dx.
#ifndef LT_ATTENTION_MOH_H
#define LT_ATTENTION_MOH_H

#include "core/config.h"
#include "layers/layer.h"

typedef struct lt_head_router lt_head_router;

// Kind moh: softmax attention whose heads a router weights, from cfg->moh.
int lt_moh_attention_create(lt_layer **out, lt_params *params, const char *prefix,
                            const lt_model_config *cfg, lt_init_stds stds);

// `gates` receives the view of the head weights (N, n_heads) f32 that each forward fills (under
// tensor parallelism, of this rank's heads): a planned view, so it follows the model to another
// micro-batch's activations (pipelining).
int lt_head_router_plan(lt_head_router *router, const lt_plan *plan, lt_tensor *gates);
// The head weights for input x (N, D) into the planned gates; adds balance_coef times the
// load-balance loss to batch->aux->sum when batch->aux is not NULL.
int lt_head_router_forward(lt_head_router *router, lt_ctx *ctx, lt_tensor x, const lt_batch *batch);
// Given dgates (N, n_heads), the gradient of the loss by the (this rank's) head weights: the
// router's weight gradients (+=) and dx += the router's share, the same on every tp rank. The balance loss's gradient is scaled by
// batch->aux->grad_scale (none without batch->aux).
int lt_head_router_backward(lt_head_router *router, lt_ctx *ctx, lt_tensor dx, lt_tensor dgates,
                            lt_tensor x, const lt_batch *batch);
void lt_head_router_destroy(lt_head_router *router);

#endif
