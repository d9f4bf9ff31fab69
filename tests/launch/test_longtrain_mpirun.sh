#!/usr/bin/env bash
# launch/longtrain-mpirun: the mpirun line it builds for a few configs and machines (--dry-run,
# with a stand-in nvidia-smi and Slurm's variables), its one-line refusals, and a real 2-rank run.
#   bash tests/launch/test_longtrain_mpirun.sh BUILD_DIR/longtrain
set -euo pipefail
cd "$(dirname "$0")/../.."
longtrain=$(realpath "${1:?usage: test_longtrain_mpirun.sh LONGTRAIN_BINARY}")
work=$(mktemp -d)
trap '[ -n "${LT_KEEP:-}" ] || rm -rf "$work"' EXIT
failures=0
fail() {
  echo "FAILED: $*"
  failures=$((failures + 1))
}

# A machine with 8 GPUs, as nvidia-smi -L lists them.
mkdir "$work/gpus"
cat >"$work/gpus/nvidia-smi" <<'EOS'
#!/bin/sh
for i in 0 1 2 3 4 5 6 7; do echo "GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-0000000$i)"; done
EOS
chmod +x "$work/gpus/nvidia-smi"

root=""
[ "$(id -u)" -ne 0 ] || root=" --allow-run-as-root"
config=configs/quickstart.yaml
# The wrapper in a clean environment: `ENV_ASSIGNMENTS... -- WRAPPER ARGS...`.
wrapper() {
  local assignments=()
  while [ "$1" != -- ]; do assignments+=("$1") && shift; done
  shift
  env -i HOME="$HOME" PATH="/usr/bin:/bin" LONGTRAIN="$longtrain" "${assignments[@]}" \
    bash launch/longtrain-mpirun "$@"
}
# `expect_line NAME EXPECTED ENV... -- ARGS...`: the dry run prints EXPECTED.
expect_line() {
  local name=$1 expected=$2
  shift 2
  local got
  got=$(wrapper "$@" 2>&1) || true
  [ "$got" = "$expected" ] || fail "$name: expected
  $expected
got
  $got"
}
# `expect_error NAME STATUS PART ENV... -- ARGS...`: one line on stderr holding PART, exit STATUS.
expect_error() {
  local name=$1 status=$2 part=$3
  shift 3
  local got rc=0
  got=$(wrapper "$@" 2>&1 >/dev/null) || rc=$?
  [ "$rc" -eq "$status" ] || fail "$name: exit status $rc, expected $status ($got)"
  [ "$(wc -l <<<"$got")" -eq 1 ] || fail "$name: expected one line, got: $got"
  [[ $got == *"$part"* ]] || fail "$name: '$part' not in: $got"
}

expect_line "one CPU node: every rank on its share of the cores" \
  "mpirun -np 2 --map-by ppr:2:node:PE=2 --bind-to core$root -x NCCL_NVLS_ENABLE -x OMP_NUM_THREADS $longtrain train --config $config --set parallel.dp=2" \
  -- --dry-run --cores-per-node 4 train --config $config --set parallel.dp=2

expect_line "two nodes of 8 GPUs: 16 ranks, 8 per node, NCCL settings passed on" \
  "mpirun -np 16 --map-by ppr:8:node:PE=4 --bind-to core --host node1:8,node2:8$root -x LT_TRACE -x NCCL_DEBUG -x NCCL_NVLS_ENABLE -x OMP_NUM_THREADS $longtrain train --config $config --set parallel.dp=4 --set parallel.tp=4 --resume auto" \
  PATH="$work/gpus:/usr/bin:/bin" NCCL_DEBUG=INFO LT_TRACE=1 -- \
  --dry-run --hosts node1,node2 --cores-per-node 32 train --config $config \
  --set parallel.dp=4 --set parallel.tp=4 --resume auto

expect_line "a Slurm allocation of 2 nodes with 2 visible GPUs each: mpirun takes the nodes from Slurm" \
  "mpirun -np 4 --map-by ppr:2:node --bind-to socket$root -x NCCL_NVLS_ENABLE -x OMP_NUM_THREADS $longtrain train --config $config --set parallel.cp=4" \
  CUDA_VISIBLE_DEVICES=0,1 SLURM_JOB_ID=3 SLURM_NTASKS=4 SLURM_JOB_NUM_NODES=2 SLURM_CPUS_ON_NODE=16 -- \
  --dry-run --bind socket train --config $config --set parallel.cp=4

expect_line "more ranks than cores: unpinned and oversubscribed" \
  "mpirun -np 4 --map-by ppr:4:node --bind-to none --oversubscribe$root -x NCCL_NVLS_ENABLE -x OMP_NUM_THREADS $longtrain train --config $config --set parallel.dp=4" \
  -- --dry-run --cores-per-node 2 train --config $config --set parallel.dp=4

expect_error "a Slurm job of another task count" 3 "Slurm job 5 has 2 tasks (SLURM_NTASKS)" \
  SLURM_JOB_ID=5 SLURM_NTASKS=2 -- --dry-run train --config $config --set parallel.dp=4
expect_error "more ranks per node than GPUs" 3 "12 ranks per node but 8 GPUs per node" \
  PATH="$work/gpus:/usr/bin:/bin" -- --dry-run --ranks-per-node 12 train --config $config --set parallel.dp=12 --set train.batch=24
expect_error "more ranks than GPU slots" 3 "1 node(s) x 8 ranks per node hold only 8" \
  PATH="$work/gpus:/usr/bin:/bin" -- --dry-run train --config $config --set parallel.dp=4 --set parallel.tp=4
expect_error "several nodes without GPUs and no ranks per node" 3 "give --ranks-per-node" \
  -- --dry-run --hosts a,b train --config $config --set parallel.dp=2
expect_error "a bad config" 3 "parallel.dp expects an integer" \
  -- --dry-run train --config $config --set parallel.dp=two
expect_error "an unknown binding" 2 "--bind takes core, socket or none" \
  -- --dry-run --bind numa train --config $config
expect_error "another command than train" 2 "give the longtrain command" -- --dry-run info runs/x

# A real run: 2 ranks on this machine. Each rank has 2 of the 4 sequences of a step (one
# micro-batch of 2: a single process would take two).
{ for _ in $(seq 200); do echo "the two ranks of this run read different windows of this text"; done; } >"$work/text.txt"
"$longtrain" prepare --output "$work/text.h5" "$work/text.txt" >/dev/null
cat >"$work/tiny.yaml" <<EOS
model: {d_model: 32, n_layers: 1, n_heads: 2, ffn_dim: 64, vocab_size: 320, max_seq_len: 16}
parallel: {dp: 2}
train: {steps: 3, batch: 4, micro_batch: 2, seq_len: 16}
data: {path: $work/text.h5}
run: {dir: $work/run, threads: 1}
EOS
if ! env -u CUDA_VISIBLE_DEVICES LONGTRAIN="$longtrain" OMPI_MCA_rmaps_base_oversubscribe=1 \
  bash launch/longtrain-mpirun --cores-per-node 2 train --config "$work/tiny.yaml" >"$work/run.log" 2>&1; then
  fail "the 2-rank run failed: $(tail -5 "$work/run.log")"
fi
grep -q "longtrain-mpirun: 2 ranks" "$work/run.log" || fail "the wrapper did not start 2 ranks"
grep -q "(1 micro-batch of 2)" "$work/run.log" || fail "the ranks did not split the batch: $(cat "$work/run.log")"
grep -q "done: 3 steps" "$work/run.log" || fail "the 2-rank run did not finish"
[ "$(wc -l <"$work/run/metrics.jsonl")" -eq 3 ] || fail "the 2-rank run did not log 3 steps"

[ $failures -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "longtrain-mpirun: all checks passed"
