// Model FLOPs utilisation (train/mfu.h): the peak of a GPU from its name, the run's peak from
// run.peak_tflops, the MFU formula, and the progress line and metrics.jsonl showing it only when
// the peak is known.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runs.h"
#include "testing.h"
#include "train/mfu.h"

static void test_gpu_names_as_cuda_reports_them_give_their_dense_bf16_peak(void **state) {
  assert_float_equal(lt_gpu_peak_tflops("NVIDIA H100 80GB HBM3"), 989.4, 1e-9);
  assert_float_equal(lt_gpu_peak_tflops("NVIDIA H100 PCIe"), 756.0, 1e-9);
  assert_float_equal(lt_gpu_peak_tflops("NVIDIA H200"), 989.4, 1e-9);
  assert_float_equal(lt_gpu_peak_tflops("NVIDIA H200 NVL"), 835.0, 1e-9);
  assert_float_equal(lt_gpu_peak_tflops("NVIDIA A100-SXM4-80GB"), 312.0, 1e-9);
  assert_float_equal(lt_gpu_peak_tflops("NVIDIA L40S"), 362.0, 1e-9);
  assert_float_equal(lt_gpu_peak_tflops("NVIDIA GeForce GTX 1080"), 0.0, 0);
  assert_float_equal(lt_gpu_peak_tflops(NULL), 0.0, 0);
}

static void test_run_peak_tflops_wins_and_the_cpu_has_none(void **state) {
  lt_run_config run = {.peak_tflops = 123.5};
  assert_float_equal(lt_run_peak_tflops(&run, LT_CPU), 123.5, 0);
  run.peak_tflops = 0;
  assert_float_equal(lt_run_peak_tflops(&run, LT_CPU), 0.0, 0);
}

static void test_mfu_is_achieved_flops_over_peak_flops_of_all_devices(void **state) {
  // 8 devices of 1000 TFLOP/s; 4e5 tokens/s of 6e9 FLOPs each = 2.4e15 FLOP/s of 8e15: 30%.
  assert_float_equal(lt_mfu(4e5, 6e9, 1000, 8), 0.3, 1e-12);
  assert_true(isnan(lt_mfu(4e5, 6e9, 0, 8)));
}

static void test_the_progress_line_and_metrics_show_mfu_only_with_a_peak(void **state) {
  const lt_test_run_files *files = lt_test_run_files_get();
  char with[600], without[600], args[2048], log[700], path[700];
  snprintf(with, sizeof with, "%s/with-peak", lt_test_tmpdir());
  snprintf(without, sizeof without, "%s/without-peak", lt_test_tmpdir());
  snprintf(log, sizeof log, "%s/progress.log", lt_test_tmpdir());
  snprintf(args, sizeof args,
           "train --config %s --set run.dir=%s --set train.steps=2 --set run.peak_tflops=0.001",
           files->config, with);
  lt_test_expect_run(log, args, 0, "tok/s | mfu ", "done: 2 steps");
  snprintf(path, sizeof path, "%s/metrics.jsonl", with);
  char *records = lt_test_read_text(path);
  assert_non_null(strstr(records, "\"mfu\": "));
  free(records);
  snprintf(args, sizeof args, "train --config %s --set run.dir=%s --set train.steps=2",
           files->config, without);
  lt_test_expect_run(log, args, 0, "done: 2 steps");
  char *output = lt_test_read_text(log);
  assert_null(strstr(output, "mfu"));
  free(output);
  snprintf(path, sizeof path, "%s/metrics.jsonl", without);
  records = lt_test_read_text(path);
  assert_null(strstr(records, "mfu"));
  free(records);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gpu_names_as_cuda_reports_them_give_their_dense_bf16_peak),
      cmocka_unit_test(test_run_peak_tflops_wins_and_the_cpu_has_none),
      cmocka_unit_test(test_mfu_is_achieved_flops_over_peak_flops_of_all_devices),
      cmocka_unit_test(test_the_progress_line_and_metrics_show_mfu_only_with_a_peak),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
