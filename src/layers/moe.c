// x -> router logits x Wr^T -> softmax, top-k -> dispatch plan (capacity) -> gather into expert
// order -> per-expert SwiGLU as grouped GEMMs -> gate-weighted combine back to token order.
//
// Auxiliary losses, per micro-batch of N tokens with k choices each (Switch Transformer eq. 4,
// counting all k choices as Megatron-LM does; ST-MoE eq. 5):
//   load balance  aux_loss_coef * E * sum_i f_i P_i,  f_i = (choices routed to i) / (N k),
//                                                     P_i = mean over tokens of probs[:, i]
//   z-loss        z_loss_coef * mean over tokens of logsumexp(logits)^2
// f_i is piecewise constant, so the balance loss's gradient flows through P_i alone.
//
// Tensor parallel: each expert's hidden units are split over the tp ranks as a dense SwiGLU's are
// (w_gate, w_up column-parallel, w_down row-parallel; Megatron-core's expert tensor parallelism),
// and so are the shared experts'. The router is whole on every rank: the input is the same
// everywhere, so every rank routes every token alike, dispatches the same rows and computes the
// same auxiliary losses (counted once, as the single process does). An expert's output is then a
// partial sum over its hidden units, combined by the same gates; the layer's output is reduced
// over tp once, the shared experts' partial sums included. Backward, the gates' gradient
// dgate = dout . ye is summed over tp before the router's backward, and the router's share of dx
// is added after the sum of the experts' shares.
//
// Under context parallelism the micro-batch's tokens are spread over the cp ranks: the counts and
// sums above are taken over all of them (as Megatron-LM all-reduces the tokens per expert over its
// sequence-parallel group), so the losses are the whole sequence's, as on one rank.
#include "layers/moe.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/device.h"
#include "core/error.h"
#include "layers/linear.h"
#include "layers/mlp.h"
#include "parallel/tp.h"
#include "parallel/context.h"

typedef struct moe_layer {
  lt_layer base;
  lt_tp tp;
  int n_experts, top_k;
  int64_t d_model, ffn_dim; // ffn_dim: this rank's hidden units of each expert
  lt_moe_config cfg;
  lt_param router;   // (E, D)
  lt_param *gate_up; // 2E: expert e's w_gate (F, D) then w_up (F, D), all adjacent: (E, 2F, D)
  lt_param *down;    // E: w_down (D, F), adjacent: (E, D, F)
  lt_layer *shared;  // the shared experts' dense SwiGLU, or NULL
  int64_t capacity;  // rows per expert, 0 for no limit (from the planned micro-batch)
  // saved for backward
  lt_tensor probs, lse, gate, expert;             // (N, E), (N), (N, k), (N, k)
  lt_tensor slot_row, row_token, offsets, counts; // the dispatch plan
  lt_tensor gate_up_out, ye;                      // (max rows, 2F), (max rows, D)
  // the dispatch plan on the host: rows[e] = offsets[e] (it sizes the GEMMs), counts
  int64_t *rows;
  int32_t *host_offsets, *host_counts;
  float *host_prob_sum, *host_balance;
  // Over the micro-batch's tokens on every cp rank, for the auxiliary losses: choices routed to
  // each expert (E), probability sums (E), tokens, and the sum of lse^2. Set by the forward.
  float *totals;
  const lt_group *cp; // context parallel, or NULL
  // scratch
  lt_tensor logits, prob_sum, xe, h, shared_out;             // forward
  lt_tensor dye, dh, dgate_up, dxe, dgate, dlogits, balance; // backward (and shared_out as dx)
} moe_layer;

static int plan(lt_layer *self, const lt_plan *p) {
  moe_layer *m = (moe_layer *)self;
  const int64_t n = p->B * p->T, e = m->n_experts, k = m->top_k, d = m->d_model, f = m->ffn_dim;
  const lt_dtype dt = p->act_dtype;
  m->capacity = 0;
  if (m->cfg.capacity_factor > 0)
    m->capacity = (int64_t)ceil(m->cfg.capacity_factor * (double)(n * k) / (double)e);
  const int64_t max_rows = m->capacity > 0 && m->capacity * e < n * k ? m->capacity * e : n * k;
  LT_TRY(lt_arena_alloc2(p->acts, &m->probs, LT_F32, n, e));
  LT_TRY(lt_arena_alloc1(p->acts, &m->lse, LT_F32, n));
  LT_TRY(lt_arena_alloc2(p->acts, &m->gate, LT_F32, n, k));
  LT_TRY(lt_arena_alloc2(p->acts, &m->expert, LT_I32, n, k));
  LT_TRY(lt_arena_alloc2(p->acts, &m->slot_row, LT_I32, n, k));
  LT_TRY(lt_arena_alloc1(p->acts, &m->row_token, LT_I32, n * k));
  LT_TRY(lt_arena_alloc1(p->acts, &m->offsets, LT_I32, e + 1));
  LT_TRY(lt_arena_alloc1(p->acts, &m->counts, LT_I32, e));
  LT_TRY(lt_arena_alloc2(p->acts, &m->gate_up_out, dt, max_rows, 2 * f));
  LT_TRY(lt_arena_alloc2(p->acts, &m->ye, dt, max_rows, d));
  // Scratch: what both passes use, then the forward's, then the backward's (a superset in size
  // of the forward's) from the same mark; the shared experts' scratch goes above, in use at once.
  size_t mark = lt_arena_mark(p->scratch);
  LT_TRY(lt_arena_alloc2(p->scratch, &m->shared_out, dt, n, d));
  LT_TRY(lt_arena_alloc2(p->scratch, &m->xe, dt, max_rows, d));
  LT_TRY(lt_arena_alloc2(p->scratch, &m->h, dt, max_rows, f));
  size_t phase = lt_arena_mark(p->scratch);
  LT_TRY(lt_arena_alloc2(p->scratch, &m->logits, LT_F32, n, e));
  LT_TRY(lt_arena_alloc1(p->scratch, &m->prob_sum, LT_F32, e));
  lt_arena_release(p->scratch, phase);
  // The activations' dtype: the router's backward matmuls read it beside x (bf16 on CUDA).
  LT_TRY(lt_arena_alloc2(p->scratch, &m->dlogits, dt, n, e));
  LT_TRY(lt_arena_alloc1(p->scratch, &m->balance, LT_F32, e));
  LT_TRY(lt_arena_alloc2(p->scratch, &m->dgate, LT_F32, n, k));
  LT_TRY(lt_arena_alloc2(p->scratch, &m->dye, dt, max_rows, d));
  LT_TRY(lt_arena_alloc2(p->scratch, &m->dh, dt, max_rows, f));
  LT_TRY(lt_arena_alloc2(p->scratch, &m->dgate_up, dt, max_rows, 2 * f));
  LT_TRY(lt_arena_alloc2(p->scratch, &m->dxe, dt, max_rows, d));
  if (m->shared) LT_TRY(m->shared->ops->plan(m->shared, p));
  lt_arena_release(p->scratch, mark);
  return LT_OK;
}

// The experts' weights (value or gradient) as one (E, 2F, D) and one (E, D, F) tensor.
static int expert_weights(const moe_layer *m, lt_param_part part, lt_tensor *gate_up,
                          lt_tensor *down) {
  const int64_t e = m->n_experts, d = m->d_model, f = m->ffn_dim;
  LT_TRY(lt_fused_view(gate_up, m->gate_up, 2 * m->n_experts, part));
  LT_TRY(lt_fused_view(down, m->down, m->n_experts, part));
  *gate_up = lt_reshape(*gate_up, 3, LT_SHAPE(e, 2 * f, d));
  *down = lt_reshape(*down, 3, LT_SHAPE(e, d, f));
  return LT_OK;
}

// Reads the dispatch plan's offsets and counts to the host (the GEMMs are sized from there).
static int read_plan(moe_layer *m) {
  LT_TRY(lt_tensor_to_host(m->host_offsets, m->offsets));
  LT_TRY(lt_tensor_to_host(m->host_counts, m->counts));
  for (int e = 0; e <= m->n_experts; e++) m->rows[e] = m->host_offsets[e];
  return LT_OK;
}

// m->totals from this rank's routing (and, under context parallelism, every cp rank's).
static int route_totals(moe_layer *m, lt_ctx *ctx) {
  const int e = m->n_experts;
  LT_TRY(lt_tensor_to_host(m->host_prob_sum, m->prob_sum));
  double lse_squares;
  LT_TRY(lt_sum_squares(ctx, &lse_squares, m->lse));
  float *t = m->totals;
  for (int i = 0; i < e; i++) t[i] = (float)m->host_counts[i], t[e + i] = m->host_prob_sum[i];
  t[2 * e] = (float)m->probs.shape[0], t[2 * e + 1] = (float)lse_squares;
  return m->cp ? lt_all_reduce_sum(m->cp, lt_view1(t, LT_F32, LT_CPU, 2 * e + 2)) : LT_OK;
}

static void add_aux_losses(const moe_layer *m, lt_aux_loss *aux) {
  const int e = m->n_experts;
  const double k = m->top_k, n = m->totals[2 * e];
  const float *t = m->totals;
  double balance = 0.0;
  for (int i = 0; i < e; i++) balance += (t[i] / (n * k)) * (t[e + i] / n);
  aux->sum += m->cfg.aux_loss_coef * e * balance + m->cfg.z_loss_coef * t[2 * e + 1] / n;
}

static int forward(lt_layer *self, lt_ctx *ctx, lt_tensor out, lt_tensor x, const lt_batch *batch) {
  moe_layer *m = (moe_layer *)self;
  x = lt_flatten2(x), out = lt_flatten2(out);
  LT_TRY(lt_linear_forward(ctx, m->logits, x, m->router.value));
  LT_TRY(lt_moe_route(ctx, m->gate, m->expert, m->probs, m->lse, m->prob_sum, m->logits,
                      m->cfg.renormalize));
  LT_TRY(lt_moe_dispatch_plan(ctx, m->slot_row, m->row_token, m->offsets, m->counts, m->expert,
                              m->capacity));
  LT_TRY(read_plan(m));
  const int64_t rows = m->rows[m->n_experts];
  lt_tensor xe = lt_rows(m->xe, 0, rows), h = lt_rows(m->h, 0, rows);
  lt_tensor gate_up = lt_rows(m->gate_up_out, 0, rows), ye = lt_rows(m->ye, 0, rows);
  lt_tensor w_gate_up, w_down;
  LT_TRY(expert_weights(m, LT_PARAM_VALUE, &w_gate_up, &w_down));
  LT_TRY(lt_moe_dispatch(ctx, xe, x, m->row_token));
  LT_TRY(lt_grouped_matmul(ctx, gate_up, xe, w_gate_up, true, m->rows));
  LT_TRY(lt_swiglu_fwd(ctx, h, gate_up));
  LT_TRY(lt_grouped_matmul(ctx, ye, h, w_down, true, m->rows));
  LT_TRY(lt_moe_combine(ctx, out, ye, m->gate, m->slot_row));
  if (m->shared) {
    LT_TRY(m->shared->ops->forward(m->shared, ctx, m->shared_out, x, batch));
    LT_TRY(lt_add(ctx, out, out, m->shared_out));
  }
  LT_TRY(lt_tp_reduce_output(&m->tp, out));
  LT_TRY(route_totals(m, ctx));
  if (batch->aux) add_aux_losses(m, batch->aux);
  return LT_OK;
}

static int backward(lt_layer *self, lt_ctx *ctx, lt_tensor dx, lt_tensor dout, lt_tensor x,
                    const lt_batch *batch) {
  moe_layer *m = (moe_layer *)self;
  x = lt_flatten2(x), dx = lt_flatten2(dx), dout = lt_flatten2(dout);
  // The host copies of the plan and of the routing totals are the last forward's: with several
  // micro-batches in flight (the pipeline's 1F1B) that may be another one's, so this one's are made
  // again from its activations.
  LT_TRY(read_plan(m));
  LT_TRY(route_totals(m, ctx));
  const int64_t rows = m->rows[m->n_experts];
  lt_tensor xe = lt_rows(m->xe, 0, rows), h = lt_rows(m->h, 0, rows);
  lt_tensor gate_up = lt_rows(m->gate_up_out, 0, rows), ye = lt_rows(m->ye, 0, rows);
  lt_tensor dye = lt_rows(m->dye, 0, rows), dh = lt_rows(m->dh, 0, rows);
  lt_tensor dgate_up = lt_rows(m->dgate_up, 0, rows), dxe = lt_rows(m->dxe, 0, rows);
  lt_tensor w_gate_up, w_down, dw_gate_up, dw_down;
  LT_TRY(expert_weights(m, LT_PARAM_VALUE, &w_gate_up, &w_down));
  LT_TRY(expert_weights(m, LT_PARAM_GRAD, &dw_gate_up, &dw_down));
  // The experts, in reverse; h (by swiglu_bwd, beside dgate_up) and xe are made again rather than
  // kept.
  LT_TRY(lt_moe_combine_bwd(ctx, dye, m->dgate, dout, ye, m->gate, m->slot_row));
  LT_TRY(lt_grouped_matmul(ctx, dh, dye, w_down, false, m->rows));
  LT_TRY(lt_swiglu_bwd(ctx, dgate_up, h, dh, gate_up));
  LT_TRY(lt_grouped_matmul_wgrad(ctx, dw_down, dye, h, m->rows));
  LT_TRY(lt_moe_dispatch(ctx, xe, x, m->row_token));
  LT_TRY(lt_grouped_matmul(ctx, dxe, dgate_up, w_gate_up, false, m->rows));
  LT_TRY(lt_grouped_matmul_wgrad(ctx, dw_gate_up, dgate_up, xe, m->rows));
  LT_TRY(lt_moe_dispatch_bwd(ctx, dx, dxe, m->slot_row));
  if (m->shared) {
    LT_TRY(m->shared->ops->backward(m->shared, ctx, m->shared_out, dout, x, batch));
    LT_TRY(lt_add(ctx, dx, dx, m->shared_out));
  }
  LT_TRY(lt_tp_reduce_input_grad(&m->tp, dx));
  // ye was this rank's partial sum over the hidden units, and so is dgate = dout . ye.
  LT_TRY(lt_tp_all_reduce_sum(&m->tp, m->dgate));
  // The router: the gates' gradient plus the auxiliary losses', scaled as the objective counts
  // them (none when nothing collects them).
  const float aux_scale = batch->aux ? batch->aux->grad_scale : 0.0f;
  const double n = m->totals[2 * m->n_experts], e = m->n_experts, k = m->top_k;
  for (int i = 0; i < m->n_experts; i++) // d/dprobs[t, i] of coef * E * sum_i f_i P_i
    m->host_balance[i] =
        (float)(aux_scale * m->cfg.aux_loss_coef * e * (m->totals[i] / (n * k)) / n);
  LT_TRY(lt_tensor_from_host(m->balance, m->host_balance));
  const float z_scale = (float)(aux_scale * m->cfg.z_loss_coef * 2.0 / n);
  LT_TRY(lt_moe_route_bwd(ctx, m->dlogits, m->dgate, m->gate, m->expert, m->probs, m->lse,
                          m->balance, z_scale, m->cfg.renormalize));
  LT_TRY(lt_matmul(ctx, m->router.grad, m->dlogits, true, x, false, 1.0f, 1.0f));
  return lt_matmul(ctx, dx, m->dlogits, false, m->router.value, false, 1.0f, 1.0f);
}

static void destroy(lt_layer *self) {
  moe_layer *m = (moe_layer *)self;
  if (m->shared) m->shared->ops->destroy(m->shared);
  free(m->gate_up), free(m->down), free(m->rows), free(m->host_offsets), free(m->host_counts);
  free(m->host_prob_sum), free(m->host_balance), free(m->totals);
  free(m);
}

static const lt_layer_ops moe_ops = {
    .kind = "moe", .plan = plan, .forward = forward, .backward = backward, .destroy = destroy};

// An expert's (rows, cols) weight, its hidden units (dim 0 of w_gate and w_up, dim 1 of w_down)
// split over tp.
static int add_weight(lt_params *params, const lt_tp *tp, lt_param *bind, const char *prefix,
                      int expert, const char *what, int64_t rows, int64_t cols, int split_dim,
                      float std, bool fused) {
  char name[96];
  snprintf(name, sizeof name, "%s.experts.%d.%s", prefix, expert, what);
  const lt_param_spec spec = {
      .init = LT_INIT_NORMAL, .std = std, .group = LT_GROUP_FFN, .fused_with_prev = fused};
  return lt_params_add(params, bind, name, 2, LT_SHAPE(rows, cols),
                       lt_tp_shard(spec, tp, split_dim, split_dim == 0 ? rows : cols));
}

int lt_moe_create(lt_layer **out, lt_params *params, const char *prefix, const lt_model_config *cfg,
                  lt_init_stds stds) {
  *out = NULL;
  LT_TRY(lt_config_validate_moe(&cfg->moe, prefix));
  moe_layer *m = calloc(1, sizeof *m);
  LT_CHECK(m, LT_ERR_MEMORY, "out of memory creating %s", prefix);
  *out = &m->base;
  m->base.ops = &moe_ops;
  m->cfg = cfg->moe;
  m->tp = lt_tp_of(params);
  const int e = m->n_experts = cfg->moe.n_experts;
  m->top_k = cfg->moe.top_k;
  m->d_model = cfg->d_model;
  const int64_t d = m->d_model, f = cfg->moe.ffn_dim ? cfg->moe.ffn_dim : cfg->ffn_dim;
  m->ffn_dim = lt_tp_count(&m->tp, f);
  m->gate_up = calloc(2 * (size_t)e, sizeof *m->gate_up);
  m->down = calloc((size_t)e, sizeof *m->down);
  m->rows = calloc((size_t)e + 1, sizeof *m->rows);
  m->host_offsets = calloc((size_t)e + 1, sizeof *m->host_offsets);
  m->host_counts = calloc((size_t)e, sizeof *m->host_counts);
  m->host_prob_sum = calloc((size_t)e, sizeof *m->host_prob_sum);
  m->host_balance = calloc((size_t)e, sizeof *m->host_balance);
  m->totals = calloc(2 * (size_t)e + 2, sizeof *m->totals);
  m->cp = lt_cp_group(params->mesh);
  LT_CHECK(m->gate_up && m->down && m->rows && m->host_offsets && m->host_counts &&
               m->host_prob_sum && m->host_balance && m->totals,
           LT_ERR_MEMORY, "out of memory creating %s", prefix);
  char name[96];
  snprintf(name, sizeof name, "%s.router", prefix);
  LT_TRY(lt_params_add(
      params, &m->router, name, 2, LT_SHAPE(e, d),
      (lt_param_spec){.init = LT_INIT_NORMAL, .std = stds.in, .group = LT_GROUP_FFN}));
  // All experts' gate|up weights adjacent, then all down weights: each set is one grouped GEMM.
  for (int i = 0; i < e; i++) {
    LT_TRY(add_weight(params, &m->tp, &m->gate_up[2 * i], prefix, i, "w_gate", f, d, 0, stds.in,
                      i > 0));
    LT_TRY(add_weight(params, &m->tp, &m->gate_up[2 * i + 1], prefix, i, "w_up", f, d, 0, stds.in,
                      true));
  }
  for (int i = 0; i < e; i++)
    LT_TRY(add_weight(params, &m->tp, &m->down[i], prefix, i, "w_down", d, f, 1, stds.out, i > 0));
  if (cfg->moe.n_shared_experts == 0) return LT_OK;
  snprintf(name, sizeof name, "%s.shared", prefix);
  // Its partial sums join the routed experts' before the layer's one reduction over tp.
  return lt_swiglu_mlp_create_partial(&m->shared, params, name, d, cfg->moe.n_shared_experts * f,
                                      stds);
}
