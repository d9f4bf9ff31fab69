#!/usr/bin/env bash
# Reproduces the README's table of which token mixers solve MQAR (and passkey retrieval) at which
# state size and length, with `longtrain train` and `longtrain eval` on the CPU:
#
#   bash tools/mqar_table.sh            # after building build/longtrain
#
# For each config of configs/mqar/ and each width (d_model 64 and 128, heads of 16 and 32):
#   stage 1: trains from scratch on MQAR with 8 key-value pairs in 64 tokens (1000 steps);
#   stage 2: continues from those weights (--init-from) with 24 pairs in 256 tokens (300 steps).
# Each stage's last checkpoint is scored by `longtrain eval` on 1000 held-out sequences, and stage
# 1's also at 256 tokens before it trains there. Then passkey retrieval trained at 64 tokens for
# three stacks, scored at 64, 256 and 1024 tokens. Runs are one thread each, JOBS at a time (default 2), into
# OUT (default runs/mqar-table); a run whose result is there already is not run again, so an
# interrupted table continues where it stopped. The table goes to stdout and OUT/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/mqar-table}
bin=${LONGTRAIN:-build/longtrain}
jobs=${JOBS:-2}
samples=${SAMPLES:-1000}
kinds=${KINDS-softmax sparse linear lightning hybrid moh window-linear window-lightning}
widths=${WIDTHS-64 128}
passkey_kinds=${PASSKEY_KINDS-softmax lightning lightning,softmax}
mkdir -p "$out"

# `longtrain eval` CKPT ARGS..., its JSON line into FILE (first argument), unless FILE is there.
score() {
  local file=$1
  shift
  if [ -s "$file" ]; then return; fi
  "$bin" eval "$@" --samples "$samples" > "$file.log"
  tail -n 1 "$file.log" > "$file"
}

# `longtrain train` ARGS... into RUN (first argument; the log beside it), unless its last
# checkpoint CKPT (second argument) is there.
train() {
  local run=$1 ckpt=$2
  shift 2
  if [ -d "$run/checkpoints/$ckpt" ]; then return; fi
  "$bin" train "$@" --set run.dir="$run" > "$run.log"
}

mqar() {
  local kind=$1 width=$2
  local dir=$out/$kind-d$width
  local size=(--set model.d_model="$width" --set model.ffn_dim=$((2 * width)))
  mkdir -p "$dir"
  train "$dir/t64" step_00001000 --config "configs/mqar/$kind.yaml" "${size[@]}"
  score "$dir/t64.json" "$dir/t64/checkpoints/step_00001000"
  score "$dir/t64-at256.json" "$dir/t64/checkpoints/step_00001000" --seq-len 256 \
    --set data.task_pairs=24
  train "$dir/t256" step_00000300 --config "configs/mqar/$kind.yaml" "${size[@]}" \
    --init-from "$dir/t64/checkpoints/step_00001000" --set train.seq_len=256 \
    --set data.task_pairs=24 --set train.batch=8 --set train.steps=300 --set train.lr=1e-3 \
    --set train.min_lr=1e-4 --set train.warmup=30
  score "$dir/t256.json" "$dir/t256/checkpoints/step_00000300"
}

passkey() {
  local kind=$1
  local dir=$out/passkey-${kind//,/-}
  mkdir -p "$dir"
  train "$dir/t64" step_00001000 --config configs/mqar/passkey.yaml --set model.attention="$kind"
  score "$dir/t64.json" "$dir/t64/checkpoints/step_00001000"
  for T in 256 1024; do
    score "$dir/t$T.json" "$dir/t64/checkpoints/step_00001000" --seq-len $T \
      --set model.max_seq_len=$T
  done
}

export -f score train mqar passkey
export out bin samples
{
  for kind in $kinds; do for width in $widths; do echo "mqar $kind $width"; done; done
  for kind in $passkey_kinds; do echo "passkey $kind"; done
} | xargs -P "$jobs" -L 1 bash -c 'set -euo pipefail; "$@"' _

python3 - "$out" "$kinds" "$widths" "$passkey_kinds" << 'EOF' | tee "$out/table.md"
import json, re, sys

out, kinds, widths, passkey_kinds = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split()
mixers = {"softmax": "softmax", "sparse": "sparse, window 32", "linear": "linear (elu+1)",
          "lightning": "lightning", "hybrid": "lightning, softmax", "moh": "MoH (1 shared + 2 of 3)",
          "window-linear": "sparse window 4, linear", "window-lightning": "sparse window 4, lightning"}

def state(kind, d, T):
    """Numbers each layer holds about the tokens it has read, per sequence (Zoology's state size):
    keys and values for attention (all T, or the window's), d_head^2 per head for linear kinds
    (plus d_head for the denominator of linear's normalisation)."""
    dh = d // 4
    kv, recurrent = 2 * T * d, 4 * dh * dh
    window = lambda w: 2 * w * d
    return {"softmax": f"{kv:,}", "moh": f"{kv:,}", "sparse": f"{window(32):,}",
            "linear": f"{recurrent + 4 * dh:,}", "lightning": f"{recurrent:,}",
            "hybrid": f"{recurrent:,} / {kv:,}",
            "window-linear": f"{window(4):,} / {recurrent + 4 * dh:,}",
            "window-lightning": f"{window(4):,} / {recurrent:,}"}[kind]

def result(path):
    return json.load(open(path))

def seconds(log):
    found = re.search(r"in ([0-9.]+) s;", open(log).read())
    return float(found.group(1)) if found else float("nan")

print("| token mixers (layer 1, layer 2) | d_model (heads of) | state per layer, T=64 | 64 tokens, 8 pairs | "
      "state per layer, T=256 | 256 tokens, 24 pairs: untrained length | after 300 steps at 256 | "
      "train time |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for kind in kinds:
    for width in widths:
        d, base = int(width), f"{out}/{kind}-d{width}"
        a, b, c = (result(f"{base}/{name}.json") for name in ("t64", "t64-at256", "t256"))
        time = seconds(f"{base}/t64.log") + seconds(f"{base}/t256.log")
        print(f"| {mixers[kind]} | {d} ({d // 4}) | {state(kind, d, 64)} | {a['accuracy']:.3f} | "
              f"{state(kind, d, 256)} | {b['accuracy']:.3f} | {c['accuracy']:.3f} | {time:.0f} s |")
print()
print("| passkey, 5 digits, trained at 64 tokens | 64 tokens | 256 tokens, depth 0-0.2 | 0.2-0.4 | "
      "0.4-0.6 | 0.6-0.8 | 0.8-1 | 256 tokens | 1024 tokens | train time |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for kind in passkey_kinds:
    base = f"{out}/passkey-{kind.replace(',', '-')}"
    a, b, c = (result(f"{base}/t{T}.json") for T in (64, 256, 1024))
    buckets = " | ".join(f"{x['exact_match']:.2f}" for x in b["buckets"])
    print(f"| {kind} | {a['exact_match']:.3f} | {buckets} | {b['exact_match']:.3f} | "
          f"{c['exact_match']:.3f} | {seconds(f'{base}/t64.log'):.0f} s |")
EOF
