#include "layers/embedding.h"

int lt_embedding_create(lt_embedding *emb, lt_params *params, int64_t vocab, int64_t d_model,
                        float std) {
  return lt_params_add(
      params, &emb->weight, "embed", 2, LT_SHAPE(vocab, d_model),
      (lt_param_spec){.init = LT_INIT_NORMAL, .std = std, .group = LT_GROUP_EMBED});
}

int lt_embedding_forward(lt_ctx *ctx, const lt_embedding *emb, lt_tensor out, lt_tensor tokens) {
  return lt_embedding_fwd(ctx, lt_flatten2(out), tokens, emb->weight.value);
}

int lt_embedding_backward(lt_ctx *ctx, const lt_embedding *emb, lt_tensor dout, lt_tensor tokens) {
  return lt_embedding_bwd(ctx, emb->weight.grad, lt_flatten2(dout), tokens);
}
