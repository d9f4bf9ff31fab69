#include "layers/attention/linear_mixer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "core/error.h"
#include "layers/linear.h"
#include "parallel/tp.h"
#include "parallel/lasp2.h"

// Tensor parallel (Megatron-LM): rank r holds heads [r H/tp, (r+1) H/tp) with the decays of those
// global head indices, the rows of Wq, Wk, Wv and Wu for them (column-parallel) and the matching
// columns of Wo (row-parallel). The RMS normalisation spans every head of a token: its two
// per-token statistics are summed over tp (kernels.h, lt_linear_out_rms_stat), one number per
// token each way instead of the heads' outputs.
typedef struct linear_mixer {
  lt_layer base;
  lt_layer_ops ops; // the shared functions under this kind's name
  lt_linear_mixer_options opt;
  lt_tp tp;
  int n_heads, n_kv_heads, head_dim, v_width; // this rank's heads; v_width: head_dim (+ 1 for the
                                              // denominator)
  int64_t row_width;                          // every rank's heads: what the RMSNorm spans
  float *log_decay_host;                      // (n_heads) or NULL
  lt_tensor log_decay;                        // the same on the compute device, owned here
  lt_param wqkv[3]; // wq (Hq*hd, D), wk (Hkv*hd, D), wv (Hkv*hd, D), adjacent in memory
  lt_param wu;      // (Hq*hd, D), with a gate
  lt_param wo;      // (D, Hq*hd)
  lt_lasp2 *lasp;   // context parallel: LASP-2 over the cp group; NULL: one rank
  // saved for backward
  lt_tensor qkv;      // (B*T, Hq + 2 Hkv, hd) before the feature map
  lt_tensor o;        // (B, T, Hq, v_width) attention output
  lt_tensor u;        // (B*T, Hq*hd) gate input
  lt_tensor rstd;     // (B*T) f32, RMSNorm's
  lt_tensor row_stat; // (B*T) f32: split over tp, the mean square of the whole row (else unused)
  // scratch
  lt_tensor grad_stat;  // (B*T) f32: split over tp, the backward's mean of da * a
  lt_tensor q, k, v, y; // q, k, v after the feature map; y = norm(o) g(u)
  lt_tensor dy, d_o, dq, dk, dv, du, dqkv; // backward only
} linear_mixer;

double lt_alibi_slope(int head, int n_heads) {
  int pow2 = 1;
  while (pow2 * 2 <= n_heads) pow2 *= 2;
  if (head < pow2) return pow(2.0, -8.0 * (head + 1) / pow2);
  // The rest: slopes 0, 2, 4, ... of the sequence for 2 * pow2 heads, 2^(-8(2i+1)/(2 pow2)).
  return pow(2.0, -4.0 * (2 * (head - pow2) + 1) / pow2);
}

double lt_retnet_decay_rate(int head) {
  return -log(1.0 - pow(2.0, -5.0 - head));
}

static lt_linear_attn_spec spec_of(const linear_mixer *m, const lt_batch *batch) {
  lt_linear_attn_spec spec = {.block = m->opt.block};
  if (m->log_decay_host) spec.log_decay = m->log_decay;
  if (batch->doc.data) spec.doc = lt_reshape(batch->doc, 2, LT_SHAPE(batch->B, batch->T));
  return spec;
}

// The decays live on the compute device for the kernels; the arenas cannot hold them (their
// regions are shared between layers), so the layer owns a small buffer of its own.
static int place_decay(linear_mixer *m, lt_device device) {
  if (!m->log_decay_host || m->log_decay.data) return LT_OK;
  const size_t bytes = sizeof(float) * (size_t)m->n_heads;
  void *mem;
  LT_TRY(lt_device_alloc(device, bytes, "linear attention decays", &mem));
  m->log_decay = lt_view1(mem, LT_F32, device, m->n_heads);
  return lt_tensor_from_host(m->log_decay, m->log_decay_host);
}

static int plan(lt_layer *self, const lt_plan *p) {
  linear_mixer *m = (linear_mixer *)self;
  LT_TRY(place_decay(m, p->acts->device));
  const int64_t B = p->B, T = p->T, n = B * T, hd = m->head_dim, e = m->v_width;
  const int64_t hq = m->n_heads, hkv = m->n_kv_heads;
  const lt_dtype dt = p->act_dtype;
  LT_TRY(lt_arena_alloc3(p->acts, &m->qkv, dt, n, hq + 2 * hkv, hd));
  LT_TRY(lt_arena_alloc4(p->acts, &m->o, dt, B, T, hq, e));
  if (m->opt.gate != LT_GATE_NONE) LT_TRY(lt_arena_alloc2(p->acts, &m->u, dt, n, hq * hd));
  LT_TRY(lt_arena_alloc1(p->acts, &m->rstd, LT_F32, n));
  const bool split_row = m->tp.size > 1 && m->opt.norm == LT_LINEAR_NORM_RMS;
  if (split_row) LT_TRY(lt_arena_alloc1(p->acts, &m->row_stat, LT_F32, n));
  // q, k, v and y are rebuilt in the backward, so the forward's and the backward's scratch share
  // one start.
  size_t mark = lt_arena_mark(p->scratch);
  if (split_row) LT_TRY(lt_arena_alloc1(p->scratch, &m->grad_stat, LT_F32, n));
  LT_TRY(lt_arena_alloc4(p->scratch, &m->q, dt, B, T, hq, hd));
  LT_TRY(lt_arena_alloc4(p->scratch, &m->k, dt, B, T, hkv, hd));
  LT_TRY(lt_arena_alloc4(p->scratch, &m->v, dt, B, T, hkv, e));
  LT_TRY(lt_arena_alloc2(p->scratch, &m->y, dt, n, hq * hd));
  LT_TRY(lt_arena_alloc2(p->scratch, &m->dy, dt, n, hq * hd));
  LT_TRY(lt_arena_alloc4(p->scratch, &m->d_o, dt, B, T, hq, e));
  LT_TRY(lt_arena_alloc4(p->scratch, &m->dq, dt, B, T, hq, hd));
  LT_TRY(lt_arena_alloc4(p->scratch, &m->dk, dt, B, T, hkv, hd));
  LT_TRY(lt_arena_alloc4(p->scratch, &m->dv, dt, B, T, hkv, e));
  if (m->opt.gate != LT_GATE_NONE) LT_TRY(lt_arena_alloc2(p->scratch, &m->du, dt, n, hq * hd));
  LT_TRY(lt_arena_alloc3(p->scratch, &m->dqkv, dt, n, hq + 2 * hkv, hd));
  LT_TRY(lt_lasp2_plan(m->lasp, p, (int)hq, (int)hd, (int)e)); // after all the rest
  lt_arena_release(p->scratch, mark);
  return LT_OK;
}

// (B, T, H, w) as (B*T, H, w): the token-wise kernels' view.
static lt_tensor tokens_heads(lt_tensor t) {
  return lt_reshape(t, 3, LT_SHAPE(t.shape[0] * t.shape[1], t.shape[2], t.shape[3]));
}

// q, k, v from the saved projection: run in the forward, and again in the backward.
static int feature_maps(linear_mixer *m, lt_ctx *ctx) {
  return lt_linear_qkv_fwd(ctx, tokens_heads(m->q), tokens_heads(m->k), tokens_heads(m->v), m->qkv,
                           m->opt.feature_map);
}

// y = norm(o) g(u), likewise run in both passes (the backward with the forward's row_stat).
static int output_stage(linear_mixer *m, lt_ctx *ctx) {
  return lt_linear_out_fwd(ctx, m->y, m->rstd, tokens_heads(m->o), m->u, m->opt.norm, m->opt.gate,
                           m->opt.eps, m->row_stat);
}

static int forward(lt_layer *self, lt_ctx *ctx, lt_tensor out, lt_tensor x, const lt_batch *batch) {
  linear_mixer *m = (linear_mixer *)self;
  lt_tensor wqkv;
  LT_TRY(lt_fused_view(&wqkv, m->wqkv, 3, LT_PARAM_VALUE));
  LT_TRY(lt_linear_forward(ctx, m->qkv, x, wqkv));
  LT_TRY(feature_maps(m, ctx));
  lt_linear_attn_spec spec = spec_of(m, batch);
  LT_TRY(lt_lasp2_forward(m->lasp, ctx, m->o, m->q, m->k, m->v, &spec));
  if (m->opt.gate != LT_GATE_NONE) LT_TRY(lt_linear_forward(ctx, m->u, x, m->wu.value));
  if (m->row_stat.data) { // the RMSNorm's row spans the heads of every tp rank
    LT_TRY(lt_linear_out_rms_stat(ctx, m->row_stat, tokens_heads(m->o), m->row_width));
    LT_TRY(lt_tp_all_reduce_sum(&m->tp, m->row_stat));
  }
  LT_TRY(output_stage(m, ctx));
  LT_TRY(lt_linear_forward(ctx, out, m->y, m->wo.value));
  return lt_tp_reduce_output(&m->tp, out);
}

static int backward(lt_layer *self, lt_ctx *ctx, lt_tensor dx, lt_tensor dout, lt_tensor x,
                    const lt_batch *batch) {
  linear_mixer *m = (linear_mixer *)self;
  LT_TRY(feature_maps(m, ctx));
  LT_TRY(output_stage(m, ctx));
  LT_TRY(lt_linear_backward(ctx, m->dy, m->wo.grad, dout, m->y, m->wo.value));
  if (m->grad_stat.data) {
    LT_TRY(lt_linear_out_rms_grad_stat(ctx, m->grad_stat, m->dy, tokens_heads(m->o), m->u, m->rstd,
                                       m->opt.gate, m->row_width));
    LT_TRY(lt_tp_all_reduce_sum(&m->tp, m->grad_stat));
  }
  LT_TRY(lt_linear_out_bwd(ctx, tokens_heads(m->d_o), m->du, m->dy, tokens_heads(m->o), m->u,
                           m->rstd, m->opt.norm, m->opt.gate, m->opt.eps, m->grad_stat));
  LT_TRY(lt_zero(ctx, m->dq));
  LT_TRY(lt_zero(ctx, m->dk));
  LT_TRY(lt_zero(ctx, m->dv));
  lt_linear_attn_spec spec = spec_of(m, batch);
  LT_TRY(lt_lasp2_backward(m->lasp, ctx, m->dq, m->dk, m->dv, m->d_o, m->q, m->k, m->v, &spec));
  LT_TRY(lt_linear_qkv_bwd(ctx, m->dqkv, tokens_heads(m->dq), tokens_heads(m->dk),
                           tokens_heads(m->dv), m->qkv, m->opt.feature_map));
  lt_tensor wqkv, dwqkv;
  LT_TRY(lt_fused_view(&wqkv, m->wqkv, 3, LT_PARAM_VALUE));
  LT_TRY(lt_fused_view(&dwqkv, m->wqkv, 3, LT_PARAM_GRAD));
  LT_TRY(lt_linear_backward(ctx, dx, dwqkv, m->dqkv, x, wqkv));
  if (m->opt.gate != LT_GATE_NONE) {
    // The gate's share: dWu += du^T x, and dx += du Wu on top of the projection's dx.
    lt_tensor no_dx = {0};
    LT_TRY(lt_linear_backward(ctx, no_dx, m->wu.grad, m->du, x, m->wu.value));
    const int64_t width = m->wu.value.shape[1];
    lt_tensor dx_rows = lt_reshape(dx, 2, LT_SHAPE(lt_numel(dx) / width, width));
    LT_TRY(lt_matmul(ctx, dx_rows, m->du, false, m->wu.value, false, 1.0f, 1.0f));
  }
  return lt_tp_reduce_input_grad(&m->tp, dx);
}

static void destroy(lt_layer *self) {
  linear_mixer *m = (linear_mixer *)self;
  if (m->log_decay.data) lt_device_free(m->log_decay.device, m->log_decay.data);
  free(m->log_decay_host);
  lt_lasp2_destroy(m->lasp);
  free(m);
}

// A (rows, cols) weight, split over tp along `split_dim` by heads.
static int add_weight(lt_params *params, const lt_tp *tp, lt_param *bind, const char *prefix,
                      const char *name, int64_t rows, int64_t cols, int split_dim, float std,
                      bool fused_with_prev) {
  char full[96];
  snprintf(full, sizeof full, "%s.%s", prefix, name);
  const lt_param_spec spec = {.init = LT_INIT_NORMAL,
                              .std = std,
                              .group = LT_GROUP_ATTN,
                              .fused_with_prev = fused_with_prev};
  return lt_params_add(params, bind, full, 2, LT_SHAPE(rows, cols),
                       lt_tp_shard(spec, tp, split_dim, split_dim == 0 ? rows : cols));
}

int lt_linear_mixer_create(lt_layer **out, lt_params *params, const char *prefix,
                           const lt_model_config *cfg, lt_init_stds stds,
                           const lt_linear_mixer_options *options) {
  LT_CHECK(options->block >= 1, LT_ERR_CONFIG,
           "%s: the %s attention block size (%lld) must be at least 1", prefix, options->kind,
           (long long)options->block);
  linear_mixer *m = calloc(1, sizeof *m);
  LT_CHECK(m, LT_ERR_MEMORY, "out of memory creating %s", prefix);
  *out = &m->base;
  m->ops = (lt_layer_ops){.kind = options->kind,
                          .plan = plan,
                          .forward = forward,
                          .backward = backward,
                          .destroy = destroy};
  m->base.ops = &m->ops;
  m->opt = *options;
  m->tp = lt_tp_of(params);
  const int heads = cfg->n_heads, kv_heads = cfg->n_kv_heads ? cfg->n_kv_heads : cfg->n_heads;
  m->n_heads = (int)lt_tp_count(&m->tp, heads);
  m->n_kv_heads = (int)lt_tp_count(&m->tp, kv_heads);
  m->head_dim = cfg->head_dim ? cfg->head_dim : cfg->d_model / cfg->n_heads;
  m->v_width = m->head_dim + (options->norm == LT_LINEAR_NORM_DENOMINATOR);
  m->row_width = (int64_t)heads * m->head_dim;
  if (options->log_decay) { // this rank's heads keep the decays of their global indices
    m->log_decay_host = malloc(sizeof(float) * (size_t)m->n_heads);
    LT_CHECK(m->log_decay_host, LT_ERR_MEMORY, "out of memory creating %s", prefix);
    memcpy(m->log_decay_host, options->log_decay + lt_tp_start(&m->tp, heads),
           sizeof(float) * (size_t)m->n_heads);
  }
  m->opt.log_decay = NULL; // the copy above is the layer's
  LT_TRY(lt_lasp2_create(&m->lasp, params->mesh, m->n_heads, m->log_decay_host));
  const int64_t d = cfg->d_model, hd = m->head_dim;
  const int64_t rows[3] = {heads * hd, kv_heads * hd, kv_heads * hd};
  const char *names[3] = {"wq", "wk", "wv"};
  for (int i = 0; i < 3; i++)
    LT_TRY(
        add_weight(params, &m->tp, &m->wqkv[i], prefix, names[i], rows[i], d, 0, stds.in, i > 0));
  if (options->gate != LT_GATE_NONE)
    LT_TRY(add_weight(params, &m->tp, &m->wu, prefix, "wu", heads * hd, d, 0, stds.in, false));
  return add_weight(params, &m->tp, &m->wo, prefix, "wo", d, heads * hd, 1, stds.out, false);
}
