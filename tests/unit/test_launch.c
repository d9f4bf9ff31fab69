// What the launcher started against what the config asks for (parallel/launch_check.h): a Slurm
// job whose task count is not dp * pp * cp * tp, or a job that runs longtrain without srun, is
// one config error before any work; ranks that mpirun started are left to mpirun. The real
// binary says so in one line with status 3.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parallel/launch_check.h"
#include "testing.h"

static void in_slurm_job(const char *tasks) {
  setenv("SLURM_JOB_ID", "4242", 1);
  setenv("SLURM_NTASKS", tasks, 1);
  unsetenv("OMPI_COMM_WORLD_SIZE");
}

static int reset_environment(void **state) {
  unsetenv("SLURM_JOB_ID");
  unsetenv("SLURM_NTASKS");
  unsetenv("OMPI_COMM_WORLD_SIZE");
  return 0;
}

static void test_a_slurm_job_with_as_many_tasks_as_ranks_passes(void **state) {
  in_slurm_job("8");
  const lt_parallel_config parallel = {.dp = 2, .pp = 1, .cp = 2, .tp = 2};
  assert_ok(lt_launch_check(&parallel, &(lt_world){.rank = 3, .size = 8}, "run.yaml"));
}

static void test_a_slurm_job_of_another_task_count_is_a_config_error(void **state) {
  in_slurm_job("16");
  const lt_parallel_config parallel = {.dp = 2, .pp = 1, .cp = 2, .tp = 2};
  EXPECT_ERROR(lt_launch_check(&parallel, &(lt_world){.rank = 0, .size = 16}, "run.yaml"),
               LT_ERR_CONFIG, "run.yaml", "2 * 1 * 2 * 2 = 8", "Slurm job 4242 has 16 tasks",
               "SLURM_NTASKS", "--ntasks-per-node", "multiply to 16");
}

static void test_a_slurm_job_that_runs_longtrain_without_srun_is_a_config_error(void **state) {
  in_slurm_job("2");
  const lt_parallel_config parallel = {.dp = 2, .pp = 1, .cp = 1, .tp = 1};
  EXPECT_ERROR(lt_launch_check(&parallel, &(lt_world){.rank = 0, .size = 1}, "run.yaml"),
               LT_ERR_CONFIG, "Slurm job 4242 has 2 tasks but longtrain runs as 1 process", "srun");
}

static void test_a_task_count_that_is_not_a_number_is_a_config_error(void **state) {
  in_slurm_job("two");
  const lt_parallel_config parallel = {.dp = 1, .pp = 1, .cp = 1, .tp = 1};
  EXPECT_ERROR(lt_launch_check(&parallel, &(lt_world){.rank = 0, .size = 1}, "run.yaml"),
               LT_ERR_CONFIG, "SLURM_NTASKS is 'two'");
}

static void test_ranks_started_by_mpirun_and_runs_outside_slurm_are_not_checked(void **state) {
  const lt_parallel_config parallel = {.dp = 4, .pp = 1, .cp = 1, .tp = 1};
  assert_ok(lt_launch_check(&parallel, &(lt_world){.rank = 0, .size = 1}, "run.yaml"));
  in_slurm_job("2");
  setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
  assert_ok(lt_launch_check(&parallel, &(lt_world){.rank = 0, .size = 4}, "run.yaml"));
}

static void test_the_binary_refuses_a_slurm_job_of_another_task_count_in_one_line(void **state) {
  const char *dir = lt_test_tmpdir();
  char config[300], command[1200], out[4096];
  snprintf(config, sizeof config, "%s/run.yaml", dir);
  lt_test_write_file(config, "parallel: {dp: 4}\ndata: {path: /nonexistent.h5}\n");
  snprintf(command, sizeof command, "SLURM_JOB_ID=77 SLURM_NTASKS=2 %s train --config %s",
           lt_test_binary(), config);
  int status = lt_test_run(command, out, sizeof out);
  if (status != LT_ERR_CONFIG) fail_msg("exit status %d, expected 3:\n%s", status, out);
  const char *newline = strchr(out, '\n');
  if (!newline || newline[1] != '\0') fail_msg("expected one line, got:\n%s", out);
  if (!strstr(out, "longtrain: error: ") || !strstr(out, "Slurm job 77 has 2 tasks") ||
      !strstr(out, "= 4"))
    fail_msg("unexpected message: %s", out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_a_slurm_job_with_as_many_tasks_as_ranks_passes,
                                reset_environment),
      cmocka_unit_test_teardown(test_a_slurm_job_of_another_task_count_is_a_config_error,
                                reset_environment),
      cmocka_unit_test_teardown(test_a_slurm_job_that_runs_longtrain_without_srun_is_a_config_error,
                                reset_environment),
      cmocka_unit_test_teardown(test_a_task_count_that_is_not_a_number_is_a_config_error,
                                reset_environment),
      cmocka_unit_test_teardown(test_ranks_started_by_mpirun_and_runs_outside_slurm_are_not_checked,
                                reset_environment),
      cmocka_unit_test(test_the_binary_refuses_a_slurm_job_of_another_task_count_in_one_line),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
