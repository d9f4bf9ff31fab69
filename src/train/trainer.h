// The training loop: builds the model, optimizer and data loader from a config and runs
// optimizer steps, each over train.batch / (train.micro_batch * dp) accumulated micro-batches.
#ifndef LT_TRAINER_H
#define LT_TRAINER_H

#include "core/config.h"
#include "data/loader.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "parallel/comm.h"
#include "train/metrics.h"

typedef struct lt_trainer {
  lt_config cfg;
  lt_world *world;
  lt_ctx ctx;
  lt_model model;
  lt_optimizer opt;
  lt_dataset data;
  lt_loader loader;
  int64_t micro_batch, accum, seq_len;
  int32_t *host_tokens, *host_targets, *host_pos; // accum * micro_batch * seq_len each
  lt_arena batch_arena;                           // the micro-batch on the device
  lt_batch batch;
  lt_aux_loss aux; // the layers' auxiliary losses (routers' load balance), per micro-batch
  lt_metrics metrics;
  int64_t tokens_seen;
  double elapsed_s;
} lt_trainer;

// Everything but the metrics file; the caller initialises or loads the weights.
int lt_trainer_create(lt_trainer *tr, const lt_config *cfg, lt_world *world);
// One optimizer step; fills *out (loss, lr, grad norm; the timing fields are the caller's).
int lt_trainer_step(lt_trainer *tr, lt_step_metrics *out);
void lt_trainer_destroy(lt_trainer *tr);

// `longtrain train ARGS`: returns an lt_status.
int lt_train_main(int argc, char **argv, lt_world *world);

#endif
