#!/usr/bin/env bash
# All the tests in one command: install the Debian packages, build with warnings as errors, run
# the test suite under AddressSanitizer and UndefinedBehaviorSanitizer (launch/test-sanitizers.sh),
# run the fuzz targets (launch/fuzz.sh), run the Slurm templates against a real Slurm started on
# this machine (tests/slurm/run.sh; as root), and run every test of the normal build through
# ctest. Then the same tests with the CUDA backend built in (-DLT_CUDA=ON, Hopper sm_90a), so the
# CUDA code always compiles; its GPU tests skip where there is no GPU. Extra arguments go to ctest
# and skip the sanitizer, fuzz and Slurm stages (e.g. -R data, for a quick look at a few tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DLT_WERROR=ON >/dev/null
cmake --build build -j"$(nproc)"
if [ $# -eq 0 ]; then
  bash launch/test-sanitizers.sh
  bash launch/fuzz.sh
  if [ "$(id -u)" -eq 0 ]; then
    bash tests/slurm/run.sh build
  else
    echo "test: the Slurm stage needs root (it starts slurmctld, slurmd and munged): skipped"
  fi
fi
ctest --test-dir build --output-on-failure "$@"

if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi
cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DLT_WERROR=ON -DLT_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90a >/dev/null
cmake --build build-cuda -j"$(nproc)"
ctest --test-dir build-cuda --output-on-failure "$@"
