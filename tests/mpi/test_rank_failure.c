// A rank that dies or hangs ends the whole job, with a message that says what happened, instead
// of leaving the others waiting forever. Each test starts `mpirun -np 2 longtrain train` itself:
// one kills rank 1 with SIGKILL mid-training, the other makes rank 1 stop answering
// (LT_FAULT_INJECT=hang) so that rank 0's watchdog must act after parallel.timeout_s.
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runs.h"
#include "testing.h"

// A job that fails to end within this long is reported as hanging (and killed).
enum { DEADLINE_S = 120 };

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// A run of the standard small config on two data-parallel ranks that would go on for long.
static pid_t start_job(const char *name, const char *extra, char *dir, size_t cap, char *log,
                       size_t log_cap) {
  snprintf(dir, cap, "%s/%s", lt_test_tmpdir(), name);
  snprintf(log, log_cap, "%s.log", dir);
  char args[2048];
  snprintf(args, sizeof args,
           "train --config %s --set run.dir=%s --set parallel.dp=2 --set train.steps=1000000 "
           "--set checkpoint.every=0 --set train.eval_every=0 %s",
           lt_test_run_files_get()->config, dir, extra);
  return lt_test_spawn_mpi(log, 2, args);
}

// The exit status of `pid` once it ends; fails the test (after killing it) past the deadline.
static int wait_bounded(pid_t pid, const char *log, double *seconds) {
  const double start = now_s();
  for (;;) {
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      *seconds = now_s() - start;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    if (now_s() - start > DEADLINE_S) {
      kill(pid, SIGKILL);
      waitpid(pid, NULL, 0);
      char *text = lt_test_read_text(log);
      fail_msg("the job did not end within %d s; log:\n%s", DEADLINE_S, text ? text : "");
    }
    usleep(10000);
  }
}

// Whether RUN/metrics.jsonl has at least n records (the job is training); false if it ended.
static bool wait_for_records(const char *dir, int n, pid_t pid) {
  for (int i = 0; i < 60000; i++) {
    lt_test_records records;
    lt_test_read_records(dir, &records);
    if (records.n >= n) return true;
    if (waitpid(pid, NULL, WNOHANG) == pid) return false;
    usleep(1000);
  }
  return false;
}

// The process of world rank `rank` started (directly or not) by `launcher`, or -1.
static pid_t find_rank(pid_t launcher, int rank) {
  char want[64];
  snprintf(want, sizeof want, "OMPI_COMM_WORLD_RANK=%d", rank);
  DIR *proc = opendir("/proc");
  pid_t found = -1;
  for (struct dirent *e; proc && found < 0 && (e = readdir(proc));) {
    pid_t pid = (pid_t)atoi(e->d_name);
    if (pid <= 0) continue;
    // Is `launcher` among its ancestors?
    bool ours = false;
    for (pid_t p = pid, depth = 0; p > 1 && depth < 4 && !ours; depth++) {
      char path[64], buf[512];
      snprintf(path, sizeof path, "/proc/%d/stat", p);
      FILE *f = fopen(path, "r");
      if (!f) break;
      size_t got = fread(buf, 1, sizeof buf - 1, f);
      fclose(f);
      buf[got] = '\0';
      const char *close_paren = strrchr(buf, ')');
      int ppid = 0;
      if (!close_paren || sscanf(close_paren + 2, "%*c %d", &ppid) != 1) break;
      ours = ppid == launcher;
      p = ppid;
    }
    if (!ours) continue;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/environ", pid);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    char var[4096];
    size_t len = 0;
    int c;
    while ((c = fgetc(f)) != EOF) { // NUL-separated NAME=value entries
      if (c && len + 1 < sizeof var) {
        var[len++] = (char)c;
        continue;
      }
      var[len] = '\0';
      if (strcmp(var, want) == 0) found = pid;
      len = 0;
    }
    fclose(f);
  }
  if (proc) closedir(proc);
  return found;
}

static void expect_log(const char *log, const char *const *parts) {
  char *text = lt_test_read_text(log);
  for (int i = 0; parts[i]; i++)
    if (!strstr(text, parts[i])) fail_msg("'%s' is missing from the log:\n%s", parts[i], text);
  free(text);
}

static void test_a_killed_rank_ends_the_job_naming_it(void **state) {
  (void)state;
  char dir[512], log[600];
  pid_t job = start_job("killed", "", dir, sizeof dir, log, sizeof log);
  if (!wait_for_records(dir, 2, job)) fail_msg("the job ended before training two steps");
  pid_t rank1 = find_rank(job, 1);
  assert_true(rank1 > 0);
  assert_int_equal(kill(rank1, SIGKILL), 0);
  double seconds;
  int status = wait_bounded(job, log, &seconds);
  assert_true(status != 0);
  // Open MPI's launcher names the rank and the signal.
  expect_log(log, (const char *const[]){"rank 1", "exited on signal 9", NULL});
  printf("killed rank 1: the job ended %.1f s later with status %d\n", seconds, status);
}

static void test_a_hung_rank_ends_the_job_after_the_timeout(void **state) {
  (void)state;
  char dir[512], log[600];
  setenv("LT_FAULT_INJECT", "hang:rank=1,step=3", 1);
  pid_t job = start_job("hung", "--set parallel.timeout_s=2", dir, sizeof dir, log, sizeof log);
  unsetenv("LT_FAULT_INJECT");
  double seconds;
  int status = wait_bounded(job, log, &seconds);
  assert_int_equal(status, LT_ERR_COMM);
  // Rank 0 waited in step 3's first collective (the token count over dp x cp) for rank 1.
  expect_log(log, (const char *const[]){"longtrain: error: rank 0: all-reduce over the dp*cp group "
                                        "waited ",
                                        "(parallel.timeout_s 2): a peer died or hangs", NULL});
  lt_test_records records;
  lt_test_read_records(dir, &records);
  assert_int_equal(records.n, 2); // steps 1 and 2, then nothing
  printf("hung rank 1 at step 3: the job ended %.1f s after it started, status %d\n", seconds,
         status);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a_killed_rank_ends_the_job_naming_it),
      cmocka_unit_test(test_a_hung_rank_ends_the_job_after_the_timeout),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
