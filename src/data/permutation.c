#include "data/permutation.h"

#include "core/rng.h"

lt_permutation lt_permutation_make(uint64_t n, uint64_t key) {
  lt_permutation p = {.n = n, .key = key, .half_bits = 1};
  while (p.half_bits < 32 && ((uint64_t)1 << (2 * p.half_bits)) < n) p.half_bits++;
  return p;
}

uint64_t lt_permutation_apply(const lt_permutation *p, uint64_t index) {
  const uint64_t mask = ((uint64_t)1 << p->half_bits) - 1;
  uint64_t x = index;
  // The domain is at most 4x larger than n, so cycle walking takes under 4 rounds on average.
  do {
    uint64_t left = x >> p->half_bits, right = x & mask;
    for (uint64_t round = 0; round < 4; round++) {
      uint64_t f = lt_rng_u64_at(p->key + round, right) & mask;
      uint64_t next = left ^ f;
      left = right;
      right = next;
    }
    x = (left << p->half_bits) | right;
  } while (x >= p->n);
  return x;
}
