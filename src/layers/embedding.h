// Token embedding: a (vocab, d_model) table looked up by token id. Under tensor parallelism the
// table is vocab-parallel (Megatron-LM's VocabParallelEmbedding): each rank holds vocab / tp rows,
// looks up the tokens it holds (zero for the others) and the sum over the ranks completes every
// row.
#ifndef LT_EMBEDDING_H
#define LT_EMBEDDING_H

#include "kernels/kernels.h"
#include "model/params.h"
#include "parallel/tp.h"

typedef struct lt_embedding {
  lt_param weight; // (vocab, d_model), or this rank's rows of it
  lt_tp tp;
  int64_t vocab_start; // the first row this rank holds
} lt_embedding;

int lt_embedding_create(lt_embedding *emb, lt_params *params, int64_t vocab, int64_t d_model,
                        float std);
int lt_embedding_forward(lt_ctx *ctx, const lt_embedding *emb, lt_tensor out, lt_tensor tokens);
// weight grad += scatter of dout by token (dout is the same on every tensor-parallel rank)
int lt_embedding_backward(lt_ctx *ctx, const lt_embedding *emb, lt_tensor dout, lt_tensor tokens);

#endif
