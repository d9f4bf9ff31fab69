// libFuzzer target: the token dataset reader. The bytes are written to a file and opened as a
// dataset; whatever they are, opening and reading (tokens, document offsets, windows packed by
// document) return a status with a one-line message and never crash or read out of bounds.
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "core/h5util.h"
#include "data/dataset.h"
#include "data/loader.h"

static char path[512];

// A small dataset as `longtrain prepare` lays it out (checksummed 1.10 format, Fletcher-32
// chunks) but with 64-token chunks, so the seed is a few kilobytes; or, `contiguous`, with
// datasets as h5py writes them by default (contiguous, no Fletcher-32). Seeds in HDF5's earliest
// format, whose metadata has no checksums, are left out: HDF5 1.10 crashes on them within
// seconds (README, Data).
static void write_seed(const char *file, hid_t token_type, int vocab, bool contiguous) {
  enum { N = 300, DOCS = 5 };
  uint32_t tokens[N];
  uint64_t offsets[DOCS + 1] = {0, 40, 41, 100, 220, N};
  for (int i = 0; i < N; i++) tokens[i] = (uint32_t)((i * 7) % vocab);
  hid_t f = lt_h5_create(file);
  hsize_t n[2] = {N, DOCS + 1}, chunk[2] = {64, DOCS + 1};
  const char *names[2] = {"tokens", "doc_offsets"};
  hid_t file_types[2] = {token_type, H5T_STD_U64LE},
        mem_types[2] = {H5T_NATIVE_UINT32, H5T_NATIVE_UINT64};
  const void *values[2] = {tokens, offsets};
  for (int i = 0; i < 2; i++) {
    hid_t space = H5Screate_simple(1, &n[i], NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (!contiguous) {
      H5Pset_chunk(dcpl, 1, &chunk[i]);
      H5Pset_fletcher32(dcpl);
    }
    hid_t set = H5Dcreate2(f, names[i], file_types[i], space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (H5Dwrite(set, mem_types[i], H5S_ALL, H5S_ALL, H5P_DEFAULT, values[i]) < 0) abort();
    H5Dclose(set), H5Pclose(dcpl), H5Sclose(space);
  }
  if (lt_h5_write_i64(f, "vocab_size", vocab) || lt_h5_write_i64(f, "eos_id", vocab - 1) ||
      lt_h5_write_i64(f, "format_version", 1) || lt_h5_write_string(f, "tokenizer", "byte") ||
      H5Fclose(f) < 0)
    abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  // The pid at a fixed width: messages quote the path, and the coverage of the code that writes
  // them must not change with its length (fuzz.sh runs a fixed number of inputs, reproducibly).
  snprintf(path, sizeof path, "%s/lt-fuzz-dataset-%010d.h5", tmp, (int)getpid());
  // LT_FUZZ_WRITE_SEEDS=DIR: write the seed corpus into DIR and stop; tests/fuzz/corpus/dataset
  // was made so.
  const char *seeds = getenv("LT_FUZZ_WRITE_SEEDS");
  if (!seeds) return 0;
  char file[256];
  snprintf(file, sizeof file, "%s/uint16.h5", seeds);
  write_seed(file, H5T_STD_U16LE, 259, false);
  snprintf(file, sizeof file, "%s/uint32.h5", seeds);
  write_seed(file, H5T_STD_U32LE, 70000, false);
  snprintf(file, sizeof file, "%s/contiguous.h5", seeds);
  write_seed(file, H5T_STD_U16LE, 259, true);
  exit(0);
}

static void read_samples(lt_dataset *ds) {
  int32_t tokens[256];
  const int64_t n = ds->n_tokens < 256 ? ds->n_tokens : 256;
  lt_dataset_read(ds, 0, n, tokens);
  lt_dataset_read(ds, ds->n_tokens - n, n, tokens);
  enum { T = 8, B = 4 };
  lt_loader loader;
  lt_loader_spec spec = {.seq_len = T, .packing = LT_PACK_DOCUMENTS, .seed = 1, .held_out = 0.25};
  if (lt_loader_create(&loader, ds, &spec) == LT_OK) {
    int32_t t[B * T], g[B * T], p[B * T], d[B * T];
    lt_loader_next(&loader, B, 0, 1, (lt_samples){t, g, p, d});
  }
  lt_loader_destroy(&loader);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  FILE *f = fopen(path, "wb");
  if (!f) abort();
  fwrite(data, 1, size, f);
  fclose(f);
  lt_dataset ds;
  if (lt_dataset_open(&ds, path) == LT_OK) {
    read_samples(&ds);
    lt_dataset_close(&ds);
  }
  if (strchr(lt_error_message(), '\n')) abort(); // every error is one line
  lt_error_clear();
  return 0;
}
