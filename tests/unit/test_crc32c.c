// CRC-32C: the published check values, chaining, and the SSE4.2 path equal to the table on every
// length and alignment.
#include <string.h>

#include "core/crc32c.h"
#include "core/rng.h"
#include "testing.h"

// The check value of the CRC catalogue (reveng.sourceforge.io, "CRC-32/ISCSI").
static void test_check_value_of_123456789_is_e3069283(void **state) {
  (void)state;
  assert_int_equal(lt_crc32c(0, "123456789", 9), 0xE3069283u);
  assert_int_equal(lt_crc32c_table(0, "123456789", 9), 0xE3069283u);
  assert_int_equal(lt_crc32c(0, "", 0), 0);
}

// The test vectors of RFC 3720 (iSCSI), appendix B.4: 32 bytes each.
static void test_rfc3720_vectors(void **state) {
  (void)state;
  unsigned char zeros[32], ones[32], up[32], down[32];
  memset(zeros, 0, sizeof zeros);
  memset(ones, 0xFF, sizeof ones);
  for (int i = 0; i < 32; i++) up[i] = (unsigned char)i, down[i] = (unsigned char)(31 - i);
  const struct {
    const unsigned char *bytes;
    uint32_t crc;
  } vectors[] = {{zeros, 0x8A9136AAu}, {ones, 0x62A8AB43u}, {up, 0x46DD794Eu}, {down, 0x113FDB5Cu}};
  for (int i = 0; i < 4; i++) {
    assert_int_equal(lt_crc32c(0, vectors[i].bytes, 32), vectors[i].crc);
    assert_int_equal(lt_crc32c_table(0, vectors[i].bytes, 32), vectors[i].crc);
  }
}

static void test_chained_pieces_give_the_checksum_of_the_whole(void **state) {
  (void)state;
  const char *text = "The quick brown fox jumps over the lazy dog";
  const size_t n = strlen(text);
  const uint32_t whole = lt_crc32c(0, text, n);
  assert_int_equal(whole, 0x22620404u);
  for (size_t cut = 0; cut <= n; cut++) {
    assert_int_equal(lt_crc32c(lt_crc32c(0, text, cut), text + cut, n - cut), whole);
    assert_int_equal(lt_crc32c_table(lt_crc32c_table(0, text, cut), text + cut, n - cut), whole);
  }
}

// Every length 0..300 at every alignment 0..7, and a few large buffers.
static void test_sse42_path_equals_the_table(void **state) {
  (void)state;
#ifndef LT_CRC32C_SSE42
  print_message("skipped: this build has no SSE4.2 path (LT_CPU_ARCH without sse4.2)\n");
  skip();
#else
  enum { BIG = 3 << 20 };
  static unsigned char bytes[BIG + 8];
  lt_rng rng = lt_rng_seed(5);
  for (size_t i = 0; i < sizeof bytes; i++) bytes[i] = (unsigned char)lt_rng_u64(&rng);
  for (int align = 0; align < 8; align++)
    for (size_t len = 0; len <= 300; len++)
      assert_int_equal(lt_crc32c_sse42(7, bytes + align, len),
                       lt_crc32c_table(7, bytes + align, len));
  const size_t big[] = {BIG, BIG - 1, (1 << 20) + 3};
  for (int i = 0; i < 3; i++)
    assert_int_equal(lt_crc32c_sse42(0, bytes + 1, big[i]), lt_crc32c_table(0, bytes + 1, big[i]));
#endif
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_check_value_of_123456789_is_e3069283),
      cmocka_unit_test(test_rfc3720_vectors),
      cmocka_unit_test(test_chained_pieces_give_the_checksum_of_the_whole),
      cmocka_unit_test(test_sse42_path_equals_the_table),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
