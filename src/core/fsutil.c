#define _XOPEN_SOURCE 700 // nftw
#include "core/fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/config.h"
#include "core/error.h"

static int fsync_path(const char *path, int flags) {
  int fd = open(path, flags);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

int lt_fsync_path(const char *path) {
  struct stat st;
  int flags = stat(path, &st) == 0 && S_ISDIR(st.st_mode) ? O_RDONLY | O_DIRECTORY : O_RDONLY;
  LT_CHECK(fsync_path(path, flags) == 0, LT_ERR_IO, "%s: fsync failed: %s", path, strerror(errno));
  return LT_OK;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
  (void)st, (void)type, (void)ftw;
  return remove(path);
}

int lt_remove_tree(const char *path) {
  struct stat st;
  if (lstat(path, &st) != 0 && errno == ENOENT) return LT_OK;
  LT_CHECK(nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) == 0, LT_ERR_IO,
           "%s: cannot remove: %s", path, strerror(errno));
  return LT_OK;
}

int lt_commit_file(const char *tmp_path, const char *final_path) {
  LT_CHECK(fsync_path(tmp_path, O_RDONLY) == 0, LT_ERR_IO, "%s: fsync failed: %s", tmp_path,
           strerror(errno));
  LT_CHECK(rename(tmp_path, final_path) == 0, LT_ERR_IO, "%s: cannot rename into place: %s",
           final_path, strerror(errno));
  char dir[LT_PATH_MAX];
  snprintf(dir, sizeof dir, "%s", final_path);
  // The rename is durable only once the folder's entry is on disk.
  LT_CHECK(fsync_path(dirname(dir), O_RDONLY | O_DIRECTORY) == 0, LT_ERR_IO,
           "%s: fsync of its folder failed: %s", final_path, strerror(errno));
  return LT_OK;
}

int lt_make_dirs(const char *path) {
  char buf[LT_PATH_MAX];
  LT_CHECK(strlen(path) < sizeof buf, LT_ERR_IO, "path too long: %s", path);
  strcpy(buf, path);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(buf, 0775) != 0 && errno != EEXIST)
      return lt_fail(LT_ERR_IO, "%s: cannot create folder: %s", buf, strerror(errno));
    *p = '/';
  }
  if (mkdir(buf, 0775) != 0 && errno != EEXIST)
    return lt_fail(LT_ERR_IO, "%s: cannot create folder: %s", buf, strerror(errno));
  return LT_OK;
}

int lt_read_file(const char *path, char **text, size_t *len) {
  FILE *f = fopen(path, "rb");
  LT_CHECK(f, LT_ERR_DATA, "%s: cannot open: %s", path, strerror(errno));
  char *buf = NULL;
  size_t n = 0, cap = 0, got;
  int rc = LT_OK;
  do {
    if (n + 65536 > cap) {
      char *grown = realloc(buf, cap = (n + 65536) * 2);
      if (!grown) {
        rc = lt_fail(LT_ERR_MEMORY, "out of memory reading %s", path);
        break;
      }
      buf = grown;
    }
    n += got = fread(buf + n, 1, cap - n - 1, f);
  } while (got > 0);
  if (rc == LT_OK && ferror(f))
    rc = lt_fail(LT_ERR_IO, "%s: read error: %s", path, strerror(errno));
  fclose(f);
  if (rc != LT_OK) {
    free(buf);
    return rc;
  }
  buf[n] = '\0';
  *text = buf, *len = n;
  return LT_OK;
}
