#include "parallel/mesh.h"

#include <stdio.h>
#include <string.h>

#include "core/error.h"
#include "parallel/watchdog.h"

#ifdef LT_WITH_CUDA
#include "parallel/nccl.h"
#endif

static const char *axis_names[LT_N_AXES] = {"dp", "pp", "cp", "tp"};

static void single_group(lt_group *g, const char *name) {
  *g = (lt_group){.rank = 0, .size = 1, .comm = MPI_COMM_NULL};
  snprintf(g->name, sizeof g->name, "%s", name);
}

void lt_mesh_single(lt_mesh *mesh) {
  *mesh = (lt_mesh){.world_rank = 0, .world_size = 1};
  single_group(&mesh->world, "world");
  for (int a = 0; a < LT_N_AXES; a++) {
    mesh->size[a] = 1;
    single_group(&mesh->axis[a], axis_names[a]);
  }
  single_group(&mesh->dp_cp, "dp*cp");
  single_group(&mesh->embed, "embed");
  mesh->parallel = (lt_parallel_config){.dp = 1, .pp = 1, .cp = 1, .tp = 1};
}

int lt_mesh_rank_of(const lt_mesh *mesh, const int coord[LT_N_AXES]) {
  int rank = 0;
  for (int a = 0; a < LT_N_AXES; a++) rank = rank * mesh->size[a] + coord[a];
  return rank;
}

// The ranks that share every coordinate outside `axes` form one group, ordered along `axes`.
static int split(lt_mesh *mesh, lt_group *g, const char *name, const bool axes[LT_N_AXES]) {
  int color = 0, key = 0;
  for (int a = 0; a < LT_N_AXES; a++) {
    if (axes[a])
      key = key * mesh->size[a] + mesh->coord[a];
    else
      color = color * mesh->size[a] + mesh->coord[a];
  }
  single_group(g, name);
  int size = 1;
  for (int a = 0; a < LT_N_AXES; a++)
    if (axes[a]) size *= mesh->size[a];
  if (size == 1) return LT_OK;
  lt_watch_begin("creating the communicator", name);
  int rc = MPI_Comm_split(MPI_COMM_WORLD, color, key, &g->comm);
  lt_watch_end();
  LT_CHECK(rc == MPI_SUCCESS, LT_ERR_COMM, "MPI_Comm_split for the %s group failed", name);
  MPI_Comm_rank(g->comm, &g->rank);
  MPI_Comm_size(g->comm, &g->size);
  return LT_OK;
}

// The first and last stage of each pipeline; every rank takes part in the split (a collective),
// the stages between get no communicator.
static int split_embed_group(lt_mesh *mesh) {
  const int stage = mesh->coord[LT_AXIS_PP], last = mesh->size[LT_AXIS_PP] - 1;
  if (last == 0) return LT_OK;
  const bool member = stage == 0 || stage == last;
  int color = MPI_UNDEFINED;
  if (member) {
    int others[LT_N_AXES];
    memcpy(others, mesh->coord, sizeof others);
    others[LT_AXIS_PP] = 0; // the pipeline's own coordinates name it
    color = lt_mesh_rank_of(mesh, others);
  }
  MPI_Comm comm;
  LT_CHECK(MPI_Comm_split(MPI_COMM_WORLD, color, stage, &comm) == MPI_SUCCESS, LT_ERR_COMM,
           "MPI_Comm_split for the embed group failed");
  if (!member) return LT_OK;
  mesh->embed.comm = comm;
  MPI_Comm_rank(comm, &mesh->embed.rank);
  MPI_Comm_size(comm, &mesh->embed.size);
  return LT_OK;
}

int lt_mesh_create(lt_mesh *mesh, const lt_world *world, const lt_parallel_config *cfg) {
  lt_mesh_single(mesh);
  const int sizes[LT_N_AXES] = {cfg->dp, cfg->pp, cfg->cp, cfg->tp};
  long product = 1;
  for (int a = 0; a < LT_N_AXES; a++) product *= sizes[a];
  LT_CHECK(product == world->size, LT_ERR_CONFIG,
           "parallel.dp * pp * cp * tp = %d * %d * %d * %d = %ld, but %d rank%s started: set the "
           "parallel sizes to multiply to the rank count (or start %ld ranks, e.g. mpirun -np %ld)",
           cfg->dp, cfg->pp, cfg->cp, cfg->tp, product, world->size,
           world->size == 1 ? " was" : "s were", product, product);
  mesh->world_rank = world->rank, mesh->world_size = world->size;
  mesh->parallel = *cfg;
  int rest = world->rank;
  for (int a = LT_N_AXES - 1; a >= 0; a--) {
    mesh->size[a] = sizes[a];
    mesh->coord[a] = rest % sizes[a];
    rest /= sizes[a];
  }
  if (world->size == 1) return LT_OK;
  mesh->world = (lt_group){.rank = world->rank, .size = world->size, .comm = MPI_COMM_WORLD};
  snprintf(mesh->world.name, sizeof mesh->world.name, "world");
  for (int a = 0; a < LT_N_AXES; a++) {
    bool axes[LT_N_AXES] = {false};
    axes[a] = true;
    LT_TRY(split(mesh, &mesh->axis[a], axis_names[a], axes));
  }
  const bool dp_cp[LT_N_AXES] = {[LT_AXIS_DP] = true, [LT_AXIS_CP] = true};
  LT_TRY(split(mesh, &mesh->dp_cp, "dp*cp", dp_cp));
  return split_embed_group(mesh);
}

#ifdef LT_WITH_CUDA
int lt_mesh_init_nccl(lt_mesh *mesh) {
  lt_group *groups[LT_N_AXES + 3] = {&mesh->world,   &mesh->axis[0], &mesh->axis[1], &mesh->axis[2],
                                     &mesh->axis[3], &mesh->dp_cp,   &mesh->embed};
  for (int i = 0; i < LT_N_AXES + 3; i++)
    if (groups[i]->size > 1) LT_TRY(lt_nccl_group_init(groups[i]));
  return LT_OK;
}
#endif

void lt_mesh_destroy(lt_mesh *mesh) {
  lt_group *groups[LT_N_AXES + 3] = {&mesh->world,   &mesh->axis[0], &mesh->axis[1], &mesh->axis[2],
                                     &mesh->axis[3], &mesh->dp_cp,   &mesh->embed};
  for (int i = 0; i < LT_N_AXES + 3; i++) {
#ifdef LT_WITH_CUDA
    lt_nccl_group_destroy(groups[i]);
#endif
    // The world group's communicator is MPI_COMM_WORLD, which is not ours to free.
    if (i > 0 && groups[i]->comm != MPI_COMM_NULL) MPI_Comm_free(&groups[i]->comm);
  }
  lt_mesh_single(mesh);
}
