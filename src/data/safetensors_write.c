// Writing safetensors files (format in data/safetensors.h): the header as the reference writer
// lays it out (__metadata__ first, padded with spaces to a multiple of 8 bytes so that the data
// starts aligned), then each tensor's bytes in the order given.
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "core/fsutil.h"
#include "data/safetensors.h"

// f32 to bf16, rounding to nearest even as PyTorch's .to(torch.bfloat16) does; NaN stays a (quiet)
// NaN instead of rounding into infinity.
static uint16_t f32_to_bf16(float x) {
  uint32_t bits;
  memcpy(&bits, &x, 4);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((bits >> 16) | 0x40u);
  return (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

static int64_t numel_of(const lt_st_entry *e) {
  int64_t n = 1;
  for (int d = 0; d < e->ndim; d++) n *= e->shape[d];
  return n;
}

// The header JSON (unpadded; caller frees).
static int build_header(const lt_st_entry *tensors, int n, const char *const *metadata,
                        const char *path, char **out) {
  cJSON *root = cJSON_CreateObject(), *meta = NULL;
  int rc = root ? LT_OK : lt_fail(LT_ERR_MEMORY, "out of memory writing %s", path);
  if (rc == LT_OK && metadata && metadata[0]) {
    meta = cJSON_AddObjectToObject(root, "__metadata__");
    for (int i = 0; meta && metadata[i] && metadata[i + 1]; i += 2)
      if (!cJSON_AddStringToObject(meta, metadata[i], metadata[i + 1])) meta = NULL;
    if (!meta) rc = lt_fail(LT_ERR_MEMORY, "out of memory writing %s", path);
  }
  uint64_t offset = 0;
  for (int i = 0; i < n && rc == LT_OK; i++) {
    const lt_st_entry *e = &tensors[i];
    if (e->dtype != LT_ST_F32 && e->dtype != LT_ST_BF16)
      rc = lt_fail_internal(__FILE__, __LINE__, "%s: tensor '%s': can write F32 or BF16, not %s",
                            path, e->name, lt_st_dtype_name(e->dtype));
    else if (cJSON_GetObjectItemCaseSensitive(root, e->name))
      rc = lt_fail_internal(__FILE__, __LINE__, "%s: tensor '%s' given twice", path, e->name);
    if (rc != LT_OK) break;
    cJSON *t = cJSON_AddObjectToObject(root, e->name);
    cJSON *shape = cJSON_AddArrayToObject(t, "shape");
    cJSON *offsets = cJSON_AddArrayToObject(t, "data_offsets");
    bool ok =
        t && shape && offsets && cJSON_AddStringToObject(t, "dtype", lt_st_dtype_name(e->dtype));
    for (int d = 0; ok && d < e->ndim; d++)
      ok = cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)e->shape[d]));
    uint64_t end = offset + (uint64_t)numel_of(e) * lt_st_dtype_size(e->dtype);
    ok = ok && cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)offset)) &&
         cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)end));
    if (!ok) rc = lt_fail(LT_ERR_MEMORY, "out of memory writing %s", path);
    offset = end;
  }
  *out = rc == LT_OK ? cJSON_PrintUnformatted(root) : NULL;
  if (rc == LT_OK && !*out) rc = lt_fail(LT_ERR_MEMORY, "out of memory writing %s", path);
  cJSON_Delete(root);
  return rc;
}

static int write_data(FILE *f, const lt_st_entry *e, const char *path) {
  int64_t n = numel_of(e);
  if (e->dtype == LT_ST_F32) {
    LT_CHECK(fwrite(e->data, 4, (size_t)n, f) == (size_t)n, LT_ERR_IO, "%s: write failed: %s", path,
             strerror(errno));
    return LT_OK;
  }
  enum { CHUNK = 1 << 15 };
  uint16_t half[CHUNK];
  for (int64_t done = 0; done < n; done += CHUNK) {
    size_t k = (size_t)(n - done < CHUNK ? n - done : CHUNK);
    for (size_t i = 0; i < k; i++) half[i] = f32_to_bf16(e->data[done + (int64_t)i]);
    LT_CHECK(fwrite(half, 2, k, f) == k, LT_ERR_IO, "%s: write failed: %s", path, strerror(errno));
  }
  return LT_OK;
}

int lt_safetensors_write(const char *path, const lt_st_entry *tensors, int n,
                         const char *const *metadata) {
  char *header;
  LT_TRY(build_header(tensors, n, metadata, path, &header));
  size_t len = strlen(header), padded = (len + 7) / 8 * 8;
  char tmp[LT_PATH_MAX + 32];
  snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid());
  FILE *f = fopen(tmp, "wb");
  if (!f) {
    free(header);
    return lt_fail(LT_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
  }
  uint8_t len_bytes[8];
  for (int i = 0; i < 8; i++) len_bytes[i] = (uint8_t)((uint64_t)padded >> (8 * i));
  int rc = fwrite(len_bytes, 1, 8, f) == 8 && fwrite(header, 1, len, f) == len
               ? LT_OK
               : lt_fail(LT_ERR_IO, "%s: write failed: %s", path, strerror(errno));
  for (size_t i = len; i < padded && rc == LT_OK; i++)
    if (fputc(' ', f) == EOF)
      rc = lt_fail(LT_ERR_IO, "%s: write failed: %s", path, strerror(errno));
  free(header);
  for (int i = 0; i < n && rc == LT_OK; i++) rc = write_data(f, &tensors[i], path);
  if (fclose(f) != 0 && rc == LT_OK)
    rc = lt_fail(LT_ERR_IO, "%s: write failed: %s", path, strerror(errno));
  if (rc == LT_OK) rc = lt_commit_file(tmp, path);
  if (rc != LT_OK) remove(tmp);
  return rc;
}
