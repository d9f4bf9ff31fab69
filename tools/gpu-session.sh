#!/usr/bin/env bash
# One call on the GPU machine: build the CUDA build, run the tests (GPU ones included), and run the
# benchmarks against PyTorch, logging each stage to $OUT (or ./gpu-logs). Run from the project's
# root with the device folder (../shared/device copied into the project) as the first argument:
#   bash tools/gpu-session.sh .gpu build test attention lightning model-4k model-16k model-64k
# (passes: the memory-bound passes against a copy of the same bytes, bench_passes; ffn: the fused
# SwiGLU matmuls against the matmul then the SwiGLU pass, bench_swiglu_matmul.)
# (test-moe, moe and moe-profile: the MoE kernels' and layer's tests, and bench_moe.)
# Stages run in the order given; each has a time limit so one hang cannot eat the whole call.
# NO_REFERENCE=1 leaves PyTorch out of the model benchmarks (a quicker look at longtrain alone).
set -uo pipefail
device_dir=$(cd "$1" && pwd)
shift
out=${OUT:-gpu-logs}
mkdir -p "$out"
# shellcheck disable=SC1091
source "$device_dir/setup.sh"
reference="python3 $device_dir/torch_reference.py"
model_reference=(--reference "$reference")
[ "${NO_REFERENCE:-0}" = 1 ] && model_reference=()
export PYTHONUNBUFFERED=1
build=build-gpu

stage() { # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "=== $name ($(date +%T))"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "--- $name: exit $rc"
  return $rc
}

for what in "$@"; do
  case $what in
  build)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    stage configure 120 cmake -S . -B $build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLT_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90a || { tail -30 "$out/configure.log"; exit 1; }
    stage compile 400 cmake --build $build -j 16 || { grep -E "error|warning" "$out/compile.log" | head -40; exit 1; }
    ;;
  test)
    for t in test_cuda_kernels test_cuda_attention test_cuda_training test_cuda_linear \
      test_cuda_linear_training; do
      stage "$t" 150 env LT_CUDA_SYNC=1 $build/tests/gpu/$t
    done
    stage attention-portable 150 env LT_CUDA_SYNC=1 LT_ATTENTION_KERNELS=portable \
      $build/tests/gpu/test_cuda_attention
    # A tiny model's training steps against the CPU with the ping-pong forward and the backward
    # that sparse specs run (the default variants ran above).
    stage training-attn-v3-v2 150 env LT_CUDA_SYNC=1 LT_ATTN_FWD=v3 LT_ATTN_BWD=v2 \
      $build/tests/gpu/test_cuda_training
    cat "$out"/test_cuda_*.log "$out"/attention-portable.log "$out"/training-attn-v3-v2.log \
      >"$out/tests.log"
    rm "$out"/test_cuda_*.log "$out"/attention-portable.log "$out"/training-attn-v3-v2.log
    grep -E "PASSED|FAILED|ERROR|error:|loss|gradient norm|steps twice" "$out/tests.log"
    ;;
  sparse-test)
    # Sparse attention and MoH: their ops and a tiny model's training steps against the CPU (the
    # sparse patterns and head gates of the attention kernels run in test_cuda_attention, on both
    # kernel paths, in the test stage).
    stage sparse-test 200 env LT_CUDA_SYNC=1 $build/tests/gpu/test_cuda_sparse_moh
    grep -E "PASSED|FAILED|ERROR|error:|step|rel. L2" "$out/sparse-test.log"
    ;;
  sparse)
    stage sparse 400 $build/bench/bench_sparse --seq 16384 32768 65536 131072 --window 4096
    tail -10 "$out/sparse.log"
    ;;
  ctest)
    stage ctest 300 ctest --test-dir $build --output-on-failure
    tail -15 "$out/ctest.log"
    ;;
  attention)
    # With the forward's variants (LT_ATTN_FWD) timed side by side.
    stage attention 400 $build/bench/bench_attention --seq 4096 16384 65536 --reference "$reference" \
      --fwd-variants v1 v2 v3
    tail -20 "$out/attention.log"
    ;;
  passes)
    # The memory-bound passes of the 135M model's step against a copy of the same bytes.
    stage passes 200 $build/bench/bench_passes
    tail -16 "$out/passes.log"
    ;;
  ffn)
    # The SwiGLU feed-forward's fused matmuls against the matmul then the SwiGLU pass, at 16K.
    stage ffn 200 $build/bench/bench_swiglu_matmul
    tail -6 "$out/ffn.log"
    ;;
  model-4k)
    stage model-4k 400 $build/bench/bench_model --seq 4096 --batch 8 "${model_reference[@]}"
    tail -12 "$out/model-4k.log"
    ;;
  model-16k)
    stage model-16k 400 $build/bench/bench_model --seq 16384 --batch 2 "${model_reference[@]}"
    tail -12 "$out/model-16k.log"
    ;;
  profile-4k | profile-16k)
    seq=4096 batch=8
    [ "$what" = profile-16k ] && seq=16384 batch=2
    stage "$what" 300 $build/bench/bench_model --seq $seq --batch $batch --steps 3 --warmup 1 --profile
    grep -E "longtrain \||CUDA profile|^ +[0-9.]+ ms" "$out/$what.log" | head -16
    grep -E "^matmul \(" "$out/$what.log" | head -20
    ;;
  test-moe)
    for t in test_cuda_moe test_cuda_moe_training; do
      stage "$t" 150 env LT_CUDA_SYNC=1 $build/tests/gpu/$t
    done
    grep -hE "PASSED|FAILED|ERROR|error:|rel. L2|loss|step" "$out"/test_cuda_moe*.log
    ;;
  moe | moe-profile)
    profile=()
    [ "$what" = moe-profile ] && profile=(--profile)
    stage "$what" 300 $build/bench/bench_moe "${profile[@]}"
    grep -E "MoE|dense|CUDA profile|^ +[0-9.]+ ms" "$out/$what.log" | head -30
    ;;
  lightning)
    # The chunk-parallel kernels (linear_chunk.cu) beside the scan (LT_LINEAR_KERNELS=scan) and
    # flash attention, in one run.
    stage lightning 400 $build/bench/bench_lightning --seq 4096 16384 65536 262144
    tail -9 "$out/lightning.log"
    ;;
  linear-test)
    # Linear and lightning attention alone, both kernel paths: the quick loop on those kernels.
    for t in test_cuda_linear test_cuda_linear_training; do
      stage "$t" 300 env LT_CUDA_SYNC=1 $build/tests/gpu/$t
    done
    grep -hE "PASSED|FAILED|ERROR|error:|rel. L2|kernels:|loss" "$out"/test_cuda_linear*.log
    ;;
  lightning-segments)
    # The state pass in segments (linear_chunk_state.cu) where few heads leave SMs idle: the
    # lightning 135M layer's shape (12 heads of 64, one row) as the op chooses, then in one walk
    # (LT_LINEAR_SEGMENTS=1).
    for segs in auto 1; do
      stage "lightning-segments-$segs" 300 env LT_LINEAR_SEGMENTS=${segs/auto/0} \
        $build/bench/bench_lightning --heads 12 --head-dim 64 --seq 4096 32768 131072 262144 \
        --flash-max 0
      tail -9 "$out/lightning-segments-$segs.log"
    done
    ;;
  lightning-ncu)
    # The chunk kernels one launch at a time at T = 65536 (16 heads of 128): duration, throughput,
    # occupancy. The first 16 launches are the forward's timing runs (state pass, chunk_rows_kernel
    # for o), the next ones forward + backward (the backward: the state pass with 2 B blocks,
    # chunk_rows_kernel for dq, chunk_kv_grad_kernel).
    stage lightning-ncu 400 ncu --clock-control none --kernel-name regex:chunk_ --launch-count 40 \
      --section SpeedOfLight --section Occupancy --section LaunchStats \
      $build/bench/bench_lightning --seq 65536 --flash-max 0
    grep -E "chunk_|Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Grid Size" \
      "$out/lightning-ncu.log" | tail -120
    ;;
  long-context)
    # Issue 7's end-to-end figures: the softmax, lightning and hybrid (7 : 1) models of the 135M
    # shape at T = 4K, 32K and 128K on one GPU, longtrain alone (no reference), recomputing at 128K.
    for config in llama-135m lightning-135m hybrid-135m; do
      stage "$config-4k" 200 $build/bench/bench_model --config configs/$config.yaml --seq 4096 \
        --batch 8 --steps 6 --warmup 2
      stage "$config-32k" 200 $build/bench/bench_model --config configs/$config.yaml --seq 32768 \
        --batch 1 --steps 6 --warmup 2
      stage "$config-128k" 300 $build/bench/bench_model --config configs/$config.yaml \
        --seq 131072 --batch 1 --recompute --steps 3 --warmup 1
    done
    cat "$out"/*-135m-*.log >"$out/long-context.log"
    rm "$out"/*-135m-*.log
    grep -E "^configs|longtrain \|" "$out/long-context.log"
    ;;
  attention-model)
    # With the Hopper d = 64 backward's variants (LT_ATTN_BWD) timed side by side.
    stage attention-model 300 $build/bench/bench_attention --heads 12 --head-dim 64 --batch 8 \
      --seq 4096 --reference "$reference" --bwd-variants v1 v2 v3 --fwd-variants v1 v2 v3
    tail -14 "$out/attention-model.log"
    ;;
  attention-d64)
    # Issue 5's 16K attention target at d = 64, each backward variant timed.
    stage attention-d64 400 $build/bench/bench_attention --heads 16 --head-dim 64 \
      --seq 16384 65536 --reference "$reference" --bwd-variants v1 v2 v3 --fwd-variants v1 v2 v3
    tail -21 "$out/attention-d64.log"
    ;;
  break-checks)
    # Each check breaks one kernel on purpose, rebuilds one test and expects it to fail.
    breaks=(
      "src/kernels/cuda/rmsnorm.cu|s/d\[e\] += r \* (g\[p\]\[e\] - xh\[p\]\[e\] \* mean);/d[e] += r * g[p][e];/|test_cuda_kernels"
      "src/kernels/cuda/rmsnorm.cu|s/d\[p\]\[e\] += r \* (g\[p\]\[e\] - xh\[p\]\[e\] \* mean);/d[p][e] += r * g[p][e];/|test_cuda_kernels"
      "src/kernels/cuda/rmsnorm.cu|s/v\[p\]\[e\] = to_float(from_float<T>(v\[p\]\[e\] + bv\[e\]));/v[p][e] = v[p][e] + bv[e];/|test_cuda_kernels"
      "src/kernels/cuda/swiglu.cuh|s/return {g \* s \* u,/return {g * u,/|test_cuda_kernels"
      "src/kernels/cuda/attention_aux.cu|s/for (int e = 0; e < 8; e++) sum += a\[e\] \* b\[e\];/for (int e = 0; e < 7; e++) sum += a[e] * b[e];/|test_cuda_kernels"
      "src/kernels/cuda/rope.cu|s/x1\[e\] \* c\[e\] + x0\[e\] \* s\[e\]/x1[e] * c[e] - x0[e] * s[e]/|test_cuda_kernels"
      "src/kernels/cuda/cross_entropy.cu|s/e\[i\] = grad_scale \* (expf/e[i] = (expf/|test_cuda_kernels"
      "src/kernels/cuda/cross_entropy.cu|s/e\[k\]\[i\] \* scale - (col\[k\] + i == target ? grad_scale : 0.0f)/e[k][i] * scale/|test_cuda_kernels"
      "src/kernels/cuda/cross_entropy.cu|s/const float scale = grad_scale \/ s;/const float scale = 1.0f \/ s;/|test_cuda_kernels"
      "src/kernels/cuda/cross_entropy.cu|s/if (col\[k\] + i == target) x_target/if (col[k] + i == target + 1) x_target/|test_cuda_kernels"
      "src/kernels/cuda/attention_common.cuh|s/row_sum\[hf\] = row_sum\[hf\] \* rescale + sum;/row_sum[hf] = row_sum[hf] + sum;/|test_cuda_attention"
      "src/kernels/cuda/attention_fwd_ws.cu|s/rescale_output<D \/ 8>(w.o, w.factor); \/\/ to the max/\/\/ to the max/|test_cuda_attention"
      "src/kernels/cuda/attention_bwd.cu|s/add_pair(dk_row + dt \* 8 + c \* 2, dk\[dt \* 4 + 2 \* hf\] \* scale,/add_pair(dk_row + dt * 8 + c * 2, dk[dt * 4 + 2 * hf] * scale * 1.05f,/|test_cuda_attention"
      "src/kernels/cuda/attention_bwd_tile.cuh|s/odd ? make_float4(got0, got1, keep0, keep1)/odd ? make_float4(keep0, keep1, got0, got1)/|test_cuda_attention"
      "src/kernels/cuda/attention_bwd_tile.cuh|s/dpt\[e\] = st\[e\] \* (dpt\[e\] - delta);/dpt[e] = st[e] * dpt[e];/|test_cuda_training"
      "src/kernels/cuda/attention_bwd_tile.cuh|s/= x1 \* co + x0 \* si;/= x1 * co - x0 * si;/|test_cuda_attention"
      "src/kernels/cuda/rope.cu|s/row_heads = (int)fused.shape\[fused.ndim - 2\];/row_heads = (int)fused.shape[fused.ndim - 2] + 1;/|test_cuda_attention"
      "src/kernels/cuda/moe_route.cu|s/other_p == best_p \&\& other < best/other_p == best_p \&\& other > best/|test_cuda_moe"
      "src/kernels/cuda/moe_plan.cu|s/rank < capacity ? 0 : -1/rank <= capacity ? 0 : -1/|test_cuda_moe"
      "src/kernels/cuda/moe_dispatch.cu|s/acc\[i\] += w \* v\[i\]/acc[i] += v[i]/|test_cuda_moe"
      "src/kernels/cuda/grouped_matmul.cu|s/(size_t)(rows\[g\] \* k) \* ab/(size_t)(rows[g] * n) * ab/|test_cuda_moe"
      "src/kernels/cuda/linear_scan.cu|s/pw\[r + p.offset\] : 0.0f;/pw[r] : 0.0f;/|test_cuda_linear"
      "src/kernels/cuda/linear_scan.cu|s/last_doc == state_doc ? pw\[n\] : 0.0f;/pw[n];/|test_cuda_linear"
      "src/kernels/cuda/linear_chunk_state.cu|s/last_doc == state_doc ? pw\[n\] : 0.0f;/pw[n];/|test_cuda_linear"
      "src/kernels/cuda/linear_chunk_state.cu|s/== state_doc ? pw\[r + 1\]/== state_doc ? pw[r]/|test_cuda_linear"
      "src/kernels/cuda/linear_chunk_state.cu|s/carried \*= carry;/carried *= pw[n];/|test_cuda_linear"
      "src/kernels/cuda/linear_chunk_state.cu|s/carry\[s\] \* running + own;/running + own + 0.0f * carry[s];/|test_cuda_linear"
      "src/kernels/cuda/linear_chunk_state.cu|s/grad ? w.segs - 1 - k : k;/k;/|test_cuda_linear"
      "src/kernels/cuda/linear_chunk_mma.cu|s/docs\[0\] ? pw\[r + 1\]/docs[0] ? pw[r]/|test_cuda_linear"
      "src/kernels/cuda/linear_chunk_mma.cu|s/docs\[n\] ? pw\[n - 1 - r\]/docs[n] ? pw[n - r]/|test_cuda_linear"
      "src/kernels/cuda/linear_chunk_mma.cu|s/docs\[1 + col\] == row_doc/docs[1 + col] <= row_doc/|test_cuda_linear"
      "src/kernels/cuda/linear_chunk_mma.cu|s/QUERY_ROWS ? 16 \* t <= r0/QUERY_ROWS ? 16 * t < r0/|test_cuda_linear"
      "src/kernels/cuda/linear_attention_io.cu|s/r \* (da - a \* mean)/r * da/|test_cuda_linear_training"
      "src/kernels/cuda/attention_mask.cuh|s/(d < 0 ? -d : d) < p.window/(d < 0 ? -d : d) <= p.window/|test_cuda_attention"
      "src/kernels/cuda/attention_mask.cuh|s/const int64_t reach = m.anywhere ? into_doc : (m.band > 0 ? m.band - 1 : 0);/const int64_t reach = m.anywhere ? into_doc : (m.band > 64 ? m.band - 64 : 0);/|test_cuda_attention"
      "src/kernels/cuda/swiglu_matmul.cu|s/pack_bf16(gf.x \* sigmoid(gf.x) \* uf.x,/pack_bf16(gf.x * uf.x,/|test_cuda_kernels"
      "src/kernels/cuda/swiglu.cuh|s/d \* u \* s \* (1.0f + g \* (1.0f - s))/d * u * s/|test_cuda_kernels"
      "src/kernels/cuda/swiglu_matmul.cu|s/FWD ? 16 : BK \* 128, 1024/FWD ? 16 : BK * 64, 1024/|test_cuda_kernels"
      "src/kernels/cuda/swiglu_matmul.cu|s/acc\[e1\] = x1 \* co + x0 \* si;/acc[e1] = x1 * co - x0 * si;/|test_cuda_kernels"
      "src/kernels/cuda/swiglu_matmul.cu|s/else if (kv < p.kv_cols)/else if (kv <= p.kv_cols)/|test_cuda_kernels"
      "src/kernels/cuda/moh.cu|s/v += q \* (a_routed \* k_f \* dg\[l.n_shared + i\] - dot_chosen);/v += q * a_routed * k_f * dg[l.n_shared + i];/|test_cuda_sparse_moh"
    )
    for spec in "${breaks[@]}"; do
      IFS='|' read -r file expr test <<<"$spec"
      # BREAK_ONLY=<file> runs only the checks that break that file.
      [ -n "${BREAK_ONLY:-}" ] && [ "$file" != "$BREAK_ONLY" ] && continue
      cp "$file" "$file.orig"
      sed -i "$expr" "$file"
      if cmp -s "$file" "$file.orig"; then echo "break-check: the edit did not apply to $file"; mv "$file.orig" "$file"; continue; fi
      cmake --build $build --target "$test" >/dev/null 2>&1
      $build/tests/gpu/$test >"$out/break.log" 2>&1
      echo "broken $file ($expr): $test exit $? ($(grep -c FAILED "$out/break.log") FAILED lines)"
      grep -E "^\[  FAILED  \] test_" "$out/break.log" | sort -u | head -4
      mv "$file.orig" "$file"
      touch "$file" # newer than the broken build's objects, so the next build compiles it again
    done
    rm -f "$out/break.log"
    cmake --build $build >/dev/null
    ;;
  ncu-source)
    stage ncu-source 300 ncu --clock-control none --kernel-name regex:attn_bwd --launch-skip 2 \
      --launch-count 1 --section WarpStateStats --section SourceCounters --print-details all \
      $build/bench/bench_attention --heads 12 --head-dim 64 --batch 8 --seq 4096
    grep -iE "stall|warp cycles|attention_bwd|attention_common|wgmma.cuh" "$out/ncu-source.log" | head -60
    ;;
  ncu-bwd)
    stage ncu-bwd 300 ncu --clock-control none --kernel-name regex:attn_bwd --launch-skip 2 \
      --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats \
      --section SchedulerStats $build/bench/bench_attention --heads 12 --head-dim 64 --batch 8 \
      --seq 4096
    grep -vE "^==PROF==|^ +-+ +-+" "$out/ncu-bwd.log" | tail -75
    ;;
  model-64k)
    stage model-64k 300 $build/bench/bench_model --seq 65536 --batch 1 --recompute --steps 3 \
      --warmup 1
    tail -10 "$out/model-64k.log"
    ;;
  *)
    echo "unknown stage $what"
    exit 2
    ;;
  esac
done
