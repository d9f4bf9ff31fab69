// The contract between the model and its layers.
//
// Autograd-lite: a layer is a forward/backward pair. forward() saves what backward() needs in
// the layer's own activation views; backward() reads them and the same input again. The model
// calls backward() in reverse order; there is no graph.
//
// Memory: before a step shape (B, T) is first used, the model calls plan() on each layer with
// two arenas. Saved activations come from `acts`; temporaries that live only inside one call come
// from `scratch`, where each layer releases what it took before returning, so all layers' scratch
// overlaps. The model runs planning once on measuring arenas and once for real, so the sizes
// are those of this code. It may plan again on another `acts` between a forward and its backward
// (pipeline parallelism keeps several micro-batches in flight, each with its own activations):
// everything backward reads from its forward must be in views that plan() sets, or be read back
// from them; plan() must hand out the same sizes every time, and do nothing else that costs.
#ifndef LT_LAYER_H
#define LT_LAYER_H

#include "core/arena.h"
#include "kernels/kernels.h"
#include "model/params.h"

// Auxiliary losses that layers add to the objective (MoE load balance, router z-loss). A layer's
// forward adds its weighted term to `sum` (reported beside the loss); its backward uses
// `grad_scale` as d(objective)/d(that term): each micro-batch's auxiliary losses count
// 1 / (micro-batches per optimizer step).
typedef struct lt_aux_loss {
  double sum;
  float grad_scale;
} lt_aux_loss;

// The tokens of one micro-batch on this rank, all (B*T) i32 on the compute device.
typedef struct lt_batch {
  int64_t B, T;
  lt_tensor tokens;  // inputs
  lt_tensor targets; // next tokens, LT_IGNORE_INDEX where there is none
  lt_tensor pos;     // absolute position of each token (RoPE, masks)
  lt_tensor doc;     // document id of each token, or data == NULL (no document mask)
  lt_aux_loss *aux;  // where auxiliary losses go; NULL when nothing collects them
} lt_batch;

#define LT_IGNORE_INDEX (-100)

typedef struct lt_plan {
  int64_t B, T;
  lt_dtype act_dtype; // activations: f32 on the CPU, bf16 on CUDA (statistics stay f32)
  lt_arena *acts;
  lt_arena *scratch;
} lt_plan;

// Standard deviations for a layer's weights, from the model's init scheme (model.init): `in` for
// projections that read the residual stream, `out` for those that write back into it.
typedef struct lt_init_stds {
  float in, out;
} lt_init_stds;

// A token-mixing or feed-forward sublayer of a block: (N, D) in, (N, D) out.
typedef struct lt_layer lt_layer;
typedef struct lt_layer_ops {
  const char *kind;
  int (*plan)(lt_layer *self, const lt_plan *plan);
  int (*forward)(lt_layer *self, lt_ctx *ctx, lt_tensor out, lt_tensor x, const lt_batch *batch);
  // dx = d(loss)/dx (overwritten), given dout and the forward's input x.
  int (*backward)(lt_layer *self, lt_ctx *ctx, lt_tensor dx, lt_tensor dout, lt_tensor x,
                  const lt_batch *batch);
  void (*destroy)(lt_layer *self);
} lt_layer_ops;

struct lt_layer {
  const lt_layer_ops *ops;
};

#endif
