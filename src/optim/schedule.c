#include "optim/schedule.h"

#include <math.h>

double lt_lr_at(const lt_train_config *cfg, int64_t step) {
  if (cfg->warmup > 0 && step <= cfg->warmup) return cfg->lr * (double)step / (double)cfg->warmup;
  int64_t decay_steps = cfg->steps - cfg->warmup;
  double progress = decay_steps > 0 ? (double)(step - cfg->warmup) / (double)decay_steps : 1.0;
  if (progress > 1.0) progress = 1.0;
  switch ((lt_lr_decay)cfg->decay) {
  case LT_DECAY_COSINE:
    return cfg->min_lr + (cfg->lr - cfg->min_lr) * 0.5 * (1.0 + cos(M_PI * progress));
  case LT_DECAY_LINEAR:
    return cfg->lr - (cfg->lr - cfg->min_lr) * progress;
  case LT_DECAY_CONSTANT:
    break;
  }
  return cfg->lr;
}
