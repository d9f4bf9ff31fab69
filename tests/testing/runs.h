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
// Writes config `format` (YAML with one %s: data.path, filled with the run files' dataset) as
// NAME in the test's temporary folder, its path into `path` (`cap` bytes), once: a
// `path` already filled is left as it is.
void lt_test_write_run_config(char *path, size_t cap, const char *name, const char *format);

// Starts `longtrain ARGS` (ARGS split at spaces) with stdout and stderr into `log`.
pid_t lt_test_spawn(const char *log, const char *args);
// Starts `mpirun --oversubscribe -np RANKS longtrain ARGS` likewise.
pid_t lt_test_spawn_mpi(const char *log, int ranks, const char *args);
// Waits for it: its exit status, or 128 + the signal that ended it.
int lt_test_wait(pid_t pid);
// Runs `longtrain ARGS` to the end; its output into `log`.
int lt_test_longtrain(const char *log, const char *args);

// Runs `longtrain ARGS` (output into `log`) and fails the test, showing the log, unless it exits
// with `status` and its output holds every one of the NULL-terminated `parts`.
void lt_test_expect_run_parts(const char *log, const char *args, int status,
                              const char *const *parts);
#define lt_test_expect_run(log, args, status, ...)                                                 \
  lt_test_expect_run_parts((log), (args), (status), (const char *const[]){__VA_ARGS__, NULL})
// Fails unless the finished process `pid` exited with `status` (the log is shown).
void lt_test_expect_exit(pid_t pid, int status, const char *log);
// Runs `longtrain train --set run.dir=DIR ARGS` on `ranks` ranks under mpirun (0: a plain
// process), DIR being folder `name` beside the run files (log: DIR.log); fails the test, showing
// the log, unless it succeeds. Returns DIR (kept until 16 more calls).
const char *lt_test_train(const char *name, int ranks, const char *args);
// The checkpoint folder of step `step` of run folder `run_dir`.
void lt_test_checkpoint_dir(char *out, size_t cap, const char *run_dir, int64_t step);
// Every tensor (weights, AdamW moments) and counter of two checkpoints, bit for bit.
void lt_test_assert_same_checkpoint(const char *a, const char *b);
// How far apart two checkpoints written in any layouts are: the largest difference between a
// tensor of `a` and the same tensor of `b`, each read whole (from whichever shards and pieces
// hold it), relative to the largest element of b's; 0 when every tensor holds the same bits.
// Infinite when their step, tokens seen, data position or parameter count differ or one lacks a
// tensor of the other. `what` names the worst tensor (or what did not match). Fails only when one
// cannot be opened, so that under mpirun one rank can compare and tell the others.
double lt_test_checkpoint_difference(const char *a, const char *b, char *what, size_t cap);

// Rewrites the manifest of checkpoint folder `dir` for the files it lists as they are now: what a
// test does after changing a file on purpose, to reach the checks behind the manifest's.
void lt_test_reseal_checkpoint(const char *dir);
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
// The records of run `run` (whose first is step `first`) against those of the same steps of run
// `reference`, to the end of both (which must end at the same step): the step, learning rate and
// tokens equal, the loss, gradient norm and validation loss within `tolerance` relative (0: the
// same lines, bit for bit). Returns the largest relative difference; fails the test above it.
double lt_test_expect_records(const char *reference, const char *run, int first, double tolerance);

#endif
