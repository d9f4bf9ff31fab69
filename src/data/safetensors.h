// safetensors, Hugging Face's tensor file format: an 8-byte little-endian header length N, N bytes
// of JSON header, then the data section. The header maps each tensor's name to
// {"dtype": "BF16", "shape": [4096, 4096], "data_offsets": [begin, end]} (byte offsets into the
// data section) and may hold "__metadata__": {string: string}. Large models come as shards with a
// model.safetensors.index.json: {"metadata": {...}, "weight_map": {tensor name: shard file}}.
//
// Reading validates what the reference implementation validates: the header fits the file, every
// dtype is known, every tensor's bytes match its shape, and the tensors tile the data section
// exactly (no overlap, no gap, nothing after). Any violation is an LT_ERR_DATA naming the file and
// the tensor. Tensors are read one at a time, converted to f32 (from F32, F16 or BF16).
#ifndef LT_SAFETENSORS_H
#define LT_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/hashmap.h"

typedef enum lt_st_dtype {
  LT_ST_BOOL,
  LT_ST_U8,
  LT_ST_I8,
  LT_ST_F8_E4M3,
  LT_ST_F8_E5M2,
  LT_ST_I16,
  LT_ST_U16,
  LT_ST_F16,
  LT_ST_BF16,
  LT_ST_I32,
  LT_ST_U32,
  LT_ST_F32,
  LT_ST_I64,
  LT_ST_U64,
  LT_ST_F64,
  LT_ST_N_DTYPES
} lt_st_dtype;

const char *lt_st_dtype_name(lt_st_dtype dtype);
size_t lt_st_dtype_size(lt_st_dtype dtype);

enum { LT_ST_MAX_DIMS = 8 };

typedef struct lt_st_tensor {
  char *name;
  lt_st_dtype dtype;
  int ndim;
  int64_t shape[LT_ST_MAX_DIMS];
  int64_t numel;
  uint64_t begin, end; // byte offsets into its file's data section
  int file;            // index into lt_safetensors.files
} lt_st_tensor;

typedef struct lt_st_file {
  char path[LT_PATH_MAX];
  int fd;               // -1 when parsed from memory
  const uint8_t *bytes; // the whole file, when parsed from memory
  uint64_t data_start, data_size;
} lt_st_file;

typedef struct lt_safetensors {
  char path[LT_PATH_MAX]; // what was opened: a file, an index, or a folder
  lt_st_file *files;
  int n_files;
  lt_st_tensor *tensors;
  int n_tensors;
  lt_strmap by_name; // tensor name -> index into tensors
  char **metadata;   // __metadata__ of the (first) file: key, value, key, value, ...
  int n_metadata;
} lt_safetensors;

// Opens a .safetensors file, a model.safetensors.index.json and its shards, or a folder holding
// model.safetensors or model.safetensors.index.json.
int lt_safetensors_open(lt_safetensors *st, const char *path);
// Parses a whole safetensors file held in memory (`name` labels it in messages); data must outlive
// st. A libFuzzer target is this plus lt_safetensors_read_f32 of every tensor: any input must give
// LT_OK or an error, never a crash or an out-of-bounds read.
int lt_safetensors_parse(lt_safetensors *st, const void *data, size_t size, const char *name);
void lt_safetensors_close(lt_safetensors *st);

// The tensor called `name`, or NULL.
const lt_st_tensor *lt_safetensors_find(const lt_safetensors *st, const char *name);
// The __metadata__ value of `key`, or NULL.
const char *lt_safetensors_metadata(const lt_safetensors *st, const char *key);
// The tensor's values as f32 into out (t->numel of them). Other dtypes than F32, F16 and BF16 are
// an LT_ERR_DATA naming the tensor.
int lt_safetensors_read_f32(const lt_safetensors *st, const lt_st_tensor *t, float *out);

// One tensor to write: f32 values stored as dtype (LT_ST_F32, or LT_ST_BF16 rounded to nearest
// even as PyTorch rounds).
typedef struct lt_st_entry {
  const char *name;
  lt_st_dtype dtype;
  int ndim;
  int64_t shape[LT_ST_MAX_DIMS];
  const float *data;
} lt_st_entry;

// Writes the tensors, in order, to `path` (under a temporary name, then renamed). `metadata` is
// NULL or key, value, ..., NULL: the __metadata__ strings (Hugging Face expects "format": "pt").
int lt_safetensors_write(const char *path, const lt_st_entry *tensors, int n,
                         const char *const *metadata);

#endif
