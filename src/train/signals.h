// Stopping on request: SIGTERM (what Slurm and Kubernetes send before killing a job) and SIGUSR1
// (Slurm's --signal=USR1@seconds warning) only set a flag. The training loop finishes the step it
// is in, writes a checkpoint and exits with LT_STOPPED, so a scheduler can requeue the job and
// `--resume auto` continues it.
#ifndef LT_SIGNALS_H
#define LT_SIGNALS_H

// Installs the handlers (and clears a flag from before).
void lt_signals_install(void);
// Puts back the handlers that were there before lt_signals_install.
void lt_signals_restore(void);
// The signal that asked to stop (SIGTERM or SIGUSR1), or 0.
int lt_signals_pending(void);

#endif
