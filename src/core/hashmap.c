#include "core/hashmap.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"

#define EMPTY_KEY UINT32_MAX

// FNV-1a over the bytes, then a final mix so that the low bits (the slot index) depend on all of
// them.
static uint64_t hash_bytes(const char *key, size_t len) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)key[i]) * 0x100000001b3ull;
  h ^= h >> 32;
  h *= 0x9e3779b97f4a7c15ull;
  return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t key) {
  key ^= key >> 33;
  key *= 0xff51afd7ed558ccdull;
  key ^= key >> 33;
  key *= 0xc4ceb9fe1a85ec53ull;
  return key ^ (key >> 33);
}

static size_t table_size(size_t expected) {
  size_t n = 16;
  while (n < 2 * expected) n *= 2;
  return n;
}

static int strmap_alloc(lt_strmap *map, size_t n) {
  map->slots = malloc(n * sizeof *map->slots);
  LT_CHECK(map->slots, LT_ERR_MEMORY, "out of memory for a hash table of %zu slots", n);
  for (size_t i = 0; i < n; i++) map->slots[i].key_len = EMPTY_KEY;
  map->mask = n - 1;
  return LT_OK;
}

int lt_strmap_init(lt_strmap *map, size_t expected) {
  *map = (lt_strmap){0};
  return strmap_alloc(map, table_size(expected));
}

static size_t strmap_find(const lt_strmap *map, uint64_t hash, const char *key, size_t len) {
  size_t i = (size_t)hash & map->mask;
  for (;; i = (i + 1) & map->mask) {
    const lt_strmap_slot *s = &map->slots[i];
    if (s->key_len == EMPTY_KEY) return i;
    if (s->hash == hash && s->key_len == len && memcmp(map->keys + s->key_start, key, len) == 0)
      return i;
  }
}

static int strmap_grow(lt_strmap *map) {
  lt_strmap old = *map;
  LT_TRY(strmap_alloc(map, (old.mask + 1) * 2));
  for (size_t i = 0; i <= old.mask; i++) {
    if (old.slots[i].key_len == EMPTY_KEY) continue;
    size_t j = (size_t)old.slots[i].hash & map->mask;
    while (map->slots[j].key_len != EMPTY_KEY) j = (j + 1) & map->mask;
    map->slots[j] = old.slots[i];
  }
  free(old.slots);
  return LT_OK;
}

int lt_strmap_put(lt_strmap *map, const char *key, size_t len, int32_t value) {
  LT_CHECK(len < EMPTY_KEY, LT_ERR_MEMORY, "hash map key of %zu bytes is too long", len);
  uint64_t hash = hash_bytes(key, len);
  size_t i = strmap_find(map, hash, key, len);
  if (map->slots[i].key_len != EMPTY_KEY) {
    map->slots[i].value = value;
    return LT_OK;
  }
  if (map->keys_len + len > map->keys_cap) {
    size_t cap = (map->keys_len + len) * 2 + 256;
    LT_CHECK(cap < EMPTY_KEY, LT_ERR_MEMORY, "hash map keys exceed 4 GiB");
    char *grown = realloc(map->keys, cap);
    LT_CHECK(grown, LT_ERR_MEMORY, "out of memory for hash map keys");
    map->keys = grown, map->keys_cap = cap;
  }
  if (len) memcpy(map->keys + map->keys_len, key, len);
  map->slots[i] = (lt_strmap_slot){hash, (uint32_t)map->keys_len, (uint32_t)len, value};
  map->keys_len += len;
  map->count++;
  return 2 * map->count > map->mask + 1 ? strmap_grow(map) : LT_OK;
}

bool lt_strmap_get(const lt_strmap *map, const char *key, size_t len, int32_t *value) {
  const lt_strmap_slot *s = &map->slots[strmap_find(map, hash_bytes(key, len), key, len)];
  if (s->key_len == EMPTY_KEY) return false;
  *value = s->value;
  return true;
}

void lt_strmap_clear(lt_strmap *map) {
  for (size_t i = 0; i <= map->mask; i++) map->slots[i].key_len = EMPTY_KEY;
  map->count = 0;
  map->keys_len = 0;
}

void lt_strmap_free(lt_strmap *map) {
  free(map->slots);
  free(map->keys);
  *map = (lt_strmap){0};
}

static int u64map_alloc(lt_u64map *map, size_t n) {
  map->slots = malloc(n * sizeof *map->slots);
  LT_CHECK(map->slots, LT_ERR_MEMORY, "out of memory for a hash table of %zu slots", n);
  for (size_t i = 0; i < n; i++) map->slots[i].key = UINT64_MAX;
  map->mask = n - 1;
  return LT_OK;
}

int lt_u64map_init(lt_u64map *map, size_t expected) {
  *map = (lt_u64map){0};
  return u64map_alloc(map, table_size(expected));
}

static size_t u64map_find(const lt_u64map *map, uint64_t key) {
  size_t i = (size_t)hash_u64(key) & map->mask;
  while (map->slots[i].key != UINT64_MAX && map->slots[i].key != key) i = (i + 1) & map->mask;
  return i;
}

int lt_u64map_put(lt_u64map *map, uint64_t key, uint64_t value) {
  LT_ASSERT(key != UINT64_MAX);
  size_t i = u64map_find(map, key);
  if (map->slots[i].key == key) {
    map->slots[i].value = value;
    return LT_OK;
  }
  map->slots[i] = (lt_u64map_slot){key, value};
  if (2 * ++map->count <= map->mask + 1) return LT_OK;
  lt_u64map old = *map;
  LT_TRY(u64map_alloc(map, (old.mask + 1) * 2));
  for (size_t j = 0; j <= old.mask; j++)
    if (old.slots[j].key != UINT64_MAX)
      map->slots[u64map_find(map, old.slots[j].key)] = old.slots[j];
  free(old.slots);
  return LT_OK;
}

bool lt_u64map_get(const lt_u64map *map, uint64_t key, uint64_t *value) {
  const lt_u64map_slot *s = &map->slots[u64map_find(map, key)];
  if (s->key != key) return false;
  *value = s->value;
  return true;
}

void lt_u64map_free(lt_u64map *map) {
  free(map->slots);
  *map = (lt_u64map){0};
}
