// The order in which the flash attention kernels' blocks go out (attention_common.cuh,
// block_work_of), callable from C for the tests.
#ifndef LT_ATTENTION_SCHEDULE_H
#define LT_ATTENTION_SCHEDULE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// How many groups the (batch row, head) pairs of a causal grid of n_tiles tiles a pair are cut
// into, `slots` blocks resident at once: the fewest pairs a group whose finish, modeled as a
// greedy dispatch of blocks of work n_tiles - rank, is within 2% of the best (attention_aux.cu).
int lt_cuda_attn_head_groups(int n_tiles, int64_t pairs, int slots);
// The work of block l of that grid with `groups` groups: tile rank, head h of `heads`, batch
// row b (block_work_at, for the tests).
void lt_cuda_attn_block_work(int l, int n_tiles, int pairs, int heads, int groups, int *rank,
                             int *h, int *b);

#ifdef __cplusplus
}
#endif

#endif
