// Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"): softmax(q k^T) replaced
// by phi(q) phi(k)^T, so causal attention is a recurrence over a d x d state. Configured by
// model.linear.*: the feature map phi, an optional per-head decay of the state (RetNet's or
// ALiBi's rates), the normalisation (Katharopoulos' denominator, or an RMSNorm of the output as in
// TransNormer), an optional output gate, and the chunk size of the chunked computation.
#ifndef LT_ATTENTION_LINEAR_H
#define LT_ATTENTION_LINEAR_H

#include "core/config.h"
#include "layers/layer.h"

// model.linear.decay, in the order of its config choices.
typedef enum lt_linear_decay {
  LT_LINEAR_DECAY_NONE,
  LT_LINEAR_DECAY_RETNET,
  LT_LINEAR_DECAY_ALIBI
} lt_linear_decay;

int lt_linear_attention_create(lt_layer **out, lt_params *params, const char *prefix,
                               const lt_model_config *cfg, lt_init_stds stds);

#endif
