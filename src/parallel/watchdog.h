// The watchdog: a rank that waits in one communication longer than parallel.timeout_s ends the
// whole job, so a peer that died or hangs cannot hold hundreds of GPUs forever.
//
// Every blocking wait in src/parallel/ (a collective, lt_wait, a device transfer's completion)
// is bracketed by lt_watch_begin / lt_watch_end. A thread wakes a few times per timeout; when
// the wait in progress has lasted timeout_s it prints one line naming this rank, the operation
// and the group ("longtrain: error: rank 3: all-reduce over the dp*cp group waited 600 s ..."),
// and calls MPI_Abort, which makes the launcher kill every rank with status 9 (LT_ERR_COMM).
//
// A rank that dies outright (a segfault, the OOM killer, kill -9) is noticed by the launcher
// itself: Open MPI's mpirun kills the others and names the rank ("mpirun noticed that process
// rank 1 ... exited on signal 9"). The watchdog covers what it cannot see: a rank stuck in a
// loop, a deadlock, a hung file system, a peer whose network vanished.
#ifndef LT_WATCHDOG_H
#define LT_WATCHDOG_H

// Starts the watchdog thread of this process (rank `rank`); a further call sets the timeout, and
// the thread ends at the lt_watchdog_stop matching the first start. Without it, lt_watch_begin
// and lt_watch_end only note the time.
int lt_watchdog_start(int timeout_s, int rank);
void lt_watchdog_stop(void);

// The calling thread now waits in operation `op` over group `group` (names kept by pointer:
// string constants or a mesh group's name), until lt_watch_end.
void lt_watch_begin(const char *op, const char *group);
void lt_watch_end(void);

#endif
