// Files that appear whole or not at all: write under a temporary name, fsync, rename over the
// final name, fsync the folder. A crash or a full disk leaves the previous file untouched. And
// small inputs read whole.
#ifndef LT_FSUTIL_H
#define LT_FSUTIL_H

#include <stddef.h>

// Makes tmp_path durable and renames it to final_path; on failure final_path is unchanged.
int lt_commit_file(const char *tmp_path, const char *final_path);
// mkdir -p
int lt_make_dirs(const char *path);
// The whole file at `path` in a malloc'ed buffer with a NUL after its `len` bytes. A missing or
// unreadable file is an LT_ERR_DATA naming it (the inputs read whole are tokenizer.json and
// model config files).
int lt_read_file(const char *path, char **text, size_t *len);
// fsync of a file or of a folder (so the entries it holds, e.g. a rename into it, are durable).
int lt_fsync_path(const char *path);
// rm -r; a path that does not exist is not an error.
int lt_remove_tree(const char *path);

#endif
