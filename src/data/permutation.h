// A pseudo-random permutation of [0, n) evaluated one index at a time, in O(1) memory: a
// four-round Feistel network over the next power of four at or above n, with cycle walking
// (Black & Rogaway 2002, "Ciphers with arbitrary finite domains"). Shuffling a trillion-window
// dataset costs nothing up front, and resuming at sample k needs only k.
#ifndef LT_PERMUTATION_H
#define LT_PERMUTATION_H

#include <stdint.h>

typedef struct lt_permutation {
  uint64_t n, key;
  int half_bits;
} lt_permutation;

lt_permutation lt_permutation_make(uint64_t n, uint64_t key);
uint64_t lt_permutation_apply(const lt_permutation *p, uint64_t index);

#endif
