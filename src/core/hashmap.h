// Open-addressing hash maps (linear probing, power-of-two tables kept at most half full), for the
// tokenizer's vocabulary, merge ranks and word cache, where lookups are the hot path.
#ifndef LT_HASHMAP_H
#define LT_HASHMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// Byte strings (copied into the map) to int32 values.
typedef struct lt_strmap_slot {
  uint64_t hash;
  uint32_t key_start, key_len; // into keys; key_len == UINT32_MAX marks an empty slot
  int32_t value;
} lt_strmap_slot;

typedef struct lt_strmap {
  lt_strmap_slot *slots;
  size_t mask; // slots - 1
  size_t count;
  char *keys; // every key's bytes, back to back
  size_t keys_len, keys_cap;
} lt_strmap;

int lt_strmap_init(lt_strmap *map, size_t expected);
// Inserts key -> value, or replaces the value of a key already there.
int lt_strmap_put(lt_strmap *map, const char *key, size_t len, int32_t value);
bool lt_strmap_get(const lt_strmap *map, const char *key, size_t len, int32_t *value);
// Empties the map, keeping its memory.
void lt_strmap_clear(lt_strmap *map);
void lt_strmap_free(lt_strmap *map);

// 64-bit keys to 64-bit values; UINT64_MAX is not a valid key.
typedef struct lt_u64map_slot {
  uint64_t key, value;
} lt_u64map_slot;

typedef struct lt_u64map {
  lt_u64map_slot *slots;
  size_t mask, count;
} lt_u64map;

int lt_u64map_init(lt_u64map *map, size_t expected);
int lt_u64map_put(lt_u64map *map, uint64_t key, uint64_t value);
bool lt_u64map_get(const lt_u64map *map, uint64_t key, uint64_t *value);
void lt_u64map_free(lt_u64map *map);

#endif
