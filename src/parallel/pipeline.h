// Pipeline parallelism: the model's blocks split into consecutive stages, one per rank of the pp
// group (lt_model_create places them: parallel.pp_layers), and the step's micro-batches run
// through them with the 1F1B schedule of PipeDream-Flush (Narayanan et al. 2021, "Efficient
// Large-Scale Language Model Training on GPU Clusters Using Megatron-LM"; Megatron-LM's
// forward_backward_pipelining_without_interleaving).
//
// Stage s of P with M micro-batches runs min(P - s - 1, M) warm-up forwards, then alternates one
// forward and one backward, then finishes the backwards it still owes. So at most P - s
// micro-batches are in flight on stage s, each with its own saved activations (lt_model slots,
// or with train.recompute just each block's input), and the gradients are those of running the
// micro-batches one after another: the schedule changes when work happens, not what it computes.
// Activations go forward and their gradients back point to point over the pp group.
#ifndef LT_PIPELINE_H
#define LT_PIPELINE_H

#include <stdbool.h>
#include <stdint.h>

#include "model/model.h"

typedef enum lt_pipeline_op { LT_PP_FORWARD, LT_PP_BACKWARD } lt_pipeline_op;

typedef struct lt_pipeline_action {
  lt_pipeline_op op;
  int micro; // which micro-batch
} lt_pipeline_action;

// One action of a stage with its transfers. A forward's input is the previous stage's activation
// and its output goes to the next stage (none on the first and last stage); a backward's input is
// the next stage's gradient and its output goes to the previous stage.
typedef struct lt_pipeline_step {
  lt_pipeline_action action;
  bool recv_first; // receive the input alone, before computing
  bool send_after; // send the output after computing ...
  bool recv_next;  // ... in one exchange with the next step's input (which then needs no
                   // recv_first): Megatron's send_forward_recv_backward and
                   // send_backward_recv_forward, in the steady 1F1B part only
} lt_pipeline_step;

// The steps of stage `stage` of `stages` over n_micro micro-batches: with `train`, the 1F1B order
// (2 * n_micro steps); without, the forwards alone (n_micro steps). Returns the step count.
int lt_pipeline_plan(int stage, int stages, int n_micro, bool train, lt_pipeline_step *out);
// The most micro-batches a stage keeps in flight under lt_pipeline_plan: min(stages - stage,
// n_micro) when training, 1 for forwards alone.
int lt_pipeline_slots(int stage, int stages, int n_micro, bool train);

// The step's micro-batches as the caller holds them: load() points *batch at micro-batch m
// (tokens, targets, positions, documents); it is called before every forward and backward, since
// micro-batches interleave.
typedef struct lt_micro_batches {
  int64_t count;
  int (*load)(void *state, int64_t m, lt_batch *batch);
  void *state;
  lt_batch *batch;
} lt_micro_batches;

// What a stage ran, in order (tests): at most `capacity` actions are kept.
typedef struct lt_pipeline_trace {
  lt_pipeline_action *actions;
  int count, capacity;
  int slots; // micro-batches this stage had room for in flight
} lt_pipeline_trace;

// The number of pipeline stages the model is split into (1 without pipelining).
int lt_pipeline_stages(const lt_model *model);

// One optimizer step's forwards and backwards on this stage: parameter gradients accumulate (each
// token's loss weighted by grad_scale, as lt_model_forward), a tied embedding's gradient is summed
// over the first and last stage, and every stage of the pipeline receives the loss summed over
// the micro-batches' tokens and the auxiliary losses summed over micro-batches and layers, as one
// process running all stages would report them. `trace` may be NULL.
int lt_pipeline_train_step(lt_model *model, lt_ctx *ctx, const lt_micro_batches *micro,
                           float grad_scale, double *loss_sum, double *aux_sum,
                           lt_pipeline_trace *trace);
// Forwards only (the validation loss): the loss summed over the micro-batches' tokens, on every
// stage.
int lt_pipeline_eval(lt_model *model, lt_ctx *ctx, const lt_micro_batches *micro, double *loss_sum);
// Sums n values over the stages of the pipeline `params` belongs to, the same bits on every stage
// (nothing to do without pipelining).
int lt_pipeline_sum(const lt_params *params, double *values, int n);

#endif
