// Small HDF5 helpers shared by the dataset and checkpoint formats: attributes, files in a
// checksummed format, and the checks that keep a corrupt file from reaching HDF5's decoder.
//
// HDF5 trusts a file's metadata: a chunk index that claims a 4 GiB chunk makes it allocate 4 GiB,
// and chunk dimensions that disagree with the stored chunk sizes make it copy past its buffers
// (both found by fuzzing HDF5 1.10). lt_h5_check_selection looks up every chunk a read will touch
// and refuses any whose stored size or place is not what a file of ours can hold, so a damaged
// file is a one-line error and never a crash.
#ifndef LT_H5UTIL_H
#define LT_H5UTIL_H

#include <hdf5.h>
#include <stdbool.h>
#include <stdint.h>

// Once per process, before any other HDF5 call: silences HDF5's own error printing and its exit
// handler (see h5util.c). lt_h5_create, lt_h5_open and the dataset reader call it.
void lt_h5_init(void);
// Creates (truncating) `path` in HDF5's 1.10 format, whose metadata (superblock, object headers,
// chunk indexes) carries checksums that HDF5 verifies on every read. h5py reads it. The root
// group records no times: objects made with lt_h5_no_times too leave the same bytes for the same
// content (a checkpoint's CRC-32C then depends on its content alone).
hid_t lt_h5_create(const char *path);
// A group or dataset creation property list `plist` set to record no access or modification
// times; returns it.
hid_t lt_h5_no_times(hid_t plist);
// Opens read-only with HDF5's own error printing silenced (errors are reported by the caller).
hid_t lt_h5_open(const char *path);

int lt_h5_write_i64(hid_t obj, const char *name, int64_t value);
int lt_h5_write_f64(hid_t obj, const char *name, double value);
int lt_h5_write_i64_array(hid_t obj, const char *name, const int64_t *values, int n);
int lt_h5_write_string(hid_t obj, const char *name, const char *value);
// Readers return 0, or -1 when the attribute is absent or of another kind.
int lt_h5_read_i64(hid_t obj, const char *name, int64_t *out);
int lt_h5_read_f64(hid_t obj, const char *name, double *out);
// Whether attribute `name` is a variable-length string (kept in the file's global heap, which no
// HDF5 format checksums), read from its type alone.
bool lt_h5_is_variable_string(hid_t obj, const char *name);
// At most `cap` values; *n receives how many there are (-1 on failure).
int lt_h5_read_i64_array(hid_t obj, const char *name, int64_t *out, int cap, int *n);
// Fixed or variable length; cut to cap - 1 characters.
int lt_h5_read_string(hid_t obj, const char *name, char *out, size_t cap);
// Allocates the string (caller frees); at most LT_H5_MAX_STRING bytes (a config is kilobytes:
// more is a damaged file).
#define LT_H5_MAX_STRING ((size_t)16 << 20)
int lt_h5_read_string_alloc(hid_t obj, const char *name, char **out);

// Whether a read of the hyperslab [start, start + count) of `dset` is safe in a file of
// `file_size` bytes: the data is contiguous and inside the file, or chunked with no filter but
// Fletcher-32 and every chunk the selection touches is allocated, unfiltered-size-exact and
// inside the file. Returns NULL when safe, else what is wrong (a static string).
const char *lt_h5_check_selection(hid_t dset, int ndim, const uint64_t *start,
                                  const uint64_t *count, int64_t file_size);

// The version of the HDF5 superblock of the file at `path`, read without HDF5 (the signature at
// byte 0, 512, 1024, 2048, ...), or -1. From version 2 on (HDF5 1.8's format and later, which
// lt_h5_create writes), HDF5 checksums all of a file's metadata but its global heap (where
// variable-length strings live); versions 0 and 1 (HDF5's earliest format, h5py's default)
// checksum none of it.
int lt_h5_superblock_version(const char *path);

// The size of the file at `path` in bytes, or -1.
int64_t lt_file_size(const char *path);

#endif
