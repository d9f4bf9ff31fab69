// The manifest of a checkpoint folder: manifest.txt, the last file written, lists every other
// file of the checkpoint with its size and CRC-32C and ends with the CRC-32C of the lines before
// it:
//
//   longtrain-checkpoint-manifest 1
//   meta.h5 3431 1a2b3c4d
//   shard-00000-of-00001.h5 29761 0a0b0c0d
//   crc32c 5e6f7a8b
//
// One space between fields and "\n" after every line; files in strictly increasing byte order of
// their names ([A-Za-z0-9._-], not starting with '.'); sizes in decimal without leading zeros;
// checksums as 8 lowercase hex digits. Each content has exactly one text, and the parser accepts
// nothing else. The last line keeps this form in every version, so a reader checks it before it
// trusts the first line's version.
//
// Why: HDF5 1.10 trusts a file's metadata and crashes on some corruptions of it (found by
// fuzzing). The reader checks the manifest and every file's size and checksum before HDF5 opens
// any of them, so a damaged checkpoint is a one-line error and never reaches HDF5.
#ifndef LT_CHECKPOINT_MANIFEST_H
#define LT_CHECKPOINT_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#define LT_MANIFEST_FILE    "manifest.txt"
#define LT_MANIFEST_VERSION 1
// A manifest of 100000 shards takes about 5 MB: a larger file is not one.
#define LT_MANIFEST_MAX_BYTES ((size_t)16 << 20)

typedef struct lt_manifest_entry {
  char name[64];
  int64_t size;
  uint32_t crc32c;
} lt_manifest_entry;

typedef struct lt_manifest {
  int64_t version;
  lt_manifest_entry *files; // sorted by name
  int n_files;
} lt_manifest;

// Parses the `len` bytes of `text` (no NUL needed) strictly. `path` is what messages name. A
// wrong last line or checksum is LT_ERR_CKPT "PATH: corrupt (checksum mismatch): ..."; a newer
// version asks for an upgrade; anything else malformed names the line.
int lt_manifest_parse(const char *path, const char *text, size_t len, lt_manifest *out);
// The text of `m` (its files sorted by name first), with the checksum line; malloc'ed.
int lt_manifest_format(lt_manifest *m, char **text, size_t *len);
// The entry named `name`, or NULL.
const lt_manifest_entry *lt_manifest_find(const lt_manifest *m, const char *name);
void lt_manifest_free(lt_manifest *m);

// Checksums the files `names` (n of them) of folder `dir` and writes DIR/manifest.txt listing
// them, fsynced. Returns 0, or the errno of the call that failed (ENOENT for a missing file).
int lt_manifest_write(const char *dir, const char *const *names, int n);
// Reads DIR/manifest.txt and checks every file it lists: present, of its size, of its checksum.
// No manifest is LT_ERR_CKPT "DIR: not a complete checkpoint (no manifest.txt)"; a damaged file
// or manifest is LT_ERR_CKPT naming it ("DIR/FILE: corrupt (checksum mismatch): ...").
int lt_manifest_verify(const char *dir, lt_manifest *out);

#endif
