#include "layers/embedding.h"

#include "core/error.h"

int lt_embedding_create(lt_embedding *emb, lt_params *params, int64_t vocab, int64_t d_model,
                        float std) {
  emb->tp = lt_tp_of(params);
  emb->vocab_start = lt_tp_start(&emb->tp, vocab);
  lt_param_spec spec = {.init = LT_INIT_NORMAL, .std = std, .group = LT_GROUP_EMBED};
  return lt_params_add(params, &emb->weight, "embed", 2, LT_SHAPE(vocab, d_model),
                       lt_tp_shard(spec, &emb->tp, 0, vocab));
}

int lt_embedding_forward(lt_ctx *ctx, const lt_embedding *emb, lt_tensor out, lt_tensor tokens) {
  if (emb->tp.size == 1) return lt_embedding_fwd(ctx, lt_flatten2(out), tokens, emb->weight.value);
  LT_TRY(
      lt_embedding_shard_fwd(ctx, lt_flatten2(out), tokens, emb->weight.value, emb->vocab_start));
  // Each row came from the one rank that holds its token, zeros from the others.
  return lt_tp_reduce_output(&emb->tp, out);
}

int lt_embedding_backward(lt_ctx *ctx, const lt_embedding *emb, lt_tensor dout, lt_tensor tokens) {
  if (emb->tp.size == 1) return lt_embedding_bwd(ctx, emb->weight.grad, lt_flatten2(dout), tokens);
  return lt_embedding_shard_bwd(ctx, emb->weight.grad, lt_flatten2(dout), tokens, emb->vocab_start);
}
