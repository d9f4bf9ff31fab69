// The chunk kernels' parallel products (linear_chunk.cu's header comment has the math) on
// mma.sync m16n8k16 with fragments of known layout (attention_common.cuh), so that a chunk's
// masked, decayed scores stay in registers from one matmul into the next (FlashAttention-2,
// section 3.3) instead of going through shared memory as WMMA's opaque fragments must. The
// forward and each of the backward's products is one pattern: for the 16 rows a warp owns,
//   out_r = sum_s P_rs z_s + w_r x_r S,  P_rs = M'_rs (x_r . y_s)
// with, per product (Lightning Attention-2, Algorithms 1 and 2):
//   o  = A V + Lambda Q H_c          rows: queries  x = q,  y = k,  z = v,  S = H_c
//   dq = dA K + Lambda dO H_c^T      rows: queries  x = dO, y = v,  z = k,  S = H_c^T
//   dv = A^T dO + Lambda' K G_c      rows: keys     x = k,  y = q,  z = dO, S = G_c
//   dk = dA^T Q + Lambda' V G_c^T    rows: keys     x = v,  y = dO, z = q,  S = G_c^T
// where M' is M for query rows and M^T for key rows, and w the weights of the file's comment:
// lambda^(i'+1) for queries in H_c's document, lambda^(n_c-1-j') for keys in the chunk's last.
// So the backward is two kernels: dq per (chunk, query head), like the forward (two blocks per
// SM); dk and dv per (chunk, key/value head) (16 warps, one block per SM), summed over the group's
// query heads on chip. A warp owns 16 rows (16 (w % 4) ..) and half the output columns ((w / 4 % 2)
// D / 2 ..) of one product, and computes its rows' scores against the chunk's tokens itself: both
// column halves do, which costs the scores' MMAs twice (a fifth of all) but spares a shared-memory
// round trip and a barrier. Score tiles of 16 tokens that the causal mask hides wholly are skipped.
#include "kernels/cuda/attention_common.cuh" // ldmatrix, mma_bf16, c_to_a, load_tile, tile_addr
#include "kernels/cuda/linear_chunk_common.cuh"

enum { WARPS = 8, THREADS = WARPS * 32 };

// Whose rows a product runs over: queries (o, dq: M as it stands, the weights into H_c's
// document) or keys (dk, dv: M transposed, the weights to the chunk's end).
enum rows_of { QUERY_ROWS, KEY_ROWS };

template <int D> struct chunk_tiles {
  static constexpr size_t TILE = (size_t)CHUNK * tile_row_bytes<D>(); // (CHUNK, D) padded bf16
  static constexpr size_t STATE = (size_t)D * tile_row_bytes<D>();    // (D, D) padded bf16
  static constexpr size_t EXTRA = 2 * (CHUNK + 4) * sizeof(int32_t);  // docs, powers
};

// Where a warp works: rows [r0, r0 + 16) of the chunk, output columns [c0, c0 + D / 2).
struct warp_place {
  int r0, c0, lane;
};

// Whether 16 columns [16 t, 16 t + 16) of the warp's score rows can hold a nonzero P: M is
// causal (j <= i), so query rows see columns up to their own, key rows from their own on.
template <int ROWS> __device__ __forceinline__ bool columns_visible(int t, int r0) {
  return ROWS == QUERY_ROWS ? 16 * t <= r0 : 16 * t >= r0;
}

// P for the warp's 16 rows against the chunk's 64 tokens, as 8 C fragments of 16 x 8:
// s[4 nt + e] is row r0 + g + 8 (e / 2), column 8 nt + 2 c + e % 2 (g = lane / 4, c = lane % 4).
// x and y: (CHUNK, D) tiles. Query rows: P_ij = M_ij (x_i . y_j); key rows: P_ji = M_ij (x_j .
// y_i); M_ij = lambda^(i'-j') for j <= i < n in one document, else 0 (docs and pw as load_docs
// and decay_powers leave them).
template <int D, int ROWS>
__device__ __forceinline__ void masked_scores(float (&s)[32], uint32_t x, uint32_t y, warp_place w,
                                              const int32_t *docs, const float *pw, int n) {
#pragma unroll
  for (int e = 0; e < 32; e++) s[e] = 0.0f;
#pragma unroll
  for (int ks = 0; ks < D / 16; ks++) {
    uint32_t fa[4];
    ldmatrix_x4(fa, tile_addr<D>(x, w.r0 + (w.lane & 15), ks * 2 + (w.lane >> 4)));
#pragma unroll
    for (int np = 0; np < 4; np++) {
      if (!columns_visible<ROWS>(np, w.r0)) continue;
      // y^T as B: y's rows are B's columns, as K in Q K^T.
      uint32_t fb[4];
      ldmatrix_x4(fb, tile_addr<D>(y, np * 16 + (w.lane & 7) + ((w.lane >> 4) << 3),
                                   ks * 2 + ((w.lane >> 3) & 1)));
      mma_bf16(frag4(s, 2 * np), fa, fb[0], fb[1]);
      mma_bf16(frag4(s, 2 * np + 1), fa, fb[2], fb[3]);
    }
  }
  const int g = w.lane / 4, c = w.lane % 4;
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    const int row = w.r0 + g + 8 * hf;
    const int32_t row_doc = docs[1 + row];
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
      for (int e2 = 0; e2 < 2; e2++) {
        const int col = 8 * nt + 2 * c + e2;
        const int i = ROWS == QUERY_ROWS ? row : col, j = ROWS == QUERY_ROWS ? col : row;
        const bool keep = j <= i && i < n && docs[1 + col] == row_doc;
        float &p = s[4 * nt + 2 * hf + e2];
        p = keep ? pw[keep ? i - j : 0] * p : 0.0f;
      }
  }
}

// acc (the warp's rows, columns [c0, c0 + D / 2) as D / 16 C fragments) += P z: P from the score
// registers (two C fragments are one A fragment), z a (CHUNK, D) tile read transposed.
template <int D, int ROWS>
__device__ __forceinline__ void scores_times(float (&acc)[D / 4], float (&s)[32], uint32_t z,
                                             warp_place w) {
#pragma unroll
  for (int kk = 0; kk < 4; kk++) {
    if (!columns_visible<ROWS>(kk, w.r0)) continue;
    uint32_t fa[4];
    c_to_a(fa, frag4(s, 2 * kk), frag4(s, 2 * kk + 1));
#pragma unroll
    for (int dp = 0; dp < D / 32; dp++) {
      uint32_t fb[4];
      ldmatrix_x4_trans(
          fb, tile_addr<D>(z, kk * 16 + (w.lane & 15), w.c0 / 8 + dp * 2 + (w.lane >> 4)));
      mma_bf16(frag4(acc, 2 * dp), fa, fb[0], fb[1]);
      mma_bf16(frag4(acc, 2 * dp + 1), fa, fb[2], fb[3]);
    }
  }
}

// A pair of bf16 times a weight, rounded once to bf16.
__device__ __forceinline__ uint32_t scale_pair(uint32_t pair, float weight) {
  const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&pair));
  return pack_bf16(f.x * weight, f.y * weight);
}

// acc += (w x) S, or with TRANSPOSED (w x) S^T: x the (CHUNK, D) tile of the warp's rows, S a
// (D, D) tile, w_lo and w_hi the weights of the thread's rows r0 + g and r0 + g + 8, applied to
// x's A fragments (rows g and g + 8: registers 0, 2 and 1, 3).
template <int D, bool TRANSPOSED>
__device__ __forceinline__ void weighted_state_times(float (&acc)[D / 4], uint32_t x,
                                                     uint32_t state, float w_lo, float w_hi,
                                                     warp_place w) {
#pragma unroll
  for (int ks = 0; ks < D / 16; ks++) {
    uint32_t fa[4];
    ldmatrix_x4(fa, tile_addr<D>(x, w.r0 + (w.lane & 15), ks * 2 + (w.lane >> 4)));
    fa[0] = scale_pair(fa[0], w_lo), fa[1] = scale_pair(fa[1], w_hi);
    fa[2] = scale_pair(fa[2], w_lo), fa[3] = scale_pair(fa[3], w_hi);
#pragma unroll
    for (int dp = 0; dp < D / 32; dp++) {
      uint32_t fb[4];
      if (TRANSPOSED) // B = S^T: S's rows c0 + 16 dp .. are B's columns, as K in Q K^T
        ldmatrix_x4(fb, tile_addr<D>(state, w.c0 + dp * 16 + (w.lane & 7) + ((w.lane >> 4) << 3),
                                     ks * 2 + ((w.lane >> 3) & 1)));
      else // B = S: rows 16 ks .. of S read transposed, as V in P V
        ldmatrix_x4_trans(
            fb, tile_addr<D>(state, ks * 16 + (w.lane & 15), w.c0 / 8 + dp * 2 + (w.lane >> 4)));
      mma_bf16(frag4(acc, 2 * dp), fa, fb[0], fb[1]);
      mma_bf16(frag4(acc, 2 * dp + 1), fa, fb[2], fb[3]);
    }
  }
}

// The state term's weight of local row r: query rows lambda^(r+1) in H_c's document (docs[0]),
// key rows lambda^(n-1-r) in the chunk's last token's document (docs[n]); 0 past n.
template <int ROWS>
__device__ __forceinline__ float row_weight(int r, const int32_t *docs, const float *pw, int n) {
  if (r >= n) return 0.0f;
  if (ROWS == QUERY_ROWS) return docs[1 + r] == docs[0] ? pw[r + 1] : 0.0f;
  return docs[1 + r] == docs[n] ? pw[n - 1 - r] : 0.0f;
}

__device__ __forceinline__ void load2(const float *p, float &x0, float &x1) {
  const float2 v = *reinterpret_cast<const float2 *>(p);
  x0 = v.x, x1 = v.y;
}
__device__ __forceinline__ void load2(const bf16 *p, float &x0, float &x1) {
  const float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(p));
  x0 = v.x, x1 = v.y;
}
__device__ __forceinline__ void store2(float *p, float x0, float x1) {
  *reinterpret_cast<float2 *>(p) = make_float2(x0, x1);
}
__device__ __forceinline__ void store2(bf16 *p, float x0, float x1) {
  *reinterpret_cast<__nv_bfloat162 *>(p) = __floats2bfloat162_rn(x0, x1);
}

// Writes (with `add`, adds to) the warp's rows below `rows` (counted from r0) of acc at dst, the
// element of row r0 and column c0 (row stride `stride`), two columns per store.
template <int D, typename T>
__device__ __forceinline__ void store_rows(T *dst, int64_t stride, const float (&acc)[D / 4],
                                           int rows, int lane, bool add) {
  const int g = lane / 4, c = lane % 4;
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    const int r = g + 8 * hf;
    if (r >= rows) continue;
#pragma unroll
    for (int nt = 0; nt < D / 16; nt++) {
      T *p = dst + r * stride + 8 * nt + 2 * c;
      float x0 = acc[4 * nt + 2 * hf], x1 = acc[4 * nt + 2 * hf + 1];
      if (add) {
        float y0, y1;
        load2(p, y0, y1);
        x0 += y0, x1 += y1;
      }
      store2(p, x0, x1);
    }
  }
}

// ---- o and dq: one block per (chunk, query head, batch row) ------------------------------------

template <int D> struct rows_smem {
  typedef chunk_tiles<D> T;
  static constexpr size_t BYTES = 3 * T::TILE + T::STATE + T::EXTRA;
};

// DQ false: o = A V + Lambda Q H_c, written (bf16). DQ true: dq = dA K + Lambda dO H_c^T, added
// into (T: bf16 or f32). The state lands while the warps compute the scores and their product.
// grid: (chunks, Hq, B); q, dout, o, dq: (B, T, Hq, D); k, v: (B, T, Hkv, D); H_c: (B, Hq,
// chunks, D, D) bf16
template <int D, bool DQ, typename T>
__global__ void __launch_bounds__(THREADS, 2) chunk_rows_kernel(const chunk_args a, T *out) {
  typedef chunk_tiles<D> CT;
  extern __shared__ __align__(128) unsigned char smem[];
  unsigned char *x_s = smem, *y_s = x_s + CT::TILE, *z_s = y_s + CT::TILE, *h_s = z_s + CT::TILE;
  int32_t *docs = (int32_t *)(h_s + CT::STATE);
  float *pw = (float *)(docs + CHUNK + 4);

  const int warp = threadIdx.x / 32, h = blockIdx.y, kvh = h / (a.hq / a.hkv);
  const int64_t c = blockIdx.x, b = blockIdx.z, t0 = c * CHUNK;
  const int n = (int)min((int64_t)CHUNK, a.t - t0);
  const int64_t q_stride = (int64_t)a.hq * D, kv_stride = (int64_t)a.hkv * D;
  const int64_t q_at = (b * a.t * a.hq + h) * D, kv_at = (b * a.t * a.hkv + kvh) * D;
  load_tile<CHUNK, D, THREADS>(x_s, (DQ ? a.dout : a.q) + q_at, q_stride, t0, a.t);
  load_tile<CHUNK, D, THREADS>(y_s, (DQ ? a.v : a.k) + kv_at, kv_stride, t0, a.t);
  load_tile<CHUNK, D, THREADS>(z_s, (DQ ? a.k : a.v) + kv_at, kv_stride, t0, a.t);
  cp_async_commit();
  load_tile<D, D, THREADS>(h_s, a.h_states + ((b * a.hq + h) * a.chunks + c) * D * D, D, 0, D);
  cp_async_commit();
  load_docs(docs, a, b, t0, n);
  decay_powers(pw, a, h);
  cp_async_wait<1>();
  __syncthreads();

  const warp_place w = {warp % 4 * 16, warp / 4 * (D / 2), (int)threadIdx.x % 32};
  float s[32];
  masked_scores<D, QUERY_ROWS>(s, smem_u32(x_s), smem_u32(y_s), w, docs, pw, n);
  float acc[D / 4];
#pragma unroll
  for (int e = 0; e < D / 4; e++) acc[e] = 0.0f;
  scores_times<D, QUERY_ROWS>(acc, s, smem_u32(z_s), w);
  cp_async_wait<0>();
  __syncthreads();
  const int g = w.lane / 4;
  weighted_state_times<D, DQ>(acc, smem_u32(x_s), smem_u32(h_s),
                              row_weight<QUERY_ROWS>(w.r0 + g, docs, pw, n),
                              row_weight<QUERY_ROWS>(w.r0 + g + 8, docs, pw, n), w);
  store_rows<D>(out + q_at + (t0 + w.r0) * q_stride + w.c0, q_stride, acc, n - w.r0, w.lane, DQ);
}

// ---- dk and dv: one block per (chunk, key/value head, batch row) -------------------------------

enum { KV_WARPS = 2 * WARPS, KV_THREADS = KV_WARPS * 32 };

template <int D> struct kv_smem {
  typedef chunk_tiles<D> T;
  static constexpr size_t BYTES = 4 * T::TILE + T::STATE + T::EXTRA;
};

// dv = sum over the group's query heads of A^T dO + Lambda' K G_c, dk = of dA^T Q + Lambda' V
// G_c^T, added into (TG: bf16 or f32). 16 warps: the first 8 make dv, the others dk (one
// accumulator each: a warp holding both spilled at D = 128). Per head, G_c lands while the warps
// compute the scores and their products.
// grid: (chunks, Hkv, B); q, dout: (B, T, Hq, D); k, v, dk, dv: (B, T, Hkv, D); G_c: (B, Hq,
// chunks, D, D) bf16
template <int D, typename TG>
__global__ void __launch_bounds__(KV_THREADS, 1)
    chunk_kv_grad_kernel(const chunk_args a, TG *dk, TG *dv) {
  typedef chunk_tiles<D> CT;
  extern __shared__ __align__(128) unsigned char smem[];
  unsigned char *k_s = smem, *v_s = k_s + CT::TILE, *q_s = v_s + CT::TILE, *do_s = q_s + CT::TILE;
  unsigned char *g_s = do_s + CT::TILE;
  int32_t *docs = (int32_t *)(g_s + CT::STATE);
  float *pw = (float *)(docs + CHUNK + 4);

  const int warp = threadIdx.x / 32, kvh = blockIdx.y, group = a.hq / a.hkv;
  const bool dk_warp = warp >= WARPS;
  const int64_t c = blockIdx.x, b = blockIdx.z, t0 = c * CHUNK;
  const int n = (int)min((int64_t)CHUNK, a.t - t0);
  const int64_t q_stride = (int64_t)a.hq * D, kv_stride = (int64_t)a.hkv * D;
  const int64_t kv_at = (b * a.t * a.hkv + kvh) * D;
  load_tile<CHUNK, D, KV_THREADS>(k_s, a.k + kv_at, kv_stride, t0, a.t);
  load_tile<CHUNK, D, KV_THREADS>(v_s, a.v + kv_at, kv_stride, t0, a.t);
  load_docs(docs, a, b, t0, n); // read after the first barrier below

  const warp_place w = {warp % 4 * 16, warp / 4 % 2 * (D / 2), (int)threadIdx.x % 32};
  const int g = w.lane / 4;
  float acc[D / 4];
#pragma unroll
  for (int e = 0; e < D / 4; e++) acc[e] = 0.0f;

  for (int hg = 0; hg < group; hg++) {
    const int h = kvh * group + hg;
    const int64_t q_at = (b * a.t * a.hq + h) * D;
    load_tile<CHUNK, D, KV_THREADS>(q_s, a.q + q_at, q_stride, t0, a.t);
    load_tile<CHUNK, D, KV_THREADS>(do_s, a.dout + q_at, q_stride, t0, a.t);
    cp_async_commit();
    load_tile<D, D, KV_THREADS>(g_s, a.g_states + ((b * a.hq + h) * a.chunks + c) * D * D, D, 0, D);
    cp_async_commit();
    decay_powers(pw, a, h);
    cp_async_wait<1>();
    __syncthreads();
    // The warp's operands: dv's x = k, y = q, z = dO; dk's x = v, y = dO, z = q.
    const uint32_t x = smem_u32(dk_warp ? v_s : k_s), y = smem_u32(dk_warp ? do_s : q_s);
    float s[32];
    masked_scores<D, KEY_ROWS>(s, x, y, w, docs, pw, n); // A^T or dA^T
    scores_times<D, KEY_ROWS>(acc, s, smem_u32(dk_warp ? q_s : do_s), w);
    cp_async_wait<0>();
    __syncthreads();
    const float w_lo = row_weight<KEY_ROWS>(w.r0 + g, docs, pw, n);
    const float w_hi = row_weight<KEY_ROWS>(w.r0 + g + 8, docs, pw, n);
    if (dk_warp)
      weighted_state_times<D, true>(acc, x, smem_u32(g_s), w_lo, w_hi, w);
    else
      weighted_state_times<D, false>(acc, x, smem_u32(g_s), w_lo, w_hi, w);
    __syncthreads(); // the next head's loads overwrite q, dO, G_c and the powers
  }
  const int64_t at = kv_at + (t0 + w.r0) * kv_stride + w.c0;
  store_rows<D>((dk_warp ? dk : dv) + at, kv_stride, acc, n - w.r0, w.lane, true);
}

// ---- the host side ------------------------------------------------------------------------------

static dim3 chunk_grid(const chunk_args &a, int heads) {
  return dim3((unsigned)a.chunks, (unsigned)heads, (unsigned)a.b);
}

template <int D> static int output(lt_cuda_state *st, const chunk_args &a, bf16 *o) {
  const size_t smem = rows_smem<D>::BYTES;
  LT_TRY(allow_smem(chunk_rows_kernel<D, false, bf16>, smem, "linear attention output"));
  chunk_rows_kernel<D, false, bf16><<<chunk_grid(a, a.hq), THREADS, smem, st->stream>>>(a, o);
  return LT_OK;
}

template <int D, typename TG>
static int grads(lt_cuda_state *st, const chunk_args &a, TG *dq, TG *dk, TG *dv) {
  const size_t rows = rows_smem<D>::BYTES, kv = kv_smem<D>::BYTES;
  LT_TRY(allow_smem(chunk_rows_kernel<D, true, TG>, rows, "linear attention dq"));
  LT_TRY(allow_smem(chunk_kv_grad_kernel<D, TG>, kv, "linear attention dk, dv"));
  // dk, dv and dq read the same inputs and write different tensors: dq's kernel runs on the side
  // stream beside dk and dv's, so each fills the SMs the other's last wave leaves idle (at T=4096,
  // h=16, 1024 blocks each, one or two per SM).
  CUDA_TRY(cudaEventRecord(st->fork, st->stream), "linear attention dq: forking a stream");
  CUDA_TRY(cudaStreamWaitEvent(st->side, st->fork, 0), "linear attention dq: forking a stream");
  chunk_kv_grad_kernel<D, TG><<<chunk_grid(a, a.hkv), KV_THREADS, kv, st->stream>>>(a, dk, dv);
  chunk_rows_kernel<D, true, TG><<<chunk_grid(a, a.hq), THREADS, rows, st->side>>>(a, dq);
  CUDA_TRY(cudaEventRecord(st->join, st->side), "linear attention dq: joining the streams");
  CUDA_TRY(cudaStreamWaitEvent(st->stream, st->join, 0),
           "linear attention dq: joining the streams");
  return LT_OK;
}

int lt_cuda_chunk_output(lt_cuda_state *st, const chunk_args &a, int d, bf16 *o) {
  return d == 64 ? output<64>(st, a, o) : output<128>(st, a, o);
}

int lt_cuda_chunk_grads(lt_cuda_state *st, const chunk_args &a, int d, float *dq, float *dk,
                        float *dv) {
  return d == 64 ? grads<64>(st, a, dq, dk, dv) : grads<128>(st, a, dq, dk, dv);
}

int lt_cuda_chunk_grads(lt_cuda_state *st, const chunk_args &a, int d, bf16 *dq, bf16 *dk,
                        bf16 *dv) {
  return d == 64 ? grads<64>(st, a, dq, dk, dv) : grads<128>(st, a, dq, dk, dv);
}
