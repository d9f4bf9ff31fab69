#include "data/dataset.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "core/fsutil.h"
#include "core/h5util.h"

// Tokens are stored in chunks of this many, each with a Fletcher-32 checksum that HDF5 verifies
// on every read, so a flipped bit on disk is an error rather than silent garbage.
enum { TOKEN_CHUNK = 1 << 18, OFFSETS_CHUNK = 1 << 16 };

// Closes what was opened and reports "PATH: what", so each message names the file.
static int open_fail(lt_dataset *ds, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int open_fail(lt_dataset *ds, const char *fmt, ...) {
  char what[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  int rc = lt_fail(LT_ERR_DATA, "%s: %s", ds->path, what);
  lt_dataset_close(ds);
  return rc;
}

// Opens 1-D dataset `name` of unsigned or signed integers of `bits` (any of them when 0).
static int open_ids(lt_dataset *ds, const char *name, int64_t *handle, int64_t *length) {
  if (H5Lexists(ds->file, name, H5P_DEFAULT) <= 0)
    return open_fail(ds, "has no /%s dataset: make a token dataset with `longtrain prepare`", name);
  *handle = H5Dopen2(ds->file, name, H5P_DEFAULT);
  if (*handle < 0) return open_fail(ds, "cannot open /%s (corrupt?): prepare it again", name);
  hid_t space = H5Dget_space(*handle), type = H5Dget_type(*handle);
  int rank = H5Sget_simple_extent_ndims(space);
  hsize_t dims[1] = {0};
  if (rank == 1) H5Sget_simple_extent_dims(space, dims, NULL);
  bool integer = H5Tget_class(type) == H5T_INTEGER;
  size_t bytes = H5Tget_size(type);
  bool unsigned_int = integer && H5Tget_sign(type) == H5T_SGN_NONE;
  H5Sclose(space);
  H5Tclose(type);
  if (rank != 1)
    return open_fail(ds, "/%s must be 1-D: make a token dataset with `longtrain prepare`", name);
  if (strcmp(name, "tokens") == 0) {
    ds->token_bits = (int)bytes * 8;
    if (!unsigned_int || (bytes != 2 && bytes != 4))
      return open_fail(
          ds, "/tokens must be uint16 or uint32: make a token dataset with `longtrain prepare`");
  } else if (!integer || bytes != 8) {
    return open_fail(ds,
                     "/%s must be 64-bit integers: make a token dataset with `longtrain "
                     "prepare`",
                     name);
  }
  // Without compression (which lt_h5_check_selection refuses) n elements take n * bytes of file:
  // a larger claim is a damaged header, refused before anything is sized by it.
  if (dims[0] > (hsize_t)ds->file_size / bytes)
    return open_fail(ds,
                     "/%s claims %llu elements, more than the file holds (truncated or "
                     "corrupt): prepare it again",
                     name, (unsigned long long)dims[0]);
  *length = (int64_t)dims[0];
  return LT_OK;
}

int lt_dataset_open(lt_dataset *ds, const char *path) {
  *ds = (lt_dataset){.file = -1, .tokens = -1, .offsets = -1};
  snprintf(ds->path, sizeof ds->path, "%s", path);
  lt_h5_init();
  if (access(path, R_OK) != 0)
    return lt_fail(LT_ERR_DATA, "%s: %s: make it with `longtrain prepare --output %s FILES...`",
                   path, strerror(errno), path);
  if (H5Fis_hdf5(path) <= 0)
    return lt_fail(LT_ERR_DATA,
                   "%s: not an HDF5 file (truncated, or not made by `longtrain "
                   "prepare`): prepare it again",
                   path);
  ds->file_size = lt_file_size(path);
  if (lt_h5_superblock_version(path) < 2)
    ds->unchecked =
        "is in HDF5's earliest format (h5py's default), whose metadata has no checksums";
  ds->file = lt_h5_open(path);
  if (ds->file < 0)
    return open_fail(ds, "cannot open the HDF5 file (truncated or corrupt?): prepare it again");
  LT_TRY(open_ids(ds, "tokens", &ds->tokens, &ds->n_tokens));
  int64_t vocab, eos, version = 1;
  if (lt_h5_read_i64(ds->file, "vocab_size", &vocab) != 0)
    return open_fail(
        ds,
        "missing the integer attribute vocab_size: make a token dataset with `longtrain prepare`");
  if (lt_h5_read_i64(ds->file, "eos_id", &eos) != 0)
    return open_fail(
        ds, "missing the integer attribute eos_id: make a token dataset with `longtrain prepare`");
  if (!ds->unchecked && lt_h5_is_variable_string(ds->file, "tokenizer"))
    ds->unchecked = "keeps its tokenizer attribute as a variable-length string (h5py's default for "
                    "str), which HDF5 stores without a checksum";
  if (lt_h5_read_string(ds->file, "tokenizer", ds->tokenizer, sizeof ds->tokenizer) != 0)
    return open_fail(
        ds,
        "missing the string attribute tokenizer: make a token dataset with `longtrain prepare`");
  lt_h5_read_i64(ds->file, "format_version", &version);
  if (version > LT_DATASET_FORMAT_VERSION)
    return open_fail(
        ds, "format_version %lld is newer than this longtrain reads (%d): upgrade longtrain",
        (long long)version, LT_DATASET_FORMAT_VERSION);
  if (vocab < 2 || vocab > INT32_MAX)
    return open_fail(ds, "vocab_size %lld is out of range", (long long)vocab);
  ds->vocab_size = (int)vocab;
  ds->eos_id = (int)eos;
  int64_t n_offsets;
  LT_TRY(open_ids(ds, "doc_offsets", &ds->offsets, &n_offsets));
  uint64_t ends[2] = {1, 0};
  ds->n_docs = n_offsets - 1;
  if (n_offsets >= 1) {
    int rc = lt_dataset_read_doc_offsets(ds, 0, 1, 1, ends);
    if (rc == LT_OK) rc = lt_dataset_read_doc_offsets(ds, n_offsets - 1, 1, 1, ends + 1);
    if (rc != LT_OK) {
      lt_dataset_close(ds);
      return rc;
    }
  }
  if (ends[0] != 0 || ends[1] != (uint64_t)ds->n_tokens)
    return open_fail(ds, "/doc_offsets does not run from 0 to the token count (truncated or "
                         "corrupt?): prepare it again");
  return LT_OK;
}

// Elements start, start + stride, ... (count of them) of a 1-D dataset, converted to `mem_type`,
// after checking that the read stays inside the file (lt_h5_check_selection).
static int read_range(lt_dataset *ds, hid_t dset, const char *name, int64_t start, int64_t stride,
                      int64_t count, hid_t mem_type, void *out) {
  const uint64_t h_start = (uint64_t)start, h_stride = (uint64_t)stride, h_count = (uint64_t)count;
  const uint64_t span = (h_count - 1) * h_stride + 1;
  const char *problem = lt_h5_check_selection(dset, 1, &h_start, &span, ds->file_size);
  LT_CHECK(!problem, LT_ERR_DATA,
           "%s: cannot read /%s [%lld, %lld): %s (truncated or corrupt): prepare it again",
           ds->path, name, (long long)start, (long long)(start + (int64_t)span), problem);
  hid_t space = H5Dget_space(dset);
  H5Sselect_hyperslab(space, H5S_SELECT_SET, (const hsize_t *)&h_start, (const hsize_t *)&h_stride,
                      (const hsize_t *)&h_count, NULL);
  hid_t mem = H5Screate_simple(1, (const hsize_t *)&h_count, NULL);
  herr_t rc = H5Dread(dset, mem_type, mem, space, H5P_DEFAULT, out);
  H5Sclose(mem);
  H5Sclose(space);
  LT_CHECK(rc >= 0, LT_ERR_DATA,
           "%s: cannot read /%s [%lld, %lld): the file is corrupt (checksum mismatch) or "
           "truncated: prepare it again",
           ds->path, name, (long long)start, (long long)(start + (int64_t)span));
  return LT_OK;
}

int lt_dataset_read(lt_dataset *ds, int64_t start, int64_t count, int32_t *out) {
  LT_ASSERT(start >= 0 && count >= 0 && start + count <= ds->n_tokens);
  if (count == 0) return LT_OK;
  LT_TRY(read_range(ds, ds->tokens, "tokens", start, 1, count, H5T_NATIVE_UINT32, out));
  const uint32_t *raw = (const uint32_t *)out;
  for (int64_t i = 0; i < count; i++)
    LT_CHECK(raw[i] < (uint32_t)ds->vocab_size, LT_ERR_DATA,
             "%s: token %u at position %lld is outside the dataset's vocab_size %d: the dataset "
             "is corrupt; prepare it again",
             ds->path, raw[i], (long long)(start + i), ds->vocab_size);
  return LT_OK;
}

int lt_dataset_read_doc_offsets(lt_dataset *ds, int64_t start, int64_t stride, int64_t count,
                                uint64_t *out) {
  LT_ASSERT(start >= 0 && stride >= 1 && count >= 0);
  if (count == 0) return LT_OK;
  LT_ASSERT(start + (count - 1) * stride <= ds->n_docs);
  LT_TRY(read_range(ds, ds->offsets, "doc_offsets", start, stride, count, H5T_NATIVE_UINT64, out));
  for (int64_t i = 0; i < count; i++)
    LT_CHECK(out[i] <= (uint64_t)ds->n_tokens && (i == 0 || out[i] >= out[i - 1]), LT_ERR_DATA,
             "%s: /doc_offsets[%lld] = %llu is out of order or past the token count: the "
             "dataset is corrupt; prepare it again",
             ds->path, (long long)(start + i * stride), (unsigned long long)out[i]);
  return LT_OK;
}

void lt_dataset_close(lt_dataset *ds) {
  // HDF5 ids are positive, so a zeroed lt_dataset (its owner failed before opening it) closes
  // as a no-op instead of printing HDF5's error stack.
  if (ds->tokens > 0) H5Dclose(ds->tokens);
  if (ds->offsets > 0) H5Dclose(ds->offsets);
  if (ds->file > 0) H5Fclose(ds->file);
  ds->tokens = ds->offsets = ds->file = -1;
}

// --- writing ---

int lt_dataset_writer_open(lt_dataset_writer *w, const char *path, const char *tokenizer,
                           int vocab_size, int eos_id) {
  *w = (lt_dataset_writer){.file = -1, .tokens = -1, .vocab_size = vocab_size, .eos_id = eos_id};
  snprintf(w->path, sizeof w->path, "%s", path);
  snprintf(w->tmp_path, sizeof w->tmp_path, "%s.tmp%d", path, (int)getpid());
  snprintf(w->tokenizer, sizeof w->tokenizer, "%s", tokenizer);
  w->token_bits = vocab_size <= 65536 ? 16 : 32;
  w->file = lt_h5_create(w->tmp_path);
  LT_CHECK(w->file >= 0, LT_ERR_IO, "%s: cannot create the dataset file: %s", path,
           errno ? strerror(errno) : "HDF5 error");
  hsize_t dims = 0, max = H5S_UNLIMITED, chunk = TOKEN_CHUNK;
  hid_t space = H5Screate_simple(1, &dims, &max);
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, 1, &chunk);
  H5Pset_fletcher32(dcpl);
  w->tokens = H5Dcreate2(w->file, "tokens", w->token_bits == 16 ? H5T_STD_U16LE : H5T_STD_U32LE,
                         space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  H5Pclose(dcpl);
  H5Sclose(space);
  if (w->tokens < 0) {
    lt_dataset_writer_abort(w);
    return lt_fail(LT_ERR_IO, "%s: cannot create /tokens", path);
  }
  return LT_OK;
}

// Room for one more document start and for the final offset that commit appends.
static int reserve_offsets(lt_dataset_writer *w) {
  if (w->n_docs + 2 <= w->docs_capacity) return LT_OK;
  int64_t cap = w->docs_capacity ? 2 * w->docs_capacity : 1024;
  uint64_t *grown = realloc(w->doc_offsets, (size_t)cap * sizeof *grown);
  LT_CHECK(grown, LT_ERR_MEMORY, "out of memory preparing %s", w->path);
  w->doc_offsets = grown, w->docs_capacity = cap;
  return LT_OK;
}

int lt_dataset_writer_add(lt_dataset_writer *w, const int32_t *ids, int64_t n) {
  LT_TRY(reserve_offsets(w));
  w->doc_offsets[w->n_docs++] = (uint64_t)w->n_tokens;
  if (n == 0) return LT_OK;
  for (int64_t i = 0; i < n; i++)
    LT_CHECK(ids[i] >= 0 && ids[i] < w->vocab_size, LT_ERR_INTERNAL,
             "token id %d outside the tokenizer's vocab %d", ids[i], w->vocab_size);
  hsize_t new_size = (hsize_t)(w->n_tokens + n), start = (hsize_t)w->n_tokens, count = (hsize_t)n;
  herr_t rc = H5Dset_extent(w->tokens, &new_size);
  hid_t space = H5Dget_space(w->tokens);
  H5Sselect_hyperslab(space, H5S_SELECT_SET, &start, NULL, &count, NULL);
  hid_t mem = H5Screate_simple(1, &count, NULL);
  if (rc >= 0) rc = H5Dwrite(w->tokens, H5T_NATIVE_INT32, mem, space, H5P_DEFAULT, ids);
  H5Sclose(mem);
  H5Sclose(space);
  LT_CHECK(rc >= 0, LT_ERR_IO, "%s: writing tokens failed (disk full?)", w->tmp_path);
  w->n_tokens += n;
  return LT_OK;
}

int lt_dataset_writer_commit(lt_dataset_writer *w) {
  int reserved = reserve_offsets(w); // a dataset without documents has no room reserved yet
  if (reserved) {
    lt_dataset_writer_abort(w);
    return reserved;
  }
  w->doc_offsets[w->n_docs] = (uint64_t)w->n_tokens;
  hsize_t n_off = (hsize_t)w->n_docs + 1;
  hid_t space = H5Screate_simple(1, &n_off, NULL);
  // Checksummed like the tokens; a chunk of at most OFFSETS_CHUNK keeps tiny datasets tiny.
  hsize_t chunk = n_off < OFFSETS_CHUNK ? n_off : OFFSETS_CHUNK;
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, 1, &chunk);
  H5Pset_fletcher32(dcpl);
  hid_t offsets =
      H5Dcreate2(w->file, "doc_offsets", H5T_STD_U64LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  H5Pclose(dcpl);
  herr_t rc = offsets < 0 ? -1
                          : H5Dwrite(offsets, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                                     w->doc_offsets);
  if (offsets >= 0) H5Dclose(offsets);
  H5Sclose(space);
  int attrs = lt_h5_write_i64(w->file, "vocab_size", w->vocab_size) |
              lt_h5_write_i64(w->file, "eos_id", w->eos_id) |
              lt_h5_write_i64(w->file, "format_version", LT_DATASET_FORMAT_VERSION) |
              lt_h5_write_string(w->file, "tokenizer", w->tokenizer);
  H5Dclose(w->tokens);
  w->tokens = -1;
  if (H5Fclose(w->file) < 0) rc = -1;
  w->file = -1;
  if (rc < 0 || attrs != 0) {
    lt_dataset_writer_abort(w);
    return lt_fail(LT_ERR_IO, "%s: writing the dataset failed (disk full?); nothing was replaced",
                   w->path);
  }
  int err = lt_commit_file(w->tmp_path, w->path);
  if (err) {
    lt_dataset_writer_abort(w);
    return err;
  }
  free(w->doc_offsets);
  w->doc_offsets = NULL;
  return LT_OK;
}

void lt_dataset_writer_abort(lt_dataset_writer *w) {
  if (w->tokens >= 0) H5Dclose(w->tokens);
  if (w->file >= 0) H5Fclose(w->file);
  w->tokens = w->file = -1;
  unlink(w->tmp_path);
  free(w->doc_offsets);
  w->doc_offsets = NULL;
}
