// Flash attention backward on the tensor cores (FlashAttention-2, Dao 2023, Algorithm 2): a block
// owns BN keys of one key/value head (16 per warp) and walks every query tile that sees them, of
// every query head in the group, recomputing the probabilities from the saved lse:
//   S^T = K Q^T, P^T = exp(scale S^T - lse), dV += P^T dO, dP^T = V dO^T,
//   dS^T = P^T (dP^T - delta), dK += scale dS^T Q, dQ += scale dS K.
// Computing S^T rather than S keeps a warp's keys in its fragment rows, so P^T and dS^T feed the
// dV and dK products straight from registers; dS goes through shared memory for dQ, which blocks
// of different key tiles add into an f32 buffer with atomics (so dQ's rounding depends on their
// order: README, "Determinism"). Matches lt_cpu_attn_bwd.
#include <limits.h>

#include "kernels/cuda/attention_common.cuh"

enum { THREADS = 128, WARPS = 4, BN = 64, BM = 64, LIST_MAX = 1024 };

template <int D> constexpr size_t bwd_smem_bytes() {
  return 2 * (size_t)tile_bytes<BN, D>() + 4 * (size_t)tile_bytes<BM, D>() +
         (size_t)tile_bytes<BN, BM>() + 2 * 4 * (size_t)BM * 4 + LIST_MAX * 4;
}

template <typename T> __device__ __forceinline__ void add_pair(T *dst, float x, float y);
template <> __device__ __forceinline__ void add_pair<float>(float *dst, float x, float y) {
  dst[0] += x, dst[1] += y;
}
template <> __device__ __forceinline__ void add_pair<bf16>(bf16 *dst, float x, float y) {
  __nv_bfloat162 *d2 = reinterpret_cast<__nv_bfloat162 *>(dst);
  const float2 old = __bfloat1622float2(*d2);
  *d2 = __floats2bfloat162_rn(old.x + x, old.y + y);
}

// q, dout: (B, Tq, Hq, D) bf16; k, v: (B, Tk, Hkv, D) bf16; lse, delta: (B, Hq, Tq) f32;
// dq: (B, Tq, Hq, D) f32 (+=, atomic); dk, dv: (B, Tk, Hkv, D) TKV (+=); grid (key tiles, Hkv, B)
template <int D, typename TKV>
__global__ void __launch_bounds__(THREADS, 1) attn_bwd_kernel(const attn_params p) {
  constexpr int NT = BM / 8, DT = D / 8, KS = D / 16;
  constexpr int KV_BYTES = tile_bytes<BN, D>(), QT_BYTES = tile_bytes<BM, D>();
  extern __shared__ __align__(128) unsigned char smem[];
  unsigned char *k_s = smem, *v_s = k_s + KV_BYTES;      // (BN, D) padded
  unsigned char *q_s = v_s + KV_BYTES;                   // 2 x (BM, D) padded
  unsigned char *do_s = q_s + 2 * QT_BYTES;              // 2 x (BM, D) padded
  unsigned char *ds_s = do_s + 2 * QT_BYTES;             // (BN, BM) padded: dS^T in bf16
  float *lse_s = (float *)(ds_s + tile_bytes<BN, BM>()); // 2 x BM, times log2 e
  float *delta_s = lse_s + 2 * BM;                       // 2 x BM
  int32_t *qpos_s = (int32_t *)(delta_s + 2 * BM);       // 2 x BM
  int32_t *qdoc_s = qpos_s + 2 * BM;                     // 2 x BM
  int *list = qdoc_s + 2 * BM;                           // LIST_MAX
  __shared__ int warp_counts[WARPS];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
  const int kt = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z, group = p.hq / p.hkv;
  const int64_t j0 = (int64_t)kt * BN;
  const bool docs = p.q_doc != nullptr;
  const int64_t kv_head = ((int64_t)b * p.tk * p.hkv + kvh) * D;
  load_tile<BN, D, THREADS>(k_s, p.k + kv_head, (int64_t)p.hkv * D, j0, p.tk);
  load_tile<BN, D, THREADS>(v_s, p.v + kv_head, (int64_t)p.hkv * D, j0, p.tk);
  cp_async_commit();

  // This thread's two keys: warp * 16 + g + 8 hf.
  int32_t kpos[2], kdoc[2];
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    const int64_t j = j0 + warp * 16 + hf * 8 + g;
    const bool valid = j < p.tk;
    kpos[hf] = valid ? p.k_pos[(int64_t)b * p.tk + j] : INT_MAX;
    kdoc[hf] = valid && docs ? p.k_doc[(int64_t)b * p.tk + j] : 0;
  }

  float dk_acc[DT][4], dv_acc[DT][4];
#pragma unroll
  for (int dt = 0; dt < DT; dt++)
#pragma unroll
    for (int e = 0; e < 4; e++) dk_acc[dt][e] = 0.0f, dv_acc[dt][e] = 0.0f;

  // Query tile `entry` of head h into buffer buf: Q, dO, lse (times log2 e later), delta,
  // positions.
  auto issue_tile = [&](int entry, int h, int buf) {
    const int64_t i0 = (int64_t)(entry & 0x7fffffff) * BM, q_stride = (int64_t)p.hq * D;
    const int64_t head = ((int64_t)b * p.tq * p.hq + h) * D;
    load_tile<BM, D, THREADS>(q_s + buf * QT_BYTES, p.q + head, q_stride, i0, p.tq);
    load_tile<BM, D, THREADS>(do_s + buf * QT_BYTES, p.dout + head, q_stride, i0, p.tq);
    for (int r = threadIdx.x; r < BM; r += THREADS) {
      const bool valid = i0 + r < p.tq;
      const int64_t stat = ((int64_t)b * p.hq + h) * p.tq + (valid ? i0 + r : 0);
      const int64_t tok = (int64_t)b * p.tq + (valid ? i0 + r : 0);
      cp_async4(lse_s + buf * BM + r, p.lse + stat, valid);
      cp_async4(delta_s + buf * BM + r, p.delta + stat, valid);
      cp_async4(qpos_s + buf * BM + r, p.q_pos + tok, valid);
      if (docs) cp_async4(qdoc_s + buf * BM + r, p.q_doc + tok, valid);
    }
    cp_async_commit();
  };

  const uint32_t k_base = smem_u32(k_s), v_base = smem_u32(v_s), ds_base = smem_u32(ds_s);
  for (int first = 0; first < p.n_q_tiles; first += LIST_MAX) {
    const int count = p.n_q_tiles - first < LIST_MAX ? p.n_q_tiles - first : LIST_MAX;
    const int n = build_tile_list<THREADS>(list, warp_counts, first, count, [&](int t) {
      const int4 q_info = p.q_tiles[(int64_t)b * p.n_q_tiles + t];
      const int4 k_info = p.k_tiles[(int64_t)b * p.n_k_tiles + kt];
      const bool ragged = (int64_t)(t + 1) * BM > p.tq || j0 + BN > p.tk;
      return classify_tiles(q_info, k_info, p.causal, docs, ragged);
    });
    const int steps = n * group; // every query head of the group over the same tiles
    if (steps > 0) issue_tile(list[0], kvh * group, 0);
    for (int it = 0; it < steps; it++) {
      const int entry = list[it % n], h = kvh * group + it / n, buf = it & 1;
      const int64_t i0 = (int64_t)(entry & 0x7fffffff) * BM;
      if (it + 1 < steps) {
        issue_tile(list[(it + 1) % n], kvh * group + (it + 1) / n, buf ^ 1);
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      const uint32_t q_base = smem_u32(q_s + buf * QT_BYTES);
      const uint32_t do_base = smem_u32(do_s + buf * QT_BYTES);

      // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys and the tile's BM queries.
      float st[NT][4], dpt[NT][4];
#pragma unroll
      for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) st[nt][e] = 0.0f, dpt[nt][e] = 0.0f;
#pragma unroll
      for (int ks = 0; ks < KS; ks++) {
        uint32_t ka[4], va[4];
        ldmatrix_x4(ka, tile_addr<D>(k_base, warp * 16 + (lane & 15), ks * 2 + (lane >> 4)));
        ldmatrix_x4(va, tile_addr<D>(v_base, warp * 16 + (lane & 15), ks * 2 + (lane >> 4)));
#pragma unroll
        for (int np = 0; np < NT / 2; np++) {
          const int row = np * 16 + (lane & 7) + ((lane >> 4) << 3),
                    chunk = ks * 2 + ((lane >> 3) & 1);
          uint32_t qb[4], ob[4];
          ldmatrix_x4(qb, tile_addr<D>(q_base, row, chunk));
          ldmatrix_x4(ob, tile_addr<D>(do_base, row, chunk));
          mma_bf16(st[2 * np], ka, qb[0], qb[1]);
          mma_bf16(st[2 * np + 1], ka, qb[2], qb[3]);
          mma_bf16(dpt[2 * np], va, ob[0], ob[1]);
          mma_bf16(dpt[2 * np + 1], va, ob[2], ob[3]);
        }
      }

      // P^T from the saved lse, then dS^T = P^T (dP^T - delta).
#pragma unroll
      for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int col = nt * 8 + c * 2 + (e & 1), hf = e >> 1;
          const float lse = lse_s[buf * BM + col];
          bool visible = lse != -INFINITY; // a query that sees no key has no gradient
          if (entry < 0) {                 // TILE_PARTIAL
            const int32_t qd = docs ? qdoc_s[buf * BM + col] : 0;
            visible = visible && i0 + col < p.tq && j0 + warp * 16 + hf * 8 + g < p.tk &&
                      pair_visible(qpos_s[buf * BM + col], qd, kpos[hf], kdoc[hf], p.causal, docs);
          }
          const float pv = visible ? exp2f(fmaf(st[nt][e], p.scale_log2, -lse * LOG2E)) : 0.0f;
          st[nt][e] = pv;
          dpt[nt][e] = pv * (dpt[nt][e] - delta_s[buf * BM + col]);
        }

        // dV += P^T dO and dK += dS^T Q: A from registers, B = dO and Q transposed from shared.
#pragma unroll
      for (int kk = 0; kk < BM / 16; kk++) {
        uint32_t pa[4], sa[4];
        c_to_a(pa, st[2 * kk], st[2 * kk + 1]);
        c_to_a(sa, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
        for (int dp = 0; dp < DT / 2; dp++) {
          uint32_t ob[4], qb[4];
          ldmatrix_x4_trans(ob, tile_addr<D>(do_base, kk * 16 + (lane & 15), dp * 2 + (lane >> 4)));
          ldmatrix_x4_trans(qb, tile_addr<D>(q_base, kk * 16 + (lane & 15), dp * 2 + (lane >> 4)));
          mma_bf16(dv_acc[2 * dp], pa, ob[0], ob[1]);
          mma_bf16(dv_acc[2 * dp + 1], pa, ob[2], ob[3]);
          mma_bf16(dk_acc[2 * dp], sa, qb[0], qb[1]);
          mma_bf16(dk_acc[2 * dp + 1], sa, qb[2], qb[3]);
        }
      }

      // dS^T to shared memory, for dQ = dS K.
#pragma unroll
      for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
          const uint32_t addr = tile_addr<BM>(ds_base, warp * 16 + hf * 8 + g, nt) + c * 4;
          asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr),
                       "r"(pack_bf16(dpt[nt][2 * hf], dpt[nt][2 * hf + 1])));
        }
      __syncthreads();

      // dQ rows warp * 16 .. + 15 of the tile: A = dS (dS^T transposed), B = K transposed.
      float dq_acc[DT][4];
#pragma unroll
      for (int dt = 0; dt < DT; dt++)
#pragma unroll
        for (int e = 0; e < 4; e++) dq_acc[dt][e] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < BN / 16; kk++) {
        uint32_t da[4];
        ldmatrix_x4_trans(da, tile_addr<BM>(ds_base, kk * 16 + (lane & 7) + ((lane >> 4) << 3),
                                            warp * 2 + ((lane >> 3) & 1)));
#pragma unroll
        for (int dp = 0; dp < DT / 2; dp++) {
          uint32_t kb[4];
          ldmatrix_x4_trans(kb, tile_addr<D>(k_base, kk * 16 + (lane & 15), dp * 2 + (lane >> 4)));
          mma_bf16(dq_acc[2 * dp], da, kb[0], kb[1]);
          mma_bf16(dq_acc[2 * dp + 1], da, kb[2], kb[3]);
        }
      }
      const float scale = p.scale_log2 / LOG2E;
#pragma unroll
      for (int hf = 0; hf < 2; hf++) {
        const int64_t i = i0 + warp * 16 + hf * 8 + g;
        if (i >= p.tq) continue;
        float *dq_row = p.dq + (((int64_t)b * p.tq + i) * p.hq + h) * D;
#pragma unroll
        for (int dt = 0; dt < DT; dt++)
          atomicAdd(reinterpret_cast<float2 *>(dq_row + dt * 8 + c * 2),
                    make_float2(dq_acc[dt][2 * hf] * scale, dq_acc[dt][2 * hf + 1] * scale));
      }
      __syncthreads(); // buffers and dS^T are refilled next
    }
  }

  const float scale = p.scale_log2 / LOG2E;
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    const int64_t j = j0 + warp * 16 + hf * 8 + g;
    if (j >= p.tk) continue;
    TKV *dk_row = (TKV *)p.dk + (((int64_t)b * p.tk + j) * p.hkv + kvh) * D;
    TKV *dv_row = (TKV *)p.dv + (((int64_t)b * p.tk + j) * p.hkv + kvh) * D;
#pragma unroll
    for (int dt = 0; dt < DT; dt++) {
      add_pair(dk_row + dt * 8 + c * 2, dk_acc[dt][2 * hf] * scale, dk_acc[dt][2 * hf + 1] * scale);
      add_pair(dv_row + dt * 8 + c * 2, dv_acc[dt][2 * hf], dv_acc[dt][2 * hf + 1]);
    }
  }
}

template <int D, typename TKV>
static int launch_bwd(lt_cuda_state *st, const attn_params &p, int64_t b) {
  constexpr size_t smem = bwd_smem_bytes<D>();
  CUDA_TRY(cudaFuncSetAttribute(attn_bwd_kernel<D, TKV>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
           "attn_bwd: raising shared memory to %zu bytes", smem);
  dim3 grid((unsigned)p.n_k_tiles, (unsigned)p.hkv, (unsigned)b);
  attn_bwd_kernel<D, TKV><<<grid, THREADS, smem, st->stream>>>(p);
  return LT_OK;
}

int lt_cuda_attn_bwd(lt_ctx *ctx, lt_tensor dq, lt_tensor dk, lt_tensor dv, lt_tensor dout,
                     lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor lse, lt_tensor delta,
                     const lt_attn_spec *spec) {
  lt_cuda_state *st = cuda_state(ctx);
  if (dq.dtype != LT_F32 || dout.dtype != LT_BF16 || dk.dtype != dv.dtype ||
      (dk.dtype != LT_F32 && dk.dtype != LT_BF16))
    return lt_cuda_unsupported("attn_bwd", "dq f32, dout bf16, dk and dv both bf16 or f32", dq, dk);
  attn_params p;
  LT_TRY(lt_cuda_attn_setup(ctx, &p, q, k, v, spec, BM, BN, "attn_bwd"));
  p.dout = (const bf16 *)dout.data, p.lse = (float *)lse.data, p.delta = (float *)delta.data;
  p.dq = (float *)dq.data, p.dk = dk.data, p.dv = dv.data;
  p.dkv_f32 = dk.dtype == LT_F32;
  if (p.tq == 0 || p.tk == 0) return LT_OK;
  const int64_t b = q.shape[0];
  const int d = (int)q.shape[3];
  int rc;
  if (d == 64)
    rc = p.dkv_f32 ? launch_bwd<64, float>(st, p, b) : launch_bwd<64, bf16>(st, p, b);
  else
    rc = p.dkv_f32 ? launch_bwd<128, float>(st, p, b) : launch_bwd<128, bf16>(st, p, b);
  LT_TRY(rc);
  return lt_cuda_launched(st, "attn_bwd", q, dk);
}
