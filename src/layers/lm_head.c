#include "layers/lm_head.h"

#include "core/error.h"
#include "layers/linear.h"

// Rows per logits chunk: about 256 MiB of f32 logits, at least one row. Larger chunks make the
// head's three matmuls efficient (512-row chunks of a 32K vocabulary ran them at a third of the
// GPU's rate) and cut the passes over the f32 weight gradient they accumulate into.
enum { LOGITS_CHUNK_BYTES = 256 << 20 };

int lt_lm_head_create(lt_lm_head *head, lt_params *params, const lt_param *tied, int64_t vocab,
                      int64_t d_model, float std) {
  *head = (lt_lm_head){.vocab = vocab, .weight = tied ? tied : &head->own};
  if (tied) return LT_OK;
  return lt_params_add(params, &head->own, "lm_head", 2, LT_SHAPE(vocab, d_model),
                       (lt_param_spec){.init = LT_INIT_NORMAL, .std = std, .group = LT_GROUP_HEAD});
}

int lt_lm_head_plan(lt_lm_head *head, const lt_plan *p) {
  const int64_t n = p->B * p->T;
  head->chunk_rows = LOGITS_CHUNK_BYTES / (head->vocab * 4);
  if (head->chunk_rows < 1) head->chunk_rows = 1;
  if (head->chunk_rows > n) head->chunk_rows = n;
  LT_TRY(lt_arena_alloc1(p->acts, &head->losses, LT_F32, n));
  size_t mark = lt_arena_mark(p->scratch);
  LT_TRY(lt_arena_alloc2(p->scratch, &head->logits, LT_F32, head->chunk_rows, head->vocab));
  head->dlogits = head->logits;
  if (p->act_dtype != LT_F32)
    LT_TRY(
        lt_arena_alloc2(p->scratch, &head->dlogits, p->act_dtype, head->chunk_rows, head->vocab));
  lt_arena_release(p->scratch, mark);
  return LT_OK;
}

int lt_lm_head_loss(lt_lm_head *head, lt_ctx *ctx, lt_tensor x, lt_tensor targets, float grad_scale,
                    lt_tensor dx) {
  lt_tensor x2 = lt_flatten2(x), dx2 = dx.data ? lt_flatten2(dx) : dx;
  const int64_t n = x2.shape[0];
  const bool want_grad = dx.data != NULL;
  for (int64_t start = 0; start < n; start += head->chunk_rows) {
    int64_t rows = n - start < head->chunk_rows ? n - start : head->chunk_rows;
    lt_tensor logits = lt_rows(head->logits, 0, rows);
    lt_tensor dlogits = want_grad ? lt_rows(head->dlogits, 0, rows) : (lt_tensor){0};
    lt_tensor x_chunk = lt_rows(x2, start, rows);
    LT_TRY(lt_linear_forward(ctx, logits, x_chunk, head->weight->value));
    LT_TRY(lt_cross_entropy(ctx, lt_rows(head->losses, start, rows), dlogits, logits,
                            lt_rows(targets, start, rows), LT_IGNORE_INDEX, grad_scale));
    if (want_grad)
      LT_TRY(lt_linear_backward(ctx, lt_rows(dx2, start, rows), head->weight->grad, dlogits,
                                x_chunk, head->weight->value));
  }
  return LT_OK;
}

int lt_lm_head_logits(lt_lm_head *head, lt_ctx *ctx, lt_tensor logits, lt_tensor x) {
  (void)head;
  return lt_linear_forward(ctx, logits, x, head->weight->value);
}
