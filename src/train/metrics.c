#include "train/metrics.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "core/fsutil.h"
#include "core/log.h"

// Rewrites the file without the records of steps after `step` (atomically: a crash here leaves
// the old file).
static int drop_records_after(const char *path, int64_t step) {
  FILE *in = fopen(path, "r");
  if (!in) return LT_OK; // nothing logged yet
  char tmp[1200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *out = fopen(tmp, "w");
  if (!out) {
    fclose(in);
    return lt_fail(LT_ERR_IO, "%s: cannot write: %s (check run.dir)", tmp, strerror(errno));
  }
  char *line = NULL;
  size_t cap = 0;
  bool ok = true;
  while (getline(&line, &cap, in) >= 0) {
    long long record_step;
    if (sscanf(line, "{\"step\": %lld", &record_step) == 1 && record_step > step) continue;
    ok = ok && fputs(line, out) >= 0;
  }
  free(line);
  fclose(in);
  if (fclose(out) != 0 || !ok) {
    remove(tmp);
    return lt_fail(LT_ERR_IO, "%s: write failed (disk full?)", tmp);
  }
  return lt_commit_file(tmp, path);
}

int lt_metrics_open(lt_metrics *metrics, const char *run_dir, int64_t resumed_step) {
  snprintf(metrics->path, sizeof metrics->path, "%s/metrics.jsonl", run_dir);
  if (resumed_step >= 0)
    LT_TRY(drop_records_after(metrics->path, resumed_step));
  else if (access(metrics->path, F_OK) == 0)
    lt_warn("%s already exists: appending this run's records to it (use another run.dir to keep "
            "runs apart)",
            metrics->path);
  metrics->jsonl = fopen(metrics->path, "a");
  LT_CHECK(metrics->jsonl, LT_ERR_IO, "%s: cannot open for appending: %s (check run.dir)",
           metrics->path, strerror(errno));
  return LT_OK;
}

static const char *format_duration(double seconds, char *buf, size_t len) {
  if (!isfinite(seconds) || seconds < 0) return snprintf(buf, len, "?"), buf;
  long s = lround(seconds);
  if (s >= 3600)
    snprintf(buf, len, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  else
    snprintf(buf, len, "%ld:%02ld", s / 60, s % 60);
  return buf;
}

static const char *format_rate(double rate, char *buf, size_t len) {
  if (rate >= 1e6)
    snprintf(buf, len, "%.2fM", rate / 1e6);
  else if (rate >= 1e3)
    snprintf(buf, len, "%.1fK", rate / 1e3);
  else
    snprintf(buf, len, "%.0f", rate);
  return buf;
}

static bool has_mfu(const lt_step_metrics *m) {
  return isfinite(m->mfu) && m->mfu > 0;
}

int lt_metrics_log(lt_metrics *metrics, const lt_step_metrics *m, int print) {
  // Auxiliary losses only for models with routers; validation loss only on evaluation steps.
  if (print) {
    char elapsed[32], eta[32], rate[32], aux[48] = "", val[48] = "", mfu[32] = "";
    if (m->aux_loss != 0) snprintf(aux, sizeof aux, " | aux %.4f", m->aux_loss);
    if (m->has_val_loss) snprintf(val, sizeof val, "val loss %.4f | ", m->val_loss);
    if (has_mfu(m)) snprintf(mfu, sizeof mfu, " | mfu %.1f%%", 100 * m->mfu);
    int width = snprintf(NULL, 0, "%lld", (long long)m->steps);
    printf("step %*lld/%lld | loss %.4f%s | lr %.2e | grad norm %.3f | %s%s tok/s%s | elapsed %s "
           "| eta %s\n",
           width, (long long)m->step, (long long)m->steps, m->loss, aux, m->lr, m->grad_norm, val,
           format_rate(m->tokens_per_s, rate, sizeof rate), mfu,
           format_duration(m->elapsed_s, elapsed, sizeof elapsed),
           format_duration(m->eta_s, eta, sizeof eta));
    fflush(stdout);
  }
  // %.17g: a resumed run's records compare bit for bit with an uninterrupted run's.
  char aux[64] = "", val[64] = "", mfu[32] = "";
  if (m->aux_loss != 0) snprintf(aux, sizeof aux, ", \"aux_loss\": %.17g", m->aux_loss);
  if (m->has_val_loss) snprintf(val, sizeof val, ", \"val_loss\": %.17g", m->val_loss);
  if (has_mfu(m)) snprintf(mfu, sizeof mfu, ", \"mfu\": %.4f", m->mfu);
  fprintf(metrics->jsonl,
          "{\"step\": %lld, \"loss\": %.17g%s, \"lr\": %.17g, \"grad_norm\": %.17g%s, "
          "\"tokens_per_s\": %.1f%s, \"tokens\": %lld, \"elapsed_s\": %.3f, \"eta_s\": "
          "%.1f}\n",
          (long long)m->step, m->loss, aux, m->lr, m->grad_norm, val, m->tokens_per_s, mfu,
          (long long)m->tokens_seen, m->elapsed_s, isfinite(m->eta_s) ? m->eta_s : -1.0);
  LT_CHECK(fflush(metrics->jsonl) == 0, LT_ERR_IO, "%s: write failed: %s", metrics->path,
           strerror(errno));
  return LT_OK;
}

void lt_metrics_close(lt_metrics *metrics) {
  if (metrics->jsonl) fclose(metrics->jsonl);
  metrics->jsonl = NULL;
}
