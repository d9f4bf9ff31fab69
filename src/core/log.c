#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>

static int log_rank = 0, log_world = 1;
static lt_log_level log_level = LT_LOG_INFO;

void lt_log_set_rank(int rank, int world) {
  log_rank = rank;
  log_world = world;
}

void lt_log_set_level(lt_log_level level) {
  log_level = level;
}

void lt_log(lt_log_level level, const char *fmt, ...) {
  if (level < log_level) return;
  if (level <= LT_LOG_INFO && log_rank != 0) return;
  FILE *out = level >= LT_LOG_WARN ? stderr : stdout;
  static const char *tags[] = {"debug: ", "", "warning: ", "error: "};
  if (log_world > 1 && level != LT_LOG_INFO) fprintf(out, "[rank %d] ", log_rank);
  fputs(tags[level], out);
  va_list ap;
  va_start(ap, fmt);
  vfprintf(out, fmt, ap);
  va_end(ap);
  fputc('\n', out);
  fflush(out);
}
