// Which (query, key) pairs the flash attention kernels may see, on the GPU: lt_attn_spec's rule
// (kernels.h) pair by pair, the same bound tile by tile (a tile with no visible pair is skipped,
// one whose pairs are all visible needs no mask), and the ranges of tiles a tile can reach, found
// by a search rather than a scan, so that a sliding window's work grows with T, not T^2. The
// rules match kernels/cpu/attention_mask.h, which the CPU reference uses.
//
// The ranges rest on one order: a token's key (doc, pos) as the number doc * 2^32 + pos
// (positions are >= 0 and below 2^31). A query sees only keys of its document at or before its
// position, so its visible keys lie in [start of its document, its own key]; the sparse pattern
// narrows that to a band below the query (window, local blocks) and the first positions of the
// document (sinks, global blocks). Where the tiles of a batch row come in that order (their
// smallest and largest keys both never decrease along the row, as with the loader's positions,
// restarted or not at each document, and with context parallelism's chunks), a range of keys is
// a range of tiles. Where they do not, every tile is classified, as without a pattern.
#ifndef LT_ATTENTION_MASK_CUH
#define LT_ATTENTION_MASK_CUH

#include <stdint.h>

#include "kernels/cuda/cuda_common.cuh"

typedef struct attn_mask {
  bool causal, docs; // docs: document ids are given
  bool sparse;       // some part of the pattern is on
  lt_attn_sparsity pattern;
  // Under causality, how far the keys a query sees can lie from it (in positions of its
  // document): within `band` below it (window, local blocks: max(window, local_blocks *
  // block_size)), below `prefix` (sinks, global blocks: max(sinks, global_blocks * block_size)),
  // or, with `anywhere` (strided blocks, or no pattern), at any earlier position.
  int64_t band, prefix;
  bool anywhere;
} attn_mask;

// The pattern's reach, from the spec (host side): see attn_mask.
static inline attn_mask attn_mask_of(const lt_attn_spec *spec) {
  const lt_attn_sparsity *p = &spec->sparse;
  attn_mask m = {};
  m.causal = spec->causal;
  m.docs = spec->q_doc.data != nullptr;
  m.sparse =
      p->window > 0 || p->sinks > 0 || p->local_blocks > 0 || p->stride > 0 || p->global_blocks > 0;
  m.pattern = *p;
  const int64_t local = p->block_size > 0 ? (int64_t)p->local_blocks * p->block_size : 0;
  const int64_t global = p->block_size > 0 ? (int64_t)p->global_blocks * p->block_size : 0;
  // Positions are below 2^31, so reaches past 2^32 are all alike (and the key sums cannot
  // overflow).
  const int64_t cap = (int64_t)1 << 32;
  m.band = p->window > local ? p->window : local;
  m.prefix = p->sinks > global ? p->sinks : global;
  m.band = m.band < cap ? m.band : cap;
  m.prefix = m.prefix < cap ? m.prefix : cap;
  m.anywhere = !m.sparse || p->stride > 0;
  return m;
}

// Whether the spec needs the kernels' SPARSE instantiation (attn_params.sparse_kernel): a sparse
// pattern, head gates or a tile count.
static inline bool attn_spec_needs_sparse_kernel(const lt_attn_spec *spec) {
  return attn_mask_of(spec).sparse || spec->head_gates.data || spec->tiles_visited;
}

// (doc, pos) as one ordered number, and the first and last keys of a key's document.
__host__ __device__ __forceinline__ int64_t attn_key(int32_t pos, int32_t doc) {
  return (int64_t)doc * ((int64_t)1 << 32) + pos;
}
__device__ __forceinline__ int64_t doc_first_key(int64_t key) {
  return key & ~(int64_t)0xffffffff;
}
__device__ __forceinline__ int64_t doc_last_key(int64_t key) {
  return key | (int64_t)0xffffffff;
}

// Whether the sparse pattern lets query position qp see key position kp (lt_cpu_pattern_allows).
__device__ __forceinline__ bool pattern_allows(const lt_attn_sparsity &p, int32_t qp, int32_t kp) {
  const int64_t d = (int64_t)qp - kp;
  if (p.window > 0 && (d < 0 ? -d : d) < p.window) return true;
  if (p.sinks > 0 && kp < p.sinks) return true;
  if (p.block_size > 0) {
    const int64_t kb = kp / p.block_size, db = qp / p.block_size - kb;
    if (p.local_blocks > 0 && (db < 0 ? -db : db) < p.local_blocks) return true;
    if (p.stride > 0 && db % p.stride == 0) return true;
    if (p.global_blocks > 0 && kb < p.global_blocks) return true;
  }
  return false;
}

// Whether query position/document (qp, qd) sees key (kp, kd): lt_attn_spec's rule. SPARSE: the
// kernels' instantiation that may meet a pattern (attn_params.sparse_kernel); the dense one
// compiles the pattern out.
template <bool SPARSE>
__device__ __forceinline__ bool pair_visible(const attn_mask &m, int32_t qp, int32_t qd, int32_t kp,
                                             int32_t kd) {
  return (!m.causal || kp <= qp) && (!m.docs || qd == kd) &&
         (!SPARSE || !m.sparse || pattern_allows(m.pattern, qp, kp));
}

// Which pairs of a query tile and a key tile may attend, from their ranges alone.
enum { TILE_HIDDEN = 0, TILE_FULL = 1, TILE_PARTIAL = 2 };

__device__ __forceinline__ int64_t min_abs(int64_t lo, int64_t hi) {
  return lo <= 0 && hi >= 0 ? 0 : lo > 0 ? lo : -hi;
}
__device__ __forceinline__ int64_t max_abs(int64_t lo, int64_t hi) {
  return -lo > hi ? -lo : hi;
}
__device__ __forceinline__ int64_t floor_div(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// The pattern alone over two tiles whose positions span q = (min, max) and k: TILE_HIDDEN when
// it allows no pair, TILE_FULL when it allows every pair. Every pair's difference qp - kp lies in
// [q.min - k.max, q.max - k.min] (its block difference likewise): a part that allows no
// difference there allows no pair, one that allows every difference there allows every pair.
// (lt_cpu_tile_may_be_visible, with the full case added.)
__device__ __forceinline__ int classify_pattern(const attn_mask &m, int4 q, int4 k) {
  const lt_attn_sparsity &p = m.pattern;
  const int64_t lo = (int64_t)q.x - k.y, hi = (int64_t)q.y - k.x;
  const int64_t seen_lo = m.causal && lo < 0 ? 0 : lo; // causality hides the rest anyway
  bool some = false, all = false;
  if (p.window > 0) {
    some |= min_abs(seen_lo, hi) < p.window;
    all |= max_abs(lo, hi) < p.window;
  }
  if (p.sinks > 0) {
    some |= k.x < p.sinks;
    all |= k.y < p.sinks;
  }
  if (p.block_size > 0) {
    const int64_t bs = p.block_size, kb_lo = k.x / bs, kb_hi = k.y / bs;
    const int64_t blo = q.x / bs - kb_hi, bhi = q.y / bs - kb_lo;
    const int64_t seen_blo = m.causal && blo < 0 ? 0 : blo;
    if (p.local_blocks > 0) {
      some |= min_abs(seen_blo, bhi) < p.local_blocks;
      all |= max_abs(blo, bhi) < p.local_blocks;
    }
    if (p.stride > 0) {
      some |= floor_div(bhi, p.stride) * p.stride >= seen_blo;
      all |= blo == bhi && blo % p.stride == 0;
    }
    if (p.global_blocks > 0) {
      some |= kb_lo < p.global_blocks;
      all |= kb_hi < p.global_blocks;
    }
  }
  return all ? TILE_FULL : some ? TILE_PARTIAL : TILE_HIDDEN;
}

// q, k: (pos min, pos max, doc min, doc max) of a query tile and a key tile; ragged: the tiles
// run past the end of the rows, so some of their pairs do not exist. SPARSE as in pair_visible.
template <bool SPARSE>
__device__ __forceinline__ int classify_tiles(const attn_mask &m, int4 q, int4 k, bool ragged) {
  if (m.causal && k.x > q.y) return TILE_HIDDEN;              // every key after every query
  if (m.docs && (k.w < q.z || k.z > q.w)) return TILE_HIDDEN; // no document in common
  const bool full =
      !ragged && (!m.causal || k.y <= q.x) && (!m.docs || (q.z == q.w && k.z == k.w && q.z == k.z));
  if (!SPARSE || !m.sparse) return full ? TILE_FULL : TILE_PARTIAL;
  const int pattern = classify_pattern(m, q, k);
  if (pattern == TILE_HIDDEN) return TILE_HIDDEN;
  return full && pattern == TILE_FULL ? TILE_FULL : TILE_PARTIAL;
}

// The first t in [0, n) where pred(t) holds, for a predicate false then true along t; n if none.
// The warp probes 32 places per round, so 2048 tiles take three rounds of loads. All 32 lanes
// must call it together; each gets the answer.
template <typename F> __device__ int warp_search(int n, F &&pred) {
  const int lane = threadIdx.x & 31;
  int lo = 0, hi = n; // the answer lies in [lo, hi]
  while (lo < hi) {
    const int step = (hi - lo + 31) / 32, at = lo + (lane + 1) * step - 1;
    const unsigned valid = __ballot_sync(0xffffffffu, at < hi);
    const unsigned yes = __ballot_sync(0xffffffffu, at < hi && pred(at));
    const int n_no = __popc(valid & ~yes); // the probes where pred fails come first
    const int next_lo = lo + n_no * step;
    hi = yes ? next_lo + step - 1 : hi;
    lo = next_lo;
  }
  return lo;
}

// The intervals of keys whose tiles a query tile walks, in order (at most two): the document
// starts (sinks, global blocks) and the band up to the tile's last query. qk: the query tile's
// (smallest, largest) key. Under causality a query in the tile's first document sees keys in
// [its document's start, its key]; a query of a later document of the tile has that document
// start after the tile's first key, so [band start, largest key] holds every document start but
// the first's. Returns how many; -1 (every tile) without causality or key order (in_order).
__device__ __forceinline__ int key_intervals(const attn_mask &m, longlong2 qk, bool in_order,
                                             longlong2 (&iv)[2]) {
  if (!m.causal || !in_order) return -1;
  const int64_t start = doc_first_key(qk.x), into_doc = qk.x - start;
  const int64_t reach = m.anywhere ? into_doc : (m.band > 0 ? m.band - 1 : 0);
  const int64_t band_lo = reach >= into_doc ? start : qk.x - reach;
  int count = 0;
  if (m.prefix > 0 && band_lo > start)
    iv[count++] = make_longlong2(start, start + m.prefix - 1 < qk.y ? start + m.prefix - 1 : qk.y);
  iv[count++] = make_longlong2(band_lo, qk.y);
  return count;
}

// The interval of query keys that may see a key tile: from its smallest key kk.x to the end of
// its last document, or, where the tile holds no key of a document's start (pos_min: its
// smallest position) and the pattern reaches a band only, to `band` past its largest key.
// Returns 1, or -1 (every tile) without causality or query order (in_order).
__device__ __forceinline__ int query_interval(const attn_mask &m, longlong2 kk, int pos_min,
                                              bool in_order, longlong2 &iv) {
  if (!m.causal || !in_order) return -1;
  int64_t hi = doc_last_key(kk.y);
  if (!m.anywhere && !(pos_min < m.prefix)) {
    const int64_t band_hi = kk.y + (m.band > 0 ? m.band - 1 : 0);
    hi = band_hi < hi ? band_hi : hi;
  }
  iv = make_longlong2(kk.x, hi);
  return 1;
}

// One bound of the tiles that may hold keys of interval part / 2 (tiles in key order): for an
// even part the first tile whose largest key reaches the interval, for an odd one the first tile
// past it (whose smallest key lies beyond). A warp finds one (warp_search); the block's warps
// find them all at once, into bounds[part].
__device__ __forceinline__ void search_bound(const longlong2 *keys, int n, const longlong2 *iv,
                                             int part, int *bounds) {
  const longlong2 v = iv[part >> 1];
  const int t = part & 1 ? warp_search(n, [&](int i) { return keys[i].x > v.y; })
                         : warp_search(n, [&](int i) { return keys[i].y >= v.x; });
  if ((threadIdx.x & 31) == 0) bounds[part] = t;
}

// The tile ranges [x, y) of `count` intervals from their bounds, merged where they meet (unused
// ranges empty); count -1: all n tiles.
__device__ __forceinline__ void ranges_of(const int *bounds, int count, int n, int2 (&ranges)[2]) {
  ranges[0] = ranges[1] = make_int2(0, 0);
  if (count < 0) {
    ranges[0] = make_int2(0, n);
    return;
  }
  for (int i = 0; i < count; i++) {
    const int first = bounds[2 * i], past = bounds[2 * i + 1];
    ranges[i] = make_int2(first, past > first ? past : first);
  }
  if (count == 2 && ranges[0].y >= ranges[1].x) {
    ranges[0].y = ranges[1].y > ranges[0].y ? ranges[1].y : ranges[0].y;
    ranges[1] = make_int2(0, 0);
  }
}

#endif
