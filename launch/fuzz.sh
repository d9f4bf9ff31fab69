#!/usr/bin/env bash
# The libFuzzer targets (tests/fuzz): the config parser, the dataset reader and the checkpoint
# reader, built with clang, ASan and UBSan into build-fuzz/, each run for LT_FUZZ_SECONDS
# (default 20) from the committed seed corpus (tests/fuzz/corpus, left unchanged). Fails on any
# crash, sanitizer report, leak of longtrain's or broken invariant; the input that caused it is
# kept in build-fuzz/artifacts/ (rerun it with build-fuzz/tests/fuzz/fuzz_TARGET FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${LT_FUZZ_SECONDS:-20}
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLT_FUZZ=ON -DLT_TESTS=OFF \
  >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target fuzz_config fuzz_dataset fuzz_checkpoint >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p build-fuzz/artifacts
# HDF5 leaks part of what it allocated for a file it could not open: its leaks, not ours.
export LSAN_OPTIONS="suppressions=$PWD/tests/fuzz/lsan.supp"
export TMPDIR="$work" # where the targets write the files they open
for target in config dataset checkpoint; do
  mkdir -p "$work/$target"
  if ! "build-fuzz/tests/fuzz/fuzz_$target" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -artifact_prefix="build-fuzz/artifacts/$target-" \
    "$work/$target" "tests/fuzz/corpus/$target" >"$work/$target.log" 2>&1; then
    tail -40 "$work/$target.log"
    echo "fuzz: fuzz_$target found a problem; the input is in build-fuzz/artifacts/"
    exit 1
  fi
  echo "fuzz: fuzz_$target: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$work/$target.log"), nothing found"
done
