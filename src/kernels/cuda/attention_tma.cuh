// Hopper's asynchronous copies for the attention kernels: mbarriers (PTX ISA, "Parallel
// synchronization and communication instructions: mbarrier") and the tensor memory accelerator
// (TMA, cp.async.bulk.tensor), which copies a whole tile of a (B, T, H, D) tensor into shared
// memory from one thread's instruction, in the 128-byte swizzle that wgmma reads
// (attention_common.cuh's swizzled_addr), zero-filling rows past the end, and reports the bytes'
// arrival on an mbarrier. A kernel that loads its K and V tiles so spends no instructions per
// thread on the copies (FlashAttention-3's producer side).
#ifndef LT_ATTENTION_TMA_CUH
#define LT_ATTENTION_TMA_CUH

#include <cuda.h>

#include "kernels/cuda/attention_common.cuh"

// A barrier's phase completes when `count` arrivals (and, with expect_tx, the bytes announced) have
// come; waiters name the phase by parity.
__device__ __forceinline__ void mbar_init(uint64_t *bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count)
               : "memory");
}
// Makes initialized barriers visible to the async proxy (TMA's completions) too; the block's next
// barrier makes them visible to its threads.
__device__ __forceinline__ void mbar_init_fence() {
#ifdef LT_HAVE_WGMMA
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
// Arrives (release: this thread's earlier writes are visible to whoever waits on the phase).
__device__ __forceinline__ void mbar_arrive(uint64_t *bar) {
  asm volatile(
      "{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}\n" ::"r"(smem_u32(bar))
      : "memory");
}
// Arrives and announces `bytes` that copies will complete on the barrier's current phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t *bar, uint32_t bytes) {
#ifdef LT_HAVE_WGMMA
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)),
               "r"(bytes)
               : "memory");
#endif
}
// Waits (acquire) until the phase of the given parity has completed. (try_wait is sm_90's; other
// builds never launch the kernels that call it.)
__device__ __forceinline__ void mbar_wait(uint64_t *bar, uint32_t parity) {
#ifdef LT_HAVE_WGMMA
  asm volatile("{\n.reg .pred done;\nLT_WAIT:\n"
               "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
               "@!done bra LT_WAIT;\n}\n" ::"r"(smem_u32(bar)),
               "r"(parity)
               : "memory");
#endif
}

// mbar_wait, but each try suspends the thread until the phase completes or a time limit passes
// (the hint CUTLASS gives, 10 ms), instead of returning at once: for a warp that waits long, such
// as a producer ahead of its consumers, whose spinning would take issue slots from the warps beside
// it.
__device__ __forceinline__ void mbar_wait_suspended(uint64_t *bar, uint32_t parity) {
#ifdef LT_HAVE_WGMMA
  asm volatile("{\n.reg .pred done;\nLT_WAIT:\n"
               "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1, %2;\n"
               "@!done bra LT_WAIT;\n}\n" ::"r"(smem_u32(bar)),
               "r"(parity), "n"(10000000)
               : "memory");
#endif
}

// The warp-specialized kernels' rings of buffers (attention_fwd_ws.cu, attention_bwd_ws.cu): use u
// of a ring of `stages` buffers (uses counted from the block's start): its buffer, and the
// parity of the phase that use completes on the buffer's barriers.
template <int STAGES> __device__ __forceinline__ int ring_slot(uint32_t u) {
  return (int)(u % STAGES);
}
template <int STAGES> __device__ __forceinline__ uint32_t ring_parity(uint32_t u) {
  return (u / STAGES) & 1u;
}

// Sets this warpgroup's registers per thread (setmaxnreg, sm_90a): fewer (INC false) or more.
template <int REGS, bool INC> __device__ __forceinline__ void set_max_registers() {
#ifdef LT_HAVE_WGMMA
  if constexpr (INC)
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(REGS));
  else
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(REGS));
#endif
}

// Columns [col, col + box columns) of rows [row, row + box rows) of head h of batch row b of the
// tensor `map` describes (attn_tma_map_rows) into shared memory at dst, completing on `bar`.
__device__ __forceinline__ void tma_load_rows(uint32_t dst, const CUtensorMap *map, int col, int h,
                                              int64_t row, int b, uint64_t *bar) {
#ifdef LT_HAVE_WGMMA
  asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
               " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
               "l"(reinterpret_cast<uint64_t>(map)), "r"(col), "r"(h), "r"((int)row), "r"(b),
               "r"(smem_u32(bar))
               : "memory");
#endif
}

// Rows [row0, row0 + ROWS) of head h of batch row b, all D columns, of the tensor `map` describes
// (boxes of ROWS rows by 64 columns) into shared memory at dst: D / 64 column blocks of 64
// (128 bytes a row), ROWS * 128 bytes apart, as wgmma reads them; completing on `bar`.
template <int ROWS, int D>
__device__ __forceinline__ void tma_load_tile(uint32_t dst, const CUtensorMap *map, int h,
                                              int64_t row0, int b, uint64_t *bar) {
#pragma unroll
  for (int cb = 0; cb < D / 64; cb++)
    tma_load_rows(dst + cb * ROWS * 128, map, cb * 64, h, row0, b, bar);
}

// Adds the box at src (shared memory, in the layout `map` gives its box) into the tensor `map`
// describes, at column col of rows [row, row + box rows) of head h of batch row b: one bulk
// reduction in the L2 (f32 adds, elements past the tensor's end left out), in the thread's
// current bulk group. The thread must not let src be overwritten before bulk_wait_read says the
// group has read it.
__device__ __forceinline__ void tma_add_rows(const CUtensorMap *map, uint32_t src, int col, int h,
                                             int64_t row, int b) {
#ifdef LT_HAVE_WGMMA
  asm volatile("cp.reduce.async.bulk.tensor.4d.global.shared::cta.add.tile.bulk_group"
               " [%0, {%1, %2, %3, %4}], [%5];\n" ::"l"(reinterpret_cast<uint64_t>(map)),
               "r"(col), "r"(h), "r"((int)row), "r"(b), "r"(src)
               : "memory");
#endif
}
// Copies the box at src (shared memory, in the layout `map` gives its box) into the tensor `map`
// describes, at column col of rows [row, row + box rows) of head h of batch row b (elements past
// the tensor's end left out), in the thread's current bulk group; as tma_add_rows, src must stay
// as it is until bulk_wait_read says the group has read it.
__device__ __forceinline__ void tma_store_rows(const CUtensorMap *map, uint32_t src, int col, int h,
                                               int64_t row, int b) {
#ifdef LT_HAVE_WGMMA
  asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.bulk_group"
               " [%0, {%1, %2, %3, %4}], [%5];\n" ::"l"(reinterpret_cast<uint64_t>(map)),
               "r"(col), "r"(h), "r"((int)row), "r"(b), "r"(src)
               : "memory");
#endif
}
// Closes the thread's current bulk group.
__device__ __forceinline__ void bulk_commit() {
#ifdef LT_HAVE_WGMMA
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#endif
}
// Waits until at most N of the thread's bulk groups have not finished reading shared memory.
template <int N> __device__ __forceinline__ void bulk_wait_read() {
#ifdef LT_HAVE_WGMMA
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
#endif
}
// Waits until every bulk group of the thread has completed (its writes done).
__device__ __forceinline__ void bulk_wait_all() {
#ifdef LT_HAVE_WGMMA
  asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
#endif
}

// The tensor maps of the two tensors a kernel copies tile by tile (the forward: K and V; the
// backward: Q and dO) and of the f32 dQ the backward adds into by bulk reductions (`add`); passed
// as a __grid_constant__ parameter. `use` false: the kernel copies with cp.async instead; `use_add`
// false: it adds with atomics.
typedef struct attn_tma_maps {
  CUtensorMap rows[2], add;
  bool use, use_add;
} attn_tma_maps;

// Rows [row0, row0 + ROWS) of head h of batch row b of two (B, T, H, D) tensors, tm.rows[0]'s and
// tm.rows[1]'s (at src0 and src1, that head's first row), into dst0 and dst1: where `tma`, thread
// 0's two copies landing on `bar`, else every thread's share by cp.async (the caller commits).
template <bool SWIZZLED, int ROWS, int D, int THREADS>
__device__ __forceinline__ void
load_tile_pair(bool tma, const attn_tma_maps &tm, uint64_t *bar, unsigned char *dst0,
               unsigned char *dst1, const bf16 *src0, const bf16 *src1, int h, int b, int64_t row0,
               int64_t row_stride, int64_t rows_valid) {
  if (tma) {
    if (threadIdx.x == 0) {
      mbar_arrive_expect_tx(bar, 2 * ROWS * D * 2);
      tma_load_tile<ROWS, D>(smem_u32(dst0), &tm.rows[0], h, row0, b, bar);
      tma_load_tile<ROWS, D>(smem_u32(dst1), &tm.rows[1], h, row0, b, bar);
    }
  } else {
    load_rows<SWIZZLED, ROWS, D, THREADS>(dst0, src0, row_stride, row0, rows_valid);
    load_rows<SWIZZLED, ROWS, D, THREADS>(dst1, src1, row_stride, row0, rows_valid);
  }
}

// Describes a (B, T, H, D) tensor of bf16 or f32 for TMA copies and reductions of boxes of `rows`
// rows by `cols` columns (cols elements of at most 128 bytes) of one head, 128-byte swizzled (a
// row of 128 bytes: one swizzle span). False where TMA cannot take it (no driver entry point, an
// unaligned base): the caller copies with cp.async.
bool attn_tma_map_rows(CUtensorMap *map, const void *base, lt_dtype dtype, int64_t b, int64_t t,
                       int h, int d, int rows, int cols);

#endif
