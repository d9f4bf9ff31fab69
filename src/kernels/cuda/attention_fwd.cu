// Flash attention forward on the tensor cores (FlashAttention-2, Dao 2023, Algorithm 1): a block
// owns BM query rows of one head (32 per warp, as two m16 tiles) and streams the key/value tiles
// its mask lets through, keeping the running row max and sum in registers. K and V tiles are
// double-buffered with cp.async, so the next tile loads while this one is multiplied.
// Matches lt_cpu_attn_fwd, including (o, lse) for partial key ranges and lse = -inf, o = 0 for a
// query that sees no key.
#include <limits.h>
#include <string.h>

#include "kernels/cuda/attention_common.cuh"

enum { THREADS = 256, WARPS = 8, WARP_ROWS = 16, M_TILES = 1, LIST_MAX = 1024 };

template <int D> struct fwd_tiles;
template <> struct fwd_tiles<64> { static constexpr int BM = 128, BN = 128; };
template <> struct fwd_tiles<128> { static constexpr int BM = 128, BN = 64; };

template <int D> constexpr size_t fwd_smem_bytes() {
  constexpr int BM = fwd_tiles<D>::BM, BN = fwd_tiles<D>::BN;
  return (size_t)tile_bytes<BM, D>() + 4 * (size_t)tile_bytes<BN, D>() + 4 * (size_t)BN * 4 +
         2 * (size_t)BM * 4 + LIST_MAX * 4;
}

// q, o: (B, Tq, Hq, D) bf16; k, v: (B, Tk, Hkv, D) bf16; lse: (B, Hq, Tq) f32;
// grid (query tiles, Hq, B)
template <int D>
__global__ void __launch_bounds__(THREADS, 1) attn_fwd_kernel(const attn_params p) {
  constexpr int BM = fwd_tiles<D>::BM, BN = fwd_tiles<D>::BN;
  constexpr int NT = BN / 8, DT = D / 8, KS = D / 16;
  static_assert(BM == WARPS * WARP_ROWS, "a warp owns WARP_ROWS query rows");
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int KV_BYTES = tile_bytes<BN, D>();
  unsigned char *q_s = smem;                         // (BM, D) padded
  unsigned char *k_s = q_s + tile_bytes<BM, D>();    // 2 x (BN, D) padded
  unsigned char *v_s = k_s + 2 * KV_BYTES;           // 2 x (BN, D) padded
  int32_t *kpos_s = (int32_t *)(v_s + 2 * KV_BYTES); // 2 x BN
  int32_t *kdoc_s = kpos_s + 2 * BN;                 // 2 x BN
  int32_t *qpos_s = kdoc_s + 2 * BN;                 // BM
  int32_t *qdoc_s = qpos_s + BM;                     // BM
  int *list = qdoc_s + BM;                           // LIST_MAX
  __shared__ int warp_counts[WARPS];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
  const int qt = p.n_q_tiles - 1 - (int)blockIdx.x; // longest causal rows first
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / (p.hq / p.hkv);
  const int64_t i0 = (int64_t)qt * BM;
  const bool docs = p.q_doc != nullptr;

  load_tile<BM, D, THREADS>(q_s, p.q + ((int64_t)b * p.tq * p.hq + h) * D, (int64_t)p.hq * D, i0,
                            p.tq);
  cp_async_commit();
  // Positions and documents of the block's queries, read only where a tile is masked pair by pair.
  for (int r = threadIdx.x; r < BM; r += THREADS) {
    const bool valid = i0 + r < p.tq;
    qpos_s[r] = valid ? p.q_pos[(int64_t)b * p.tq + i0 + r] : INT_MIN;
    qdoc_s[r] = valid && docs ? p.q_doc[(int64_t)b * p.tq + i0 + r] : 0;
  }

  float o_acc[M_TILES][DT][4], row_max[M_TILES][2], row_sum[M_TILES][2];
#pragma unroll
  for (int mt = 0; mt < M_TILES; mt++) {
#pragma unroll
    for (int dt = 0; dt < DT; dt++)
#pragma unroll
      for (int e = 0; e < 4; e++) o_acc[mt][dt][e] = 0.0f;
#pragma unroll
    for (int hf = 0; hf < 2; hf++) row_max[mt][hf] = -INFINITY, row_sum[mt][hf] = 0.0f;
  }

  auto issue_tile = [&](int entry, int buf) {
    const int64_t j0 = (int64_t)(entry & 0x7fffffff) * BN, kv_stride = (int64_t)p.hkv * D;
    const int64_t head = ((int64_t)b * p.tk * p.hkv + kvh) * D;
    load_tile<BN, D, THREADS>(k_s + buf * KV_BYTES, p.k + head, kv_stride, j0, p.tk);
    load_tile<BN, D, THREADS>(v_s + buf * KV_BYTES, p.v + head, kv_stride, j0, p.tk);
    for (int j = threadIdx.x; j < BN; j += THREADS) {
      const bool valid = j0 + j < p.tk;
      const int64_t at = (int64_t)b * p.tk + (valid ? j0 + j : 0);
      cp_async4(kpos_s + buf * BN + j, p.k_pos + at, valid);
      if (docs) cp_async4(kdoc_s + buf * BN + j, p.k_doc + at, valid);
    }
    cp_async_commit();
  };

  const uint32_t q_base = smem_u32(q_s);
  for (int first = 0; first < p.n_k_tiles; first += LIST_MAX) {
    const int count = p.n_k_tiles - first < LIST_MAX ? p.n_k_tiles - first : LIST_MAX;
    const int n = build_tile_list<THREADS>(list, warp_counts, first, count, [&](int t) {
      const int4 q_info = p.q_tiles[(int64_t)b * p.n_q_tiles + qt];
      const int4 k_info = p.k_tiles[(int64_t)b * p.n_k_tiles + t];
      return classify_tiles(q_info, k_info, p.causal, docs, (int64_t)(t + 1) * BN > p.tk);
    });
    if (n > 0) issue_tile(list[0], 0);
    for (int it = 0; it < n; it++) {
      const int entry = list[it], buf = it & 1;
      const int64_t j0 = (int64_t)(entry & 0x7fffffff) * BN;
      if (it + 1 < n) {
        issue_tile(list[it + 1], buf ^ 1);
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      const uint32_t k_base = smem_u32(k_s + buf * KV_BYTES),
                     v_base = smem_u32(v_s + buf * KV_BYTES);

      // S = Q K^T for this warp's 32 rows and the tile's BN keys.
      float s[M_TILES][NT][4];
#pragma unroll
      for (int mt = 0; mt < M_TILES; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
          for (int e = 0; e < 4; e++) s[mt][nt][e] = 0.0f;
#pragma unroll
      for (int ks = 0; ks < KS; ks++) {
        uint32_t a[M_TILES][4];
#pragma unroll
        for (int mt = 0; mt < M_TILES; mt++)
          ldmatrix_x4(a[mt], tile_addr<D>(q_base, warp * WARP_ROWS + mt * 16 + (lane & 15),
                                          ks * 2 + (lane >> 4)));
#pragma unroll
        for (int np = 0; np < NT / 2; np++) {
          uint32_t kb[4];
          ldmatrix_x4(kb, tile_addr<D>(k_base, np * 16 + (lane & 7) + ((lane >> 4) << 3),
                                       ks * 2 + ((lane >> 3) & 1)));
#pragma unroll
          for (int mt = 0; mt < M_TILES; mt++) {
            mma_bf16(s[mt][2 * np], a[mt], kb[0], kb[1]);
            mma_bf16(s[mt][2 * np + 1], a[mt], kb[2], kb[3]);
          }
        }
      }

      if (entry < 0) { // TILE_PARTIAL: the mask pair by pair
#pragma unroll
        for (int mt = 0; mt < M_TILES; mt++)
#pragma unroll
          for (int hf = 0; hf < 2; hf++) {
            const int r = warp * WARP_ROWS + mt * 16 + hf * 8 + g;
            const int32_t qp = qpos_s[r], qd = qdoc_s[r];
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
              for (int e2 = 0; e2 < 2; e2++) {
                const int col = nt * 8 + c * 2 + e2;
                const int32_t kd = docs ? kdoc_s[buf * BN + col] : 0;
                if (j0 + col >= p.tk ||
                    !pair_visible(qp, qd, kpos_s[buf * BN + col], kd, p.causal, docs))
                  s[mt][nt][2 * hf + e2] = -INFINITY;
              }
          }
      }

      // Online softmax in base 2 (scores scaled by scale * log2 e).
#pragma unroll
      for (int mt = 0; mt < M_TILES; mt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
          float mx = -INFINITY;
#pragma unroll
          for (int nt = 0; nt < NT; nt++)
            mx = fmaxf(mx, fmaxf(s[mt][nt][2 * hf], s[mt][nt][2 * hf + 1]));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          const float m_new = fmaxf(row_max[mt][hf], mx * p.scale_log2);
          const float m_use = m_new == -INFINITY ? 0.0f : m_new; // a row that has seen nothing
          const float rescale = exp2f(row_max[mt][hf] - m_use);
          row_max[mt][hf] = m_new;
          float sum = 0.0f;
#pragma unroll
          for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e2 = 0; e2 < 2; e2++) {
              const float pv = exp2f(fmaf(s[mt][nt][2 * hf + e2], p.scale_log2, -m_use));
              s[mt][nt][2 * hf + e2] = pv;
              sum += pv;
            }
          row_sum[mt][hf] = row_sum[mt][hf] * rescale + sum;
#pragma unroll
          for (int dt = 0; dt < DT; dt++) {
            o_acc[mt][dt][2 * hf] *= rescale;
            o_acc[mt][dt][2 * hf + 1] *= rescale;
          }
        }

        // O += P V, P straight from the score registers.
#pragma unroll
      for (int kk = 0; kk < BN / 16; kk++) {
        uint32_t a[M_TILES][4];
#pragma unroll
        for (int mt = 0; mt < M_TILES; mt++) c_to_a(a[mt], s[mt][2 * kk], s[mt][2 * kk + 1]);
#pragma unroll
        for (int dp = 0; dp < DT / 2; dp++) {
          uint32_t vb[4];
          ldmatrix_x4_trans(vb, tile_addr<D>(v_base, kk * 16 + (lane & 15), dp * 2 + (lane >> 4)));
#pragma unroll
          for (int mt = 0; mt < M_TILES; mt++) {
            mma_bf16(o_acc[mt][2 * dp], a[mt], vb[0], vb[1]);
            mma_bf16(o_acc[mt][2 * dp + 1], a[mt], vb[2], vb[3]);
          }
        }
      }
      __syncthreads(); // the next iteration's copy refills this buffer
    }
  }

#pragma unroll
  for (int mt = 0; mt < M_TILES; mt++)
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
      float l = row_sum[mt][hf];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int64_t i = i0 + warp * WARP_ROWS + mt * 16 + hf * 8 + g;
      if (i >= p.tq) continue;
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      bf16 *o_row = p.o + (((int64_t)b * p.tq + i) * p.hq + h) * D;
#pragma unroll
      for (int dt = 0; dt < DT; dt++)
        *reinterpret_cast<uint32_t *>(o_row + dt * 8 + c * 2) =
            pack_bf16(o_acc[mt][dt][2 * hf] * inv, o_acc[mt][dt][2 * hf + 1] * inv);
      if (c == 0)
        p.lse[((int64_t)b * p.hq + h) * p.tq + i] =
            l > 0.0f ? (row_max[mt][hf] + log2f(l)) * LN2 : -INFINITY;
    }
}

// The checks and tile tables shared by the forward and backward launches.
int lt_cuda_attn_setup(lt_ctx *ctx, attn_params *p, lt_tensor q, lt_tensor k, lt_tensor v,
                       const lt_attn_spec *spec, int q_tile, int k_tile, const char *op) {
  lt_cuda_state *st = cuda_state(ctx);
  const int d = (int)q.shape[3];
  if (d != 64 && d != 128)
    return lt_fail(LT_ERR_CONFIG,
                   "%s: CUDA attention supports head dims 64 and 128, not %d: set model.head_dim "
                   "(or model.n_heads so that d_model / n_heads is 64 or 128)",
                   op, d);
  if (q.dtype != LT_BF16 || k.dtype != LT_BF16 || v.dtype != LT_BF16)
    return lt_cuda_unsupported(op, "q, k and v must be bf16", q, k);
  if (spec->q_pos.device != LT_CUDA || spec->k_pos.device != LT_CUDA ||
      spec->q_pos.dtype != LT_I32 || spec->k_pos.dtype != LT_I32)
    return lt_cuda_unsupported(op, "positions must be i32 on the GPU", spec->q_pos, spec->k_pos);
  memset(p, 0, sizeof *p);
  p->q = (const bf16 *)q.data, p->k = (const bf16 *)k.data, p->v = (const bf16 *)v.data;
  p->q_pos = (const int32_t *)spec->q_pos.data, p->k_pos = (const int32_t *)spec->k_pos.data;
  if (spec->q_doc.data) {
    p->q_doc = (const int32_t *)spec->q_doc.data;
    p->k_doc = (const int32_t *)spec->k_doc.data;
  }
  const int64_t b = q.shape[0];
  p->tq = q.shape[1], p->tk = k.shape[1];
  p->hq = (int)q.shape[2], p->hkv = (int)k.shape[2];
  p->n_q_tiles = (int)((p->tq + q_tile - 1) / q_tile);
  p->n_k_tiles = (int)((p->tk + k_tile - 1) / k_tile);
  p->scale_log2 = spec->scale * LOG2E;
  p->causal = spec->causal;
  void *scratch;
  const size_t q_bytes = (size_t)(b * p->n_q_tiles) * sizeof(int4);
  LT_TRY(lt_cuda_scratch(st, q_bytes + (size_t)(b * p->n_k_tiles) * sizeof(int4), op, &scratch));
  int4 *q_tiles = (int4 *)scratch, *k_tiles = q_tiles + b * p->n_q_tiles;
  if (p->tq > 0) lt_cuda_attn_tiles(st, q_tiles, p->q_pos, p->q_doc, b, p->tq, q_tile);
  if (p->tk > 0) lt_cuda_attn_tiles(st, k_tiles, p->k_pos, p->k_doc, b, p->tk, k_tile);
  p->q_tiles = q_tiles, p->k_tiles = k_tiles;
  return LT_OK;
}

template <int D> static int launch_fwd(lt_cuda_state *st, const attn_params &p, int64_t b) {
  constexpr size_t smem = fwd_smem_bytes<D>();
  CUDA_TRY(cudaFuncSetAttribute(attn_fwd_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                (int)smem),
           "attn_fwd: raising shared memory to %zu bytes", smem);
  dim3 grid((unsigned)p.n_q_tiles, (unsigned)p.hq, (unsigned)b);
  attn_fwd_kernel<D><<<grid, THREADS, smem, st->stream>>>(p);
  return LT_OK;
}

int lt_cuda_attn_fwd(lt_ctx *ctx, lt_tensor o, lt_tensor lse, lt_tensor q, lt_tensor k, lt_tensor v,
                     const lt_attn_spec *spec) {
  lt_cuda_state *st = cuda_state(ctx);
  const int d = (int)q.shape[3];
  if (o.dtype != LT_BF16) return lt_cuda_unsupported("attn_fwd", "o must be bf16", o, q);
  const int k_tile = d == 64 ? fwd_tiles<64>::BN : fwd_tiles<128>::BN;
  attn_params p;
  LT_TRY(lt_cuda_attn_setup(ctx, &p, q, k, v, spec, fwd_tiles<128>::BM, k_tile, "attn_fwd"));
  p.o = (bf16 *)o.data, p.lse = (float *)lse.data;
  if (p.tq == 0) return LT_OK;
  LT_TRY(d == 64 ? launch_fwd<64>(st, p, q.shape[0]) : launch_fwd<128>(st, p, q.shape[0]));
  return lt_cuda_launched(st, "attn_fwd", q, k);
}
