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
#include "kernels/cuda/cuda_moe.h"
#include "kernels/cuda/cuda_linear.h"
#include "kernels/cuda/cuda_moh.h"
#define ON_CUDA(call)                                                                              \
  if (ctx->device == LT_CUDA) return (call)
#else
#define ON_CUDA(call)                                                                              \
  if (ctx->device == LT_CUDA)                                                                      \
  return lt_fail(LT_ERR_USAGE, "this longtrain was built without CUDA: rebuild with -DLT_CUDA=ON")
#endif

// Ops that have no CUDA kernel yet (the tensor-parallel shards of the embedding and the loss):
// config validation keeps tensor parallelism off CUDA, and this names the op if anything reaches
// one anyway.
#define CPU_ONLY(op)                                                                               \
  if (ctx->device == LT_CUDA)                                                                      \
  return lt_fail(LT_ERR_USAGE, "%s has no CUDA kernel yet: run this model with run.device: cpu", op)

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

int lt_upload(lt_ctx *ctx, lt_tensor dst, const void *src) {
  ON_CUDA(lt_cuda_upload(ctx, dst, src));
  if (lt_nbytes(dst)) memmove(dst.data, src, lt_nbytes(dst));
  return LT_OK;
}

void lt_profile_mark(lt_ctx *ctx, const char *what) {
#ifdef LT_WITH_CUDA
  if (ctx->device == LT_CUDA) lt_cuda_profile_mark(ctx, what);
#else
  (void)ctx, (void)what;
#endif
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

int lt_sum(lt_ctx *ctx, double *out, lt_tensor x) {
  ON_CUDA(lt_cuda_sum(ctx, out, x));
  EXPECT_F32("sum", x);
  *out = lt_cpu_sum(lt_f32(x), lt_numel(x));
  return LT_OK;
}

static int check_embedding(const char *op, lt_tensor out, lt_tensor tokens, lt_tensor table) {
  EXPECT(tokens.dtype == LT_I32 && lt_numel(tokens) == lt_numel(out) / out.shape[out.ndim - 1], op,
         "tokens vs output rows", tokens, out);
  EXPECT(table.ndim == 2 && out.shape[out.ndim - 1] == table.shape[1], op, "width", out, table);
  return LT_OK;
}

int lt_embedding_fwd(lt_ctx *ctx, lt_tensor out, lt_tensor tokens, lt_tensor table) {
  LT_TRY(check_embedding("embedding_fwd", out, tokens, table));
  ON_CUDA(lt_cuda_embedding_fwd(ctx, out, tokens, table));
  lt_cpu_embedding_fwd(lt_f32(out), lt_i32(tokens), lt_f32(table), lt_numel(tokens), table.shape[1],
                       0, table.shape[0]);
  return LT_OK;
}

int lt_embedding_bwd(lt_ctx *ctx, lt_tensor dtable, lt_tensor dout, lt_tensor tokens) {
  LT_TRY(check_embedding("embedding_bwd", dout, tokens, dtable));
  ON_CUDA(lt_cuda_embedding_bwd(ctx, dtable, dout, tokens));
  lt_cpu_embedding_bwd(lt_f32(dtable), lt_f32(dout), lt_i32(tokens), lt_numel(tokens),
                       dtable.shape[1], 0, dtable.shape[0]);
  return LT_OK;
}

int lt_embedding_shard_fwd(lt_ctx *ctx, lt_tensor out, lt_tensor tokens, lt_tensor table,
                           int64_t vocab_start) {
  LT_TRY(check_embedding("embedding_shard_fwd", out, tokens, table));
  CPU_ONLY("embedding_shard_fwd");
  lt_cpu_embedding_fwd(lt_f32(out), lt_i32(tokens), lt_f32(table), lt_numel(tokens), table.shape[1],
                       vocab_start, table.shape[0]);
  return LT_OK;
}

int lt_embedding_shard_bwd(lt_ctx *ctx, lt_tensor dtable, lt_tensor dout, lt_tensor tokens,
                           int64_t vocab_start) {
  LT_TRY(check_embedding("embedding_shard_bwd", dout, tokens, dtable));
  CPU_ONLY("embedding_shard_bwd");
  lt_cpu_embedding_bwd(lt_f32(dtable), lt_f32(dout), lt_i32(tokens), lt_numel(tokens),
                       dtable.shape[1], vocab_start, dtable.shape[0]);
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

int lt_add_rmsnorm_fwd(lt_ctx *ctx, lt_tensor sum, lt_tensor out, lt_tensor rstd, lt_tensor a,
                       lt_tensor b, lt_tensor weight, float eps) {
  int64_t c = a.shape[a.ndim - 1], n = lt_numel(a) / c;
  EXPECT(lt_same_shape(sum, a) && lt_same_shape(b, a) && lt_same_shape(out, a), "add_rmsnorm_fwd",
         "sum, b and out vs a", sum, a);
  EXPECT(lt_numel(weight) == c && lt_numel(rstd) == n, "add_rmsnorm_fwd", "weight or rstd", weight,
         rstd);
  ON_CUDA(lt_cuda_add_rmsnorm_fwd(ctx, sum, out, rstd, a, b, weight, eps));
  lt_cpu_add(lt_f32(sum), lt_f32(a), lt_f32(b), n * c);
  lt_cpu_rmsnorm_fwd(lt_f32(out), lt_f32(rstd), lt_f32(sum), lt_f32(weight), n, c, eps);
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

// q, k, v: (..., H, D) views whose leading dims are the n tokens'; qkv: (n, Hq + 2 Hkv, D), or
// (n, Hq + Hkv, D) where v.data is NULL (the forward only).
static int check_rope(lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor qkv, lt_tensor pos,
                      int64_t *n) {
  *n = qkv.shape[0];
  EXPECT(q.ndim >= 3 && k.ndim == q.ndim && (!v.data || v.ndim == q.ndim) && qkv.ndim == 3,
         "rope_qkv", "expected (N, H, D) or (B, T, H, D) views, and qkv (N, H, D)", q, qkv);
  const int64_t hq = q.shape[q.ndim - 2], hkv = k.shape[k.ndim - 2], d = q.shape[q.ndim - 1];
  EXPECT(lt_numel(q) == *n * hq * d && lt_numel(k) == *n * hkv * d && lt_numel(pos) == *n,
         "rope_qkv", "token counts", q, qkv);
  EXPECT(k.shape[k.ndim - 1] == d && qkv.shape[2] == d && d % 2 == 0, "rope_qkv", "head widths", q,
         k);
  EXPECT((!v.data || lt_same_shape(k, v)) && qkv.shape[1] == hq + (v.data ? 2 : 1) * hkv,
         "rope_qkv", "head counts", qkv, k);
  return LT_OK;
}

int lt_rope_qkv_fwd(lt_ctx *ctx, lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor qkv,
                    lt_tensor pos, float theta) {
  int64_t n;
  LT_TRY(check_rope(q, k, v, qkv, pos, &n));
  ON_CUDA(lt_cuda_rope_qkv_fwd(ctx, q, k, v, qkv, pos, theta));
  lt_cpu_rope_qkv_fwd(lt_f32(q), lt_f32(k), lt_f32(v), lt_f32(qkv), lt_i32(pos), n,
                      (int)q.shape[q.ndim - 2], (int)k.shape[k.ndim - 2], (int)qkv.shape[2], theta);
  return LT_OK;
}

int lt_qkv_rope_fwd(lt_ctx *ctx, lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor qk, lt_tensor x,
                    lt_tensor w, lt_tensor pos, float theta) {
  int64_t n;
  const lt_tensor no_v = {0};
  LT_TRY(check_rope(q, k, no_v, qk, pos, &n));
  const int64_t in = x.shape[x.ndim - 1], qk_cols = qk.shape[1] * qk.shape[2],
                kv_cols = k.shape[k.ndim - 2] * k.shape[k.ndim - 1];
  EXPECT(lt_same_shape(k, v), "qkv_rope_fwd", "v must be shaped as k", v, k);
  EXPECT(w.ndim == 2 && w.shape[0] == qk_cols + kv_cols && w.shape[1] == in &&
             lt_numel(x) == n * in,
         "qkv_rope_fwd", "w must be ((Hq + 2 Hkv) D, D_in) for x (N, D_in)", w, x);
  const lt_tensor rows = lt_reshape(x, 2, LT_SHAPE(n, in));
  ON_CUDA(lt_cuda_qkv_rope_fwd(ctx, q, k, v, qk, rows, w, pos, theta));
  LT_TRY(lt_matmul(ctx, lt_reshape(qk, 2, LT_SHAPE(n, qk_cols)), rows, false,
                   lt_rows(w, 0, qk_cols), true, 1.0f, 0.0f));
  LT_TRY(lt_matmul(ctx, lt_reshape(v, 2, LT_SHAPE(n, kv_cols)), rows, false,
                   lt_rows(w, qk_cols, kv_cols), true, 1.0f, 0.0f));
  return lt_rope_qkv_fwd(ctx, q, k, no_v, qk, pos, theta);
}

bool lt_qkv_rope_fused(lt_ctx *ctx, int64_t head_dim, int64_t d_in) {
#ifdef LT_WITH_CUDA
  if (ctx->device == LT_CUDA) return lt_cuda_qkv_rope_fused(ctx, head_dim, d_in);
#else
  (void)ctx, (void)head_dim, (void)d_in;
#endif
  return false;
}

int lt_rope_qkv_bwd(lt_ctx *ctx, lt_tensor dqkv, lt_tensor dq, lt_tensor dk, lt_tensor dv,
                    lt_tensor pos, float theta) {
  int64_t n;
  EXPECT(dv.data, "rope_qkv_bwd", "dv is needed", dv, dqkv);
  LT_TRY(check_rope(dq, dk, dv, dqkv, pos, &n));
  ON_CUDA(lt_cuda_rope_qkv_bwd(ctx, dqkv, dq, dk, dv, pos, theta));
  lt_cpu_rope_qkv_bwd(lt_f32(dqkv), lt_f32(dq), lt_f32(dk), lt_f32(dv), lt_i32(pos), n,
                      (int)dq.shape[dq.ndim - 2], (int)dk.shape[dk.ndim - 2], (int)dqkv.shape[2],
                      theta);
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

int lt_swiglu_bwd(lt_ctx *ctx, lt_tensor dgate_up, lt_tensor h, lt_tensor dh, lt_tensor gate_up) {
  int64_t f = dh.shape[dh.ndim - 1], n = lt_numel(dh) / f;
  EXPECT(lt_same_shape(dgate_up, gate_up) && lt_numel(gate_up) == 2 * n * f, "swiglu_bwd",
         "dgate_up vs gate_up", dgate_up, gate_up);
  EXPECT(!h.data || lt_same_shape(h, dh), "swiglu_bwd", "h vs dh", h, dh);
  ON_CUDA(lt_cuda_swiglu_bwd(ctx, dgate_up, h, dh, gate_up));
  lt_cpu_swiglu_bwd(lt_f32(dgate_up), lt_f32(h), lt_f32(dh), lt_f32(gate_up), n, f);
  return LT_OK;
}

int lt_swiglu_linear_fwd(lt_ctx *ctx, lt_tensor gate_up, lt_tensor h, lt_tensor x, lt_tensor w) {
  EXPECT(x.ndim == 2 && w.ndim == 2 && h.ndim == 2 && gate_up.ndim == 2, "swiglu_linear_fwd",
         "expected 2-D views", x, w);
  EXPECT(w.shape[1] == x.shape[1] && w.shape[0] == 2 * h.shape[1], "swiglu_linear_fwd",
         "w must be (2F, D) for x (N, D), h (N, F)", w, x);
  EXPECT(h.shape[0] == x.shape[0] && gate_up.shape[0] == x.shape[0] &&
             gate_up.shape[1] == w.shape[0],
         "swiglu_linear_fwd", "gate_up must be (N, 2F) for h (N, F)", gate_up, h);
  ON_CUDA(lt_cuda_swiglu_linear_fwd(ctx, gate_up, h, x, w));
  LT_TRY(lt_matmul(ctx, gate_up, x, false, w, true, 1.0f, 0.0f));
  return lt_swiglu_fwd(ctx, h, gate_up);
}

int lt_swiglu_linear_bwd(lt_ctx *ctx, lt_tensor dgate_up, lt_tensor h, lt_tensor dh, lt_tensor dy,
                         lt_tensor w_down, lt_tensor gate_up) {
  EXPECT(dy.ndim == 2 && w_down.ndim == 2 && dh.ndim == 2 && (!h.data || lt_same_shape(h, dh)),
         "swiglu_linear_bwd", "expected 2-D views, and h (if given) like dh", dy, dh);
  EXPECT(w_down.shape[0] == dy.shape[1] && w_down.shape[1] == dh.shape[1] &&
             dh.shape[0] == dy.shape[0],
         "swiglu_linear_bwd", "w_down must be (D, F) for dy (N, D), dh (N, F)", w_down, dy);
  EXPECT(gate_up.ndim == 2 && lt_same_shape(dgate_up, gate_up) && gate_up.shape[0] == dh.shape[0] &&
             gate_up.shape[1] == 2 * dh.shape[1],
         "swiglu_linear_bwd", "gate_up and dgate_up must be (N, 2F) for dh (N, F)", gate_up, dh);
  ON_CUDA(lt_cuda_swiglu_linear_bwd(ctx, dgate_up, h, dh, dy, w_down, gate_up));
  LT_TRY(lt_matmul(ctx, dh, dy, false, w_down, false, 1.0f, 0.0f));
  return lt_swiglu_bwd(ctx, dgate_up, h, dh, gate_up);
}

bool lt_swiglu_linear_fused(lt_ctx *ctx, int64_t f, int64_t d) {
#ifdef LT_WITH_CUDA
  if (ctx->device == LT_CUDA) return lt_cuda_swiglu_linear_fused(ctx, f, d);
#else
  (void)ctx, (void)f, (void)d;
#endif
  return false;
}

int lt_cross_entropy(lt_ctx *ctx, lt_tensor losses, lt_tensor dlogits, lt_tensor logits,
                     lt_tensor targets, int ignore_index, float grad_scale) {
  int64_t v = logits.shape[logits.ndim - 1], n = lt_numel(logits) / v;
  EXPECT(lt_numel(targets) == n && lt_numel(losses) == n && targets.dtype == LT_I32,
         "cross_entropy", "targets vs logits rows", targets, logits);
  EXPECT(losses.dtype == LT_F32, "cross_entropy", "losses must be f32", losses, logits);
  EXPECT(!dlogits.data || lt_numel(dlogits) == lt_numel(logits), "cross_entropy",
         "dlogits vs logits", dlogits, logits);
  ON_CUDA(lt_cuda_cross_entropy(ctx, losses, dlogits, logits, targets, ignore_index, grad_scale));
  EXPECT_F32("cross_entropy", logits);
  if (dlogits.data) EXPECT_F32("cross_entropy", dlogits);
  lt_cpu_cross_entropy(lt_f32(losses), lt_f32(dlogits), lt_f32(logits), lt_i32(targets), n, v,
                       ignore_index, grad_scale);
  return LT_OK;
}

// The shard ops' operands: logits (N, V) f32, targets (N) i32, stats (3, N) f32.
static int check_shard_ce(const char *op, lt_tensor stats, lt_tensor logits, lt_tensor targets) {
  const int64_t v = logits.shape[logits.ndim - 1], n = lt_numel(logits) / v;
  EXPECT(logits.dtype == LT_F32, op, "logits must be f32", logits, logits);
  EXPECT(lt_numel(stats) == 3 * n && stats.dtype == LT_F32, op, "stats must be (3, N) f32", stats,
         logits);
  EXPECT(lt_numel(targets) == n && targets.dtype == LT_I32, op, "targets vs logits rows", targets,
         logits);
  return LT_OK;
}

int lt_cross_entropy_shard_max(lt_ctx *ctx, lt_tensor stats, lt_tensor logits, lt_tensor targets,
                               int64_t vocab_start) {
  LT_TRY(check_shard_ce("cross_entropy_shard_max", stats, logits, targets));
  CPU_ONLY("cross_entropy_shard_max");
  const int64_t v = logits.shape[logits.ndim - 1];
  lt_cpu_cross_entropy_shard_max(lt_f32(stats), lt_f32(logits), lt_i32(targets),
                                 lt_numel(logits) / v, v, vocab_start);
  return LT_OK;
}

int lt_cross_entropy_shard_sum_exp(lt_ctx *ctx, lt_tensor stats, lt_tensor logits) {
  const int64_t v = logits.shape[logits.ndim - 1], n = lt_numel(logits) / v;
  EXPECT(lt_numel(stats) == 3 * n && stats.dtype == LT_F32 && logits.dtype == LT_F32,
         "cross_entropy_shard_sum_exp", "stats must be (3, N) f32 for f32 logits (N, V)", stats,
         logits);
  CPU_ONLY("cross_entropy_shard_sum_exp");
  lt_cpu_cross_entropy_shard_sum_exp(lt_f32(stats), lt_f32(logits), n, v);
  return LT_OK;
}

int lt_cross_entropy_shard_finish(lt_ctx *ctx, lt_tensor losses, lt_tensor logits,
                                  lt_tensor targets, lt_tensor stats, int64_t vocab_start,
                                  int ignore_index, bool want_grad, float grad_scale) {
  LT_TRY(check_shard_ce("cross_entropy_shard_finish", stats, logits, targets));
  const int64_t v = logits.shape[logits.ndim - 1], n = lt_numel(logits) / v;
  EXPECT(lt_numel(losses) == n && losses.dtype == LT_F32, "cross_entropy_shard_finish",
         "losses must be (N) f32", losses, logits);
  CPU_ONLY("cross_entropy_shard_finish");
  lt_cpu_cross_entropy_shard_finish(lt_f32(losses), lt_f32(logits), lt_i32(targets), lt_f32(stats),
                                    n, v, vocab_start, ignore_index, want_grad, grad_scale);
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
  EXPECT(!spec->head_gates.data || (lt_numel(spec->head_gates) == dims->b * dims->tq * dims->hq &&
                                    spec->head_gates.dtype == LT_F32),
         op, "head gates must be (B, Tq, Hq) f32", spec->head_gates, q);
  const lt_attn_sparsity *p = &spec->sparse;
  const bool blocks = p->local_blocks > 0 || p->stride > 0 || p->global_blocks > 0;
  if (p->window < 0 || p->sinks < 0 || p->block_size < 0 || p->local_blocks < 0 || p->stride < 0 ||
      p->global_blocks < 0 || (blocks && p->block_size == 0))
    return lt_fail(LT_ERR_INTERNAL,
                   "internal error: %s: sparse pattern with window %d, sinks %d, block_size %d, "
                   "local_blocks %d, stride %d, global_blocks %d (please report this)",
                   op, p->window, p->sinks, p->block_size, p->local_blocks, p->stride,
                   p->global_blocks);
  return LT_OK;
}

int lt_attn_fwd(lt_ctx *ctx, lt_tensor o, lt_tensor lse, lt_tensor q, lt_tensor k, lt_tensor v,
                const lt_attn_spec *spec) {
  lt_cpu_attn_dims dims;
  LT_TRY(attn_dims("attn_fwd", &dims, q, k, v, spec));
  EXPECT(lt_same_shape(o, q), "attn_fwd", "o vs q", o, q);
  EXPECT(lt_numel(lse) == dims.b * dims.hq * dims.tq && lse.dtype == LT_F32, "attn_fwd",
         "lse must be (B, Hq, Tq) f32", lse, q);
  const lt_tensor gated = spec->gated_out;
  EXPECT(!gated.data || (lt_same_shape(gated, o) && gated.dtype == o.dtype), "attn_fwd",
         "gated_out must be shaped and typed as o", gated, o);
  EXPECT(!gated.data || spec->head_gates.data, "attn_fwd", "gated_out needs head gates", gated, o);
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

static int check_attn_bwd(const char *op, lt_cpu_attn_dims *dims, lt_tensor dq, lt_tensor dk,
                          lt_tensor dv, lt_tensor dout, lt_tensor q, lt_tensor k, lt_tensor v,
                          const lt_attn_spec *spec) {
  LT_TRY(attn_dims(op, dims, q, k, v, spec));
  EXPECT(lt_same_shape(dq, q) && lt_same_shape(dout, q), op, "dq/dout vs q", dq, q);
  EXPECT(lt_same_shape(dk, k) && lt_same_shape(dv, v), op, "dk/dv vs k", dk, k);
  return LT_OK;
}

int lt_attn_bwd(lt_ctx *ctx, lt_tensor dq, lt_tensor dk, lt_tensor dv, lt_tensor dout, lt_tensor q,
                lt_tensor k, lt_tensor v, lt_tensor lse, lt_tensor delta,
                const lt_attn_spec *spec) {
  lt_cpu_attn_dims dims;
  LT_TRY(check_attn_bwd("attn_bwd", &dims, dq, dk, dv, dout, q, k, v, spec));
  ON_CUDA(lt_cuda_attn_bwd(ctx, dq, dk, dv, dout, q, k, v, lse, delta, spec));
  lt_cpu_attn_bwd(lt_f32(dq), lt_f32(dk), lt_f32(dv), lt_f32(dout), lt_f32(q), lt_f32(k), lt_f32(v),
                  lt_f32(lse), lt_f32(delta), &dims, spec);
  return LT_OK;
}

int lt_attn_bwd_rope(lt_ctx *ctx, lt_tensor dqkv, lt_tensor dq, lt_tensor dk, lt_tensor dv,
                     lt_tensor dout, lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor lse,
                     lt_tensor delta, const lt_attn_spec *spec, lt_tensor pos, float theta) {
  int64_t n;
  LT_TRY(check_rope(dq, dk, dv, dqkv, pos, &n));
  EXPECT(q.ndim == 4 && k.ndim == 4 && q.shape[1] == k.shape[1], "attn_bwd_rope",
         "queries and keys must be the same tokens", q, k);
  lt_cpu_attn_dims dims;
  LT_TRY(check_attn_bwd("attn_bwd_rope", &dims, dq, dk, dv, dout, q, k, v, spec));
  ON_CUDA(lt_cuda_attn_bwd_rope(ctx, dqkv, dq, dout, q, k, v, lse, delta, spec, pos, theta));
  // The two ops' CPU kernels, their operands checked above.
  lt_cpu_attn_bwd(lt_f32(dq), lt_f32(dk), lt_f32(dv), lt_f32(dout), lt_f32(q), lt_f32(k), lt_f32(v),
                  lt_f32(lse), lt_f32(delta), &dims, spec);
  lt_cpu_rope_qkv_bwd(lt_f32(dqkv), lt_f32(dq), lt_f32(dk), lt_f32(dv), lt_i32(pos), n,
                      (int)q.shape[2], (int)k.shape[2], (int)q.shape[3], theta);
  return LT_OK;
}

// The sizes of a routing: N tokens, R routed heads, K chosen, from the tensors' shapes.
static int moh_route_dims(const char *op, lt_tensor gates, lt_tensor probs, lt_tensor topk,
                          lt_tensor load, int n_shared, int64_t *n, int *routed, int *k) {
  EXPECT(gates.ndim == 2 && probs.ndim == 2 && topk.ndim == 2, op,
         "expected 2-D gates, probs, topk", gates, probs);
  *n = gates.shape[0], *routed = (int)gates.shape[1] - n_shared, *k = (int)topk.shape[1];
  const int64_t logits = (n_shared >= 2 ? n_shared : 0) + *routed + (n_shared >= 1 ? 2 : 0);
  EXPECT(n_shared >= 0 && *routed >= 1 && *routed <= LT_MOH_MAX_HEADS, op,
         "routed heads (gates minus shared)", gates, gates);
  EXPECT(probs.shape[0] == *n && probs.shape[1] == logits, op, "probs vs gates", probs, gates);
  EXPECT(topk.shape[0] == *n && *k >= 1 && *k <= *routed && topk.dtype == LT_I32, op,
         "topk must be (N, K) i32 with K <= routed heads", topk, gates);
  EXPECT(lt_numel(load) == 2 * *routed && load.dtype == LT_F32, op, "load must be (2, R) f32", load,
         gates);
  EXPECT(gates.dtype == LT_F32 && probs.dtype == LT_F32, op, "gates and probs must be f32", gates,
         probs);
  return LT_OK;
}

int lt_moh_route_fwd(lt_ctx *ctx, lt_tensor gates, lt_tensor probs, lt_tensor topk, lt_tensor load,
                     lt_tensor logits, int n_shared) {
  int64_t n = 0;
  int routed = 0, k = 0;
  LT_TRY(moh_route_dims("moh_route_fwd", gates, probs, topk, load, n_shared, &n, &routed, &k));
  EXPECT(lt_same_shape(logits, probs), "moh_route_fwd", "logits vs probs", logits, probs);
  ON_CUDA(lt_cuda_moh_route_fwd(ctx, gates, probs, topk, load, logits, n_shared));
  EXPECT_F32("moh_route_fwd", logits);
  lt_cpu_moh_route_fwd(lt_f32(gates), lt_f32(probs), lt_i32(topk), lt_f32(load), lt_f32(logits), n,
                       n_shared, routed, k);
  return LT_OK;
}

int lt_moh_route_bwd(lt_ctx *ctx, lt_tensor dlogits, lt_tensor dgates, lt_tensor probs,
                     lt_tensor topk, lt_tensor load, int n_shared, float balance_grad) {
  int64_t n = 0;
  int routed = 0, k = 0;
  LT_TRY(moh_route_dims("moh_route_bwd", dgates, probs, topk, load, n_shared, &n, &routed, &k));
  EXPECT(lt_same_shape(dlogits, probs), "moh_route_bwd", "dlogits vs probs", dlogits, probs);
  ON_CUDA(lt_cuda_moh_route_bwd(ctx, dlogits, dgates, probs, topk, load, n_shared, balance_grad));
  EXPECT_F32("moh_route_bwd", dlogits);
  lt_cpu_moh_route_bwd(lt_f32(dlogits), lt_f32(dgates), lt_f32(probs), lt_i32(topk), lt_f32(load),
                       n, n_shared, routed, k, balance_grad);
  return LT_OK;
}

static int check_head_gate(const char *op, lt_tensor x, lt_tensor gates) {
  EXPECT(x.ndim >= 2, op, "x must be (N, H, D) or (B, T, H, D)", x, gates);
  EXPECT(lt_numel(gates) * x.shape[x.ndim - 1] == lt_numel(x) && gates.dtype == LT_F32, op,
         "gates must be (N, H) f32 for x (N, H, D)", gates, x);
  return LT_OK;
}

int lt_head_gate_fwd(lt_ctx *ctx, lt_tensor out, lt_tensor x, lt_tensor gates) {
  LT_TRY(check_head_gate("head_gate_fwd", x, gates));
  EXPECT(lt_numel(out) == lt_numel(x), "head_gate_fwd", "out vs x", out, x);
  ON_CUDA(lt_cuda_head_gate_fwd(ctx, out, x, gates));
  const int d = (int)x.shape[x.ndim - 1], h = (int)x.shape[x.ndim - 2];
  lt_cpu_head_gate_fwd(lt_f32(out), lt_f32(x), lt_f32(gates), lt_numel(gates) / h, h, d);
  return LT_OK;
}

int lt_head_gate_bwd(lt_ctx *ctx, lt_tensor dx, lt_tensor dgates, lt_tensor dout, lt_tensor x,
                     lt_tensor gates) {
  LT_TRY(check_head_gate("head_gate_bwd", x, gates));
  EXPECT(lt_numel(dx) == lt_numel(x) && lt_numel(dout) == lt_numel(x), "head_gate_bwd",
         "dx/dout vs x", dout, x);
  EXPECT(lt_numel(dgates) == lt_numel(gates) && dgates.dtype == LT_F32, "head_gate_bwd",
         "dgates vs gates", dgates, gates);
  ON_CUDA(lt_cuda_head_gate_bwd(ctx, dx, dgates, dout, x, gates));
  const int d = (int)x.shape[x.ndim - 1], h = (int)x.shape[x.ndim - 2];
  lt_cpu_head_gate_bwd(lt_f32(dx), lt_f32(dgates), lt_f32(dout), lt_f32(x), lt_f32(gates),
                       lt_numel(gates) / h, h, d);
  return LT_OK;
}

int lt_head_gate_bwd_delta(lt_ctx *ctx, lt_tensor d_o, lt_tensor dgates, lt_tensor delta,
                           lt_tensor d_gated, lt_tensor o, lt_tensor gates) {
  const char *op = "head_gate_bwd_delta";
  EXPECT(o.ndim == 4 && lt_same_shape(d_o, o) && lt_same_shape(d_gated, o), op,
         "d_o, d_gated and o must be (B, T, H, D) alike", d_gated, o);
  const int64_t rows = o.shape[0] * o.shape[1] * o.shape[2];
  EXPECT(lt_numel(gates) == rows && gates.dtype == LT_F32, op, "gates must be (B*T, H) f32", gates,
         o);
  EXPECT(lt_numel(dgates) == rows && dgates.dtype == LT_F32, op, "dgates must be (B*T, H) f32",
         dgates, o);
  EXPECT(lt_numel(delta) == rows && delta.dtype == LT_F32, op, "delta must be (B, H, T) f32", delta,
         o);
  ON_CUDA(lt_cuda_head_gate_bwd_delta(ctx, d_o, dgates, delta, d_gated, o, gates));
  lt_cpu_head_gate_bwd_delta(lt_f32(d_o), lt_f32(dgates), lt_f32(delta), lt_f32(d_gated), lt_f32(o),
                             lt_f32(gates), o.shape[0], o.shape[1], (int)o.shape[2],
                             (int)o.shape[3]);
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

// The (N, k) choice tensors of one routing: same shape, i32 or f32 as named.
static int check_choices(const char *op, lt_tensor a, lt_tensor b) {
  EXPECT(a.ndim == 2 && lt_same_shape(a, b), op, "choices must be (N, k) alike", a, b);
  return LT_OK;
}

int lt_moe_route(lt_ctx *ctx, lt_tensor gate, lt_tensor expert, lt_tensor probs, lt_tensor lse,
                 lt_tensor prob_sum, lt_tensor logits, bool renormalize) {
  LT_TRY(check_choices("moe_route", gate, expert));
  const int64_t n = logits.shape[0], e = logits.shape[1], k = gate.shape[1];
  EXPECT(logits.ndim == 2 && lt_same_shape(probs, logits) && gate.shape[0] == n, "moe_route",
         "logits and probs (N, E), gate (N, k)", logits, gate);
  EXPECT(k >= 1 && k <= e, "moe_route", "top-k must be 1..E", gate, logits);
  EXPECT(lt_numel(lse) == n && lt_numel(prob_sum) == e, "moe_route", "lse (N), prob_sum (E)", lse,
         prob_sum);
  EXPECT(expert.dtype == LT_I32 && gate.dtype == LT_F32 && probs.dtype == LT_F32, "moe_route",
         "expert i32, gate and probs f32", expert, gate);
  ON_CUDA(lt_cuda_moe_route(ctx, gate, expert, probs, lse, prob_sum, logits, renormalize));
  EXPECT_F32("moe_route", logits);
  lt_cpu_moe_route(lt_f32(gate), lt_i32(expert), lt_f32(probs), lt_f32(lse), lt_f32(prob_sum),
                   lt_f32(logits), n, (int)e, (int)k, renormalize);
  return LT_OK;
}

int lt_moe_route_bwd(lt_ctx *ctx, lt_tensor dlogits, lt_tensor dgate, lt_tensor gate,
                     lt_tensor expert, lt_tensor probs, lt_tensor lse, lt_tensor balance,
                     float z_scale, bool renormalize) {
  LT_TRY(check_choices("moe_route_bwd", gate, expert));
  LT_TRY(check_choices("moe_route_bwd", dgate, gate));
  const int64_t n = probs.shape[0], e = probs.shape[1];
  EXPECT(probs.ndim == 2 && lt_same_shape(dlogits, probs) && gate.shape[0] == n, "moe_route_bwd",
         "dlogits and probs (N, E), gate (N, k)", dlogits, gate);
  EXPECT(lt_numel(lse) == n && lt_numel(balance) == e, "moe_route_bwd", "lse (N), balance (E)", lse,
         balance);
  ON_CUDA(lt_cuda_moe_route_bwd(ctx, dlogits, dgate, gate, expert, probs, lse, balance, z_scale,
                                renormalize));
  EXPECT_F32("moe_route_bwd", dlogits);
  lt_cpu_moe_route_bwd(lt_f32(dlogits), lt_f32(dgate), lt_f32(gate), lt_i32(expert), lt_f32(probs),
                       lt_f32(lse), lt_f32(balance), z_scale, n, (int)e, (int)gate.shape[1],
                       renormalize);
  return LT_OK;
}

int lt_moe_dispatch_plan(lt_ctx *ctx, lt_tensor slot_row, lt_tensor row_token, lt_tensor offsets,
                         lt_tensor counts, lt_tensor expert, int64_t capacity) {
  LT_TRY(check_choices("moe_dispatch_plan", slot_row, expert));
  const int64_t e = lt_numel(counts);
  EXPECT(lt_numel(row_token) == lt_numel(expert) && lt_numel(offsets) == e + 1, "moe_dispatch_plan",
         "row_token (N*k), offsets (E+1), counts (E)", row_token, offsets);
  EXPECT(expert.dtype == LT_I32 && slot_row.dtype == LT_I32 && row_token.dtype == LT_I32 &&
             offsets.dtype == LT_I32 && counts.dtype == LT_I32,
         "moe_dispatch_plan", "expected i32", expert, offsets);
  ON_CUDA(lt_cuda_moe_dispatch_plan(ctx, slot_row, row_token, offsets, counts, expert, capacity));
  lt_cpu_moe_dispatch_plan(lt_i32(slot_row), lt_i32(row_token), lt_i32(offsets), lt_i32(counts),
                           lt_i32(expert), expert.shape[0], (int)e, (int)expert.shape[1], capacity);
  return LT_OK;
}

int lt_moe_dispatch(lt_ctx *ctx, lt_tensor xe, lt_tensor x, lt_tensor row_token) {
  EXPECT(x.ndim == 2 && xe.ndim == 2 && xe.shape[1] == x.shape[1], "moe_dispatch",
         "x (N, D), xe (R, D)", xe, x);
  EXPECT(row_token.dtype == LT_I32 && xe.shape[0] <= lt_numel(row_token), "moe_dispatch",
         "more rows than row_token names", xe, row_token);
  ON_CUDA(lt_cuda_moe_dispatch(ctx, xe, x, row_token));
  lt_cpu_moe_dispatch(lt_f32(xe), lt_f32(x), lt_i32(row_token), xe.shape[0], x.shape[1]);
  return LT_OK;
}

int lt_moe_dispatch_bwd(lt_ctx *ctx, lt_tensor dx, lt_tensor dxe, lt_tensor slot_row) {
  EXPECT(dx.ndim == 2 && dxe.ndim == 2 && dxe.shape[1] == dx.shape[1], "moe_dispatch_bwd",
         "dx (N, D), dxe (R, D)", dx, dxe);
  EXPECT(slot_row.ndim == 2 && slot_row.shape[0] == dx.shape[0] && slot_row.dtype == LT_I32,
         "moe_dispatch_bwd", "slot_row (N, k) i32", slot_row, dx);
  ON_CUDA(lt_cuda_moe_dispatch_bwd(ctx, dx, dxe, slot_row));
  lt_cpu_moe_dispatch_bwd(lt_f32(dx), lt_f32(dxe), lt_i32(slot_row), dx.shape[0],
                          (int)slot_row.shape[1], dx.shape[1]);
  return LT_OK;
}

static int check_combine(const char *op, lt_tensor out, lt_tensor ye, lt_tensor gate,
                         lt_tensor slot_row) {
  LT_TRY(check_choices(op, gate, slot_row));
  EXPECT(out.ndim == 2 && ye.ndim == 2 && ye.shape[1] == out.shape[1], op, "out (N, D), ye (R, D)",
         out, ye);
  EXPECT(gate.shape[0] == out.shape[0] && gate.dtype == LT_F32 && slot_row.dtype == LT_I32, op,
         "gate (N, k) f32, slot_row (N, k) i32", gate, out);
  return LT_OK;
}

int lt_moe_combine(lt_ctx *ctx, lt_tensor out, lt_tensor ye, lt_tensor gate, lt_tensor slot_row) {
  LT_TRY(check_combine("moe_combine", out, ye, gate, slot_row));
  ON_CUDA(lt_cuda_moe_combine(ctx, out, ye, gate, slot_row));
  lt_cpu_moe_combine(lt_f32(out), lt_f32(ye), lt_f32(gate), lt_i32(slot_row), out.shape[0],
                     (int)gate.shape[1], out.shape[1]);
  return LT_OK;
}

int lt_moe_combine_bwd(lt_ctx *ctx, lt_tensor dye, lt_tensor dgate, lt_tensor dout, lt_tensor ye,
                       lt_tensor gate, lt_tensor slot_row) {
  LT_TRY(check_combine("moe_combine_bwd", dout, ye, gate, slot_row));
  EXPECT(lt_same_shape(dye, ye), "moe_combine_bwd", "dye vs ye", dye, ye);
  LT_TRY(check_choices("moe_combine_bwd", dgate, gate));
  ON_CUDA(lt_cuda_moe_combine_bwd(ctx, dye, dgate, dout, ye, gate, slot_row));
  lt_cpu_moe_combine_bwd(lt_f32(dye), lt_f32(dgate), lt_f32(dout), lt_f32(ye), lt_f32(gate),
                         lt_i32(slot_row), dout.shape[0], (int)gate.shape[1], dout.shape[1]);
  return LT_OK;
}

// Group offsets must start at 0, never decrease, and end within the rows present.
static int check_groups(const char *op, const int64_t *rows, int64_t groups, lt_tensor a) {
  EXPECT(rows[0] == 0 && rows[groups] <= a.shape[0], op, "group offsets vs rows", a, a);
  for (int64_t g = 0; g < groups; g++)
    EXPECT(rows[g + 1] >= rows[g], op, "group offsets decrease", a, a);
  return LT_OK;
}

int lt_grouped_matmul(lt_ctx *ctx, lt_tensor c, lt_tensor a, lt_tensor b, bool trans_b,
                      const int64_t *rows) {
  EXPECT(a.ndim == 2 && c.ndim == 2 && b.ndim == 3, "grouped_matmul", "a, c 2-D; b (G, ., .)", a,
         b);
  const int64_t groups = b.shape[0], k = trans_b ? b.shape[2] : b.shape[1];
  const int64_t n = trans_b ? b.shape[1] : b.shape[2];
  EXPECT(a.shape[1] == k && c.shape[1] == n && c.shape[0] == a.shape[0], "grouped_matmul",
         "inner or output dimensions", a, b);
  LT_TRY(check_groups("grouped_matmul", rows, groups, a));
  ON_CUDA(lt_cuda_grouped_matmul(ctx, c, a, b, trans_b, rows));
  EXPECT_F32("grouped_matmul", a);
  lt_cpu_grouped_matmul(lt_f32(c), lt_f32(a), lt_f32(b), trans_b, rows, (int)groups, n, k);
  return LT_OK;
}

int lt_grouped_matmul_wgrad(lt_ctx *ctx, lt_tensor c, lt_tensor a, lt_tensor b,
                            const int64_t *rows) {
  EXPECT(a.ndim == 2 && b.ndim == 2 && c.ndim == 3 && a.shape[0] == b.shape[0],
         "grouped_matmul_wgrad", "a (R, M), b (R, N), c (G, M, N)", a, b);
  EXPECT(c.shape[1] == a.shape[1] && c.shape[2] == b.shape[1] && c.dtype == LT_F32,
         "grouped_matmul_wgrad", "c (G, M, N) f32", c, a);
  LT_TRY(check_groups("grouped_matmul_wgrad", rows, c.shape[0], a));
  ON_CUDA(lt_cuda_grouped_matmul_wgrad(ctx, c, a, b, rows));
  lt_cpu_grouped_matmul_wgrad(lt_f32(c), lt_f32(a), lt_f32(b), rows, (int)c.shape[0], a.shape[1],
                              b.shape[1]);
  return LT_OK;
}

static int linear_dims(const char *op, lt_cpu_linear_dims *dims, lt_tensor q, lt_tensor k,
                       lt_tensor v, const lt_linear_attn_spec *spec) {
  EXPECT(q.ndim == 4 && k.ndim == 4 && v.ndim == 4, op, "q, k, v must be (B, T, H, D)", q, k);
  *dims = (lt_cpu_linear_dims){.b = q.shape[0],
                               .t = q.shape[1],
                               .hq = (int)q.shape[2],
                               .hkv = (int)k.shape[2],
                               .d = (int)q.shape[3],
                               .e = (int)v.shape[3]};
  EXPECT(k.shape[0] == dims->b && k.shape[1] == dims->t && k.shape[3] == dims->d, op,
         "k vs q: batch, tokens or head width", q, k);
  EXPECT(v.shape[0] == dims->b && v.shape[1] == dims->t && v.shape[2] == dims->hkv, op,
         "v vs k: batch, tokens or heads", v, k);
  EXPECT(dims->hkv > 0 && dims->hq % dims->hkv == 0, op, "query heads per key/value head", q, k);
  EXPECT(spec->block >= 1, op, "block must be at least 1", q, q);
  EXPECT(!spec->log_decay.data ||
             (lt_numel(spec->log_decay) == dims->hq && spec->log_decay.dtype == LT_F32),
         op, "log_decay must be (Hq) f32", spec->log_decay, q);
  EXPECT(!spec->doc.data || (lt_numel(spec->doc) == dims->b * dims->t && spec->doc.dtype == LT_I32),
         op, "document ids must be (B, T) i32", spec->doc, q);
  return LT_OK;
}

static int expect_state(const char *op, lt_tensor state, const lt_cpu_linear_dims *dims) {
  EXPECT(state.ndim == 4 && lt_numel(state) == dims->b * dims->hq * dims->d * dims->e &&
             state.dtype == LT_F32,
         op, "state must be (B, Hq, D, E) f32", state, state);
  return LT_OK;
}

// A prefix state under a document mask needs to know its document.
static int expect_prefix(const char *op, lt_tensor prefix, const lt_cpu_linear_dims *dims,
                         const lt_linear_attn_spec *spec) {
  if (!prefix.data) return LT_OK;
  LT_TRY(expect_state(op, prefix, dims));
  EXPECT(!spec->doc.data || lt_numel(spec->prefix_doc) == dims->b, op,
         "prefix_doc must be (B) i32 with a prefix and document ids", spec->prefix_doc, prefix);
  return LT_OK;
}

int lt_linear_attn_fwd(lt_ctx *ctx, lt_tensor o, lt_tensor q, lt_tensor k, lt_tensor v,
                       lt_tensor prefix, const lt_linear_attn_spec *spec) {
  lt_cpu_linear_dims dims;
  LT_TRY(linear_dims("linear_attn_fwd", &dims, q, k, v, spec));
  EXPECT(o.ndim == 4 && o.shape[0] == dims.b && o.shape[1] == dims.t && o.shape[2] == dims.hq &&
             o.shape[3] == dims.e,
         "linear_attn_fwd", "o must be (B, T, Hq, E)", o, v);
  LT_TRY(expect_prefix("linear_attn_fwd", prefix, &dims, spec));
  ON_CUDA(lt_cuda_linear_attn_fwd(ctx, o, q, k, v, prefix, spec));
  EXPECT_F32("linear_attn_fwd", q);
  return lt_cpu_linear_attn_fwd(lt_f32(o), lt_f32(q), lt_f32(k), lt_f32(v), lt_f32(prefix), &dims,
                                spec);
}

int lt_linear_attn_bwd(lt_ctx *ctx, lt_tensor dq, lt_tensor dk, lt_tensor dv, lt_tensor dprefix,
                       lt_tensor dout, lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor prefix,
                       const lt_linear_attn_spec *spec) {
  lt_cpu_linear_dims dims;
  LT_TRY(linear_dims("linear_attn_bwd", &dims, q, k, v, spec));
  EXPECT(lt_same_shape(dq, q) && lt_same_shape(dk, k) && lt_same_shape(dv, v), "linear_attn_bwd",
         "dq, dk, dv vs q, k, v", dq, q);
  EXPECT(dout.ndim == 4 && lt_numel(dout) == dims.b * dims.t * dims.hq * dims.e, "linear_attn_bwd",
         "dout must be (B, T, Hq, E)", dout, v);
  LT_TRY(expect_prefix("linear_attn_bwd", prefix, &dims, spec));
  if (dprefix.data) LT_TRY(expect_state("linear_attn_bwd", dprefix, &dims));
  ON_CUDA(lt_cuda_linear_attn_bwd(ctx, dq, dk, dv, dprefix, dout, q, k, v, prefix, spec));
  EXPECT_F32("linear_attn_bwd", q);
  return lt_cpu_linear_attn_bwd(lt_f32(dq), lt_f32(dk), lt_f32(dv), lt_f32(dprefix), lt_f32(dout),
                                lt_f32(q), lt_f32(k), lt_f32(v), lt_f32(prefix), &dims, spec);
}

// The state kernels have no q: a shape-only view of it, with the state's query heads, lets them
// share linear_dims' checks.
static lt_tensor query_shape(lt_tensor state, lt_tensor k) {
  const int64_t hq = state.ndim == 4 ? state.shape[1] : 0;
  return lt_view4(NULL, k.dtype, k.device, k.shape[0], k.shape[1], hq, k.shape[3]);
}

int lt_linear_attn_state(lt_ctx *ctx, lt_tensor state, lt_tensor k, lt_tensor v,
                         const lt_linear_attn_spec *spec) {
  lt_cpu_linear_dims dims;
  EXPECT(k.ndim == 4, "linear_attn_state", "k must be (B, T, Hkv, D)", k, v);
  LT_TRY(linear_dims("linear_attn_state", &dims, query_shape(state, k), k, v, spec));
  LT_TRY(expect_state("linear_attn_state", state, &dims));
  ON_CUDA(lt_cuda_linear_attn_state(ctx, state, k, v, spec));
  EXPECT_F32("linear_attn_state", k);
  lt_cpu_linear_attn_state(lt_f32(state), lt_f32(k), lt_f32(v), &dims, spec);
  return LT_OK;
}

int lt_linear_attn_state_bwd(lt_ctx *ctx, lt_tensor dk, lt_tensor dv, lt_tensor dstate, lt_tensor k,
                             lt_tensor v, const lt_linear_attn_spec *spec) {
  lt_cpu_linear_dims dims;
  EXPECT(k.ndim == 4, "linear_attn_state_bwd", "k must be (B, T, Hkv, D)", k, v);
  LT_TRY(linear_dims("linear_attn_state_bwd", &dims, query_shape(dstate, k), k, v, spec));
  LT_TRY(expect_state("linear_attn_state_bwd", dstate, &dims));
  EXPECT(lt_same_shape(dk, k) && lt_same_shape(dv, v), "linear_attn_state_bwd", "dk, dv vs k, v",
         dk, k);
  ON_CUDA(lt_cuda_linear_attn_state_bwd(ctx, dk, dv, dstate, k, v, spec));
  EXPECT_F32("linear_attn_state_bwd", k);
  lt_cpu_linear_attn_state_bwd(lt_f32(dk), lt_f32(dv), lt_f32(dstate), lt_f32(k), lt_f32(v), &dims,
                               spec);
  return LT_OK;
}

static int check_linear_qkv(lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor qkv) {
  EXPECT(q.ndim == 3 && k.ndim == 3 && v.ndim == 3 && qkv.ndim == 3, "linear_qkv",
         "expected 3-D (N, H, D)", q, qkv);
  const int64_t n = q.shape[0], d = q.shape[2];
  EXPECT(k.shape[0] == n && v.shape[0] == n && qkv.shape[0] == n, "linear_qkv", "token counts", q,
         qkv);
  EXPECT(k.shape[2] == d && qkv.shape[2] == d && (v.shape[2] == d || v.shape[2] == d + 1),
         "linear_qkv", "head widths (v: D or D + 1)", q, v);
  EXPECT(k.shape[1] == v.shape[1] && qkv.shape[1] == q.shape[1] + 2 * k.shape[1], "linear_qkv",
         "head counts", qkv, k);
  return LT_OK;
}

int lt_linear_qkv_fwd(lt_ctx *ctx, lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor qkv,
                      lt_feature_map map) {
  LT_TRY(check_linear_qkv(q, k, v, qkv));
  ON_CUDA(lt_cuda_linear_qkv_fwd(ctx, q, k, v, qkv, map));
  lt_cpu_linear_qkv_fwd(lt_f32(q), lt_f32(k), lt_f32(v), lt_f32(qkv), q.shape[0], (int)q.shape[1],
                        (int)k.shape[1], (int)q.shape[2], (int)v.shape[2], map);
  return LT_OK;
}

int lt_linear_qkv_bwd(lt_ctx *ctx, lt_tensor dqkv, lt_tensor dq, lt_tensor dk, lt_tensor dv,
                      lt_tensor qkv, lt_feature_map map) {
  LT_TRY(check_linear_qkv(dq, dk, dv, qkv));
  EXPECT(lt_same_shape(dqkv, qkv), "linear_qkv_bwd", "dqkv vs qkv", dqkv, qkv);
  ON_CUDA(lt_cuda_linear_qkv_bwd(ctx, dqkv, dq, dk, dv, qkv, map));
  lt_cpu_linear_qkv_bwd(lt_f32(dqkv), lt_f32(dq), lt_f32(dk), lt_f32(dv), lt_f32(qkv), dq.shape[0],
                        (int)dq.shape[1], (int)dk.shape[1], (int)dq.shape[2], (int)dv.shape[2],
                        map);
  return LT_OK;
}

static int check_linear_out(lt_tensor y, lt_tensor rstd, lt_tensor o, lt_tensor u,
                            lt_linear_norm norm, lt_gate gate) {
  EXPECT(o.ndim == 3, "linear_out", "o must be (N, H, E)", o, y);
  const int64_t n = o.shape[0], h = o.shape[1], e = o.shape[2];
  const int64_t d = norm == LT_LINEAR_NORM_DENOMINATOR ? e - 1 : e;
  EXPECT(d >= 1 && lt_numel(y) == n * h * d, "linear_out",
         "y must be (N, H*D), o (N, H, D + 1) with the denominator", y, o);
  EXPECT(gate == LT_GATE_NONE || lt_same_shape(u, y), "linear_out", "gate u vs y", u, y);
  EXPECT(norm != LT_LINEAR_NORM_RMS || (lt_numel(rstd) == n && rstd.dtype == LT_F32), "linear_out",
         "rstd must be (N) f32", rstd, o);
  return LT_OK;
}

// A split row's statistic, (N) f32, given only with the RMS normalisation.
static int check_row_stat(lt_tensor row_stat, lt_tensor o, lt_linear_norm norm) {
  if (!row_stat.data) return LT_OK;
  EXPECT(norm == LT_LINEAR_NORM_RMS && lt_numel(row_stat) == o.shape[0] && row_stat.dtype == LT_F32,
         "linear_out", "row_stat must be (N) f32, and only with the RMS normalisation", row_stat,
         o);
  return LT_OK;
}

int lt_linear_out_fwd(lt_ctx *ctx, lt_tensor y, lt_tensor rstd, lt_tensor o, lt_tensor u,
                      lt_linear_norm norm, lt_gate gate, float eps, lt_tensor row_stat) {
  LT_TRY(check_linear_out(y, rstd, o, u, norm, gate));
  LT_TRY(check_row_stat(row_stat, o, norm));
  ON_CUDA(lt_cuda_linear_out_fwd(ctx, y, rstd, o, u, norm, gate, eps, row_stat));
  const int e = (int)o.shape[2], d = norm == LT_LINEAR_NORM_DENOMINATOR ? e - 1 : e;
  lt_cpu_linear_out_fwd(lt_f32(y), lt_f32(rstd), lt_f32(o), lt_f32(u), o.shape[0], (int)o.shape[1],
                        d, e, norm, gate, eps, lt_f32(row_stat));
  return LT_OK;
}

int lt_linear_out_bwd(lt_ctx *ctx, lt_tensor d_o, lt_tensor du, lt_tensor dy, lt_tensor o,
                      lt_tensor u, lt_tensor rstd, lt_linear_norm norm, lt_gate gate, float eps,
                      lt_tensor row_stat) {
  LT_TRY(check_linear_out(dy, rstd, o, u, norm, gate));
  LT_TRY(check_row_stat(row_stat, o, norm));
  EXPECT(lt_same_shape(d_o, o) && (gate == LT_GATE_NONE || lt_same_shape(du, u)), "linear_out_bwd",
         "d_o vs o or du vs u", d_o, o);
  ON_CUDA(lt_cuda_linear_out_bwd(ctx, d_o, du, dy, o, u, rstd, norm, gate, eps, row_stat));
  const int e = (int)o.shape[2], d = norm == LT_LINEAR_NORM_DENOMINATOR ? e - 1 : e;
  lt_cpu_linear_out_bwd(lt_f32(d_o), lt_f32(du), lt_f32(dy), lt_f32(o), lt_f32(u), lt_f32(rstd),
                        o.shape[0], (int)o.shape[1], d, e, norm, gate, eps, lt_f32(row_stat));
  return LT_OK;
}

int lt_linear_out_rms_stat(lt_ctx *ctx, lt_tensor row_stat, lt_tensor o, int64_t row_width) {
  EXPECT(o.ndim == 3 && lt_numel(row_stat) == o.shape[0] && row_stat.dtype == LT_F32,
         "linear_out_rms_stat", "o must be (N, H, D), row_stat (N) f32", row_stat, o);
  EXPECT(row_width >= o.shape[1] * o.shape[2], "linear_out_rms_stat",
         "the whole row is narrower than this rank's part", o, o);
  ON_CUDA(lt_cuda_linear_out_rms_stat(ctx, row_stat, o, row_width));
  lt_cpu_linear_out_rms_stat(lt_f32(row_stat), lt_f32(o), o.shape[0], o.shape[1] * o.shape[2],
                             row_width);
  return LT_OK;
}

int lt_linear_out_rms_grad_stat(lt_ctx *ctx, lt_tensor row_stat, lt_tensor dy, lt_tensor o,
                                lt_tensor u, lt_tensor rstd, lt_gate gate, int64_t row_width) {
  LT_TRY(check_linear_out(dy, rstd, o, u, LT_LINEAR_NORM_RMS, gate));
  EXPECT(lt_numel(row_stat) == o.shape[0] && row_stat.dtype == LT_F32, "linear_out_rms_grad_stat",
         "row_stat must be (N) f32", row_stat, o);
  EXPECT(row_width >= o.shape[1] * o.shape[2], "linear_out_rms_grad_stat",
         "the whole row is narrower than this rank's part", o, o);
  ON_CUDA(lt_cuda_linear_out_rms_grad_stat(ctx, row_stat, dy, o, u, rstd, gate, row_width));
  lt_cpu_linear_out_rms_grad_stat(lt_f32(row_stat), lt_f32(dy), lt_f32(o), lt_f32(u), lt_f32(rstd),
                                  o.shape[0], o.shape[1] * o.shape[2], row_width, gate);
  return LT_OK;
}
