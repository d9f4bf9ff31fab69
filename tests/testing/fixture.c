#include "fixture.h"

#include <hdf5.h>

#include "testing.h"

void lt_fixture_open(lt_fixture *fx, const char *path) {
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  fx->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (fx->file < 0) fail_msg("cannot open fixture %s", path);
}

void lt_fixture_close(lt_fixture *fx) {
  H5Fclose(fx->file);
}

int64_t lt_fixture_numel(lt_fixture *fx, const char *name) {
  if (H5Lexists(fx->file, name, H5P_DEFAULT) <= 0) return -1;
  hid_t d = H5Dopen2(fx->file, name, H5P_DEFAULT);
  hid_t space = H5Dget_space(d);
  int64_t n = H5Sget_simple_extent_npoints(space);
  H5Sclose(space);
  H5Dclose(d);
  return n;
}

static void read_as(lt_fixture *fx, const char *name, hid_t type, void *out, int64_t n) {
  int64_t have = lt_fixture_numel(fx, name);
  if (have != n)
    fail_msg("fixture dataset %s has %lld elements, expected %lld", name, (long long)have,
             (long long)n);
  hid_t d = H5Dopen2(fx->file, name, H5P_DEFAULT);
  if (H5Dread(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0) fail_msg("cannot read %s", name);
  H5Dclose(d);
}

void lt_fixture_read_f32(lt_fixture *fx, const char *name, float *out, int64_t n) {
  read_as(fx, name, H5T_NATIVE_FLOAT, out, n);
}

void lt_fixture_read_i32(lt_fixture *fx, const char *name, int32_t *out, int64_t n) {
  read_as(fx, name, H5T_NATIVE_INT32, out, n);
}

double lt_fixture_attr(lt_fixture *fx, const char *name) {
  if (H5Aexists(fx->file, name) <= 0) fail_msg("fixture has no attribute %s", name);
  hid_t a = H5Aopen(fx->file, name, H5P_DEFAULT);
  double v = 0;
  if (H5Aread(a, H5T_NATIVE_DOUBLE, &v) < 0) fail_msg("cannot read attribute %s", name);
  H5Aclose(a);
  return v;
}

int64_t lt_fixture_data_offset(const char *path, const char *name) {
  lt_fixture fx;
  lt_fixture_open(&fx, path);
  hid_t set = H5Dopen2(fx.file, name, H5P_DEFAULT);
  if (set < 0) fail_msg("%s has no dataset %s", path, name);
  hid_t dcpl = H5Dget_create_plist(set);
  haddr_t addr = HADDR_UNDEF;
  if (H5Pget_layout(dcpl) == H5D_CHUNKED) {
    hsize_t offset[4], size;
    unsigned mask;
    hid_t space = H5Dget_space(set);
    herr_t rc = H5Dget_chunk_info(set, space, 0, offset, &mask, &addr, &size);
    H5Sclose(space);
    if (rc < 0) fail_msg("no chunk info for %s in %s", name, path);
  } else {
    addr = H5Dget_offset(set);
  }
  H5Pclose(dcpl);
  H5Dclose(set);
  lt_fixture_close(&fx);
  if (addr == HADDR_UNDEF) fail_msg("%s in %s has no data on disk", name, path);
  return (int64_t)addr;
}

// A contiguous 1-D dataset `name` of n elements, as h5py writes one.
static void write_contiguous(hid_t file, const char *name, hid_t file_type, hid_t mem_type,
                             hsize_t n, const void *values) {
  hid_t space = H5Screate_simple(1, &n, NULL);
  hid_t set = H5Dcreate2(file, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  assert_true(H5Dwrite(set, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values) >= 0);
  H5Dclose(set);
  H5Sclose(space);
}

void lt_fixture_write_h5py_dataset(const char *path, const uint32_t *tokens, int64_t n_tokens,
                                   int64_t vocab) {
  hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  assert_true(file >= 0);
  if (tokens)
    write_contiguous(file, "tokens", H5T_STD_U32LE, H5T_NATIVE_UINT32, (hsize_t)n_tokens, tokens);
  const uint64_t offsets[2] = {0, (uint64_t)n_tokens};
  write_contiguous(file, "doc_offsets", H5T_STD_U64LE, H5T_NATIVE_UINT64, 2, offsets);
  const char *names[2] = {"vocab_size", "eos_id"};
  int64_t values[2] = {vocab, vocab - 1};
  for (int i = 0; i < 2; i++) {
    hid_t scalar = H5Screate(H5S_SCALAR);
    hid_t attr = H5Acreate2(file, names[i], H5T_STD_I64LE, scalar, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(H5Awrite(attr, H5T_NATIVE_INT64, &values[i]) >= 0);
    H5Aclose(attr);
    H5Sclose(scalar);
  }
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, H5T_VARIABLE);
  H5Tset_cset(type, H5T_CSET_UTF8);
  hid_t scalar = H5Screate(H5S_SCALAR);
  hid_t attr = H5Acreate2(file, "tokenizer", type, scalar, H5P_DEFAULT, H5P_DEFAULT);
  const char *tokenizer = "byte";
  assert_true(H5Awrite(attr, type, &tokenizer) >= 0);
  H5Aclose(attr);
  H5Sclose(scalar);
  H5Tclose(type);
  H5Fclose(file);
}
