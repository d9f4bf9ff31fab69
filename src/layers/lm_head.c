#include "layers/lm_head.h"

#include "core/error.h"
#include "layers/linear.h"

// Rows per logits chunk: as many as make 1 GiB of f32 logits (8192 rows of a 32K vocabulary), at
// least one row. Larger chunks make the head's three matmuls efficient (512-row chunks of a 32K
// vocabulary ran them at a third of the GPU's rate) and cut the passes over the f32 weight
// gradient they accumulate into. On an H100, the 135M model's step at T=16384 B=2 (32768 tokens),
// with f32 logits: 256 MiB chunks 237K / 236K tokens/s, 512 MiB 238K / 239K, 1 GiB 240K / 239K,
// 2 and 4 GiB no faster (bench/results/h100-logits-chunk.log).
//
// The logits are in the activations' dtype, as PyTorch's autocast and Megatron-LM make them: a
// bf16 model's chunk is 512 MiB, the loss reads it once (its sums in f32) and writes the bf16
// gradient over it. f32 logits (f32 activations: the CPU; and tensor parallelism, whose
// vocab-parallel loss runs on f32) take 1 GiB, the gradient in place too.
enum { LOGITS_CHUNK_BYTES = 1 << 30 };

int64_t lt_lm_head_chunk_rows(int64_t vocab, int64_t n) {
  const int64_t rows = LOGITS_CHUNK_BYTES / (vocab * 4);
  return rows < 1 ? 1 : rows > n ? n : rows;
}

int lt_lm_head_create(lt_lm_head *head, lt_params *params, const lt_param *tied, int64_t vocab,
                      int64_t d_model, float std) {
  *head = (lt_lm_head){.weight = tied ? tied : &head->own, .tp = lt_tp_of(params)};
  // Tied or not, rank r holds the vocab rows that the embedding's rank r holds.
  head->vocab = lt_tp_count(&head->tp, vocab);
  head->vocab_start = lt_tp_start(&head->tp, vocab);
  if (tied) return LT_OK;
  lt_param_spec spec = {.init = LT_INIT_NORMAL, .std = std, .group = LT_GROUP_HEAD};
  return lt_params_add(params, &head->own, "lm_head", 2, LT_SHAPE(vocab, d_model),
                       lt_tp_shard(spec, &head->tp, 0, vocab));
}

int lt_lm_head_plan(lt_lm_head *head, const lt_plan *p) {
  const int64_t n = p->B * p->T;
  head->chunk_rows = lt_lm_head_chunk_rows(head->vocab, n);
  LT_TRY(lt_arena_alloc1(p->acts, &head->losses, LT_F32, n));
  size_t mark = lt_arena_mark(p->scratch);
  const lt_dtype dtype = head->tp.size > 1 ? LT_F32 : p->act_dtype;
  LT_TRY(lt_arena_alloc2(p->scratch, &head->logits, dtype, head->chunk_rows, head->vocab));
  if (head->tp.size > 1)
    LT_TRY(lt_arena_alloc1(p->scratch, &head->stats, LT_F32, 3 * head->chunk_rows));
  lt_arena_release(p->scratch, mark);
  return LT_OK;
}

// The loss (and, when dlogits.data is set, the gradient) of one chunk of rows. Vocab-parallel,
// each row's maximum, sum of exps and target logit are completed over the tp ranks (Megatron-LM's
// vocab_parallel_cross_entropy): two all-reduces of a few numbers per row, where gathering the
// logits would move the whole vocabulary.
static int chunk_loss(lt_lm_head *head, lt_ctx *ctx, lt_tensor losses, lt_tensor dlogits,
                      lt_tensor logits, lt_tensor targets, float grad_scale) {
  if (head->tp.size == 1)
    return lt_cross_entropy(ctx, losses, dlogits, logits, targets, LT_IGNORE_INDEX, grad_scale);
  // The vocab-parallel kernels write the gradient over the logits: f32 activations (the CPU) only;
  // config validation keeps tensor parallelism off CUDA until its collectives run on NCCL.
  const bool want_grad = dlogits.data != NULL;
  LT_ASSERT(!want_grad || dlogits.data == logits.data);
  const int64_t rows = logits.shape[0];
  lt_tensor stats = lt_view2(head->stats.data, LT_F32, head->stats.device, 3, rows);
  LT_TRY(lt_cross_entropy_shard_max(ctx, stats, logits, targets, head->vocab_start));
  LT_TRY(lt_tp_all_reduce_max(&head->tp, lt_rows(stats, 0, 1)));
  LT_TRY(lt_cross_entropy_shard_sum_exp(ctx, stats, logits));
  LT_TRY(lt_tp_all_reduce_sum(&head->tp, lt_rows(stats, 1, 2)));
  return lt_cross_entropy_shard_finish(ctx, losses, logits, targets, stats, head->vocab_start,
                                       LT_IGNORE_INDEX, want_grad, grad_scale);
}

int lt_lm_head_loss(lt_lm_head *head, lt_ctx *ctx, lt_tensor x, lt_tensor targets, float grad_scale,
                    lt_tensor dx) {
  lt_tensor x2 = lt_flatten2(x), dx2 = dx.data ? lt_flatten2(dx) : dx;
  const int64_t n = x2.shape[0];
  const bool want_grad = dx.data != NULL;
  for (int64_t start = 0; start < n; start += head->chunk_rows) {
    int64_t rows = n - start < head->chunk_rows ? n - start : head->chunk_rows;
    lt_tensor logits = lt_rows(head->logits, 0, rows);
    lt_tensor dlogits = want_grad ? logits : (lt_tensor){0}; // the gradient goes over the logits
    lt_tensor x_chunk = lt_rows(x2, start, rows);
    LT_TRY(lt_linear_forward(ctx, logits, x_chunk, head->weight->value));
    LT_TRY(chunk_loss(head, ctx, lt_rows(head->losses, start, rows), dlogits, logits,
                      lt_rows(targets, start, rows), grad_scale));
    if (want_grad)
      LT_TRY(lt_linear_backward(ctx, lt_rows(dx2, start, rows), head->weight->grad, dlogits,
                                x_chunk, head->weight->value));
  }
  // The head reads x on every rank (a column-parallel projection): its gradient is the sum of the
  // ranks' shares (Megatron's f, backward).
  return want_grad ? lt_tp_reduce_input_grad(&head->tp, dx) : LT_OK;
}

int lt_lm_head_logits(lt_lm_head *head, lt_ctx *ctx, lt_tensor logits, lt_tensor x) {
  if (head->tp.size == 1) return lt_linear_forward(ctx, logits, x, head->weight->value);
  // Each rank's columns, a chunk of rows at a time, gathered side by side.
  lt_tensor x2 = lt_flatten2(x);
  const int64_t n = x2.shape[0];
  for (int64_t start = 0; start < n; start += head->chunk_rows) {
    int64_t rows = n - start < head->chunk_rows ? n - start : head->chunk_rows;
    lt_tensor part = lt_rows(head->logits, 0, rows);
    LT_TRY(lt_linear_forward(ctx, part, lt_rows(x2, start, rows), head->weight->value));
    LT_TRY(lt_tp_gather_last_dim(&head->tp, lt_rows(logits, start, rows), part));
  }
  return LT_OK;
}
