#!/usr/bin/env bash
# The libFuzzer targets (tests/fuzz): the config parser, the dataset reader and the checkpoint
# reader, built with clang, ASan and UBSan into build-fuzz/, each run from the committed seed
# corpus (tests/fuzz/corpus, left unchanged). Fails on any crash, sanitizer report, leak of
# longtrain's or broken invariant; the input that caused it is kept in build-fuzz/artifacts/
# (rerun it with build-fuzz/tests/fuzz/fuzz_TARGET FILE).
#
# By default (CI) the run is reproducible: each target runs a fixed number of inputs (RUNS below,
# about 10-20 s each on a 2-core machine) from a fixed seed, so every run tests the same inputs
# and finds the same coverage (printed). What else would make two runs of one seed differ is
# switched off: address space randomisation (setarch -R; addresses reach libFuzzer through
# compared values, and alignment changes how often vectorised loops run) and libFuzzer's timed
# re-read of its corpus folder (-reload=0). -max_total_time only guards against a stalled machine:
# a target that reaches it stops early with a warning. The targets write their files on a tmpfs
# (/dev/shm) where there is one: on disk, rewriting a file that is still being written back
# makes each run wait for the disk (10 times slower here).
#
# LT_FUZZ_SECONDS=N bash launch/fuzz.sh: a longer hunt, N seconds per target from a random seed
# (printed). LT_FUZZ_TARGETS="dataset" picks targets.
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A RUNS=([config]=120000 [dataset]=10000 [checkpoint]=150000)
targets=${LT_FUZZ_TARGETS:-config dataset checkpoint}
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLT_FUZZ=ON -DLT_TESTS=OFF \
  >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target $(printf 'fuzz_%s ' $targets) >/dev/null
if [ -d /dev/shm ] && [ -w /dev/shm ]; then work=$(mktemp -d -p /dev/shm); else work=$(mktemp -d); fi
trap 'rm -rf "$work"' EXIT
fixed=()
if [ -z "${LT_FUZZ_SECONDS:-}" ]; then
  if setarch "$(uname -m)" -R true 2>/dev/null; then
    fixed=(setarch "$(uname -m)" -R)
  else
    echo "fuzz: note: cannot switch off address space randomisation here (setarch -R): coverage" \
      "may differ a little from one run to the next"
  fi
fi
mkdir -p build-fuzz/artifacts
# HDF5 leaks part of what it allocated for a file it could not open: its leaks, not ours.
export LSAN_OPTIONS="suppressions=$PWD/tests/fuzz/lsan.supp"
export TMPDIR="$work" # where the targets write the files they open
for target in $targets; do
  if [ -n "${LT_FUZZ_SECONDS:-}" ]; then
    mode=(-max_total_time="$LT_FUZZ_SECONDS")
  else
    mode=(-seed=1 -runs="${RUNS[$target]}" -reload=0 -max_total_time=300)
  fi
  mkdir -p "$work/$target"
  if ! "${fixed[@]}" "build-fuzz/tests/fuzz/fuzz_$target" "${mode[@]}" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="build-fuzz/artifacts/$target-" \
    "$work/$target" "tests/fuzz/corpus/$target" >"$work/$target.log" 2>&1; then
    tail -40 "$work/$target.log"
    echo "fuzz: fuzz_$target found a problem; the input is in build-fuzz/artifacts/"
    exit 1
  fi
  summary=$(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$work/$target.log")
  seed=$(grep -o 'Seed: [0-9]*' "$work/$target.log")
  coverage=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$work/$target.log" | tail -1)
  echo "fuzz: fuzz_$target: $summary (${seed,}), $coverage, nothing found"
  runs=${summary#Done }
  runs=${runs%% *}
  if [ -z "${LT_FUZZ_SECONDS:-}" ] && [ "$runs" -lt "${RUNS[$target]}" ]; then
    echo "fuzz: warning: fuzz_$target stopped at the time limit after $runs of ${RUNS[$target]} runs (machine too busy?)"
  fi
done
