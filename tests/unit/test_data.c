// Token datasets (HDF5), `longtrain prepare`, the byte tokenizer and the data loader: what is
// written is read back exactly, files appear whole or not at all, the sample order is fixed by
// the seed, and every broken input is a data error that names the file.
#include <dirent.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/h5util.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "fixture.h"
#include "testing.h"

static int count_entries(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) fail_msg("cannot list %s", dir);
  int n = 0;
  for (struct dirent *e; (e = readdir(d));) n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
  closedir(d);
  return n;
}

static bool exists(const char *path) {
  return access(path, F_OK) == 0;
}

#define EXPECT_DATA_ERROR(rc, ...) EXPECT_ERROR((rc), LT_ERR_DATA, __VA_ARGS__)
// A dataset of tokens 0, 1, ..., n - 1 (as one document) in a vocab of `vocab`.
static void write_counting_dataset(const char *path, int64_t n, int vocab) {
  int32_t *ids = malloc((size_t)n * sizeof *ids);
  for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)i;
  lt_dataset_writer w;
  assert_ok(lt_dataset_writer_open(&w, path, "test", vocab, vocab - 1));
  assert_ok(lt_dataset_writer_add(&w, ids, n));
  assert_ok(lt_dataset_writer_commit(&w));
  free(ids);
}

// --- writing and reading ---

static void test_written_dataset_reads_back_exactly(void **state) {
  (void)state;
  char path[1200];
  snprintf(path, sizeof path, "%s/tokens.h5", lt_test_tmpdir());
  const int32_t doc0[] = {104, 105, LT_BYTE_EOS}, doc1[] = {0, 255, LT_BYTE_PAD, LT_BYTE_EOS};
  lt_dataset_writer w;
  assert_ok(lt_dataset_writer_open(&w, path, "byte", LT_BYTE_VOCAB, LT_BYTE_EOS));
  assert_ok(lt_dataset_writer_add(&w, doc0, 3));
  assert_ok(lt_dataset_writer_add(&w, NULL, 0)); // an empty document keeps its place
  assert_ok(lt_dataset_writer_add(&w, doc1, 4));
  assert_ok(lt_dataset_writer_commit(&w));

  lt_dataset ds;
  assert_ok(lt_dataset_open(&ds, path));
  assert_int_equal(ds.n_tokens, 7);
  assert_int_equal(ds.n_docs, 3);
  assert_int_equal(ds.vocab_size, LT_BYTE_VOCAB);
  assert_int_equal(ds.eos_id, LT_BYTE_EOS);
  assert_string_equal(ds.tokenizer, "byte");
  assert_int_equal(ds.token_bits, 16); // the byte vocab fits in uint16
  int32_t tokens[7];
  assert_ok(lt_dataset_read(&ds, 0, 7, tokens));
  const int32_t expected[7] = {104, 105, LT_BYTE_EOS, 0, 255, LT_BYTE_PAD, LT_BYTE_EOS};
  assert_memory_equal(tokens, expected, sizeof expected);
  uint64_t offsets[4];
  assert_ok(lt_dataset_read_doc_offsets(&ds, 0, 1, ds.n_docs + 1, offsets));
  const uint64_t expected_offsets[4] = {0, 3, 3, 7};
  assert_memory_equal(offsets, expected_offsets, sizeof expected_offsets);
  lt_dataset_close(&ds);
}

static void test_read_of_a_range_gives_those_tokens(void **state) {
  (void)state;
  char path[1200];
  snprintf(path, sizeof path, "%s/count.h5", lt_test_tmpdir());
  write_counting_dataset(path, 100, 1000);
  lt_dataset ds;
  assert_ok(lt_dataset_open(&ds, path));
  int32_t tokens[5];
  assert_ok(lt_dataset_read(&ds, 42, 5, tokens));
  for (int i = 0; i < 5; i++) assert_int_equal(tokens[i], 42 + i);
  lt_dataset_close(&ds);
}

static void test_vocab_above_uint16_is_stored_as_uint32_and_reads_back(void **state) {
  (void)state;
  char path[1200];
  snprintf(path, sizeof path, "%s/wide.h5", lt_test_tmpdir());
  const int32_t ids[] = {0, 65535, 65536, 69999, 12345};
  lt_dataset_writer w;
  assert_ok(lt_dataset_writer_open(&w, path, "bpe70k", 70000, 69999));
  assert_ok(lt_dataset_writer_add(&w, ids, 5));
  assert_ok(lt_dataset_writer_commit(&w));
  lt_dataset ds;
  assert_ok(lt_dataset_open(&ds, path));
  assert_int_equal(ds.token_bits, 32);
  assert_int_equal(ds.vocab_size, 70000);
  assert_string_equal(ds.tokenizer, "bpe70k");
  int32_t back[5];
  assert_ok(lt_dataset_read(&ds, 0, 5, back));
  assert_memory_equal(back, ids, sizeof ids);
  lt_dataset_close(&ds);
}

static void test_dataset_without_documents_commits_and_reads_back_empty(void **state) {
  (void)state;
  char path[1200];
  snprintf(path, sizeof path, "%s/empty.h5", lt_test_tmpdir());
  lt_dataset_writer w;
  assert_ok(lt_dataset_writer_open(&w, path, "byte", LT_BYTE_VOCAB, LT_BYTE_EOS));
  assert_ok(lt_dataset_writer_commit(&w));
  lt_dataset ds;
  assert_ok(lt_dataset_open(&ds, path));
  assert_int_equal(ds.n_tokens, 0);
  assert_int_equal(ds.n_docs, 0);
  lt_dataset_close(&ds);
}

static void test_dataset_appears_only_after_commit(void **state) {
  (void)state;
  const char *dir = lt_test_tmpdir();
  char path[1200];
  snprintf(path, sizeof path, "%s/tokens.h5", dir);
  const int32_t ids[] = {1, 2, 3};
  lt_dataset_writer w;
  assert_ok(lt_dataset_writer_open(&w, path, "byte", LT_BYTE_VOCAB, LT_BYTE_EOS));
  assert_ok(lt_dataset_writer_add(&w, ids, 3));
  assert_false(exists(path));
  assert_ok(lt_dataset_writer_commit(&w));
  assert_true(exists(path));
  assert_int_equal(count_entries(dir), 1); // no temporary file left
}

static void test_aborted_write_leaves_nothing(void **state) {
  (void)state;
  const char *dir = lt_test_tmpdir();
  char path[1200];
  snprintf(path, sizeof path, "%s/tokens.h5", dir);
  const int32_t ids[] = {1, 2, 3};
  lt_dataset_writer w;
  assert_ok(lt_dataset_writer_open(&w, path, "byte", LT_BYTE_VOCAB, LT_BYTE_EOS));
  assert_ok(lt_dataset_writer_add(&w, ids, 3));
  assert_int_equal(count_entries(dir), 1); // the temporary file
  lt_dataset_writer_abort(&w);
  assert_int_equal(count_entries(dir), 0);
}

static void test_closing_a_dataset_that_never_opened_is_harmless(void **state) {
  (void)state;
  // HDF5 records an error for every call on a bad id (and, unless silenced, prints a stack).
  lt_dataset never = {0}; // as a zero-initialised owner holds it before opening
  H5Eclear2(H5E_DEFAULT);
  lt_dataset_close(&never);
  assert_int_equal(H5Eget_num(H5E_DEFAULT), 0);
  lt_dataset failed;
  assert_int_equal(lt_dataset_open(&failed, "/nonexistent/tokens.h5"), LT_ERR_DATA);
  H5Eclear2(H5E_DEFAULT);
  lt_dataset_close(&failed);
  assert_int_equal(H5Eget_num(H5E_DEFAULT), 0);
}

// --- `longtrain prepare` ---

static void test_prepare_splits_documents_at_the_separator_and_ends_each_with_eos(void **state) {
  (void)state;
  const char *dir = lt_test_tmpdir();
  char first[1200], second[1200], out[1200];
  snprintf(first, sizeof first, "%s/a.txt", dir);
  snprintf(second, sizeof second, "%s/b.txt", dir);
  snprintf(out, sizeof out, "%s/out.h5", dir);
  lt_test_write_file(first, "ab\n%\ncd\n");
  lt_test_write_file(second, "%\nxyz\n%\n"); // the empty documents around it are dropped
  char *argv[] = {"prepare", "--output", out, "--doc-separator", "%", first, second, NULL};
  assert_ok(lt_prepare_main(7, argv));

  lt_dataset ds;
  assert_ok(lt_dataset_open(&ds, out));
  const int32_t expected[] = {'a',         'b', '\n', LT_BYTE_EOS, 'c',  'd',        '\n',
                              LT_BYTE_EOS, 'x', 'y',  'z',         '\n', LT_BYTE_EOS};
  const uint64_t expected_offsets[] = {0, 4, 8, 13};
  assert_int_equal(ds.n_tokens, 13);
  assert_int_equal(ds.n_docs, 3);
  assert_int_equal(ds.vocab_size, LT_BYTE_VOCAB);
  assert_int_equal(ds.eos_id, LT_BYTE_EOS);
  assert_string_equal(ds.tokenizer, "byte");
  int32_t tokens[13];
  uint64_t offsets[4];
  assert_ok(lt_dataset_read(&ds, 0, 13, tokens));
  assert_ok(lt_dataset_read_doc_offsets(&ds, 0, 1, ds.n_docs + 1, offsets));
  assert_memory_equal(tokens, expected, sizeof expected);
  assert_memory_equal(offsets, expected_offsets, sizeof expected_offsets);
  lt_dataset_close(&ds);
}

static void test_prepare_without_separator_makes_one_document_per_file(void **state) {
  (void)state;
  const char *dir = lt_test_tmpdir();
  char first[1200], second[1200], out[1200];
  snprintf(first, sizeof first, "%s/a.txt", dir);
  snprintf(second, sizeof second, "%s/b.txt", dir);
  snprintf(out, sizeof out, "%s/out.h5", dir);
  lt_test_write_file(first, "ab\n%\ncd");
  lt_test_write_file(second, "e");
  char *argv[] = {"prepare", "--output", out, first, second, NULL};
  assert_ok(lt_prepare_main(5, argv));
  lt_dataset ds;
  assert_ok(lt_dataset_open(&ds, out));
  assert_int_equal(ds.n_docs, 2);
  assert_int_equal(ds.n_tokens, 10); // "ab\n%\ncd" EOS "e" EOS
  uint64_t offsets[3];
  assert_ok(lt_dataset_read_doc_offsets(&ds, 0, 1, ds.n_docs + 1, offsets));
  assert_int_equal(offsets[1], 8);
  lt_dataset_close(&ds);
}

static void test_prepare_of_a_missing_input_names_it_and_writes_nothing(void **state) {
  (void)state;
  const char *dir = lt_test_tmpdir();
  char missing[1200], out[1200];
  snprintf(missing, sizeof missing, "%s/missing.txt", dir);
  snprintf(out, sizeof out, "%s/out.h5", dir);
  char *argv[] = {"prepare", "--output", out, missing, NULL};
  EXPECT_DATA_ERROR(lt_prepare_main(4, argv), missing, "cannot open");
  assert_int_equal(count_entries(dir), 0);
}

static void test_prepare_of_empty_inputs_is_a_data_error(void **state) {
  (void)state;
  const char *dir = lt_test_tmpdir();
  char empty[1200], out[1200];
  snprintf(empty, sizeof empty, "%s/empty.txt", dir);
  snprintf(out, sizeof out, "%s/out.h5", dir);
  lt_test_write_file(empty, "");
  char *argv[] = {"prepare", "--output", out, empty, NULL};
  EXPECT_DATA_ERROR(lt_prepare_main(4, argv), "no text");
  assert_false(exists(out));
}

// --- the byte tokenizer ---

static void test_byte_tokenizer_round_trips_every_byte(void **state) {
  (void)state;
  lt_tokenizer tok;
  lt_tokenizer_byte(&tok);
  char text[256];
  for (int i = 0; i < 256; i++) text[i] = (char)i;
  int32_t *ids = NULL;
  size_t n = 0, capacity = 0;
  assert_ok(tok.encode(&tok, text, 256, &ids, &n, &capacity));
  assert_int_equal(n, 256);
  for (int i = 0; i < 256; i++) assert_int_equal(ids[i], i);
  char back[300];
  assert_int_equal(tok.decode(&tok, ids, n, back, sizeof back), 256);
  assert_memory_equal(back, text, 256);
  free(ids);
}

static void test_byte_tokenizer_decodes_specials_by_name(void **state) {
  (void)state;
  lt_tokenizer tok;
  lt_tokenizer_byte(&tok);
  assert_int_equal(tok.vocab_size, LT_BYTE_VOCAB);
  assert_int_equal(tok.eos_id, LT_BYTE_EOS);
  const int32_t ids[] = {'h', 'i', LT_BYTE_EOS, LT_BYTE_BOS, LT_BYTE_PAD};
  char out[64];
  assert_int_equal(tok.decode(&tok, ids, 5, out, sizeof out), strlen("hi<eos><bos><pad>"));
  assert_string_equal(out, "hi<eos><bos><pad>");
}

static void test_byte_tokenizer_decode_stops_at_the_buffer_end(void **state) {
  (void)state;
  lt_tokenizer tok;
  lt_tokenizer_byte(&tok);
  const int32_t ids[] = {'a', 'b', LT_BYTE_EOS, 'c'};
  char out[6]; // room for "ab" and the NUL, not for "<eos>"
  assert_int_equal(tok.decode(&tok, ids, 4, out, sizeof out), 2);
  assert_string_equal(out, "ab");
}

// --- the loader ---

enum { T = 8, N_WINDOWS = 50 };

// A loader over tokens 0, 1, ..., N_WINDOWS * T, so a window's first token says which it is.
static void open_counting(lt_dataset *ds, lt_loader *loader, uint64_t seed) {
  char path[1200];
  snprintf(path, sizeof path, "%s/count.h5", lt_test_tmpdir());
  write_counting_dataset(path, N_WINDOWS * T + 1, 1000);
  assert_ok(lt_dataset_open(ds, path));
  lt_loader_spec spec = {.seq_len = T, .seed = seed};
  assert_ok(lt_loader_create(loader, ds, &spec));
  assert_int_equal(loader->n_windows, N_WINDOWS);
}

static void test_loader_windows_are_inputs_and_targets_shifted_by_one(void **state) {
  (void)state;
  lt_dataset ds;
  lt_loader loader;
  open_counting(&ds, &loader, 1);
  enum { B = 3 };
  int32_t tokens[B * T], targets[B * T], pos[B * T];
  assert_ok(lt_loader_next(&loader, B, 0, 1, (lt_samples){tokens, targets, pos, NULL}));
  for (int b = 0; b < B; b++) {
    int32_t start = (int32_t)lt_loader_window_of(&loader, b) * T;
    for (int t = 0; t < T; t++) {
      assert_int_equal(tokens[b * T + t], start + t);
      assert_int_equal(targets[b * T + t], start + t + 1);
      assert_int_equal(pos[b * T + t], t);
    }
  }
  assert_int_equal(loader.next_sample, B);
  lt_loader_destroy(&loader);
  lt_dataset_close(&ds);
}

// The windows of samples [0, n) of a loader with `seed`, read through lt_loader_next.
static void read_order(uint64_t seed, int n, int64_t *windows) {
  lt_dataset ds;
  lt_loader loader;
  open_counting(&ds, &loader, seed);
  int32_t tokens[T], targets[T], pos[T];
  for (int i = 0; i < n; i++) {
    assert_ok(lt_loader_next(&loader, 1, 0, 1, (lt_samples){tokens, targets, pos, NULL}));
    windows[i] = tokens[0] / T;
  }
  lt_loader_destroy(&loader);
  lt_dataset_close(&ds);
}

static void test_loader_order_is_fixed_by_the_seed(void **state) {
  (void)state;
  int64_t a[2 * N_WINDOWS], b[2 * N_WINDOWS];
  read_order(5, 2 * N_WINDOWS, a);
  read_order(5, 2 * N_WINDOWS, b);
  assert_memory_equal(a, b, sizeof a);
}

static void test_loader_order_differs_for_another_seed(void **state) {
  (void)state;
  int64_t a[N_WINDOWS], b[N_WINDOWS];
  read_order(5, N_WINDOWS, a);
  read_order(6, N_WINDOWS, b);
  int same = 0;
  for (int i = 0; i < N_WINDOWS; i++) same += a[i] == b[i];
  assert_true(same < 10); // two random orders agree in about one place
}

static void test_each_epoch_visits_every_window_once_in_a_new_order(void **state) {
  (void)state;
  int64_t order[3 * N_WINDOWS];
  read_order(11, 3 * N_WINDOWS, order);
  for (int epoch = 0; epoch < 3; epoch++) {
    int visits[N_WINDOWS] = {0};
    for (int i = 0; i < N_WINDOWS; i++) visits[order[epoch * N_WINDOWS + i]]++;
    for (int w = 0; w < N_WINDOWS; w++)
      if (visits[w] != 1) fail_msg("epoch %d visits window %d %d times", epoch, w, visits[w]);
  }
  assert_memory_not_equal(order, order + N_WINDOWS, N_WINDOWS * sizeof *order);
}

static void test_dataset_shorter_than_one_window_is_a_data_error(void **state) {
  (void)state;
  char path[1200];
  snprintf(path, sizeof path, "%s/short.h5", lt_test_tmpdir());
  write_counting_dataset(path, T, 1000); // a window needs T + 1
  lt_dataset ds;
  lt_loader loader;
  assert_ok(lt_dataset_open(&ds, path));
  EXPECT_DATA_ERROR(lt_loader_create(&loader, &ds, &(lt_loader_spec){.seq_len = T, .seed = 1}),
                    path, "train.seq_len");
  lt_dataset_close(&ds);
}

// --- broken datasets ---

static void test_token_outside_the_vocab_is_a_data_error_naming_the_file(void **state) {
  (void)state;
  char path[1200];
  snprintf(path, sizeof path, "%s/bad-token.h5", lt_test_tmpdir());
  const uint32_t tokens[] = {1, 2, 259, 3};
  lt_fixture_write_h5py_dataset(path, tokens, 4, LT_BYTE_VOCAB);
  lt_dataset ds;
  assert_ok(lt_dataset_open(&ds, path));
  int32_t out[4];
  EXPECT_DATA_ERROR(lt_dataset_read(&ds, 0, 4, out), path, "token 259 at position 2",
                    "vocab_size 259");
  lt_dataset_close(&ds);
}

// README promises that datasets written another way work; h5py's default layout is the common one.
static void test_dataset_in_h5py_default_layout_reads_back(void **state) {
  (void)state;
  char path[1200];
  snprintf(path, sizeof path, "%s/h5py.h5", lt_test_tmpdir());
  const uint32_t tokens[] = {1, 2, 258, 3, 4};
  lt_fixture_write_h5py_dataset(path, tokens, 5, LT_BYTE_VOCAB);
  lt_dataset ds;
  assert_ok(lt_dataset_open(&ds, path));
  assert_string_equal(ds.tokenizer, "byte");
  int32_t out[5];
  assert_ok(lt_dataset_read(&ds, 0, 5, out));
  for (int i = 0; i < 5; i++) assert_int_equal(out[i], tokens[i]);
  lt_dataset_close(&ds);
}

// What the trainer's warning rests on: the superblock version, read without HDF5 wherever the
// superblock is (after a user block too), and the kind of the tokenizer string.
static void test_superblock_version_is_read_wherever_the_superblock_is(void **state) {
  (void)state;
  char prepared[1200], h5py[1200], user_block[1200];
  snprintf(prepared, sizeof prepared, "%s/prepared.h5", lt_test_tmpdir());
  snprintf(h5py, sizeof h5py, "%s/h5py.h5", lt_test_tmpdir());
  snprintf(user_block, sizeof user_block, "%s/user-block.h5", lt_test_tmpdir());
  write_counting_dataset(prepared, 100, 256);
  lt_fixture_write_h5py_dataset(h5py, NULL, 0, LT_BYTE_VOCAB);
  hid_t fcpl = H5Pcreate(H5P_FILE_CREATE), fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_userblock(fcpl, 1024);
  H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_V110);
  H5Fclose(H5Fcreate(user_block, H5F_ACC_TRUNC, fcpl, fapl));
  H5Pclose(fcpl), H5Pclose(fapl);
  assert_int_equal(lt_h5_superblock_version(prepared), 3);
  assert_int_equal(lt_h5_superblock_version(h5py), 0);
  assert_int_equal(lt_h5_superblock_version(user_block), 3);
  lt_test_write_file(user_block, "not HDF5");
  assert_int_equal(lt_h5_superblock_version(user_block), -1);
}

static void test_datasets_whose_metadata_hdf5_does_not_checksum_say_why(void **state) {
  (void)state;
  char prepared[1200], h5py[1200];
  snprintf(prepared, sizeof prepared, "%s/prepared.h5", lt_test_tmpdir());
  snprintf(h5py, sizeof h5py, "%s/h5py.h5", lt_test_tmpdir());
  write_counting_dataset(prepared, 100, 256);
  const uint32_t tokens[] = {1, 2, 3};
  lt_fixture_write_h5py_dataset(h5py, tokens, 3, LT_BYTE_VOCAB);
  lt_dataset ds;
  assert_ok(lt_dataset_open(&ds, prepared));
  assert_null(ds.unchecked);
  lt_dataset_close(&ds);
  assert_ok(lt_dataset_open(&ds, h5py));
  assert_non_null(strstr(ds.unchecked, "earliest format"));
  lt_dataset_close(&ds);
  // The checksummed format, but the tokenizer as h5py writes a str: a variable-length string.
  hid_t file = H5Fopen(prepared, H5F_ACC_RDWR, H5P_DEFAULT);
  assert_true(H5Adelete(file, "tokenizer") >= 0);
  hid_t type = H5Tcopy(H5T_C_S1), scalar = H5Screate(H5S_SCALAR);
  H5Tset_size(type, H5T_VARIABLE);
  hid_t attr = H5Acreate2(file, "tokenizer", type, scalar, H5P_DEFAULT, H5P_DEFAULT);
  const char *value = "test";
  assert_true(H5Awrite(attr, type, &value) >= 0);
  H5Aclose(attr), H5Sclose(scalar), H5Tclose(type), H5Fclose(file);
  assert_ok(lt_dataset_open(&ds, prepared));
  assert_non_null(strstr(ds.unchecked, "variable-length string"));
  assert_string_equal(ds.tokenizer, "test");
  lt_dataset_close(&ds);
}

static void test_missing_dataset_is_a_data_error_naming_it(void **state) {
  (void)state;
  char path[1200];
  snprintf(path, sizeof path, "%s/absent.h5", lt_test_tmpdir());
  lt_dataset ds;
  EXPECT_DATA_ERROR(lt_dataset_open(&ds, path), path, "longtrain prepare");
}

static void test_non_hdf5_file_is_a_data_error_naming_it(void **state) {
  (void)state;
  char path[1200];
  snprintf(path, sizeof path, "%s/text.h5", lt_test_tmpdir());
  lt_test_write_file(path, "just some text, not HDF5\n");
  lt_dataset ds;
  EXPECT_DATA_ERROR(lt_dataset_open(&ds, path), path, "not an HDF5 file");
}

static void test_truncated_dataset_is_a_data_error_naming_it(void **state) {
  (void)state;
  char path[1200];
  snprintf(path, sizeof path, "%s/truncated.h5", lt_test_tmpdir());
  write_counting_dataset(path, 5000, 65536);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(truncate(path, st.st_size / 2), 0);
  lt_dataset ds;
  EXPECT_DATA_ERROR(lt_dataset_open(&ds, path), path, "truncated");
}

static void test_hdf5_file_without_tokens_says_so(void **state) {
  (void)state;
  char path[1200];
  snprintf(path, sizeof path, "%s/no-tokens.h5", lt_test_tmpdir());
  lt_fixture_write_h5py_dataset(path, NULL, 0, LT_BYTE_VOCAB);
  lt_dataset ds;
  EXPECT_DATA_ERROR(lt_dataset_open(&ds, path), path, "no /tokens");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_written_dataset_reads_back_exactly),
      cmocka_unit_test(test_read_of_a_range_gives_those_tokens),
      cmocka_unit_test(test_vocab_above_uint16_is_stored_as_uint32_and_reads_back),
      cmocka_unit_test(test_dataset_without_documents_commits_and_reads_back_empty),
      cmocka_unit_test(test_dataset_appears_only_after_commit),
      cmocka_unit_test(test_aborted_write_leaves_nothing),
      cmocka_unit_test(test_closing_a_dataset_that_never_opened_is_harmless),
      cmocka_unit_test(test_prepare_splits_documents_at_the_separator_and_ends_each_with_eos),
      cmocka_unit_test(test_prepare_without_separator_makes_one_document_per_file),
      cmocka_unit_test(test_prepare_of_a_missing_input_names_it_and_writes_nothing),
      cmocka_unit_test(test_prepare_of_empty_inputs_is_a_data_error),
      cmocka_unit_test(test_byte_tokenizer_round_trips_every_byte),
      cmocka_unit_test(test_byte_tokenizer_decodes_specials_by_name),
      cmocka_unit_test(test_byte_tokenizer_decode_stops_at_the_buffer_end),
      cmocka_unit_test(test_loader_windows_are_inputs_and_targets_shifted_by_one),
      cmocka_unit_test(test_loader_order_is_fixed_by_the_seed),
      cmocka_unit_test(test_loader_order_differs_for_another_seed),
      cmocka_unit_test(test_each_epoch_visits_every_window_once_in_a_new_order),
      cmocka_unit_test(test_dataset_shorter_than_one_window_is_a_data_error),
      cmocka_unit_test(test_token_outside_the_vocab_is_a_data_error_naming_the_file),
      cmocka_unit_test(test_dataset_in_h5py_default_layout_reads_back),
      cmocka_unit_test(test_superblock_version_is_read_wherever_the_superblock_is),
      cmocka_unit_test(test_datasets_whose_metadata_hdf5_does_not_checksum_say_why),
      cmocka_unit_test(test_missing_dataset_is_a_data_error_naming_it),
      cmocka_unit_test(test_non_hdf5_file_is_a_data_error_naming_it),
      cmocka_unit_test(test_truncated_dataset_is_a_data_error_naming_it),
      cmocka_unit_test(test_hdf5_file_without_tokens_says_so),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
