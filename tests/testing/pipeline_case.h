// The pipeline tests' case: a small model run two ways on the same micro-batches: split into the
// stages of a mesh's pp group (lt_pipeline_train_step), and whole in this process (the reference,
// micro-batch after micro-batch as the trainer runs them).
#ifndef LT_TEST_PIPELINE_CASE_H
#define LT_TEST_PIPELINE_CASE_H

#include <stdbool.h>
#include <stdint.h>

#include "model/model.h"
#include "parallel/mesh.h"
#include "parallel/pipeline.h"

typedef struct lt_pp_case {
  const char *attention, *ffn; // model.attention, model.ffn (NULL: softmax, swiglu)
  int n_layers;
  bool tie, recompute, documents;
  int64_t micro_batches, B, T; // B sequences of T tokens per micro-batch
  const char *pp_layers;       // parallel.pp_layers, or NULL for an even split
} lt_pp_case;

// One step's micro-batches, made from (case, step): every rank makes the same.
typedef struct lt_pp_data {
  int64_t B, T, count;
  int32_t *tokens, *targets, *pos, *doc; // count * B * T each; doc NULL without documents
  lt_batch batch;
  lt_aux_loss aux;
} lt_pp_data;

// A mesh of `pp` pipeline stages over the world (the other axes 1).
void lt_test_pp_mesh(lt_mesh *mesh, const lt_world *world, int pp, const char *pp_layers);
lt_model_config lt_test_pp_model_config(const lt_pp_case *c);
// The model of the case, initialised from a fixed seed and planned; mesh NULL for the whole one.
void lt_test_pp_model(lt_model *model, const lt_pp_case *c, const lt_mesh *mesh);

void lt_test_pp_data_make(lt_pp_data *d, const lt_pp_case *c, int step);
void lt_test_pp_data_free(lt_pp_data *d);
lt_micro_batches lt_test_pp_micro_batches(lt_pp_data *d);
// 1 / the step's target tokens, as the trainer scales each token's loss.
float lt_test_pp_grad_scale(const lt_pp_data *d);

// Zeroes the gradients and runs the step through the pipeline, or the whole model (mesh NULL)
// micro-batch after micro-batch; the loss and auxiliary sums as the trainer reports them.
void lt_test_pp_step(lt_model *model, lt_ctx *ctx, lt_pp_data *d, double *loss, double *aux,
                     lt_pipeline_trace *trace);

// The largest difference between a stage's tensors and the same-named ones of the reference,
// relative to each reference tensor's largest magnitude: the gradients (grads) or the weights.
double lt_test_pp_max_diff(const lt_model *stage, const lt_model *reference, bool grads);

// The checks, on a mesh of world->size pipeline stages; every rank also builds the whole model.
// One step: the loss, auxiliary losses and every gradient of this stage equal the reference's.
void lt_test_pp_expect_same_step(const lt_world *world, lt_ctx *ctx, const lt_pp_case *c);
// `steps` AdamW steps with clipping that binds: the same losses (bit for bit untied) and gradient
// norms at every step, the same weights (bit for bit untied), and a tied embedding's two copies
// equal bit for bit.
void lt_test_pp_expect_same_curve(const lt_world *world, lt_ctx *ctx, const lt_pp_case *c,
                                  int steps);
// The order each stage ran its forwards and backwards in ("F0 F1 B0 ..."), against
// expected[stage]; and the micro-batches in flight at most, against min(stages - stage, count).
void lt_test_pp_expect_order(const lt_world *world, lt_ctx *ctx, const lt_pp_case *c,
                             const char *const *expected);

#endif
