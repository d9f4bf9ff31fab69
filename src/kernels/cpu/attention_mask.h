// Which (query, key) pairs attention may see, for the CPU attention kernels: per pair (exact) and
// per tile (a cheap bound from the tile's position and document ranges, so that the tiles that
// hold no visible pair are skipped without looking at their pairs). The rules are lt_attn_spec's
// (kernels.h).
#ifndef LT_CPU_ATTENTION_MASK_H
#define LT_CPU_ATTENTION_MASK_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/kernels.h"

typedef struct lt_cpu_attn_mask {
  const int32_t *q_pos, *k_pos, *q_doc, *k_doc; // one batch row's; the docs NULL when unmasked
  bool causal;
  bool sparse; // whether any part of the sparse pattern is on
  lt_attn_sparsity pattern;
} lt_cpu_attn_mask;

// The positions and documents that rows [start, start + n) of a tile span.
typedef struct lt_cpu_tile_range {
  int32_t pos_min, pos_max, doc_min, doc_max;
} lt_cpu_tile_range;

static inline lt_cpu_attn_mask lt_cpu_attn_row_mask(const lt_attn_spec *spec, int64_t b, int64_t tq,
                                                    int64_t tk) {
  const lt_attn_sparsity *p = &spec->sparse;
  lt_cpu_attn_mask m = {.causal = spec->causal, .pattern = *p};
  m.sparse =
      p->window > 0 || p->sinks > 0 || p->local_blocks > 0 || p->stride > 0 || p->global_blocks > 0;
  m.q_pos = lt_i32(spec->q_pos) + b * tq;
  m.k_pos = lt_i32(spec->k_pos) + b * tk;
  if (spec->q_doc.data) {
    m.q_doc = lt_i32(spec->q_doc) + b * tq;
    m.k_doc = lt_i32(spec->k_doc) + b * tk;
  }
  return m;
}

static inline int64_t lt_cpu_abs64(int64_t x) {
  return x < 0 ? -x : x;
}

// Whether the sparse pattern lets query position qp see key position kp.
static inline bool lt_cpu_pattern_allows(const lt_attn_sparsity *p, int32_t qp, int32_t kp) {
  const int64_t d = (int64_t)qp - kp;
  if (p->window > 0 && lt_cpu_abs64(d) < p->window) return true;
  if (p->sinks > 0 && kp < p->sinks) return true;
  if (p->block_size > 0) {
    const int64_t kb = kp / p->block_size, db = qp / p->block_size - kb;
    if (p->local_blocks > 0 && lt_cpu_abs64(db) < p->local_blocks) return true;
    if (p->stride > 0 && db % p->stride == 0) return true;
    if (p->global_blocks > 0 && kb < p->global_blocks) return true;
  }
  return false;
}

static inline bool lt_cpu_attn_visible(const lt_cpu_attn_mask *m, int64_t i, int64_t j) {
  if (m->causal && m->k_pos[j] > m->q_pos[i]) return false;
  if (m->q_doc && m->q_doc[i] != m->k_doc[j]) return false;
  return !m->sparse || lt_cpu_pattern_allows(&m->pattern, m->q_pos[i], m->k_pos[j]);
}

static inline lt_cpu_tile_range lt_cpu_tile_range_of(const int32_t *pos, const int32_t *doc,
                                                     int64_t start, int64_t n) {
  lt_cpu_tile_range r = {INT32_MAX, INT32_MIN, INT32_MAX, INT32_MIN};
  for (int64_t i = start; i < start + n; i++) {
    if (pos[i] < r.pos_min) r.pos_min = pos[i];
    if (pos[i] > r.pos_max) r.pos_max = pos[i];
    if (doc && doc[i] < r.doc_min) r.doc_min = doc[i];
    if (doc && doc[i] > r.doc_max) r.doc_max = doc[i];
  }
  return r;
}

// The smallest |x| over x in [lo, hi].
static inline int64_t lt_cpu_min_abs(int64_t lo, int64_t hi) {
  if (lo <= 0 && hi >= 0) return 0;
  return lo > 0 ? lo : -hi;
}

static inline int64_t lt_cpu_floor_div(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// Whether some pair of the tile may be visible. Every pair the tile holds has its position
// difference in [q.min - k.max, q.max - k.min] (and its block difference likewise), so a part of
// the pattern that allows no difference in that interval allows no pair. Exact when positions
// run contiguously through the tile; otherwise it may keep a tile with nothing visible, which
// costs time, never correctness (pairs are checked one by one).
static inline bool lt_cpu_tile_may_be_visible(const lt_cpu_attn_mask *m, lt_cpu_tile_range q,
                                              lt_cpu_tile_range k) {
  int64_t lo = (int64_t)q.pos_min - k.pos_max, hi = (int64_t)q.pos_max - k.pos_min;
  if (m->causal) {
    if (hi < 0) return false;
    if (lo < 0) lo = 0;
  }
  if (m->q_doc && (k.doc_max < q.doc_min || k.doc_min > q.doc_max)) return false;
  if (!m->sparse) return true;
  const lt_attn_sparsity *p = &m->pattern;
  if (p->window > 0 && lt_cpu_min_abs(lo, hi) < p->window) return true;
  if (p->sinks > 0 && k.pos_min < p->sinks) return true;
  if (p->block_size > 0) {
    const int64_t bs = p->block_size, kb_min = k.pos_min / bs;
    int64_t blo = q.pos_min / bs - k.pos_max / bs, bhi = q.pos_max / bs - kb_min;
    if (m->causal && blo < 0) blo = 0;
    if (p->local_blocks > 0 && lt_cpu_min_abs(blo, bhi) < p->local_blocks) return true;
    if (p->stride > 0 && lt_cpu_floor_div(bhi, p->stride) * p->stride >= blo) return true;
    if (p->global_blocks > 0 && kb_min < p->global_blocks) return true;
  }
  return false;
}

#endif
