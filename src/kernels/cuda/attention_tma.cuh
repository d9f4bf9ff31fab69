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

// Rows [row, row + box rows) of head h of batch row b of the tensor `map` describes
// (attn_tma_map_rows) into shared memory at dst, completing on `bar`.
__device__ __forceinline__ void tma_load_rows(uint32_t dst, const CUtensorMap *map, int h,
                                              int64_t row, int b, uint64_t *bar) {
#ifdef LT_HAVE_WGMMA
  asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
               " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
               "l"(reinterpret_cast<uint64_t>(map)), "r"(0), "r"(h), "r"((int)row), "r"(b),
               "r"(smem_u32(bar))
               : "memory");
#endif
}

// The tensor maps of the two tensors a kernel copies tile by tile (the forward: K and V; the
// backward: Q and dO), passed as a __grid_constant__ parameter; `use` false: the kernel copies with
// cp.async instead.
typedef struct attn_tma_maps {
  CUtensorMap rows[2];
  bool use;
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
      tma_load_rows(smem_u32(dst0), &tm.rows[0], h, row0, b, bar);
      tma_load_rows(smem_u32(dst1), &tm.rows[1], h, row0, b, bar);
    }
  } else {
    load_rows<SWIZZLED, ROWS, D, THREADS>(dst0, src0, row_stride, row0, rows_valid);
    load_rows<SWIZZLED, ROWS, D, THREADS>(dst1, src1, row_stride, row0, rows_valid);
  }
}

// Describes a (B, T, H, D) bf16 tensor for TMA copies of `rows` rows of one head, 128-byte
// swizzled (D = 64: one swizzle span per row). False where TMA cannot take it (no driver entry
// point, an unaligned base): the caller copies with cp.async.
bool attn_tma_map_rows(CUtensorMap *map, const void *base, int64_t b, int64_t t, int h, int d,
                       int rows);

#endif
