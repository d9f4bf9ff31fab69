#!/usr/bin/env bash
# All the tests in one command: install the Debian packages, build with warnings as errors, run
# the test suite under AddressSanitizer and UndefinedBehaviorSanitizer (launch/test-sanitizers.sh),
# run the fuzz targets for a bounded time (launch/fuzz.sh), and run every test of the normal build
# through ctest. Extra arguments go to ctest and skip the sanitizer and fuzz stages (e.g. -R data,
# for a quick look at a few tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DLT_WERROR=ON >/dev/null
cmake --build build -j"$(nproc)"
if [ $# -eq 0 ]; then
  bash launch/test-sanitizers.sh
  bash launch/fuzz.sh
fi
ctest --test-dir build --output-on-failure "$@"
