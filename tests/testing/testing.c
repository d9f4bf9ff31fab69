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

double lt_test_normwise_error(const float *a, const float *b, int64_t n) {
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < n; i++) {
    diff = fmax(diff, fabs((double)a[i] - b[i]));
    scale = fmax(scale, fabs((double)b[i]));
  }
  return diff / fmax(scale, 1e-30);
}

double lt_test_max_abs(const float *a, int64_t n) {
  double worst = 0.0;
  for (int64_t i = 0; i < n; i++)
    if (fabs((double)a[i]) > worst) worst = fabs((double)a[i]);
  return worst;
}

double lt_test_top_k_margin(const double *logits, int e, int k) {
  double kth = INFINITY, next = -INFINITY;
  for (int j = 0; j < e; j++) {
    int above = 0;
    for (int i = 0; i < e; i++) above += logits[i] > logits[j];
    if (above < k)
      kth = fmin(kth, logits[j]);
    else
      next = fmax(next, logits[j]);
  }
  return kth - next;
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

void lt_test_flip_byte(const char *path, int64_t offset) {
  FILE *f = fopen(path, "r+b");
  if (!f) fail_msg("cannot open %s to corrupt it", path);
  if (fseek(f, offset, SEEK_SET) != 0)
    fail_msg("cannot seek to %lld in %s", (long long)offset, path);
  int c = fgetc(f);
  if (c == EOF) fail_msg("%s has no byte %lld", path, (long long)offset);
  fseek(f, offset, SEEK_SET);
  fputc(c ^ 0xff, f);
  fclose(f);
}

// The whole file in a malloc'd buffer; *size receives its length.
static char *slurp(const char *path, long *size) {
  FILE *f = fopen(path, "rb");
  if (!f) fail_msg("cannot open %s", path);
  fseek(f, 0, SEEK_END);
  *size = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *data = malloc((size_t)*size + 1);
  if (fread(data, 1, (size_t)*size, f) != (size_t)*size) fail_msg("cannot read %s", path);
  fclose(f);
  return data;
}

void lt_test_copy_file(const char *from, const char *to) {
  long size;
  char *data = slurp(from, &size);
  FILE *f = fopen(to, "wb");
  if (!f || fwrite(data, 1, (size_t)size, f) != (size_t)size) fail_msg("cannot write %s", to);
  fclose(f);
  free(data);
}

bool lt_test_same_file(const char *a, const char *b) {
  long size_a, size_b;
  char *data_a = slurp(a, &size_a), *data_b = slurp(b, &size_b);
  bool same = size_a == size_b && memcmp(data_a, data_b, (size_t)size_a) == 0;
  free(data_a);
  free(data_b);
  return same;
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
