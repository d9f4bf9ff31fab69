#include "parallel/comm.h"

#include <mpi.h>
#include <stdlib.h>

#include "core/error.h"

static bool launched_by_mpi(void) {
  static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "MPI_LOCALNRANKS"};
  for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
    if (getenv(vars[i])) return true;
  return false;
}

int lt_world_init(lt_world *world, int *argc, char ***argv) {
  *world = (lt_world){.rank = 0, .size = 1};
  if (!launched_by_mpi()) return LT_OK;
  int provided;
  LT_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) == MPI_SUCCESS, LT_ERR_COMM,
           "MPI_Init_thread failed");
  world->mpi = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &world->rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world->size);
  return LT_OK;
}

void lt_world_finalize(lt_world *world) {
  if (world->mpi) MPI_Finalize();
  world->mpi = false;
}

void lt_world_abort(lt_world *world, int code) {
  if (world->mpi && world->size > 1) MPI_Abort(MPI_COMM_WORLD, code);
}
