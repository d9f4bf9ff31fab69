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

#endif
