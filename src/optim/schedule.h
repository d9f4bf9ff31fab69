// Learning-rate schedule: linear warmup from 0 to train.lr over train.warmup steps, then cosine
// or linear decay to train.min_lr at train.steps (or constant).
#ifndef LT_SCHEDULE_H
#define LT_SCHEDULE_H

#include <stdint.h>

#include "core/config.h"

// The learning rate for optimizer step `step` (1-based).
double lt_lr_at(const lt_train_config *cfg, int64_t step);

#endif
