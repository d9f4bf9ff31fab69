// What the launcher started against what the config asks for. A Slurm job is submitted with a
// task count (nodes x --ntasks-per-node) and its config with parallel sizes; when they disagree,
// the run stops with one line before any rank does work, instead of failing later in a
// collective or leaving GPUs idle.
#ifndef LT_LAUNCH_CHECK_H
#define LT_LAUNCH_CHECK_H

#include "core/config.h"
#include "parallel/comm.h"

// Inside a Slurm job (SLURM_JOB_ID and SLURM_NTASKS set) whose ranks srun started, or that runs
// longtrain without any launcher: SLURM_NTASKS must be parallel.dp * pp * cp * tp, and the world
// must have that many ranks. Ranks that mpirun started are mpirun's to count (OMPI_COMM_WORLD_SIZE
// set; launch/longtrain-mpirun checks SLURM_NTASKS before it starts them). `source` names the
// config in messages. LT_ERR_CONFIG on a mismatch.
int lt_launch_check(const lt_parallel_config *parallel, const lt_world *world, const char *source);

#endif
