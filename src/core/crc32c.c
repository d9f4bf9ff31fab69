#include "core/crc32c.h"

#include <pthread.h>
#include <string.h>

#ifdef __SSE4_2__
#include <nmmintrin.h>
#endif

enum { CRC32C_POLY = 0x82F63B78u }; // 0x1EDC6F41 bit-reversed

// table[0][b] is the CRC of byte b; table[k][b] that of byte b followed by k zero bytes, so eight
// lookups advance the CRC over eight bytes at once (slicing-by-8; Kounavis and Berry, "A
// Systematic Approach to Building High Performance Software-based CRC Generators", 2005).
static uint32_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void make_table(void) {
  for (uint32_t b = 0; b < 256; b++) {
    uint32_t crc = b;
    for (int bit = 0; bit < 8; bit++) crc = crc & 1 ? (crc >> 1) ^ CRC32C_POLY : crc >> 1;
    table[0][b] = crc;
  }
  for (int k = 1; k < 8; k++)
    for (int b = 0; b < 256; b++)
      table[k][b] = (table[k - 1][b] >> 8) ^ table[0][table[k - 1][b] & 0xFF];
}

uint32_t lt_crc32c_table(uint32_t crc, const void *data, size_t len) {
  pthread_once(&table_once, make_table);
  const unsigned char *p = data;
  crc = ~crc;
  for (; len >= 8; p += 8, len -= 8) {
    uint32_t lo, hi; // little-endian words, as the reflected CRC consumes bytes
    memcpy(&lo, p, 4);
    memcpy(&hi, p + 4, 4);
    lo ^= crc;
    crc = table[7][lo & 0xFF] ^ table[6][(lo >> 8) & 0xFF] ^ table[5][(lo >> 16) & 0xFF] ^
          table[4][lo >> 24] ^ table[3][hi & 0xFF] ^ table[2][(hi >> 8) & 0xFF] ^
          table[1][(hi >> 16) & 0xFF] ^ table[0][hi >> 24];
  }
  for (; len > 0; p++, len--) crc = (crc >> 8) ^ table[0][(crc ^ *p) & 0xFF];
  return ~crc;
}

#ifdef __SSE4_2__
uint32_t lt_crc32c_sse42(uint32_t crc, const void *data, size_t len) {
  const unsigned char *p = data;
  uint64_t c = ~crc;
  for (; len >= 8; p += 8, len -= 8) {
    uint64_t word;
    memcpy(&word, p, 8);
    c = _mm_crc32_u64(c, word);
  }
  for (; len > 0; p++, len--) c = _mm_crc32_u8((uint32_t)c, *p);
  return ~(uint32_t)c;
}
#endif

uint32_t lt_crc32c(uint32_t crc, const void *data, size_t len) {
#ifdef __SSE4_2__
  return lt_crc32c_sse42(crc, data, len);
#else
  return lt_crc32c_table(crc, data, len);
#endif
}
