// Errors: library code returns a status and leaves a one-line message; only main() exits.
//
// Every message should tell the user what failed, on which file or key, and the fix:
//   LT_CHECK(n_heads % n_kv_heads == 0, LT_ERR_CONFIG,
//            "model.n_heads (%d) must be a multiple of model.n_kv_heads (%d)", ...);
// The status codes double as the process exit codes documented in the README.
#ifndef LT_ERROR_H
#define LT_ERROR_H

#include <stdarg.h>

typedef enum lt_status {
  LT_OK = 0,
  LT_ERR_INTERNAL = 1, // a bug in longtrain: the message names the source line
  LT_ERR_USAGE = 2,    // bad command line
  LT_ERR_CONFIG = 3,   // bad config file or --set override
  LT_ERR_DATA = 4,     // missing, malformed or mismatched dataset
  LT_ERR_CKPT = 5,     // missing, corrupt or incompatible checkpoint
  LT_ERR_IO = 6,       // a read or write failed (disk full, permissions)
  LT_ERR_MEMORY = 7,   // an allocation failed (host or device)
  LT_ERR_DEVICE = 8,   // CUDA, cuBLAS or NCCL failure
  LT_ERR_COMM = 9,     // MPI failure, or a peer rank died or hung
  LT_ERR_NUMERIC = 10, // the loss or gradients became NaN/inf
  LT_STOPPED = 11,     // not an error: stopped by SIGTERM or SIGUSR1 after writing a checkpoint;
                       // requeue the job with --resume auto to continue
} lt_status;

// Records `fmt` as the current error and returns `code`, so callers write `return lt_fail(...)`.
int lt_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int lt_failv(int code, const char *fmt, va_list ap);
// Like lt_fail for errors that are longtrain's own bugs: the message carries the source location.
int lt_fail_internal(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
// Prepends "prefix: " to the current message (e.g. the file being loaded) and returns `code`.
int lt_error_context(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

const char *lt_error_message(void);
void lt_error_clear(void);
const char *lt_status_name(int code);

#define LT_CHECK(cond, code, ...)                                                                  \
  do {                                                                                             \
    if (!(cond)) return lt_fail((code), __VA_ARGS__);                                              \
  } while (0)

#define LT_ASSERT(cond)                                                                            \
  do {                                                                                             \
    if (!(cond)) return lt_fail_internal(__FILE__, __LINE__, "assertion failed: %s", #cond);       \
  } while (0)

#define LT_TRY(expr)                                                                               \
  do {                                                                                             \
    int lt_try_rc_ = (expr);                                                                       \
    if (lt_try_rc_ != LT_OK) return lt_try_rc_;                                                    \
  } while (0)

#endif
