// CRC-32C (Castagnoli: reflected polynomial 0x82F63B78, initial value and final XOR 0xFFFFFFFF),
// the checksum of iSCSI, ext4 and SSE4.2's crc32 instruction. Checkpoint manifests use it to
// check whole files before HDF5 reads them.
//
// Chained like zlib's crc32: start with 0 and pass each result back in, so
// lt_crc32c(lt_crc32c(0, a, n), b, m) is the checksum of a followed by b.
#ifndef LT_CRC32C_H
#define LT_CRC32C_H

#include <stddef.h>
#include <stdint.h>

// The fastest path this build has: SSE4.2's crc32 instruction where the compiler targets it
// (-march=x86-64-v3 does), else the table.
uint32_t lt_crc32c(uint32_t crc, const void *data, size_t len);
// The portable path (slicing-by-8 tables), always present: the reference the others must match.
uint32_t lt_crc32c_table(uint32_t crc, const void *data, size_t len);
#ifdef __SSE4_2__
#define LT_CRC32C_SSE42 1
uint32_t lt_crc32c_sse42(uint32_t crc, const void *data, size_t len);
#endif

#endif
