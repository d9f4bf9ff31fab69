// Context parallelism's data side: the token layout, and the statistics that layers share over the
// cp group.
//
// With cp ranks, each sequence of T tokens is cut into 2*cp chunks of T / (2 cp) and rank r holds
// chunks r and 2cp-1-r, concatenated. Under the causal mask an early chunk has little to attend to
// and a late one much, so pairing them gives every rank the same work (the zigzag layout of
// Megatron-LM's context parallelism and of ring-flash-attention). Positions and document ids
// travel with the tokens (lt_batch.pos and lt_batch.doc are per token), so every mask (causal,
// documents, sparse patterns on absolute positions) is right on any chunk.
#ifndef LT_CONTEXT_H
#define LT_CONTEXT_H

#include <stdint.h>

#include "data/loader.h"
#include "kernels/kernels.h"
#include "parallel/mesh.h"

// The chunk of the sequence (0 .. 2cp-1) that half `half` (0 or 1) of rank `rank`'s tokens is.
static inline int lt_zigzag_chunk(int rank, int cp, int half) {
  return half == 0 ? rank : 2 * cp - 1 - rank;
}
// Who holds chunk `chunk`: the rank and which of its halves.
static inline void lt_zigzag_owner(int chunk, int cp, int *rank, int *half) {
  *half = chunk >= cp;
  *rank = *half ? 2 * cp - 1 - chunk : chunk;
}
// The position in the whole sequence of token i of rank `rank`'s seq_len / cp tokens.
static inline int64_t lt_zigzag_global_index(int64_t i, int rank, int cp, int64_t seq_len) {
  const int64_t chunk_len = seq_len / (2 * cp);
  return lt_zigzag_chunk(rank, cp, (int)(i / chunk_len)) * chunk_len + i % chunk_len;
}

// The context-parallel group of `mesh`, or NULL when there is none (no mesh, or cp = 1): the
// single-device paths run then.
const lt_group *lt_cp_group(const lt_mesh *mesh);
// The tokens per sequence each rank holds: seq_len / cp (seq_len without a cp group).
int64_t lt_cp_local_len(int64_t seq_len, const lt_mesh *mesh);

// Keeps, of each of `rows` sequences of seq_len tokens stored one after another in `tokens`,
// this rank's two chunks: in place, the sequences become rows of seq_len / cp. A no-op without a
// cp group.
void lt_zigzag_keep_local(int32_t *tokens, int64_t rows, int64_t seq_len, const lt_mesh *mesh);
// The same for every array of a loader's samples (tokens, targets, positions, document ids).
void lt_zigzag_keep_local_samples(lt_samples *samples, int64_t rows, int64_t seq_len,
                                  const lt_mesh *mesh);

// An internal error unless q's (B, T) is what `what` (ring attention, LASP-2) was planned for.
int lt_cp_check_planned(const char *what, lt_tensor q, int64_t B, int64_t T);

// t = the mean of every cp rank's t, in place (a statistic over a micro-batch's tokens, such as
// MoH's head loads, becomes the whole sequence's: every rank holds as many tokens). A no-op
// without a cp group.
int lt_cp_mean(const lt_group *cp, lt_ctx *ctx, lt_tensor t);

#endif
