// The `longtrain` command line, run as a user runs it: help, a tiny prepare + train, and for each
// kind of bad input the documented exit status and exactly one line "longtrain: error: ..." that
// names the file or key.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "testing.h"

enum { OUT_CAP = 1 << 16 };

// Runs the longtrain binary with the arguments `fmt`; its stdout and stderr land in out.
static int longtrain(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int longtrain(char *out, const char *fmt, ...) {
  char args[4096], command[4200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(args, sizeof args, fmt, ap);
  va_end(ap);
  snprintf(command, sizeof command, "%s %s", lt_test_binary(), args);
  return lt_test_run(command, out, OUT_CAP);
}

static int count_lines(const char *text) {
  int n = 0;
  for (const char *p = text; *p; p++) n += *p == '\n';
  return n;
}

// A failure with the documented status and one line naming what is wrong: every one of the
// NULL-terminated `parts` must be in it.
static void expect_error(int status, const char *out, int expected_status,
                         const char *const *parts) {
  if (status != expected_status)
    fail_msg("exit status %d, expected %d; output:\n%s", status, expected_status, out);
  if (count_lines(out) != 1 || out[strlen(out) - 1] != '\n')
    fail_msg("expected exactly one line of output, got:\n%s", out);
  if (strncmp(out, "longtrain: error: ", 18) != 0)
    fail_msg("the line does not start with 'longtrain: error: ': %s", out);
  for (int i = 0; parts[i]; i++)
    if (!strstr(out, parts[i])) fail_msg("'%s' is missing from: %s", parts[i], out);
}
#define EXPECT_EXIT_ERROR(status, out, expected, ...)                                              \
  expect_error((status), (out), (expected), (const char *const[]){__VA_ARGS__, NULL})

// Files shared by the tests, made once: English-like text, its prepared dataset, and the config of
// a tiny model that trains on it in a few milliseconds.
typedef struct fixture {
  char dir[256], text[300], data[300], config[300];
} fixture;

static const char *tiny_config = "model:\n"
                                 "  d_model: 32\n"
                                 "  n_layers: 2\n"
                                 "  n_heads: 4\n"
                                 "  ffn_dim: 64\n"
                                 "  vocab_size: 320\n"
                                 "  max_seq_len: 32\n"
                                 "train:\n"
                                 "  seq_len: 32\n"
                                 "  batch: 4\n"
                                 "  steps: 5\n"
                                 "  warmup: 2\n"
                                 "data:\n"
                                 "  path: %s\n"
                                 "run:\n"
                                 "  dir: %s/run\n"
                                 "  threads: 1\n";

static const fixture *shared(void) {
  static fixture f;
  if (f.dir[0]) return &f;
  snprintf(f.dir, sizeof f.dir, "%s", lt_test_tmpdir());
  snprintf(f.text, sizeof f.text, "%s/corpus.txt", f.dir);
  snprintf(f.data, sizeof f.data, "%s/corpus.h5", f.dir);
  snprintf(f.config, sizeof f.config, "%s/tiny.yaml", f.dir);
  static const char *sentences[] = {
      "The quick brown fox jumps over the lazy dog. ",
      "A long sequence is only as useful as the model that can read it. ",
      "Rain fell on the quiet town while the clocks struck nine. ",
      "She wrote the numbers down, one line at a time, and checked each twice.\n"};
  char *text = calloc(1, 8192);
  for (int i = 0; strlen(text) < 6000; i++) strcat(text, sentences[(i * 7 + i / 4) % 4]);
  lt_test_write_file(f.text, text);
  free(text);
  char yaml[2048];
  snprintf(yaml, sizeof yaml, tiny_config, f.data, f.dir);
  lt_test_write_file(f.config, yaml);
  char *out = malloc(OUT_CAP);
  int status = longtrain(out, "prepare --output %s %s", f.data, f.text);
  if (status != 0) fail_msg("prepare failed (%d):\n%s", status, out);
  free(out);
  return &f;
}

// --- help ---

static void test_help_exits_zero_and_lists_the_commands(void **state) {
  (void)state;
  char *out = malloc(OUT_CAP);
  assert_int_equal(longtrain(out, "--help"), 0);
  assert_non_null(strstr(out, "prepare"));
  assert_non_null(strstr(out, "train"));
  assert_non_null(strstr(out, "config"));
  free(out);
}

static void test_every_command_has_help(void **state) {
  (void)state;
  static const char *commands[] = {"prepare", "train", "config"};
  char *out = malloc(OUT_CAP);
  for (int i = 0; i < 3; i++) {
    char usage[64];
    snprintf(usage, sizeof usage, "usage: longtrain %s", commands[i]);
    assert_int_equal(longtrain(out, "%s --help", commands[i]), 0);
    if (!strstr(out, usage)) fail_msg("`longtrain %s --help` printed:\n%s", commands[i], out);
  }
  free(out);
}

static void test_unknown_command_exits_2_with_one_error_line_on_stderr(void **state) {
  (void)state;
  char *out = malloc(OUT_CAP);
  // Only stderr reaches out: stdout goes to /dev/null.
  EXPECT_EXIT_ERROR(longtrain(out, "frobnicate 2>&1 >/dev/null"), out, LT_ERR_USAGE, "'frobnicate'",
                    "longtrain --help");
  free(out);
}

static void test_no_command_exits_2_and_shows_the_usage(void **state) {
  (void)state;
  char *out = malloc(OUT_CAP);
  assert_int_equal(longtrain(out, "%s", ""), LT_ERR_USAGE);
  assert_non_null(strstr(out, "usage: longtrain <command>"));
  free(out);
}

// --- config ---

static void test_config_docs_lists_every_key(void **state) {
  (void)state;
  char *out = malloc(OUT_CAP);
  assert_int_equal(longtrain(out, "config --docs"), 0);
  for (int i = 0; i < lt_config_n_keys; i++) {
    char cell[128];
    snprintf(cell, sizeof cell, "| `%s` |", lt_config_keys[i].path);
    if (!strstr(out, cell))
      fail_msg("`longtrain config --docs` does not list %s", lt_config_keys[i].path);
  }
  assert_int_equal(count_lines(out), lt_config_n_keys + 2); // the header and its rule
  free(out);
}

static void test_config_prints_the_resolved_config(void **state) {
  (void)state;
  char *out = malloc(OUT_CAP);
  assert_int_equal(longtrain(out, "config --set model.d_model=96 --set train.decay=linear"), 0);
  lt_config printed, expected;
  assert_ok(lt_config_load_string(&printed, out, "stdout", 0, NULL));
  char *overrides[] = {"model.d_model=96", "train.decay=linear"};
  assert_ok(lt_config_load(&expected, NULL, 2, overrides));
  assert_memory_equal(&printed, &expected, offsetof(lt_config, source));
  free(out);
}

// --- prepare and train ---

static void test_prepare_then_train_a_tiny_model(void **state) {
  (void)state;
  const char *dir = lt_test_tmpdir();
  char data[1024], config[1024], yaml[2048], path[1100], *out = malloc(OUT_CAP);
  snprintf(data, sizeof data, "%s/tokens.h5", dir);
  snprintf(config, sizeof config, "%s/tiny.yaml", dir);
  snprintf(yaml, sizeof yaml, tiny_config, data, dir);
  lt_test_write_file(config, yaml);
  int status = longtrain(out, "prepare --output %s %s", data, shared()->text);
  if (status != 0) fail_msg("prepare exited %d:\n%s", status, out);
  status = longtrain(out, "train --config %s", config);
  if (status != 0) fail_msg("train exited %d:\n%s", status, out);
  int progress = 0;
  for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n"))
    if (strncmp(line, "step ", 5) == 0 && strstr(line, "loss") && strstr(line, "tok/s")) progress++;
  assert_int_equal(progress, 5);

  snprintf(path, sizeof path, "%s/run/metrics.jsonl", dir);
  FILE *metrics = fopen(path, "r");
  if (!metrics) fail_msg("%s was not written", path);
  char line[1024];
  int records = 0;
  while (fgets(line, sizeof line, metrics)) {
    char expected[32];
    snprintf(expected, sizeof expected, "{\"step\": %d, \"loss\": ", ++records);
    if (strncmp(line, expected, strlen(expected)) != 0)
      fail_msg("metrics line %d: %s", records, line);
  }
  fclose(metrics);
  assert_int_equal(records, 5);

  // The resolved config.yaml is the config the run used.
  lt_config used, saved;
  snprintf(path, sizeof path, "%s/run/config.yaml", dir);
  assert_ok(lt_config_load(&saved, path, 0, NULL));
  assert_ok(lt_config_load(&used, config, 0, NULL));
  assert_memory_equal(&saved, &used, offsetof(lt_config, source));
  free(out);
}

// --- bad input: config errors exit 3 ---

static void test_malformed_config_file_exits_3_naming_file_and_line(void **state) {
  (void)state;
  char path[2048], at_line[2100], *out = malloc(OUT_CAP);
  snprintf(path, sizeof path, "%s/broken.yaml", shared()->dir);
  lt_test_write_file(path, "model:\n  d_model: [32, 64\ntrain:\n  steps: 5\n");
  snprintf(at_line, sizeof at_line, "%s:3:", path);
  EXPECT_EXIT_ERROR(longtrain(out, "train --config %s", path), out, LT_ERR_CONFIG, at_line,
                    "YAML syntax error");
  free(out);
}

static void test_unknown_key_in_the_config_file_exits_3_naming_it(void **state) {
  (void)state;
  char path[2048], *out = malloc(OUT_CAP);
  snprintf(path, sizeof path, "%s/typo.yaml", shared()->dir);
  lt_test_write_file(path, "model:\n  d_modle: 32\n");
  EXPECT_EXIT_ERROR(longtrain(out, "train --config %s", path), out, LT_ERR_CONFIG, path,
                    "'model.d_modle'", "did you mean 'model.d_model'");
  free(out);
}

static void test_unknown_key_via_set_exits_3_naming_it(void **state) {
  (void)state;
  char *out = malloc(OUT_CAP);
  EXPECT_EXIT_ERROR(longtrain(out, "train --config %s --set train.stpes=3", shared()->config), out,
                    LT_ERR_CONFIG, "--set train.stpes=3", "did you mean 'train.steps'");
  free(out);
}

static void test_missing_config_file_exits_3_naming_it(void **state) {
  (void)state;
  char path[2048], *out = malloc(OUT_CAP);
  snprintf(path, sizeof path, "%s/absent.yaml", shared()->dir);
  EXPECT_EXIT_ERROR(longtrain(out, "train --config %s", path), out, LT_ERR_CONFIG, path);
  free(out);
}

static void test_train_without_data_path_exits_3_naming_the_key(void **state) {
  (void)state;
  char *out = malloc(OUT_CAP);
  EXPECT_EXIT_ERROR(longtrain(out, "train --config %s --set data.path=", shared()->config), out,
                    LT_ERR_CONFIG, "data.path is not set", "longtrain prepare");
  free(out);
}

// --- bad input: data errors exit 4 ---

static void test_missing_dataset_exits_4_naming_it(void **state) {
  (void)state;
  char path[2048], *out = malloc(OUT_CAP);
  snprintf(path, sizeof path, "%s/absent.h5", shared()->dir);
  EXPECT_EXIT_ERROR(longtrain(out, "train --config %s --set data.path=%s", shared()->config, path),
                    out, LT_ERR_DATA, "data.path", path, "longtrain prepare");
  free(out);
}

static void test_non_hdf5_dataset_exits_4_naming_it(void **state) {
  (void)state;
  const fixture *f = shared();
  char *out = malloc(OUT_CAP);
  EXPECT_EXIT_ERROR(longtrain(out, "train --config %s --set data.path=%s", f->config, f->text), out,
                    LT_ERR_DATA, "data.path", f->text, "not an HDF5 file");
  free(out);
}

static void test_dataset_vocab_above_the_models_exits_4_naming_both(void **state) {
  (void)state;
  const fixture *f = shared();
  char *out = malloc(OUT_CAP);
  EXPECT_EXIT_ERROR(longtrain(out, "train --config %s --set model.vocab_size=256", f->config), out,
                    LT_ERR_DATA, f->data, "vocab_size 259", "model.vocab_size", "at least 259");
  free(out);
}

static void test_prepare_of_a_missing_input_exits_4_naming_it(void **state) {
  (void)state;
  char input[2048], output[2048], *out = malloc(OUT_CAP);
  snprintf(input, sizeof input, "%s/absent.txt", shared()->dir);
  snprintf(output, sizeof output, "%s/never.h5", shared()->dir);
  EXPECT_EXIT_ERROR(longtrain(out, "prepare --output %s %s", output, input), out, LT_ERR_DATA,
                    input);
  assert_int_equal(access(output, F_OK), -1);
  free(out);
}

// --- bad input: usage errors exit 2 ---

static void test_train_with_an_unexpected_argument_exits_2(void **state) {
  (void)state;
  char *out = malloc(OUT_CAP);
  EXPECT_EXIT_ERROR(longtrain(out, "train --config %s --steps 3", shared()->config), out,
                    LT_ERR_USAGE, "'--steps'", "longtrain train --help");
  free(out);
}

static void test_prepare_without_output_exits_2(void **state) {
  (void)state;
  char *out = malloc(OUT_CAP);
  EXPECT_EXIT_ERROR(longtrain(out, "prepare %s", shared()->text), out, LT_ERR_USAGE, "--output");
  free(out);
}

static void test_prepare_with_an_unknown_option_exits_2_naming_it(void **state) {
  (void)state;
  char *out = malloc(OUT_CAP);
  EXPECT_EXIT_ERROR(longtrain(out, "prepare --output x.h5 --shuffle %s", shared()->text), out,
                    LT_ERR_USAGE, "'--shuffle'", "longtrain prepare --help");
  free(out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_help_exits_zero_and_lists_the_commands),
      cmocka_unit_test(test_every_command_has_help),
      cmocka_unit_test(test_unknown_command_exits_2_with_one_error_line_on_stderr),
      cmocka_unit_test(test_no_command_exits_2_and_shows_the_usage),
      cmocka_unit_test(test_config_docs_lists_every_key),
      cmocka_unit_test(test_config_prints_the_resolved_config),
      cmocka_unit_test(test_prepare_then_train_a_tiny_model),
      cmocka_unit_test(test_malformed_config_file_exits_3_naming_file_and_line),
      cmocka_unit_test(test_unknown_key_in_the_config_file_exits_3_naming_it),
      cmocka_unit_test(test_unknown_key_via_set_exits_3_naming_it),
      cmocka_unit_test(test_missing_config_file_exits_3_naming_it),
      cmocka_unit_test(test_train_without_data_path_exits_3_naming_the_key),
      cmocka_unit_test(test_missing_dataset_exits_4_naming_it),
      cmocka_unit_test(test_non_hdf5_dataset_exits_4_naming_it),
      cmocka_unit_test(test_dataset_vocab_above_the_models_exits_4_naming_both),
      cmocka_unit_test(test_prepare_of_a_missing_input_exits_4_naming_it),
      cmocka_unit_test(test_train_with_an_unexpected_argument_exits_2),
      cmocka_unit_test(test_prepare_without_output_exits_2),
      cmocka_unit_test(test_prepare_with_an_unknown_option_exits_2_naming_it),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
