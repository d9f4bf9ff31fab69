// libFuzzer target: the checkpoint reader's own defences, the manifest and the checksums. A
// checkpoint of a tiny model is made once; the first byte of each input says what the rest is
// (fuzz_common.h):
//   FUZZ_MANIFEST        a manifest.txt, as is;
//   FUZZ_MANIFEST_LINES  the lines of one, to which the target appends the matching checksum line,
//                        so that the parser behind the checksum is reached;
//   FUZZ_META, FUZZ_SHARD  the bytes of meta.h5 or of the shard, with the good manifest.
// Manifests are parsed in memory (one that parses must format back to the same bytes), then the
// checkpoint folder holding the input is opened, its config parsed and its tensors loaded. Whatever
// the bytes: a status with a one-line message, no crash, no read out of bounds; and the folder
// opens only if every file is the one the manifest describes, so HDF5 never sees a changed byte.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/crc32c.h"
#include "core/error.h"
#include "fuzz_common.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "train/checkpoint_manifest.h"

enum { META, SHARD, MANIFEST, N_FILES };
static const char *names[N_FILES] = {"meta.h5", "shard-00000-of-00001.h5", LT_MANIFEST_FILE};
static char dir[600], files[N_FILES][700];
static uint8_t *good[N_FILES];
static size_t good_size[N_FILES];
static lt_model model;

static uint8_t *slurp(const char *file, size_t *size) {
  FILE *f = fopen(file, "rb");
  if (!f) abort();
  fseek(f, 0, SEEK_END);
  *size = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *bytes = malloc(*size + 1);
  if (fread(bytes, 1, *size, f) != *size) abort();
  fclose(f);
  return bytes;
}

static void spill(const char *file, const uint8_t *bytes, size_t size) {
  FILE *f = fopen(file, "wb");
  if (!f) abort();
  fwrite(bytes, 1, size, f);
  fclose(f);
}

// Seed `name` of the corpus: the mode byte, then `size` bytes.
static void write_seed(const char *seeds, const char *name, int mode, const uint8_t *bytes,
                       size_t size) {
  char seed[256];
  snprintf(seed, sizeof seed, "%s/%s", seeds, name);
  uint8_t *input = malloc(size + 1);
  input[0] = (uint8_t)mode;
  memcpy(input + 1, bytes, size);
  spill(seed, input, size + 1);
  free(input);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  char root[540];
  const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  // The pid at a fixed width: messages quote the path, and the coverage of the code that writes
  // them must not change with its length (fuzz.sh runs a fixed number of inputs, reproducibly).
  snprintf(root, sizeof root, "%s/lt-fuzz-checkpoint-%010d", tmp, (int)getpid());
  lt_model_config cfg = lt_fuzz_model_config();
  lt_checkpoint_writer w;
  lt_checkpoint_meta meta = {.step = 1, .n_params = 1};
  lt_config defaults;
  if (lt_model_create(&model, &cfg, LT_CPU, NULL) || lt_params_init(&model.params, 1) ||
      lt_config_defaults(&defaults) || lt_config_to_yaml(&defaults, &meta.config_yaml) ||
      lt_checkpoint_begin(&w, root, 1, 0, 1) ||
      lt_checkpoint_write_params(&w, &model.params, true) || lt_checkpoint_commit(&w, &meta))
    abort();
  lt_checkpoint_meta_free(&meta);
  snprintf(dir, sizeof dir, "%s/step_00000001", root);
  for (int i = 0; i < N_FILES; i++) {
    snprintf(files[i], sizeof files[i], "%s/%s", dir, names[i]);
    good[i] = slurp(files[i], &good_size[i]);
  }
  // LT_FUZZ_WRITE_SEEDS=DIR: write the seed corpus (each mode on the good checkpoint) into DIR
  // and stop; tests/fuzz/corpus/checkpoint was made so.
  const char *seeds = getenv("LT_FUZZ_WRITE_SEEDS");
  if (!seeds) return 0;
  write_seed(seeds, "manifest", FUZZ_MANIFEST, good[MANIFEST], good_size[MANIFEST]);
  write_seed(seeds, "manifest-lines", FUZZ_MANIFEST_LINES, good[MANIFEST],
             good_size[MANIFEST] - strlen("crc32c 01234567\n"));
  write_seed(seeds, "meta", FUZZ_META, good[META], good_size[META]);
  write_seed(seeds, "shard", FUZZ_SHARD, good[SHARD], good_size[SHARD]);
  exit(0);
}

// A manifest that parses is the one spelling of what it lists: formatting it gives its bytes.
static void check_manifest(const uint8_t *text, size_t size) {
  lt_manifest m;
  if (lt_manifest_parse("fuzz/manifest.txt", (const char *)text, size, &m) != LT_OK) return;
  char *again;
  size_t len;
  if (lt_manifest_format(&m, &again, &len) != LT_OK) abort();
  if (len != size || memcmp(again, text, size) != 0) abort();
  free(again);
  lt_manifest_free(&m);
}

// Opens the folder with file `which` replaced by `bytes` (the others good), reads all of it, and
// checks that it opened only if nothing differs from the checkpoint the manifest describes.
static void open_with(int which, const uint8_t *bytes, size_t size) {
  for (int i = 0; i < N_FILES; i++)
    if (i == which)
      spill(files[i], bytes, size);
    else
      spill(files[i], good[i], good_size[i]);
  lt_checkpoint ck;
  if (lt_checkpoint_open(&ck, dir) != LT_OK) return;
  const bool same = size == good_size[which] && memcmp(bytes, good[which], size) == 0;
  if (!same) abort(); // a changed byte got past the manifest
  lt_config cfg;
  if (lt_checkpoint_load_config(&ck, 0, NULL, &cfg) != LT_OK ||
      lt_checkpoint_read_params(&ck, &model.params, true) != LT_OK)
    abort(); // the good checkpoint must load
  lt_checkpoint_close(&ck);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const uint8_t *rest = data + 1;
  size_t n = size - 1;
  switch (data[0] % FUZZ_MODES) {
  case FUZZ_MANIFEST:
    check_manifest(rest, n);
    open_with(MANIFEST, rest, n);
    break;
  case FUZZ_MANIFEST_LINES: {
    uint8_t *text = malloc(n + 17);
    memcpy(text, rest, n);
    n += (size_t)snprintf((char *)text + n, 17, "crc32c %08x\n", (unsigned)lt_crc32c(0, rest, n));
    check_manifest(text, n);
    open_with(MANIFEST, text, n);
    free(text);
    break;
  }
  case FUZZ_META:
    open_with(META, rest, n);
    break;
  case FUZZ_SHARD:
    open_with(SHARD, rest, n);
    break;
  }
  if (strchr(lt_error_message(), '\n')) abort(); // every error is one line
  lt_error_clear();
  return 0;
}
