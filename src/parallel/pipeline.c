// The 1F1B pipeline schedule and the stage's side of it: which forward or backward runs next,
// which activation or gradient comes in from a neighbour stage before it and goes out after it.
#include "parallel/pipeline.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "parallel/mesh.h"

static lt_pipeline_step step(lt_pipeline_op op, int micro) {
  return (lt_pipeline_step){.action = {op, micro}};
}

// Forwards take an activation from the stage before (except on the first stage) and pass one to
// the stage after (except on the last); backwards take a gradient from the stage after and pass
// one to the stage before.
static bool takes_input(lt_pipeline_op op, int stage, int stages) {
  return op == LT_PP_FORWARD ? stage > 0 : stage < stages - 1;
}

static bool gives_output(lt_pipeline_op op, int stage, int stages) {
  return op == LT_PP_FORWARD ? stage < stages - 1 : stage > 0;
}

int lt_pipeline_plan(int stage, int stages, int n_micro, bool train, lt_pipeline_step *out) {
  int n = 0, warmup = n_micro;
  if (!train) {
    for (int m = 0; m < n_micro; m++) out[n++] = step(LT_PP_FORWARD, m);
  } else {
    // Stage s starts backwards once the first micro-batch has come back from the P - 1 - s
    // stages after it; until then it keeps the pipeline fed with forwards. Then one forward, one
    // backward, until the forwards run out; then the backwards still owed.
    warmup = stages - 1 - stage < n_micro ? stages - 1 - stage : n_micro;
    for (int m = 0; m < warmup; m++) out[n++] = step(LT_PP_FORWARD, m);
    for (int m = 0; m < n_micro - warmup; m++) {
      out[n++] = step(LT_PP_FORWARD, warmup + m);
      out[n++] = step(LT_PP_BACKWARD, m);
    }
    for (int m = n_micro - warmup; m < n_micro; m++) out[n++] = step(LT_PP_BACKWARD, m);
  }
  // The steady part is [warmup, n - warmup): there an output and the next step's input share an
  // exchange, in warm-up and cool-down each transfer is its own (as Megatron-LM pairs them).
  for (int i = 0; i < n; i++) {
    lt_pipeline_step *s = &out[i];
    s->send_after = gives_output(s->action.op, stage, stages);
    const bool steady_pair = train && i >= warmup && i + 1 < n - warmup;
    s->recv_next = steady_pair && takes_input(out[i + 1].action.op, stage, stages);
    s->recv_first = takes_input(s->action.op, stage, stages) && !(i > 0 && out[i - 1].recv_next);
  }
  return n;
}

int lt_pipeline_slots(int stage, int stages, int n_micro, bool train) {
  if (!train) return 1; // an activation sent on is done with
  return stages - stage < n_micro ? stages - stage : n_micro;
}

int lt_pipeline_stages(const lt_model *model) {
  const lt_mesh *mesh = model->params.mesh;
  return mesh ? mesh->size[LT_AXIS_PP] : 1;
}

int lt_pipeline_sum(const lt_params *params, double *values, int n) {
  if (!params->mesh) return LT_OK;
  return lt_all_reduce_sum_f64(&params->mesh->axis[LT_AXIS_PP], values, n);
}

// One stage's run through a schedule.
typedef struct stage_run {
  lt_model *model;
  lt_ctx *ctx;
  const lt_group *pp;
  const lt_micro_batches *micro;
  int slots;  // micro-batches in flight at most; micro-batch m uses slot m % slots
  bool train; // backwards too, with the LM head's gradient fused into the forward
  float grad_scale;
  double loss, aux; // summed over this stage's forwards
} stage_run;

// Where the current slot's input lands and its output leaves from (lt_model's stage contract).
static lt_tensor input_of(const lt_model *m, lt_pipeline_op op) {
  return op == LT_PP_FORWARD ? m->blocks[m->layer_begin].x_in : m->d_resid;
}

static lt_tensor output_of(const lt_model *m, lt_pipeline_op op) {
  return op == LT_PP_FORWARD ? m->x_out : m->d_resid;
}

static int input_peer(const stage_run *r, lt_pipeline_op op) {
  return op == LT_PP_FORWARD ? r->pp->rank - 1 : r->pp->rank + 1;
}

static int output_peer(const stage_run *r, lt_pipeline_op op) {
  return op == LT_PP_FORWARD ? r->pp->rank + 1 : r->pp->rank - 1;
}

// Sends `out` to stage `dst` and receives `in` from stage `src` (either may be absent), both at
// once: two neighbours that each send to the other never wait on each other.
static int exchange(const stage_run *r, lt_tensor out, int dst, lt_tensor in, int src) {
  lt_request request;
  LT_TRY(lt_start_sendrecv(r->pp, out, dst, in, src, &request));
  return lt_wait(&request);
}

static int compute(stage_run *r, const lt_pipeline_action *a) {
  lt_batch *batch = r->micro->batch;
  LT_TRY(r->micro->load(r->micro->state, a->micro, batch));
  if (a->op == LT_PP_BACKWARD) return lt_model_backward(r->model, r->ctx, batch);
  if (batch->aux) batch->aux->sum = 0.0;
  double loss;
  LT_TRY(lt_model_forward(r->model, r->ctx, batch, r->train, r->grad_scale, &loss));
  r->loss += loss;
  if (batch->aux) r->aux += batch->aux->sum;
  return LT_OK;
}

// Runs a stage's steps in order, each on its micro-batch's slot of saved activations.
static int run_steps(stage_run *r, const lt_pipeline_step *steps, int n, lt_pipeline_trace *trace) {
  lt_model *m = r->model;
  const lt_tensor none = {0};
  for (int i = 0; i < n; i++) {
    const lt_pipeline_action *a = &steps[i].action;
    LT_TRY(lt_model_use_slot(m, a->micro % r->slots));
    if (steps[i].recv_first)
      LT_TRY(exchange(r, none, -1, input_of(m, a->op), input_peer(r, a->op)));
    LT_TRY(compute(r, a));
    if (trace && trace->count < trace->capacity) trace->actions[trace->count++] = *a;
    lt_tensor out = steps[i].send_after ? output_of(m, a->op) : none, in = none;
    int src = -1;
    if (steps[i].recv_next) {
      // The next micro-batch's slot: a forward's input lands in its activations, a backward's in
      // the pass's memory, neither where the output still waits to leave.
      const lt_pipeline_action *next = &steps[i + 1].action;
      LT_TRY(lt_model_use_slot(m, next->micro % r->slots));
      in = input_of(m, next->op), src = input_peer(r, next->op);
    }
    if (out.data || in.data) LT_TRY(exchange(r, out, output_peer(r, a->op), in, src));
  }
  return LT_OK;
}

// A tied embedding lives on the first and the last stage: the embedding's gradient there and the
// LM head's here make one gradient, summed into both copies so that both take the same update.
static int sum_tied_embedding(lt_model *m) {
  const lt_mesh *mesh = m->params.mesh;
  if (!m->cfg.tie_embeddings || mesh->embed.size == 1) return LT_OK;
  return lt_all_reduce_sum(&mesh->embed, m->embed.weight.grad);
}

static int run_step(stage_run *r, double *loss_sum, double *aux_sum, lt_pipeline_trace *trace) {
  const int n_micro = (int)r->micro->count, stages = r->pp->size, stage = r->pp->rank;
  lt_pipeline_step *steps = malloc(sizeof *steps * (size_t)(2 * n_micro));
  LT_CHECK(steps, LT_ERR_MEMORY, "out of host memory for the pipeline schedule");
  const int n = lt_pipeline_plan(stage, stages, n_micro, r->train, steps);
  r->slots = lt_pipeline_slots(stage, stages, n_micro, r->train);
  if (trace) trace->count = 0, trace->slots = r->slots;
  // Forwards alone run on slot 0, whatever room training keeps.
  int rc = r->train ? lt_model_plan_slots(r->model, r->slots) : LT_OK;
  if (rc == LT_OK) rc = run_steps(r, steps, n, trace);
  free(steps);
  LT_TRY(rc);
  // The loss is the last stage's and each stage has its own layers' auxiliary losses: every stage
  // reports their sums, as one process holding all stages would.
  double sums[2] = {r->loss, r->aux};
  LT_TRY(lt_all_reduce_sum_f64(r->pp, sums, 2));
  *loss_sum = sums[0];
  if (aux_sum) *aux_sum = sums[1];
  return r->train ? sum_tied_embedding(r->model) : LT_OK;
}

static stage_run stage_run_of(lt_model *model, lt_ctx *ctx, const lt_micro_batches *micro,
                              float grad_scale, bool train) {
  return (stage_run){.model = model,
                     .ctx = ctx,
                     .pp = &model->params.mesh->axis[LT_AXIS_PP],
                     .micro = micro,
                     .train = train,
                     .grad_scale = grad_scale};
}

int lt_pipeline_train_step(lt_model *model, lt_ctx *ctx, const lt_micro_batches *micro,
                           float grad_scale, double *loss_sum, double *aux_sum,
                           lt_pipeline_trace *trace) {
  LT_ASSERT(model->params.mesh && micro->count >= 1);
  stage_run r = stage_run_of(model, ctx, micro, grad_scale, true);
  return run_step(&r, loss_sum, aux_sum, trace);
}

int lt_pipeline_eval(lt_model *model, lt_ctx *ctx, const lt_micro_batches *micro,
                     double *loss_sum) {
  LT_ASSERT(model->params.mesh && micro->count >= 1);
  stage_run r = stage_run_of(model, ctx, micro, 0.0f, false);
  return run_step(&r, loss_sum, NULL, NULL);
}
