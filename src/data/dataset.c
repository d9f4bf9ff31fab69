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

// Tokens are stored in chunks of this many, each with a Fletcher-32 checksum that HDF5 verifies
// on every read, so a flipped bit on disk is an error rather than silent garbage.
enum { TOKEN_CHUNK = 1 << 18 };

static int read_int_attr(hid_t obj, const char *name, int64_t *out) {
  if (H5Aexists(obj, name) <= 0) return -1;
  hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
  if (attr < 0) return -1;
  herr_t rc = H5Aread(attr, H5T_NATIVE_INT64, out);
  H5Aclose(attr);
  return rc < 0 ? -1 : 0;
}

static int read_string_attr(hid_t obj, const char *name, char *out, size_t cap) {
  if (H5Aexists(obj, name) <= 0) return -1;
  hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
  hid_t type = H5Aget_type(attr);
  int rc = -1;
  if (H5Tget_class(type) == H5T_STRING && !H5Tis_variable_str(type)) {
    size_t size = H5Tget_size(type);
    char *buf = calloc(1, size + 1);
    if (buf && H5Aread(attr, type, buf) >= 0) {
      snprintf(out, cap, "%s", buf);
      rc = 0;
    }
    free(buf);
  } else if (H5Tget_class(type) == H5T_STRING) { // variable-length, as h5py writes by default
    char *value = NULL;
    hid_t mem = H5Tcopy(H5T_C_S1);
    H5Tset_size(mem, H5T_VARIABLE);
    if (H5Aread(attr, mem, &value) >= 0 && value) {
      snprintf(out, cap, "%s", value);
      H5free_memory(value);
      rc = 0;
    }
    H5Tclose(mem);
  }
  H5Tclose(type);
  H5Aclose(attr);
  return rc;
}

static int write_int_attr(hid_t obj, const char *name, int64_t value) {
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t attr = H5Acreate2(obj, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
  herr_t rc = attr < 0 ? -1 : H5Awrite(attr, H5T_NATIVE_INT64, &value);
  if (attr >= 0) H5Aclose(attr);
  H5Sclose(space);
  return rc < 0 ? -1 : 0;
}

static int write_string_attr(hid_t obj, const char *name, const char *value) {
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, strlen(value) + 1);
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t attr = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  herr_t rc = attr < 0 ? -1 : H5Awrite(attr, type, value);
  if (attr >= 0) H5Aclose(attr);
  H5Sclose(space);
  H5Tclose(type);
  return rc < 0 ? -1 : 0;
}

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

int lt_dataset_open(lt_dataset *ds, const char *path) {
  *ds = (lt_dataset){.file = -1, .tokens = -1};
  snprintf(ds->path, sizeof ds->path, "%s", path);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL); // errors are reported here, in one line
  if (access(path, R_OK) != 0)
    return lt_fail(LT_ERR_DATA, "%s: %s: make it with `longtrain prepare --output %s FILES...`",
                   path, strerror(errno), path);
  if (H5Fis_hdf5(path) <= 0)
    return lt_fail(LT_ERR_DATA,
                   "%s: not an HDF5 file (truncated, or not made by `longtrain "
                   "prepare`): prepare it again",
                   path);
  ds->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (ds->file < 0)
    return open_fail(ds, "cannot open the HDF5 file (truncated or corrupt?): prepare it again");
  if (H5Lexists(ds->file, "tokens", H5P_DEFAULT) <= 0)
    return open_fail(ds, "has no /tokens dataset: make a token dataset with `longtrain prepare`");
  ds->tokens = H5Dopen2(ds->file, "tokens", H5P_DEFAULT);
  hid_t space = H5Dget_space(ds->tokens), type = H5Dget_type(ds->tokens);
  int rank = H5Sget_simple_extent_ndims(space);
  hsize_t dims[1] = {0};
  if (rank == 1) H5Sget_simple_extent_dims(space, dims, NULL);
  bool unsigned_int = H5Tget_class(type) == H5T_INTEGER && H5Tget_sign(type) == H5T_SGN_NONE;
  ds->token_bits = (int)H5Tget_size(type) * 8;
  H5Sclose(space);
  H5Tclose(type);
  if (rank != 1)
    return open_fail(ds, "/tokens must be 1-D: make a token dataset with `longtrain prepare`");
  if (!unsigned_int || (ds->token_bits != 16 && ds->token_bits != 32))
    return open_fail(
        ds, "/tokens must be uint16 or uint32: make a token dataset with `longtrain prepare`");
  ds->n_tokens = (int64_t)dims[0];
  int64_t vocab, eos, version = 1;
  if (read_int_attr(ds->file, "vocab_size", &vocab) != 0)
    return open_fail(
        ds,
        "missing the integer attribute vocab_size: make a token dataset with `longtrain prepare`");
  if (read_int_attr(ds->file, "eos_id", &eos) != 0)
    return open_fail(
        ds, "missing the integer attribute eos_id: make a token dataset with `longtrain prepare`");
  if (read_string_attr(ds->file, "tokenizer", ds->tokenizer, sizeof ds->tokenizer) != 0)
    return open_fail(
        ds,
        "missing the string attribute tokenizer: make a token dataset with `longtrain prepare`");
  read_int_attr(ds->file, "format_version", &version);
  if (version > LT_DATASET_FORMAT_VERSION)
    return open_fail(
        ds, "format_version %lld is newer than this longtrain reads (%d): upgrade longtrain",
        (long long)version, LT_DATASET_FORMAT_VERSION);
  if (vocab < 2 || vocab > INT32_MAX)
    return open_fail(ds, "vocab_size %lld is out of range", (long long)vocab);
  ds->vocab_size = (int)vocab;
  ds->eos_id = (int)eos;
  if (H5Lexists(ds->file, "doc_offsets", H5P_DEFAULT) <= 0)
    return open_fail(ds,
                     "has no /doc_offsets dataset: make a token dataset with `longtrain prepare`");
  hid_t offsets = H5Dopen2(ds->file, "doc_offsets", H5P_DEFAULT);
  hid_t ospace = H5Dget_space(offsets);
  hsize_t n_off = 0;
  if (H5Sget_simple_extent_ndims(ospace) == 1) H5Sget_simple_extent_dims(ospace, &n_off, NULL);
  uint64_t last = 0;
  herr_t rc = -1;
  if (n_off >= 1) {
    hsize_t start = n_off - 1, count = 1;
    H5Sselect_hyperslab(ospace, H5S_SELECT_SET, &start, NULL, &count, NULL);
    hid_t mem = H5Screate_simple(1, &count, NULL);
    rc = H5Dread(offsets, H5T_NATIVE_UINT64, mem, ospace, H5P_DEFAULT, &last);
    H5Sclose(mem);
  }
  H5Sclose(ospace);
  H5Dclose(offsets);
  if (rc < 0 || last != (uint64_t)ds->n_tokens)
    return open_fail(ds, "/doc_offsets does not end at the token count (truncated or corrupt?): "
                         "prepare it again");
  ds->n_docs = (int64_t)n_off - 1;
  return LT_OK;
}

int lt_dataset_read(lt_dataset *ds, int64_t start, int64_t count, int32_t *out) {
  LT_ASSERT(start >= 0 && count >= 0 && start + count <= ds->n_tokens);
  if (count == 0) return LT_OK;
  hid_t space = H5Dget_space(ds->tokens);
  hsize_t h_start = (hsize_t)start, h_count = (hsize_t)count;
  H5Sselect_hyperslab(space, H5S_SELECT_SET, &h_start, NULL, &h_count, NULL);
  hid_t mem = H5Screate_simple(1, &h_count, NULL);
  herr_t rc = H5Dread(ds->tokens, H5T_NATIVE_UINT32, mem, space, H5P_DEFAULT, out);
  H5Sclose(mem);
  H5Sclose(space);
  LT_CHECK(rc >= 0, LT_ERR_DATA,
           "%s: cannot read tokens [%lld, %lld): the file is corrupt (checksum mismatch) or "
           "truncated: prepare it again",
           ds->path, (long long)start, (long long)(start + count));
  const uint32_t *raw = (const uint32_t *)out;
  for (int64_t i = 0; i < count; i++)
    LT_CHECK(raw[i] < (uint32_t)ds->vocab_size, LT_ERR_DATA,
             "%s: token %u at position %lld is outside the dataset's vocab_size %d: the dataset "
             "is corrupt; prepare it again",
             ds->path, raw[i], (long long)(start + i), ds->vocab_size);
  return LT_OK;
}

int lt_dataset_read_doc_offsets(lt_dataset *ds, uint64_t *out) {
  hid_t offsets = H5Dopen2(ds->file, "doc_offsets", H5P_DEFAULT);
  herr_t rc =
      offsets < 0 ? -1 : H5Dread(offsets, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, out);
  if (offsets >= 0) H5Dclose(offsets);
  LT_CHECK(rc >= 0, LT_ERR_DATA, "%s: cannot read /doc_offsets (corrupt?)", ds->path);
  return LT_OK;
}

void lt_dataset_close(lt_dataset *ds) {
  // HDF5 ids are positive, so a zeroed lt_dataset (its owner failed before opening it) closes
  // as a no-op instead of printing HDF5's error stack.
  if (ds->tokens > 0) H5Dclose(ds->tokens);
  if (ds->file > 0) H5Fclose(ds->file);
  ds->tokens = ds->file = -1;
}

// --- writing ---

int lt_dataset_writer_open(lt_dataset_writer *w, const char *path, const char *tokenizer,
                           int vocab_size, int eos_id) {
  *w = (lt_dataset_writer){.file = -1, .tokens = -1, .vocab_size = vocab_size, .eos_id = eos_id};
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  snprintf(w->path, sizeof w->path, "%s", path);
  snprintf(w->tmp_path, sizeof w->tmp_path, "%s.tmp%d", path, (int)getpid());
  snprintf(w->tokenizer, sizeof w->tokenizer, "%s", tokenizer);
  w->token_bits = vocab_size <= 65536 ? 16 : 32;
  w->file = H5Fcreate(w->tmp_path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
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
  hid_t offsets = H5Dcreate2(w->file, "doc_offsets", H5T_STD_U64LE, space, H5P_DEFAULT, H5P_DEFAULT,
                             H5P_DEFAULT);
  herr_t rc = offsets < 0 ? -1
                          : H5Dwrite(offsets, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                                     w->doc_offsets);
  if (offsets >= 0) H5Dclose(offsets);
  H5Sclose(space);
  int attrs = write_int_attr(w->file, "vocab_size", w->vocab_size) |
              write_int_attr(w->file, "eos_id", w->eos_id) |
              write_int_attr(w->file, "format_version", LT_DATASET_FORMAT_VERSION) |
              write_string_attr(w->file, "tokenizer", w->tokenizer);
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
