// The MoE dispatch plan on the GPU: where each (token, rank) choice goes, as
// lt_cpu_moe_dispatch_plan lays it out, bit for bit. Two stable counting sorts by expert, each a
// histogram per tile of choices, a scan down the tiles, then each choice's rank among the earlier
// ones of its expert:
//   admission  the choices in priority order (every token's first choice, then every second, ...;
//              GShard, Switch): a choice is kept when fewer than `capacity` came before it;
//              counts[x] = all choices to x; offsets = the scan of min(counts, capacity)
//   rows       the kept choices in token order: row = offsets[x] + the kept choices to x before
//              it, so each expert's rows are its tokens in order, as the CPU's
// Integer counts are exact whatever the order threads add them in, so the plan is deterministic.
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_moe.h"

enum {
  TILE = 256,         // choices per tile (one block)
  SCAN_THREADS = 256, // experts scanned at once
};

// Choice index t*k + s of element i of the order walked: by priority (rank-major) or by token.
__device__ __forceinline__ int64_t choice_at(int64_t i, int64_t n, int k, bool by_priority) {
  return by_priority ? (i % n) * k + i / n : i;
}

// The expert a choice counts for in this pass, or -1: by token, only kept choices count. An
// expert id outside [0, e) (lt_moe_route never makes one) is dropped rather than read past.
__device__ __forceinline__ int key_of(const int32_t *expert, const int32_t *slot_row, int64_t c,
                                      int e, bool by_priority) {
  const int x = expert[c];
  if (x < 0 || x >= e) return -1;
  return by_priority || slot_row[c] >= 0 ? x : -1;
}

// hist[tile, x] = the choices of the tile that count for expert x.
// expert, slot_row: (n, k) i32; hist: (tiles, e) i32
__global__ void __launch_bounds__(TILE)
    plan_tile_counts_kernel(int32_t *hist, const int32_t *expert, const int32_t *slot_row,
                            int64_t n, int k, int e, bool by_priority) {
  extern __shared__ int32_t counts[]; // (e)
  for (int x = threadIdx.x; x < e; x += TILE) counts[x] = 0;
  __syncthreads();
  const int64_t i = (int64_t)blockIdx.x * TILE + threadIdx.x;
  if (i < n * k) {
    const int x = key_of(expert, slot_row, choice_at(i, n, k, by_priority), e, by_priority);
    if (x >= 0) atomicAdd(&counts[x], 1);
  }
  __syncthreads();
  for (int x = threadIdx.x; x < e; x += TILE) hist[(int64_t)blockIdx.x * e + x] = counts[x];
}

// Down each expert's column: hist[tile, x] <- the choices to x in the tiles before (an exclusive
// scan), totals[x] <- all of them. With offsets (admission), also each expert's first row:
// offsets[x + 1] = offsets[x] + min(totals[x], capacity) (no limit when capacity <= 0).
// hist: (tiles, e); totals: (e) or NULL; offsets: (e + 1) or NULL
__global__ void __launch_bounds__(SCAN_THREADS)
    plan_scan_kernel(int32_t *hist, int32_t *totals, int32_t *offsets, int64_t tiles, int e,
                     int64_t capacity) {
  for (int x = threadIdx.x; x < e; x += SCAN_THREADS) {
    int32_t before = 0;
    for (int64_t tile = 0; tile < tiles; tile++) {
      const int32_t here = hist[tile * e + x];
      hist[tile * e + x] = before;
      before += here;
    }
    if (totals) totals[x] = before;
  }
  if (!offsets) return;
  __syncthreads(); // every column's total is written
  if (threadIdx.x != 0) return;
  int32_t start = 0;
  offsets[0] = 0;
  for (int x = 0; x < e; x++) {
    start += capacity <= 0 || totals[x] < capacity ? totals[x] : (int32_t)capacity;
    offsets[x + 1] = start;
  }
}

// Each choice's rank among the earlier choices of its expert in the order walked: those of the
// tiles before (hist, scanned) plus those before it in its own tile. Admission marks slot_row 0
// (kept) or -1 (dropped); the row pass writes the row and row_token.
// slot_row: (n, k) i32; row_token: (n*k) i32; hist: (tiles, e); offsets: (e + 1)
__global__ void __launch_bounds__(TILE)
    plan_ranks_kernel(int32_t *slot_row, int32_t *row_token, const int32_t *hist,
                      const int32_t *offsets, const int32_t *expert, int64_t n, int k, int e,
                      int64_t capacity, bool by_priority) {
  __shared__ int32_t keys[TILE];
  const int64_t i = (int64_t)blockIdx.x * TILE + threadIdx.x;
  const bool present = i < n * k;
  const int64_t c = present ? choice_at(i, n, k, by_priority) : 0;
  const int x = present ? key_of(expert, slot_row, c, e, by_priority) : -1;
  keys[threadIdx.x] = x;
  __syncthreads();
  if (!present) return;
  if (x < 0) {
    if (by_priority) slot_row[c] = -1;
    return;
  }
  int32_t before = 0;
  for (int j = 0; j < (int)threadIdx.x; j++) before += keys[j] == x;
  const int64_t rank = (int64_t)hist[(int64_t)blockIdx.x * e + x] + before;
  if (by_priority) {
    slot_row[c] = capacity <= 0 || rank < capacity ? 0 : -1;
  } else {
    const int32_t row = offsets[x] + (int32_t)rank;
    slot_row[c] = row;
    row_token[row] = (int32_t)(c / k);
  }
}

// row_token[r] = -1 for the rows past the last expert's, r in [offsets[e], total).
__global__ void plan_unused_rows_kernel(int32_t *row_token, const int32_t *offsets, int e,
                                        int64_t total) {
  const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (r < total && r >= offsets[e]) row_token[r] = -1;
}

// One stable counting pass over the choices in the given order.
static void plan_pass(lt_cuda_state *st, int32_t *hist, lt_tensor slot_row, lt_tensor row_token,
                      lt_tensor offsets, lt_tensor counts, lt_tensor expert, int64_t capacity,
                      bool by_priority) {
  const int64_t n = expert.shape[0], total = lt_numel(expert);
  const int k = (int)expert.shape[1], e = (int)lt_numel(counts);
  const unsigned tiles = blocks_for(total, TILE);
  plan_tile_counts_kernel<<<tiles, TILE, (size_t)e * sizeof(int32_t), st->stream>>>(
      hist, (const int32_t *)expert.data, (const int32_t *)slot_row.data, n, k, e, by_priority);
  plan_scan_kernel<<<1, SCAN_THREADS, 0, st->stream>>>(
      hist, by_priority ? (int32_t *)counts.data : NULL,
      by_priority ? (int32_t *)offsets.data : NULL, tiles, e, capacity);
  plan_ranks_kernel<<<tiles, TILE, 0, st->stream>>>(
      (int32_t *)slot_row.data, (int32_t *)row_token.data, hist, (const int32_t *)offsets.data,
      (const int32_t *)expert.data, n, k, e, capacity, by_priority);
}

int lt_cuda_moe_dispatch_plan(lt_ctx *ctx, lt_tensor slot_row, lt_tensor row_token,
                              lt_tensor offsets, lt_tensor counts, lt_tensor expert,
                              int64_t capacity) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t total = lt_numel(expert), e = lt_numel(counts);
  if (e > LT_CUDA_MOE_MAX_EXPERTS)
    return lt_cuda_unsupported("moe_dispatch_plan", "more experts than LT_CUDA_MOE_MAX_EXPERTS",
                               counts, expert);
  if (total == 0) {
    LT_TRY(lt_cuda_zero(ctx, counts));
    return lt_cuda_zero(ctx, offsets);
  }
  void *hist;
  LT_TRY(lt_cuda_scratch(st, (size_t)blocks_for(total, TILE) * (size_t)e * sizeof(int32_t),
                         "moe_dispatch_plan", &hist));
  plan_pass(st, (int32_t *)hist, slot_row, row_token, offsets, counts, expert, capacity, true);
  plan_unused_rows_kernel<<<blocks_for(total, TILE), TILE, 0, st->stream>>>(
      (int32_t *)row_token.data, (const int32_t *)offsets.data, (int)e, total);
  plan_pass(st, (int32_t *)hist, slot_row, row_token, offsets, counts, expert, capacity, false);
  return lt_cuda_launched(st, "moe_dispatch_plan", expert, slot_row);
}
