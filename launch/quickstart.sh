#!/usr/bin/env bash
# The quickstart in one command: install the Debian packages, build, tokenize the English text of
# Debian's `fortunes` packages into data/fortunes.h5, and train the demo model on the CPU
# (configs/quickstart.yaml, about two minutes on 2 cores). Extra arguments go to `longtrain train`,
# e.g. --set train.steps=500.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target longtrain
if [ ! -f data/fortunes.h5 ]; then
  mkdir -p data
  mapfile -t texts < <(find /usr/share/games/fortunes -type f ! -name '*.dat' | sort)
  build/longtrain prepare --output data/fortunes.h5 --doc-separator % "${texts[@]}"
fi
exec build/longtrain train --config configs/quickstart.yaml "$@"
