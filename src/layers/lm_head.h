// The LM head and the cross-entropy loss, fused: logits are made a chunk of rows at a time and
// turned into their gradient in place, so the (tokens x vocab) logits never exist whole. At
// T = 65536 and a 32K vocab that whole tensor would be 8 GiB in f32.
//
// Under tensor parallelism the head is vocab-parallel (Megatron-LM): each rank holds vocab / tp
// rows of the weight (the embedding's own rows when tied), computes those columns of the logits,
// and the loss is assembled from per-row statistics summed over the ranks (kernels.h,
// lt_cross_entropy_shard_*): the full logits are never gathered.
#ifndef LT_LM_HEAD_H
#define LT_LM_HEAD_H

#include "layers/layer.h"
#include "parallel/tp.h"

typedef struct lt_lm_head {
  lt_param own;           // (vocab, d_model), or this rank's rows of it, when untied
  const lt_param *weight; // &own, or the embedding's weight when tied
  int64_t vocab;          // the columns of the logits this rank computes
  int64_t vocab_start;    // the first of them in the whole vocabulary
  int64_t chunk_rows;
  lt_tp tp;
  lt_tensor losses; // (B*T) f32, per-token loss of the last call (0 where ignored)
  lt_tensor logits; // scratch (chunk_rows, vocab) in the activations' dtype (f32 under tensor
                    // parallelism), then their gradient in place; the loss sums in f32
  lt_tensor stats;  // scratch (3 * chunk_rows) f32: a vocab-parallel chunk's row statistics
} lt_lm_head;

// Rows of logits per chunk for `vocab` columns and n tokens: as many as make 1 GiB of f32 logits
// (512 MiB in bf16), at least one row and at most n.
int64_t lt_lm_head_chunk_rows(int64_t vocab, int64_t n);

// `tied` is the embedding's weight to share, or NULL for a head of its own; `vocab` is the whole
// vocabulary.
int lt_lm_head_create(lt_lm_head *head, lt_params *params, const lt_param *tied, int64_t vocab,
                      int64_t d_model, float std);
int lt_lm_head_plan(lt_lm_head *head, const lt_plan *plan);
// Per-token losses of x (N, D) against targets into head->losses. When dx.data is set, also
// dx = d(grad_scale * sum of losses)/dx and the weight gradient += its share.
int lt_lm_head_loss(lt_lm_head *head, lt_ctx *ctx, lt_tensor x, lt_tensor targets, float grad_scale,
                    lt_tensor dx);
// Full logits (N, whole vocab) for evaluation and tests.
int lt_lm_head_logits(lt_lm_head *head, lt_ctx *ctx, lt_tensor logits, lt_tensor x);

#endif
