// libFuzzer target: the checkpoint reader. A checkpoint of a tiny model is made once; each input
// replaces its meta.h5 or its shard (the first byte says which) and the checkpoint is opened, its
// config parsed and its tensors loaded. Whatever the bytes: a status with a one-line message, no
// crash, no read out of bounds.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "core/fsutil.h"
#include "fuzz_common.h"
#include "model/model.h"
#include "train/checkpoint.h"

static char dir[600], files[2][700];
static uint8_t *good[2];
static size_t good_size[2];
static lt_model model;

static uint8_t *slurp(const char *file, size_t *size) {
  FILE *f = fopen(file, "rb");
  if (!f) abort();
  fseek(f, 0, SEEK_END);
  *size = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *bytes = malloc(*size);
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

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  char root[540];
  const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  snprintf(root, sizeof root, "%s/lt-fuzz-checkpoint-%d", tmp, (int)getpid());
  lt_model_config cfg = lt_fuzz_model_config();
  lt_checkpoint_writer w;
  lt_checkpoint_meta meta = {.step = 1, .n_params = 1};
  lt_config defaults;
  if (lt_model_create(&model, &cfg, LT_CPU) || lt_params_init(&model.params, 1) ||
      lt_config_defaults(&defaults) || lt_config_to_yaml(&defaults, &meta.config_yaml) ||
      lt_checkpoint_begin(&w, root, 1, 0, 1) ||
      lt_checkpoint_write_params(&w, &model.params, true) || lt_checkpoint_commit(&w, &meta))
    abort();
  lt_checkpoint_meta_free(&meta);
  snprintf(dir, sizeof dir, "%s/step_00000001", root);
  snprintf(files[FUZZ_META], sizeof files[0], "%s/meta.h5", dir);
  snprintf(files[FUZZ_SHARD], sizeof files[1], "%s/shard-00000-of-00001.h5", dir);
  for (int i = 0; i < 2; i++) good[i] = slurp(files[i], &good_size[i]);
  // LT_FUZZ_WRITE_SEEDS=DIR: write the seed corpus (each file of the checkpoint, as an input)
  // into DIR and stop; tests/fuzz/corpus/checkpoint was made so.
  const char *seeds = getenv("LT_FUZZ_WRITE_SEEDS");
  if (!seeds) return 0;
  for (int i = 0; i < 2; i++) {
    char seed[256];
    snprintf(seed, sizeof seed, "%s/%s", seeds, i == FUZZ_META ? "meta" : "shard");
    uint8_t *input = malloc(good_size[i] + 1);
    input[0] = (uint8_t)i;
    memcpy(input + 1, good[i], good_size[i]);
    spill(seed, input, good_size[i] + 1);
    free(input);
  }
  exit(0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const int which = data[0] & 1;
  spill(files[which], data + 1, size - 1);
  spill(files[!which], good[!which], good_size[!which]);
  lt_checkpoint ck;
  if (lt_checkpoint_open(&ck, dir) == LT_OK) {
    lt_config cfg;
    lt_checkpoint_load_config(&ck, 0, NULL, &cfg);
    lt_checkpoint_read_params(&ck, &model.params, true);
    lt_checkpoint_close(&ck);
  }
  if (strchr(lt_error_message(), '\n')) abort(); // every error is one line
  lt_error_clear();
  return 0;
}
