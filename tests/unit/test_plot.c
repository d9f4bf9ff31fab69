// `longtrain plot` (train/plot.h): a run's metrics.jsonl drawn by gnuplot into a PNG of the size
// asked for, whose pixels depend on the records; a missing, empty or malformed metrics.jsonl is
// a data error naming the file (and line), and a machine without gnuplot is told what to install.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runs.h"
#include "testing.h"
#include "train/plot.h"

// A run folder whose metrics.jsonl has `n` records like the trainer's (a validation loss every
// 10 steps), the loss falling at `rate`.
static const char *make_run(const char *name, int n, double rate) {
  static char dirs[4][512];
  static int next = 0;
  char *dir = dirs[next++ % 4], path[600];
  snprintf(dir, 512, "%s/%s", lt_test_tmpdir(), name);
  mkdir(dir, 0755);
  snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
  FILE *f = fopen(path, "w");
  for (int s = 1; s <= n; s++) {
    double loss = 2.0 + 3.0 / (1.0 + rate * s);
    fprintf(f, "{\"step\": %d, \"loss\": %.17g, \"lr\": %.17g, \"grad_norm\": %.17g", s, loss,
            1e-3 * (s < 10 ? s / 10.0 : 1.0), 1.0 / s);
    if (s % 10 == 0) fprintf(f, ", \"val_loss\": %.17g", loss + 0.05);
    fprintf(f, ", \"tokens_per_s\": %.1f, \"tokens\": %d, \"elapsed_s\": %.3f, \"eta_s\": %.1f}\n",
            4000.0 + 10 * (s % 7), s * 4096, 0.9 * s, 0.9 * (n - s));
  }
  fclose(f);
  return dir;
}

static unsigned be32(const unsigned char *p) {
  return (unsigned)p[0] << 24 | (unsigned)p[1] << 16 | (unsigned)p[2] << 8 | p[3];
}

static void test_a_run_is_drawn_into_a_png_of_1200_by_800(void **state) {
  const char *dir = make_run("run", 50, 0.1);
  char png[700];
  snprintf(png, sizeof png, "%s/curves.png", dir);
  assert_ok(lt_plot(dir, png));
  FILE *f = fopen(png, "rb");
  assert_non_null(f);
  unsigned char header[24];
  assert_int_equal(fread(header, 1, sizeof header, f), sizeof header);
  fclose(f);
  assert_memory_equal(header, "\x89PNG\r\n\x1a\n", 8);
  assert_memory_equal(header + 12, "IHDR", 4);
  assert_int_equal(be32(header + 16), 1200);
  assert_int_equal(be32(header + 20), 800);
}

static void test_other_records_draw_other_curves(void **state) {
  const char *slow = make_run("slow", 50, 0.01), *fast = make_run("fast", 50, 1.0);
  char a[700], b[700];
  snprintf(a, sizeof a, "%s/same-name.png", slow);
  snprintf(b, sizeof b, "%s/same-name.png", fast);
  assert_ok(lt_plot(slow, a));
  assert_ok(lt_plot(fast, b));
  assert_false(lt_test_same_file(a, b));
}

static void test_a_folder_without_metrics_is_a_data_error(void **state) {
  char dir[600];
  snprintf(dir, sizeof dir, "%s/no-such-run", lt_test_tmpdir());
  EXPECT_ERROR(lt_plot(dir, "/dev/null"), LT_ERR_DATA, "no-such-run/metrics.jsonl", "run.dir");
}

static void test_an_empty_metrics_file_is_a_data_error(void **state) {
  const char *dir = make_run("empty", 0, 0.1);
  EXPECT_ERROR(lt_plot(dir, "/dev/null"), LT_ERR_DATA, "empty/metrics.jsonl is empty");
}

static void test_a_malformed_record_is_a_data_error_naming_its_line(void **state) {
  const char *dir = make_run("malformed", 5, 0.1);
  char path[700];
  snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
  FILE *f = fopen(path, "a");
  fputs("{\"step\": 6, \"lo", f);
  fclose(f);
  EXPECT_ERROR(lt_plot(dir, "/dev/null"), LT_ERR_DATA, "malformed/metrics.jsonl:6",
               "not a metrics record");
}

static void test_without_gnuplot_the_error_says_what_to_install(void **state) {
  const char *dir = make_run("no-gnuplot", 5, 0.1);
  char *path = strdup(getenv("PATH"));
  setenv("PATH", "/nonexistent", 1);
  int rc = lt_plot(dir, "/dev/null");
  setenv("PATH", path, 1);
  free(path);
  EXPECT_ERROR(rc, LT_ERR_USAGE, "gnuplot is not on PATH", "gnuplot-nox");
}

static void test_the_command_gives_one_line_and_status_4_for_a_missing_run(void **state) {
  char command[700], out[2048];
  snprintf(command, sizeof command, "%s plot %s/absent", lt_test_binary(), lt_test_tmpdir());
  int status = lt_test_run(command, out, sizeof out);
  if (status != LT_ERR_DATA || strncmp(out, "longtrain: error: ", 18) != 0 ||
      strchr(out, '\n') != out + strlen(out) - 1)
    fail_msg("status %d, output:\n%s", status, out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a_run_is_drawn_into_a_png_of_1200_by_800),
      cmocka_unit_test(test_other_records_draw_other_curves),
      cmocka_unit_test(test_a_folder_without_metrics_is_a_data_error),
      cmocka_unit_test(test_an_empty_metrics_file_is_a_data_error),
      cmocka_unit_test(test_a_malformed_record_is_a_data_error_naming_its_line),
      cmocka_unit_test(test_without_gnuplot_the_error_says_what_to_install),
      cmocka_unit_test(test_the_command_gives_one_line_and_status_4_for_a_missing_run),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
