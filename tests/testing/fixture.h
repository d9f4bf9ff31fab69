// Reading the HDF5 fixtures of tests/fixtures (made by the committed Python scripts there).
#ifndef LT_FIXTURE_H
#define LT_FIXTURE_H

#include <stdint.h>

typedef struct lt_fixture {
  int64_t file;
} lt_fixture;

void lt_fixture_open(lt_fixture *fx, const char *path);
void lt_fixture_close(lt_fixture *fx);
// The element count of dataset `name`, or -1 if it is absent.
int64_t lt_fixture_numel(lt_fixture *fx, const char *name);
// Reads dataset `name` (any numeric type) as f32 / i32 into out, which holds exactly n elements;
// fails the test if the sizes differ.
void lt_fixture_read_f32(lt_fixture *fx, const char *name, float *out, int64_t n);
void lt_fixture_read_i32(lt_fixture *fx, const char *name, int32_t *out, int64_t n);
double lt_fixture_attr(lt_fixture *fx, const char *name);
// The byte offset in file `path` where the data of dataset `name` starts (its first chunk when
// chunked), for tests that corrupt it.
int64_t lt_fixture_data_offset(const char *path, const char *name);

// A token dataset written directly, for what lt_dataset_writer refuses to make: /tokens (uint32)
// only when `tokens` is not NULL, /doc_offsets (one document) and the attributes. Laid out as h5py
// writes by default: HDF5's earliest format (no metadata checksums), contiguous datasets without
// Fletcher-32, the string attribute variable-length UTF-8.
void lt_fixture_write_h5py_dataset(const char *path, const uint32_t *tokens, int64_t n_tokens,
                                   int64_t vocab);

#endif
