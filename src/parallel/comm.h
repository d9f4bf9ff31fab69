// The process group. A run launched by mpirun (or srun) initialises MPI and is one rank of a
// world; a plain `longtrain train` is a world of one and never touches MPI. Layers ask this
// module for collectives; they never call MPI themselves.
#ifndef LT_COMM_H
#define LT_COMM_H

#include <stdbool.h>
#include <stdint.h>

typedef struct lt_world {
  int rank, size;
  bool mpi; // MPI was initialised (launched under mpirun or srun)
} lt_world;

// Joins the world: MPI_Init when a launcher's environment is present. Only the main thread
// communicates; the watchdog's thread (parallel/watchdog.h) may call MPI_Abort.
int lt_world_init(lt_world *world, int *argc, char ***argv);
void lt_world_finalize(lt_world *world);
// Ends every rank of the job (after a fatal error on this one).
void lt_world_abort(lt_world *world, int code);

#endif
