// Linear attention with a decay per head in the chunk form of Lightning Attention-2 (Qin et al.
// 2024, arXiv:2401.04658, Algorithms 1 and 2), parallel over chunks: the only sequential work is
// the recurrence of the D x E states between chunks, one small matmul per chunk. Matches
// lt_cpu_linear_attn_fwd and _bwd (kernels/cpu/linear_attention.c); the CPU's `block` only splits
// the same sums, the GPU's chunk is its own 64 tokens.
//
// For one (batch row, query head), lambda = exp(log_decay[h]), chunk c = tokens [cC, cC + n_c),
// local index i' = i - cC, and the documents rules of the CPU (kernels.h, "Documents"):
//   H_c   the state before chunk c; H_0 = the prefix P (or 0), H_{c+1} = a_c H_c + U_c with
//         U_c = sum_{j in the chunk's last document} lambda^(n_c - 1 - j') k_j^T v_j and
//         a_c = lambda^(n_c) if the chunk's last token is in H_c's document, else 0. H_c belongs
//         to the document of token cC - 1 (c > 0) or to the prefix's (c = 0).
//   o_i = [(Q K^T) . M] V + [doc_i = doc(H_c)] lambda^(i'+1) q_i H_c,
//         M_ij = lambda^(i'-j') for j <= i in one document, else 0.           (Algorithm 1)
//   G_c   the gradient of the loss by H_{c+1}, from the chunks after c: G_last = 0,
//         G_{c-1} = a_c G_c + W_c, W_c = sum_{i: doc_i = doc(H_c)} lambda^(i'+1) q_i^T dO_i;
//         d/dP = G_{-1}.
//   with A = (Q K^T) . M, dA = (dO V^T) . M:                                   (Algorithm 2)
//   dq = dA K + [doc_i = doc(H_c)] lambda^(i'+1) dO_i H_c^T,
//   dk = dA^T Q + [doc_j = the last token's] lambda^(n_c-1-j') v_j G_c^T,
//   dv = A^T dO + [same] lambda^(n_c-1-j') k_j G_c.
//
// Kernels: the sequential pass (linear_chunk_state.cu) writes each H_c (and, reversed, each G_c)
// as bf16 into the workspace (B, Hq, chunks, D, D), in segments where the heads are too few to
// fill the GPU; the backward runs the H and G walks in one launch. The products run on mma.sync in
// linear_chunk_mma.cu (o and dq one block per chunk and query head, dk and dv one per chunk and
// key/value head); with LT_LINEAR_CHUNK=wmma, to time them side by side, on the WMMA kernels here:
// chunk_output_kernel (one block per chunk and query head) and chunk_grad_kernel (one block per
// chunk and key/value head, over the group's query heads, so dk and dv add up on chip without
// atomics), bf16 tensor cores with f32 accumulation. Powers lambda^m, 0 <= m <= 64, come from a
// table: no cumulative sums of log-decays.
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/attention_common.cuh" // load_tile
#include "kernels/cuda/linear_chunk.cuh"
#include "kernels/cuda/linear_chunk_common.cuh"
#include "kernels/cuda/linear_wmma.cuh"

using namespace nvcuda;

enum {
  WARPS = 8,
  THREADS = WARPS * 32,
  LDA = CHUNK + 8, // bf16 rows of the 64 x 64 score tiles (16 bytes of padding against conflicts)
  LDS = CHUNK + 4, // f32 rows of the score tiles
};

// Writes (or with `add`, adds to) rows [0, rows) of a 16 x 16 accumulator at dst (row stride
// `stride` elements), through the warp's 16 x 16 f32 staging tile, 8 columns per lane.
template <typename T>
__device__ __forceinline__ void store_tile(T *dst, int64_t stride, int rows, const acc_frag &acc,
                                           float *staging, bool add) {
  const int lane = threadIdx.x % 32, r = lane / 2, c = lane % 2 * 8;
  wmma::store_matrix_sync(staging, acc, 16, wmma::mem_row_major);
  __syncwarp();
  if (r < rows) {
    float x[8];
    if (add) load8(dst + r * stride + c, x);
#pragma unroll
    for (int j = 0; j < 8; j++) x[j] = staging[r * 16 + c + j] + (add ? x[j] : 0.0f);
    store8(dst + r * stride + c, x);
  }
  __syncwarp();
}

// ---- the parallel forward: one block per (chunk, query head, batch row) ------------------------

template <int D> struct output_smem {
  static constexpr int LD = tile_ld<D>::LD;
  static constexpr size_t BYTES = (3 * CHUNK + D) * (size_t)LD * sizeof(bf16) +
                                  (size_t)CHUNK * LDA * sizeof(bf16) +
                                  (size_t)CHUNK * LDS * sizeof(float) + 2 * (CHUNK + 4) * 4;
};

// Masked, decayed scores: a_s[i][j] = M_ij s_s[i][j] (bf16), M as in the file's comment.
__device__ __forceinline__ void mask_scores(bf16 *a_s, const float *s_s, const int32_t *docs,
                                            const float *pw, int n) {
  for (int idx = threadIdx.x; idx < CHUNK * CHUNK; idx += blockDim.x) {
    const int i = idx / CHUNK, j = idx % CHUNK;
    const bool keep = j <= i && i < n && docs[1 + i] == docs[1 + j];
    a_s[i * LDA + j] = __float2bfloat16(keep ? pw[i - j] * s_s[i * LDS + j] : 0.0f);
  }
}

// S = Q K^T for the chunk's 64 x 64 scores, two 16 x 16 tiles per warp, into f32 rows of LDS.
template <int D>
__device__ __forceinline__ void chunk_scores(float *s_s, const bf16 *a, const bf16 *b, int tile) {
  constexpr int LD = tile_ld<D>::LD;
  const int i0 = tile / 4 * 16, j0 = tile % 4 * 16;
  acc_frag acc[1];
  wmma::fill_fragment(acc[0], 0.0f);
  // B = K^T is K's tile read column-major: column j of K^T is row j.
  mma_strip<wmma::row_major, wmma::col_major>(acc, a + i0 * LD, LD, b + j0 * LD, LD, D);
  wmma::store_matrix_sync(s_s + i0 * LDS + j0, acc[0], LDS, wmma::mem_row_major);
}

// o = A V + Lambda Q H_c for the chunk (Algorithm 1, lines 8-10, with documents).
// grid: (chunks, Hq, B); q: (B, T, Hq, D); k, v: (B, T, Hkv, D); o: (B, T, Hq, D) bf16
template <int D>
__global__ void __launch_bounds__(THREADS, 2) chunk_output_kernel(const chunk_args a, bf16 *o) {
  typedef output_smem<D> SM;
  constexpr int LD = SM::LD, FR = D / 32;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16 *q_s = (bf16 *)smem;                  // (CHUNK, D) q, then Lambda q
  bf16 *k_s = q_s + CHUNK * LD;              // (CHUNK, D)
  bf16 *v_s = k_s + CHUNK * LD;              // (CHUNK, D)
  bf16 *h_s = v_s + CHUNK * LD;              // (D, D) H_c
  bf16 *a_s = h_s + D * LD;                  // (CHUNK, CHUNK) A
  float *s_s = (float *)(a_s + CHUNK * LDA); // (CHUNK, CHUNK) S, then the warps' staging
  int32_t *docs = (int32_t *)(s_s + CHUNK * LDS);
  float *pw = (float *)(docs + CHUNK + 4);

  const int tid = threadIdx.x, warp = tid / 32, h = blockIdx.y;
  const int64_t c = blockIdx.x, b = blockIdx.z, t0 = c * CHUNK;
  const int n = (int)min((int64_t)CHUNK, a.t - t0), kvh = h / (a.hq / a.hkv);
  const int64_t q_stride = (int64_t)a.hq * D, kv_stride = (int64_t)a.hkv * D;
  load_tile<CHUNK, D, THREADS>(q_s, a.q + (b * a.t * a.hq + h) * D, q_stride, t0, a.t);
  load_tile<CHUNK, D, THREADS>(k_s, a.k + (b * a.t * a.hkv + kvh) * D, kv_stride, t0, a.t);
  load_tile<CHUNK, D, THREADS>(v_s, a.v + (b * a.t * a.hkv + kvh) * D, kv_stride, t0, a.t);
  load_tile<D, D, THREADS>(h_s, a.h_states + ((b * a.hq + h) * a.chunks + c) * D * D, D, 0, D);
  cp_async_commit();
  load_docs(docs, a, b, t0, n);
  decay_powers(pw, a, h);
  cp_async_wait<0>();
  __syncthreads();

  chunk_scores<D>(s_s, q_s, k_s, warp);
  chunk_scores<D>(s_s, q_s, k_s, warp + WARPS);
  __syncthreads();
  mask_scores(a_s, s_s, docs, pw, n);
  const int32_t state_doc = docs[0];
  scale_rows<D>(q_s, LD, q_s, LD,
                [&](int i) { return i < n && docs[1 + i] == state_doc ? pw[i + 1] : 0.0f; });
  __syncthreads();

  // The warp's 16 rows and D / 2 columns.
  const int i0 = warp % 4 * 16, col0 = warp / 4 * (D / 2);
  acc_frag acc[FR];
  for (int f = 0; f < FR; f++) wmma::fill_fragment(acc[f], 0.0f);
  mma_strip<wmma::row_major, wmma::row_major>(acc, a_s + i0 * LDA, LDA, v_s + col0, LD, CHUNK);
  mma_strip<wmma::row_major, wmma::row_major>(acc, q_s + i0 * LD, LD, h_s + col0, LD, D);
  bf16 *dst = o + ((b * a.t + t0 + i0) * a.hq + h) * D + col0;
  for (int f = 0; f < FR; f++)
    store_tile(dst + f * 16, q_stride, n - i0, acc[f], s_s + warp * 256, false);
}

// ---- the parallel backward: one block per (chunk, key/value head, batch row) -------------------

template <int D> struct grad_smem {
  static constexpr int LD = tile_ld<D>::LD;
  // k, v, q, dO, Lambda k; H_c, G_c; A, dA; S, dP (f32; then Lambda v, Lambda dO); staging
  static constexpr size_t BYTES =
      (5 * CHUNK + 2 * D) * (size_t)LD * sizeof(bf16) + 2 * (size_t)CHUNK * LDA * sizeof(bf16) +
      2 * (size_t)CHUNK * LDS * sizeof(float) + WARPS * 256 * sizeof(float) + 2 * (CHUNK + 4) * 4;
  static_assert((size_t)CHUNK * LD * sizeof(bf16) <= (size_t)CHUNK * LDS * sizeof(float),
                "Lambda v and Lambda dO fit where S and dP were");
};

// dq (for each query head of the group), dk and dv (summed over them) of one chunk.
// grid: (chunks, Hkv, B); q, dout, dq: (B, T, Hq, D); k, v, dk, dv: (B, T, Hkv, D); dq, dk, dv
// of TG (bf16 or f32), added into
template <int D, typename TG>
__global__ void __launch_bounds__(THREADS, 1)
    chunk_grad_kernel(const chunk_args a, TG *dq, TG *dk, TG *dv) {
  typedef grad_smem<D> SM;
  constexpr int LD = SM::LD, FR = D / 32;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16 *k_s = (bf16 *)smem;                   // (CHUNK, D)
  bf16 *v_s = k_s + CHUNK * LD;               // (CHUNK, D)
  bf16 *q_s = v_s + CHUNK * LD;               // (CHUNK, D) this head's q
  bf16 *do_s = q_s + CHUNK * LD;              // (CHUNK, D) this head's dO
  bf16 *lk_s = do_s + CHUNK * LD;             // (CHUNK, D) Lambda' k
  bf16 *h_s = lk_s + CHUNK * LD;              // (D, D) H_c
  bf16 *g_s = h_s + D * LD;                   // (D, D) G_c
  bf16 *a_s = g_s + D * LD;                   // (CHUNK, CHUNK) A
  bf16 *da_s = a_s + CHUNK * LDA;             // (CHUNK, CHUNK) dA
  float *s_s = (float *)(da_s + CHUNK * LDA); // (CHUNK, CHUNK) S, then Lambda' v (bf16, LD)
  float *dp_s = s_s + CHUNK * LDS;            // (CHUNK, CHUNK) dP, then Lambda dO (bf16, LD)
  float *staging = dp_s + CHUNK * LDS;        // [WARPS] 16 x 16
  int32_t *docs = (int32_t *)(staging + WARPS * 256);
  float *pw = (float *)(docs + CHUNK + 4);
  bf16 *lv_s = (bf16 *)s_s, *ldo_s = (bf16 *)dp_s;

  const int tid = threadIdx.x, warp = tid / 32, kvh = blockIdx.y, group = a.hq / a.hkv;
  const int64_t c = blockIdx.x, b = blockIdx.z, t0 = c * CHUNK;
  const int n = (int)min((int64_t)CHUNK, a.t - t0);
  const int64_t q_stride = (int64_t)a.hq * D, kv_stride = (int64_t)a.hkv * D;
  load_tile<CHUNK, D, THREADS>(k_s, a.k + (b * a.t * a.hkv + kvh) * D, kv_stride, t0, a.t);
  load_tile<CHUNK, D, THREADS>(v_s, a.v + (b * a.t * a.hkv + kvh) * D, kv_stride, t0, a.t);
  load_docs(docs, a, b, t0, n); // read after the first barrier below

  // The warp's 16 rows (tokens i0..) and D / 2 columns of dq, dk, dv.
  const int i0 = warp % 4 * 16, col0 = warp / 4 * (D / 2);
  acc_frag dk_acc[FR], dv_acc[FR];
  for (int f = 0; f < FR; f++) wmma::fill_fragment(dk_acc[f], 0.0f);
  for (int f = 0; f < FR; f++) wmma::fill_fragment(dv_acc[f], 0.0f);

  for (int g = 0; g < group; g++) {
    const int h = kvh * group + g;
    const int64_t state_at = ((b * a.hq + h) * a.chunks + c) * D * D;
    load_tile<CHUNK, D, THREADS>(q_s, a.q + (b * a.t * a.hq + h) * D, q_stride, t0, a.t);
    load_tile<CHUNK, D, THREADS>(do_s, a.dout + (b * a.t * a.hq + h) * D, q_stride, t0, a.t);
    load_tile<D, D, THREADS>(h_s, a.h_states + state_at, D, 0, D);
    load_tile<D, D, THREADS>(g_s, a.g_states + state_at, D, 0, D);
    cp_async_commit();
    decay_powers(pw, a, h);
    cp_async_wait<0>();
    __syncthreads();

    // S = Q K^T and dP = dO V^T: 32 tiles of 16 x 16, four per warp.
    for (int tile = warp; tile < 16; tile += WARPS) {
      chunk_scores<D>(s_s, q_s, k_s, tile);
      chunk_scores<D>(dp_s, do_s, v_s, tile);
    }
    __syncthreads();
    const int32_t before = docs[0], last = docs[n];
    auto to_end = [&](int j) { // the weight of token j's term in the state after the chunk
      return j < n && docs[1 + j] == last ? pw[n - 1 - j] : 0.0f;
    };
    mask_scores(a_s, s_s, docs, pw, n);
    mask_scores(da_s, dp_s, docs, pw, n);
    scale_rows<D>(lk_s, LD, k_s, LD, to_end);
    __syncthreads();
    scale_rows<D>(lv_s, LD, v_s, LD, to_end);
    scale_rows<D>(ldo_s, LD, do_s, LD,
                  [&](int i) { return i < n && docs[1 + i] == before ? pw[i + 1] : 0.0f; });
    __syncthreads();

    // dq = dA K + (Lambda dO) H_c^T; H_c^T is H_c's tile read column-major.
    acc_frag dq_acc[FR];
    for (int f = 0; f < FR; f++) wmma::fill_fragment(dq_acc[f], 0.0f);
    mma_strip<wmma::row_major, wmma::row_major>(dq_acc, da_s + i0 * LDA, LDA, k_s + col0, LD,
                                                CHUNK);
    mma_strip<wmma::row_major, wmma::col_major>(dq_acc, ldo_s + i0 * LD, LD, h_s + col0 * LD, LD,
                                                D);
    // dk += dA^T Q + (Lambda' V) G_c^T; dv += A^T dO + (Lambda' K) G_c. A^T, dA^T: column-major.
    mma_strip<wmma::col_major, wmma::row_major>(dk_acc, da_s + i0, LDA, q_s + col0, LD, CHUNK);
    mma_strip<wmma::row_major, wmma::col_major>(dk_acc, lv_s + i0 * LD, LD, g_s + col0 * LD, LD, D);
    mma_strip<wmma::col_major, wmma::row_major>(dv_acc, a_s + i0, LDA, do_s + col0, LD, CHUNK);
    mma_strip<wmma::row_major, wmma::row_major>(dv_acc, lk_s + i0 * LD, LD, g_s + col0, LD, D);
    TG *dq_rows = dq + ((b * a.t + t0 + i0) * a.hq + h) * D + col0;
    for (int f = 0; f < FR; f++)
      store_tile(dq_rows + f * 16, q_stride, n - i0, dq_acc[f], staging + warp * 256, true);
    __syncthreads(); // the next head's loads overwrite what this one read
  }
  const int64_t kv_at = ((b * a.t + t0 + i0) * a.hkv + kvh) * D + col0;
  for (int f = 0; f < FR; f++) {
    store_tile(dk + kv_at + f * 16, kv_stride, n - i0, dk_acc[f], staging + warp * 256, true);
    store_tile(dv + kv_at + f * 16, kv_stride, n - i0, dv_acc[f], staging + warp * 256, true);
  }
}

// ---- the host side ------------------------------------------------------------------------------

// LT_LINEAR_KERNELS=scan keeps every call on the scan (linear_scan.cu), to compare the two;
// =chunks makes a call the chunk kernels do not take an error instead (the tests' way to know
// which kernels they check); unset or anything else: the chunk kernels where they apply.
typedef enum chunk_choice { CHUNKS_WHERE_THEY_APPLY, CHUNKS_NEVER, CHUNKS_ALWAYS } chunk_choice;

static chunk_choice chunk_kernels_choice() {
  const char *choice = getenv("LT_LINEAR_KERNELS");
  if (choice && strcmp(choice, "scan") == 0) return CHUNKS_NEVER;
  if (choice && strcmp(choice, "chunks") == 0) return CHUNKS_ALWAYS;
  return CHUNKS_WHERE_THEY_APPLY;
}

// Whether the kernels take tensors of these shapes: one width D = E of 64 or 128, 16-byte
// aligned data, grids within CUDA's limits (the backward's state pass has 2 B blocks in z).
static bool chunk_shapes(lt_tensor q, lt_tensor k, lt_tensor v, const lt_tensor *others, int n) {
  const int64_t d = q.shape[3];
  if ((d != 64 && d != 128) || k.shape[3] != d || v.shape[3] != d) return false;
  if (q.shape[0] > 32767 || q.shape[2] > 65535 || q.shape[1] > (int64_t)CHUNK * 0x7fffffff)
    return false;
  if (!aligned16(q.data) || !aligned16(k.data) || !aligned16(v.data)) return false;
  for (int i = 0; i < n; i++)
    if (!others[i].data || !aligned16(others[i].data)) return false;
  return true;
}

// Where the chunk kernels do not take a call: LT_OK to leave it to the scan, or with
// LT_LINEAR_KERNELS=chunks an error that says why.
static int not_taken(chunk_choice choice, const char *op, const char *why, lt_tensor a,
                     lt_tensor b) {
  if (choice != CHUNKS_ALWAYS) return LT_OK;
  return lt_cuda_unsupported(op, why, a, b);
}

static chunk_args args_of(lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor prefix,
                          const lt_linear_attn_spec *spec) {
  chunk_args a = {};
  a.q = (const bf16 *)q.data, a.k = (const bf16 *)k.data, a.v = (const bf16 *)v.data;
  a.log_decay = spec->log_decay.data ? (const float *)spec->log_decay.data : nullptr;
  a.doc = spec->doc.data ? (const int32_t *)spec->doc.data : nullptr;
  a.prefix_doc = a.doc && spec->prefix_doc.data ? (const int32_t *)spec->prefix_doc.data : nullptr;
  a.prefix = prefix.data ? (const float *)prefix.data : nullptr;
  a.b = q.shape[0], a.t = q.shape[1], a.hq = (int)q.shape[2], a.hkv = (int)k.shape[2];
  a.chunks = (a.t + CHUNK - 1) / CHUNK;
  return a;
}

// The workspace for `sets` state sets (H; H and G) of (B, Hq, chunks, D, D) bf16 and, after
// them, the segments' states, grown to fit; without room for the segments' states, one walk;
// false where the GPU has no room for the state sets.
static bool reserve_states(lt_cuda_state *st, chunk_args *a, int d, int sets, chunk_segments *sg) {
  const size_t per_set = (size_t)(a->b * a->hq * a->chunks) * (size_t)d * d * sizeof(bf16);
  const size_t sets_bytes = per_set * sets;
  if (sg->segs > 1 &&
      !lt_cuda_scratch_reserve(st, sets_bytes + lt_cuda_chunk_segment_bytes(*a, d, sets, *sg)))
    sg->segs = 1, sg->seg_chunks = a->chunks;
  if (!lt_cuda_scratch_reserve(st, sets_bytes)) return false;
  a->h_states = (bf16 *)st->scratch;
  a->g_states = sets > 1 ? (bf16 *)((char *)st->scratch + per_set) : nullptr;
  sg->workspace = sg->segs > 1 ? (float *)((char *)st->scratch + sets_bytes) : nullptr;
  return true;
}

// LT_LINEAR_CHUNK=wmma runs the products on the WMMA kernels above (the output kernel and the
// fused gradient kernel), to time them beside the mma.sync ones (linear_chunk_mma.cu) that run
// otherwise.
static bool wmma_products() {
  const char *choice = getenv("LT_LINEAR_CHUNK");
  return choice && strcmp(choice, "wmma") == 0;
}

template <int D>
static int forward(lt_cuda_state *st, const chunk_args &a, const chunk_segments &sg, bf16 *o) {
  LT_TRY(lt_cuda_chunk_states(st, a, D, 1, sg));
  if (!wmma_products()) return lt_cuda_chunk_output_mma(st, a, D, o);
  const size_t smem = output_smem<D>::BYTES;
  LT_TRY(allow_smem(chunk_output_kernel<D>, smem, "linear attention output"));
  chunk_output_kernel<D>
      <<<dim3((unsigned)a.chunks, (unsigned)a.hq, (unsigned)a.b), THREADS, smem, st->stream>>>(a,
                                                                                               o);
  return LT_OK;
}

template <int D, typename TG>
static int backward(lt_cuda_state *st, const chunk_args &a, const chunk_segments &sg, TG *dq,
                    TG *dk, TG *dv) {
  LT_TRY(lt_cuda_chunk_states(st, a, D, 2, sg));
  if (!wmma_products()) return lt_cuda_chunk_grads_mma(st, a, D, dq, dk, dv);
  const size_t smem = grad_smem<D>::BYTES;
  LT_TRY(allow_smem(chunk_grad_kernel<D, TG>, smem, "linear attention gradients"));
  chunk_grad_kernel<D, TG>
      <<<dim3((unsigned)a.chunks, (unsigned)a.hkv, (unsigned)a.b), THREADS, smem, st->stream>>>(
          a, dq, dk, dv);
  return LT_OK;
}

static const char *const SHAPES =
    "LT_LINEAR_KERNELS=chunks, but the chunk kernels take D = E of 64 or 128, 16-byte aligned";
static const char *const NO_ROOM =
    "LT_LINEAR_KERNELS=chunks, but the GPU has no room for the chunks' states";

int lt_cuda_linear_chunk_fwd(lt_cuda_state *st, lt_tensor o, lt_tensor q, lt_tensor k, lt_tensor v,
                             lt_tensor prefix, const lt_linear_attn_spec *spec, bool *done) {
  *done = false;
  const char *op = "linear_attn_fwd (chunks)";
  const chunk_choice choice = chunk_kernels_choice();
  if (choice == CHUNKS_NEVER) return LT_OK;
  if (!chunk_shapes(q, k, v, &o, 1)) return not_taken(choice, op, SHAPES, q, v);
  chunk_args a = args_of(q, k, v, prefix, spec);
  const int d = (int)q.shape[3];
  if (a.b * a.t == 0) return LT_OK; // nothing to run: the scan's early return says what holds
  chunk_segments sg;
  LT_TRY(lt_cuda_chunk_segments(st, a, d, 1, &sg));
  if (!reserve_states(st, &a, d, 1, &sg)) return not_taken(choice, op, NO_ROOM, q, o);
  *done = true;
  bf16 *out = (bf16 *)o.data;
  LT_TRY(d == 64 ? forward<64>(st, a, sg, out) : forward<128>(st, a, sg, out));
  return lt_cuda_launched(st, op, q, o);
}

int lt_cuda_linear_chunk_bwd(lt_cuda_state *st, lt_tensor dq, lt_tensor dk, lt_tensor dv,
                             lt_tensor dprefix, lt_tensor dout, lt_tensor q, lt_tensor k,
                             lt_tensor v, lt_tensor prefix, const lt_linear_attn_spec *spec,
                             bool *done) {
  *done = false;
  const char *op = "linear_attn_bwd (chunks)";
  const chunk_choice choice = chunk_kernels_choice();
  if (choice == CHUNKS_NEVER) return LT_OK;
  const lt_tensor others[4] = {dq, dk, dv, dout};
  if (!chunk_shapes(q, k, v, others, 4)) return not_taken(choice, op, SHAPES, q, dq);
  if (dk.dtype != dq.dtype || dv.dtype != dq.dtype)
    return not_taken(choice, op, "LT_LINEAR_KERNELS=chunks, but dq, dk, dv differ in dtype", dq,
                     dk);
  chunk_args a = args_of(q, k, v, prefix, spec);
  a.dout = (const bf16 *)dout.data;
  a.dprefix = dprefix.data ? (float *)dprefix.data : nullptr;
  const int d = (int)q.shape[3];
  if (a.b * a.t == 0) return LT_OK; // nothing to run: the scan's early return says what holds
  chunk_segments sg;
  LT_TRY(lt_cuda_chunk_segments(st, a, d, 2, &sg));
  if (!reserve_states(st, &a, d, 2, &sg)) return not_taken(choice, op, NO_ROOM, q, dq);
  *done = true;
  const int rc = dispatch_float(dq.dtype, [&](auto *tag) {
    using TG = TYPE_OF(tag);
    TG *gq = (TG *)dq.data, *gk = (TG *)dk.data, *gv = (TG *)dv.data;
    return d == 64 ? backward<64>(st, a, sg, gq, gk, gv) : backward<128>(st, a, sg, gq, gk, gv);
  });
  LT_TRY(rc);
  return lt_cuda_launched(st, op, dout, dq);
}
