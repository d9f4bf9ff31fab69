// Random inputs for the attention kernels, with the positions and documents that mask them.
#ifndef LT_ATTENTION_CASE_H
#define LT_ATTENTION_CASE_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/kernels.h"

typedef struct lt_test_attn_case {
  int64_t B, Tq, Tk;
  int hq, hkv, d;
  float *q, *k, *v, *o, *lse; // (B, Tq, hq, d), (B, Tk, hkv, d) twice, outputs: o, lse (B, hq, Tq)
  int32_t *q_pos, *k_pos, *q_doc, *k_doc;
  lt_attn_spec spec; // causal, scale 1/sqrt(d), no sparse pattern
} lt_test_attn_case;

// q, k, v ~ N(0, 1) from `seed`. The queries are the last Tq of the Tk key positions (a chunk at
// the end of the sequence). With doc_len > 0, documents of doc_len tokens mask the case (the doc
// ids are filled either way), and with `restart` positions count from each document's start.
void lt_test_attn_case_make(lt_test_attn_case *c, int64_t B, int64_t Tq, int64_t Tk, int hq,
                            int hkv, int d, int doc_len, bool restart, uint64_t seed);
void lt_test_attn_case_free(lt_test_attn_case *c);
// Key rows [start, start + n) of every batch row of `full` with all its queries, as a case of its
// own (the same spec but for the keys).
void lt_test_attn_key_chunk(const lt_test_attn_case *full, lt_test_attn_case *part, int64_t start,
                            int64_t n);

// Views of the case's buffers (or of others of the same size).
lt_tensor lt_test_attn_q(const lt_test_attn_case *c, float *x);   // (B, Tq, hq, d)
lt_tensor lt_test_attn_kv(const lt_test_attn_case *c, float *x);  // (B, Tk, hkv, d)
lt_tensor lt_test_attn_lse(const lt_test_attn_case *c, float *x); // (B, hq, Tq)

#endif
