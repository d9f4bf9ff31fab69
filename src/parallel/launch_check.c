#include "parallel/launch_check.h"

#include <stdlib.h>

#include "core/error.h"

int lt_launch_check(const lt_parallel_config *parallel, const lt_world *world, const char *source) {
  const char *job = getenv("SLURM_JOB_ID"), *tasks_text = getenv("SLURM_NTASKS");
  if (!job || !tasks_text || getenv("OMPI_COMM_WORLD_SIZE")) return LT_OK;
  char *end;
  const long tasks = strtol(tasks_text, &end, 10);
  LT_CHECK(end != tasks_text && *end == '\0' && tasks > 0, LT_ERR_CONFIG,
           "SLURM_NTASKS is '%s', not a task count: run longtrain inside the Slurm job that set it",
           tasks_text);
  const long ranks = (long)parallel->dp * parallel->pp * parallel->cp * parallel->tp;
  LT_CHECK(tasks == ranks, LT_ERR_CONFIG,
           "%s: parallel.dp * pp * cp * tp = %d * %d * %d * %d = %ld, but Slurm job %s has %ld "
           "task%s (SLURM_NTASKS): submit it with %ld task%s (nodes x --ntasks-per-node) or set "
           "the parallel sizes to multiply to %ld",
           source, parallel->dp, parallel->pp, parallel->cp, parallel->tp, ranks, job, tasks,
           tasks == 1 ? "" : "s", ranks, ranks == 1 ? "" : "s", tasks);
  LT_CHECK(world->size == tasks, LT_ERR_CONFIG,
           "Slurm job %s has %ld tasks but longtrain runs as %d process%s: start it with srun (one "
           "rank per task), or with launch/longtrain-mpirun",
           job, tasks, world->size, world->size == 1 ? "" : "es");
  return LT_OK;
}
