// Progress: a line per logged step on stdout, and the same record appended to
// RUN_DIR/metrics.jsonl (one JSON object per line) for plots and scripts. Losses, learning rates
// and norms are written with 17 significant digits: they read back bit for bit, which is how the
// resume tests compare runs.
#ifndef LT_METRICS_H
#define LT_METRICS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef struct lt_step_metrics {
  int64_t step, steps;
  double loss, lr, grad_norm;
  double aux_loss; // the weighted auxiliary losses (not in loss), 0 for models without any
  double val_loss; // when has_val_loss
  bool has_val_loss;
  double tokens_per_s, elapsed_s, eta_s;
  double mfu; // model FLOPs utilisation (0..1) when the devices' peak is known, else 0 or NAN
  int64_t tokens_seen;
} lt_step_metrics;

typedef struct lt_metrics {
  FILE *jsonl;
  char path[1100];
} lt_metrics;

// Appends to RUN_DIR/metrics.jsonl. A run resumed at step `resumed_step` first drops the records
// after that step (a killed run logged them, the resumed run logs them again); -1 for a fresh run.
int lt_metrics_open(lt_metrics *metrics, const char *run_dir, int64_t resumed_step);
int lt_metrics_log(lt_metrics *metrics, const lt_step_metrics *m, int print);
void lt_metrics_close(lt_metrics *metrics);

#endif
