// Helpers for tests that run the real `longtrain` binary as a user would: a small dataset and
// config, processes started in the background (to signal or kill them), and the records of
// metrics.jsonl reduced to the fields that must match bit for bit.
#ifndef LT_TEST_RUNS_H
#define LT_TEST_RUNS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

// A folder with a dataset of English-like byte documents (data.h5), a second one (other.h5) and a
// config of a small model on the first (run.yaml). Made once per test program.
typedef struct lt_test_run_files {
  char dir[256], data[300], other[300], config[300];
} lt_test_run_files;
const lt_test_run_files *lt_test_run_files_get(void);

// Starts `longtrain ARGS` (ARGS split at spaces) with stdout and stderr into `log`.
pid_t lt_test_spawn(const char *log, const char *args);
// Waits for it: its exit status, or 128 + the signal that ended it.
int lt_test_wait(pid_t pid);
// Runs `longtrain ARGS` to the end; its output into `log`.
int lt_test_longtrain(const char *log, const char *args);

// The text of file `path` (caller frees), or NULL when it does not exist.
char *lt_test_read_text(const char *path);

// One line per record of RUN_DIR/metrics.jsonl with what a step computed (step, loss, lr,
// grad_norm, val_loss, tokens: the timings left out), as printed with 17 digits.
typedef struct lt_test_records {
  char lines[256][256];
  int n;
} lt_test_records;
void lt_test_read_records(const char *run_dir, lt_test_records *out);
// A field of a record line ("loss") as a double.
double lt_test_record_value(const char *line, const char *field);

#endif
