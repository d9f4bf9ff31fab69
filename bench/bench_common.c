#include "bench_common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/device.h"
#include "core/error.h"
#include "core/rng.h"

enum { TRIALS = 5 };

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

int bench_random_bf16(lt_tensor *t, int ndim, const int64_t *shape, uint64_t seed) {
  *t = lt_view(NULL, LT_BF16, LT_CUDA, ndim, shape);
  LT_TRY(lt_device_alloc(LT_CUDA, lt_nbytes(*t), "a benchmark tensor", &t->data));
  const int64_t n = lt_numel(*t), block = n < (1 << 22) ? n : (1 << 22);
  lt_bf16 *host = malloc((size_t)block * sizeof *host);
  LT_CHECK(host, LT_ERR_MEMORY, "out of host memory");
  lt_rng rng = lt_rng_seed(seed);
  for (int64_t i = 0; i < block; i++) host[i] = lt_f32_to_bf16(lt_rng_normal(&rng));
  for (int64_t at = 0; at < n; at += block) {
    const int64_t count = n - at < block ? n - at : block;
    LT_TRY(lt_device_copy((lt_bf16 *)t->data + at, LT_CUDA, host, LT_CPU, (size_t)count * 2));
  }
  free(host);
  return LT_OK;
}

int bench_time_ms(lt_ctx *ctx, int (*fn)(void *arg), void *arg, double *ms) {
  for (int i = 0; i < 2; i++) LT_TRY(fn(arg));
  LT_TRY(lt_ctx_sync(ctx));
  double start = bench_now_s();
  LT_TRY(fn(arg));
  LT_TRY(lt_ctx_sync(ctx));
  const double once = bench_now_s() - start;
  const int reps = once > 0.2 ? 1 : (int)(0.2 / once) + 1;
  double trials[TRIALS];
  for (int t = 0; t < TRIALS; t++) {
    start = bench_now_s();
    for (int r = 0; r < reps; r++) LT_TRY(fn(arg));
    LT_TRY(lt_ctx_sync(ctx));
    trials[t] = (bench_now_s() - start) * 1e3 / reps;
  }
  *ms = bench_median(trials, TRIALS);
  return LT_OK;
}

bool bench_shape_arg(int argc, char **argv, int *i, bench_shape *shape) {
  const char *arg = argv[*i];
  if (strcmp(arg, "--seq") == 0) {
    shape->n_seqs = 0;
    while (*i + 1 < argc && argv[*i + 1][0] != '-' && shape->n_seqs < BENCH_MAX_SEQS)
      shape->seqs[shape->n_seqs++] = atoll(argv[++*i]);
    return true;
  }
  int *value = strcmp(arg, "--heads") == 0      ? &shape->heads
               : strcmp(arg, "--head-dim") == 0 ? &shape->head_dim
               : strcmp(arg, "--batch") == 0    ? &shape->batch
                                                : NULL;
  if (!value || *i + 1 >= argc) return false;
  *value = atoi(argv[++*i]);
  return true;
}
