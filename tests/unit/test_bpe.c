// Byte-level BPE (GPT-2 / Llama-3 tokenizer.json): the ids of Hugging Face tokenizers on the
// samples saved by tests/fixtures/make_bpe_reference.py, exactly; decoding back to the text; the
// split regexes and character classes on hand-picked cases; and a one-line data error naming the
// file and the field for every tokenizer.json longtrain cannot reproduce.
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/dataset.h"
#include "data/prepare.h"
#include "data/pretokenize.h"
#include "data/tokenizer.h"
#include "data/unicode_class.h"
#include "testing.h"

static const char *const fixture_names[] = {"gpt2", "llama3", "options"};

static cJSON *load_reference(void) {
  const char *path = lt_test_source_path("tests/fixtures/bpe_reference.json");
  FILE *f = fopen(path, "rb");
  if (!f) fail_msg("cannot open %s", path);
  static char text[1 << 20];
  size_t len = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[len] = '\0';
  cJSON *root = cJSON_Parse(text);
  if (!root) fail_msg("%s is not valid JSON", path);
  return root;
}

static void open_fixture(lt_tokenizer *tok, const char *name) {
  char rel[128];
  snprintf(rel, sizeof rel, "tests/fixtures/bpe_%s.json", name);
  assert_ok(lt_tokenizer_bpe(tok, lt_test_source_path(rel)));
}

static size_t encode(const lt_tokenizer *tok, const char *text, size_t len, int32_t **ids) {
  size_t n = 0, cap = 0;
  *ids = NULL;
  assert_ok(tok->encode(tok, text, len, ids, &n, &cap));
  return n;
}

// Every sample's ids and decoded text equal Hugging Face's for the named tokenizer.
static void check_fixture_matches_hugging_face(const char *name) {
  cJSON *ref = load_reference();
  lt_tokenizer tok;
  open_fixture(&tok, name);
  static char decoded[1 << 18];
  int index = 0, total_ids = 0;
  const cJSON *samples = cJSON_GetObjectItem(ref, "samples");
  for (const cJSON *s = samples->child; s; s = s->next, index++) {
    const char *text = cJSON_GetObjectItem(s, "text")->valuestring;
    const cJSON *want = cJSON_GetObjectItem(cJSON_GetObjectItem(s, "ids"), name);
    int32_t *ids;
    size_t n = encode(&tok, text, strlen(text), &ids);
    for (size_t i = 0; i < n || i < (size_t)cJSON_GetArraySize(want); i++) {
      const cJSON *w = cJSON_GetArrayItem(want, (int)i);
      if (i >= n || !w || ids[i] != w->valueint)
        fail_msg("%s, sample %d: id %zu is %d, Hugging Face has %d (%zu vs %d ids)", name, index, i,
                 i < n ? ids[i] : -1, w ? w->valueint : -1, n, cJSON_GetArraySize(want));
    }
    total_ids += (int)n;
    size_t len = tok.decode(&tok, ids, n, decoded, sizeof decoded);
    const char *hf = cJSON_GetObjectItem(cJSON_GetObjectItem(s, "decoded"), name)->valuestring;
    if (len != strlen(hf) || memcmp(decoded, hf, len) != 0)
      fail_msg("%s, sample %d: decodes to '%.80s', Hugging Face to '%.80s'", name, index, decoded,
               hf);
    free(ids);
  }
  assert_true(index > 20 && total_ids > 3000);
  lt_tokenizer_destroy(&tok);
  cJSON_Delete(ref);
}

static void test_gpt2_tokenizer_gives_hugging_face_ids(void **state) {
  (void)state;
  check_fixture_matches_hugging_face("gpt2");
}

static void test_llama3_tokenizer_gives_hugging_face_ids(void **state) {
  (void)state;
  check_fixture_matches_hugging_face("llama3");
}

static void test_prefix_space_and_added_token_options_give_hugging_face_ids(void **state) {
  (void)state;
  check_fixture_matches_hugging_face("options");
}

static void test_decode_of_encode_gives_back_any_bytes(void **state) {
  (void)state;
  // Random bytes: mostly invalid UTF-8, every control character, stray continuation bytes.
  static char text[20000], decoded[sizeof text + 1];
  uint64_t x = 42;
  for (size_t i = 0; i < sizeof text; i++) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    text[i] = (char)(x >> 56);
  }
  for (int f = 0; f < 2; f++) {
    lt_tokenizer tok;
    open_fixture(&tok, fixture_names[f]);
    int32_t *ids;
    size_t n = encode(&tok, text, sizeof text, &ids);
    assert_true(n > 0 && n <= sizeof text);
    assert_int_equal(tok.decode(&tok, ids, n, decoded, sizeof decoded), sizeof text);
    assert_memory_equal(decoded, text, sizeof text);
    free(ids);
    lt_tokenizer_destroy(&tok);
  }
}

// Found by fuzzing: an lstrip token after a stray UTF-8 continuation byte once scanned back for
// whitespace past the end of the previous token (here, into the space its rstrip had taken).
static void test_lstrip_token_after_invalid_utf8_stays_after_the_previous_token(void **state) {
  (void)state;
  const char text[] = "<mask> \x92<mask>x \x92<mask>y";
  // The first <mask> takes the space after it; the stray byte is text, which add_prefix_space
  // prefixes with a space, as it does "x \x92" and "y".
  const char want[] = "<mask> \x92<mask> x \x92<mask> y";
  lt_tokenizer tok;
  open_fixture(&tok, "options");
  int32_t *ids;
  size_t n = encode(&tok, text, sizeof text - 1, &ids);
  char decoded[64];
  assert_int_equal(tok.decode(&tok, ids, n, decoded, sizeof decoded), sizeof want - 1);
  assert_memory_equal(decoded, want, sizeof want - 1);
  free(ids);
  lt_tokenizer_destroy(&tok);
}

static void test_second_encoding_from_the_word_cache_gives_the_same_ids(void **state) {
  (void)state;
  const char *text = "the cat and the hat and the bat, the cat again; 1234 1234 don't don't";
  lt_tokenizer tok;
  open_fixture(&tok, "llama3");
  int32_t *first, *second;
  size_t n1 = encode(&tok, text, strlen(text), &first);
  size_t n2 = encode(&tok, text, strlen(text), &second);
  assert_int_equal(n1, n2);
  assert_memory_equal(first, second, n1 * sizeof *first);
  free(first);
  free(second);
  lt_tokenizer_destroy(&tok);
}

static void test_vocab_size_and_eos_come_from_the_file(void **state) {
  (void)state;
  lt_tokenizer tok;
  open_fixture(&tok, "gpt2");
  assert_int_equal(tok.vocab_size, 2000);
  assert_int_equal(tok.eos_id, 0); // <|endoftext|>
  assert_non_null(strstr(tok.name, "bpe:"));
  lt_tokenizer_destroy(&tok);
  open_fixture(&tok, "llama3");
  assert_int_equal(tok.vocab_size, 2010); // 2002 in the model, 8 special tokens after it
  assert_int_equal(tok.eos_id, 2003);     // <|end_of_text|>
  lt_tokenizer_destroy(&tok);
}

static void test_decode_stops_before_a_token_that_does_not_fit_and_skips_unknown_ids(void **state) {
  (void)state;
  lt_tokenizer tok;
  open_fixture(&tok, "gpt2");
  int32_t *ids;
  size_t n = encode(&tok, "hello<|endoftext|>", 18, &ids);
  char out[8];
  assert_int_equal(tok.decode(&tok, ids, n, out, sizeof out), 5);
  assert_string_equal(out, "hello");
  int32_t with_unknown[8] = {-1, 5000};
  memcpy(with_unknown + 2, ids, n * sizeof *ids);
  char all[32];
  assert_int_equal(tok.decode(&tok, with_unknown, n + 2, all, sizeof all), 18);
  assert_string_equal(all, "hello<|endoftext|>");
  free(ids);
  lt_tokenizer_destroy(&tok);
}

// The pieces that `regex` cuts `text` into, joined by '|'.
static const char *split(lt_split_regex regex, const char *text) {
  static char out[512];
  size_t len = strlen(text), o = 0;
  for (size_t at = 0, end; at < len; at = end) {
    end = lt_split_match_end(regex, text, len, at);
    assert_true(end > at && end <= len);
    if (at > 0) out[o++] = '|';
    memcpy(out + o, text + at, end - at);
    o += end - at;
  }
  out[o] = '\0';
  return out;
}

static void test_gpt2_regex_splits_words_contractions_numbers_and_spaces(void **state) {
  (void)state;
  assert_string_equal(split(LT_SPLIT_GPT2, "Hello  world's 123!!  \n"),
                      "Hello| | world|'s| 123|!!|  \n");
  assert_string_equal(split(LT_SPLIT_GPT2, "DON'T don't"), "DON|'|T| don|'t");
  assert_string_equal(split(LT_SPLIT_GPT2, "a\n\nb  "), "a|\n|\n|b|  ");
  // Only U+0020 may lead a word; other whitespace stands alone.
  assert_string_equal(split(LT_SPLIT_GPT2, "x\u00a0\u00a0y 12ab"), "x|\u00a0|\u00a0|y| 12|ab");
}

static void test_llama3_regex_splits_like_gpt2_except_where_it_differs(void **state) {
  (void)state;
  assert_string_equal(split(LT_SPLIT_LLAMA3, "Hello  world's 12345!!\n\n  x"),
                      "Hello| | world|'s| |123|45|!!\n\n| | x");
  // Contractions in any case (U+017F LONG S folds to s); one punctuation character or tab may
  // lead a word.
  assert_string_equal(split(LT_SPLIT_LLAMA3, "(word DON'T x'ſt (y\t\tx"),
                      "(word| DON|'T| x|'ſ|t| (|y|\t|\tx");
  // Whitespace up to the last newline is one piece.
  assert_string_equal(split(LT_SPLIT_LLAMA3, "a \n \n  b"), "a| \n \n| | b");
}

static void test_character_classes_follow_unicode_categories(void **state) {
  (void)state;
  const struct {
    uint32_t cp;
    lt_uclass cls;
  } cases[] = {{'A', LT_UC_LETTER},     {0xE9, LT_UC_LETTER},    {0x65E5, LT_UC_LETTER},
               {0x1C5, LT_UC_LETTER},   {0x2B0, LT_UC_LETTER},   {'7', LT_UC_NUMBER},
               {0x663, LT_UC_NUMBER},   {0x216B, LT_UC_NUMBER},  {0xB2, LT_UC_NUMBER},
               {0x1D7D8, LT_UC_NUMBER}, {'\t', LT_UC_SPACE},     {0x85, LT_UC_SPACE},
               {0xA0, LT_UC_SPACE},     {0x2028, LT_UC_SPACE},   {0x3000, LT_UC_SPACE},
               {0x200B, LT_UC_OTHER},   {0x301, LT_UC_OTHER},    {0x1F642, LT_UC_OTHER},
               {'\'', LT_UC_OTHER},     {0x10FFFF, LT_UC_OTHER}, {0xE000, LT_UC_OTHER}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    if (lt_unicode_class(cases[i].cp) != cases[i].cls)
      fail_msg("U+%04X has class %d, expected %d", cases[i].cp, lt_unicode_class(cases[i].cp),
               cases[i].cls);
}

static void test_invalid_utf8_is_one_byte_of_class_other(void **state) {
  (void)state;
  const char *invalid[] = {"\x80",     "\xC0\x80", "\xED\xA0\x80", "\xF4\x90\x80\x80",
                           "\xE6\x97", "\xFF"};
  for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
    lt_uchar c = lt_utf8_char(invalid[i], strlen(invalid[i]), 0);
    assert_int_equal(c.len, 1);
    assert_int_equal(c.cls, LT_UC_OTHER);
  }
  lt_uchar c = lt_utf8_char("\xE6\x97\xA5", 3, 0);
  assert_int_equal(c.cp, 0x65E5);
  assert_int_equal(c.len, 3);
}

// A tokenizer.json written to the test folder; `model_extra` and `top_extra` are spliced into the
// model object and the top level of a small valid byte-level BPE file.
static const char *write_tokenizer(const char *name, const char *model, const char *rest) {
  static char path[512];
  char json[4096];
  snprintf(path, sizeof path, "%s/%s.json", lt_test_tmpdir(), name);
  snprintf(json, sizeof json, "{\"model\": {%s}, %s}", model, rest);
  lt_test_write_file(path, json);
  return path;
}

#define ABC_MODEL                                                                                  \
  "\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2, \"ab\": 3, \"bc\": 4, \"abc\": "   \
  "5, "                                                                                            \
  "\"aa\": 6}, \"merges\": [\"b c\", \"a b\", [\"a\", \"a\"]]"
#define BYTE_LEVEL_REST                                                                            \
  "\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": "      \
  "true}, \"decoder\": {\"type\": \"ByteLevel\"}, \"added_tokens\": []"

static void expect_ids(const char *path, const char *text, const int32_t *want, size_t n_want) {
  lt_tokenizer tok;
  assert_ok(lt_tokenizer_bpe(&tok, path));
  int32_t *ids;
  size_t n = encode(&tok, text, strlen(text), &ids);
  assert_int_equal(n, n_want);
  assert_memory_equal(ids, want, n * sizeof *ids);
  free(ids);
  lt_tokenizer_destroy(&tok);
}

static void test_lowest_rank_merges_first_and_leftmost_among_equals(void **state) {
  (void)state;
  const char *path = write_tokenizer("abc", ABC_MODEL, BYTE_LEVEL_REST);
  expect_ids(path, "abc", (const int32_t[]){0, 4}, 2); // "b c" (rank 0) before "a b" (rank 1)
  expect_ids(path, "aaa", (const int32_t[]){6, 0}, 2); // "a a" at the left first
}

static void test_ignore_merges_makes_a_word_in_the_vocab_one_token(void **state) {
  (void)state;
  const char *path =
      write_tokenizer("ignore", ABC_MODEL ", \"ignore_merges\": true", BYTE_LEVEL_REST);
  expect_ids(path, "abc", (const int32_t[]){5}, 1);
}

static void test_byte_without_a_token_is_unk_or_a_data_error(void **state) {
  (void)state;
  const char *path = write_tokenizer("no_unk", ABC_MODEL, BYTE_LEVEL_REST);
  lt_tokenizer tok;
  assert_ok(lt_tokenizer_bpe(&tok, path));
  int32_t *ids = NULL;
  size_t n = 0, cap = 0;
  EXPECT_ERROR(tok.encode(&tok, "abd", 3, &ids, &n, &cap), LT_ERR_DATA, path, "0x64", "unk_token");
  free(ids);
  lt_tokenizer_destroy(&tok);
  path = write_tokenizer("unk",
                         "\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"<unk>\": 1}, \"merges\": [], "
                         "\"unk_token\": \"<unk>\", \"fuse_unk\": true",
                         BYTE_LEVEL_REST);
  expect_ids(path, "axya", (const int32_t[]){0, 1, 0}, 3);
}

typedef struct bad_tokenizer {
  const char *name, *model, *rest, *says;
} bad_tokenizer;

static void test_unsupported_tokenizer_json_is_a_data_error_naming_the_field(void **state) {
  (void)state;
  const char *split_regex = "\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": "
                            "[{\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\s+\"}, "
                            "\"behavior\": \"Isolated\", \"invert\": false}, {\"type\": "
                            "\"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": false}]}, "
                            "\"decoder\": {\"type\": \"ByteLevel\"}";
  const bad_tokenizer cases[] = {
      {"wordpiece", "\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}", BYTE_LEVEL_REST,
       "model.type is WordPiece"},
      {"unigram", "\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]", BYTE_LEVEL_REST,
       "model.type is Unigram"},
      {"normalizer", ABC_MODEL, BYTE_LEVEL_REST ", \"normalizer\": {\"type\": \"NFC\"}",
       "normalizer NFC"},
      {"regex", ABC_MODEL, split_regex, "pattern.Regex is not GPT-2's or Llama-3's"},
      {"metaspace", ABC_MODEL,
       "\"pre_tokenizer\": {\"type\": \"Metaspace\"}, \"decoder\": {\"type\": \"ByteLevel\"}",
       "type Metaspace is not supported"},
      {"no_pre_tokenizer", ABC_MODEL, "\"decoder\": {\"type\": \"ByteLevel\"}", "no pre_tokenizer"},
      {"decoder", ABC_MODEL,
       "\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false}, \"decoder\": "
       "{\"type\": \"Metaspace\"}",
       "decoder is Metaspace"},
      {"byte_fallback", ABC_MODEL ", \"byte_fallback\": true", BYTE_LEVEL_REST, "byte_fallback"},
      {"dropout", ABC_MODEL ", \"dropout\": 0.1", BYTE_LEVEL_REST, "model.dropout"},
      {"merge", "\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a q\"]", BYTE_LEVEL_REST,
       "model.merges[0]: 'q' is not in model.vocab"},
      {"merge_form", "\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"aa\"]",
       BYTE_LEVEL_REST, "model.merges[0] 'aa' is not two tokens"},
      {"id", "\"type\": \"BPE\", \"vocab\": {\"a\": -3}, \"merges\": []", BYTE_LEVEL_REST,
       "model.vocab['a'] must be an integer id"},
      {"split_last", ABC_MODEL,
       "\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": "
       "\"ByteLevel\", \"add_prefix_space\": false}, {\"type\": \"Split\"}]}, \"decoder\": "
       "{\"type\": \"ByteLevel\"}",
       "comes after the ByteLevel pre-tokenizer"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const char *path = write_tokenizer(cases[i].name, cases[i].model, cases[i].rest);
    lt_tokenizer tok;
    EXPECT_ERROR(lt_tokenizer_bpe(&tok, path), LT_ERR_DATA, path, cases[i].says);
  }
}

static void test_malformed_or_missing_tokenizer_json_is_a_data_error_naming_it(void **state) {
  (void)state;
  char path[512];
  snprintf(path, sizeof path, "%s/broken.json", lt_test_tmpdir());
  lt_test_write_file(path, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0,");
  lt_tokenizer tok;
  EXPECT_ERROR(lt_tokenizer_bpe(&tok, path), LT_ERR_DATA, path, "not valid JSON");
  lt_test_write_file(path, "[1, 2]");
  EXPECT_ERROR(lt_tokenizer_bpe(&tok, path), LT_ERR_DATA, path, "not a JSON object");
  EXPECT_ERROR(lt_tokenizer_bpe(&tok, "/nonexistent/tokenizer.json"), LT_ERR_DATA,
               "/nonexistent/tokenizer.json", "cannot open");
}

static void
test_prepare_with_a_tokenizer_json_encodes_whole_documents_and_ends_them_with_eos(void **state) {
  (void)state;
  const char *dir = lt_test_tmpdir();
  char text_path[512], out[512];
  snprintf(text_path, sizeof text_path, "%s/docs.txt", dir);
  snprintf(out, sizeof out, "%s/docs.h5", dir);
  // The blank lines inside a document are pre-tokenized across the line ends.
  const char *docs[] = {"The first document.\n\n  Indented line.\n", "Second one, don't\n"};
  char file_text[256];
  snprintf(file_text, sizeof file_text, "%s%%\n%s", docs[0], docs[1]);
  lt_test_write_file(text_path, file_text);
  char tokenizer[512];
  snprintf(tokenizer, sizeof tokenizer, "%s",
           lt_test_source_path("tests/fixtures/bpe_llama3.json"));
  char *argv[] = {"prepare",         "--output", out,       "--tokenizer", tokenizer,
                  "--doc-separator", "%",        text_path, NULL};
  assert_ok(lt_prepare_main(8, argv));

  lt_tokenizer tok;
  open_fixture(&tok, "llama3");
  int32_t *want = NULL;
  size_t n = 0, cap = 0;
  for (int d = 0; d < 2; d++) {
    assert_ok(tok.encode(&tok, docs[d], strlen(docs[d]), &want, &n, &cap));
    want[n++] = tok.eos_id; // room: encode grows by more than one
  }
  lt_dataset ds;
  assert_ok(lt_dataset_open(&ds, out));
  assert_int_equal(ds.n_tokens, n);
  assert_int_equal(ds.n_docs, 2);
  assert_int_equal(ds.vocab_size, 2010);
  assert_int_equal(ds.eos_id, 2003);
  assert_memory_equal(ds.tokenizer, "bpe:", 4);
  assert_non_null(strstr(ds.tokenizer, "tests/fixtures/bpe_llama3.json"));
  int32_t got[256];
  assert_true(n <= 256);
  assert_ok(lt_dataset_read(&ds, 0, (int64_t)n, got));
  assert_memory_equal(got, want, n * sizeof *want);
  lt_dataset_close(&ds);
  free(want);
  lt_tokenizer_destroy(&tok);
}

static void test_prepare_with_a_tokenizer_without_eos_is_a_data_error(void **state) {
  (void)state;
  const char *tokenizer = write_tokenizer("no_eos", ABC_MODEL, BYTE_LEVEL_REST);
  char text_path[512], out[512];
  snprintf(text_path, sizeof text_path, "%s/t.txt", lt_test_tmpdir());
  snprintf(out, sizeof out, "%s/t.h5", lt_test_tmpdir());
  lt_test_write_file(text_path, "abc\n");
  char *argv[] = {"prepare", "--output", out, "--tokenizer", (char *)tokenizer, text_path, NULL};
  EXPECT_ERROR(lt_prepare_main(6, argv), LT_ERR_DATA, tokenizer, "end-of-text");
}

static void test_longtrain_prepare_with_a_wordpiece_tokenizer_exits_4_with_one_line(void **state) {
  (void)state;
  const char *tokenizer = write_tokenizer(
      "cli_wordpiece", "\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}", BYTE_LEVEL_REST);
  char text_path[512], command[2048], out[4096];
  snprintf(text_path, sizeof text_path, "%s/t.txt", lt_test_tmpdir());
  lt_test_write_file(text_path, "abc\n");
  snprintf(command, sizeof command, "%s prepare --output %s/t.h5 --tokenizer %s %s",
           lt_test_binary(), lt_test_tmpdir(), tokenizer, text_path);
  assert_int_equal(lt_test_run(command, out, sizeof out), LT_ERR_DATA);
  assert_non_null(strstr(out, "longtrain: error: "));
  assert_non_null(strstr(out, "model.type is WordPiece"));
  assert_ptr_equal(strchr(out, '\n'), out + strlen(out) - 1); // one line
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gpt2_tokenizer_gives_hugging_face_ids),
      cmocka_unit_test(test_llama3_tokenizer_gives_hugging_face_ids),
      cmocka_unit_test(test_prefix_space_and_added_token_options_give_hugging_face_ids),
      cmocka_unit_test(test_decode_of_encode_gives_back_any_bytes),
      cmocka_unit_test(test_lstrip_token_after_invalid_utf8_stays_after_the_previous_token),
      cmocka_unit_test(test_second_encoding_from_the_word_cache_gives_the_same_ids),
      cmocka_unit_test(test_vocab_size_and_eos_come_from_the_file),
      cmocka_unit_test(test_decode_stops_before_a_token_that_does_not_fit_and_skips_unknown_ids),
      cmocka_unit_test(test_gpt2_regex_splits_words_contractions_numbers_and_spaces),
      cmocka_unit_test(test_llama3_regex_splits_like_gpt2_except_where_it_differs),
      cmocka_unit_test(test_character_classes_follow_unicode_categories),
      cmocka_unit_test(test_invalid_utf8_is_one_byte_of_class_other),
      cmocka_unit_test(test_lowest_rank_merges_first_and_leftmost_among_equals),
      cmocka_unit_test(test_ignore_merges_makes_a_word_in_the_vocab_one_token),
      cmocka_unit_test(test_byte_without_a_token_is_unk_or_a_data_error),
      cmocka_unit_test(test_unsupported_tokenizer_json_is_a_data_error_naming_the_field),
      cmocka_unit_test(test_malformed_or_missing_tokenizer_json_is_a_data_error_naming_it),
      cmocka_unit_test(
          test_prepare_with_a_tokenizer_json_encodes_whole_documents_and_ends_them_with_eos),
      cmocka_unit_test(test_prepare_with_a_tokenizer_without_eos_is_a_data_error),
      cmocka_unit_test(test_longtrain_prepare_with_a_wordpiece_tokenizer_exits_4_with_one_line),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
