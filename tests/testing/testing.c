#define _GNU_SOURCE // nftw
#include "testing.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "core/rng.h"

void lt_test_expect_error(int rc, int code, const char *const *parts) {
  const char *message = lt_error_message();
  if (rc != code) fail_msg("expected status %d, got %d: %s", code, rc, message);
  if (strchr(message, '\n')) fail_msg("the message is not one line: %s", message);
  for (int i = 0; parts[i]; i++)
    if (!strstr(message, parts[i]))
      fail_msg("'%s' is missing from the message: %s", parts[i], message);
}

void lt_test_fill_normal(float *x, int64_t n, uint64_t seed, float std) {
  lt_rng rng = lt_rng_seed(seed);
  for (int64_t i = 0; i < n; i++) x[i] = std * lt_rng_normal(&rng);
}

double lt_test_max_rel_diff(const float *a, const float *b, int64_t n, double floor) {
  double worst = 0.0;
  for (int64_t i = 0; i < n; i++) {
    double scale = fabs((double)b[i]) > floor ? fabs((double)b[i]) : floor;
    double rel = fabs((double)a[i] - (double)b[i]) / scale;
    if (!(rel <= worst)) worst = rel; // NaN propagates as the worst
  }
  return worst;
}

double lt_test_max_abs(const float *a, int64_t n) {
  double worst = 0.0;
  for (int64_t i = 0; i < n; i++)
    if (fabs((double)a[i]) > worst) worst = fabs((double)a[i]);
  return worst;
}

void lt_test_plan_layer(lt_layer *layer, lt_arena *acts, lt_arena *scratch, int64_t B, int64_t T) {
  lt_arena measure_acts, measure_scratch;
  lt_arena_measure(&measure_acts, LT_CPU, "acts");
  lt_arena_measure(&measure_scratch, LT_CPU, "scratch");
  lt_plan plan = {
      .B = B, .T = T, .act_dtype = LT_F32, .acts = &measure_acts, .scratch = &measure_scratch};
  if (layer->ops->plan(layer, &plan)) fail_msg("planning failed: %s", lt_error_message());
  if (lt_arena_create(acts, LT_CPU, measure_acts.peak, "acts") ||
      lt_arena_create(scratch, LT_CPU, measure_scratch.peak, "scratch"))
    fail_msg("%s", lt_error_message());
  plan.acts = acts, plan.scratch = scratch;
  if (layer->ops->plan(layer, &plan)) fail_msg("planning failed: %s", lt_error_message());
}

static char tmpdirs[64][256];
static int n_tmpdirs = 0;

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
  (void)st, (void)type, (void)ftw;
  return remove(path);
}

static void remove_tmpdirs(void) {
  if (getenv("LT_TEST_KEEP_TMP")) return; // to look at what a failing test left
  for (int i = 0; i < n_tmpdirs; i++) nftw(tmpdirs[i], remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

const char *lt_test_tmpdir(void) {
  if (n_tmpdirs == 64) fail_msg("more than 64 temporary folders in one test program");
  if (n_tmpdirs == 0) atexit(remove_tmpdirs);
  const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  char *path = tmpdirs[n_tmpdirs];
  snprintf(path, 256, "%s/longtrain-test-XXXXXX", base);
  if (!mkdtemp(path)) fail_msg("mkdtemp failed under %s", base);
  n_tmpdirs++;
  return path;
}

void lt_test_write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (!f) fail_msg("cannot write %s", path);
  fputs(text, f);
  fclose(f);
}

int lt_test_run(const char *command, char *out, size_t cap) {
  char full[8192];
  snprintf(full, sizeof full, "(%s) 2>&1", command);
  FILE *p = popen(full, "r");
  if (!p) fail_msg("popen failed for %s", command);
  size_t len = 0, got;
  char sink[4096];
  while ((got = fread(len + 1 < cap ? out + len : sink, 1,
                      len + 1 < cap ? cap - 1 - len : sizeof sink, p)) > 0)
    if (len + 1 < cap) len += got;
  if (cap) out[len < cap ? len : cap - 1] = '\0';
  int status = pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

const char *lt_test_source_path(const char *relative) {
  static char paths[8][1024];
  static int used = 0;
  char *path = paths[used++ % 8];
  snprintf(path, 1024, "%s/%s", LT_SOURCE_DIR, relative);
  return path;
}

const char *lt_test_binary(void) {
  return LT_BINARY;
}
