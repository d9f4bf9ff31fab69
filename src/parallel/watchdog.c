#include "parallel/watchdog.h"

#include <errno.h>
#include <mpi.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/error.h"

static struct {
  pthread_mutex_t lock;
  pthread_cond_t wake; // lt_watchdog_stop wakes the thread to end it
  pthread_t thread;
  int users; // lt_watchdog_start calls not yet stopped: the thread runs while there are any
  bool stopping;
  int timeout_s, rank;
  const char *op, *group; // the wait in progress, or op == NULL
  struct timespec since;  // CLOCK_MONOTONIC
} watch = {.lock = PTHREAD_MUTEX_INITIALIZER};

static double seconds_since(const struct timespec *t) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (double)(now.tv_sec - t->tv_sec) + 1e-9 * (double)(now.tv_nsec - t->tv_nsec);
}

static void *watch_loop(void *unused) {
  (void)unused;
  pthread_mutex_lock(&watch.lock);
  while (!watch.stopping) {
    // Wakes ten times per timeout (at most once a second): the job ends within 10% of it.
    double period = watch.timeout_s / 10.0;
    if (period > 1.0) period = 1.0;
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    long long ns = until.tv_nsec + (long long)(period * 1e9);
    until.tv_sec += (time_t)(ns / 1000000000), until.tv_nsec = (long)(ns % 1000000000);
    int rc = pthread_cond_timedwait(&watch.wake, &watch.lock, &until);
    if (rc != 0 && rc != ETIMEDOUT) break;
    if (watch.stopping || !watch.op) continue;
    const double waited = seconds_since(&watch.since);
    if (waited < watch.timeout_s) continue;
    fprintf(stderr,
            "longtrain: error: rank %d: %s over the %s group waited %.0f s (parallel.timeout_s "
            "%d): a peer died or hangs; ending the job (the launcher's messages may name the "
            "rank that died)\n",
            watch.rank, watch.op, watch.group, waited, watch.timeout_s);
    fflush(stderr);
    // The main thread is inside MPI; ending the job from here is what MPI_Abort is for, and
    // Open MPI accepts it from any thread.
    MPI_Abort(MPI_COMM_WORLD, LT_ERR_COMM);
  }
  pthread_mutex_unlock(&watch.lock);
  return NULL;
}

int lt_watchdog_start(int timeout_s, int rank) {
  pthread_mutex_lock(&watch.lock);
  watch.timeout_s = timeout_s, watch.rank = rank;
  const bool start = watch.users++ == 0;
  watch.stopping = false;
  pthread_mutex_unlock(&watch.lock);
  if (!start) return LT_OK;
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&watch.wake, &attr);
  pthread_condattr_destroy(&attr);
  int rc = pthread_create(&watch.thread, NULL, watch_loop, NULL);
  if (rc != 0) {
    watch.users = 0;
    return lt_fail(LT_ERR_INTERNAL, "cannot start the watchdog thread: %s", strerror(rc));
  }
  return LT_OK;
}

void lt_watchdog_stop(void) {
  pthread_mutex_lock(&watch.lock);
  const bool last = watch.users > 0 && --watch.users == 0;
  if (last) {
    watch.stopping = true;
    pthread_cond_signal(&watch.wake);
  }
  pthread_mutex_unlock(&watch.lock);
  if (!last) return;
  pthread_join(watch.thread, NULL);
  pthread_cond_destroy(&watch.wake);
}

void lt_watch_begin(const char *op, const char *group) {
  pthread_mutex_lock(&watch.lock);
  watch.op = op, watch.group = group;
  clock_gettime(CLOCK_MONOTONIC, &watch.since);
  pthread_mutex_unlock(&watch.lock);
}

void lt_watch_end(void) {
  pthread_mutex_lock(&watch.lock);
  watch.op = NULL;
  pthread_mutex_unlock(&watch.lock);
}
