// Building blocks of the flash attention kernels: tensor-core fragments (mma.sync m16n8k16 bf16,
// ldmatrix), asynchronous global-to-shared copies, the swizzled shared-memory tile layout, and
// the tile tables that say which (query tile, key tile) pairs any mask lets through (the rules:
// attention_mask.cuh).
//
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16"), with g = lane / 4 and
// c = lane % 4:
//   A (16 x 16, row-major), 4 registers of 2 bf16: (g, 2c..2c+1), (g+8, 2c..), (g, 2c+8..),
//     (g+8, 2c+8..)
//   B (16 x 8, k by n), 2 registers: (k = 2c..2c+1, n = g), (k = 2c+8.., n = g)
//   C (16 x 8, f32), 4 registers: (g, 2c), (g, 2c+1), (g+8, 2c), (g+8, 2c+1)
// So the C fragments of two adjacent n-tiles are, packed to bf16, the A fragment of one k-step:
// attention's probabilities go from one matmul into the next without leaving registers
// (FlashAttention-2, section 3.3).
#ifndef LT_ATTENTION_COMMON_CUH
#define LT_ATTENTION_COMMON_CUH

#include <math.h>

#include "kernels/cuda/attention_mask.cuh"
#include "kernels/cuda/attention_schedule.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/wgmma.cuh"

#define LN2 0.6931471805599453f

// Everything the forward and backward kernels read. Strides are those of (B, T, H, D) tensors.
typedef struct attn_params {
  const bf16 *q, *k, *v, *dout;
  bf16 *o;
  bf16 *gated_o;      // gates * o (lt_attn_spec.gated_out), or NULL
  float *lse, *delta; // (B, Hq, Tq)
  float *dq;          // (B, Tq, Hq, D) f32, accumulated with atomics
  void *dk, *dv;      // (B, Tk, Hkv, D), bf16 or f32 (dkv_f32)
  // dK's and dV's rows: token j of batch row b at (b Tk + j) dkv_row + kvh D, with dkv_row = Hkv D
  // for tensors of their own, or (Hq + 2 Hkv) D for the k and v heads of a fused dqkv
  // (lt_attn_bwd_rope), where dK is also rotated back by RoPE at rope_pos (B, Tk).
  int64_t dkv_row;
  const int32_t *rope_pos; // NULL: no rotation
  float rope_theta;
  const int32_t *q_pos, *k_pos, *q_doc, *k_doc; // docs NULL without a document mask
  const int4 *q_tiles, *k_tiles;        // per (batch row, tile): pos min, pos max, doc min, doc max
  const longlong2 *q_keys, *k_keys;     // per (batch row, tile): smallest and largest attn_key
  const int *q_unordered, *k_unordered; // per batch row: its tiles are not in key order
  const float *gates;                   // (B, Tq, Hq) MoH head weights, or NULL
  unsigned long long *visited;          // tiles computed, summed over blocks, or NULL
  int *next_item; // the persistent forward's count of work items handed out (attention_fwd_ws.cu)
  int64_t tq, tk;
  int hq, hkv, n_q_tiles, n_k_tiles;
  float scale_log2; // softmax scale times log2(e): the kernels work in base 2
  attn_mask mask;
  // The kernels' SPARSE instantiation runs where the spec has a sparse pattern, head gates or a
  // tile count; the dense one (every softmax model's causal attention) leaves out their pair
  // checks, range searches, gate loads and counting (2-10% of its fwd + bwd time on an H100).
  bool sparse_kernel;
  bool dkv_f32;
  int head_groups; // groups of (batch row, head) pairs in the grid's order (block_work_of)
} attn_params;

// The work of a block of the kernels' 1-D grids: tile rank `rank` (0: the most causal work) of
// head h of batch row b. The (batch row, head) pairs are cut into `groups` groups of nearly
// equal size, in order; blocks go out group by group, and within a group rank by rank across its
// pairs: the longest first, so that a group's last blocks are short ones and the SMs finish
// nearly together (lt_cuda_attn_head_groups, attention_schedule.h, chooses how many groups).
typedef struct block_work {
  int rank, h, b;
} block_work;
__host__ __device__ __forceinline__ block_work block_work_at(int l, int n_tiles, int pairs,
                                                             int heads, int groups) {
  const int small = pairs / groups, big = small + 1, n_big = pairs % groups;
  const int big_blocks = n_big * big * n_tiles; // the first n_big groups have one pair more
  const int first = l < big_blocks ? l / (big * n_tiles) * big
                                   : n_big * big + (l - big_blocks) / (small * n_tiles) * small;
  const int size = l < big_blocks ? big : small, within = l - first * n_tiles;
  const int pair = first + within % size;
  return {within / size, pair % heads, pair / heads};
}
__device__ __forceinline__ block_work block_work_of(int n_tiles, int heads, int groups) {
  return block_work_at((int)blockIdx.x, n_tiles, (int)gridDim.x / n_tiles, heads, groups);
}
// The 1-D grid of n_tiles blocks for each of `pairs` (batch row, head) pairs.
static inline dim3 attn_grid(int n_tiles, int64_t pairs) {
  return dim3((unsigned)(n_tiles * pairs));
}

// A list of the tiles a block visits, in order, built cooperatively by all its threads: entry =
// tile index, with bit 31 set for TILE_PARTIAL. The candidates are tile_of(w) for w in
// [first, first + count); `classify(t)` gives tile t's kind.
template <int THREADS, typename G, typename F>
__device__ int build_tile_list(int *list, int *warp_counts, int first, int count, G &&tile_of,
                               F &&classify) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int total = 0;
  for (int base = 0; base < count; base += THREADS) {
    const bool candidate = base + (int)threadIdx.x < count;
    const int t = candidate ? tile_of(first + base + (int)threadIdx.x) : 0;
    const int kind = candidate ? classify(t) : TILE_HIDDEN;
    const unsigned mask = __ballot_sync(0xffffffffu, kind != TILE_HIDDEN);
    if (lane == 0) warp_counts[warp] = __popc(mask);
    __syncthreads();
    int offset = total;
    for (int w = 0; w < warp; w++) offset += warp_counts[w];
    for (int w = 0; w < THREADS / 32; w++) total += warp_counts[w];
    if (kind != TILE_HIDDEN)
      list[offset + __popc(mask & ((1u << lane) - 1))] =
          t | (kind == TILE_PARTIAL ? (int)0x80000000u : 0);
    __syncthreads();
  }
  return total;
}

// The first 1024-byte boundary in dynamic shared memory (wgmma's swizzled tiles start at one), as
// an offset from the array rather than an integer round trip, so that the compiler still knows
// what it points into: shared loads (LDS), not generic ones, for the statistics read through it.
__device__ __forceinline__ unsigned char *smem_aligned_1024(unsigned char *smem_raw) {
  return smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// ldmatrix's counterpart: four 8 x 8 b16 matrices from registers (r[j] holds matrix j in the mma
// fragments' layout: lane l has row l / 4, columns 2 (l % 4) and + 1) into shared memory, lane l
// giving the address of row l % 8 of matrix l / 8. (sm_90; other builds never launch the kernels
// that call it.)
__device__ __forceinline__ void stmatrix_x4(uint32_t addr, const uint32_t (&r)[4]) {
#if __CUDA_ARCH__ >= 900
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr),
               "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
#endif
}

// c += a b on the tensor cores: a 16 x 16 bf16, b 16 x 8 bf16, c 16 x 8 f32.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
               "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t *>(&v);
}

// Four accumulators of a flat fragment array as one mma.sync C fragment.
__device__ __forceinline__ float (&frag4(float *x, int i))[4] {
  return *reinterpret_cast<float(*)[4]>(x + 4 * i);
}

// The A fragment of k-step kk from the C fragments of n-tiles 2 kk and 2 kk + 1.
__device__ __forceinline__ void c_to_a(uint32_t (&a)[4], const float (&c0)[4],
                                       const float (&c1)[4]) {
  a[0] = pack_bf16(c0[0], c0[1]);
  a[1] = pack_bf16(c0[2], c0[3]);
  a[2] = pack_bf16(c1[0], c1[1]);
  a[3] = pack_bf16(c1[2], c1[3]);
}

// Tiles in shared memory are rows of D bf16 padded by 16 bytes: the 8 rows one ldmatrix reads
// start 4 banks apart, so they hit all 32 banks once, and an address is a per-thread base plus a
// compile-time offset (no swizzle arithmetic in the inner loops).
template <int D> __host__ __device__ constexpr int tile_row_bytes() {
  return D * 2 + 16;
}
template <int ROWS, int D> __host__ __device__ constexpr int tile_bytes() {
  return ROWS * tile_row_bytes<D>();
}
template <int D> __device__ __forceinline__ uint32_t tile_addr(uint32_t base, int row, int chunk) {
  return base + (uint32_t)(row * tile_row_bytes<D>() + chunk * 16);
}

// acc (the warp's 16 rows x D) += a (16 x 16, the k-step) x rows [16 kk, 16 kk + 16) of a padded
// (rows, D) tile, read transposed by ldmatrix: O += P V, dV += P^T dO, dK += dS^T Q, dQ += dS K.
template <int D>
__device__ __forceinline__ void mma_tile_rows(float (&acc)[D / 2], const uint32_t (&a)[4],
                                              uint32_t tile_base, int kk, int lane) {
#pragma unroll
  for (int dp = 0; dp < D / 16; dp++) {
    uint32_t b[4];
    ldmatrix_x4_trans(b, tile_addr<D>(tile_base, kk * 16 + (lane & 15), dp * 2 + (lane >> 4)));
    mma_bf16(frag4(acc, 2 * dp), a, b[0], b[1]);
    mma_bf16(frag4(acc, 2 * dp + 1), a, b[2], b[3]);
  }
}

// Tiles for wgmma are stored as D / 64 column blocks of ROWS rows of 128 bytes, chunk c of row r
// at chunk c ^ (r % 8): the canonical 128-byte-swizzled layout (wgmma.cuh), read K-major or
// MN-major alike. Tiles must start at 1024-byte boundaries.
template <int ROWS>
__device__ __forceinline__ uint32_t swizzled_addr(uint32_t base, int row, int chunk) {
  return base +
         (uint32_t)((chunk >> 3) * ROWS * 128 + row * 128 + (((chunk & 7) ^ (row & 7)) << 4));
}

// THREADS threads copy, `thread` (0 .. THREADS - 1) being this one, UNROLL chunks at a time (a
// thread short of registers unrolls less: the compiler keeps every unrolled chunk's offsets live).
template <int ROWS, int D, int THREADS, int UNROLL = ROWS *(D / 8) / THREADS>
__device__ __forceinline__ void
load_tile_swizzled(uint32_t base, const bf16 *src, int64_t row_stride, int64_t row0,
                   int64_t rows_valid, int thread = (int)threadIdx.x) {
  constexpr int CHUNKS = D / 8;
  static_assert(ROWS * CHUNKS % THREADS == 0, "whole chunks per thread");
#pragma unroll UNROLL
  for (int i = 0; i < ROWS * CHUNKS / THREADS; i++) {
    const int c = i * THREADS + thread, r = c / CHUNKS, ch = c % CHUNKS;
    const bool valid = row0 + r < rows_valid;
    cp_async16(swizzled_addr<ROWS>(base, r, ch),
               src + (valid ? (row0 + r) * row_stride : 0) + ch * 8, valid);
  }
}

// Copies rows [row0, row0 + ROWS) of a (T, H, D) slice (row stride H * D elements) into a
// padded tile, zero-filling rows at or past `rows_valid`.
template <int ROWS, int D, int THREADS>
__device__ __forceinline__ void load_tile(void *tile, const bf16 *src, int64_t row_stride,
                                          int64_t row0, int64_t rows_valid) {
  constexpr int CHUNKS = D / 8;
  static_assert(ROWS * CHUNKS % THREADS == 0, "whole chunks per thread");
  const uint32_t base = smem_u32(tile);
#pragma unroll
  for (int i = 0; i < ROWS * CHUNKS / THREADS; i++) {
    const int c = i * THREADS + (int)threadIdx.x, r = c / CHUNKS, ch = c % CHUNKS;
    const bool valid = row0 + r < rows_valid;
    cp_async16(tile_addr<D>(base, r, ch), src + (valid ? (row0 + r) * row_stride : 0) + ch * 8,
               valid);
  }
}

// 4-byte async copy (a position, document id or statistic); zero when !valid.
__device__ __forceinline__ void cp_async4(void *smem, const void *gmem, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(valid ? 4 : 0));
}

// --- the forward's per-tile math, shared by the mma.sync and wgmma kernels -------------------
// A thread holds two query rows (g and g + 8 of its warp's 16) of a score tile as s[4 nt + e]:
// row g + 8 (e / 2), key column 8 nt + 2 c + e % 2; and the matching output rows as o[4 dt + e].

// Sets to -inf every score the mask hides: keys past tk, and pairs lt_attn_spec rules out.
// `row` is the thread's first row in the block; positions of the tile's keys are in kpos/kdoc.
// SPARSE as in pair_visible.
template <int NT, bool SPARSE>
__device__ __forceinline__ void
mask_scores(float (&s)[NT * 4], int row, const int32_t *qpos, const int32_t *qdoc,
            const int32_t *kpos, const int32_t *kdoc, int64_t j0, int64_t tk, const attn_mask &m) {
  const int c = threadIdx.x & 3;
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    const int32_t qp = qpos[row + 8 * hf], qd = qdoc[row + 8 * hf];
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
      for (int e2 = 0; e2 < 2; e2++) {
        const int col = nt * 8 + c * 2 + e2;
        if (j0 + col >= tk || !pair_visible<SPARSE>(m, qp, qd, kpos[col], m.docs ? kdoc[col] : 0))
          s[nt * 4 + 2 * hf + e2] = -INFINITY;
      }
  }
}

// Half hf of a score tile (the thread's row g + 8 hf): its largest score times scale_log2, over
// the warp's 4 threads of the row.
template <int NT>
__device__ __forceinline__ float scaled_row_max(const float (&s)[NT * 4], int hf,
                                                float scale_log2) {
  float mx = -INFINITY;
#pragma unroll
  for (int nt = 0; nt < NT; nt++) mx = fmaxf(mx, fmaxf(s[nt * 4 + 2 * hf], s[nt * 4 + 2 * hf + 1]));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
  return mx * scale_log2;
}

// Half hf's scores become probabilities exp2(s * scale_log2 - m); returns the thread's share of
// their sum.
template <int NT>
__device__ __forceinline__ float exp_row(float (&s)[NT * 4], int hf, float m, float scale_log2) {
  float sum = 0.0f;
#pragma unroll
  for (int nt = 0; nt < NT; nt++)
#pragma unroll
    for (int e2 = 0; e2 < 2; e2++) {
      const float pv = fast_exp2(fmaf(s[nt * 4 + 2 * hf + e2], scale_log2, -m));
      s[nt * 4 + 2 * hf + e2] = pv;
      sum += pv;
    }
  return sum;
}

// The online-softmax step (FlashAttention-2, Algorithm 1, lines 8-10) in base 2, less the output:
// scores become probabilities exp2(s * scale_log2 - m) against the new running max m, the running
// sum is rescaled to it, and factor[] says by how much the output must be (rescale_output). Apart,
// so that a kernel can rescale an output that a multiply is still accumulating once it is done.
template <int NT>
__device__ __forceinline__ void softmax_probs(float (&s)[NT * 4], float (&row_max)[2],
                                              float (&row_sum)[2], float scale_log2,
                                              float (&factor)[2]) {
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    const float m_new = fmaxf(row_max[hf], scaled_row_max<NT>(s, hf, scale_log2));
    const float m_use = m_new == -INFINITY ? 0.0f : m_new; // a row that has seen nothing yet
    const float rescale = fast_exp2(row_max[hf] - m_use);
    row_max[hf] = m_new;
    row_sum[hf] = row_sum[hf] * rescale + exp_row<NT>(s, hf, m_use, scale_log2);
    factor[hf] = rescale;
  }
}

// Probabilities may exceed 1 by up to this factor, in base-2 exponent, before the running max is
// raised (softmax_probs_lazy).
constexpr float LAZY_MAX_SLACK = 8.0f;

// softmax_probs, but the running max is raised only when some row of the warp has a score more
// than 2^LAZY_MAX_SLACK times exp2 of it (and for every row of the warp then): otherwise the
// probabilities are taken against the max as it is, at most 2^8 (bf16 and f32 hold them, and the
// sum and output, which share the max, stay exact in ratio), and neither the sum nor the output
// needs rescaling. True when the warp's outputs must be rescaled by factor[] (the same for the
// whole warp: a branch that skips 4 DT multiplies a tile in most tiles past the first few).
template <int NT>
__device__ __forceinline__ bool softmax_probs_lazy(float (&s)[NT * 4], float (&row_max)[2],
                                                   float (&row_sum)[2], float scale_log2,
                                                   float (&factor)[2]) {
  float mx[2];
#pragma unroll
  for (int hf = 0; hf < 2; hf++) mx[hf] = scaled_row_max<NT>(s, hf, scale_log2);
  const bool raise = __any_sync(0xffffffffu, mx[0] > row_max[0] + LAZY_MAX_SLACK ||
                                                 mx[1] > row_max[1] + LAZY_MAX_SLACK);
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    float m_use; // a row that has seen nothing yet takes 0 (all its scores so far are -inf)
    if (raise) {
      const float m_new = fmaxf(row_max[hf], mx[hf]);
      m_use = m_new == -INFINITY ? 0.0f : m_new;
      factor[hf] = fast_exp2(row_max[hf] - m_use);
      row_max[hf] = m_new;
    } else {
      m_use = row_max[hf] == -INFINITY ? 0.0f : row_max[hf];
      factor[hf] = 1.0f;
    }
    row_sum[hf] = row_sum[hf] * factor[hf] + exp_row<NT>(s, hf, m_use, scale_log2);
  }
  return raise;
}

// The output's rows (the thread's two) times softmax_probs's factors.
template <int DT>
__device__ __forceinline__ void rescale_output(float (&o)[DT * 4], const float (&factor)[2]) {
#pragma unroll
  for (int dt = 0; dt < DT; dt++)
#pragma unroll
    for (int hf = 0; hf < 2; hf++)
      o[dt * 4 + 2 * hf] *= factor[hf], o[dt * 4 + 2 * hf + 1] *= factor[hf];
}

// The whole online-softmax step: probabilities, running sum and output rescaled at once.
template <int NT, int DT>
__device__ __forceinline__ void online_softmax(float (&s)[NT * 4], float (&o)[DT * 4],
                                               float (&row_max)[2], float (&row_sum)[2],
                                               float scale_log2) {
  float factor[2];
  softmax_probs<NT>(s, row_max, row_sum, scale_log2, factor);
  rescale_output<DT>(o, factor);
}

// The probabilities of keys 16 kk .. 16 kk + 15 as an A fragment (bf16).
template <int NT>
__device__ __forceinline__ void probs_fragment(uint32_t (&a)[4], const float (&s)[NT * 4], int kk) {
  a[0] = pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
  a[1] = pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
  a[2] = pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
  a[3] = pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
}

// o / l and lse = (m + log2 l) ln 2 for the thread's two rows (i0 + row, + 8); o = 0 and
// lse = -inf for a row that saw no key (row_sum 0: gated_off sets it so). With p.gated_o, also
// gate * o / l there, from the same f32 registers: MoH's weighting without a pass of its own
// (lt_cpu_attn_fwd's gated_out), 0 where o is.
template <int D>
__device__ __forceinline__ void write_output(const attn_params &p, const float (&o)[D / 2],
                                             const float (&row_max)[2], const float (&row_sum)[2],
                                             int b, int h, int64_t i0, int row) {
  const int c = threadIdx.x & 3;
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    float l = row_sum[hf];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int64_t i = i0 + row + 8 * hf;
    if (i >= p.tq) continue;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    const int64_t row = ((int64_t)b * p.tq + i) * p.hq + h;
    bf16 *o_row = p.o + row * D;
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++)
      *reinterpret_cast<uint32_t *>(o_row + dt * 8 + c * 2) =
          pack_bf16(o[dt * 4 + 2 * hf] * inv, o[dt * 4 + 2 * hf + 1] * inv);
    if (p.gated_o) {
      const float scale = p.gates[row] * inv;
      bf16 *g_row = p.gated_o + row * D;
#pragma unroll
      for (int dt = 0; dt < D / 8; dt++)
        *reinterpret_cast<uint32_t *>(g_row + dt * 8 + c * 2) =
            pack_bf16(o[dt * 4 + 2 * hf] * scale, o[dt * 4 + 2 * hf + 1] * scale);
    }
    if (c == 0)
      p.lse[((int64_t)b * p.hq + h) * p.tq + i] =
          l > 0.0f ? (row_max[hf] + log2f(l)) * LN2 : -INFINITY;
  }
}

// Whether the thread's two rows (i0 + row, + 8) are heads their router left out (MoH: gate 0),
// which get o = 0 and lse = -inf as rows that see no key.
__device__ __forceinline__ void gated_off(const attn_params &p, bool (&off)[2], int b, int h,
                                          int64_t i0, int row) {
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    const int64_t i = i0 + row + 8 * hf;
    off[hf] = p.gates && i < p.tq && p.gates[((int64_t)b * p.tq + i) * p.hq + h] == 0.0f;
  }
}

// Checks the operands, fills the parameters shared by the forward and backward, and builds the
// tile tables for query tiles of q_tile rows and key tiles of k_tile rows (attention_aux.cu).
int lt_cuda_attn_setup(lt_ctx *ctx, attn_params *p, lt_tensor q, lt_tensor k, lt_tensor v,
                       const lt_attn_spec *spec, int q_tile, int k_tile, const char *op);

// Readies p's work counter (p.next_item) for a persistent kernel over `items` work items and
// gives its grid: one block an SM, or one an item where there are fewer (`op` names the caller in
// an error).
int lt_cuda_attn_persistent_grid(lt_cuda_state *st, const attn_params &p, int64_t items,
                                 const char *op, unsigned *blocks);

// Waits until this step's copies have landed (the next step's, when issued, stay in flight) and
// are visible to every thread of the block, and on Hopper to the tensor cores too.
template <bool HOPPER> __device__ __forceinline__ void wait_for_tile(bool next_in_flight) {
  if (next_in_flight)
    cp_async_wait<1>();
  else
    cp_async_wait<0>();
  if constexpr (HOPPER) fence_proxy_async(); // cp.async wrote what the tensor cores read
  __syncthreads();
}

// A tile in the layout its multiplies read: swizzled for wgmma, padded rows for ldmatrix.
template <bool SWIZZLED, int ROWS, int D, int THREADS>
__device__ __forceinline__ void load_rows(unsigned char *tile, const bf16 *src, int64_t row_stride,
                                          int64_t row0, int64_t rows_valid) {
  if constexpr (SWIZZLED)
    load_tile_swizzled<ROWS, D, THREADS>(smem_u32(tile), src, row_stride, row0, rows_valid);
  else
    load_tile<ROWS, D, THREADS>(tile, src, row_stride, row0, rows_valid);
}

// Builds the tile tables of (B, T) positions and documents in tiles of `tile` rows: each tile's
// position and document ranges, its smallest and largest attn_key, and per batch row whether
// the tiles are out of key order (unordered[b] != 0; zeroed by the caller beforehand). keys and
// unordered NULL: the ranges alone, which are all the dense kernels read.
int lt_cuda_attn_tiles(lt_cuda_state *st, int4 *ranges, longlong2 *keys, int *unordered,
                       const int32_t *pos, const int32_t *doc, int64_t b, int64_t t, int tile);

// The kernel variant that environment variable `env` names: v1 to v`last`, as 1 to last, or
// `fallback` when it is unset or empty; another name is a config error that names the variable and
// `what` it picks. Read at every call, which costs nothing beside a launch, so that the tests and
// the benchmarks can run each variant in one process.
int lt_cuda_attn_variant(const char *env, const char *what, int fallback, int last, int *variant);

// After a kernel launch: adds the tiles it computed (p.visited) to *spec->tiles_visited, waiting
// for the kernel; nothing when the spec asks for no count.
int lt_cuda_attn_count_tiles(lt_cuda_state *st, const attn_params &p, const lt_attn_spec *spec);

#endif
