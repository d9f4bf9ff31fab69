#include "train/metrics.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "core/log.h"

int lt_metrics_open(lt_metrics *metrics, const char *run_dir) {
  snprintf(metrics->path, sizeof metrics->path, "%s/metrics.jsonl", run_dir);
  // Never truncated: an earlier run's records stay, and a resumed run continues the same file.
  if (access(metrics->path, F_OK) == 0)
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

int lt_metrics_log(lt_metrics *metrics, const lt_step_metrics *m, int print) {
  char aux[48] = "", aux_json[48] = "";
  if (m->aux_loss != 0) { // only models with routers have auxiliary losses
    snprintf(aux, sizeof aux, " | aux %.4f", m->aux_loss);
    snprintf(aux_json, sizeof aux_json, ", \"aux_loss\": %.6f", m->aux_loss);
  }
  if (print) {
    char elapsed[32], eta[32], rate[32];
    int width = snprintf(NULL, 0, "%lld", (long long)m->steps);
    printf("step %*lld/%lld | loss %.4f%s | lr %.2e | grad norm %.3f | %s tok/s | elapsed %s | eta "
           "%s\n",
           width, (long long)m->step, (long long)m->steps, m->loss, aux, m->lr, m->grad_norm,
           format_rate(m->tokens_per_s, rate, sizeof rate),
           format_duration(m->elapsed_s, elapsed, sizeof elapsed),
           format_duration(m->eta_s, eta, sizeof eta));
    fflush(stdout);
  }
  fprintf(metrics->jsonl,
          "{\"step\": %lld, \"loss\": %.6f%s, \"lr\": %.6e, \"grad_norm\": %.6f, \"tokens_per_s\": "
          "%.1f, \"tokens\": %lld, \"elapsed_s\": %.3f, \"eta_s\": %.1f}\n",
          (long long)m->step, m->loss, aux_json, m->lr, m->grad_norm, m->tokens_per_s,
          (long long)m->tokens_seen, m->elapsed_s, isfinite(m->eta_s) ? m->eta_s : -1.0);
  LT_CHECK(fflush(metrics->jsonl) == 0, LT_ERR_IO, "%s: write failed: %s", metrics->path,
           strerror(errno));
  return LT_OK;
}

void lt_metrics_close(lt_metrics *metrics) {
  if (metrics->jsonl) fclose(metrics->jsonl);
  metrics->jsonl = NULL;
}
