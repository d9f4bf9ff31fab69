// The chunk kernels' sequential pass (linear_chunk.cu's header comment has the math): per (batch
// row, query head) the states H_c before each chunk, forwards from the prefix, and G_c, the
// state's gradient after it, backwards from zero, as bf16 into the workspace for the parallel
// products. One block walks one STATE_TILE x STATE_TILE tile of the state through the chunks,
// one (32 x 64) (64 x 32) MMA per chunk, so it takes chunks x one step's latency (H100: ~1.4 us)
// however few blocks run beside it.
//
// Where the (B, Hq, tiles) blocks are too few to fill the GPU, the chunks are cut into segments
// (LASP-2's decomposition, Sun et al. 2025, inside one GPU; linear_scan.cu does the same for the
// scan). The recurrence H_{c+1} = a_c H_c + U_c is linear, so a segment s of chunks [cb, ce) maps
// its starting state to
//   H_ce = A_s H_cb + M_s,          A_s = prod_{c in s} a_c,  M_s = the walk of s from zero,
// and the G recurrence, backwards with the same carries (b_c = a_c), to
//   G_{cb-1} = A_s G_{ce-1} + N_s,  N_s = the reversed walk of s from zero.
// So: (1) one launch walks every segment from zero, writing only M_s (N_s) as f32 and A_s, the
// product of the carries it applied; (2) segment_combine_kernel runs the short recurrence over
// the segments, H forwards from the prefix (or 0), G backwards from zero, leaving each segment's
// starting state where its M_s (N_s) was; (3) one launch walks every segment again from there,
// writing H_c (G_c), and the G walk of segment 0 ends in d/dP = G_{-1}. Two walks of chunks /
// segs steps instead of one of chunks. A_s comes from the walk's own a_c, so a segment edge
// inside a document or on a document's edge needs no rule of its own, and the prefix (and
// prefix_doc) enter through segment 0's a_0 and the combine's first H state only.
#include <stdlib.h>

#include "kernels/cuda/attention_common.cuh" // cp_async16, cp_async4, load_tile
#include "kernels/cuda/linear_chunk_common.cuh"
#include "kernels/cuda/linear_wmma.cuh"

using namespace nvcuda;

enum {
  // Rows and columns of the state per sequential block, a warp per 16 rows. Measured on the H100
  // (b 1, h 16, d 128, T 64K): 64 x 64 tiles on 4 warps 1.73 ms per pass, 32 x 32 on 2 warps
  // 1.37 ms, 16 x 16 on one warp slower again (fwd+bwd 7.3 -> 9.8 ms).
  STATE_TILE = 32,
  STATE_WARPS = STATE_TILE / 16,
  STATE_THREADS = STATE_WARPS * 32,
  STAGES = 4, // chunks in flight in the sequential pass: one used, three loading (eight measured
              // no faster than three with 64 x 64 tiles: the pass is not waiting on its loads)
  // Segments walk twice, so two of them take as long as one walk; three or more gain.
  MIN_SEGMENTS = 3,
  MIN_SEGMENT_CHUNKS = 8, // shorter segments spend more on launches and fill than they save
  MAX_SEGMENTS = 65535,   // keeps the grid's x (segments x tiles) and the workspace small
  COMBINE_THREADS = 256,
};

template <int D> struct state_smem {
  static constexpr int LDT = STATE_TILE + 8;
  static constexpr size_t TILE_HALVES = (size_t)CHUNK * LDT;
  static constexpr size_t STAGING_FLOATS = 16 * (STATE_TILE + 4);
  static constexpr size_t BYTES =
      STAGES * 2 * TILE_HALVES * sizeof(bf16) + STATE_WARPS * STAGING_FLOATS * sizeof(float) +
      STAGES * (CHUNK + 4) * sizeof(int32_t) + (CHUNK + 4) * sizeof(float);
};

// One launch of the pass: all chunks in one segment (seg_states NULL), or step (1) (own) or (3)
// of the segments. A slot is one (pass, batch row, query head, segment): (blockIdx.z Hq + h)
// segs + seg, with blockIdx.z = pass B + b.
typedef struct state_walk {
  int segs;
  int64_t seg_chunks; // chunks per segment; the last may have fewer
  bool own;           // step (1): from zero, writing M_s (N_s) and A_s instead of H_c (G_c)
  float *seg_states;  // (passes, B, Hq, segs, D, D) f32: M_s (N_s), then the starting states
  float *seg_carry;   // (passes, B, Hq, segs) f32: A_s
} state_walk;

// One block: one (segment, STATE_TILE x STATE_TILE tile of the state; query head; pass and batch
// row), pass 0 (H: x = k, y = v, the segment's chunks in order) or pass 1 (G: x = q, y = dO, in
// reverse). Per chunk it stores the state as it stands (H_c; G_c; not in step (1)), then
//   H: S = a_c S + sum_j [doc_j = doc_last] lambda^(n-1-j') x_j^T y_j
//   G: S = a_c S + sum_i [doc_i = doc(H_c)] lambda^(i'+1) x_i^T y_i
// with the next chunks' x and y tiles loading (cp.async) meanwhile.
// grid: (segs * tiles of the state, Hq, B * passes); k, v: (B, T, Hkv, D); q, dout: (B, T, Hq, D)
// bf16; states: (B, Hq, chunks, D, D) bf16; prefix, dprefix: (B, Hq, D, D) f32
template <int D>
__global__ void __launch_bounds__(STATE_THREADS)
    chunk_state_kernel(const chunk_args a, const state_walk w) {
  typedef state_smem<D> SM;
  constexpr int LDT = SM::LDT, LDF = STATE_TILE + 4, TILES = D / STATE_TILE;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16 *xs = (bf16 *)smem;                                   // [STAGES] (CHUNK, STATE_TILE)
  bf16 *ys = xs + STAGES * SM::TILE_HALVES;                  // [STAGES] (CHUNK, STATE_TILE)
  float *staging = (float *)(ys + STAGES * SM::TILE_HALVES); // [warps] (16, STATE_TILE)
  int32_t *docs = (int32_t *)(staging + STATE_WARPS * SM::STAGING_FLOATS); // [STAGES] CHUNK + 4
  float *pw = (float *)(docs + STAGES * (CHUNK + 4));

  const int tid = threadIdx.x, warp = tid / 32, h = blockIdx.y;
  const int seg = blockIdx.x / (TILES * TILES), tile = blockIdx.x % (TILES * TILES);
  const int r0 = tile / TILES * STATE_TILE, c0 = tile % TILES * STATE_TILE;
  const int64_t b = blockIdx.z % a.b, slot = ((int64_t)blockIdx.z * a.hq + h) * w.segs + seg;
  const bool grad = blockIdx.z >= a.b;
  const int64_t first = seg * w.seg_chunks, end = min(a.chunks, first + w.seg_chunks);
  const int64_t steps = end - first;
  const int kvh = h / (a.hq / a.hkv);
  const int64_t x_stride = (int64_t)(grad ? a.hq : a.hkv) * D;
  const bf16 *x = grad ? a.q + (b * a.t * a.hq + h) * D : a.k + (b * a.t * a.hkv + kvh) * D;
  const bf16 *y = grad ? a.dout + (b * a.t * a.hq + h) * D : a.v + (b * a.t * a.hkv + kvh) * D;
  bf16 *states = (grad ? a.g_states : a.h_states) + (b * a.hq + h) * a.chunks * D * D;
  const int32_t first_doc = start_doc(a, b);
  decay_powers(pw, a, h);
  for (int i = tid; !a.doc && i < STAGES * (CHUNK + 4); i += STATE_THREADS) docs[i] = 0;

  auto chunk_of = [&](int64_t step) { return grad ? end - 1 - step : first + step; };
  auto load_chunk = [&](int64_t step) {
    if (step < steps) {
      const int stage = (int)(step % STAGES);
      const int64_t t0 = chunk_of(step) * CHUNK;
      load_tile<CHUNK, STATE_TILE, STATE_THREADS>(xs + stage * SM::TILE_HALVES, x + r0, x_stride,
                                                  t0, a.t);
      load_tile<CHUNK, STATE_TILE, STATE_THREADS>(ys + stage * SM::TILE_HALVES, y + c0, x_stride,
                                                  t0, a.t);
      int32_t *d = docs + stage * (CHUNK + 4); // d[0]: token t0 - 1; d[1 + i]: token t0 + i
      for (int i = tid; a.doc && i <= CHUNK; i += STATE_THREADS) {
        const int64_t tok = t0 - 1 + i;
        const bool valid = tok >= 0 && tok < a.t;
        cp_async4(d + i, a.doc + (valid ? b * a.t + tok : 0), valid);
      }
    }
    cp_async_commit(); // empty past the end: one group per step keeps the count
  };

  // The warp's 16 rows of the tile, STATE_TILE columns, from the walk's first state: the
  // segment's starting state in step (3), zero in step (1) and for G, else the prefix (or 0).
  acc_frag acc[STATE_TILE / 16];
  float *stage_w = staging + warp * SM::STAGING_FLOATS;
  const int row0 = r0 + warp * 16;
  const int64_t head = (b * a.hq + h) * (int64_t)D * D;
  const float *start = w.seg_states ? (w.own ? nullptr : w.seg_states + slot * D * D)
                                    : (a.prefix && !grad ? a.prefix + head : nullptr);
  for (int i = tid % 32; i < 16 * STATE_TILE; i += 32) {
    const int r = i / STATE_TILE, c = i % STATE_TILE;
    stage_w[r * LDF + c] = start ? start[(int64_t)(row0 + r) * D + c0 + c] : 0.0f;
  }
  __syncwarp();
  for (int f = 0; f < STATE_TILE / 16; f++)
    wmma::load_matrix_sync(acc[f], stage_w + f * 16, LDF, wmma::mem_row_major);
  __syncwarp();

  float carried = 1.0f; // A_s: the product of the carries applied so far
  for (int s = 0; s < STAGES - 1; s++) load_chunk(s);
  for (int64_t step = 0; step < steps; step++) {
    const int64_t c = chunk_of(step), t0 = c * CHUNK;
    const int n = (int)min((int64_t)CHUNK, a.t - t0), stage = (int)(step % STAGES);
    if (!w.own) { // the state as it stands: H_c, or G_c; rounded to bf16 for the products' MMAs
      for (int f = 0; f < STATE_TILE / 16; f++)
        wmma::store_matrix_sync(stage_w + f * 16, acc[f], LDF, wmma::mem_row_major);
      __syncwarp();
      bf16 *dst = states + c * D * D + (int64_t)row0 * D + c0;
      for (int i = tid % 32; i < 16 * (STATE_TILE / 8); i += 32) {
        const int r = i / (STATE_TILE / 8), col = i % (STATE_TILE / 8) * 8;
        float v8[8];
#pragma unroll
        for (int j = 0; j < 8; j++) v8[j] = stage_w[r * LDF + col + j];
        store8(dst + (int64_t)r * D + col, v8);
      }
      __syncwarp();
    }

    cp_async_wait<STAGES - 2>();   // this step's chunk has landed
    __syncthreads();               // ... for every thread; and every warp is done with step - 1
    load_chunk(step + STAGES - 1); // into the stage step - 1 used

    const int32_t *d = docs + stage * (CHUNK + 4);
    const int32_t state_doc = c > 0 ? d[0] : first_doc, last_doc = d[n];
    const float carry = last_doc == state_doc ? pw[n] : 0.0f;
    carried *= carry;
    bf16 *xt = xs + stage * SM::TILE_HALVES;
    const bf16 *yt = ys + stage * SM::TILE_HALVES;
    scale_rows<STATE_TILE>(xt, LDT, xt, LDT, [&](int r) {
      if (r >= n) return 0.0f;
      return grad ? (d[1 + r] == state_doc ? pw[r + 1] : 0.0f)
                  : (d[1 + r] == last_doc ? pw[n - 1 - r] : 0.0f);
    });
    __syncthreads();
    for (int f = 0; f < STATE_TILE / 16; f++)
      for (int e = 0; e < acc[f].num_elements; e++) acc[f].x[e] *= carry;
    // x^T is the x tile read column-major: row r of x^T is column r of the tile.
    mma_strip<wmma::col_major, wmma::row_major>(acc, xt + warp * 16, LDT, yt, LDT, CHUNK);
  }
  cp_async_wait<0>();

  // The final state: M_s (N_s) in step (1); d/dP = G_{-1}, f32, where the G walk ended at chunk 0.
  float *final_state = w.own                           ? w.seg_states + slot * D * D
                       : grad && seg == 0 && a.dprefix ? a.dprefix + head
                                                       : nullptr;
  if (final_state) {
    for (int f = 0; f < STATE_TILE / 16; f++)
      wmma::store_matrix_sync(stage_w + f * 16, acc[f], LDF, wmma::mem_row_major);
    __syncwarp();
    for (int i = tid % 32; i < 16 * STATE_TILE; i += 32) {
      const int r = i / STATE_TILE, col = i % STATE_TILE;
      final_state[(int64_t)(row0 + r) * D + c0 + col] = stage_w[r * LDF + col];
    }
  }
  if (w.own && tile == 0 && tid == 0) w.seg_carry[slot] = carried;
}

// Step (2): each segment's starting state, one state element per thread, in place of its own:
//   running = H_0 (the prefix, or 0) for H, G_last = 0 for G;
//   for each segment s (G: from the last): start_s = running; running = A_s running + M_s.
// grid: (D * D / COMBINE_THREADS, Hq, B * passes); seg_states: (passes, B, Hq, segs, D, D) f32;
// prefix: (B, Hq, D, D) f32
__global__ void __launch_bounds__(COMBINE_THREADS)
    segment_combine_kernel(const chunk_args a, const state_walk w, int per_state) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= per_state) return;
  const int h = blockIdx.y;
  const int64_t b = blockIdx.z % a.b, slot0 = ((int64_t)blockIdx.z * a.hq + h) * w.segs;
  const bool grad = blockIdx.z >= a.b;
  float *state = w.seg_states + slot0 * per_state + i;
  const float *carry = w.seg_carry + slot0;
  float running = a.prefix && !grad ? a.prefix[(b * a.hq + h) * per_state + i] : 0.0f;
  for (int k = 0; k < w.segs; k++) {
    const int s = grad ? w.segs - 1 - k : k;
    const float own = state[(int64_t)s * per_state];
    state[(int64_t)s * per_state] = running;
    running = carry[s] * running + own;
  }
}

// ---- the host side ------------------------------------------------------------------------------

// The shared memory the pass needs, and all of the SM's L1 as shared memory, so that as many
// blocks fit an SM as resident_per_sm counts (the walk streams each tile once into shared memory).
template <int D> static int allow_state_smem() {
  LT_TRY(allow_smem(chunk_state_kernel<D>, state_smem<D>::BYTES, "linear attention states"));
  CUDA_TRY(cudaFuncSetAttribute(chunk_state_kernel<D>,
                                cudaFuncAttributePreferredSharedMemoryCarveout,
                                cudaSharedmemCarveoutMaxShared),
           "linear attention states: shared memory carveout");
  return LT_OK;
}

// How many state blocks one SM holds at once (shared memory bounds it: 4 on an H100).
template <int D> static int resident_per_sm(int *blocks) {
  LT_TRY(allow_state_smem<D>());
  CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, chunk_state_kernel<D>,
                                                         STATE_THREADS, state_smem<D>::BYTES),
           "linear attention states: occupancy");
  return LT_OK;
}

// LT_LINEAR_SEGMENTS=N, N > 0, asks for N segments (at most one per chunk) whatever the shapes;
// unset or 0: the choice below.
static int segments_asked(int64_t *n) {
  const char *asked = getenv("LT_LINEAR_SEGMENTS");
  *n = 0;
  if (!asked || !*asked) return LT_OK;
  char *end;
  const long long v = strtoll(asked, &end, 10);
  LT_CHECK(*end == '\0' && v >= 0, LT_ERR_CONFIG,
           "environment: LT_LINEAR_SEGMENTS=%s is no segment count; use a whole number (0: "
           "automatic), or unset it",
           asked);
  *n = v;
  return LT_OK;
}

// Automatic: as many segments as make the (segs, B, Hq, tiles, passes) blocks fit the SMs in one
// wave (more would queue and gain nothing, as the walk's steps are what takes the time), each at
// least MIN_SEGMENT_CHUNKS long, and none where that leaves fewer than MIN_SEGMENTS.
int lt_cuda_chunk_segments(lt_cuda_state *st, const chunk_args &a, int d, int passes,
                           chunk_segments *sg) {
  // `passes` (1 forward, 2 backward) enters the count, so the backward may cut the H walk
  // differently from the forward: its H_c then differ from the forward's by bf16 rounding only.
  int64_t want;
  LT_TRY(segments_asked(&want));
  const int64_t longest = a.chunks / MIN_SEGMENT_CHUNKS; // segments of MIN_SEGMENT_CHUNKS or more
  if (want == 0 && longest >= MIN_SEGMENTS) {
    int per_sm = 0;
    LT_TRY(d == 64 ? resident_per_sm<64>(&per_sm) : resident_per_sm<128>(&per_sm));
    const int64_t tiles = (d / STATE_TILE) * (d / STATE_TILE);
    want = (int64_t)per_sm * st->n_sms / (tiles * a.hq * a.b * passes);
    if (want > longest) want = longest;
    if (want < MIN_SEGMENTS) want = 1;
  }
  if (want < 1) want = 1;
  if (want > a.chunks) want = a.chunks;
  if (want > MAX_SEGMENTS) want = MAX_SEGMENTS;
  sg->seg_chunks = (a.chunks + want - 1) / want;
  sg->segs = (int)((a.chunks + sg->seg_chunks - 1) / sg->seg_chunks);
  sg->workspace = nullptr;
  return LT_OK;
}

size_t lt_cuda_chunk_segment_bytes(const chunk_args &a, int d, int passes,
                                   const chunk_segments &sg) {
  if (sg.segs == 1) return 0;
  return (size_t)(passes * a.b * a.hq * sg.segs) * ((size_t)d * d + 1) * sizeof(float);
}

template <int D>
static int state_passes(lt_cuda_state *st, const chunk_args &a, int passes,
                        const chunk_segments &sg) {
  const size_t smem = state_smem<D>::BYTES;
  LT_TRY(allow_state_smem<D>());
  const unsigned tiles = (D / STATE_TILE) * (D / STATE_TILE);
  const dim3 grid(tiles * (unsigned)sg.segs, (unsigned)a.hq, (unsigned)(a.b * passes));
  state_walk w = {sg.segs, sg.seg_chunks, false, nullptr, nullptr};
  if (sg.segs > 1) {
    w.seg_states = sg.workspace;
    w.seg_carry = sg.workspace + (size_t)(passes * a.b * a.hq * sg.segs) * D * D;
    w.own = true;
    chunk_state_kernel<D><<<grid, STATE_THREADS, smem, st->stream>>>(a, w);
    segment_combine_kernel<<<dim3(blocks_for(D * D, COMBINE_THREADS), (unsigned)a.hq,
                                  (unsigned)(a.b * passes)),
                             COMBINE_THREADS, 0, st->stream>>>(a, w, D * D);
    w.own = false;
  }
  chunk_state_kernel<D><<<grid, STATE_THREADS, smem, st->stream>>>(a, w);
  return LT_OK;
}

int lt_cuda_chunk_states(lt_cuda_state *st, const chunk_args &a, int d, int passes,
                         const chunk_segments &sg) {
  return d == 64 ? state_passes<64>(st, a, passes, sg) : state_passes<128>(st, a, passes, sg);
}
