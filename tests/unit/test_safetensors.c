// safetensors: files written by the Python safetensors package read back exactly (F32, F16 and
// BF16 to f32, bit for bit against PyTorch's conversion), sharded sets through their index, files
// written here read back (and by Python: tests/fixtures/make_safetensors_reference.py check), and
// every kind of broken file is a one-line data error naming the file and the tensor.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/safetensors.h"
#include "testing.h"

static float *read_tensor(const lt_safetensors *st, const char *name, int64_t *numel) {
  const lt_st_tensor *t = lt_safetensors_find(st, name);
  if (!t) fail_msg("%s: no tensor '%s'", st->path, name);
  float *out = malloc((size_t)(t->numel + 1) * sizeof *out);
  assert_ok(lt_safetensors_read_f32(st, t, out));
  *numel = t->numel;
  return out;
}

// Tensor `name` equals its twin "expect/name" (PyTorch's f32 conversion) bit for bit.
static void expect_twin_equal(const lt_safetensors *st, const char *name) {
  char twin[256];
  snprintf(twin, sizeof twin, "expect/%s", name);
  int64_t n, n_twin;
  float *got = read_tensor(st, name, &n), *want = read_tensor(st, twin, &n_twin);
  assert_int_equal(n, n_twin);
  for (int64_t i = 0; i < n; i++)
    if (memcmp(&got[i], &want[i], 4) != 0)
      fail_msg("%s[%lld] reads as %g, PyTorch gives %g", name, (long long)i, got[i], want[i]);
  free(got);
  free(want);
}

static const char *const float_tensors[] = {"f32.matrix", "f16.cube", "bf16.vector",
                                            "bf16.nan",   "scalar",   "empty"};

static void test_python_written_file_reads_back_exactly(void **state) {
  (void)state;
  lt_safetensors st;
  assert_ok(lt_safetensors_open(&st, lt_test_source_path("tests/fixtures/st_tiny.safetensors")));
  assert_int_equal(st.n_tensors, 13);
  for (int i = 0; i < 6; i++) expect_twin_equal(&st, float_tensors[i]);
  const lt_st_tensor *cube = lt_safetensors_find(&st, "f16.cube");
  assert_int_equal(cube->dtype, LT_ST_F16);
  assert_int_equal(cube->ndim, 3);
  assert_int_equal(cube->shape[0] * 100 + cube->shape[1] * 10 + cube->shape[2], 234);
  assert_int_equal(lt_safetensors_find(&st, "scalar")->ndim, 0);
  assert_int_equal(lt_safetensors_find(&st, "empty")->numel, 0);
  assert_string_equal(lt_safetensors_metadata(&st, "format"), "pt");
  assert_null(lt_safetensors_metadata(&st, "absent"));
  assert_null(lt_safetensors_find(&st, "absent"));
  lt_safetensors_close(&st);
}

static void test_sharded_set_reads_through_its_index_or_its_folder(void **state) {
  (void)state;
  const char *paths[] = {
      lt_test_source_path("tests/fixtures/st_sharded/model.safetensors.index.json"),
      lt_test_source_path("tests/fixtures/st_sharded")};
  for (int p = 0; p < 2; p++) {
    lt_safetensors st;
    assert_ok(lt_safetensors_open(&st, paths[p]));
    assert_int_equal(st.n_files, 2);
    assert_int_equal(st.n_tensors, 24);
    char name[64];
    for (int layer = 0; layer < 2; layer++)
      for (int i = 0; i < 6; i++) {
        snprintf(name, sizeof name, "layers.%d.%s", layer, float_tensors[i]);
        expect_twin_equal(&st, name);
        assert_int_equal(lt_safetensors_find(&st, name)->file, layer);
      }
    lt_safetensors_close(&st);
  }
}

static void test_integer_tensor_is_a_data_error_naming_it(void **state) {
  (void)state;
  lt_safetensors st;
  const char *path = lt_test_source_path("tests/fixtures/st_tiny.safetensors");
  assert_ok(lt_safetensors_open(&st, path));
  float out[3];
  EXPECT_ERROR(lt_safetensors_read_f32(&st, lt_safetensors_find(&st, "i64.ids"), out), LT_ERR_DATA,
               "st_tiny.safetensors", "'i64.ids'", "I64");
  lt_safetensors_close(&st);
}

// The tensors the C side writes, as make_safetensors_reference.py check expects them.
static void c_values(float *v, int n) {
  for (int i = 0; i < n; i++) v[i] = (float)(i - 5) / 3.0f;
}

static const char *write_c_file(const char *dir) {
  static char path[512];
  snprintf(path, sizeof path, "%s/c_written.safetensors", dir);
  static float f32[24], bf16[10];
  c_values(f32, 24);
  c_values(bf16, 10);
  const lt_st_entry tensors[] = {{"w.f32", LT_ST_F32, 2, {4, 6}, f32},
                                 {"w.bf16", LT_ST_BF16, 1, {10}, bf16}};
  assert_ok(lt_safetensors_write(path, tensors, 2, (const char *const[]){"format", "pt", NULL}));
  return path;
}

static void test_written_file_reads_back_with_bf16_rounded_to_nearest(void **state) {
  (void)state;
  const char *path =
      write_c_file(getenv("LT_SAFETENSORS_OUT") ? getenv("LT_SAFETENSORS_OUT") : lt_test_tmpdir());
  lt_safetensors st;
  assert_ok(lt_safetensors_open(&st, path));
  assert_string_equal(lt_safetensors_metadata(&st, "format"), "pt");
  assert_int_equal(st.files[0].data_start % 8, 0); // the header is padded to 8 bytes
  int64_t n;
  float want[24], *got = read_tensor(&st, "w.f32", &n);
  c_values(want, 24);
  assert_int_equal(n, 24);
  assert_memory_equal(got, want, sizeof want);
  free(got);
  got = read_tensor(&st, "w.bf16", &n);
  assert_int_equal(n, 10);
  for (int i = 0; i < 10; i++) assert_true(fabsf(got[i] - want[i]) <= fabsf(want[i]) / 256);
  assert_true(got[6] == 0.333984375f); // 1/3 rounds up to 0x3EAB
  free(got);
  lt_safetensors_close(&st);
}

static void test_bf16_rounds_ties_to_even_and_keeps_nan_and_infinity(void **state) {
  (void)state;
  const float in[] = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, NAN, INFINITY, -0.0f, 0x1.fffffep127f};
  char path[512];
  snprintf(path, sizeof path, "%s/ties.safetensors", lt_test_tmpdir());
  const lt_st_entry e = {"x", LT_ST_BF16, 1, {6}, in};
  assert_ok(lt_safetensors_write(path, &e, 1, NULL));
  lt_safetensors st;
  assert_ok(lt_safetensors_open(&st, path));
  int64_t n;
  float *got = read_tensor(&st, "x", &n);
  assert_true(got[0] == 1.0f);      // halfway, to the even 1.0
  assert_true(got[1] == 1.015625f); // halfway, to the even 1 + 4 * 2^-8
  assert_true(isnan(got[2]));
  assert_true(isinf(got[3]) && got[3] > 0);
  assert_true(got[4] == 0 && signbit(got[4]));
  assert_true(isinf(got[5])); // the largest float rounds up past bf16's largest
  free(got);
  lt_safetensors_close(&st);
}

// A safetensors file in buf: the header length (the header's own unless `claimed` is not 0), the
// header, then `data_size` zero bytes. Returns the file's size.
static size_t make_file(uint8_t *buf, const char *header, size_t data_size, uint64_t claimed) {
  size_t len = strlen(header);
  uint64_t n = claimed ? claimed : len;
  for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(n >> (8 * i));
  memcpy(buf + 8, header, len);
  memset(buf + 8 + len, 0, data_size);
  return 8 + len + data_size;
}

typedef struct broken_file {
  const char *header;
  size_t data_size;
  uint64_t claimed_len;
  const char *says[3];
} broken_file;

#define F32(n, b, e) "{\"dtype\": \"F32\", \"shape\": [" #n "], \"data_offsets\": [" #b ", " #e "]}"

static void test_broken_file_is_a_data_error_naming_the_file_and_tensor(void **state) {
  (void)state;
  const broken_file cases[] = {
      {"{}", 0, 1000, {"header length 1000 runs past the end of the file", NULL}},
      {"{}", 0, 1ull << 40, {"over 100 MB", NULL}},
      {"{\"a\": ", 0, 0, {"header is not a JSON object", NULL}},
      {"{\"a\": 1} junk", 0, 0, {"header is not a JSON object", NULL}},
      {"{\"w\": {\"dtype\": \"F33\", \"shape\": [2], \"data_offsets\": [0, 8]}}",
       8,
       0,
       {"'w'", "unknown dtype 'F33'", NULL}},
      {"{\"w\": " F32(4, 0, 16) "}", 8, 0, {"'w'", "[0, 16] run past the data section (8 bytes)"}},
      {"{\"w\": " F32(2, 8, 0) "}", 8, 0, {"'w'", "end first", NULL}},
      {"{\"a\": " F32(2, 0, 8) ", \"b\": " F32(2, 4, 12) "}",
       12,
       0,
       {"'a' [0, 8] and 'b' [4, 12] overlap", NULL}},
      {"{\"a\": " F32(1, 0, 4) ", \"b\": " F32(1, 8, 12) "}",
       12,
       0,
       {"'b' starts at byte 8", "4 bytes that no tensor covers"}},
      {"{\"a\": " F32(1, 0, 4) "}", 8, 0, {"4 bytes after the last tensor ('a')", NULL}},
      {"{\"a\": {\"dtype\": \"BF16\", \"shape\": [3], \"data_offsets\": [0, 8]}}",
       8,
       0,
       {"'a'", "hold 8 bytes, but its shape in BF16 needs 6", NULL}},
      {"{\"a\": " F32(1, 0, 4) ", \"a\": " F32(1, 4, 8) "}", 8, 0, {"'a' appears twice", NULL}},
      {"{\"a\": " F32(-1, 0, 0) "}", 0, 0, {"'a'", "shape holds a non-size", NULL}},
      {"{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, 0, {"'a'", "no dtype", NULL}},
      {"{\"a\": " F32(1, 0, 4) ", \"__metadata__\": {\"n\": 3}}", 4, 0, {"__metadata__ 'n'"}},
  };
  static uint8_t buf[4096];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    size_t size = make_file(buf, cases[i].header, cases[i].data_size, cases[i].claimed_len);
    lt_safetensors st;
    int rc = lt_safetensors_parse(&st, buf, size, "broken.safetensors");
    EXPECT_ERROR(rc, LT_ERR_DATA, "broken.safetensors", cases[i].says[0],
                 cases[i].says[1] ? cases[i].says[1] : "");
  }
  lt_safetensors st;
  EXPECT_ERROR(lt_safetensors_parse(&st, buf, 5, "short.safetensors"), LT_ERR_DATA,
               "short.safetensors", "5 bytes, shorter than the 8-byte header length");
}

static void test_truncated_file_on_disk_names_the_tensor_cut_off(void **state) {
  (void)state;
  const char *path = write_c_file(lt_test_tmpdir());
  lt_safetensors st;
  assert_ok(lt_safetensors_open(&st, path));
  off_t size = (off_t)(st.files[0].data_start + st.files[0].data_size);
  lt_safetensors_close(&st);
  assert_int_equal(truncate(path, size - 10), 0);
  EXPECT_ERROR(lt_safetensors_open(&st, path), LT_ERR_DATA, path, "'w.bf16'",
               "run past the data section");
}

static void test_index_naming_a_missing_tensor_or_shard_is_a_data_error(void **state) {
  (void)state;
  const char *dir = lt_test_tmpdir();
  write_c_file(dir);
  char index[512];
  snprintf(index, sizeof index, "%s/model.safetensors.index.json", dir);
  lt_test_write_file(index, "{\"weight_map\": {\"w.f32\": \"c_written.safetensors\", "
                            "\"w.gone\": \"c_written.safetensors\"}}");
  lt_safetensors st;
  EXPECT_ERROR(lt_safetensors_open(&st, dir), LT_ERR_DATA, index, "'w.gone'",
               "c_written.safetensors");
  lt_test_write_file(index, "{\"weight_map\": {\"w.f32\": \"model-00009.safetensors\"}}");
  EXPECT_ERROR(lt_safetensors_open(&st, index), LT_ERR_DATA, "model-00009.safetensors",
               "cannot open");
  lt_test_write_file(index, "{\"weight_map\": {\"w.f32\": \"../elsewhere.safetensors\"}}");
  EXPECT_ERROR(lt_safetensors_open(&st, index), LT_ERR_DATA, index, "beside the index");
  EXPECT_ERROR(lt_safetensors_open(&st, lt_test_tmpdir()), LT_ERR_DATA,
               "holds neither model.safetensors nor model.safetensors.index.json");
}

// What a fuzzer would do, briefly: random byte changes to a valid file are parsed and, when they
// still parse, read, without crashing or reading out of bounds (run with LT_SANITIZE=ON to see).
static void test_mutated_files_parse_or_fail_cleanly(void **state) {
  (void)state;
  uint8_t *valid = NULL;
  size_t size;
  {
    FILE *f = fopen(lt_test_source_path("tests/fixtures/st_tiny.safetensors"), "rb");
    assert_non_null(f);
    valid = malloc(1 << 16);
    size = fread(valid, 1, 1 << 16, f);
    fclose(f);
  }
  uint8_t *buf = malloc(size);
  float *out = malloc(size * sizeof *out);
  uint64_t x = 7;
  int parsed = 0;
  for (int iter = 0; iter < 3000; iter++) {
    memcpy(buf, valid, size);
    for (int k = 0; k < 1 + iter % 4; k++) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      buf[(x >> 33) % size] = (uint8_t)(x >> 20);
    }
    size_t cut = iter % 7 == 0 ? (size_t)(x >> 40) % size : size;
    lt_safetensors st;
    if (lt_safetensors_parse(&st, buf, cut, "mutant") != LT_OK) continue;
    parsed++;
    for (int t = 0; t < st.n_tensors; t++)
      if ((size_t)st.tensors[t].numel <= size) lt_safetensors_read_f32(&st, &st.tensors[t], out);
    lt_safetensors_close(&st);
  }
  assert_true(parsed > 0 && parsed < 3000);
  free(out);
  free(buf);
  free(valid);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_python_written_file_reads_back_exactly),
      cmocka_unit_test(test_sharded_set_reads_through_its_index_or_its_folder),
      cmocka_unit_test(test_integer_tensor_is_a_data_error_naming_it),
      cmocka_unit_test(test_written_file_reads_back_with_bf16_rounded_to_nearest),
      cmocka_unit_test(test_bf16_rounds_ties_to_even_and_keeps_nan_and_infinity),
      cmocka_unit_test(test_broken_file_is_a_data_error_naming_the_file_and_tensor),
      cmocka_unit_test(test_truncated_file_on_disk_names_the_tensor_cut_off),
      cmocka_unit_test(test_index_naming_a_missing_tensor_or_shard_is_a_data_error),
      cmocka_unit_test(test_mutated_files_parse_or_fail_cleanly),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
