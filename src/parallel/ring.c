// Ring attention over the cp group (see ring.h). Rank r holds, at step i, the block of rank
// (r - i) mod cp: blocks travel to the next rank, r + 1, and arrive from the previous one.
#include "parallel/ring.h"

#include <stdlib.h>

#include "core/device.h"
#include "core/error.h"
#include "kernels/cpu/attention_mask.h"
#include "parallel/context.h"

// A block of keys as it travels: k, v and their positions and documents, back to back in one
// buffer sent as one message.
typedef struct kv_block {
  lt_tensor words;    // the whole block, as 4-byte words
  lt_tensor k, v;     // (B, T, Hkv, D)
  lt_tensor pos, doc; // (B, T) i32
} kv_block;

// The gradients of a block's keys and values, travelling with it in the backward.
typedef struct kv_grads {
  lt_tensor words;
  lt_tensor dk, dv; // (B, T, Hkv, D)
} kv_grads;

// The position and document ranges of one half (chunk) of a rank's tokens in one batch row.
enum { RANGE_INTS = 4 };

struct lt_ring_attention {
  const lt_group *group;
  int64_t B, T;               // the planned local micro-batch
  kv_block blocks[2];         // the one computed on, and the one arriving
  lt_tensor o_part, lse_part; // a step's partial result, (B, T, Hq, D) and (B, Hq, T) f32
  kv_grads grads[3];          // backward: computed into, on its way out, arriving
  int32_t *host_ids;          // (2, B, T): positions, then documents, on the host
  int32_t *ranges;            // (cp, B, 2, RANGE_INTS): every rank's chunks' ranges
  int32_t *local_ranges;      // (B, 2, RANGE_INTS): this rank's
  bool *visible;              // (cp): whether step i has a visible pair
  lt_ring_stats stats;
};

int lt_ring_attention_create(lt_ring_attention **out, const lt_mesh *mesh) {
  *out = NULL;
  const lt_group *cp = lt_cp_group(mesh);
  if (!cp) return LT_OK;
  lt_ring_attention *ring = calloc(1, sizeof *ring);
  LT_CHECK(ring, LT_ERR_MEMORY, "out of memory creating ring attention");
  ring->group = cp;
  ring->visible = calloc((size_t)cp->size, sizeof *ring->visible);
  *out = ring;
  LT_CHECK(ring->visible, LT_ERR_MEMORY, "out of memory creating ring attention");
  return LT_OK;
}

void lt_ring_attention_destroy(lt_ring_attention *ring) {
  if (!ring) return;
  free(ring->host_ids);
  free(ring->ranges);
  free(ring->local_ranges);
  free(ring->visible);
  free(ring);
}

lt_ring_stats lt_ring_attention_stats(const lt_ring_attention *ring) {
  return ring ? ring->stats : (lt_ring_stats){0};
}

// Parts of a buffer in planning order; views stay empty while the arena only measures.
static lt_tensor part_of(lt_tensor words, size_t *offset, lt_dtype dtype, int ndim,
                         const int64_t *shape) {
  lt_tensor t = lt_view(NULL, dtype, words.device, ndim, shape);
  if (words.data) t.data = (char *)words.data + *offset;
  *offset += lt_nbytes(t);
  return t;
}

static int alloc_block(lt_arena *arena, kv_block *b, lt_dtype dt, int64_t B, int64_t T, int hkv,
                       int head_dim) {
  const size_t kv_bytes = (size_t)(B * T * hkv * head_dim) * lt_dtype_size(dt);
  LT_ASSERT(kv_bytes % 4 == 0); // head widths are even (RoPE)
  LT_TRY(lt_arena_alloc1(arena, &b->words, LT_U32, (int64_t)(2 * kv_bytes / 4) + 2 * B * T));
  size_t offset = 0;
  b->k = part_of(b->words, &offset, dt, 4, LT_SHAPE(B, T, hkv, head_dim));
  b->v = part_of(b->words, &offset, dt, 4, LT_SHAPE(B, T, hkv, head_dim));
  b->pos = part_of(b->words, &offset, LT_I32, 2, LT_SHAPE(B, T));
  b->doc = part_of(b->words, &offset, LT_I32, 2, LT_SHAPE(B, T));
  return LT_OK;
}

static int alloc_grads(lt_arena *arena, kv_grads *g, lt_dtype dt, int64_t B, int64_t T, int hkv,
                       int head_dim) {
  const size_t kv_bytes = (size_t)(B * T * hkv * head_dim) * lt_dtype_size(dt);
  LT_TRY(lt_arena_alloc1(arena, &g->words, LT_U32, (int64_t)(2 * kv_bytes / 4)));
  size_t offset = 0;
  g->dk = part_of(g->words, &offset, dt, 4, LT_SHAPE(B, T, hkv, head_dim));
  g->dv = part_of(g->words, &offset, dt, 4, LT_SHAPE(B, T, hkv, head_dim));
  return LT_OK;
}

static int realloc_ints(int32_t **p, int64_t n) {
  int32_t *q = realloc(*p, sizeof(int32_t) * (size_t)n);
  LT_CHECK(q, LT_ERR_MEMORY, "out of host memory for ring attention's %lld indices", (long long)n);
  *p = q;
  return LT_OK;
}

int lt_ring_attention_plan(lt_ring_attention *ring, const lt_plan *p, int hq, int hkv,
                           int head_dim) {
  if (!ring) return LT_OK;
  const int64_t B = p->B, T = p->T;
  LT_ASSERT(T % 2 == 0); // two chunks per rank (lt_config_validate explains it to the user)
  ring->B = B, ring->T = T;
  LT_TRY(realloc_ints(&ring->host_ids, 2 * B * T));
  LT_TRY(realloc_ints(&ring->ranges, ring->group->size * B * 2 * RANGE_INTS));
  LT_TRY(realloc_ints(&ring->local_ranges, B * 2 * RANGE_INTS));
  const size_t mark = lt_arena_mark(p->scratch);
  for (int i = 0; i < 2; i++)
    LT_TRY(alloc_block(p->scratch, &ring->blocks[i], p->act_dtype, B, T, hkv, head_dim));
  // The forward's partial result and the backward's accumulators never live at once.
  const size_t passes = lt_arena_mark(p->scratch);
  LT_TRY(lt_arena_alloc4(p->scratch, &ring->o_part, p->act_dtype, B, T, hq, head_dim));
  LT_TRY(lt_arena_alloc3(p->scratch, &ring->lse_part, LT_F32, B, hq, T));
  lt_arena_release(p->scratch, passes);
  for (int i = 0; i < 3; i++)
    LT_TRY(alloc_grads(p->scratch, &ring->grads[i], p->act_dtype, B, T, hkv, head_dim));
  lt_arena_release(p->scratch, mark);
  return LT_OK;
}

// Block 0: this rank's own keys, as they leave.
static int pack_block(lt_ring_attention *ring, lt_ctx *ctx, lt_tensor k, lt_tensor v,
                      const lt_attn_spec *spec) {
  kv_block *b = &ring->blocks[0];
  LT_TRY(lt_copy(ctx, b->k, k));
  LT_TRY(lt_copy(ctx, b->v, v));
  LT_TRY(lt_copy(ctx, b->pos, spec->k_pos));
  if (spec->k_doc.data) LT_TRY(lt_copy(ctx, b->doc, spec->k_doc));
  return LT_OK;
}

// The spec of a step: the local queries over the visiting block's keys.
static lt_attn_spec step_spec(const lt_attn_spec *spec, const kv_block *b) {
  lt_attn_spec step = *spec;
  step.gated_out = (lt_tensor){0}; // a step's output is partial: the weighting waits for the merge
  step.k_pos = b->pos;
  if (spec->k_doc.data) step.k_doc = b->doc;
  return step;
}

static lt_cpu_tile_range range_at(const int32_t *ranges, int64_t i) {
  const int32_t *r = ranges + i * RANGE_INTS;
  return (lt_cpu_tile_range){r[0], r[1], r[2], r[3]};
}

// visible[i]: whether some local query may see a key of the block that step i brings, by the
// bound the attention kernel uses to skip tiles, applied to whole chunks: from each chunk's
// position and document ranges, all-gathered. Exact for a chunk whose positions run without a
// gap (a sliding window or sinks skip exactly the steps with nothing visible); otherwise it may
// keep a step that then computes nothing, never drop one that matters.
static int choose_steps(lt_ring_attention *ring, const lt_attn_spec *spec) {
  const lt_group *g = ring->group;
  const int64_t B = ring->B, T = ring->T, half = T / 2;
  int32_t *pos = ring->host_ids, *doc = spec->q_doc.data ? ring->host_ids + B * T : NULL;
  LT_TRY(lt_tensor_to_host(pos, spec->q_pos));
  if (doc) LT_TRY(lt_tensor_to_host(doc, spec->q_doc));
  for (int64_t b = 0; b < B; b++)
    for (int h = 0; h < 2; h++) {
      const lt_cpu_tile_range r =
          lt_cpu_tile_range_of(pos + b * T, doc ? doc + b * T : NULL, h * half, half);
      int32_t *out = ring->local_ranges + (b * 2 + h) * RANGE_INTS;
      out[0] = r.pos_min, out[1] = r.pos_max, out[2] = r.doc_min, out[3] = r.doc_max;
    }
  const int64_t per_rank = B * 2 * RANGE_INTS;
  LT_TRY(lt_all_gather(g, lt_view1(ring->ranges, LT_I32, LT_CPU, g->size * per_rank),
                       lt_view1(ring->local_ranges, LT_I32, LT_CPU, per_rank)));
  // Only the pattern, causality and whether documents are given matter to the bound.
  const lt_cpu_attn_mask mask = lt_cpu_attn_row_mask(spec, 0, T, T);
  const int32_t *mine = ring->ranges + g->rank * per_rank;
  for (int i = 0; i < g->size; i++) {
    const int32_t *theirs = ring->ranges + ((g->rank - i + g->size) % g->size) * per_rank;
    bool any = false;
    for (int64_t c = 0; c < B * 2 * 2 && !any; c++) { // (row, query half, key half)
      const int64_t b = c / 4, qh = c / 2 % 2, kh = c % 2;
      any = lt_cpu_tile_may_be_visible(&mask, range_at(mine, b * 2 + qh),
                                       range_at(theirs, b * 2 + kh));
    }
    ring->visible[i] = any;
  }
  return LT_OK;
}

static void count_step(lt_ring_attention *ring, bool computed) {
  if (computed)
    ring->stats.computed++;
  else
    ring->stats.skipped++;
}

int lt_ring_attention_forward(lt_ring_attention *ring, lt_ctx *ctx, lt_tensor o, lt_tensor lse,
                              lt_tensor q, lt_tensor k, lt_tensor v, const lt_attn_spec *spec) {
  if (!ring) return lt_attn_fwd(ctx, o, lse, q, k, v, spec);
  LT_TRY(lt_cp_check_planned("ring attention", q, ring->B, ring->T));
  LT_TRY(pack_block(ring, ctx, k, v, spec));
  LT_TRY(choose_steps(ring, spec));
  const lt_group *g = ring->group;
  const int n = g->size, next = (g->rank + 1) % n, prev = (g->rank + n - 1) % n;
  for (int i = 0; i < n; i++) {
    const kv_block *cur = &ring->blocks[i % 2];
    // The next block is on its way while this one is computed on. Two ranks' messages between
    // the same pair are matched in the order they were posted (MPI's non-overtaking rule).
    lt_request request = {.n = 0};
    if (i + 1 < n)
      LT_TRY(
          lt_start_sendrecv(g, cur->words, next, ring->blocks[(i + 1) % 2].words, prev, &request));
    const lt_attn_spec step = step_spec(spec, cur);
    const bool compute = i == 0 || ring->visible[i];
    int rc = LT_OK;
    if (i == 0) // the own block (always visible: the diagonal) starts the running result
      rc = lt_attn_fwd(ctx, o, lse, q, cur->k, cur->v, &step);
    else if (compute)
      rc = lt_attn_fwd(ctx, ring->o_part, ring->lse_part, q, cur->k, cur->v, &step);
    if (rc == LT_OK && i > 0 && compute)
      rc = lt_attn_merge(ctx, o, lse, ring->o_part, ring->lse_part);
    count_step(ring, compute);
    const int wait_rc = lt_wait(&request);
    LT_TRY(rc);
    LT_TRY(wait_rc);
  }
  if (spec->gated_out.data) LT_TRY(lt_head_gate_fwd(ctx, spec->gated_out, o, spec->head_gates));
  return LT_OK;
}

// The slot of three that is neither a nor b.
static int other_slot(int a, int b) {
  for (int s = 0; s < 3; s++)
    if (s != a && s != b) return s;
  return -1;
}

int lt_ring_attention_backward(lt_ring_attention *ring, lt_ctx *ctx, lt_tensor dq, lt_tensor dk,
                               lt_tensor dv, lt_tensor dout, lt_tensor q, lt_tensor k, lt_tensor v,
                               lt_tensor lse, lt_tensor delta, const lt_attn_spec *spec) {
  if (!ring) return lt_attn_bwd(ctx, dq, dk, dv, dout, q, k, v, lse, delta, spec);
  LT_TRY(lt_cp_check_planned("ring attention", q, ring->B, ring->T));
  LT_TRY(pack_block(ring, ctx, k, v, spec));
  // The steps to compute, chosen again from this micro-batch's own positions and documents:
  // under pipeline parallelism other micro-batches' forwards run between this one's forward and
  // backward, and `visible` holds the last forward's choice (layer.h: a backward reads only what
  // its planned views saved, or derives it again).
  LT_TRY(choose_steps(ring, spec));
  const lt_group *g = ring->group;
  const int n = g->size, next = (g->rank + 1) % n, prev = (g->rank + n - 1) % n;
  // Three accumulator slots: `part` takes this step's share, the previous step's result is on
  // its way out, and `in` receives the visiting block's accumulators from the previous rank.
  int part = 0, in = 1;
  lt_request grads_request = {.n = 0};
  for (int i = 0; i < n; i++) {
    const kv_block *cur = &ring->blocks[i % 2];
    lt_request kv_request = {.n = 0};
    if (i + 1 < n)
      LT_TRY(lt_start_sendrecv(g, cur->words, next, ring->blocks[(i + 1) % 2].words, prev,
                               &kv_request));
    const bool compute = i == 0 || ring->visible[i];
    kv_grads *mine = &ring->grads[part];
    if (compute) {
      const lt_attn_spec step = step_spec(spec, cur);
      LT_TRY(lt_attn_bwd(ctx, dq, mine->dk, mine->dv, dout, q, cur->k, cur->v, lse, delta, &step));
    }
    count_step(ring, compute);
    // What goes on: this step's share plus what the block gathered at the ranks before.
    int send = part;
    if (i > 0) {
      LT_TRY(lt_wait(&grads_request));
      const kv_grads *arrived = &ring->grads[in];
      if (compute) {
        LT_TRY(lt_add(ctx, mine->dk, mine->dk, arrived->dk));
        LT_TRY(lt_add(ctx, mine->dv, mine->dv, arrived->dv));
      } else {
        send = in;
      }
    }
    // Every slot but `send` is free now: the earlier send has completed.
    const int next_in = other_slot(send, send), next_part = other_slot(send, next_in);
    LT_TRY(lt_start_sendrecv(g, ring->grads[send].words, next, ring->grads[next_in].words, prev,
                             &grads_request));
    in = next_in, part = next_part;
    LT_TRY(lt_wait(&kv_request));
  }
  // The last hop brought this rank's own block's accumulators, with every rank's share.
  LT_TRY(lt_wait(&grads_request));
  LT_TRY(lt_copy(ctx, dk, ring->grads[in].dk));
  return lt_copy(ctx, dv, ring->grads[in].dv);
}

int lt_ring_attention_backward_rope(lt_ring_attention *ring, lt_ctx *ctx, lt_tensor dqkv,
                                    lt_tensor dq, lt_tensor dk, lt_tensor dv, lt_tensor dout,
                                    lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor lse,
                                    lt_tensor delta, const lt_attn_spec *spec, lt_tensor pos,
                                    float theta) {
  if (!ring)
    return lt_attn_bwd_rope(ctx, dqkv, dq, dk, dv, dout, q, k, v, lse, delta, spec, pos, theta);
  LT_TRY(lt_ring_attention_backward(ring, ctx, dq, dk, dv, dout, q, k, v, lse, delta, spec));
  return lt_rope_qkv_bwd(ctx, dqkv, dq, dk, dv, pos, theta);
}
