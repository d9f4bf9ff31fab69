#include "layers/mlp.h"

#include <stdio.h>
#include <stdlib.h>

#include "core/error.h"
#include "layers/linear.h"
#include "parallel/tp.h"

typedef struct swiglu_mlp {
  lt_layer base;
  lt_tp tp;
  bool reduce;            // sum the output and dx over tp here (not in the caller)
  int64_t ffn_dim;        // this rank's hidden units
  lt_param w_gate_up[2];  // w_gate (F, D), w_up (F, D), adjacent: one (2F, D) matmul
  lt_param w_down;        // (D, F)
  lt_tensor gate_up, h;   // saved (B*T, 2F) and (B*T, F)
  lt_tensor dh, dgate_up; // scratch
} swiglu_mlp;

static int plan(lt_layer *self, const lt_plan *p) {
  swiglu_mlp *m = (swiglu_mlp *)self;
  const int64_t n = p->B * p->T, f = m->ffn_dim;
  LT_TRY(lt_arena_alloc2(p->acts, &m->gate_up, p->act_dtype, n, 2 * f));
  // h is kept for w_down's gradient: made again in the backward (beside dgate_up, from the same
  // read of gate_up) it would be written a second time. At the 135M model's T = 16384 the fused
  // backward moves 0.51 GB instead of 0.64, for 128 MB more a layer.
  LT_TRY(lt_arena_alloc2(p->acts, &m->h, p->act_dtype, n, f));
  size_t mark = lt_arena_mark(p->scratch);
  LT_TRY(lt_arena_alloc2(p->scratch, &m->dh, p->act_dtype, n, f));
  LT_TRY(lt_arena_alloc2(p->scratch, &m->dgate_up, p->act_dtype, n, 2 * f));
  lt_arena_release(p->scratch, mark);
  return LT_OK;
}

static int forward(lt_layer *self, lt_ctx *ctx, lt_tensor out, lt_tensor x, const lt_batch *batch) {
  (void)batch;
  swiglu_mlp *m = (swiglu_mlp *)self;
  lt_tensor w;
  LT_TRY(lt_fused_view(&w, m->w_gate_up, 2, LT_PARAM_VALUE));
  LT_TRY(lt_swiglu_linear_fwd(ctx, m->gate_up, m->h, lt_rows_of(x, w.shape[1]), w));
  LT_TRY(lt_linear_forward(ctx, out, m->h, m->w_down.value));
  return m->reduce ? lt_tp_reduce_output(&m->tp, out) : LT_OK;
}

static int backward(lt_layer *self, lt_ctx *ctx, lt_tensor dx, lt_tensor dout, lt_tensor x,
                    const lt_batch *batch) {
  (void)batch;
  swiglu_mlp *m = (swiglu_mlp *)self;
  // dh = dout w_down and the SwiGLU backward (one kernel on a Hopper GPU, where dh never reaches
  // memory): dgate_up, from the saved gate_up.
  const lt_tensor no_h = {0};
  LT_TRY(lt_swiglu_linear_bwd(ctx, m->dgate_up, no_h, m->dh,
                              lt_rows_of(dout, m->w_down.value.shape[0]), m->w_down.value,
                              m->gate_up));
  LT_TRY(lt_linear_backward_weight(ctx, m->w_down.grad, dout, m->h));
  lt_tensor w, dw;
  LT_TRY(lt_fused_view(&w, m->w_gate_up, 2, LT_PARAM_VALUE));
  LT_TRY(lt_fused_view(&dw, m->w_gate_up, 2, LT_PARAM_GRAD));
  LT_TRY(lt_linear_backward(ctx, dx, dw, m->dgate_up, x, w));
  return m->reduce ? lt_tp_reduce_input_grad(&m->tp, dx) : LT_OK;
}

static void destroy(lt_layer *self) {
  free(self);
}

static const lt_layer_ops swiglu_ops = {
    .kind = "swiglu", .plan = plan, .forward = forward, .backward = backward, .destroy = destroy};

static int create(lt_layer **out, lt_params *params, const char *prefix, int64_t d_model,
                  int64_t ffn_dim, lt_init_stds stds, bool reduce) {
  swiglu_mlp *m = calloc(1, sizeof *m);
  LT_CHECK(m, LT_ERR_MEMORY, "out of memory creating %s", prefix);
  *out = &m->base;
  m->base.ops = &swiglu_ops;
  m->tp = lt_tp_of(params);
  m->reduce = reduce;
  m->ffn_dim = lt_tp_count(&m->tp, ffn_dim);
  char name[96];
  const char *names[2] = {"w_gate", "w_up"};
  for (int i = 0; i < 2; i++) {
    snprintf(name, sizeof name, "%s.%s", prefix, names[i]);
    const lt_param_spec spec = {
        .init = LT_INIT_NORMAL, .std = stds.in, .group = LT_GROUP_FFN, .fused_with_prev = i > 0};
    LT_TRY(lt_params_add(params, &m->w_gate_up[i], name, 2, LT_SHAPE(ffn_dim, d_model),
                         lt_tp_shard(spec, &m->tp, 0, ffn_dim)));
  }
  snprintf(name, sizeof name, "%s.w_down", prefix);
  const lt_param_spec spec = {.init = LT_INIT_NORMAL, .std = stds.out, .group = LT_GROUP_FFN};
  return lt_params_add(params, &m->w_down, name, 2, LT_SHAPE(d_model, ffn_dim),
                       lt_tp_shard(spec, &m->tp, 1, ffn_dim));
}

int lt_swiglu_mlp_create(lt_layer **out, lt_params *params, const char *prefix, int64_t d_model,
                         int64_t ffn_dim, lt_init_stds stds) {
  return create(out, params, prefix, d_model, ffn_dim, stds, true);
}

int lt_swiglu_mlp_create_partial(lt_layer **out, lt_params *params, const char *prefix,
                                 int64_t d_model, int64_t ffn_dim, lt_init_stds stds) {
  return create(out, params, prefix, d_model, ffn_dim, stds, false);
}
