#include "bench_common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double bench_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int compare_doubles(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

double bench_median(double *values, int n) {
  qsort(values, (size_t)n, sizeof *values, compare_doubles);
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

bool bench_reference(const char *command, const char *what,
                     void (*on_line)(const char *line, void *arg), void *arg) {
  char full[4096], tag[128];
  snprintf(full, sizeof full, "%s 2>&1", command);
  snprintf(tag, sizeof tag, "\"what\": \"%s\"", what);
  fflush(stdout);
  FILE *p = popen(full, "r");
  if (!p) {
    printf("reference: cannot run %s\n", command);
    return false;
  }
  char line[8192];
  int found = 0;
  while (fgets(line, sizeof line, p)) {
    if (strstr(line, tag)) {
      on_line(line, arg);
      found++;
    } else if (strstr(line, "Error") || strstr(line, "error")) {
      printf("reference: %s", line);
    }
  }
  int status = pclose(p);
  if (status != 0 || found == 0) {
    printf("reference: `%s` gave no result (exit status %d)\n", command, status);
    return false;
  }
  return true;
}

double bench_json_number(const char *line, const char *key) {
  char pattern[128];
  snprintf(pattern, sizeof pattern, "\"%s\":", key);
  const char *at = strstr(line, pattern);
  return at ? strtod(at + strlen(pattern), NULL) : NAN;
}
