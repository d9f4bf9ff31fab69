// Ring attention: softmax attention (and its sparse and MoH kinds) over a sequence split across
// the cp ranks of a context-parallel group (Liu et al. 2023, "Ring Attention with Blockwise
// Transformers"; the zigzag layout of parallel/context.h balances the causal work).
//
// Forward: each rank's queries (its two chunks) meet every rank's keys and values as those travel
// around the ring, one block per step, cp steps; each step's partial (o, lse) folds into the
// running result by the online-softmax merge (lt_attn_merge), so the result is exact.
// Backward: delta = rowsum(dO * O) once, then the blocks travel the ring again, each carrying
// the accumulators of its dK, dV: every rank adds its queries' share (lt_attn_bwd with the final
// lse and delta) and passes both on, and one more hop brings the finished dK, dV home. dQ stays
// where it is.
// Overlap: each step starts the next block's exchange (and, backward, the previous step's
// accumulators') before computing on the current one, and waits after.
// Skipping: from the position and document ranges of every rank's chunks (one small all-gather
// per forward), a step whose block has no pair visible to any local query (a sliding window over
// a long sequence, documents that do not meet) is not computed, forward or backward; its block
// still passes on.
#ifndef LT_RING_H
#define LT_RING_H

#include "layers/layer.h"
#include "parallel/mesh.h"

typedef struct lt_ring_attention lt_ring_attention;

// Steps of this rank's rings so far, forward and backward together.
typedef struct lt_ring_stats {
  int64_t computed, skipped;
} lt_ring_stats;

// *out = NULL when the mesh has no cp group: every function below then runs the single-device
// kernels (lt_attn_fwd, lt_attn_bwd) unchanged.
int lt_ring_attention_create(lt_ring_attention **out, const lt_mesh *mesh);
void lt_ring_attention_destroy(lt_ring_attention *ring);
// Scratch for micro-batches of (p->B, p->T) local tokens (T even: two chunks) with hq query heads
// and hkv key/value heads of width head_dim, from p->scratch after everything else the layer
// took (it lives only inside the calls below).
int lt_ring_attention_plan(lt_ring_attention *ring, const lt_plan *p, int hq, int hkv,
                           int head_dim);
// As lt_attn_fwd on this rank's queries over the whole sequence's keys. spec: the local tokens'
// positions and documents as both q_pos and k_pos (q_doc and k_doc), and the pattern. A
// spec->gated_out is written by the kernel on one rank, by a pass after the merge on several.
int lt_ring_attention_forward(lt_ring_attention *ring, lt_ctx *ctx, lt_tensor o, lt_tensor lse,
                              lt_tensor q, lt_tensor k, lt_tensor v, const lt_attn_spec *spec);
// As lt_attn_bwd: dq += and dk, dv = the gradients of the forward's o given dout, the final lse
// and delta (lt_attn_bwd_delta). Runs after the forward of the same micro-batch (it reuses its
// choice of steps).
int lt_ring_attention_backward(lt_ring_attention *ring, lt_ctx *ctx, lt_tensor dq, lt_tensor dk,
                               lt_tensor dv, lt_tensor dout, lt_tensor q, lt_tensor k, lt_tensor v,
                               lt_tensor lse, lt_tensor delta, const lt_attn_spec *spec);
// lt_ring_attention_backward, then lt_rope_qkv_bwd's join into dqkv: on one rank
// lt_attn_bwd_rope (dk and dv are then scratch the CUDA kernels leave alone).
int lt_ring_attention_backward_rope(lt_ring_attention *ring, lt_ctx *ctx, lt_tensor dqkv,
                                    lt_tensor dq, lt_tensor dk, lt_tensor dv, lt_tensor dout,
                                    lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor lse,
                                    lt_tensor delta, const lt_attn_spec *spec, lt_tensor pos,
                                    float theta);
lt_ring_stats lt_ring_attention_stats(const lt_ring_attention *ring);

#endif
