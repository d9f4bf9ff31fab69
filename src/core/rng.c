#include "core/rng.h"

#include <math.h>

// SplitMix64's finaliser (Steele, Lea & Flood, "Fast splittable pseudorandom number generators",
// OOPSLA 2014): a bijective 64-bit mix with full avalanche. Hashing (key, counter) through it twice
// gives a counter-based generator that passes BigCrush for distinct keys.
static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static const uint64_t golden = 0x9e3779b97f4a7c15ULL;

lt_rng lt_rng_seed(uint64_t seed) {
  return (lt_rng){.key = mix64(seed + golden), .counter = 0};
}

lt_rng lt_rng_split(lt_rng parent, uint64_t stream) {
  return (lt_rng){.key = mix64(parent.key ^ mix64(stream * golden + 1)), .counter = 0};
}

lt_rng lt_rng_split_name(lt_rng parent, const char *name) {
  uint64_t h = 0xcbf29ce484222325ULL; // FNV-1a, then mixed
  for (const unsigned char *p = (const unsigned char *)name; *p; p++)
    h = (h ^ *p) * 0x100000001b3ULL;
  return lt_rng_split(parent, mix64(h));
}

uint64_t lt_rng_u64_at(uint64_t key, uint64_t index) {
  return mix64(mix64(key + index * golden) ^ key);
}

uint64_t lt_rng_u64(lt_rng *rng) {
  return lt_rng_u64_at(rng->key, rng->counter++);
}

float lt_rng_uniform(lt_rng *rng) {
  return (float)(lt_rng_u64(rng) >> 40) * 0x1.0p-24f;
}

uint64_t lt_rng_below(lt_rng *rng, uint64_t n) {
  uint64_t limit = UINT64_MAX - UINT64_MAX % n; // reject the short last bucket
  for (;;) {
    uint64_t x = lt_rng_u64(rng);
    if (x < limit) return x % n;
  }
}

static float box_muller(uint64_t a, uint64_t b) {
  // u1 in (0, 1] so the log is finite; 53-bit doubles keep the tails accurate.
  double u1 = ((double)(a >> 11) + 1.0) * 0x1.0p-53;
  double u2 = (double)(b >> 11) * 0x1.0p-53;
  return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

float lt_rng_normal(lt_rng *rng) {
  uint64_t a = lt_rng_u64(rng);
  return box_muller(a, lt_rng_u64(rng));
}

float lt_rng_normal_at(uint64_t key, uint64_t index) {
  return box_muller(lt_rng_u64_at(key, 2 * index), lt_rng_u64_at(key, 2 * index + 1));
}
