// Token embedding: a (vocab, d_model) table looked up by token id.
#ifndef LT_EMBEDDING_H
#define LT_EMBEDDING_H

#include "kernels/kernels.h"
#include "model/params.h"

typedef struct lt_embedding {
  lt_param weight; // (vocab, d_model)
} lt_embedding;

int lt_embedding_create(lt_embedding *emb, lt_params *params, int64_t vocab, int64_t d_model,
                        float std);
int lt_embedding_forward(lt_ctx *ctx, const lt_embedding *emb, lt_tensor out, lt_tensor tokens);
// weight grad += scatter of dout by token
int lt_embedding_backward(lt_ctx *ctx, const lt_embedding *emb, lt_tensor dout, lt_tensor tokens);

#endif
