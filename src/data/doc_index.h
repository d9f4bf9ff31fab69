// Which documents a token range touches, without holding /doc_offsets in memory: every
// LT_DOC_INDEX_STRIDE-th offset stays in memory (8 bytes per 1024 documents) and the offsets
// between two of them are read as one hyperslab when a range needs them.
#ifndef LT_DOC_INDEX_H
#define LT_DOC_INDEX_H

#include <stdint.h>

#include "data/dataset.h"

#define LT_DOC_INDEX_STRIDE 1024

typedef struct lt_doc_index {
  lt_dataset *data;
  int64_t n_offsets; // n_docs + 1
  int64_t n_sparse;
  uint64_t *sparse; // offsets[k * STRIDE]
  uint64_t *block;  // STRIDE offsets, read on demand
} lt_doc_index;

int lt_doc_index_create(lt_doc_index *ix, lt_dataset *data);
void lt_doc_index_destroy(lt_doc_index *ix);
// The document starts s with begin < s < end, ascending and without repeats (empty documents
// start where the next one does), into starts; at most end - begin - 1 of them. *n receives the
// count.
int lt_doc_index_starts(lt_doc_index *ix, uint64_t begin, uint64_t end, uint64_t *starts,
                        int64_t *n);

#endif
