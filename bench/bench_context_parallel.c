// Context parallelism's efficiency: forward + backward of one attention layer's core over a
// sequence of T tokens split over the cp ranks this runs on (ring attention for softmax and
// sparse windows, LASP-2 for linear attention with decay), against one process doing the whole
// sequence, measured in the same run: efficiency = t(one process, T) / (cp * t(each rank, T / cp)).
// 100% means the split costs nothing but the division.
//
//   mpirun -np 2 build/bench_context_parallel --seq 4096 --kind softmax
//   mpirun -np 2 build/bench_context_parallel --seq 65536 --kind linear --reps 5
//
// Every rank also times the whole sequence alone (at the same time, so each has its core), and
// the slowest rank's time counts. On the CPU, with one thread per rank.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/error.h"
#include "parallel/context.h"
#include "parallel/lasp2.h"
#include "parallel/ring.h"

typedef struct options {
  int64_t seq;
  int heads, head_dim, window, reps;
  bool linear;
} options;

// The tensors of one run, the whole sequence's or a rank's share (B = 1).
typedef struct layer_io {
  int64_t T;
  float *q, *k, *v, *o, *dout, *dq, *dk, *dv, *lse, *delta, *log_decay;
  int32_t *pos;
  lt_arena acts, scratch;
} layer_io;

// Wall time, and this process's CPU time: on a machine shared with other jobs the CPU time leaves
// out the time the rank was not running (a waiting rank polls, so its waits still count).
static double clock_s(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int compare_doubles(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static float *normal_floats(int64_t n, uint64_t seed, float std) {
  float *x = malloc(sizeof(float) * (size_t)n);
  lt_rng rng = lt_rng_seed(seed);
  for (int64_t i = 0; x && i < n; i++) x[i] = std * lt_rng_normal(&rng);
  return x;
}

static int io_make(layer_io *io, const options *o, int64_t T, const lt_mesh *mesh) {
  *io = (layer_io){.T = T};
  const int64_t n = T * o->heads * o->head_dim;
  // Linear attention's states sum over all tokens: keep q, k small so outputs stay O(1).
  const float std = o->linear ? 0.1f : 1.0f;
  float **whole[4] = {&io->q, &io->k, &io->v, &io->dout};
  const int64_t whole_n = o->seq * o->heads * o->head_dim;
  for (int i = 0; i < 4; i++) {
    float *all = normal_floats(whole_n, 1 + (uint64_t)i, i < 2 ? std : 1.0f);
    LT_CHECK(all, LT_ERR_MEMORY, "out of memory for %lld floats", (long long)whole_n);
    // This rank's zigzag share of the whole sequence's rows (each token: heads * head_dim).
    *whole[i] = malloc(sizeof(float) * (size_t)n);
    LT_CHECK(*whole[i], LT_ERR_MEMORY, "out of memory for %lld floats", (long long)n);
    const int64_t width = o->heads * o->head_dim;
    for (int64_t t = 0; t < T; t++) {
      const lt_group *cp = lt_cp_group(mesh);
      const int64_t g = cp ? lt_zigzag_global_index(t, cp->rank, cp->size, o->seq) : t;
      memcpy(*whole[i] + t * width, all + g * width, sizeof(float) * (size_t)width);
    }
    free(all);
  }
  float **outputs[6] = {&io->o, &io->dq, &io->dk, &io->dv, &io->lse, &io->delta};
  for (int i = 0; i < 6; i++) {
    *outputs[i] = calloc((size_t)n, sizeof(float));
    LT_CHECK(*outputs[i], LT_ERR_MEMORY, "out of memory for %lld floats", (long long)n);
  }
  io->pos = malloc(sizeof(int32_t) * (size_t)o->seq);
  io->log_decay = malloc(sizeof(float) * (size_t)o->heads);
  LT_CHECK(io->pos && io->log_decay, LT_ERR_MEMORY, "out of memory");
  for (int64_t t = 0; t < o->seq; t++) io->pos[t] = (int32_t)t;
  lt_zigzag_keep_local(io->pos, 1, o->seq, mesh);
  for (int h = 0; h < o->heads; h++) io->log_decay[h] = -powf(2.0f, -8.0f * (h + 1) / o->heads);
  return LT_OK;
}

static void io_free(layer_io *io) {
  float *f[] = {io->q,  io->k,  io->v,   io->o,     io->dout,     io->dq,
                io->dk, io->dv, io->lse, io->delta, io->log_decay};
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) free(f[i]);
  free(io->pos);
  lt_arena_destroy(&io->acts);
  lt_arena_destroy(&io->scratch);
}

typedef struct cp_layer {
  const options *o;
  lt_ring_attention *ring;
  lt_lasp2 *lasp;
} cp_layer;

static int plan_layer(const cp_layer *l, const lt_plan *p) {
  if (l->o->linear) return lt_lasp2_plan(l->lasp, p, l->o->heads, l->o->head_dim, l->o->head_dim);
  return lt_ring_attention_plan(l->ring, p, l->o->heads, l->o->heads, l->o->head_dim);
}

static int plan(const cp_layer *l, layer_io *io) {
  lt_arena ma, ms;
  lt_arena_measure(&ma, LT_CPU, "acts");
  lt_arena_measure(&ms, LT_CPU, "scratch");
  lt_plan p = {.B = 1, .T = io->T, .act_dtype = LT_F32, .acts = &ma, .scratch = &ms};
  LT_TRY(plan_layer(l, &p));
  LT_TRY(lt_arena_create(&io->acts, LT_CPU, ma.peak + 1, "acts"));
  LT_TRY(lt_arena_create(&io->scratch, LT_CPU, ms.peak + 1, "scratch"));
  p.acts = &io->acts, p.scratch = &io->scratch;
  return plan_layer(l, &p);
}

// One forward and backward; without a ring or LASP-2 (cp_layer's NULL), on one process.
static int pass(lt_ctx *ctx, const cp_layer *l, layer_io *io) {
  const options *o = l->o;
  const int64_t T = io->T;
  const int h = o->heads, d = o->head_dim;
  lt_tensor q = lt_view4(io->q, LT_F32, LT_CPU, 1, T, h, d),
            k = lt_view4(io->k, LT_F32, LT_CPU, 1, T, h, d),
            v = lt_view4(io->v, LT_F32, LT_CPU, 1, T, h, d),
            out = lt_view4(io->o, LT_F32, LT_CPU, 1, T, h, d),
            dout = lt_view4(io->dout, LT_F32, LT_CPU, 1, T, h, d),
            dq = lt_view4(io->dq, LT_F32, LT_CPU, 1, T, h, d),
            dk = lt_view4(io->dk, LT_F32, LT_CPU, 1, T, h, d),
            dv = lt_view4(io->dv, LT_F32, LT_CPU, 1, T, h, d);
  if (o->linear) {
    const lt_linear_attn_spec spec = {.log_decay = lt_view1(io->log_decay, LT_F32, LT_CPU, h),
                                      .block = 64};
    LT_TRY(lt_lasp2_forward(l->lasp, ctx, out, q, k, v, &spec));
    return lt_lasp2_backward(l->lasp, ctx, dq, dk, dv, dout, q, k, v, &spec);
  }
  const lt_tensor pos = lt_view2(io->pos, LT_I32, LT_CPU, 1, T);
  const lt_attn_spec spec = {.scale = 1.0f / sqrtf((float)d),
                             .causal = true,
                             .q_pos = pos,
                             .k_pos = pos,
                             .sparse = {.window = o->window}};
  lt_tensor lse = lt_view3(io->lse, LT_F32, LT_CPU, 1, h, T),
            delta = lt_view3(io->delta, LT_F32, LT_CPU, 1, h, T);
  LT_TRY(lt_ring_attention_forward(l->ring, ctx, out, lse, q, k, v, &spec));
  LT_TRY(lt_attn_bwd_delta(ctx, delta, dout, out));
  return lt_ring_attention_backward(l->ring, ctx, dq, dk, dv, dout, q, k, v, lse, delta, &spec);
}

// The median over reps of the slowest rank's wall and CPU time for one pass (after one to warm
// up).
static int time_passes(lt_ctx *ctx, const cp_layer *l, layer_io *io, const lt_mesh *mesh,
                       double seconds[2]) {
  const clockid_t clocks[2] = {CLOCK_MONOTONIC, CLOCK_PROCESS_CPUTIME_ID};
  double times[2][64];
  for (int r = 0; r <= l->o->reps; r++) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double start[2] = {clock_s(clocks[0]), clock_s(clocks[1])};
    LT_TRY(pass(ctx, l, io));
    float t[2];
    for (int c = 0; c < 2; c++) t[c] = (float)(clock_s(clocks[c]) - start[c]);
    LT_TRY(lt_all_reduce_max(&mesh->world, lt_view1(t, LT_F32, LT_CPU, 2)));
    for (int c = 0; c < 2 && r > 0; c++) times[c][r - 1] = t[c];
  }
  for (int c = 0; c < 2; c++) {
    qsort(times[c], (size_t)l->o->reps, sizeof(double), compare_doubles);
    seconds[c] = times[c][l->o->reps / 2];
  }
  return LT_OK;
}

static int parse(options *o, int argc, char **argv) {
  *o = (options){.seq = 4096, .heads = 8, .head_dim = 64, .reps = 3};
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
    LT_CHECK(value || strcmp(arg, "--help") == 0, LT_ERR_USAGE, "%s needs a value", arg);
    if (strcmp(arg, "--seq") == 0)
      o->seq = atoll(value);
    else if (strcmp(arg, "--heads") == 0)
      o->heads = atoi(value);
    else if (strcmp(arg, "--head-dim") == 0)
      o->head_dim = atoi(value);
    else if (strcmp(arg, "--window") == 0)
      o->window = atoi(value);
    else if (strcmp(arg, "--reps") == 0)
      o->reps = atoi(value);
    else if (strcmp(arg, "--kind") == 0 && strcmp(value, "softmax") == 0)
      o->linear = false;
    else if (strcmp(arg, "--kind") == 0 && strcmp(value, "linear") == 0)
      o->linear = true;
    else
      return lt_fail(LT_ERR_USAGE,
                     "usage: mpirun -np CP bench_context_parallel [--seq T] [--heads H] "
                     "[--head-dim D] [--window W] [--kind softmax|linear] [--reps N]; '%s' %s",
                     arg, value ? value : "");
    i++;
  }
  LT_CHECK(o->reps >= 1 && o->reps <= 63, LT_ERR_USAGE, "--reps must be 1 to 63");
  LT_CHECK(o->head_dim % 2 == 0 && o->head_dim <= LT_MAX_HEAD_DIM, LT_ERR_USAGE,
           "--head-dim must be even and at most %d", LT_MAX_HEAD_DIM);
  return LT_OK;
}

static int run(const options *o, const lt_world *world) {
  const lt_parallel_config layout = {.dp = 1, .pp = 1, .cp = world->size, .tp = 1};
  lt_mesh mesh;
  LT_TRY(lt_mesh_create(&mesh, world, &layout));
  LT_CHECK(world->size >= 2 && o->seq % (2 * world->size) == 0, LT_ERR_USAGE,
           "run on 2 or more ranks, with --seq a multiple of 2 * ranks");
  lt_ctx ctx;
  LT_TRY(lt_ctx_init(&ctx, LT_CPU, 1));
  cp_layer one = {.o = o}, split = {.o = o};
  layer_io whole, mine;
  LT_TRY(io_make(&whole, o, o->seq, NULL));
  LT_TRY(io_make(&mine, o, o->seq / world->size, &mesh));
  LT_TRY(lt_ring_attention_create(&split.ring, &mesh));
  LT_TRY(lt_lasp2_create(&split.lasp, &mesh, o->heads, mine.log_decay));
  LT_TRY(plan(&one, &whole));
  LT_TRY(plan(&split, &mine));
  double t_one[2], t_split[2]; // wall, CPU
  LT_TRY(time_passes(&ctx, &one, &whole, &mesh, t_one));
  LT_TRY(time_passes(&ctx, &split, &mine, &mesh, t_split));
  const lt_ring_stats stats = lt_ring_attention_stats(split.ring);
  if (world->rank == 0) {
    printf("%s, %d heads of %d, T = %lld over cp = %d (%lld tokens per rank)",
           o->linear   ? "linear attention with decay (LASP-2)"
           : o->window ? "sliding-window attention (ring)"
                       : "causal softmax attention (ring)",
           o->heads, o->head_dim, (long long)o->seq, world->size,
           (long long)(o->seq / world->size));
    if (o->window) printf(", window %d", o->window);
    printf("\n  one process, whole sequence: %.3f s forward + backward (CPU time %.3f s)\n",
           t_one[0], t_one[1]);
    printf("  each of %d ranks, its share:  %.3f s (CPU time %.3f s)\n", world->size, t_split[0],
           t_split[1]);
    printf("  efficiency t_one / (cp * t_rank): %.1f%% (by CPU time %.1f%%)\n",
           100.0 * t_one[0] / (world->size * t_split[0]),
           100.0 * t_one[1] / (world->size * t_split[1]));
    if (!o->linear) // counted over the warm-up pass and the timed ones
      printf("  rank 0's ring steps per forward + backward: %lld computed, %lld skipped\n",
             (long long)stats.computed / (o->reps + 1), (long long)stats.skipped / (o->reps + 1));
  }
  io_free(&whole), io_free(&mine);
  lt_ring_attention_destroy(split.ring);
  lt_lasp2_destroy(split.lasp);
  lt_ctx_destroy(&ctx);
  lt_mesh_destroy(&mesh);
  return LT_OK;
}

int main(int argc, char **argv) {
  lt_world world;
  options o;
  int rc = lt_world_init(&world, &argc, &argv);
  if (rc == LT_OK) rc = parse(&o, argc, argv);
  if (rc == LT_OK) rc = run(&o, &world);
  if (rc != LT_OK) {
    fprintf(stderr, "bench_context_parallel: error: %s\n", lt_error_message());
    lt_world_abort(&world, rc);
  }
  lt_world_finalize(&world);
  return rc;
}
