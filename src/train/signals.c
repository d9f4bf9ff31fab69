#include "train/signals.h"

#include <signal.h>
#include <string.h>

static volatile sig_atomic_t pending = 0;
static struct sigaction previous_term, previous_usr1;

static void on_signal(int signo) {
  pending = signo;
}

void lt_signals_install(void) {
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART; // a write or read in progress completes instead of failing
  pending = 0;
  sigaction(SIGTERM, &action, &previous_term);
  sigaction(SIGUSR1, &action, &previous_usr1);
}

void lt_signals_restore(void) {
  sigaction(SIGTERM, &previous_term, NULL);
  sigaction(SIGUSR1, &previous_usr1, NULL);
}

int lt_signals_pending(void) {
  return pending;
}
