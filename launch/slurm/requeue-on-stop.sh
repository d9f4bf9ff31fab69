#!/usr/bin/env bash
# The step every longtrain batch script runs: `srun longtrain ARGS` over all the job's tasks, then
# a requeue when longtrain stopped on request (exit status 11: SIGUSR1 from --signal before the
# time limit, or SIGTERM), so that the next attempt continues with --resume auto.
#
#   bash launch/slurm/requeue-on-stop.sh train --config run.yaml --resume auto [...]
#
# Signals. `#SBATCH --signal=USR1@120` (without `B:`) makes Slurm send SIGUSR1 to every task of the
# job's steps, here every longtrain rank, but not to this batch shell: each rank finishes its
# step, they save one checkpoint together and all exit with 11. Preemption and `scancel` send
# SIGTERM to the steps and to this shell too; the shell must outlive srun to see its status, so
# it traps SIGTERM and keeps waiting (Slurm sends SIGKILL after the cluster's KillWait, 30 s by
# default, or the preemption GraceTime).
#
# Environment: LONGTRAIN (the binary; default build/longtrain under the submission folder),
# LT_SRUN_ARGS (extra srun arguments, e.g. "--mpi=pmi2" where the cluster's MPI needs it).
set -uo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
if [ -z "${SLURM_JOB_ID:-}" ]; then
  echo "requeue-on-stop: not inside a Slurm job: submit a template with sbatch" >&2
  exit 2
fi
longtrain=${LONGTRAIN:-build/longtrain}
# NVLink multicast (NVLS) stays off unless the site turns it on.
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
# longtrain's CPU threads (run.threads 0 means all the cores it may use): the cores of one task.
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-${OMP_NUM_THREADS:-1}}

echo "requeue-on-stop: job $SLURM_JOB_ID, attempt $((${SLURM_RESTART_COUNT:-0} + 1)), \
${SLURM_NTASKS:-?} tasks on ${SLURM_JOB_NODELIST:-?}: $longtrain $*"
trap 'echo "requeue-on-stop: SIGTERM: waiting for longtrain to write its checkpoint"' TERM
# One task per GPU (or per share of the cores); --kill-on-bad-exit: a rank that fails ends the
# others at once instead of leaving them waiting in a collective. ${LT_SRUN_ARGS} is split at
# spaces on purpose: it holds several options.
# shellcheck disable=SC2086
srun --kill-on-bad-exit=1 ${LT_SRUN_ARGS:-} "$longtrain" "$@" &
srun_pid=$!
status=0
while true; do
  wait "$srun_pid"
  status=$?
  # wait returns early (status > 128) when the trapped SIGTERM arrives; srun is still running.
  kill -0 "$srun_pid" 2>/dev/null || break
done
if [ "$status" -eq 11 ]; then
  echo "requeue-on-stop: longtrain stopped after a checkpoint (status 11): requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
echo "requeue-on-stop: longtrain exited with status $status"
exit "$status"
