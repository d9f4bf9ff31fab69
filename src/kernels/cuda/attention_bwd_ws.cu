// Dense flash attention backward on Hopper at d = 64, warp-specialized and persistent
// (LT_ATTN_BWD v4): v2's step (attention_bwd.cu: 128 keys by 128 queries, two consumer
// warpgroups of 64 keys, S^T issued a step ahead, dQ staged for TMA's bulk reductions), with the
// work around the multiplies taken off the consumers, after FlashAttention-3's backward (Shah et
// al. 2024, arXiv:2407.08608, section 3 and its code's producer and dQ-writer warps):
// - one block per SM takes work items (BN = 128 keys of one key/value head of one batch row,
//   walked over every query tile that sees them, of every query head of its group) from a
//   grid-wide counter, longest first, as the forward's persistent kernel does;
// - a producer warp copies the item's K and V, and for each step its Q and dO tiles by TMA into a
//   ring of two buffers, with the rows' statistics (lse, already times log2 e, and delta; the
//   positions where the tile is partial), and writes each step's tile and head beside its
//   buffers (LIST_END past the item's last). It classifies 32 query tiles a ballot, so the
//   consumers never build a tile list, and waits suspended;
// - one thread of a second warp adds each step's dQ tile, staged by the consumers, into dQ by
//   bulk reductions, and says when the stage may be written again: the consumers never wait for
//   a reduction to have read it;
// - the two consumer warpgroups meet once a step, on a named barrier once both halves of dS^T are
//   stored (dQ's product reads both). dS^T has two buffers, so that a step's stores never
//   overwrite what the other warpgroup's last dQ product may still read.
// H100, the 135M model's B=2 T=16384 H=12 in Nsight Compute: v2's warps ran 970 instructions a
// step, 82 of them on tile lists and the statistics' copies, and waited on each step's
// block-wide barrier and on the last reduction's read of the stage; v4's consumers run 870, and
// the tensor cores are busy 49% of the time against v2's 42% (fwd + bwd 6.45 ms against 7.02).
// Handing the dQ tile to the writer a step later, once its stores had drained, was within noise.
// Matches lt_cpu_attn_bwd for any dense spec (causal or not, documents, positions at an offset,
// partial key ranges).
#include "kernels/cuda/attention_bwd_tile.cuh"
#include "kernels/cuda/attention_bwd_ws.cuh"

enum {
  D = 64,
  BM = BWD_WS_BM,
  BN = BWD_WS_BN,
  QS = 2,          // Q and dO buffers (with their statistics)
  CONSUMERS = 256, // two warpgroups of 64 keys
  CONSUMER_WARPS = CONSUMERS / 32,
  THREADS = CONSUMERS + 128, // and one whose warp 0 loads and warp 1 adds dQ
  // Registers per thread (setmaxnreg): 256 x 240 + 128 x 24 = 64512 of the SM's 65536.
  PRODUCER_REGS = 24,
  CONSUMER_REGS = 240,
  DS_READY = 1,          // named barrier: both halves of the step's dS^T stored
  LIST_END = 0x7fffffff, // the entry past a work item's last step
  TILE_BYTES = BM * D * 2,
  KV_BYTES = BN * D * 2,
  DS_BYTES = BN * BM * 2,
  DQ_BYTES = BM * D * 4
};
static_assert(BN == 2 * 64 && BM == 2 * 64, "each warpgroup: 64 of the keys, 64 of dQ's rows");

constexpr size_t ws_smem_bytes() {
  return 1024 + 2 * (size_t)KV_BYTES + 2 * QS * (size_t)TILE_BYTES + 2 * (size_t)DS_BYTES +
         DQ_BYTES + 4 * QS * (size_t)BM * 4;
}

// The step whose dQ tile the stage holds (h < 0: no more).
struct dq_tile {
  int64_t i0;
  int h, b;
};

// The block's shared memory: K and V, the Q and dO ring with each buffer's statistics and step
// (entry: query tile, bit 31 set where it is partial; LIST_END past the item's last), dS^T's two
// buffers and the dQ stage, at fixed offsets from the dynamic shared memory's 1024-byte aligned
// start (one register, not a pointer for each);
struct ws_smem {
  unsigned char *base;
  __device__ uint32_t k_at() const { return smem_u32(base); }
  __device__ uint32_t v_at() const { return smem_u32(base + KV_BYTES); }
  __device__ uint32_t q_at(int s) const { return smem_u32(base + 2 * KV_BYTES + s * TILE_BYTES); }
  __device__ uint32_t do_at(int s) const {
    return smem_u32(base + 2 * KV_BYTES + (QS + s) * TILE_BYTES);
  }
  __device__ uint32_t ds_at(uint32_t u) const { // use u's buffer
    return smem_u32(base + 2 * KV_BYTES + 2 * QS * TILE_BYTES + (u & 1u) * DS_BYTES);
  }
  __device__ uint32_t dq_at() const {
    return smem_u32(base + 2 * KV_BYTES + 2 * QS * TILE_BYTES + 2 * DS_BYTES);
  }
  // Buffer s's rows: lse log2 e, rowsum(dO o), and for partial tiles positions and documents.
  __device__ float *lse2(int s) const { return (float *)(stats() + s * BM); }
  __device__ float *delta(int s) const { return (float *)(stats() + (QS + s) * BM); }
  __device__ int32_t *qpos(int s) const { return stats() + (2 * QS + s) * BM; }
  __device__ int32_t *qdoc(int s) const { return stats() + (3 * QS + s) * BM; }
  __device__ int32_t *stats() const {
    return (int32_t *)(base + 2 * KV_BYTES + 2 * QS * TILE_BYTES + 2 * DS_BYTES + DQ_BYTES);
  }
};

// and the steps' entries and heads, the item, the staged dQ tile's place, and the barriers: full
// ones the producer's (with the bytes its copies announce), empty ones the consumer warps';
// dq_full the consumer threads', dq_empty the writer's. (At file scope: no registers hold their
// addresses.)
struct ws_control {
  uint64_t qdo_full[QS], qdo_empty[QS], kv_full, kv_empty, dq_full, dq_empty;
  int entries[QS], heads[QS], kv_item;
  dq_tile dq_info;
};
static __shared__ ws_control ctl;

// What a work item covers: key tile kt (keys from j0) of key/value head kvh of batch row b.
struct ws_item {
  int kt, kvh, b;
  int64_t j0;
};
__device__ __forceinline__ ws_item item_at(const attn_params &p, int l, int pairs) {
  const block_work w = block_work_at(l, p.n_k_tiles, pairs, p.hkv, p.head_groups);
  return {w.rank, w.h, w.b, (int64_t)w.rank * BN}; // rank 0: the key tile most queries see
}

// The producer warp: for each of the block's items, K and V, then for every query head of the
// group every query tile that sees the keys: Q, dO and the rows' statistics into the ring; then
// LIST_END.
__device__ __forceinline__ void produce(const attn_params &p, const bwd_ws_maps &tm,
                                        const ws_smem &sm, int pairs, int items) {
  const int lane = threadIdx.x & 31, group = p.hq / p.hkv;
  uint32_t qu = 0; // uses of the ring so far
  // The ring's next buffer, once the consumers are done with its last use.
  const auto next_slot = [&] {
    const int s = ring_slot<QS>(qu);
    if (qu >= QS) mbar_wait_suspended(&ctl.qdo_empty[s], ring_parity<QS>(qu - QS));
    return s;
  };
  for (uint32_t iu = 0;; iu++) {
    // The next item of the whole grid's, longest first (as the GPU's block dispatch would take
    // them: the order lt_cuda_attn_head_groups plans for).
    int l = 0;
    if (lane == 0) l = atomicAdd(p.next_item, 1);
    l = __shfl_sync(0xffffffffu, l, 0);
    if (iu > 0) mbar_wait_suspended(&ctl.kv_empty, (iu - 1) & 1u); // the last item's K and V read
    if (l >= items) {
      if (lane == 0) ctl.kv_item = -1, mbar_arrive(&ctl.kv_full); // the consumers' signal to stop
      break;
    }
    const ws_item it = item_at(p, l, pairs);
    if (lane == 0) {
      ctl.kv_item = l;
      mbar_arrive_expect_tx(&ctl.kv_full, 2 * KV_BYTES);
      tma_load_tile<BN, D>(sm.k_at(), &tm.k, it.kvh, it.j0, it.b, &ctl.kv_full);
      tma_load_tile<BN, D>(sm.v_at(), &tm.v, it.kvh, it.j0, it.b, &ctl.kv_full);
    }
    const int4 k_info = p.k_tiles[(int64_t)it.b * p.n_k_tiles + it.kt];
    for (int h = it.kvh * group; h < (it.kvh + 1) * group; h++)
      for (int base = 0; base < p.n_q_tiles; base += 32) {
        const int t = base + lane;
        int kind = TILE_HIDDEN;
        if (t < p.n_q_tiles) {
          const bool ragged = (int64_t)(t + 1) * BM > p.tq || it.j0 + BN > p.tk;
          kind = classify_tiles<false>(p.mask, p.q_tiles[(int64_t)it.b * p.n_q_tiles + t], k_info,
                                       ragged);
        }
        unsigned live = __ballot_sync(0xffffffffu, kind != TILE_HIDDEN);
        const unsigned partial = __ballot_sync(0xffffffffu, kind == TILE_PARTIAL);
        for (; live; live &= live - 1, qu++) {
          const int src = __ffs(live) - 1, s = next_slot();
          const bool part = (partial >> src) & 1u;
          const int64_t i0 = (int64_t)(base + src) * BM;
          for (int r = lane; r < BM; r += 32) {
            const bool valid = i0 + r < p.tq;
            const int64_t stat = ((int64_t)it.b * p.hq + h) * p.tq + i0 + r;
            const int64_t tok = (int64_t)it.b * p.tq + i0 + r;
            sm.lse2(s)[r] = valid ? p.lse[stat] * LOG2E : 0.0f;
            sm.delta(s)[r] = valid ? p.delta[stat] : 0.0f;
            if (part) {
              sm.qpos(s)[r] = valid ? p.q_pos[tok] : 0;
              sm.qdoc(s)[r] = valid && p.mask.docs ? p.q_doc[tok] : 0;
            }
          }
          if (lane == 0) { // the 31 other lanes' arrivals release their statistics
            ctl.entries[s] = (base + src) | (part ? (int)0x80000000u : 0), ctl.heads[s] = h;
            mbar_arrive_expect_tx(&ctl.qdo_full[s], 2 * TILE_BYTES);
            tma_load_tile<BM, D>(sm.q_at(s), &tm.q, h, i0, it.b, &ctl.qdo_full[s]);
            tma_load_tile<BM, D>(sm.do_at(s), &tm.dout, h, i0, it.b, &ctl.qdo_full[s]);
          } else {
            mbar_arrive(&ctl.qdo_full[s]);
          }
        }
      }
    const int s = next_slot();
    if (lane == 0) ctl.entries[s] = LIST_END;
    mbar_arrive(&ctl.qdo_full[s]);
    qu++;
  }
}

// The dQ writer (one thread): each step's staged tile into dQ by bulk reductions, 64 rows by 32
// columns a box (the consumers' stage_dq_rows layout, a warpgroup's 64 rows after the other's).
__device__ __forceinline__ void write_dq(const bwd_ws_maps &tm, const ws_smem &sm) {
  const uint32_t stage = sm.dq_at();
  for (uint32_t u = 0;; u++) {
    mbar_wait_suspended(&ctl.dq_full, u & 1u);
    const dq_tile t = ctl.dq_info;
    if (t.h < 0) break;
#pragma unroll
    for (int wg = 0; wg < 2; wg++)
#pragma unroll
      for (int s = 0; s < 2; s++)
        tma_add_rows(&tm.add, stage + wg * 64 * 64 * 4 + s * 64 * 128, s * 32, t.h, t.i0 + wg * 64,
                     t.b);
    bulk_commit();
    bulk_wait_read<0>(); // the stage may be written again
    mbar_arrive(&ctl.dq_empty);
  }
  bulk_wait_all();
}

// A consumer warpgroup's walk over the block's items: v2's step (attention_bwd.cu, its AHEAD
// loop), its copies, tile list and dQ reductions done by the other warps.
template <typename TKV>
__device__ __forceinline__ void consume(const attn_params &p, const ws_smem &sm, int pairs) {
  constexpr int NT = BM / 8;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wg = warp >> 2;
  const int g = lane >> 2;
  const uint32_t k_base = sm.k_at(), v_base = sm.v_at();
  const float scale = p.scale_log2 / LOG2E;
  const bool docs = p.mask.docs;
  const rope_freqs<D> freqs = bwd_rope_freqs<D>(p);
  uint32_t qu = 0, du = 0; // uses of the Q ring and of the dQ stage (and dS^T's buffers)
  for (uint32_t iu = 0;; iu++) {
    mbar_wait(&ctl.kv_full, iu & 1u);
    const int l = ctl.kv_item;
    if (l < 0) break;
    const ws_item it = item_at(p, l, pairs);
    int32_t kpos[2], kdoc[2]; // the thread's two keys: warp * 16 + g + 8 hf
    bwd_key_positions(kpos, kdoc, p, it.b, it.j0, warp * 16 + g);
    float dk[D / 2], dv[D / 2];
#pragma unroll
    for (int e = 0; e < D / 2; e++) dk[e] = 0.0f, dv[e] = 0.0f;
    int s = ring_slot<QS>(qu);
    mbar_wait(&ctl.qdo_full[s], ring_parity<QS>(qu));
    int entry = ctl.entries[s];
    if (entry != LIST_END) {
      float st[NT * 4];
      bwd_product_wgmma<D, BN, BM>(st, k_base, sm.q_at(s), wg); // the first step's S^T
      for (;;) {
        const int h = ctl.heads[s];
        const int64_t i0 = (int64_t)(entry & 0x7fffffff) * BM;
        const uint32_t q_base = sm.q_at(s), do_base = sm.do_at(s), ds_base = sm.ds_at(du);
        const bwd_tile_stats stats = {sm.lse2(s), sm.delta(s), sm.qpos(s), sm.qdoc(s)};
        float dpt[NT * 4];
        // S^T, issued last step: waited for in full before dP^T is issued (as in v2).
        wgmma_wait<0>();
        wgmma_fence_operands(st);
        bwd_product_wgmma<D, BN, BM>(dpt, v_base, do_base, wg);
        if (entry < 0) // TILE_PARTIAL
          bwd_probs<NT, true, false, true>(st, stats, p, i0, it.j0, warp * 16 + g, kpos, kdoc,
                                           docs);
        else
          bwd_probs<NT, false, false, true>(st, stats, p, i0, it.j0, warp * 16 + g, kpos, kdoc,
                                            docs);
        uint32_t pa[BM / 16][4], sa[BM / 16][4];
        bwd_fragments_and_dv<D, BM>(pa, sa, dv, st, dpt, stats, do_base);
        // The warpgroup's half of dS^T, a k-step's four 8 x 8 blocks a stmatrix (sa[kk][j]:
        // queries 8 (2 kk + j / 2) .., keys 8 (j % 2) .. of the warp's 16; lane l gives block l /
        // 8's row l % 8), then the barrier after which both halves may be read.
        const int ds_row = warp * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
#pragma unroll
        for (int kk = 0; kk < BM / 16; kk++)
          stmatrix_x4(swizzled_addr<BN>(ds_base, ds_row, 2 * kk + (lane >> 4)), sa[kk]);
        fence_proxy_async();
        asm volatile("bar.sync %0, %1;\n" ::"n"((int)DS_READY), "n"((int)CONSUMERS) : "memory");
        float dq[D / 2];
        bwd_dk_smem_wgmma<D, BN, BM>(dk, ds_base, q_base, wg);
        bwd_dq_wgmma<D, BN>(dq, ds_base, k_base, wg, 0); // commits dK's and dQ's products
        wgmma_wait<1>();                                 // dV: P^T's registers are free
        wgmma_keep_fragments(pa);
        wgmma_fence_operands(dv);
        // The next step's S^T, in flight while dQ is staged. Past the item's last it is a product
        // nobody reads (so that the loop is branch-free around the multiplies) of the LIST_END
        // entry's buffer, which the producer leaves alone until the consumers release it.
        const int s_next = ring_slot<QS>(qu + 1);
        mbar_wait(&ctl.qdo_full[s_next], ring_parity<QS>(qu + 1));
        const int next = ctl.entries[s_next];
        bwd_product_wgmma<D, BN, BM>(st, k_base, sm.q_at(s_next), wg);
        wgmma_wait<1>(); // dK, dQ: this step's buffers are read
        wgmma_fence_operands(dk);
        wgmma_fence_operands(dq);
        if (lane == 0) mbar_arrive(&ctl.qdo_empty[s]);
        // dQ into the stage, once the writer's last reductions have read it.
        if (du > 0) mbar_wait(&ctl.dq_empty, (du - 1) & 1u);
        stage_dq_rows<D>(sm.dq_at() + wg * 64 * D * 4, dq, scale, (warp & 3) * 16 + g);
        if (threadIdx.x == 0) ctl.dq_info = {i0, h, it.b};
        fence_proxy_async(); // the stores, before TMA reads them
        mbar_arrive(&ctl.dq_full);
        du++, qu++, s = s_next, entry = next;
        if (entry == LIST_END) break;
      }
      wgmma_wait<0>(); // the unread S^T
      wgmma_fence_operands(st);
    }
    if (lane == 0) mbar_arrive(&ctl.qdo_empty[s]); // the LIST_END entry's buffer
    qu++;
    if (lane == 0) mbar_arrive(&ctl.kv_empty); // every product reading K and V is done
    bwd_store_dkdv<D, TKV>(p, freqs, dk, dv, scale, it.b, it.kvh, it.j0, warp * 16 + g);
  }
  // The writer's signal to stop: a stage with no tile.
  if (du > 0) mbar_wait(&ctl.dq_empty, (du - 1) & 1u);
  if (threadIdx.x == 0) ctl.dq_info.h = -1;
  mbar_arrive(&ctl.dq_full);
}

// q, dout: (B, Tq, Hq, 64) bf16; k, v: (B, Tk, Hkv, 64) bf16; lse, delta: (B, Hq, Tq) f32; dq:
// (B, Tq, Hq, 64) f32 (+=, bulk reductions); dk, dv: (B, Tk, Hkv, 64) TKV (written, every key, so
// keys no query sees get zeros). `items` work items (key tiles x Hkv x B, block_work_at) over a
// grid of at most one block per SM, THREADS threads: warps 0-7 the consumers (keys 16 warp .. +
// 15 of an item's BN), warp 8 the producer, warp 9's first thread the dQ writer.
template <typename TKV>
__global__ void __launch_bounds__(THREADS, 1)
    attn_bwd_ws_kernel(const attn_params p, const __grid_constant__ bwd_ws_maps tm, int items) {
  extern __shared__ unsigned char smem_raw[];
  // wgmma's swizzled tiles start at 1024-byte boundaries.
  unsigned char *smem = smem_aligned_1024(smem_raw);
  const ws_smem sm = {smem};
  const int pairs = items / p.n_k_tiles;
  if (threadIdx.x == 0) {
    for (int i = 0; i < QS; i++)
      mbar_init(&ctl.qdo_full[i], 32), mbar_init(&ctl.qdo_empty[i], CONSUMER_WARPS);
    mbar_init(&ctl.kv_full, 1), mbar_init(&ctl.kv_empty, CONSUMER_WARPS);
    mbar_init(&ctl.dq_full, CONSUMERS), mbar_init(&ctl.dq_empty, 1);
    mbar_init_fence();
  }
  __syncthreads(); // the barriers initialised, for the threads and the copies
  if (threadIdx.x >= CONSUMERS) {
    set_max_registers<PRODUCER_REGS, false>();
    if (threadIdx.x < CONSUMERS + 32)
      produce(p, tm, sm, pairs, items);
    else if (threadIdx.x == CONSUMERS + 32)
      write_dq(tm, sm);
  } else {
    set_max_registers<CONSUMER_REGS, true>();
    consume<TKV>(p, sm, pairs);
  }
}

template <typename TKV>
static int launch_bwd_ws(lt_cuda_state *st, const attn_params &p, const bwd_ws_maps &tm,
                         int64_t b) {
  constexpr size_t smem = ws_smem_bytes();
  CUDA_TRY(cudaFuncSetAttribute(attn_bwd_ws_kernel<TKV>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
           "attn_bwd: raising shared memory to %zu bytes", smem);
  attn_params pg = p;
  pg.head_groups = lt_cuda_attn_head_groups(p.n_k_tiles, b * p.hkv, st->n_sms);
  const int64_t items = (int64_t)p.n_k_tiles * b * p.hkv;
  unsigned blocks;
  LT_TRY(lt_cuda_attn_persistent_grid(st, p, items, "attn_bwd", &blocks));
  attn_bwd_ws_kernel<TKV><<<blocks, THREADS, smem, st->stream>>>(pg, tm, (int)items);
  return LT_OK;
}

bool lt_cuda_attn_bwd_ws_maps(bwd_ws_maps *tm, lt_tensor q, lt_tensor dout, lt_tensor k,
                              lt_tensor v, lt_tensor dq) {
  const int64_t b = q.shape[0], tq = q.shape[1], tk = k.shape[1];
  const int hq = (int)q.shape[2], hkv = (int)k.shape[2];
  return attn_tma_map_rows(&tm->q, q.data, LT_BF16, b, tq, hq, D, BM, 64) &&
         attn_tma_map_rows(&tm->dout, dout.data, LT_BF16, b, tq, hq, D, BM, 64) &&
         attn_tma_map_rows(&tm->k, k.data, LT_BF16, b, tk, hkv, D, BN, 64) &&
         attn_tma_map_rows(&tm->v, v.data, LT_BF16, b, tk, hkv, D, BN, 64) &&
         attn_tma_map_rows(&tm->add, dq.data, LT_F32, b, tq, hq, D, 64, 32);
}

int lt_cuda_attn_bwd_ws(lt_cuda_state *st, const attn_params &p, const bwd_ws_maps &tm, int64_t b) {
  return p.dkv_f32 ? launch_bwd_ws<float>(st, p, tm, b) : launch_bwd_ws<bf16>(st, p, tm, b);
}
