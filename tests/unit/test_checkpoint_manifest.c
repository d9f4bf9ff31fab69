// The checkpoint manifest's text: what the writer makes parses back to the same entries and the
// same bytes; the parser accepts only that one spelling, and says "checksum mismatch" for any
// change the last line does not vouch for and names the line of anything else malformed.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/crc32c.h"
#include "testing.h"
#include "train/checkpoint_manifest.h"

static const char body[] = "longtrain-checkpoint-manifest 1\n"
                           "meta.h5 3431 1a2b3c4d\n"
                           "shard-00000-of-00002.h5 0 00000000\n"
                           "shard-00001-of-00002.h5 1234567890123 ffffffff\n";

// `lines` followed by the last line that vouches for them; static, so one at a time.
static const char *sealed(const char *lines) {
  static char text[1024];
  snprintf(text, sizeof text, "%scrc32c %08x\n", lines,
           (unsigned)lt_crc32c(0, lines, strlen(lines)));
  return text;
}

static int parse(const char *text, lt_manifest *m) {
  return lt_manifest_parse("ckpt/manifest.txt", text, strlen(text), m);
}

static void test_the_written_text_parses_back_to_the_same_entries_and_bytes(void **state) {
  (void)state;
  lt_manifest m;
  const char *text = sealed(body);
  assert_ok(parse(text, &m));
  assert_int_equal(m.version, 1);
  assert_int_equal(m.n_files, 3);
  assert_string_equal(m.files[0].name, "meta.h5");
  assert_int_equal(m.files[0].size, 3431);
  assert_int_equal(m.files[0].crc32c, 0x1a2b3c4d);
  assert_int_equal(m.files[2].size, 1234567890123);
  assert_int_equal(m.files[2].crc32c, 0xffffffffu);
  assert_non_null(lt_manifest_find(&m, "shard-00001-of-00002.h5"));
  assert_null(lt_manifest_find(&m, "shard-00002-of-00002.h5"));
  char *again;
  size_t len;
  assert_ok(lt_manifest_format(&m, &again, &len));
  assert_int_equal(len, strlen(text));
  assert_memory_equal(again, text, len);
  free(again);
  lt_manifest_free(&m);
}

static void test_format_sorts_the_files_by_name(void **state) {
  (void)state;
  lt_manifest_entry files[2] = {{"shard-00000-of-00001.h5", 5, 1}, {"meta.h5", 7, 2}};
  lt_manifest m = {.version = 1, .files = files, .n_files = 2};
  char *text;
  size_t len;
  assert_ok(lt_manifest_format(&m, &text, &len));
  assert_string_equal(text, sealed("longtrain-checkpoint-manifest 1\n"
                                   "meta.h5 7 00000002\n"
                                   "shard-00000-of-00001.h5 5 00000001\n"));
  free(text);
}

// Every single-byte change of a valid manifest, each of 8 bit flips at every position: a checksum
// mismatch (CRC-32C detects every error within 32 consecutive bits).
static void test_every_flipped_bit_is_a_checksum_mismatch(void **state) {
  (void)state;
  char text[1024];
  snprintf(text, sizeof text, "%s", sealed(body));
  const size_t len = strlen(text);
  for (size_t at = 0; at < len; at++)
    for (int bit = 0; bit < 8; bit++) {
      text[at] ^= (char)(1 << bit);
      lt_manifest m;
      EXPECT_ERROR(lt_manifest_parse("ckpt/manifest.txt", text, len, &m), LT_ERR_CKPT,
                   "ckpt/manifest.txt: corrupt (checksum mismatch)");
      text[at] ^= (char)(1 << bit);
    }
}

static void test_truncated_or_extended_text_is_a_checksum_mismatch(void **state) {
  (void)state;
  char text[1024];
  snprintf(text, sizeof text, "%s", sealed(body));
  const size_t len = strlen(text);
  lt_manifest m;
  for (size_t cut = 0; cut < len; cut++)
    EXPECT_ERROR(lt_manifest_parse("m", text, cut, &m), LT_ERR_CKPT, "checksum mismatch");
  strcat(text, "\n");
  EXPECT_ERROR(parse(text, &m), LT_ERR_CKPT, "checksum mismatch");
}

// Texts whose last line vouches for them but that are not the one spelling: each names its line.
static void test_other_spellings_are_refused_naming_the_line(void **state) {
  (void)state;
  const struct {
    const char *lines, *error;
  } cases[] = {
      {"", "line 1: not a longtrain checkpoint manifest"},
      {"longtrain-checkpoint-manifest\n", "line 1: not a longtrain"},
      {"longtrain-checkpoint-manifest 01\n", "line 1: expected a format version"},
      {"longtrain-checkpoint-manifest 0\n", "line 1: expected a format version"},
      {"longtrain-checkpoint-manifest 1 \n", "line 1: expected a format version"},
      {"longtrain-checkpoint-manifest 1\r\n", "line 1: expected a format version"},
      {"longtrain-checkpoint-manifest 1\nmeta.h5 01 1a2b3c4d\n", "line 2: expected a size"},
      {"longtrain-checkpoint-manifest 1\nmeta.h5 -1 1a2b3c4d\n", "line 2: expected a size"},
      {"longtrain-checkpoint-manifest 1\nmeta.h5 1234567890123456789 1a2b3c4d\n",
       "line 2: expected a size"},
      {"longtrain-checkpoint-manifest 1\nmeta.h5  1 1a2b3c4d\n", "line 2: expected a size"},
      {"longtrain-checkpoint-manifest 1\nmeta.h5 1 1A2B3C4D\n", "line 2: expected a CRC-32C"},
      {"longtrain-checkpoint-manifest 1\nmeta.h5 1 1a2b3c4\n", "line 2: expected a CRC-32C"},
      {"longtrain-checkpoint-manifest 1\nmeta.h5 1 1a2b3c4d \n", "line 2: expected a CRC-32C"},
      {"longtrain-checkpoint-manifest 1\n../meta.h5 1 1a2b3c4d\n", "line 2: expected a file name"},
      {"longtrain-checkpoint-manifest 1\n.hidden 1 1a2b3c4d\n", "line 2: expected a file name"},
      {"longtrain-checkpoint-manifest 1\nmanifest.txt 1 1a2b3c4d\n",
       "line 2: expected a file name"},
      {"longtrain-checkpoint-manifest 1\n 1 1a2b3c4d\n", "line 2: expected a file name"},
      {"longtrain-checkpoint-manifest 1\nshard.h5 1 1a2b3c4d\nmeta.h5 1 1a2b3c4d\n",
       "line 3: file names out of order or repeated"},
      {"longtrain-checkpoint-manifest 1\nmeta.h5 1 1a2b3c4d\nmeta.h5 1 1a2b3c4d\n",
       "line 3: file names out of order or repeated"},
      {"longtrain-checkpoint-manifest 1\n\n", "line 2: expected a file name"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    lt_manifest m;
    EXPECT_ERROR(parse(sealed(cases[i].lines), &m), LT_ERR_CKPT,
                 "ckpt/manifest.txt: ", cases[i].error, "(corrupt)");
  }
}

static void test_a_newer_version_asks_for_an_upgrade(void **state) {
  (void)state;
  lt_manifest m;
  EXPECT_ERROR(parse(sealed("longtrain-checkpoint-manifest 2\nwhatever comes\n"), &m), LT_ERR_CKPT,
               "format version 2 is newer than this longtrain reads (1)", "upgrade longtrain");
}

static void test_a_manifest_listing_no_file_parses_and_formats_back(void **state) {
  (void)state;
  lt_manifest m;
  const char *text = sealed("longtrain-checkpoint-manifest 1\n");
  assert_ok(parse(text, &m));
  assert_int_equal(m.n_files, 0);
  assert_null(lt_manifest_find(&m, "meta.h5"));
  char *again; // found by fuzz_checkpoint: formatting no file passed NULL to qsort
  size_t len;
  assert_ok(lt_manifest_format(&m, &again, &len));
  assert_string_equal(again, text);
  free(again);
  lt_manifest_free(&m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_the_written_text_parses_back_to_the_same_entries_and_bytes),
      cmocka_unit_test(test_format_sorts_the_files_by_name),
      cmocka_unit_test(test_every_flipped_bit_is_a_checksum_mismatch),
      cmocka_unit_test(test_truncated_or_extended_text_is_a_checksum_mismatch),
      cmocka_unit_test(test_other_spellings_are_refused_naming_the_line),
      cmocka_unit_test(test_a_newer_version_asks_for_an_upgrade),
      cmocka_unit_test(test_a_manifest_listing_no_file_parses_and_formats_back),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
