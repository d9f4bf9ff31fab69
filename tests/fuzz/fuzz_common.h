// What the fuzz targets and the corpus maker share: the tiny model whose checkpoint seeds the
// checkpoint fuzzer, and the layout of that fuzzer's input.
#ifndef LT_FUZZ_COMMON_H
#define LT_FUZZ_COMMON_H

#include "core/config.h"

// The checkpoint fuzzer's input: one byte choosing what the rest is (modulo FUZZ_MODES): a whole
// manifest.txt, the lines of one (the fuzzer appends their checksum line), or the bytes of meta.h5
// or of the shard. The other files of the checkpoint are the valid ones.
enum { FUZZ_MANIFEST, FUZZ_MANIFEST_LINES, FUZZ_META, FUZZ_SHARD, FUZZ_MODES };

static inline lt_model_config lt_fuzz_model_config(void) {
  return (lt_model_config){.d_model = 8,
                           .n_layers = 1,
                           .n_heads = 2,
                           .ffn_dim = 16,
                           .vocab_size = 16,
                           .max_seq_len = 8,
                           .rope_theta = 10000,
                           .norm_eps = 1e-5,
                           .init = LT_INIT_SCALED,
                           .init_std = 0.02};
}

#endif
