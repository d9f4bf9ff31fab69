// Reading safetensors files and sharded sets (the format is described in data/safetensors.h).
#include "data/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "core/fsutil.h"
#include "data/unicode_class.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian");

// The reference implementation refuses larger headers; so does longtrain (a corrupt length field
// must not become a 10 GB allocation).
#define MAX_HEADER 100000000ull

static const struct {
  const char *name;
  size_t size;
} dtypes[LT_ST_N_DTYPES] = {{"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1},
                            {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
                            {"U32", 4},  {"F32", 4}, {"I64", 8}, {"U64", 8},     {"F64", 8}};

const char *lt_st_dtype_name(lt_st_dtype dtype) {
  return dtype < LT_ST_N_DTYPES ? dtypes[dtype].name : "?";
}

size_t lt_st_dtype_size(lt_st_dtype dtype) {
  return dtype < LT_ST_N_DTYPES ? dtypes[dtype].size : 0;
}

static int read_at(const lt_st_file *f, uint64_t offset, void *out, size_t len) {
  if (f->bytes) {
    memcpy(out, f->bytes + offset, len);
    return LT_OK;
  }
  for (size_t done = 0; done < len;) {
    ssize_t got = pread(f->fd, (char *)out + done, len - done, (off_t)(offset + done));
    LT_CHECK(got >= 0, LT_ERR_IO, "%s: read failed: %s", f->path, strerror(errno));
    LT_CHECK(got > 0, LT_ERR_DATA, "%s: ends early: the file shrank while being read", f->path);
    done += (size_t)got;
  }
  return LT_OK;
}

// A non-negative integer that a double holds exactly.
static bool get_count(const cJSON *item, uint64_t *out) {
  if (!cJSON_IsNumber(item) || item->valuedouble < 0 || item->valuedouble > 0x1p53 ||
      item->valuedouble != floor(item->valuedouble))
    return false;
  *out = (uint64_t)item->valuedouble;
  return true;
}

static int add_tensor(lt_safetensors *st, int file, const cJSON *entry) {
  const lt_st_file *f = &st->files[file];
  const char *name = entry->string;
  LT_CHECK(cJSON_IsObject(entry), LT_ERR_DATA, "%s: tensor '%s': its entry is not an object",
           f->path, name);
  const char *dtype = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(entry, "dtype"));
  LT_CHECK(dtype, LT_ERR_DATA, "%s: tensor '%s': no dtype", f->path, name);
  lt_st_tensor t = {.file = file, .dtype = LT_ST_N_DTYPES, .numel = 1};
  for (int d = 0; d < LT_ST_N_DTYPES; d++)
    if (strcmp(dtype, dtypes[d].name) == 0) t.dtype = (lt_st_dtype)d;
  LT_CHECK(t.dtype != LT_ST_N_DTYPES, LT_ERR_DATA, "%s: tensor '%s': unknown dtype '%s'", f->path,
           name, dtype);
  const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
  LT_CHECK(cJSON_IsArray(shape) && cJSON_GetArraySize(shape) <= LT_ST_MAX_DIMS, LT_ERR_DATA,
           "%s: tensor '%s': shape must be a list of at most %d sizes", f->path, name,
           LT_ST_MAX_DIMS);
  uint64_t bytes = dtypes[t.dtype].size;
  for (const cJSON *dim = shape->child; dim; dim = dim->next) {
    uint64_t size;
    LT_CHECK(get_count(dim, &size), LT_ERR_DATA, "%s: tensor '%s': shape holds a non-size", f->path,
             name);
    LT_CHECK(size == 0 || bytes <= UINT64_MAX / 2 / size, LT_ERR_DATA,
             "%s: tensor '%s': shape overflows 64 bits", f->path, name);
    t.shape[t.ndim++] = (int64_t)size;
    t.numel *= (int64_t)size;
    bytes *= size;
  }
  const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
  LT_CHECK(cJSON_GetArraySize(offsets) == 2 && get_count(offsets->child, &t.begin) &&
               get_count(offsets->child->next, &t.end),
           LT_ERR_DATA, "%s: tensor '%s': data_offsets must be [begin, end]", f->path, name);
  LT_CHECK(t.begin <= t.end, LT_ERR_DATA, "%s: tensor '%s': data_offsets [%llu, %llu] end first",
           f->path, name, (unsigned long long)t.begin, (unsigned long long)t.end);
  LT_CHECK(t.end <= f->data_size, LT_ERR_DATA,
           "%s: tensor '%s': data_offsets [%llu, %llu] run past the data section (%llu bytes): "
           "the file is truncated or corrupt",
           f->path, name, (unsigned long long)t.begin, (unsigned long long)t.end,
           (unsigned long long)f->data_size);
  LT_CHECK(t.end - t.begin == bytes, LT_ERR_DATA,
           "%s: tensor '%s': data_offsets hold %llu bytes, but its shape in %s needs %llu", f->path,
           name, (unsigned long long)(t.end - t.begin), dtype, (unsigned long long)bytes);
  int32_t seen;
  LT_CHECK(!lt_strmap_get(&st->by_name, name, strlen(name), &seen), LT_ERR_DATA,
           "%s: tensor '%s' appears twice (also in %s)", f->path, name,
           st->files[st->tensors[seen].file].path);
  t.name = strdup(name);
  LT_CHECK(t.name, LT_ERR_MEMORY, "out of memory reading %s", f->path);
  lt_st_tensor *grown = realloc(st->tensors, (size_t)(st->n_tensors + 1) * sizeof *grown);
  if (!grown) free(t.name);
  LT_CHECK(grown, LT_ERR_MEMORY, "out of memory reading %s", f->path);
  st->tensors = grown;
  st->tensors[st->n_tensors] = t;
  return lt_strmap_put(&st->by_name, name, strlen(name), st->n_tensors++);
}

static int add_metadata(lt_safetensors *st, const lt_st_file *f, const cJSON *meta) {
  LT_CHECK(cJSON_IsObject(meta), LT_ERR_DATA, "%s: __metadata__ must be an object", f->path);
  if (st->metadata) return LT_OK; // the first shard's
  st->metadata = calloc(2 * (size_t)cJSON_GetArraySize(meta) + 1, sizeof *st->metadata);
  LT_CHECK(st->metadata, LT_ERR_MEMORY, "out of memory reading %s", f->path);
  for (const cJSON *m = meta->child; m; m = m->next) {
    LT_CHECK(cJSON_IsString(m), LT_ERR_DATA, "%s: __metadata__ '%s' is not a string", f->path,
             m->string);
    st->metadata[2 * st->n_metadata] = strdup(m->string);
    st->metadata[2 * st->n_metadata + 1] = strdup(m->valuestring);
    st->n_metadata++;
    LT_CHECK(st->metadata[2 * st->n_metadata - 2] && st->metadata[2 * st->n_metadata - 1],
             LT_ERR_MEMORY, "out of memory reading %s", f->path);
  }
  return LT_OK;
}

static const lt_st_tensor *sort_base;
static int by_offset(const void *a, const void *b) {
  const lt_st_tensor *x = &sort_base[*(const int *)a], *y = &sort_base[*(const int *)b];
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  return x->end < y->end ? -1 : x->end > y->end;
}

// The file's tensors (indices first .. n_tensors) must tile its data section exactly.
static int check_tiling(const lt_safetensors *st, int file, int first) {
  const lt_st_file *f = &st->files[file];
  int n = st->n_tensors - first;
  int *order = malloc(((size_t)n + 1) * sizeof *order);
  LT_CHECK(order, LT_ERR_MEMORY, "out of memory reading %s", f->path);
  for (int i = 0; i < n; i++) order[i] = first + i;
  sort_base = st->tensors;
  qsort(order, (size_t)n, sizeof *order, by_offset);
  uint64_t covered = 0;
  int rc = LT_OK;
  for (int i = 0; i < n && rc == LT_OK; i++) {
    const lt_st_tensor *t = &st->tensors[order[i]], *prev = i ? &st->tensors[order[i - 1]] : NULL;
    if (t->begin < covered)
      rc = lt_fail(LT_ERR_DATA, "%s: tensors '%s' [%llu, %llu] and '%s' [%llu, %llu] overlap",
                   f->path, prev->name, (unsigned long long)prev->begin,
                   (unsigned long long)prev->end, t->name, (unsigned long long)t->begin,
                   (unsigned long long)t->end);
    else if (t->begin > covered)
      rc = lt_fail(LT_ERR_DATA,
                   "%s: tensor '%s' starts at byte %llu of the data section, leaving %llu bytes "
                   "that no tensor covers: not a valid safetensors file",
                   f->path, t->name, (unsigned long long)t->begin,
                   (unsigned long long)(t->begin - covered));
    covered = t->end;
  }
  if (rc == LT_OK && covered != f->data_size)
    rc = lt_fail(LT_ERR_DATA,
                 "%s: %llu bytes after the last tensor%s%s%s belong to none: not a valid "
                 "safetensors file",
                 f->path, (unsigned long long)(f->data_size - covered), n ? " ('" : "",
                 n ? st->tensors[order[n - 1]].name : "", n ? "')" : "");
  free(order);
  return rc;
}

static bool valid_utf8(const char *s, size_t len) {
  for (size_t at = 0; at < len;) {
    lt_uchar c = lt_utf8_char(s, len, at);
    if (c.len == 1 && (unsigned char)s[at] >= 0x80) return false;
    at += (size_t)c.len;
  }
  return true;
}

static int parse_file(lt_safetensors *st, int file, uint64_t size) {
  lt_st_file *f = &st->files[file];
  LT_CHECK(size >= 8, LT_ERR_DATA,
           "%s: %llu bytes, shorter than the 8-byte header length: truncated or not safetensors",
           f->path, (unsigned long long)size);
  uint8_t len_bytes[8];
  LT_TRY(read_at(f, 0, len_bytes, 8));
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = n << 8 | len_bytes[i];
  LT_CHECK(n <= MAX_HEADER, LT_ERR_DATA,
           "%s: header length %llu is over 100 MB: corrupt or not a safetensors file", f->path,
           (unsigned long long)n);
  LT_CHECK(n <= size - 8, LT_ERR_DATA,
           "%s: header length %llu runs past the end of the file (%llu bytes): truncated or not "
           "a safetensors file",
           f->path, (unsigned long long)n, (unsigned long long)size);
  f->data_start = 8 + n, f->data_size = size - 8 - n;
  char *header = malloc(n + 1);
  LT_CHECK(header, LT_ERR_MEMORY, "out of memory reading %s", f->path);
  int rc = read_at(f, 8, header, n);
  header[n] = '\0';
  const char *end = NULL;
  cJSON *root = rc == LT_OK ? cJSON_ParseWithLengthOpts(header, n, &end, false) : NULL;
  // JSON and only JSON (the writer may pad with spaces), in UTF-8.
  bool json = root && cJSON_IsObject(root) && valid_utf8(header, n);
  for (const char *c = end; json && c < header + n; c++) json = *c == ' ' || *c == '\n';
  if (rc == LT_OK && !json)
    rc = lt_fail(LT_ERR_DATA, "%s: the header is not a JSON object: corrupt or not safetensors",
                 f->path);
  int first = st->n_tensors;
  for (const cJSON *e = json ? root->child : NULL; e && rc == LT_OK; e = e->next)
    rc = strcmp(e->string, "__metadata__") == 0 ? add_metadata(st, f, e) : add_tensor(st, file, e);
  if (rc == LT_OK) rc = check_tiling(st, file, first);
  cJSON_Delete(root);
  free(header);
  return rc;
}

static int add_file(lt_safetensors *st, const char *path, int fd, const uint8_t *bytes) {
  lt_st_file *grown = realloc(st->files, (size_t)(st->n_files + 1) * sizeof *grown);
  if (!grown && fd >= 0) close(fd);
  LT_CHECK(grown, LT_ERR_MEMORY, "out of memory opening %s", path);
  st->files = grown;
  lt_st_file *f = &st->files[st->n_files++];
  *f = (lt_st_file){.fd = fd, .bytes = bytes};
  snprintf(f->path, sizeof f->path, "%s", path);
  return LT_OK;
}

static int open_file(lt_safetensors *st, const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  LT_CHECK(fd >= 0, LT_ERR_DATA, "%s: cannot open: %s", path, strerror(errno));
  struct stat info;
  if (fstat(fd, &info) != 0) {
    close(fd);
    return lt_fail(LT_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
  }
  LT_TRY(add_file(st, path, fd, NULL));
  return parse_file(st, st->n_files - 1, (uint64_t)info.st_size);
}

// A model.safetensors.index.json: open every shard it names, then check that each tensor of its
// weight_map is in the shard it names.
static int open_index(lt_safetensors *st, const char *path) {
  char *text;
  size_t len;
  LT_TRY(lt_read_file(path, &text, &len));
  cJSON *root = cJSON_ParseWithLength(text, len);
  free(text);
  const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
  int rc = cJSON_IsObject(map)
               ? LT_OK
               : lt_fail(LT_ERR_DATA, "%s: not a safetensors index (no weight_map object)", path);
  char dir[LT_PATH_MAX], shard[LT_PATH_MAX];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/'); // the index's folder, with its '/'
  *(slash ? slash + 1 : dir) = '\0';
  for (const cJSON *e = rc == LT_OK ? map->child : NULL; e && rc == LT_OK; e = e->next) {
    const char *file = cJSON_GetStringValue(e);
    if (!file || strchr(file, '/'))
      rc = lt_fail(LT_ERR_DATA, "%s: weight_map['%s'] must name a file beside the index", path,
                   e->string);
    if (rc != LT_OK) break;
    snprintf(shard, sizeof shard, "%s%s", dir, file);
    bool opened = false;
    for (int i = 0; i < st->n_files; i++) opened |= strcmp(st->files[i].path, shard) == 0;
    if (!opened) rc = open_file(st, shard);
    const lt_st_tensor *t = rc == LT_OK ? lt_safetensors_find(st, e->string) : NULL;
    if (rc == LT_OK && (!t || strcmp(st->files[t->file].path, shard) != 0))
      rc = lt_fail(LT_ERR_DATA, "%s: weight_map puts tensor '%s' in %s, but it is not there", path,
                   e->string, file);
  }
  cJSON_Delete(root);
  return rc;
}

static int open_any(lt_safetensors *st, const char *path) {
  struct stat info;
  LT_CHECK(stat(path, &info) == 0, LT_ERR_DATA, "%s: cannot open: %s", path, strerror(errno));
  if (S_ISDIR(info.st_mode)) {
    char file[LT_PATH_MAX];
    snprintf(file, sizeof file, "%s/model.safetensors", path);
    if (access(file, F_OK) == 0) return open_file(st, file);
    snprintf(file, sizeof file, "%s/model.safetensors.index.json", path);
    LT_CHECK(access(file, F_OK) == 0, LT_ERR_DATA,
             "%s: holds neither model.safetensors nor model.safetensors.index.json", path);
    return open_index(st, file);
  }
  size_t len = strlen(path);
  if (len >= 5 && strcmp(path + len - 5, ".json") == 0) return open_index(st, path);
  return open_file(st, path);
}

static int begin(lt_safetensors *st, const char *path) {
  *st = (lt_safetensors){0};
  snprintf(st->path, sizeof st->path, "%s", path);
  return lt_strmap_init(&st->by_name, 64);
}

int lt_safetensors_open(lt_safetensors *st, const char *path) {
  LT_TRY(begin(st, path));
  int rc = open_any(st, path);
  if (rc != LT_OK) lt_safetensors_close(st);
  return rc;
}

int lt_safetensors_parse(lt_safetensors *st, const void *data, size_t size, const char *name) {
  LT_TRY(begin(st, name));
  int rc = add_file(st, name, -1, data);
  if (rc == LT_OK) rc = parse_file(st, 0, size);
  if (rc != LT_OK) lt_safetensors_close(st);
  return rc;
}

void lt_safetensors_close(lt_safetensors *st) {
  for (int i = 0; i < st->n_files; i++)
    if (st->files[i].fd >= 0) close(st->files[i].fd);
  for (int i = 0; i < st->n_tensors; i++) free(st->tensors[i].name);
  for (int i = 0; i < 2 * st->n_metadata; i++) free(st->metadata[i]);
  free(st->metadata);
  free(st->files);
  free(st->tensors);
  lt_strmap_free(&st->by_name);
  *st = (lt_safetensors){0};
}

const lt_st_tensor *lt_safetensors_find(const lt_safetensors *st, const char *name) {
  int32_t i;
  return lt_strmap_get(&st->by_name, name, strlen(name), &i) ? &st->tensors[i] : NULL;
}

const char *lt_safetensors_metadata(const lt_safetensors *st, const char *key) {
  for (int i = 0; i < st->n_metadata; i++)
    if (strcmp(st->metadata[2 * i], key) == 0) return st->metadata[2 * i + 1];
  return NULL;
}

// IEEE half precision to single: exponent bias 15 -> 127; subnormals (exponent 0) scale the
// mantissa by 2^-24; all-ones exponent is inf / NaN.
static float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu, bits;
  float f;
  if (exp == 0x1F)
    bits = sign | 0x7F800000u | (mant << 13);
  else if (exp)
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  else {
    f = (float)mant * 0x1p-24f;
    memcpy(&bits, &f, 4);
    bits |= sign;
  }
  memcpy(&f, &bits, 4);
  return f;
}

int lt_safetensors_read_f32(const lt_safetensors *st, const lt_st_tensor *t, float *out) {
  const lt_st_file *f = &st->files[t->file];
  LT_CHECK(t->dtype == LT_ST_F32 || t->dtype == LT_ST_F16 || t->dtype == LT_ST_BF16, LT_ERR_DATA,
           "%s: tensor '%s' has dtype %s; longtrain reads F32, F16 and BF16", f->path, t->name,
           lt_st_dtype_name(t->dtype));
  const uint64_t at = f->data_start + t->begin;
  if (t->dtype == LT_ST_F32) return read_at(f, at, out, (size_t)(t->end - t->begin));
  enum { CHUNK = 1 << 15 };
  uint16_t half[CHUNK];
  for (int64_t done = 0; done < t->numel; done += CHUNK) {
    size_t n = (size_t)(t->numel - done < CHUNK ? t->numel - done : CHUNK);
    LT_TRY(read_at(f, at + 2 * (uint64_t)done, half, 2 * n));
    if (t->dtype == LT_ST_BF16)
      for (size_t i = 0; i < n; i++) { // bf16 is the top half of an f32
        uint32_t bits = (uint32_t)half[i] << 16;
        memcpy(&out[done + (int64_t)i], &bits, 4);
      }
    else
      for (size_t i = 0; i < n; i++) out[done + (int64_t)i] = f16_to_f32(half[i]);
  }
  return LT_OK;
}
