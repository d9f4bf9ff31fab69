// The kernel API's front: checks shapes and dtypes, then runs the op on the tensors' device.
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "core/error.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/kernels.h"

#ifdef LT_WITH_CUDA
#include "kernels/cuda/cuda_kernels.h"
#define ON_CUDA(call)                                                                              \
  if (ctx->device == LT_CUDA) return (call)
#else
#define ON_CUDA(call)                                                                              \
  if (ctx->device == LT_CUDA)                                                                      \
  return lt_fail(LT_ERR_USAGE, "this longtrain was built without CUDA: rebuild with -DLT_CUDA=ON")
#endif

// Shape errors are longtrain's bugs, never the user's: report the op and the offending tensors.
static int bad_shape(const char *op, const char *what, lt_tensor a, lt_tensor b) {
  char da[96], db[96];
  return lt_fail(LT_ERR_INTERNAL, "internal error: %s: %s: %s vs %s (please report this)", op, what,
                 lt_tensor_desc(a, da, sizeof da), lt_tensor_desc(b, db, sizeof db));
}

#define EXPECT(cond, op, what, a, b)                                                               \
  do {                                                                                             \
    if (!(cond)) return bad_shape(op, what, a, b);                                                 \
  } while (0)
#define EXPECT_F32(op, t) EXPECT((t).dtype == LT_F32, op, "expected f32", t, t)

int lt_ctx_init(lt_ctx *ctx, lt_device device, int n_threads) {
  *ctx = (lt_ctx){.device = device, .n_threads = n_threads > 0 ? n_threads : omp_get_num_procs()};
  omp_set_num_threads(ctx->n_threads);
  openblas_set_num_threads(ctx->n_threads);
#ifdef LT_WITH_CUDA
  if (device == LT_CUDA) return lt_cuda_ctx_init(ctx);
#else
  ON_CUDA(LT_OK);
#endif
  return LT_OK;
}

void lt_ctx_destroy(lt_ctx *ctx) {
#ifdef LT_WITH_CUDA
  if (ctx->device == LT_CUDA) lt_cuda_ctx_destroy(ctx);
#endif
  *ctx = (lt_ctx){0};
}

int lt_ctx_sync(lt_ctx *ctx) {
  ON_CUDA(lt_cuda_sync(ctx));
  return LT_OK;
}

int lt_matmul(lt_ctx *ctx, lt_tensor c, lt_tensor a, bool trans_a, lt_tensor b, bool trans_b,
              float alpha, float beta) {
  EXPECT(a.ndim == 2 && b.ndim == 2 && c.ndim == 2, "matmul", "expected 2-D views", a, b);
  int64_t m = trans_a ? a.shape[1] : a.shape[0], k = trans_a ? a.shape[0] : a.shape[1];
  int64_t kb = trans_b ? b.shape[1] : b.shape[0], n = trans_b ? b.shape[0] : b.shape[1];
  EXPECT(k == kb, "matmul", "inner dimensions differ", a, b);
  EXPECT(c.shape[0] == m && c.shape[1] == n, "matmul", "output shape", c, a);
  ON_CUDA(lt_cuda_matmul(ctx, c, a, trans_a, b, trans_b, alpha, beta));
  EXPECT_F32("matmul", a);
  lt_cpu_matmul(lt_f32(c), lt_f32(a), trans_a, lt_f32(b), trans_b, m, n, k, alpha, beta);
  return LT_OK;
}

int lt_add(lt_ctx *ctx, lt_tensor out, lt_tensor a, lt_tensor b) {
  EXPECT(lt_numel(a) == lt_numel(b) && lt_numel(out) == lt_numel(a), "add", "sizes differ", a, b);
  ON_CUDA(lt_cuda_add(ctx, out, a, b));
  lt_cpu_add(lt_f32(out), lt_f32(a), lt_f32(b), lt_numel(a));
  return LT_OK;
}

int lt_scale(lt_ctx *ctx, lt_tensor x, float s) {
  ON_CUDA(lt_cuda_scale(ctx, x, s));
  EXPECT_F32("scale", x);
  lt_cpu_scale(lt_f32(x), s, lt_numel(x));
  return LT_OK;
}

int lt_zero(lt_ctx *ctx, lt_tensor x) {
  ON_CUDA(lt_cuda_zero(ctx, x));
  memset(x.data, 0, lt_nbytes(x));
  return LT_OK;
}

int lt_copy(lt_ctx *ctx, lt_tensor dst, lt_tensor src) {
  EXPECT(lt_numel(dst) == lt_numel(src), "copy", "sizes differ", dst, src);
  ON_CUDA(lt_cuda_copy(ctx, dst, src));
  EXPECT(dst.dtype == src.dtype, "copy", "dtype conversion on the CPU", dst, src);
  memmove(dst.data, src.data, lt_nbytes(src));
  return LT_OK;
}

int lt_sum_squares(lt_ctx *ctx, double *out, lt_tensor x) {
  ON_CUDA(lt_cuda_sum_squares(ctx, out, x));
  EXPECT_F32("sum_squares", x);
  *out = lt_cpu_sum_squares(lt_f32(x), lt_numel(x));
  return LT_OK;
}

int lt_embedding_fwd(lt_ctx *ctx, lt_tensor out, lt_tensor tokens, lt_tensor table) {
  EXPECT(tokens.dtype == LT_I32 && lt_numel(tokens) == out.shape[0], "embedding_fwd",
         "tokens vs output rows", tokens, out);
  EXPECT(table.ndim == 2 && out.shape[out.ndim - 1] == table.shape[1], "embedding_fwd", "width",
         out, table);
  ON_CUDA(lt_cuda_embedding_fwd(ctx, out, tokens, table));
  lt_cpu_embedding_fwd(lt_f32(out), lt_i32(tokens), lt_f32(table), lt_numel(tokens),
                       table.shape[1]);
  return LT_OK;
}

int lt_embedding_bwd(lt_ctx *ctx, lt_tensor dtable, lt_tensor dout, lt_tensor tokens) {
  EXPECT(dout.shape[dout.ndim - 1] == dtable.shape[1], "embedding_bwd", "width", dout, dtable);
  ON_CUDA(lt_cuda_embedding_bwd(ctx, dtable, dout, tokens));
  lt_cpu_embedding_bwd(lt_f32(dtable), lt_f32(dout), lt_i32(tokens), lt_numel(tokens),
                       dtable.shape[1]);
  return LT_OK;
}

int lt_rmsnorm_fwd(lt_ctx *ctx, lt_tensor out, lt_tensor rstd, lt_tensor x, lt_tensor weight,
                   float eps) {
  int64_t c = x.shape[x.ndim - 1], n = lt_numel(x) / c;
  EXPECT(lt_same_shape(out, x), "rmsnorm_fwd", "out vs x", out, x);
  EXPECT(lt_numel(weight) == c && lt_numel(rstd) == n, "rmsnorm_fwd", "weight or rstd", weight,
         rstd);
  ON_CUDA(lt_cuda_rmsnorm_fwd(ctx, out, rstd, x, weight, eps));
  lt_cpu_rmsnorm_fwd(lt_f32(out), lt_f32(rstd), lt_f32(x), lt_f32(weight), n, c, eps);
  return LT_OK;
}

int lt_rmsnorm_bwd(lt_ctx *ctx, lt_tensor dx, lt_tensor dweight, lt_tensor dout, lt_tensor x,
                   lt_tensor weight, lt_tensor rstd) {
  int64_t c = x.shape[x.ndim - 1], n = lt_numel(x) / c;
  EXPECT(lt_same_shape(dx, x) && lt_same_shape(dout, x), "rmsnorm_bwd", "dx/dout vs x", dx, x);
  EXPECT(lt_numel(dweight) == c, "rmsnorm_bwd", "dweight", dweight, weight);
  ON_CUDA(lt_cuda_rmsnorm_bwd(ctx, dx, dweight, dout, x, weight, rstd));
  lt_cpu_rmsnorm_bwd(lt_f32(dx), lt_f32(dweight), lt_f32(dout), lt_f32(x), lt_f32(weight),
                     lt_f32(rstd), n, c);
  return LT_OK;
}

static int check_rope(lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor qkv, lt_tensor pos) {
  EXPECT(q.ndim == 3 && k.ndim == 3 && v.ndim == 3 && qkv.ndim == 3, "rope_qkv", "expected 3-D", q,
         qkv);
  int64_t n = q.shape[0], d = q.shape[2];
  EXPECT(k.shape[0] == n && v.shape[0] == n && qkv.shape[0] == n && lt_numel(pos) == n, "rope_qkv",
         "token counts", q, qkv);
  EXPECT(k.shape[2] == d && v.shape[2] == d && qkv.shape[2] == d && d % 2 == 0, "rope_qkv",
         "head widths", q, k);
  EXPECT(lt_same_shape(k, v) && qkv.shape[1] == q.shape[1] + 2 * k.shape[1], "rope_qkv",
         "head counts", qkv, k);
  return LT_OK;
}

int lt_rope_qkv_fwd(lt_ctx *ctx, lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor qkv,
                    lt_tensor pos, float theta) {
  LT_TRY(check_rope(q, k, v, qkv, pos));
  ON_CUDA(lt_cuda_rope_qkv_fwd(ctx, q, k, v, qkv, pos, theta));
  lt_cpu_rope_qkv_fwd(lt_f32(q), lt_f32(k), lt_f32(v), lt_f32(qkv), lt_i32(pos), q.shape[0],
                      (int)q.shape[1], (int)k.shape[1], (int)q.shape[2], theta);
  return LT_OK;
}

int lt_rope_qkv_bwd(lt_ctx *ctx, lt_tensor dqkv, lt_tensor dq, lt_tensor dk, lt_tensor dv,
                    lt_tensor pos, float theta) {
  LT_TRY(check_rope(dq, dk, dv, dqkv, pos));
  ON_CUDA(lt_cuda_rope_qkv_bwd(ctx, dqkv, dq, dk, dv, pos, theta));
  lt_cpu_rope_qkv_bwd(lt_f32(dqkv), lt_f32(dq), lt_f32(dk), lt_f32(dv), lt_i32(pos), dq.shape[0],
                      (int)dq.shape[1], (int)dk.shape[1], (int)dq.shape[2], theta);
  return LT_OK;
}

int lt_swiglu_fwd(lt_ctx *ctx, lt_tensor h, lt_tensor gate_up) {
  int64_t f = h.shape[h.ndim - 1], n = lt_numel(h) / f;
  EXPECT(gate_up.shape[gate_up.ndim - 1] == 2 * f && lt_numel(gate_up) == 2 * n * f, "swiglu_fwd",
         "gate_up must be (N, 2F) for h (N, F)", gate_up, h);
  ON_CUDA(lt_cuda_swiglu_fwd(ctx, h, gate_up));
  lt_cpu_swiglu_fwd(lt_f32(h), lt_f32(gate_up), n, f);
  return LT_OK;
}

int lt_swiglu_bwd(lt_ctx *ctx, lt_tensor dgate_up, lt_tensor dh, lt_tensor gate_up) {
  int64_t f = dh.shape[dh.ndim - 1], n = lt_numel(dh) / f;
  EXPECT(lt_same_shape(dgate_up, gate_up) && lt_numel(gate_up) == 2 * n * f, "swiglu_bwd",
         "dgate_up vs gate_up", dgate_up, gate_up);
  ON_CUDA(lt_cuda_swiglu_bwd(ctx, dgate_up, dh, gate_up));
  lt_cpu_swiglu_bwd(lt_f32(dgate_up), lt_f32(dh), lt_f32(gate_up), n, f);
  return LT_OK;
}

int lt_cross_entropy(lt_ctx *ctx, lt_tensor losses, lt_tensor dlogits, lt_tensor logits,
                     lt_tensor targets, int ignore_index, float grad_scale) {
  int64_t v = logits.shape[logits.ndim - 1], n = lt_numel(logits) / v;
  EXPECT(lt_numel(targets) == n && lt_numel(losses) == n && targets.dtype == LT_I32,
         "cross_entropy", "targets vs logits rows", targets, logits);
  EXPECT(losses.dtype == LT_F32 && logits.dtype == LT_F32, "cross_entropy",
         "losses and logits must be f32", losses, logits);
  EXPECT(!dlogits.data || lt_numel(dlogits) == lt_numel(logits), "cross_entropy",
         "dlogits vs logits", dlogits, logits);
  ON_CUDA(lt_cuda_cross_entropy(ctx, losses, dlogits, logits, targets, ignore_index, grad_scale));
  if (dlogits.data) EXPECT_F32("cross_entropy", dlogits);
  lt_cpu_cross_entropy(lt_f32(losses), lt_f32(dlogits), lt_f32(logits), lt_i32(targets), n, v,
                       ignore_index, grad_scale);
  return LT_OK;
}

static int attn_dims(const char *op, lt_cpu_attn_dims *dims, lt_tensor q, lt_tensor k, lt_tensor v,
                     const lt_attn_spec *spec) {
  EXPECT(q.ndim == 4 && k.ndim == 4 && lt_same_shape(k, v), "attention", "q (B,T,H,D), k = v", q,
         k);
  *dims = (lt_cpu_attn_dims){.b = q.shape[0],
                             .tq = q.shape[1],
                             .tk = k.shape[1],
                             .hq = (int)q.shape[2],
                             .hkv = (int)k.shape[2],
                             .d = (int)q.shape[3]};
  EXPECT(k.shape[0] == dims->b && k.shape[3] == dims->d, op, "batch or head width", q, k);
  EXPECT(dims->hkv > 0 && dims->hq % dims->hkv == 0, op, "query heads per key/value head", q, k);
  EXPECT(dims->d <= LT_MAX_HEAD_DIM, op, "head width above LT_MAX_HEAD_DIM", q, q);
  EXPECT(lt_numel(spec->q_pos) == dims->b * dims->tq && lt_numel(spec->k_pos) == dims->b * dims->tk,
         op, "positions", spec->q_pos, spec->k_pos);
  EXPECT(!spec->q_doc.data || (lt_numel(spec->q_doc) == dims->b * dims->tq &&
                               lt_numel(spec->k_doc) == dims->b * dims->tk),
         op, "document ids", spec->q_doc, spec->k_doc);
  return LT_OK;
}

int lt_attn_fwd(lt_ctx *ctx, lt_tensor o, lt_tensor lse, lt_tensor q, lt_tensor k, lt_tensor v,
                const lt_attn_spec *spec) {
  lt_cpu_attn_dims dims;
  LT_TRY(attn_dims("attn_fwd", &dims, q, k, v, spec));
  EXPECT(lt_same_shape(o, q), "attn_fwd", "o vs q", o, q);
  EXPECT(lt_numel(lse) == dims.b * dims.hq * dims.tq && lse.dtype == LT_F32, "attn_fwd",
         "lse must be (B, Hq, Tq) f32", lse, q);
  ON_CUDA(lt_cuda_attn_fwd(ctx, o, lse, q, k, v, spec));
  lt_cpu_attn_fwd(lt_f32(o), lt_f32(lse), lt_f32(q), lt_f32(k), lt_f32(v), &dims, spec);
  return LT_OK;
}

int lt_attn_merge(lt_ctx *ctx, lt_tensor o, lt_tensor lse, lt_tensor o_part, lt_tensor lse_part) {
  EXPECT(o.ndim == 4 && lt_same_shape(o, o_part) && lt_same_shape(lse, lse_part), "attn_merge",
         "partials differ in shape", o, o_part);
  EXPECT(lt_numel(lse) == o.shape[0] * o.shape[1] * o.shape[2], "attn_merge", "lse", lse, o);
  ON_CUDA(lt_cuda_attn_merge(ctx, o, lse, o_part, lse_part));
  lt_cpu_attn_merge(lt_f32(o), lt_f32(lse), lt_f32(o_part), lt_f32(lse_part), o.shape[0],
                    o.shape[1], (int)o.shape[2], (int)o.shape[3]);
  return LT_OK;
}

int lt_attn_bwd_delta(lt_ctx *ctx, lt_tensor delta, lt_tensor dout, lt_tensor o) {
  EXPECT(o.ndim == 4 && lt_same_shape(o, dout), "attn_bwd_delta", "dout vs o", dout, o);
  EXPECT(lt_numel(delta) == o.shape[0] * o.shape[1] * o.shape[2] && delta.dtype == LT_F32,
         "attn_bwd_delta", "delta must be (B, H, T) f32", delta, o);
  ON_CUDA(lt_cuda_attn_bwd_delta(ctx, delta, dout, o));
  lt_cpu_attn_bwd_delta(lt_f32(delta), lt_f32(dout), lt_f32(o), o.shape[0], o.shape[1],
                        (int)o.shape[2], (int)o.shape[3]);
  return LT_OK;
}

int lt_attn_bwd(lt_ctx *ctx, lt_tensor dq, lt_tensor dk, lt_tensor dv, lt_tensor dout, lt_tensor q,
                lt_tensor k, lt_tensor v, lt_tensor lse, lt_tensor delta,
                const lt_attn_spec *spec) {
  lt_cpu_attn_dims dims;
  LT_TRY(attn_dims("attn_bwd", &dims, q, k, v, spec));
  EXPECT(lt_same_shape(dq, q) && lt_same_shape(dout, q), "attn_bwd", "dq/dout vs q", dq, q);
  EXPECT(lt_same_shape(dk, k) && lt_same_shape(dv, v), "attn_bwd", "dk/dv vs k", dk, k);
  ON_CUDA(lt_cuda_attn_bwd(ctx, dq, dk, dv, dout, q, k, v, lse, delta, spec));
  lt_cpu_attn_bwd(lt_f32(dq), lt_f32(dk), lt_f32(dv), lt_f32(dout), lt_f32(q), lt_f32(k), lt_f32(v),
                  lt_f32(lse), lt_f32(delta), &dims, spec);
  return LT_OK;
}

int lt_adamw(lt_ctx *ctx, lt_tensor param, lt_tensor grad, lt_tensor m, lt_tensor v,
             lt_tensor compute, const lt_adamw_args *args) {
  EXPECT(lt_numel(param) == lt_numel(grad) && lt_numel(m) == lt_numel(param) &&
             lt_numel(v) == lt_numel(param),
         "adamw", "param, grad and moments differ in size", param, grad);
  EXPECT(param.dtype == LT_F32 && grad.dtype == LT_F32 && m.dtype == LT_F32 && v.dtype == LT_F32,
         "adamw", "param, grad and moments must be f32", param, grad);
  EXPECT(!compute.data || lt_numel(compute) == lt_numel(param), "adamw", "compute copy vs param",
         compute, param);
  for (int i = 0; i < args->n_runs; i++)
    EXPECT(args->runs[i].start >= 0 && args->runs[i].numel >= 0 &&
               args->runs[i].start + args->runs[i].numel <= lt_numel(param),
           "adamw", "a run lies outside the buffer", param, param);
  ON_CUDA(lt_cuda_adamw(ctx, param, grad, m, v, compute, args));
  lt_cpu_adamw(lt_f32(param), lt_f32(grad), lt_f32(m), lt_f32(v), args);
  if (compute.data && compute.data != param.data) {
    EXPECT_F32("adamw compute copy", compute);
    memcpy(compute.data, param.data, lt_nbytes(param));
  }
  return LT_OK;
}
