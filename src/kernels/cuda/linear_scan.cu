// The linear attention scan (linear_scan.cuh) in chunks of 64 tokens, as Lightning Attention-2
// (Qin et al. 2024, arXiv:2401.04658) Algorithm 1: per chunk, the intra term (Q K^T . M) V with M
// the causal, decayed, document mask, the inter term Lambda Q S from the state before the chunk,
// and the state update S = lambda^C S + (Lambda' K)^T V, all on bf16 tensor cores (WMMA) with fp32
// accumulation and the state kept in fp32. Every weight is a power lambda^m, 0 <= m <= 64, from a
// table: no cumulative sums of log-decays. Matches blocked_pass in kernels/cpu/linear_attention.c.
//
// One block owns one (batch row, head, 64 columns of v') and walks its tokens chunk by chunk with
// the state in shared memory, so time is linear in T. A few heads cannot fill the GPU, so the
// tokens are also cut into segments (LASP-2's decomposition, Sun et al. 2025, inside one GPU):
// a first launch computes each segment's own state, a small scan combines them into every
// segment's starting state, and a second launch runs the segments in parallel from those.
#include "kernels/cuda/linear_scan.cuh"
#include "kernels/cuda/linear_wmma.cuh"

using namespace nvcuda;

enum {
  CHUNK = 64, // tokens per chunk
  TILE = 64,  // columns of v' (and of the state) per block
  WARPS = 8,
  THREADS = WARPS * 32,
  SCAN_THREADS = 256,
  MIN_SEGMENT_CHUNKS = 4, // shorter segments cost more in their extra state pass than they give
  BLOCKS_PER_SM = 2,      // the parallelism the segments aim for
};

// A launch of the scan: the pass, the heads it covers (h = blockIdx.y * head_step + head_offset),
// its segments, where each block's S0 comes from and where its final state goes:
//   S0 = prefix[(b hq + h) prefix_head + seg prefix_seg + r prefix_row + c prefix_col]
//   final_state[(b hq + h) final_head + seg final_seg + r wv + c]
// vec_q, vec_v: q' and k' rows (v' and out rows) may be read as 16-byte vectors.
typedef struct scan_launch {
  scan_pass p;
  int head_step, head_offset, segs;
  int64_t seg_len;
  const float *prefix;
  int64_t prefix_head, prefix_seg, prefix_row, prefix_col;
  float *final_state;
  int64_t final_head, final_seg;
  bool vec_q, vec_v;
} scan_launch;

__device__ __forceinline__ int64_t token_of(const scan_pass &p, int64_t pos) {
  return p.reverse ? p.t - 1 - pos : pos;
}

// A (B, T, heads, width) tensor seen from one (batch row, head): row(tok) = base + tok * stride.
template <typename T> struct head_rows {
  T *base;
  int64_t stride;
  __device__ __forceinline__ T *row(int64_t tok) const { return base + tok * stride; }
};

template <typename T>
__device__ __forceinline__ head_rows<T> rows_of(const scan_pass &p, T *data, bool by_kv_head,
                                                int64_t b, int h, int width) {
  const int heads = by_kv_head ? p.hkv : p.hq, head = by_kv_head ? h / (p.hq / p.hkv) : h;
  const int64_t stride = (int64_t)heads * width;
  return head_rows<T>{data ? data + b * p.t * stride + (int64_t)head * width : nullptr, stride};
}

// Eight values of `row` from column y into dst, zeros past `width` (or for no row at all).
__device__ __forceinline__ void load8_padded(bf16 *dst, const bf16 *row, int y, int width,
                                             bool vec) {
  if (row && vec && y + 8 <= width) {
    *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(row + y);
    return;
  }
  for (int j = 0; j < 8; j++) dst[j] = row && y + j < width ? row[y + j] : __float2bfloat16(0.0f);
}

// Shared memory rows are padded by 16 bytes so that the MMA's fragment loads, which read 16 rows
// at one column, spread over the banks.
template <int KP> struct scan_smem {
  static constexpr int LDQ = KP + 8;   // bf16 rows of q_s, k_s
  static constexpr int LDT = TILE + 8; // bf16 rows of v_s, a_s, sb_s
  static constexpr int LDF = TILE + 4; // f32 rows of f_s, s_s
  static constexpr size_t HALVES = 2 * CHUNK * LDQ + 2 * CHUNK * LDT + (size_t)KP * LDT;
  static constexpr size_t FLOATS = CHUNK * LDF + (size_t)KP * LDF + CHUNK + 1;
  static constexpr size_t BYTES = HALVES * sizeof(bf16) + FLOATS * sizeof(float) + CHUNK * 4;
};
static_assert(CHUNK == TILE, "the scores and the output share f_s");

// KP: q' and k' rows padded with zeros to a multiple of 16 (the MMA's depth). TO: out's type.
// q, k: (B, T, ., wq) bf16; v: (B, T, ., wv) bf16; out: (B, T, ., wv); prefix, final: f32 states
template <int KP, typename TO>
__global__ void __launch_bounds__(THREADS) linear_scan_kernel(const scan_launch L) {
  typedef scan_smem<KP> SM;
  constexpr int LDQ = SM::LDQ, LDT = SM::LDT, LDF = SM::LDF;
  const scan_pass &p = L.p;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16 *q_s = (bf16 *)smem;                     // (CHUNK, KP) q', then Lambda q' for the inter term
  bf16 *k_s = q_s + CHUNK * LDQ;                // (CHUNK, KP) k', then Lambda' k' for the update
  bf16 *v_s = k_s + CHUNK * LDQ;                // (CHUNK, TILE) v'
  bf16 *a_s = v_s + CHUNK * LDT;                // (CHUNK, CHUNK) masked, decayed scores
  bf16 *sb_s = a_s + CHUNK * LDT;               // (KP, TILE) the state, rounded for the MMA
  float *f_s = (float *)(sb_s + KP * LDT);      // (CHUNK, TILE) scores, then the output
  float *s_s = f_s + CHUNK * LDF;               // (KP, TILE) the state
  float *pw = s_s + KP * LDF;                   // (CHUNK + 1) lambda^m
  int32_t *doc_s = (int32_t *)(pw + CHUNK + 1); // (CHUNK) documents of the chunk's tokens

  const int tid = threadIdx.x, warp = tid / 32;
  const int e0 = blockIdx.x * TILE, h = blockIdx.y * L.head_step + L.head_offset;
  const int64_t b = blockIdx.z / L.segs;
  const int seg = (int)(blockIdx.z % L.segs);
  const int64_t p_begin = seg * L.seg_len, p_end = min(p.t, p_begin + L.seg_len);
  const bool has_out = p.out != nullptr, has_k = p.k.data != nullptr;
  const head_rows<const bf16> q = rows_of(p, p.q.data, p.q.by_kv_head, b, h, p.wq);
  const head_rows<const bf16> k = rows_of(p, p.k.data, p.k.by_kv_head, b, h, p.wq);
  const head_rows<const bf16> v = rows_of(p, p.v.data, p.v.by_kv_head, b, h, p.wv);
  const head_rows<TO> out = rows_of(p, (TO *)p.out, p.out_by_kv_head, b, h, p.wv);
  const int v_width = p.wv - e0; // columns of this tile that exist
  const float log_decay = p.log_decay ? p.log_decay[h] : 0.0f;
  for (int m = tid; m <= CHUNK; m += THREADS) pw[m] = expf(log_decay * (float)m);
  const int32_t *doc = p.doc ? p.doc + b * p.t : nullptr;
  int32_t state_doc = 0; // the document of the state before the chunk
  if (doc)
    state_doc = p_begin > 0   ? doc[token_of(p, p_begin - 1)]
                : p.start_doc ? p.start_doc[b]
                              : doc[token_of(p, 0)];
  const float *prefix =
      L.prefix ? L.prefix + (b * p.hq + h) * L.prefix_head + seg * L.prefix_seg : nullptr;
  for (int i = tid; i < KP * TILE; i += THREADS) {
    const int r = i / TILE, c = i % TILE;
    s_s[r * LDF + c] = prefix && r < p.wq && c < v_width
                           ? prefix[r * L.prefix_row + (e0 + c) * L.prefix_col]
                           : 0.0f;
  }

  for (int64_t p0 = p_begin; p0 < p_end; p0 += CHUNK) {
    const int n = (int)min((int64_t)CHUNK, p_end - p0);
    // Rows past the chunk's end and columns past the widths are zeros: they add nothing.
    for (int i = tid; i < CHUNK * (KP / 8); i += THREADS) {
      const int r = i / (KP / 8), y = i % (KP / 8) * 8;
      const int64_t tok = token_of(p, p0 + min(r, n - 1));
      load8_padded(q_s + r * LDQ + y, has_out && r < n ? q.row(tok) : nullptr, y, p.wq, L.vec_q);
      load8_padded(k_s + r * LDQ + y, has_k && r < n ? k.row(tok) : nullptr, y, p.wq, L.vec_q);
    }
    if (has_k)
      for (int i = tid; i < CHUNK * (TILE / 8); i += THREADS) {
        const int r = i / (TILE / 8), c = i % (TILE / 8) * 8;
        const bf16 *row = r < n ? v.row(token_of(p, p0 + r)) + e0 : nullptr;
        load8_padded(v_s + r * LDT + c, row, c, v_width, L.vec_v);
      }
    for (int r = tid; r < CHUNK; r += THREADS)
      doc_s[r] = doc ? doc[token_of(p, p0 + min(r, n - 1))] : 0;
    __syncthreads();
    const int32_t last_doc = doc_s[n - 1];

    // The state rounded for the inter term; the scores Q K^T.
    if (has_out) {
      for (int i = tid; i < KP * TILE; i += THREADS) {
        const int r = i / TILE, c = i % TILE;
        sb_s[r * LDT + c] = __float2bfloat16(s_s[r * LDF + c]);
      }
      if (has_k)
        for (int tile = warp; tile < (CHUNK / 16) * (CHUNK / 16); tile += WARPS) {
          const int i0 = tile / (CHUNK / 16) * 16, j0 = tile % (CHUNK / 16) * 16;
          acc_frag acc[1];
          wmma::fill_fragment(acc[0], 0.0f);
          // K^T is k_s read column-major: column j of K^T is row j of k_s.
          mma_strip<wmma::row_major, wmma::col_major>(acc, q_s + i0 * LDQ, LDQ, k_s + j0 * LDQ, LDQ,
                                                      KP);
          wmma::store_matrix_sync(f_s + i0 * LDF + j0, acc[0], LDF, wmma::mem_row_major);
        }
    }
    __syncthreads();

    // The masks and decays (Algorithm 1, lines 8-10 with documents): scores lambda^(i-j) for
    // j <= i in the same document; the inter term's rows lambda^(i+offset) where the token is in
    // the state's document; the update's rows lambda^(n-1-j) for the chunk's last document.
    if (has_out && has_k)
      for (int i = tid; i < CHUNK * CHUNK; i += THREADS) {
        const int r = i / CHUNK, c = i % CHUNK;
        const bool keep = c <= r && r < n && doc_s[r] == doc_s[c];
        a_s[r * LDT + c] = __float2bfloat16(keep ? pw[r - c] * f_s[r * LDF + c] : 0.0f);
      }
    if (has_out)
      for (int i = tid; i < CHUNK * KP; i += THREADS) {
        const int r = i / KP, y = i % KP;
        const float w = r < n && doc_s[r] == state_doc ? pw[r + p.offset] : 0.0f;
        q_s[r * LDQ + y] = __float2bfloat16(w * __bfloat162float(q_s[r * LDQ + y]));
      }
    if (has_k)
      for (int i = tid; i < CHUNK * KP; i += THREADS) {
        const int j = i / KP, y = i % KP;
        const float w = j < n && doc_s[j] == last_doc ? pw[n - 1 - j] : 0.0f;
        k_s[j * LDQ + y] = __float2bfloat16(w * __bfloat162float(k_s[j * LDQ + y]));
      }
    // The old state survives only if the chunk ends in its document (documents are contiguous).
    const float carry = last_doc == state_doc ? pw[n] : 0.0f;
    __syncthreads();

    // out = A V + (Lambda Q) S, and S = carry S + (Lambda' K)^T V: disjoint outputs.
    if (has_out)
      for (int tile = warp; tile < (CHUNK / 16) * (TILE / 16); tile += WARPS) {
        const int i0 = tile / (TILE / 16) * 16, c0 = tile % (TILE / 16) * 16;
        acc_frag acc[1];
        wmma::fill_fragment(acc[0], 0.0f);
        if (has_k)
          mma_strip<wmma::row_major, wmma::row_major>(acc, a_s + i0 * LDT, LDT, v_s + c0, LDT,
                                                      CHUNK);
        mma_strip<wmma::row_major, wmma::row_major>(acc, q_s + i0 * LDQ, LDQ, sb_s + c0, LDT, KP);
        wmma::store_matrix_sync(f_s + i0 * LDF + c0, acc[0], LDF, wmma::mem_row_major);
      }
    for (int tile = warp; tile < (KP / 16) * (TILE / 16); tile += WARPS) {
      const int r0 = tile / (TILE / 16) * 16, c0 = tile % (TILE / 16) * 16;
      acc_frag acc[1];
      wmma::load_matrix_sync(acc[0], s_s + r0 * LDF + c0, LDF, wmma::mem_row_major);
      for (int x = 0; x < acc[0].num_elements; x++) acc[0].x[x] *= carry;
      if (has_k) // (Lambda' K)^T is k_s read column-major: its row y is column y of k_s
        mma_strip<wmma::col_major, wmma::row_major>(acc, k_s + r0, LDQ, v_s + c0, LDT, CHUNK);
      wmma::store_matrix_sync(s_s + r0 * LDF + c0, acc[0], LDF, wmma::mem_row_major);
    }
    state_doc = last_doc;
    __syncthreads();

    if (has_out)
      for (int i = tid; i < CHUNK * (TILE / 8); i += THREADS) {
        const int r = i / (TILE / 8), c = i % (TILE / 8) * 8;
        if (r >= n || c >= v_width) continue;
        TO *dst = out.row(token_of(p, p0 + r)) + e0 + c;
        const float *src = f_s + r * LDF + c;
        if (L.vec_v) { // the tile's columns come in whole vectors
          float x[8];
          if (p.accumulate) load8(dst, x);
#pragma unroll
          for (int j = 0; j < 8; j++) x[j] = src[j] + (p.accumulate ? x[j] : 0.0f);
          store8(dst, x);
          continue;
        }
        for (int j = 0; j < 8 && c + j < v_width; j++)
          dst[j] = from_float<TO>(src[j] + (p.accumulate ? to_float(dst[j]) : 0.0f));
      }
  }

  if (L.final_state) {
    float *dst = L.final_state + (b * p.hq + h) * L.final_head + seg * L.final_seg;
    for (int i = tid; i < KP * TILE; i += THREADS) {
      const int r = i / TILE, c = i % TILE;
      if (r < p.wq && c < v_width) dst[(int64_t)r * p.wv + e0 + c] = s_s[r * LDF + c];
    }
  }
}

// Each segment's starting state from the segments' own states, one state element per thread:
// running = S0; for each segment s, states[s] (its own state M_s) becomes running, and running =
// [s ends in running's document] lambda^(length of s) running + M_s. The final running state is
// the pass's. states: (B, hq, segs, wq, wv) f32; final: (B, hq, wq, wv) f32 or NULL
__global__ void segment_scan_kernel(const scan_launch L, float *states) {
  const scan_pass &p = L.p;
  const int64_t per = (int64_t)p.wq * p.wv, i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= per) return;
  const int r = (int)(i / p.wv), c = (int)(i % p.wv);
  const int h = blockIdx.y * L.head_step + L.head_offset;
  const int64_t b = blockIdx.z, head = b * p.hq + h;
  float running =
      L.prefix ? L.prefix[head * L.prefix_head + r * L.prefix_row + c * L.prefix_col] : 0.0f;
  const float log_decay = p.log_decay ? p.log_decay[h] : 0.0f;
  const int32_t *doc = p.doc ? p.doc + b * p.t : nullptr;
  int32_t state_doc = doc ? (p.start_doc ? p.start_doc[b] : doc[token_of(p, 0)]) : 0;
  float *slot = states + head * L.segs * per + i;
  for (int s = 0; s < L.segs; s++) {
    const int64_t begin = s * L.seg_len, end = min(p.t, begin + L.seg_len);
    const int32_t last_doc = doc ? doc[token_of(p, end - 1)] : 0;
    const float own = slot[s * per];
    slot[s * per] = running;
    const float carry = last_doc == state_doc ? expf(log_decay * (float)(end - begin)) : 0.0f;
    running = carry * running + own;
    state_doc = last_doc;
  }
  if (L.final_state) L.final_state[head * per + i] = running;
}

// The kernel for q' rows of width wq: the narrowest padding that holds them.
template <typename TO>
static int launch_kernel(lt_cuda_state *st, const scan_launch &L, dim3 grid) {
  const int wq = L.p.wq;
  const int kp = wq <= 64 ? 64 : wq <= 80 ? 80 : wq <= 128 ? 128 : 144;
  const size_t smem = kp == 64    ? scan_smem<64>::BYTES
                      : kp == 80  ? scan_smem<80>::BYTES
                      : kp == 128 ? scan_smem<128>::BYTES
                                  : scan_smem<144>::BYTES;
  auto go = [&](auto kernel) -> int {
    CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
             "linear attention scan: %zu bytes of shared memory", smem);
    kernel<<<grid, THREADS, smem, st->stream>>>(L);
    return LT_OK;
  };
  switch (kp) {
  case 64:
    return go(linear_scan_kernel<64, TO>);
  case 80:
    return go(linear_scan_kernel<80, TO>);
  case 128:
    return go(linear_scan_kernel<128, TO>);
  default:
    return go(linear_scan_kernel<144, TO>);
  }
}

static int launch(lt_cuda_state *st, const scan_launch &L, int heads) {
  const dim3 grid((unsigned)((L.p.wv + TILE - 1) / TILE), (unsigned)heads,
                  (unsigned)(L.p.b * L.segs));
  if (L.p.out && L.p.out_dtype == LT_F32) return launch_kernel<float>(st, L, grid);
  return launch_kernel<bf16>(st, L, grid);
}

// Segments per (batch row, head): enough blocks for BLOCKS_PER_SM per SM, each segment at least
// MIN_SEGMENT_CHUNKS chunks, and their states within the workspace.
static int choose_segments(const lt_cuda_state *st, const scan_pass *p, int heads,
                           int64_t *seg_len) {
  const int64_t chunks = (p->t + CHUNK - 1) / CHUNK, tiles = (p->wv + TILE - 1) / TILE;
  const int64_t blocks = p->b * heads * tiles, want = (BLOCKS_PER_SM * st->n_sms) / blocks;
  const int64_t state_bytes = p->b * p->hq * (int64_t)p->wq * p->wv * (int64_t)sizeof(float);
  int64_t segs = want < chunks / MIN_SEGMENT_CHUNKS ? want : chunks / MIN_SEGMENT_CHUNKS;
  if (segs > (int64_t)st->scratch_bytes / state_bytes)
    segs = (int64_t)st->scratch_bytes / state_bytes;
  if (segs > 65535 / p->b) segs = 65535 / p->b;
  if (segs <= 1) {
    *seg_len = p->t;
    return 1;
  }
  *seg_len = (chunks + segs - 1) / segs * CHUNK;
  return (int)((p->t + *seg_len - 1) / *seg_len);
}

int lt_cuda_linear_scan(lt_cuda_state *st, const scan_pass *pass, const char *op, lt_tensor a,
                        lt_tensor b) {
  if (pass->wq > LT_LINEAR_SCAN_MAX_WIDTH || pass->wq < 1 || pass->wv < 1)
    return lt_cuda_unsupported(op, "head widths up to 144 (with the denominator's column)", a, b);
  if (pass->t == 0 || pass->b == 0) return LT_OK;
  const int group = pass->hq / pass->hkv;
  const int launches = pass->serial_groups ? group : 1;
  const int heads = pass->serial_groups ? pass->hkv : pass->hq;
  const int64_t per = (int64_t)pass->wq * pass->wv;
  int64_t seg_len;
  const int segs = choose_segments(st, pass, heads, &seg_len);
  float *states = nullptr;
  if (segs > 1) {
    void *scratch;
    LT_TRY(lt_cuda_scratch(st, (size_t)(pass->b * pass->hq * segs * per) * sizeof(float), op,
                           &scratch));
    states = (float *)scratch;
  }
  for (int g = 0; g < launches; g++) {
    scan_launch L = {.p = *pass,
                     .head_step = pass->serial_groups ? group : 1,
                     .head_offset = pass->serial_groups ? g : 0,
                     .segs = segs,
                     .seg_len = seg_len,
                     .prefix = pass->prefix,
                     .prefix_head = pass->prefix_head,
                     .prefix_seg = 0,
                     .prefix_row = pass->prefix_row,
                     .prefix_col = pass->prefix_col,
                     .final_state = pass->final_state,
                     .final_head = per,
                     .final_seg = 0,
                     .vec_q =
                         pass->wq % 8 == 0 && aligned16(pass->q.data) && aligned16(pass->k.data),
                     .vec_v = pass->wv % 8 == 0 && aligned16(pass->v.data) && aligned16(pass->out)};
    if (segs == 1) {
      LT_TRY(launch(st, L, heads));
      continue;
    }
    scan_launch own = L; // each segment's own state, from zero, into `states`
    own.p.out = nullptr;
    own.prefix = nullptr;
    own.final_state = states, own.final_head = segs * per, own.final_seg = per;
    LT_TRY(launch(st, own, heads));
    segment_scan_kernel<<<dim3(blocks_for(per, SCAN_THREADS), heads, (unsigned)pass->b),
                          SCAN_THREADS, 0, st->stream>>>(L, states);
    if (!pass->out) continue;
    scan_launch from = L; // the segments from their starting states
    from.prefix = states, from.prefix_head = segs * per, from.prefix_seg = per;
    from.prefix_row = pass->wv, from.prefix_col = 1;
    from.final_state = nullptr;
    LT_TRY(launch(st, from, heads));
  }
  return lt_cuda_launched(st, op, a, b);
}
