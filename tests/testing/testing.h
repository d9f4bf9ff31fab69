// Helpers shared by the tests.
#ifndef LT_TESTING_H
#define LT_TESTING_H

// cmocka needs these first.
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/error.h"
#include "layers/layer.h"

// Fails the test with longtrain's error message when an lt_status call fails.
#define assert_ok(expr)                                                                            \
  do {                                                                                             \
    int assert_ok_rc_ = (expr);                                                                    \
    if (assert_ok_rc_ != LT_OK)                                                                    \
      fail_msg("%s -> %d: %s", #expr, assert_ok_rc_, lt_error_message());                          \
  } while (0)

// Fails unless rc == code and lt_error_message() is one line containing every NULL-terminated part
// (the file, the key, the fix): EXPECT_ERROR(rc, LT_ERR_CONFIG, "run.yaml:3", "model.d_model").
void lt_test_expect_error(int rc, int code, const char *const *parts);
#define EXPECT_ERROR(rc, code, ...)                                                                \
  lt_test_expect_error((rc), (code), (const char *const[]){__VA_ARGS__, NULL})

// x[i] ~ N(0, std^2), deterministic in seed.
void lt_test_fill_normal(float *x, int64_t n, uint64_t seed, float std);
// max over i of |a - b| / max(|b|, floor)
double lt_test_max_rel_diff(const float *a, const float *b, int64_t n, double floor);
// max |a| over i
double lt_test_max_abs(const float *a, int64_t n);
// max over i of |a - b|, over max |b|: the worst element against the tensor's own scale.
double lt_test_normwise_error(const float *a, const float *b, int64_t n);
// A router's distance from a tie: the gap between the k-th and (k+1)-th largest of the e logits
// (infinite when k == e). Top-k is piecewise constant, so tests keep inputs away from its jumps.
double lt_test_top_k_margin(const double *logits, int e, int k);

// A fresh empty folder under $TMPDIR (or /tmp), removed with its contents when the test program
// exits (unless LT_TEST_KEEP_TMP is set).
const char *lt_test_tmpdir(void);
void lt_test_write_file(const char *path, const char *text);
// Runs `command` through the shell, stdout and stderr captured into out (truncated to cap);
// returns its exit status (or -1 when it did not exit normally).
int lt_test_run(const char *command, char *out, size_t cap);
// XORs byte `offset` of the file at `path` with 0xff (corruption on disk).
void lt_test_flip_byte(const char *path, int64_t offset);
// Copies a file byte for byte; and whether two files are identical.
void lt_test_copy_file(const char *from, const char *to);
bool lt_test_same_file(const char *a, const char *b);
// A path inside the source tree or the build, for fixtures and the longtrain binary.
const char *lt_test_source_path(const char *relative);
const char *lt_test_binary(void);

#endif
