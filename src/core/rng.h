// A deterministic, splittable, counter-based random number generator.
//
// A stream is (key, counter); the n-th draw is a hash of (key, n), so any element of a stream can
// be produced without producing the ones before it. That is what lets every tensor-parallel rank
// initialise its own shard of a weight and still get exactly the numbers of the unsharded
// weight, and what makes the whole state two integers that a checkpoint can save.
#ifndef LT_RNG_H
#define LT_RNG_H

#include <stdint.h>

typedef struct lt_rng {
  uint64_t key;
  uint64_t counter;
} lt_rng;

lt_rng lt_rng_seed(uint64_t seed);
// An independent child stream named by `stream` (e.g. a parameter's index or a rank).
lt_rng lt_rng_split(lt_rng parent, uint64_t stream);
// An independent child stream named by a string (e.g. a parameter's name).
lt_rng lt_rng_split_name(lt_rng parent, const char *name);

uint64_t lt_rng_u64(lt_rng *rng);
// Uniform in [0, 1) with 24 random bits (exactly representable as float).
float lt_rng_uniform(lt_rng *rng);
// Uniform integer in [0, n), n > 0, without modulo bias.
uint64_t lt_rng_below(lt_rng *rng, uint64_t n);
// Standard normal via Box-Muller; uses two draws.
float lt_rng_normal(lt_rng *rng);

// Stateless forms: the value at position `index` of stream `key`.
uint64_t lt_rng_u64_at(uint64_t key, uint64_t index);
float lt_rng_normal_at(uint64_t key, uint64_t index);

#endif
