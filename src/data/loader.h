// Training samples from a token dataset: windows of T + 1 tokens (inputs and next-token
// targets), visited in a shuffled order that is fixed by the seed and reshuffled every epoch.
// The loader's whole state is the index of the next sample, which a checkpoint saves.
#ifndef LT_LOADER_H
#define LT_LOADER_H

#include <stdint.h>

#include "data/dataset.h"

typedef struct lt_loader {
  lt_dataset *data;
  int64_t seq_len;
  int64_t n_windows; // per epoch: window w covers tokens [w T, w T + T + 1)
  uint64_t seed;
  int64_t next_sample; // index into the endless shuffled sequence of windows
  int32_t *window;     // T + 1 tokens
} lt_loader;

int lt_loader_create(lt_loader *loader, lt_dataset *data, int64_t seq_len, uint64_t seed);
void lt_loader_destroy(lt_loader *loader);
// The next B samples into host buffers of B*T int32 each: tokens, targets, positions.
int lt_loader_next(lt_loader *loader, int64_t B, int32_t *tokens, int32_t *targets, int32_t *pos);
// Which window sample `index` reads (exposed for tests).
int64_t lt_loader_window_of(const lt_loader *loader, int64_t index);

#endif
