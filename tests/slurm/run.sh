#!/usr/bin/env bash
# The Slurm templates against a real Slurm: starts munged, slurmctld and slurmd on this machine
# (as root, everything under a temporary folder), submits launch/slurm/train.sbatch with a tiny
# config on 2 tasks, sends it SIGUSR1 mid-run as --signal=USR1@120 would, and checks that it wrote
# a checkpoint, exited with status 11, was requeued, resumed, and ended with exactly the
# metrics.jsonl records (loss, lr, grad norm, validation loss, tokens) of the same job run
# without interruption. Then the fine-tuning template starts from that run's checkpoint, and
# launch/longtrain-mpirun runs 2 ranks inside an allocation. The daemons it started are stopped by
# their process ids on every way out.
#
#   bash tests/slurm/run.sh [BUILD_DIR]     (default build; needs slurm-wlm and munge installed)
#
# Until the trainer sums gradients over data-parallel ranks, each rank of a 2-task job trains on
# its own share of the batch and rank 0's weights are the ones saved; so the dataset here repeats
# one window of text (every sample is the same sequence) and both ranks stay identical. The
# requeue, the signal, the checkpoint and the resume are what this test is about; bit-exact resume
# on varied data is test_resume.c's.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
build=${1:-build}
longtrain=$root/$build/longtrain

fail() {
  echo "slurm test: FAILED: $*"
  exit 1
}
[ "$(id -u)" -eq 0 ] || fail "must run as root (it starts slurmctld, slurmd and munged)"
for tool in munged slurmctld slurmd sbatch scontrol squeue scancel; do
  command -v "$tool" >/dev/null || fail "$tool is missing: install slurm-wlm and munge (launch/install-deps.sh)"
done
[ -x "$longtrain" ] || fail "$longtrain is missing: build it first (cmake --build $build)"

work=$(mktemp -d /tmp/longtrain-slurm.XXXXXX)
chmod 755 "$work"
pids=()
# Every way out: cancel the jobs, stop the daemons this script started (by pid), show the logs
# on failure, remove the folder.
cleanup() {
  local status=$?
  set +e
  if [ -f "$work/slurm.conf" ] && [ ${#pids[@]} -gt 0 ]; then
    [ $status -eq 0 ] || SLURM_CONF=$work/slurm.conf scontrol show job >"$work/jobs.log" 2>&1
    SLURM_CONF=$work/slurm.conf scancel --full --signal=KILL --user=root >/dev/null 2>&1
    for _ in $(seq 50); do
      [ -z "$(SLURM_CONF=$work/slurm.conf squeue -h 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [ $status -ne 0 ]; then
    for log in "$work"/*.log "$work"/*.out; do
      [ -f "$log" ] && { echo "--- $log (last 30 lines)"; tail -30 "$log"; }
    done
  fi
  [ -n "${LT_KEEP:-}" ] || rm -rf "$work"
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
  local seconds=$1
  shift
  local deadline=$((SECONDS + seconds))
  until "$@" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

# A free TCP port on localhost, from a range the usual daemons leave alone.
free_port() {
  local port
  for port in $(seq "$1" $(($1 + 200))); do
    ss -Htln "sport = :$port" | grep -q . || { echo "$port"; return; }
  done
  fail "no free TCP port from $1"
}

# --- munge: a fresh key, its socket in the folder.
mkdir -m 755 "$work/munge"
dd if=/dev/urandom of="$work/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$work/munge/munge.key"
munged --foreground --force --key-file="$work/munge/munge.key" \
  --socket="$work/munge/munge.socket" --pid-file="$work/munge/munged.pid" \
  --seed-file="$work/munge/munge.seed" --log-file="$work/munged.log" >"$work/munged.out" 2>&1 &
pids+=($!)
wait_for 10 test -S "$work/munge/munge.socket" || fail "munged did not start (see munged.log)"

# --- slurm.conf: this machine as the only node, with its real CPUs and memory.
node=$(hostname -s)
node_line=$(slurmd -C | head -1)
cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node_line")
memory=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
[ -n "$cpus" ] && [ -n "$memory" ] || fail "cannot read CPUs and RealMemory from slurmd -C: $node_line"
ctld_port=$(free_port 16817)
slurmd_port=$(free_port $((ctld_port + 1)))
mkdir -p "$work/state" "$work/spool"
cat >"$work/slurm.conf" <<EOF
ClusterName=longtrain-ci
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$work/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=pmix
GresTypes=gpu
JobRequeue=1
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
InactiveLimit=0
KillWait=10
MinJobAge=300
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:2
EOF
# Two stand-in GPUs (device files that exist on every machine), so that the templates'
# --gpus-per-node is honoured as on a GPU cluster.
printf 'AutoDetect=off\nNodeName=%s Name=gpu File=/dev/null,/dev/zero\n' "$node" >"$work/gres.conf"
export SLURM_CONF=$work/slurm.conf
slurmctld -D -i -f "$SLURM_CONF" >"$work/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" >"$work/slurmd.out" 2>&1 &
pids+=($!)
idle() { sinfo -h -N -o %t 2>/dev/null | grep -qx idle; }
wait_for 30 idle || fail "the node did not come up idle within 30 s (see slurmctld.log, slurmd.log)"
echo "slurm test: munged, slurmctld and slurmd up (pids ${pids[*]}); $cpus CPUs, ${memory} MB"

# --- a tiny run: every window of the dataset is the same 32 bytes of text (see the top).
period='Slurm requeues; longtrain goes on'
period=${period:0:32}
{
  for _ in $(seq 64); do printf '%s' "$period"; done
  printf '%s' "${period:0:1}"
} >"$work/periodic.txt"
"$longtrain" prepare --output "$work/periodic.h5" "$work/periodic.txt" >"$work/prepare.log" 2>&1 ||
  fail "longtrain prepare failed (see prepare.log)"
cat >"$work/tiny.yaml" <<EOF2
model: {d_model: 64, n_layers: 2, n_heads: 4, n_kv_heads: 2, ffn_dim: 128, vocab_size: 320,
        max_seq_len: 32}
parallel: {dp: 2}
train: {steps: 300, batch: 4, micro_batch: 2, seq_len: 32, lr: 1.0e-3, warmup: 5, eval_every: 10, eval_batches: 1}
data: {path: $work/periodic.h5, val_fraction: 0.1}
checkpoint: {every: 100, keep: 2}
run: {seed: 7, threads: 1, log_every: 10}
EOF2

# Submits a template for 2 tasks on this node (its other options as in the file); prints the id.
submit() {
  sbatch --parsable --nodes=1 --ntasks-per-node=2 --gpus-per-node=2 --cpus-per-task=1 --time=10 \
    --output="$work/%x-%j.out" "$@"
}
state() { scontrol show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }
finished() { [ "$(state "$1")" = COMPLETED ]; }
wait_finished() {
  wait_for "$2" finished "$1" || fail "job $1 is $(state "$1") after $2 s, not COMPLETED"
}
records() { [ -f "$1" ] && wc -l <"$1" || echo 0; }
# The records of metrics.jsonl without the timings: what must match bit for bit.
computed() { sed -E 's/, "tokens_per_s": [^,]*(, "tokens": [0-9]*), "elapsed_s": [^,]*, "eta_s": [^}]*/\1/' "$1"; }

export LONGTRAIN=$longtrain
started=$SECONDS
job=$(submit launch/slurm/train.sbatch "$work/tiny.yaml" --set "run.dir=$work/interrupted")
metrics=$work/interrupted/metrics.jsonl
# Mid-run: once 12 steps are logged (or the job ended, which fails below).
midway() { [ "$(records "$metrics")" -ge 12 ] || [ "$(state "$job")" = COMPLETED ] || [ "$(state "$job")" = FAILED ]; }
wait_for 60 midway || fail "job $job logged $(records "$metrics") steps in 60 s (state $(state "$job"))"
[ "$(state "$job")" = RUNNING ] || fail "job $job is $(state "$job") before the signal"
scancel --signal=USR1 "$job"
echo "slurm test: job $job: SIGUSR1 sent after step $(records "$metrics") of 300"
# Slurm makes a requeued job eligible again only 120 s later (its BeginTime), which leaves the
# node time to clean up after the stopped attempt: a step's slurmstepd outlives its tasks by a few
# seconds, and a new step of the same id cannot start while the old one holds its sockets. The
# test waits for that clean-up (the steps' sockets gone from the spool folder) and then starts the
# job. Not at once, though: slurmd revokes the killed attempt's credentials by the second, and a
# credential issued in the second of the kill counts as revoked too ("Job credential revoked",
# the job fails), so the start waits for the clock to pass that second.
requeued() {
  scontrol show job "$job" | grep -q 'Restarts=1 ' && [ "$(state "$job")" = PENDING ] && return 0
  case $(state "$job") in COMPLETED | FAILED | CANCELLED) fail "job $job ended ($(state "$job")) instead of being requeued" ;; esac
  return 1
}
steps_gone() { ! compgen -G "$work/spool/${node}_$job.*" && ! compgen -G "$work/spool/*.pmix.$job.*"; } >/dev/null
wait_for 60 requeued || fail "job $job was not requeued within 60 s (state $(state "$job"))"
wait_for 60 steps_gone || fail "the stopped attempt's steps did not end within 60 s of the requeue"
sleep 2
scontrol update JobId="$job" StartTime=now
wait_finished "$job" 120
log=$work/longtrain-$job.out
# Rank 0 says why: SIGUSR1, or "a signal to another rank" when another rank's arrived first.
grep -Eq "stopped by (SIGUSR1|a signal to another rank) after step" "$log" ||
  fail "job $job did not stop on SIGUSR1 ($log)"
grep -q "requeueing job $job" "$log" || fail "job $job was not requeued ($log)"
grep -q "attempt 2," "$log" || fail "job $job did not start a second attempt ($log)"
resumed=$(sed -n 's/.*resumed from .* at step \([0-9]*\).*/\1/p' "$log")
[ -n "$resumed" ] && [ "$resumed" -gt 0 ] && [ "$resumed" -lt 300 ] ||
  fail "the requeued job $job did not resume mid-run ($log)"
grep -q "done: 300 steps" "$log" || fail "the requeued job $job did not finish ($log)"
echo "slurm test: job $job stopped with status 11, was requeued and resumed at step $resumed"

straight=$(submit launch/slurm/train.sbatch "$work/tiny.yaml" --set "run.dir=$work/straight")
wait_finished "$straight" 120
[ "$(records "$work/straight/metrics.jsonl")" -eq 300 ] || fail "the uninterrupted job did not log 300 steps"
computed "$work/straight/metrics.jsonl" >"$work/straight.txt"
computed "$metrics" >"$work/interrupted.txt"
cmp -s "$work/straight.txt" "$work/interrupted.txt" ||
  fail "the requeued job's metrics differ from the uninterrupted job's: $(diff "$work/straight.txt" "$work/interrupted.txt" | head -4)"
echo "slurm test: the requeued job logged the same 300 records as the uninterrupted one, bit for bit"

tune=$(submit launch/slurm/finetune.sbatch "$work/tiny.yaml" "$work/straight/checkpoints/step_00000300" \
  --set "run.dir=$work/finetune" --set train.steps=10)
wait_finished "$tune" 120
grep -q "initialised from the weights of $work/straight/checkpoints/step_00000300" \
  "$work/longtrain-ft-$tune.out" || fail "the fine-tuning job did not start from the checkpoint"
grep -q "done: 10 steps" "$work/longtrain-ft-$tune.out" || fail "the fine-tuning job did not finish"
# The mpirun wrapper inside an allocation: Open MPI takes the nodes from Slurm, the wrapper checks
# the job's task count against the config.
wrapped=$(sbatch --parsable --nodes=1 --ntasks=2 --cpus-per-task=1 --time=10 \
  --output="$work/wrapped-%j.out" --wrap "launch/longtrain-mpirun --binary $longtrain train \
  --config $work/tiny.yaml --set run.dir=$work/wrapped --set train.steps=20")
wait_finished "$wrapped" 120
grep -q "longtrain-mpirun: 2 ranks" "$work/wrapped-$wrapped.out" && grep -q "done: 20 steps" \
  "$work/wrapped-$wrapped.out" || fail "launch/longtrain-mpirun did not run 2 ranks in the allocation"
echo "slurm test: passed in $((SECONDS - started)) s of jobs"
