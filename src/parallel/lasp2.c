// LASP-2 over the cp group (see lasp2.h). Chunk c of a sequence (0 .. 2cp-1) is half c / cp of
// a rank's tokens (parallel/context.h); after the all-gather, the states of batch row b are rows
// (rank * B + b) * 2 + half of the gathered tensor.
#include "parallel/lasp2.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "core/error.h"
#include "parallel/context.h"

struct lt_lasp2 {
  const lt_group *group;
  int n_heads;
  float *log_decay;   // (n_heads) or NULL: no decay
  float *chunk_decay; // (n_heads) lambda_h^C for the planned chunk length C
  int64_t B, T;       // the planned local micro-batch: 2B chunks of C = T / 2 tokens
  // saved for the backward
  lt_tensor prefix;     // (2B, Hq, D, E) f32: each local chunk's prefix state
  lt_tensor prefix_doc; // (2B) i32: the document each prefix belongs to
  // scratch
  lt_tensor states;   // (2B, Hq, D, E) f32: the local chunks' states; backward: dP
  lt_tensor gathered; // (cp * 2B, Hq, D, E) f32: every rank's
  lt_tensor running;  // (Hq, D, E) f32: the scan's running prefix (forward) or suffix (backward)
  lt_tensor dstate;   // (2B, Hq, D, E) f32: the local chunks' state gradients
  // host: documents of the chunks, set by the forward
  int32_t *host_doc;        // (B, T)
  int32_t *local_docs;      // (2B, 2): first and last document of each local chunk
  int32_t *docs;            // (cp * 2B, 2): every rank's
  int32_t *host_prefix_doc; // (2B)
  bool has_docs;
};

int lt_lasp2_create(lt_lasp2 **out, const lt_mesh *mesh, int n_heads, const float *log_decay) {
  *out = NULL;
  const lt_group *cp = lt_cp_group(mesh);
  if (!cp) return LT_OK;
  lt_lasp2 *l = calloc(1, sizeof *l);
  LT_CHECK(l, LT_ERR_MEMORY, "out of memory creating LASP-2");
  *out = l;
  l->group = cp;
  l->n_heads = n_heads;
  l->chunk_decay = calloc((size_t)n_heads, sizeof(float));
  LT_CHECK(l->chunk_decay, LT_ERR_MEMORY, "out of memory creating LASP-2");
  if (!log_decay) return LT_OK;
  l->log_decay = malloc(sizeof(float) * (size_t)n_heads);
  LT_CHECK(l->log_decay, LT_ERR_MEMORY, "out of memory creating LASP-2");
  memcpy(l->log_decay, log_decay, sizeof(float) * (size_t)n_heads);
  return LT_OK;
}

void lt_lasp2_destroy(lt_lasp2 *l) {
  if (!l) return;
  free(l->log_decay);
  free(l->chunk_decay);
  free(l->host_doc);
  free(l->local_docs);
  free(l->docs);
  free(l->host_prefix_doc);
  free(l);
}

static int realloc_ints(int32_t **p, int64_t n) {
  int32_t *q = realloc(*p, sizeof(int32_t) * (size_t)n);
  LT_CHECK(q, LT_ERR_MEMORY, "out of host memory for LASP-2's %lld document ids", (long long)n);
  *p = q;
  return LT_OK;
}

int lt_lasp2_plan(lt_lasp2 *l, const lt_plan *p, int hq, int d, int e) {
  if (!l) return LT_OK;
  const int64_t B = p->B, T = p->T, rows = 2 * B, cp = l->group->size;
  LT_ASSERT(T % 2 == 0 && hq == l->n_heads); // two chunks per rank (lt_config_validate says so)
  l->B = B, l->T = T;
  for (int h = 0; h < hq; h++)
    l->chunk_decay[h] = l->log_decay ? (float)exp((double)l->log_decay[h] * (double)(T / 2)) : 1;
  LT_TRY(realloc_ints(&l->host_doc, B * T));
  LT_TRY(realloc_ints(&l->local_docs, rows * 2));
  LT_TRY(realloc_ints(&l->docs, cp * rows * 2));
  LT_TRY(realloc_ints(&l->host_prefix_doc, rows));
  LT_TRY(lt_arena_alloc4(p->acts, &l->prefix, LT_F32, rows, hq, d, e));
  LT_TRY(lt_arena_alloc1(p->acts, &l->prefix_doc, LT_I32, rows));
  const size_t mark = lt_arena_mark(p->scratch);
  LT_TRY(lt_arena_alloc4(p->scratch, &l->states, LT_F32, rows, hq, d, e));
  LT_TRY(lt_arena_alloc4(p->scratch, &l->gathered, LT_F32, cp * rows, hq, d, e));
  LT_TRY(lt_arena_alloc3(p->scratch, &l->running, LT_F32, hq, d, e));
  LT_TRY(lt_arena_alloc4(p->scratch, &l->dstate, LT_F32, rows, hq, d, e));
  lt_arena_release(p->scratch, mark);
  return LT_OK;
}

// (B, T, H, X) as (2B, T / 2, H, X): each local chunk a sequence of its own.
static lt_tensor as_chunks(lt_tensor t) {
  return lt_reshape(t, 4, LT_SHAPE(2 * t.shape[0], t.shape[1] / 2, t.shape[2], t.shape[3]));
}

// The spec of the local chunks as 2B sequences; with_prefix: reading the prefixes.
static lt_linear_attn_spec chunk_spec(const lt_lasp2 *l, const lt_linear_attn_spec *spec,
                                      bool with_prefix) {
  lt_linear_attn_spec c = *spec;
  c.prefix_doc = (lt_tensor){0};
  if (spec->doc.data) {
    c.doc = lt_reshape(spec->doc, 2, LT_SHAPE(2 * l->B, l->T / 2));
    if (with_prefix) c.prefix_doc = l->prefix_doc;
  }
  return c;
}

// Row of the gathered tensors that holds chunk `chunk` of batch row b.
static int64_t gathered_row(const lt_lasp2 *l, int64_t b, int chunk) {
  int rank, half;
  lt_zigzag_owner(chunk, l->group->size, &rank, &half);
  return (rank * l->B + b) * 2 + half;
}

// The (Hq, D, E) state of row `row` of a (rows, Hq, D, E) tensor.
static lt_tensor state_at(lt_tensor states, int64_t row) {
  const int64_t per = states.shape[1] * states.shape[2] * states.shape[3];
  return lt_reshape(lt_rows(lt_reshape(states, 2, LT_SHAPE(states.shape[0], per)), row, 1), 3,
                    LT_SHAPE(states.shape[1], states.shape[2], states.shape[3]));
}

// Head h's (D, E) state of a (Hq, D, E) one.
static lt_tensor head_at(lt_tensor state, int h) {
  const int64_t per = state.shape[1] * state.shape[2];
  return lt_rows(lt_reshape(state, 2, LT_SHAPE(state.shape[0], per)), h, 1);
}

static int32_t last_doc(const lt_lasp2 *l, int64_t b, int chunk) {
  return l->docs[gathered_row(l, b, chunk) * 2 + 1];
}

// Whether chunk `chunk` (>= 1) lies in the document of the state before it, so that state carries
// through it: the scans' link from chunk to chunk.
static bool carries(const lt_lasp2 *l, int64_t b, int chunk) {
  return chunk > 0 && (!l->has_docs || last_doc(l, b, chunk) == last_doc(l, b, chunk - 1));
}

// running = lambda_h^C running per head when the state carries through `chunk`; 0 otherwise.
static int carry(lt_lasp2 *l, lt_ctx *ctx, int64_t b, int chunk) {
  if (!carries(l, b, chunk)) return lt_zero(ctx, l->running);
  if (!l->log_decay) return LT_OK;
  for (int h = 0; h < l->n_heads; h++)
    LT_TRY(lt_scale(ctx, head_at(l->running, h), l->chunk_decay[h]));
  return LT_OK;
}

// The first and last document of every chunk of every rank, on every rank.
static int gather_docs(lt_lasp2 *l, const lt_linear_attn_spec *spec) {
  l->has_docs = spec->doc.data != NULL;
  if (!l->has_docs) return LT_OK;
  const int64_t B = l->B, T = l->T, C = T / 2;
  LT_TRY(lt_tensor_to_host(l->host_doc, spec->doc));
  for (int64_t row = 0; row < 2 * B; row++) {
    l->local_docs[row * 2] = l->host_doc[row * C];
    l->local_docs[row * 2 + 1] = l->host_doc[row * C + C - 1];
  }
  return lt_all_gather(l->group, lt_view1(l->docs, LT_I32, LT_CPU, l->group->size * 2 * B * 2),
                       lt_view1(l->local_docs, LT_I32, LT_CPU, 2 * B * 2));
}

// prefix[2b + half] = P_c for this rank's chunks c, by P_0 = 0 and
// P_{c+1} = [chunk c carries] lambda^C P_c + M_c.
static int prefix_scan(lt_lasp2 *l, lt_ctx *ctx) {
  const int cp = l->group->size, rank = l->group->rank;
  const int last = lt_zigzag_chunk(rank, cp, 1);
  for (int64_t b = 0; b < l->B; b++) {
    LT_TRY(lt_zero(ctx, l->running));
    for (int chunk = 0;; chunk++) {
      for (int half = 0; half < 2; half++) {
        if (chunk != lt_zigzag_chunk(rank, cp, half)) continue;
        LT_TRY(lt_copy(ctx, state_at(l->prefix, b * 2 + half), l->running));
        // The first chunk's prefix is empty: any document will do.
        l->host_prefix_doc[b * 2 + half] = chunk > 0 && l->has_docs ? last_doc(l, b, chunk - 1) : 0;
      }
      if (chunk == last) break;
      LT_TRY(carry(l, ctx, b, chunk));
      LT_TRY(lt_add(ctx, l->running, l->running, state_at(l->gathered, gathered_row(l, b, chunk))));
    }
  }
  return l->has_docs ? lt_tensor_from_host(l->prefix_doc, l->host_prefix_doc) : LT_OK;
}

// dstate[2b + half] = dM_c = G_{c+1} for this rank's chunks c, by G_{2cp} = 0 and
// G_c = dP_c + [chunk c carries] lambda^C G_{c+1}: the transpose of prefix_scan.
static int suffix_scan(lt_lasp2 *l, lt_ctx *ctx) {
  const int cp = l->group->size, rank = l->group->rank;
  const int first = lt_zigzag_chunk(rank, cp, 0);
  for (int64_t b = 0; b < l->B; b++) {
    LT_TRY(lt_zero(ctx, l->running));
    for (int chunk = 2 * cp - 1;; chunk--) {
      for (int half = 0; half < 2; half++)
        if (chunk == lt_zigzag_chunk(rank, cp, half))
          LT_TRY(lt_copy(ctx, state_at(l->dstate, b * 2 + half), l->running));
      if (chunk == first) break;
      LT_TRY(carry(l, ctx, b, chunk));
      LT_TRY(lt_add(ctx, l->running, l->running, state_at(l->gathered, gathered_row(l, b, chunk))));
    }
  }
  return LT_OK;
}

int lt_lasp2_forward(lt_lasp2 *l, lt_ctx *ctx, lt_tensor o, lt_tensor q, lt_tensor k, lt_tensor v,
                     const lt_linear_attn_spec *spec) {
  const lt_tensor no_prefix = {0};
  if (!l) return lt_linear_attn_fwd(ctx, o, q, k, v, no_prefix, spec);
  LT_TRY(lt_cp_check_planned("LASP-2", q, l->B, l->T));
  const lt_linear_attn_spec chunks = chunk_spec(l, spec, true), alone = chunk_spec(l, spec, false);
  LT_TRY(lt_linear_attn_state(ctx, l->states, as_chunks(k), as_chunks(v), &alone));
  LT_TRY(lt_all_gather(l->group, l->gathered, l->states));
  LT_TRY(gather_docs(l, spec));
  LT_TRY(prefix_scan(l, ctx));
  return lt_linear_attn_fwd(ctx, as_chunks(o), as_chunks(q), as_chunks(k), as_chunks(v), l->prefix,
                            &chunks);
}

int lt_lasp2_backward(lt_lasp2 *l, lt_ctx *ctx, lt_tensor dq, lt_tensor dk, lt_tensor dv,
                      lt_tensor dout, lt_tensor q, lt_tensor k, lt_tensor v,
                      const lt_linear_attn_spec *spec) {
  const lt_tensor no_prefix = {0};
  if (!l) return lt_linear_attn_bwd(ctx, dq, dk, dv, no_prefix, dout, q, k, v, no_prefix, spec);
  LT_TRY(lt_cp_check_planned("LASP-2", q, l->B, l->T));
  const lt_linear_attn_spec chunks = chunk_spec(l, spec, true), alone = chunk_spec(l, spec, false);
  const lt_tensor dk_chunks = as_chunks(dk), dv_chunks = as_chunks(dv);
  const lt_tensor k_chunks = as_chunks(k), v_chunks = as_chunks(v);
  // The suffix scan links chunks by their documents. Gathered again from this micro-batch's own
  // documents: under pipeline parallelism other micro-batches' forwards run between this one's
  // forward and backward, and the table on the host holds the last forward's (layer.h: a
  // backward reads only what its planned views saved, or derives it again).
  LT_TRY(gather_docs(l, spec));
  // l->states receives the prefixes' gradients dP.
  LT_TRY(lt_linear_attn_bwd(ctx, as_chunks(dq), dk_chunks, dv_chunks, l->states, as_chunks(dout),
                            as_chunks(q), k_chunks, v_chunks, l->prefix, &chunks));
  LT_TRY(lt_all_gather(l->group, l->gathered, l->states));
  LT_TRY(suffix_scan(l, ctx));
  return lt_linear_attn_state_bwd(ctx, dk_chunks, dv_chunks, l->dstate, k_chunks, v_chunks, &alone);
}
