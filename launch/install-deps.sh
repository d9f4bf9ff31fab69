#!/usr/bin/env bash
# Installs the Debian packages longtrain needs to build, test and run its quickstart.
# Idempotent: packages already present are skipped. Run as root or with sudo available.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libopenblas-openmp-dev     # BLAS (sgemm) for the CPU kernels, sharing the OpenMP threads
  libhdf5-dev                # datasets and checkpoints
  libopenmpi-dev openmpi-bin # multi-process runs (mpirun)
  libyaml-dev                # configs
  libcjson-dev               # metrics JSONL, tokenizer.json
  libcmocka-dev              # tests
  clang libclang-rt-14-dev libomp-14-dev # libFuzzer targets (launch/fuzz.sh)
  python3-h5py               # the test that reads a checkpoint with h5py
  fortunes-min fortunes      # English text for the quickstart dataset
  gnuplot-nox                # longtrain plot: loss, learning rate and throughput curves as PNG
  slurm-wlm munge iproute2   # the Slurm templates' test against a real Slurm (tests/slurm/run.sh)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: installed ${missing[*]}"
