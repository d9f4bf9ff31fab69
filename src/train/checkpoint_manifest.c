// The checkpoint manifest (checkpoint_manifest.h): its strict parser and writer, and the check of
// every file it lists.
#include "train/checkpoint_manifest.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/config.h"
#include "core/crc32c.h"
#include "core/error.h"

static const char header[] = "longtrain-checkpoint-manifest ";
enum {
  HEADER_LEN = sizeof header - 1,
  TRAILER_LEN = 16, // "crc32c " + 8 hex digits + "\n"
  MAX_DIGITS = 18,  // sizes below 10^18 < 2^63
  READ_BLOCK = 4 << 20,
};

// --- parsing ---

static int checksum_mismatch(const char *path, const char *why) {
  return lt_fail(LT_ERR_CKPT,
                 "%s: corrupt (checksum mismatch): %s: delete this checkpoint and resume from an "
                 "earlier one",
                 path, why);
}

static int malformed(const char *path, int line, const char *why) {
  return lt_fail(LT_ERR_CKPT,
                 "%s: line %d: %s (corrupt): delete this checkpoint and resume from an earlier one",
                 path, line, why);
}

static bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

// A name a manifest may list: 1 to 63 name characters, not starting with '.', not itself.
static bool valid_name(const char *name, size_t len) {
  if (len == 0 || len >= sizeof((lt_manifest_entry *)0)->name || name[0] == '.') return false;
  for (size_t i = 0; i < len; i++)
    if (!name_char(name[i])) return false;
  return !(len == strlen(LT_MANIFEST_FILE) && memcmp(name, LT_MANIFEST_FILE, len) == 0);
}

// 8 lowercase hex digits at p (which has at least 8 bytes).
static bool parse_hex32(const char *p, uint32_t *out) {
  uint32_t value = 0;
  for (int i = 0; i < 8; i++) {
    const char c = p[i];
    if (c >= '0' && c <= '9')
      value = value << 4 | (uint32_t)(c - '0');
    else if (c >= 'a' && c <= 'f')
      value = value << 4 | (uint32_t)(c - 'a' + 10);
    else
      return false;
  }
  *out = value;
  return true;
}

// A decimal without leading zeros ("0" alone excepted) in [p, end); returns the byte after it, or
// NULL when there is none.
static const char *parse_decimal(const char *p, const char *end, int64_t *out) {
  const char *start = p;
  int64_t value = 0;
  while (p < end && *p >= '0' && *p <= '9' && p - start < MAX_DIGITS)
    value = value * 10 + (*p++ - '0');
  const bool canonical = p > start && !(*start == '0' && p - start > 1);
  if (!canonical || (p < end && *p >= '0' && *p <= '9')) return NULL;
  *out = value;
  return p;
}

static int append(lt_manifest *m, const lt_manifest_entry *entry, int *capacity) {
  if (m->n_files == *capacity) {
    *capacity = *capacity ? 2 * *capacity : 8;
    lt_manifest_entry *grown = realloc(m->files, (size_t)*capacity * sizeof *grown);
    LT_CHECK(grown, LT_ERR_MEMORY, "out of memory reading a checkpoint manifest");
    m->files = grown;
  }
  m->files[m->n_files++] = *entry;
  return LT_OK;
}

// One line "NAME SIZE CRC32C\n" at *p; advances *p past it.
static int parse_entry(const char *path, int line, const char **p, const char *end,
                       lt_manifest_entry *entry) {
  const char *name = *p, *q = *p;
  while (q < end && name_char(*q)) q++;
  const size_t len = (size_t)(q - name);
  if (!valid_name(name, len) || q == end || *q != ' ')
    return malformed(path, line, "expected a file name ([A-Za-z0-9._-]) and a space");
  memcpy(entry->name, name, len);
  entry->name[len] = '\0';
  q = parse_decimal(q + 1, end, &entry->size);
  if (!q || q == end || *q != ' ') return malformed(path, line, "expected a size in bytes");
  q++;
  if (end - q < 9 || !parse_hex32(q, &entry->crc32c) || q[8] != '\n')
    return malformed(path, line, "expected a CRC-32C of 8 lowercase hex digits");
  *p = q + 9;
  return LT_OK;
}

int lt_manifest_parse(const char *path, const char *text, size_t len, lt_manifest *out) {
  *out = (lt_manifest){0};
  // The last line first: nothing else is looked at before the checksum over it matches.
  if (len < TRAILER_LEN || len > LT_MANIFEST_MAX_BYTES)
    return checksum_mismatch(path, "it is not of a manifest's size");
  const char *trailer = text + len - TRAILER_LEN;
  uint32_t want;
  if (memcmp(trailer, "crc32c ", 7) != 0 || !parse_hex32(trailer + 7, &want) ||
      trailer[15] != '\n' || (len > TRAILER_LEN && trailer[-1] != '\n'))
    return checksum_mismatch(path, "it does not end with the line 'crc32c' and a checksum");
  const uint32_t have = lt_crc32c(0, text, len - TRAILER_LEN);
  if (have != want) {
    char why[128];
    snprintf(why, sizeof why, "its lines have CRC-32C %08x, its last line says %08x", have, want);
    return checksum_mismatch(path, why);
  }
  const char *p = text, *end = trailer;
  if (end - p < HEADER_LEN || memcmp(p, header, HEADER_LEN) != 0)
    return malformed(path, 1, "not a longtrain checkpoint manifest");
  p = parse_decimal(p + HEADER_LEN, end, &out->version);
  if (!p || p == end || *p != '\n' || out->version < 1)
    return malformed(path, 1, "expected a format version");
  if (out->version > LT_MANIFEST_VERSION)
    return lt_fail(LT_ERR_CKPT,
                   "%s: format version %lld is newer than this longtrain reads (%d): upgrade "
                   "longtrain to load it",
                   path, (long long)out->version, LT_MANIFEST_VERSION);
  p++;
  int capacity = 0, rc = LT_OK;
  for (int line = 2; p < end && rc == LT_OK; line++) {
    lt_manifest_entry entry;
    rc = parse_entry(path, line, &p, end, &entry);
    if (rc == LT_OK && out->n_files > 0 &&
        strcmp(out->files[out->n_files - 1].name, entry.name) >= 0)
      rc = malformed(path, line, "file names out of order or repeated");
    if (rc == LT_OK) rc = append(out, &entry, &capacity);
  }
  if (rc != LT_OK) lt_manifest_free(out);
  return rc;
}

static int by_name(const void *a, const void *b) {
  return strcmp(((const lt_manifest_entry *)a)->name, ((const lt_manifest_entry *)b)->name);
}

int lt_manifest_format(lt_manifest *m, char **text, size_t *len) {
  if (m->n_files > 1) qsort(m->files, (size_t)m->n_files, sizeof *m->files, by_name);
  const size_t line_max = sizeof m->files->name + MAX_DIGITS + 12;
  const size_t cap = HEADER_LEN + 24 + (size_t)m->n_files * line_max + TRAILER_LEN + 1;
  char *buf = malloc(cap);
  LT_CHECK(buf, LT_ERR_MEMORY, "out of memory writing a checkpoint manifest");
  size_t n = (size_t)snprintf(buf, cap, "%s%lld\n", header, (long long)m->version);
  for (int i = 0; i < m->n_files; i++) {
    const lt_manifest_entry *e = &m->files[i];
    if (!valid_name(e->name, strlen(e->name)) || e->size < 0 || e->size >= (int64_t)1e18 ||
        (i > 0 && strcmp(m->files[i - 1].name, e->name) == 0)) {
      free(buf);
      return lt_fail(LT_ERR_INTERNAL, "checkpoint manifest: cannot list file '%s'", e->name);
    }
    n += (size_t)snprintf(buf + n, cap - n, "%s %lld %08x\n", e->name, (long long)e->size,
                          (unsigned)e->crc32c);
  }
  n += (size_t)snprintf(buf + n, cap - n, "crc32c %08x\n", (unsigned)lt_crc32c(0, buf, n));
  *text = buf, *len = n;
  return LT_OK;
}

const lt_manifest_entry *lt_manifest_find(const lt_manifest *m, const char *name) {
  lt_manifest_entry key;
  if (snprintf(key.name, sizeof key.name, "%s", name) >= (int)sizeof key.name) return NULL;
  return m->n_files ? bsearch(&key, m->files, (size_t)m->n_files, sizeof key, by_name) : NULL;
}

void lt_manifest_free(lt_manifest *m) {
  free(m->files);
  *m = (lt_manifest){0};
}

// --- files ---

// The size and CRC-32C of the regular file at `path`, read once from start to end. Returns 0 or
// an errno.
static int checksum_file(const char *path, int64_t *size, uint32_t *crc) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  struct stat st;
  char *block = NULL;
  int err = fstat(fd, &st) != 0 ? errno : !S_ISREG(st.st_mode) ? EINVAL : 0;
  // Blocks of READ_BLOCK bytes, or one of the file's size when it is smaller.
  const size_t block_size = !err && st.st_size < READ_BLOCK ? (size_t)st.st_size + 1 : READ_BLOCK;
  if (!err) err = (block = malloc(block_size)) ? 0 : ENOMEM;
  posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  *size = 0, *crc = 0;
  while (!err) {
    ssize_t got = read(fd, block, block_size);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      err = got < 0 ? errno : 0;
      break;
    }
    *crc = lt_crc32c(*crc, block, (size_t)got);
    *size += got;
  }
  free(block);
  close(fd);
  return err;
}

int lt_manifest_write(const char *dir, const char *const *names, int n) {
  lt_manifest m = {
      .version = LT_MANIFEST_VERSION, .files = calloc((size_t)n, sizeof *m.files), .n_files = n};
  if (!m.files) return ENOMEM;
  int err = 0;
  for (int i = 0; i < n && !err; i++) {
    char path[LT_PATH_MAX + 128];
    snprintf(m.files[i].name, sizeof m.files[i].name, "%s", names[i]);
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    err = checksum_file(path, &m.files[i].size, &m.files[i].crc32c);
  }
  char *text = NULL, path[LT_PATH_MAX + 32];
  size_t len = 0;
  if (!err && lt_manifest_format(&m, &text, &len) != LT_OK) err = EINVAL;
  lt_manifest_free(&m);
  snprintf(path, sizeof path, "%s/%s", dir, LT_MANIFEST_FILE);
  int fd = err ? -1 : open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (!err && fd < 0) err = errno;
  for (size_t done = 0; !err && done < len;) {
    ssize_t put = write(fd, text + done, len - done);
    if (put < 0 && errno != EINTR) err = errno;
    if (put > 0) done += (size_t)put;
  }
  if (!err && fsync(fd) != 0) err = errno;
  if (fd >= 0 && close(fd) != 0 && !err) err = errno;
  free(text);
  return err;
}

// DIR/manifest.txt whole, at most LT_MANIFEST_MAX_BYTES.
static int read_manifest(const char *dir, const char *path, char **text, size_t *len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); // a FIFO in its place must not block
  if (fd < 0 && errno == ENOENT)
    return lt_fail(LT_ERR_CKPT,
                   "%s: not a complete checkpoint (no %s): give a folder "
                   "RUN_DIR/checkpoints/step_N, or --resume auto for the newest complete one",
                   dir, LT_MANIFEST_FILE);
  LT_CHECK(fd >= 0, LT_ERR_CKPT, "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  int rc = LT_OK;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (size_t)st.st_size > LT_MANIFEST_MAX_BYTES)
    rc = checksum_mismatch(path, "not a file of a manifest's size");
  char *buf = rc == LT_OK ? malloc((size_t)st.st_size + 1) : NULL;
  if (rc == LT_OK && !buf) rc = lt_fail(LT_ERR_MEMORY, "out of memory reading %s", path);
  size_t n = 0;
  while (rc == LT_OK && n < (size_t)st.st_size) {
    ssize_t got = read(fd, buf + n, (size_t)st.st_size - n);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) rc = lt_fail(LT_ERR_CKPT, "%s: cannot read: %s", path, strerror(errno));
    if (got == 0) break; // shrank since fstat: the checksum tells
    if (got > 0) n += (size_t)got;
  }
  close(fd);
  if (rc != LT_OK) {
    free(buf);
    return rc;
  }
  *text = buf, *len = n;
  return LT_OK;
}

// One listed file: present, of its size (checked first: no read needed), of its checksum.
static int verify_file(const char *dir, const lt_manifest_entry *e) {
  char path[LT_PATH_MAX + 128];
  snprintf(path, sizeof path, "%s/%s", dir, e->name);
  struct stat st;
  if (stat(path, &st) != 0)
    return lt_fail(LT_ERR_CKPT,
                   "%s: missing (%s lists it): %s: delete this checkpoint and resume from an "
                   "earlier one",
                   path, LT_MANIFEST_FILE, strerror(errno));
  if (!S_ISREG(st.st_mode) || st.st_size != e->size)
    return lt_fail(LT_ERR_CKPT,
                   "%s: truncated or corrupt (size mismatch): %lld bytes, %s says %lld: delete "
                   "this checkpoint and resume from an earlier one",
                   path, (long long)st.st_size, LT_MANIFEST_FILE, (long long)e->size);
  int64_t size;
  uint32_t crc;
  int err = checksum_file(path, &size, &crc);
  LT_CHECK(!err, LT_ERR_CKPT, "%s: cannot read: %s", path, strerror(err));
  LT_CHECK(size == e->size && crc == e->crc32c, LT_ERR_CKPT,
           "%s: corrupt (checksum mismatch): CRC-32C %08x over %lld bytes, %s says %08x over "
           "%lld: delete this checkpoint and resume from an earlier one",
           path, (unsigned)crc, (long long)size, LT_MANIFEST_FILE, (unsigned)e->crc32c,
           (long long)e->size);
  return LT_OK;
}

int lt_manifest_verify(const char *dir, lt_manifest *out) {
  *out = (lt_manifest){0};
  char path[LT_PATH_MAX + 32], *text = NULL;
  size_t len = 0;
  snprintf(path, sizeof path, "%s/%s", dir, LT_MANIFEST_FILE);
  LT_TRY(read_manifest(dir, path, &text, &len));
  int rc = lt_manifest_parse(path, text, len, out);
  free(text);
  for (int i = 0; rc == LT_OK && i < out->n_files; i++) rc = verify_file(dir, &out->files[i]);
  if (rc != LT_OK) lt_manifest_free(out);
  return rc;
}
