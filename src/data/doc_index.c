#include "data/doc_index.h"

#include <stdlib.h>

#include "core/error.h"

int lt_doc_index_create(lt_doc_index *ix, lt_dataset *data) {
  *ix = (lt_doc_index){.data = data, .n_offsets = data->n_docs + 1};
  ix->n_sparse = (ix->n_offsets + LT_DOC_INDEX_STRIDE - 1) / LT_DOC_INDEX_STRIDE;
  ix->sparse = malloc((size_t)ix->n_sparse * sizeof *ix->sparse);
  ix->block = malloc(LT_DOC_INDEX_STRIDE * sizeof *ix->block);
  LT_CHECK(ix->sparse && ix->block, LT_ERR_MEMORY, "out of memory indexing the documents of %s",
           data->path);
  return lt_dataset_read_doc_offsets(data, 0, LT_DOC_INDEX_STRIDE, ix->n_sparse, ix->sparse);
}

void lt_doc_index_destroy(lt_doc_index *ix) {
  free(ix->sparse);
  free(ix->block);
  *ix = (lt_doc_index){0};
}

int lt_doc_index_starts(lt_doc_index *ix, uint64_t begin, uint64_t end, uint64_t *starts,
                        int64_t *n) {
  *n = 0;
  // The last sparse entry at or before `begin` (sparse[0] is 0): the documents of interest start
  // in its block or later.
  int64_t lo = 0, hi = ix->n_sparse - 1;
  while (lo < hi) {
    int64_t mid = (lo + hi + 1) / 2;
    if (ix->sparse[mid] <= begin)
      lo = mid;
    else
      hi = mid - 1;
  }
  for (int64_t first = lo * LT_DOC_INDEX_STRIDE; first < ix->n_offsets;
       first += LT_DOC_INDEX_STRIDE) {
    int64_t count =
        ix->n_offsets - first < LT_DOC_INDEX_STRIDE ? ix->n_offsets - first : LT_DOC_INDEX_STRIDE;
    LT_TRY(lt_dataset_read_doc_offsets(ix->data, first, 1, count, ix->block));
    for (int64_t i = 0; i < count; i++) {
      uint64_t start = ix->block[i];
      if (start >= end) return LT_OK;
      if (start > begin && (*n == 0 || start > starts[*n - 1])) starts[(*n)++] = start;
    }
  }
  return LT_OK;
}
