// HDF5 token datasets (the format of DESIGN.md), readable with h5py:
//   /tokens       1-D unsigned integers (uint32, or uint16 when the vocab fits)
//   /doc_offsets  1-D uint64: where each document starts, then the token count (n_docs + 1)
//   attributes    vocab_size, eos_id (int64), tokenizer (string), format_version (int64)
// Readers take hyperslabs: a dataset never has to fit in memory. Files are written in HDF5's 1.10
// format (checksummed metadata) with Fletcher-32 on every chunk of data.
#ifndef LT_DATASET_H
#define LT_DATASET_H

#include <stdint.h>

#include "core/config.h"
#include "core/tensor.h"

#define LT_DATASET_FORMAT_VERSION 1

typedef struct lt_dataset {
  char path[LT_PATH_MAX];
  int64_t file, tokens, offsets; // HDF5 handles
  int64_t file_size;             // bytes, to refuse reads that a damaged file sends past its end
  // NULL when HDF5 checksums every part of the file's metadata that the reader touches; else
  // why not (a static string): HDF5 1.10 may crash or hang on damage there (README, Data).
  const char *unchecked;
  int64_t n_tokens, n_docs;
  int vocab_size, eos_id, token_bits;
  char tokenizer[64];
} lt_dataset;

int lt_dataset_open(lt_dataset *ds, const char *path);
// tokens[start, start + count) into out as int32; ids outside the vocab are a data error.
int lt_dataset_read(lt_dataset *ds, int64_t start, int64_t count, int32_t *out);
// Document offsets start, start + stride, ... (count of them; n_docs + 1 in all) into out; they
// must be in order and within the token count (a data error otherwise).
int lt_dataset_read_doc_offsets(lt_dataset *ds, int64_t start, int64_t stride, int64_t count,
                                uint64_t *out);
void lt_dataset_close(lt_dataset *ds);

// Writing, for `longtrain prepare`: append documents, then commit. The file appears at its path
// only when lt_dataset_writer_commit succeeds (it is written under a temporary name and renamed),
// so an interrupted prepare never leaves a half-written dataset behind.
typedef struct lt_dataset_writer {
  char path[LT_PATH_MAX], tmp_path[LT_PATH_MAX + 16];
  int64_t file, tokens;
  int token_bits, vocab_size, eos_id;
  char tokenizer[64];
  int64_t n_tokens;
  uint64_t *doc_offsets;
  int64_t n_docs, docs_capacity;
} lt_dataset_writer;

int lt_dataset_writer_open(lt_dataset_writer *w, const char *path, const char *tokenizer,
                           int vocab_size, int eos_id);
// Appends one document's ids (the caller adds the EOS it wants).
int lt_dataset_writer_add(lt_dataset_writer *w, const int32_t *ids, int64_t n);
int lt_dataset_writer_commit(lt_dataset_writer *w);
// Abandons the write and removes the temporary file.
void lt_dataset_writer_abort(lt_dataset_writer *w);

#endif
