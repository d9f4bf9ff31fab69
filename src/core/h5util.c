#include "core/h5util.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/tensor.h"

void lt_h5_init(void) {
  static bool done = false;
  if (done) return;
  done = true;
  // HDF5 1.10 closes files left open at exit, and a file whose close failed for a full disk is
  // left half-closed: closing it again at exit crashes. longtrain closes every file itself.
  H5dont_atexit();
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL); // errors are reported by longtrain, in one line
}

hid_t lt_h5_create(const char *path) {
  lt_h5_init();
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS), fcpl = H5Pcreate(H5P_FILE_CREATE);
  H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_V110);
  H5Pset_obj_track_times(fcpl, false); // the root group's
  hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, fcpl, fapl);
  H5Pclose(fcpl);
  H5Pclose(fapl);
  return file;
}

hid_t lt_h5_no_times(hid_t plist) {
  H5Pset_obj_track_times(plist, false);
  return plist;
}

hid_t lt_h5_open(const char *path) {
  lt_h5_init();
  return H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
}

static int write_attr(hid_t obj, const char *name, hid_t file_type, hid_t mem_type, hid_t space,
                      const void *value) {
  hid_t attr = H5Acreate2(obj, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT);
  herr_t rc = attr < 0 ? -1 : H5Awrite(attr, mem_type, value);
  if (attr >= 0 && H5Aclose(attr) < 0) rc = -1;
  H5Sclose(space);
  return rc < 0 ? -1 : 0;
}

int lt_h5_write_i64(hid_t obj, const char *name, int64_t value) {
  return write_attr(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, H5Screate(H5S_SCALAR), &value);
}

int lt_h5_write_f64(hid_t obj, const char *name, double value) {
  return write_attr(obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, H5Screate(H5S_SCALAR), &value);
}

int lt_h5_write_i64_array(hid_t obj, const char *name, const int64_t *values, int n) {
  hsize_t dims = (hsize_t)n;
  return write_attr(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, H5Screate_simple(1, &dims, NULL),
                    values);
}

int lt_h5_write_string(hid_t obj, const char *name, const char *value) {
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, strlen(value) + 1);
  int rc = write_attr(obj, name, type, type, H5Screate(H5S_SCALAR), value);
  H5Tclose(type);
  return rc;
}

// Opens attribute `name` when it exists and has `want` as its type class.
static hid_t open_attr(hid_t obj, const char *name, H5T_class_t want) {
  if (H5Aexists(obj, name) <= 0) return -1;
  hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
  if (attr < 0) return -1;
  hid_t type = H5Aget_type(attr);
  bool ok = type >= 0 && H5Tget_class(type) == want;
  if (type >= 0) H5Tclose(type);
  if (!ok) H5Aclose(attr);
  return ok ? attr : -1;
}

// The element count of an attribute's dataspace, or -1.
static int64_t attr_points(hid_t attr) {
  hid_t space = H5Aget_space(attr);
  int64_t n = space < 0 ? -1 : (int64_t)H5Sget_simple_extent_npoints(space);
  if (space >= 0) H5Sclose(space);
  return n;
}

static int read_scalar(hid_t obj, const char *name, H5T_class_t cls, hid_t mem, void *out) {
  hid_t attr = open_attr(obj, name, cls);
  if (attr < 0) return -1;
  herr_t rc = attr_points(attr) == 1 ? H5Aread(attr, mem, out) : -1;
  H5Aclose(attr);
  return rc < 0 ? -1 : 0;
}

int lt_h5_read_i64(hid_t obj, const char *name, int64_t *out) {
  return read_scalar(obj, name, H5T_INTEGER, H5T_NATIVE_INT64, out);
}

int lt_h5_read_f64(hid_t obj, const char *name, double *out) {
  return read_scalar(obj, name, H5T_FLOAT, H5T_NATIVE_DOUBLE, out);
}

bool lt_h5_is_variable_string(hid_t obj, const char *name) {
  hid_t attr = open_attr(obj, name, H5T_STRING);
  if (attr < 0) return false;
  hid_t type = H5Aget_type(attr);
  const bool variable = type >= 0 && H5Tis_variable_str(type) > 0;
  if (type >= 0) H5Tclose(type);
  H5Aclose(attr);
  return variable;
}

int lt_h5_read_i64_array(hid_t obj, const char *name, int64_t *out, int cap, int *n) {
  *n = -1;
  hid_t attr = open_attr(obj, name, H5T_INTEGER);
  if (attr < 0) return -1;
  int64_t points = attr_points(attr);
  herr_t rc = points >= 0 && points <= cap ? H5Aread(attr, H5T_NATIVE_INT64, out) : -1;
  H5Aclose(attr);
  if (rc < 0) return -1;
  *n = (int)points;
  return 0;
}

int lt_h5_read_string_alloc(hid_t obj, const char *name, char **out) {
  *out = NULL;
  hid_t attr = open_attr(obj, name, H5T_STRING);
  if (attr < 0) return -1;
  hid_t type = H5Aget_type(attr);
  int rc = -1;
  if (attr_points(attr) != 1) {
    rc = -1;
  } else if (!H5Tis_variable_str(type)) { // refused unread when it claims too much
    size_t size = H5Tget_size(type);
    char *buf = size <= LT_H5_MAX_STRING ? calloc(1, size + 1) : NULL;
    if (buf && H5Aread(attr, type, buf) >= 0) {
      *out = buf;
      rc = 0;
    } else {
      free(buf);
    }
  } else { // variable length, as h5py writes by default (in UTF-8)
    char *value = NULL;
    hid_t mem = H5Tcopy(H5T_C_S1);
    H5Tset_size(mem, H5T_VARIABLE);
    H5Tset_cset(mem, H5Tget_cset(type)); // HDF5 converts between no two character sets
    if (H5Aread(attr, mem, &value) >= 0 && value) {
      if (strlen(value) <= LT_H5_MAX_STRING) *out = strdup(value);
      rc = *out ? 0 : -1;
      H5free_memory(value);
    }
    H5Tclose(mem);
  }
  H5Tclose(type);
  H5Aclose(attr);
  return rc;
}

int lt_h5_read_string(hid_t obj, const char *name, char *out, size_t cap) {
  char *value;
  if (lt_h5_read_string_alloc(obj, name, &value) != 0) return -1;
  size_t n = strlen(value) < cap - 1 ? strlen(value) : cap - 1;
  memcpy(out, value, n);
  out[n] = '\0';
  free(value);
  return 0;
}

// A chunked layout: every chunk the selection touches must be allocated, stored at exactly its
// unfiltered size (plus Fletcher-32's 4 bytes) and lie inside the file.
static const char *check_chunks(hid_t dset, hid_t dcpl, int ndim, size_t elem,
                                const uint64_t *start, const uint64_t *count, int64_t file_size) {
  hsize_t chunk[LT_MAX_DIMS];
  if (ndim > LT_MAX_DIMS || H5Pget_chunk(dcpl, LT_MAX_DIMS, chunk) != ndim)
    return "its chunk layout does not match its shape";
  bool fletcher = false;
  int n_filters = H5Pget_nfilters(dcpl);
  for (int i = 0; i < n_filters; i++) {
    unsigned flags, cd[8];
    size_t n_cd = 8;
    char filter_name[64];
    if (H5Pget_filter2(dcpl, (unsigned)i, &flags, &n_cd, cd, sizeof filter_name, filter_name,
                       NULL) != H5Z_FILTER_FLETCHER32)
      return "it uses an HDF5 filter other than Fletcher-32 (compression is not supported)";
    fletcher = true;
  }
  uint64_t chunk_elems = 1;
  for (int d = 0; d < ndim; d++) {
    if (chunk[d] == 0 || chunk[d] > ((uint64_t)1 << 31)) return "its chunk shape is corrupt";
    chunk_elems *= chunk[d];
    if (chunk_elems > ((uint64_t)1 << 31)) return "its chunks are larger than 2^31 elements";
  }
  const uint64_t chunk_bytes = chunk_elems * elem + (fletcher ? 4 : 0);
  hsize_t first[LT_MAX_DIMS], last[LT_MAX_DIMS], at[LT_MAX_DIMS];
  for (int d = 0; d < ndim; d++) {
    if (count[d] == 0) return NULL;
    first[d] = start[d] / chunk[d];
    last[d] = (start[d] + count[d] - 1) / chunk[d];
    at[d] = first[d];
  }
  for (;;) { // every chunk coordinate in [first, last], last dimension fastest
    hsize_t offset[LT_MAX_DIMS];
    for (int d = 0; d < ndim; d++) offset[d] = at[d] * chunk[d];
    unsigned mask = 0;
    haddr_t addr = HADDR_UNDEF;
    hsize_t size = 0;
    if (H5Dget_chunk_info_by_coord(dset, offset, &mask, &addr, &size) < 0)
      return "its chunk index is unreadable";
    if (addr == HADDR_UNDEF) return "a chunk of its data is missing";
    if (mask != 0 || size != chunk_bytes) return "a chunk's stored size disagrees with its shape";
    if (addr + size > (uint64_t)file_size) return "a chunk lies past the end of the file";
    int d = ndim - 1;
    while (d >= 0 && at[d] == last[d]) at[d] = first[d], d--;
    if (d < 0) return NULL;
    at[d]++;
  }
}

const char *lt_h5_check_selection(hid_t dset, int ndim, const uint64_t *start,
                                  const uint64_t *count, int64_t file_size) {
  hid_t dcpl = H5Dget_create_plist(dset), type = H5Dget_type(dset), space = H5Dget_space(dset);
  const char *problem = NULL;
  size_t elem = type < 0 ? 0 : H5Tget_size(type);
  hssize_t points = space < 0 ? -1 : H5Sget_simple_extent_npoints(space);
  if (dcpl < 0 || elem == 0 || points < 0) {
    problem = "its description is unreadable";
  } else if (H5Pget_layout(dcpl) == H5D_CONTIGUOUS) {
    haddr_t addr = H5Dget_offset(dset);
    uint64_t bytes = (uint64_t)points * elem;
    if (points > 0 && (addr == HADDR_UNDEF || H5Dget_storage_size(dset) != bytes ||
                       addr + bytes > (uint64_t)file_size))
      problem = "its data lies past the end of the file";
  } else if (H5Pget_layout(dcpl) == H5D_CHUNKED) {
    problem = check_chunks(dset, dcpl, ndim, elem, start, count, file_size);
  }
  if (dcpl >= 0) H5Pclose(dcpl);
  if (type >= 0) H5Tclose(type);
  if (space >= 0) H5Sclose(space);
  return problem;
}

int lt_h5_superblock_version(const char *path) {
  static const unsigned char signature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  int version = -1;
  unsigned char head[9];
  for (long at = 0; version < 0 && at <= ((long)1 << 40); at = at ? 2 * at : 512) {
    if (fseek(f, at, SEEK_SET) != 0 || fread(head, 1, sizeof head, f) != sizeof head) break;
    if (memcmp(head, signature, sizeof signature) == 0) version = head[8];
  }
  fclose(f);
  return version;
}

int64_t lt_file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (int64_t)st.st_size : -1;
}
