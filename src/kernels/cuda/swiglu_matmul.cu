// Matmuls with the pass that reads their output in their epilogues (Hopper, sm_90a: TMA copies,
// wgmma, a persistent warp-specialized GEMM). The SwiGLU feed-forward's two, whose outputs only
// the SwiGLU reads:
// - forward: gate_up = x [W_gate; W_up]^T and h = silu(gate) * up in one kernel. A tile multiplies
//   128 rows of x by 64 rows of W_gate and the same units' 64 rows of W_up (one 128-column
//   product), so each thread holds a hidden unit's gate and up side by side: it writes both, and
//   h. Unfused, the matmul wrote gate_up and swiglu_fwd read all of it back to write h.
// - backward: dh = dy W_down never reaches memory: the epilogue reads gate_up beside its tile of dh
//   (128 rows by 128 units) and writes dgate_up, and h (which W_down's gradient reads) where the
//   caller did not keep the forward's, as swiglu_bwd_kernel does.
// And the attention's q|k|v projection with RoPE (lt_qkv_rope_fwd): a tile is 128 rows by 256
// columns (four heads of 64 or two of 128), so each thread holds both columns of its rotation
// pairs (j, j + D/2), rotates them in registers (q and k heads) and stores q, k and v into their
// own tensors. Unfused, the q|k matmul wrote its product and RoPE's pass read it back.
// One block per SM walks tiles blockIdx.x, + gridDim.x, ... (rows outermost, so the blocks at work
// share their rows of x or dy in the L2). A producer thread copies each tile's A and B blocks of
// 64 along k by TMA into a ring of stages; two consumer warpgroups (64 rows each) multiply from
// the ring, one stage's wgmmas in flight while they wait for the next, and hand each stage back as
// its multiplies finish, so the producer fills the next tile's first stages during this tile's
// epilogue. The epilogue writes its outputs into shared memory, which one thread of each
// warpgroup stores by TMA: the stores drain while the next tile multiplies.
// H100, the 135M model at T=16384 (bench_swiglu_matmul): the SwiGLU forward 0.382 ms against 0.425
// for cuBLASLt's matmul then swiglu_fwd, the backward 0.361 against 0.414 (0.304 against 0.367
// without h, as the model runs it: with h's slabs left out, 5 stages fit, where 4 took 0.316), the
// q|k|v projection 0.208 against 0.259 for cuBLASLt's two matmuls then RoPE's pass.
// None is at cuBLASLt's speed for its multiplies alone (the gate_up matmul 0.29 ms, the q|k|v one
// 0.146): the epilogue still runs while the tensor cores wait (the warpgroups share each tile),
// and these tiles read more operand bytes from the L2 per multiply than cuBLASLt's.
// Tried and left out (H100, the same shapes):
// - the projection on 128-column tiles (6 stages): 0.233 ms against 0.211 on 256 (3 stages, one
//   epilogue part; two parts and 4 stages, as now: 0.209);
// - the SwiGLU forward on 256-column tiles (3 stages): 0.394 against 0.380;
// - ping-pong warpgroups taking whole tiles by turns (each epilogue beside the other's
//   multiplies): the SwiGLU forward 0.361 (the shared tiles: 0.360 in the model's profile);
// - clusters of two blocks sharing their rows of x by TMA multicast (a quarter less L2 traffic):
//   0.40 with 4 stages, 0.38 with 5; the blocks wait on each other's hand-backs every stage;
// - the backward's gate_up in two buffers of its own, copied by a second producer thread while the
//   tile multiplies, dgate_up written over it (3 stages fit): 0.336 without h against 0.316;
// - the SwiGLU forward's epilogue in two parts (gate and up, then h in gate's slab), 6 stages:
//   0.377 against 0.379.
// The first version, which stored from the accumulators by 4-byte global stores, was 0.72x and
// 0.67x the unfused pair; loading the backward's gate_up into the output slabs (so each tile
// waited for the last tile's stores to read them) 1.06x.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <initializer_list>

#include "kernels/cuda/attention_tma.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/swiglu.cuh"
#include "kernels/cuda/wgmma.cuh"

enum {
  BM = 128,        // rows of a tile
  BK = 64,         // k of a stage: one 128-byte swizzle span of bf16
  SLAB = BM * 128, // 64 units of a tile's rows in shared memory: 128 rows of 128 bytes
  CONSUMERS = 256,
  THREADS = CONSUMERS + 128, // and a warpgroup whose first warp's first thread copies
  // Registers per thread (setmaxnreg): 256 x 232 + 128 x 40 = 64512 of the SM's 65536.
  PRODUCER_REGS = 40,
  CONSUMER_REGS = 232,
  MAX_STAGES = 8,
  // Dynamic shared memory a block may take: the H100's 227 KB, less 1 KB for the static barriers.
  SMEM_BUDGET = 226 * 1024
};

// The kernels: SwiGLU's backward and forward, and the q|k|v projection with RoPE for heads of 64
// or 128.
enum mm_mode { SWIGLU_BWD, SWIGLU_BWD_H, SWIGLU_FWD, QKV_ROPE64, QKV_ROPE128 };
template <int MODE>
constexpr int rope_dim = MODE == QKV_ROPE64    ? 64
                         : MODE == QKV_ROPE128 ? 128
                                               : 0;

// The backward's B rows are W_down's (D, F) rows, N-major: two slabs of 64 units, BK k-rows of
// 128 bytes each; the others' are K-major (W_gate_up is (2F, D): 64 W_gate rows, then the same
// units' 64 W_up rows; W_qkv 256 rows, 64 at a time). The epilogue's output slabs (64 columns of
// the tile's 128 rows, swizzled as TMA copies them): gate (or dgate), up (or dup) and h, one each
// forward, two each backward; two for each part of the q|k|v projection. The backward's gate_up
// tile comes through the ring: two more stages after the tile's last (gate's two slabs, then
// up's), so its copy runs ahead of the epilogue as the multiplies' copies do.
template <int MODE> struct tile_shape {
  static constexpr bool BWD = MODE == SWIGLU_BWD || MODE == SWIGLU_BWD_H; // _H: writes h too
  static constexpr bool FWD = !BWD; // K-major B, no input beside the product
  // Columns of the product: 64 units' gate and up (forward), 128 units' dh (backward), the
  // projection's 256. (The forward at 256 columns, with 3 stages beside its slabs, was slower on
  // the H100: 0.394 ms against 0.380 at the 135M model's T = 16384.)
  static constexpr int BN = rope_dim<MODE> ? 256 : 128;
  static constexpr int UNITS = MODE == SWIGLU_FWD ? 64 : BN; // hidden units or columns a tile
  // The epilogue writes 128 columns of the product at a time: each part waits until TMA has read
  // the last one's slabs out of shared memory. (The projection's wide tiles so keep 4 stages.)
  static constexpr int PARTS = BN / 128;
  // A part's slabs (the backward without h: 4, which leaves room for a fifth stage).
  static constexpr int SLABS = BWD ? (MODE == SWIGLU_BWD_H ? 6 : 4) : MODE == SWIGLU_FWD ? 3 : 2;
  static constexpr int A_BYTES = BM * BK * 2, B_BYTES = BN * BK * 2;
  static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
  // As many stages as fit beside the slabs (and 1 KB to align them).
  static constexpr int FIT = (SMEM_BUDGET - 1024 - SLABS * SLAB) / STAGE_BYTES;
  static constexpr int STAGES = FIT < MAX_STAGES ? FIT : MAX_STAGES;
  static constexpr size_t SMEM = 1024 + (size_t)STAGES * STAGE_BYTES + (size_t)SLABS * SLAB;
};

struct fused_mm_params {
  int64_t m;            // rows
  int f, k;             // hidden units (the q|k|v projection: its columns), inner dimension
  int m_tiles, n_tiles; // tiles: rows / BM (rounded up), units / UNITS (rounded up)
  bool h;               // the backward writes h too (the forward always does)
  // The q|k|v projection: columns of q and of k (and of v), RoPE's base, the tokens' positions.
  int q_cols, kv_cols;
  float theta;
  const int32_t *pos;
};
// x or dy, the weight, gate_up (the forward's output, the backward's input), h, and dgate_up (the
// backward's); q, k and v (the projection's). All but the first two in boxes of 64 columns by 64
// rows: a warpgroup's share of a slab.
struct fused_mm_maps {
  CUtensorMap a, b, gate_up, h, dgate_up, q, k, v;
};

// The ring's barriers: full ones the producer's arrival and the copies' bytes, empty ones the
// consumer warps'.
struct mm_control {
  uint64_t full[MAX_STAGES], empty[MAX_STAGES];
};
static __shared__ mm_control ctl;

// silu(g) / g: 1 / (1 + e^-g), as 0.5 + 0.5 tanh(g / 2) with tanh on the special function unit
// (one instruction, not ex2 and rcp: the epilogue is the part of a tile the multiplies do not
// hide). Its error (2^-11 relative) is a fraction of bf16's rounding of h and the gradients.
__device__ __forceinline__ float sigmoid(float g) {
  float t;
  asm("tanh.approx.f32 %0, %1;\n" : "=f"(t) : "f"(0.5f * g));
  return fmaf(0.5f, t, 0.5f);
}

// Tile t of the block's walk: its first row and first hidden unit.
template <int MODE> struct tile_at {
  int64_t row0;
  int unit0;
  __device__ tile_at(const fused_mm_params &p, int t)
      : row0((int64_t)(t / p.n_tiles) * BM), unit0((t % p.n_tiles) * tile_shape<MODE>::UNITS) {}
};

// The producer thread: every stage of every tile of the block, in the consumers' order.
template <int MODE>
__device__ __forceinline__ void produce(const fused_mm_params &p, const fused_mm_maps &tm,
                                        uint32_t base) {
  using S = tile_shape<MODE>;
  constexpr bool FWD = S::FWD;
  const int k_blocks = (p.k + BK - 1) / BK;
  uint32_t u = 0; // stage uses so far
  // The ring's next stage, once the consumers have handed it back: its place and full barrier.
  const auto next_stage = [&](uint32_t &at) {
    const int s = ring_slot<S::STAGES>(u);
    if (u >= S::STAGES) mbar_wait_suspended(&ctl.empty[s], ring_parity<S::STAGES>(u - S::STAGES));
    at = base + s * S::STAGE_BYTES;
    mbar_arrive_expect_tx(&ctl.full[s], S::STAGE_BYTES);
    return &ctl.full[s];
  };
  for (int t = blockIdx.x; t < p.m_tiles * p.n_tiles; t += gridDim.x) {
    const tile_at<MODE> at(p, t);
    for (int kb = 0; kb < k_blocks; kb++, u++) {
      uint32_t a_at;
      uint64_t *full = next_stage(a_at);
      const uint32_t b_at = a_at + S::A_BYTES;
      tma_load_rows(a_at, &tm.a, kb * BK, 0, at.row0, 0, full);
      if constexpr (MODE == SWIGLU_FWD) { // the units' W_gate rows, then their W_up rows
        tma_load_rows(b_at, &tm.b, kb * BK, 0, at.unit0, 0, full);
        tma_load_rows(b_at + 64 * 128, &tm.b, kb * BK, 0, p.f + at.unit0, 0, full);
      } else if constexpr (FWD) { // W_qkv's rows, 64 at a time
#pragma unroll
        for (int b = 0; b < S::BN / 64; b++)
          tma_load_rows(b_at + b * 64 * 128, &tm.b, kb * BK, 0, at.unit0 + 64 * b, 0, full);
      } else { // W_down's k-rows kb BK .., units unit0 .. + 63 and + 64 .. + 127
        tma_load_rows(b_at, &tm.b, at.unit0, 0, (int64_t)kb * BK, 0, full);
        tma_load_rows(b_at + BK * 128, &tm.b, at.unit0 + 64, 0, (int64_t)kb * BK, 0, full);
      }
    }
    if constexpr (!FWD) // gate_up's tile: gate's two slabs into a stage, then up's
      for (int part = 0; part < 2; part++, u++) {
        uint32_t dst;
        uint64_t *full = next_stage(dst);
#pragma unroll
        for (int s = 0; s < 4; s++) // slab s / 2, rows 64 (s % 2) ..
          tma_load_rows(dst + s * (SLAB / 2), &tm.gate_up, part * p.f + at.unit0 + (s >> 1) * 64, 0,
                        at.row0 + (s & 1) * 64, 0, full);
      }
  }
}

// Where unit j (of a slab's 64) of row r lives in a slab: 16-byte chunk j / 8 of the row's 128
// bytes, swizzled as TMA and wgmma lay them (chunk ^ row % 8).
__device__ __forceinline__ uint32_t slab_at(uint32_t slab, int r, int j) {
  return slab + r * 128 + ((((j >> 3) ^ r) & 7) << 4) + (j & 7) * 2;
}
__device__ __forceinline__ void st_shared_u32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ uint32_t ld_shared_u32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
  return v;
}
__device__ __forceinline__ float2 unpack_bf16(uint32_t v) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&v));
}

// The forward's epilogue into the slabs: acc[4 i + e] (i < 8) is the gate of unit 8 i + 2 c + e % 2
// of row r + 8 (e / 2), acc[32 + 4 i + e] its up. Both are rounded to bf16 as stored, and h is made
// from the rounded values, as swiglu_fwd_kernel makes it from gate_up.
__device__ __forceinline__ void epilogue_forward(const float (&acc)[64], uint32_t slabs, int r,
                                                 int c) {
#pragma unroll
  for (int hf = 0; hf < 2; hf++)
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const int e = 4 * i + 2 * hf, row = r + 8 * hf, j = 8 * i + 2 * c;
      const uint32_t g = pack_bf16(acc[e], acc[e + 1]), u = pack_bf16(acc[32 + e], acc[33 + e]);
      const float2 gf = unpack_bf16(g), uf = unpack_bf16(u);
      st_shared_u32(slab_at(slabs, row, j), g);
      st_shared_u32(slab_at(slabs + SLAB, row, j), u);
      st_shared_u32(slab_at(slabs + 2 * SLAB, row, j),
                    pack_bf16(gf.x * sigmoid(gf.x) * uf.x, gf.y * sigmoid(gf.y) * uf.y));
    }
}

// The q|k|v projection's epilogue: acc[4 i + e] (i < N / 8) is column 8 i + 2 c + e % 2 of the tile
// (head 8 i / D) at row r + 8 (e / 2), whose position is pos[e / 2]. A rotated head's pair
// (j, j + D/2) is acc groups i and i + D/16 (j = 8 i + 2 c + e % 2 < D/2 within the head), turned
// by the angle of inv_freq[i mod D/16][e % 2]; rotate[h]: head h of the tile is a q or k head.
template <int D, int N>
__device__ __forceinline__ void rope_rotate(float (&acc)[N / 2], const int32_t (&pos)[2],
                                            const bool (&rotate)[N / D],
                                            const float (&inv_freq)[D / 16][2]) {
  constexpr int HG = D / 16, HEADS = N / D; // acc groups in half a head; heads in a tile
#pragma unroll
  for (int hf = 0; hf < 2; hf++)
#pragma unroll
    for (int g = 0; g < HG; g++)
#pragma unroll
      for (int o = 0; o < 2; o++) {
        float co, si;
        rope_sincos_fast((float)pos[hf] * inv_freq[g][o], &co, &si);
#pragma unroll
        for (int h = 0; h < HEADS; h++) {
          if (!rotate[h]) continue;
          const int e0 = 4 * (h * 2 * HG + g) + 2 * hf + o, e1 = e0 + 4 * HG;
          const float x0 = acc[e0], x1 = acc[e1];
          acc[e0] = x0 * co - x1 * si;
          acc[e1] = x1 * co + x0 * si;
        }
      }
}
// Then part `part` of them (columns 128 part .. + 127), rounded to bf16, into its two slabs.
template <int N>
__device__ __forceinline__ void epilogue_columns(const float (&acc)[N / 2], uint32_t slabs, int r,
                                                 int c, int part) {
#pragma unroll
  for (int hf = 0; hf < 2; hf++)
#pragma unroll
    for (int i = 0; i < 16; i++) {
      const int e = 4 * (16 * part + i) + 2 * hf;
      st_shared_u32(slab_at(slabs + (i >> 3) * SLAB, r + 8 * hf, (8 * i + 2 * c) & 63),
                    pack_bf16(acc[e], acc[e + 1]));
    }
}

// The backward's: dh (acc[4 i + e]: unit 8 i + 2 c + e % 2, slab i / 8) times SwiGLU's derivatives,
// gate and up read from their ring stages (gate_in, up_in: two slabs each), dgate, dup and h into
// the output slabs, as swiglu_bwd_kernel computes them (dh here is the f32 product, not rounded
// to bf16 first).
__device__ __forceinline__ void epilogue_backward(const float (&acc)[64], uint32_t gate_in,
                                                  uint32_t up_in, uint32_t slabs, int r, int c,
                                                  bool with_h) {
#pragma unroll
  for (int hf = 0; hf < 2; hf++)
#pragma unroll
    for (int i = 0; i < 16; i++) {
      const int e = 4 * i + 2 * hf, row = r + 8 * hf, j = (8 * i + 2 * c) & 63;
      const uint32_t in = slab_at((i >> 3) * SLAB, row, j);
      const uint32_t gate_at = slabs + in, up_at = gate_at + 2 * SLAB;
      const float2 g = unpack_bf16(ld_shared_u32(gate_in + in)),
                   u = unpack_bf16(ld_shared_u32(up_in + in));
      const swiglu_unit x = swiglu_backward_at(g.x, u.x, acc[e], sigmoid(g.x)),
                        y = swiglu_backward_at(g.y, u.y, acc[e + 1], sigmoid(g.y));
      st_shared_u32(gate_at, pack_bf16(x.dgate, y.dgate));
      st_shared_u32(up_at, pack_bf16(x.dup, y.dup));
      if (with_h) st_shared_u32(up_at + 2 * SLAB, pack_bf16(x.h, y.h));
    }
}

// A warpgroup's stores of its 64 rows of part `part`'s slabs: gate and up into gate_up (forward)
// or dgate_up (backward), h into h; or each of the projection's two slabs into q, k or v (none:
// past its last column).
template <int MODE>
__device__ __forceinline__ void store_slabs(const fused_mm_params &p, const fused_mm_maps &tm,
                                            uint32_t slabs, const tile_at<MODE> &at, int wg,
                                            int part) {
  const uint32_t half = wg * (SLAB / 2);
  const int64_t row = at.row0 + wg * 64;
  constexpr bool ROPE = rope_dim<MODE> != 0;
  if constexpr (ROPE) {
#pragma unroll
    for (int s = 0; s < 2; s++) {
      const int col = at.unit0 + 128 * part + 64 * s, kv = col - p.q_cols;
      if (kv < 0)
        tma_store_rows(&tm.q, slabs + s * SLAB + half, col, 0, row, 0);
      else if (kv < p.kv_cols)
        tma_store_rows(&tm.k, slabs + s * SLAB + half, kv, 0, row, 0);
      else if (kv < 2 * p.kv_cols)
        tma_store_rows(&tm.v, slabs + s * SLAB + half, kv - p.kv_cols, 0, row, 0);
    }
  } else if constexpr (MODE == SWIGLU_FWD) {
    tma_store_rows(&tm.gate_up, slabs + half, at.unit0, 0, row, 0);
    tma_store_rows(&tm.gate_up, slabs + SLAB + half, p.f + at.unit0, 0, row, 0);
    tma_store_rows(&tm.h, slabs + 2 * SLAB + half, at.unit0, 0, row, 0);
  } else {
#pragma unroll
    for (int s = 0; s < 2; s++) {
      const int unit = at.unit0 + 64 * s;
      tma_store_rows(&tm.dgate_up, slabs + s * SLAB + half, unit, 0, row, 0);
      tma_store_rows(&tm.dgate_up, slabs + (2 + s) * SLAB + half, p.f + unit, 0, row, 0);
      if (p.h) tma_store_rows(&tm.h, slabs + (4 + s) * SLAB + half, unit, 0, row, 0);
    }
  }
  bulk_commit();
}

// A consumer warpgroup: rows 64 wg .. + 63 of each of the block's tiles. The multiplies' stage
// waits and hand-backs as the module comment says; the epilogue writes the slabs, and the
// warpgroup's first thread stores them by TMA and goes on: the stores drain while the next tile
// multiplies, and it waits for them to have read the slabs at that tile's epilogue.
template <int MODE>
__device__ __forceinline__ void consume(const fused_mm_params &p, const fused_mm_maps &tm,
                                        uint32_t base) {
  using S = tile_shape<MODE>;
  constexpr bool FWD = S::FWD;
  constexpr int D = rope_dim<MODE>;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wg = warp >> 2;
  const bool leader = (threadIdx.x & 127) == 0;
  const uint32_t slabs = base + S::STAGES * S::STAGE_BYTES;
  const int k_blocks = (p.k + BK - 1) / BK;
  uint32_t u = 0;      // stage uses
  bool stored = false; // the leader has stores in flight
  float acc[S::BN / 2];
  // RoPE's frequencies of this thread's rotation pairs (rope_rotate), once.
  float inv_freq[D > 0 ? D / 16 : 1][2];
  if constexpr (D > 0)
#pragma unroll
    for (int g = 0; g < D / 16; g++)
#pragma unroll
      for (int o = 0; o < 2; o++)
        inv_freq[g][o] = rope_inv_freq(8 * g + 2 * (lane & 3) + o, D, p.theta);
  for (int t = blockIdx.x; t < p.m_tiles * p.n_tiles; t += gridDim.x) {
    const tile_at<MODE> at(p, t);
    for (int kb = 0; kb < k_blocks; kb++, u++) {
      const int s = ring_slot<S::STAGES>(u);
      mbar_wait(&ctl.full[s], ring_parity<S::STAGES>(u));
      const uint32_t a_at = base + s * S::STAGE_BYTES;
      const uint64_t a0 = make_desc(a_at + wg * 64 * 128, 16, 1024);
      // K-major B: 8-row atoms 1024 bytes apart; N-major: slabs of BK k-rows, BK * 128 apart.
      const uint64_t b0 = make_desc(a_at + S::A_BYTES, FWD ? 16 : BK * 128, 1024);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < BK / 16; ks++) {
        const bool add = kb > 0 || ks > 0;
        if constexpr (!FWD)
          wgmma_ss_n128<0, 1>(acc, desc_at(a0, ks * 32), desc_at(b0, ks * 16 * 128), add);
        else if constexpr (S::BN == 256)
          wgmma_ss_n256<0, 0>(acc, desc_at(a0, ks * 32), desc_at(b0, ks * 32), add);
        else
          wgmma_ss_n128<0, 0>(acc, desc_at(a0, ks * 32), desc_at(b0, ks * 32), add);
      }
      wgmma_commit();
      wgmma_wait<1>(); // the stage before is read: hand it back
      if (kb > 0 && lane == 0) mbar_arrive(&ctl.empty[ring_slot<S::STAGES>(u - 1)]);
    }
    wgmma_wait<0>();
    wgmma_fence_operands(acc);
    if (lane == 0) mbar_arrive(&ctl.empty[ring_slot<S::STAGES>(u - 1)]);
    const int r = wg * 64 + (warp & 3) * 16 + (lane >> 2);
    if constexpr (D > 0) { // RoPE's rotation, in registers
      int32_t pos[2];
      bool rotate[S::BN / D]; // the tile's heads that are q or k heads
#pragma unroll
      for (int hf = 0; hf < 2; hf++) {
        const int64_t row = at.row0 + r + 8 * hf;
        pos[hf] = row < p.m ? p.pos[row] : 0;
      }
#pragma unroll
      for (int h = 0; h < S::BN / D; h++) rotate[h] = at.unit0 + h * D < p.q_cols + p.kv_cols;
      rope_rotate<D, S::BN>(acc, pos, rotate, inv_freq);
    }
#pragma unroll
    for (int part = 0; part < S::PARTS; part++) {
      // The last stores have read the slabs (the last tile's: a tile's multiplies after they
      // were issued), and every thread of the warpgroup is past that wait.
      if (leader && stored) bulk_wait_read<0>();
      asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");
      if constexpr (MODE == SWIGLU_FWD) {
        epilogue_forward(acc, slabs, r, lane & 3);
      } else if constexpr (D > 0) {
        epilogue_columns<S::BN>(acc, slabs, r, lane & 3, part);
      } else { // gate_up's two stages
        const int s = ring_slot<S::STAGES>(u), s_up = ring_slot<S::STAGES>(u + 1);
        mbar_wait(&ctl.full[s], ring_parity<S::STAGES>(u));
        mbar_wait(&ctl.full[s_up], ring_parity<S::STAGES>(u + 1));
        epilogue_backward(acc, base + s * S::STAGE_BYTES, base + s_up * S::STAGE_BYTES, slabs, r,
                          lane & 3, p.h);
        if (lane == 0) mbar_arrive(&ctl.empty[s]), mbar_arrive(&ctl.empty[s_up]);
        u += 2;
      }
      fence_proxy_async(); // the slabs' stores, before TMA reads them
      asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");
      if (leader) store_slabs<MODE>(p, tm, slabs, at, wg, part), stored = true;
    }
  }
  if (leader && stored) bulk_wait_all();
}

template <int MODE>
__global__ void __launch_bounds__(THREADS, 1)
    fused_matmul_kernel(const fused_mm_params p, const __grid_constant__ fused_mm_maps tm) {
  using S = tile_shape<MODE>;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t base = smem_u32(smem_aligned_1024(smem_raw));
  if (threadIdx.x == 0) {
    for (int s = 0; s < S::STAGES; s++)
      mbar_init(&ctl.full[s], 1), mbar_init(&ctl.empty[s], CONSUMERS / 32);
    mbar_init_fence();
  }
  __syncthreads(); // the barriers initialised, for the threads and the copies
  if (threadIdx.x >= CONSUMERS) {
    set_max_registers<PRODUCER_REGS, false>();
    if (threadIdx.x == CONSUMERS) produce<MODE>(p, tm, base);
  } else {
    set_max_registers<CONSUMER_REGS, true>();
    consume<MODE>(p, tm, base);
  }
}

// Whether the fused kernels take these sizes: a Hopper and an sm_90a build (the attention's
// probe), whole tiles of hidden units, rows TMA can address (16-byte strides, at least one stage
// wide), and LT_SWIGLU_MATMUL not set to "unfused" (which keeps the matmul and the SwiGLU apart,
// to compare).
bool lt_cuda_swiglu_linear_fused(lt_ctx *ctx, int64_t f, int64_t k) {
  const char *choice = getenv("LT_SWIGLU_MATMUL");
  if (choice && strcmp(choice, "unfused") == 0) return false;
  return cuda_state(ctx)->attn_wgmma && f % 128 == 0 && f <= INT32_MAX / 2 && k % 8 == 0 &&
         k >= BK && k <= INT32_MAX;
}

// and these tensors, all bf16 (their TMA maps then say whether TMA can address them).
static bool fused_fits(lt_ctx *ctx, int64_t f, int64_t k, std::initializer_list<lt_tensor> ts) {
  for (const lt_tensor &t : ts)
    if (t.dtype != LT_BF16) return false;
  return lt_cuda_swiglu_linear_fused(ctx, f, k);
}

template <int MODE>
static int launch(lt_cuda_state *st, fused_mm_params p, const fused_mm_maps &tm, const char *op) {
  using S = tile_shape<MODE>;
  CUDA_TRY(cudaFuncSetAttribute(fused_matmul_kernel<MODE>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize, (int)S::SMEM),
           "%s: raising shared memory to %zu bytes", op, S::SMEM);
  p.m_tiles = (int)((p.m + BM - 1) / BM), p.n_tiles = (p.f + S::UNITS - 1) / S::UNITS;
  const int64_t tiles = (int64_t)p.m_tiles * p.n_tiles;
  const unsigned blocks = (unsigned)(tiles < st->n_sms ? tiles : st->n_sms);
  fused_matmul_kernel<MODE><<<blocks, THREADS, S::SMEM, st->stream>>>(p, tm);
  return LT_OK;
}

// The maps of x or dy (A, boxes of BM rows by BK) and of gate_up and h (boxes of 64 by 64; a
// backward without h leaves its map unused).
static bool map_rows(fused_mm_maps *tm, lt_tensor a, lt_tensor gate_up, lt_tensor h) {
  const int64_t m = a.shape[0], f = gate_up.shape[1] / 2;
  if (!h.data) memset(&tm->h, 0, sizeof tm->h);
  return attn_tma_map_rows(&tm->a, a.data, LT_BF16, 1, m, 1, (int)a.shape[1], BM, BK) &&
         attn_tma_map_rows(&tm->gate_up, gate_up.data, LT_BF16, 1, m, 1, (int)(2 * f), 64, 64) &&
         (!h.data || attn_tma_map_rows(&tm->h, h.data, LT_BF16, 1, m, 1, (int)f, 64, 64));
}

int lt_cuda_swiglu_linear_fwd(lt_ctx *ctx, lt_tensor gate_up, lt_tensor h, lt_tensor x,
                              lt_tensor w) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t f = h.shape[1], k = x.shape[1], m = x.shape[0];
  fused_mm_maps tm;
  if (m == 0) return LT_OK;
  if (!fused_fits(ctx, f, k, {gate_up, h, x, w}) || !map_rows(&tm, x, gate_up, h) ||
      !attn_tma_map_rows(&tm.b, w.data, LT_BF16, 1, 2 * f, 1, (int)k, 64, BK)) {
    LT_TRY(lt_cuda_matmul(ctx, gate_up, x, false, w, true, 1.0f, 0.0f));
    return lt_cuda_swiglu_fwd(ctx, h, gate_up);
  }
  tm.dgate_up = tm.gate_up; // unused
  const fused_mm_params p = {m, (int)f, (int)k, 0, 0, true, 0, 0, 0.0f, nullptr};
  LT_TRY(launch<SWIGLU_FWD>(st, p, tm, "swiglu_linear_fwd"));
  return lt_cuda_launched(st, "swiglu_linear_fwd", gate_up, x);
}

int lt_cuda_swiglu_linear_bwd(lt_ctx *ctx, lt_tensor dgate_up, lt_tensor h, lt_tensor dh,
                              lt_tensor dy, lt_tensor w_down, lt_tensor gate_up) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t f = dh.shape[1], k = dy.shape[1], m = dy.shape[0];
  fused_mm_maps tm;
  if (m == 0) return LT_OK;
  if ((h.data && h.dtype != LT_BF16) || !fused_fits(ctx, f, k, {dgate_up, dy, w_down, gate_up}) ||
      !map_rows(&tm, dy, gate_up, h) ||
      !attn_tma_map_rows(&tm.dgate_up, dgate_up.data, LT_BF16, 1, m, 1, (int)(2 * f), 64, 64) ||
      !attn_tma_map_rows(&tm.b, w_down.data, LT_BF16, 1, k, 1, (int)f, BK, 64)) {
    LT_TRY(lt_cuda_matmul(ctx, dh, dy, false, w_down, false, 1.0f, 0.0f));
    return lt_cuda_swiglu_bwd(ctx, dgate_up, h, dh, gate_up);
  }
  const fused_mm_params p = {m, (int)f, (int)k, 0, 0, h.data != nullptr, 0, 0, 0.0f, nullptr};
  if (p.h)
    LT_TRY(launch<SWIGLU_BWD_H>(st, p, tm, "swiglu_linear_bwd"));
  else
    LT_TRY(launch<SWIGLU_BWD>(st, p, tm, "swiglu_linear_bwd"));
  return lt_cuda_launched(st, "swiglu_linear_bwd", dgate_up, dy);
}

// Whether the q|k|v projection with RoPE runs fused for heads of head_dim and k-wide rows: a Hopper
// and an sm_90a build, heads of 64 or 128, rows TMA can address, and LT_QKV_ROPE_MATMUL not set to
// "unfused" (which keeps the matmuls and RoPE's pass apart, to compare).
bool lt_cuda_qkv_rope_fused(lt_ctx *ctx, int64_t head_dim, int64_t k) {
  const char *choice = getenv("LT_QKV_ROPE_MATMUL");
  if (choice && strcmp(choice, "unfused") == 0) return false;
  return cuda_state(ctx)->attn_wgmma && (head_dim == 64 || head_dim == 128) && k % 8 == 0 &&
         k >= BK && k <= INT32_MAX;
}

int lt_cuda_qkv_rope_fwd(lt_ctx *ctx, lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor qk,
                         lt_tensor x, lt_tensor w, lt_tensor pos, float theta) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t m = x.shape[0], kdim = x.shape[1], d = q.shape[q.ndim - 1];
  if (m == 0) return LT_OK;
  const int64_t q_cols = q.shape[q.ndim - 2] * d, kv_cols = k.shape[k.ndim - 2] * d;
  fused_mm_maps tm;
  memset(&tm, 0, sizeof tm);
  bool fits =
      lt_cuda_qkv_rope_fused(ctx, d, kdim) && w.shape[0] <= INT32_MAX && pos.dtype == LT_I32;
  for (const lt_tensor &t : {q, k, v, x, w}) fits = fits && t.dtype == LT_BF16;
  fits = fits && attn_tma_map_rows(&tm.a, x.data, LT_BF16, 1, m, 1, (int)kdim, BM, BK) &&
         attn_tma_map_rows(&tm.b, w.data, LT_BF16, 1, w.shape[0], 1, (int)kdim, 64, BK) &&
         attn_tma_map_rows(&tm.q, q.data, LT_BF16, 1, m, 1, (int)q_cols, 64, 64) &&
         attn_tma_map_rows(&tm.k, k.data, LT_BF16, 1, m, 1, (int)kv_cols, 64, 64) &&
         attn_tma_map_rows(&tm.v, v.data, LT_BF16, 1, m, 1, (int)kv_cols, 64, 64);
  if (!fits) { // q|k by one matmul, v by another, then RoPE's pass
    const int64_t qk_cols = q_cols + kv_cols, qk_shape[2] = {m, qk_cols}, v_shape[2] = {m, kv_cols};
    LT_TRY(lt_cuda_matmul(ctx, lt_reshape(qk, 2, qk_shape), x, false, lt_rows(w, 0, qk_cols), true,
                          1.0f, 0.0f));
    LT_TRY(lt_cuda_matmul(ctx, lt_reshape(v, 2, v_shape), x, false, lt_rows(w, qk_cols, kv_cols),
                          true, 1.0f, 0.0f));
    return lt_cuda_rope_qkv_fwd(ctx, q, k, lt_tensor{}, qk, pos, theta);
  }
  const fused_mm_params p = {
      m,     (int)w.shape[0], (int)kdim,    0,     0,
      false, (int)q_cols,     (int)kv_cols, theta, (const int32_t *)pos.data};
  if (d == 64)
    LT_TRY(launch<QKV_ROPE64>(st, p, tm, "qkv_rope_fwd"));
  else
    LT_TRY(launch<QKV_ROPE128>(st, p, tm, "qkv_rope_fwd"));
  return lt_cuda_launched(st, "qkv_rope_fwd", q, x);
}
