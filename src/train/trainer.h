// The trainer: the mesh, model, optimizer and sample sources built from a config, one optimizer
// step over train.batch / (train.micro_batch * dp) accumulated micro-batches, the validation
// loss, and the state that checkpoints save and restore.
//
// On a mesh (mpirun): each data-parallel rank reads its share of the global batch, the loss is
// normalised by the step's target tokens over the dp x cp group, the gradients are summed there
// (parallel/dp.h; ZeRO-1 with parallel.zero), and every rank writes its part of each checkpoint.
#ifndef LT_TRAINER_H
#define LT_TRAINER_H

#include "core/config.h"
#include "data/source.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "parallel/comm.h"
#include "parallel/dp.h"
#include "parallel/mesh.h"
#include "train/metrics.h"

typedef struct lt_trainer {
  lt_config cfg;
  lt_world *world;
  lt_mesh mesh; // the model's and the data's split over the world (parallel.*)
  lt_dp dp;     // gradient reduction over dp x cp
  lt_ctx ctx;
  lt_model model;
  lt_optimizer opt;
  lt_source *data;     // the training samples: a dataset's or a task's (data/source.h)
  lt_source *val_data; // the validation samples; NULL when the config has none
  int64_t micro_batch, accum, seq_len;
  lt_samples host; // the step's samples on this rank: accum * micro_batch * seq_len each
  // The next step's, read once this step's last backward is queued, while the device runs it:
  // with have_ahead, the source's next_sample is a step past ahead_position, the data position
  // that a checkpoint saves.
  lt_samples ahead;
  bool have_ahead;
  int64_t ahead_position;
  lt_arena batch_arena; // the micro-batch on the device
  lt_batch batch;
  lt_aux_loss aux; // the layers' auxiliary losses (routers' load balance), per micro-batch
  lt_metrics metrics;
  int64_t tokens_seen;
  double train_seconds; // spent training before this process started (restored on resume)
} lt_trainer;

// Everything but the metrics file; the caller initialises the weights or loads them.
int lt_trainer_create(lt_trainer *tr, const lt_config *cfg, lt_world *world);
// The next step's loss and gradients, without the optimizer: the micro-batches of this rank's
// share of the global batch, forward and backward, the gradients summed over the data-parallel
// ranks. *loss is the mean over the step's target tokens and *aux the layers' mean auxiliary
// loss, both over the whole global batch and the same on every rank.
int lt_trainer_forward_backward(lt_trainer *tr, double *loss, double *aux);
// One optimizer step; fills *out (loss, lr, grad norm; the timing fields are the caller's).
int lt_trainer_step(lt_trainer *tr, lt_step_metrics *out);
// The mean loss per target token over train.eval_batches micro-batches of the validation set,
// the same ones every call.
int lt_trainer_eval(lt_trainer *tr, double *loss);
// The data position a checkpoint saves: the count of samples the steps so far consumed (not
// counting the next step's, if already read ahead).
int64_t lt_trainer_data_position(const lt_trainer *tr);
// The whole training state from checkpoint `dir`: weights, AdamW moments and step, tokens seen,
// data position, time spent. Config keys that differ from the checkpoint's are warned about.
int lt_trainer_resume(lt_trainer *tr, const char *dir);
// Writes the checkpoint of the current step (its folder into `written`) and deletes the ones
// beyond checkpoint.keep. Every rank of the world calls it and writes its own shard file; rank
// 0 commits once all have written, and a failure on any rank fails it on all.
int lt_trainer_save(lt_trainer *tr, double train_seconds, char *written, size_t cap);
void lt_trainer_destroy(lt_trainer *tr);

// `longtrain train ARGS` (train_main.c): returns an lt_status; LT_STOPPED after a signal.
int lt_train_main(int argc, char **argv, lt_world *world);

#endif
