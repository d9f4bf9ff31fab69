// Run under mpirun with 4 ranks and with 8: the trainer on combined parallel layouts trains what
// one process trains. Four models: softmax with tied embeddings; a lightning*3,softmax hybrid
// (ring attention and LASP-2 in one model) on packed documents, which begin inside the chunks of
// the context-parallel split and run across their boundaries; MoH and MoE layers, whose auxiliary
// losses are averaged over every rank; sparse (a window and sinks) and linear attention, tied, with
// recomputation. Rank 0 trains each model 20 steps in one process and gives every rank the
// numbers; then each layout of the world's size trains the same 20 steps through lt_trainer, with
// gradient accumulation (1 to 4 micro-batches per rank and step), and is compared: the first
// step's loss and every gradient (each rank's own slices of each tensor), every step's loss,
// auxiliary loss and gradient norm, the validation loss at steps 10 and 20, and the final weights.
// Layouts, 4 ranks: pp2 x cp2, dp2 x pp2 (ZeRO-1), tp2 x pp2, cp2 x tp2 (ZeRO-1); 8 ranks:
// dp2 x cp2 x tp2 (ZeRO-1), pp2 x cp2 x tp2, dp2 x pp2 x cp2 (ZeRO-1), dp2 x pp2 x tp2 (ZeRO-1).
//
// And a checkpoint saved in one layout loads in another (or one process), which saves the same
// tensors back bit for bit.
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runs.h"
#include "testing.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

static lt_world world, single = {.rank = 0, .size = 1};
static char data_path[512], tmp_dir[512]; // rank 0's, shared by every rank

enum { STEPS = 20, EVAL_EVERY = 10, SEQ_LEN = 32 };

// Tolerances, relative (losses, norms) or to each tensor's largest element (gradients, weights).
// The layouts compute the same sums in other orders (the tp halves of a matmul, the dp x cp ranks'
// gradients, the micro-batches' accumulation), so the first step differs by fp32 rounding: the
// loss by a few 1e-9, gradients by up to 1e-6. Over 20 steps AdamW amplifies such differences
// where gradients are small (its update m / sqrt(v) normalises them away), so the weights part
// by up to 2e-4 while the losses stay within 2e-8. The measured worst cases are in the README.
#define TOL_FIRST_LOSS  1e-7
#define TOL_FIRST_GRADS 1e-5
#define TOL_CURVE       1e-6 // losses, auxiliary losses, validation losses
#define TOL_NORM        1e-5 // gradient norms
#define TOL_WEIGHTS     1e-3

static const char *config_text = "model:\n"
                                 "  d_model: 32\n"
                                 "  n_layers: 4\n"
                                 "  n_heads: 4\n"
                                 "  n_kv_heads: 2\n"
                                 "  ffn_dim: 64\n"
                                 "  vocab_size: 320\n"
                                 "  max_seq_len: 32\n"
                                 "%s"
                                 "train:\n"
                                 "  seq_len: 32\n"
                                 "  batch: 8\n"
                                 "  micro_batch: 2\n"
                                 "  steps: 20\n"
                                 "  warmup: 3\n"
                                 "  lr: 3e-3\n"
                                 "  min_lr: 3e-4\n"
                                 "  clip_norm: 1.0\n"
                                 "  eval_batches: 3\n" // not a multiple of dp
                                 "%s"
                                 "data:\n"
                                 "  path: %s\n"
                                 "  packing: %s\n"
                                 "  val_fraction: 0.1\n"
                                 "parallel:\n"
                                 "  dp: %d\n"
                                 "  pp: %d\n"
                                 "  cp: %d\n"
                                 "  tp: %d\n"
                                 "  zero: %s\n"
                                 "  bucket_mb: 0.004\n" // many buckets
                                 "  timeout_s: 60\n"
                                 "run:\n"
                                 "  dir: %s\n"
                                 "  threads: 1\n";

typedef struct model_case {
  const char *name;
  const char *model; // the model section's lines beyond the common sizes
  const char *train; // the train section's lines beyond the common ones
  const char *packing;
  bool routers; // has auxiliary losses
} model_case;

static const model_case softmax_model = {
    "softmax, tied", "  attention: softmax\n  tie_embeddings: true\n", "", "stream", false};
static const model_case hybrid_model = {
    "lightning*3,softmax, documents", "  attention: lightning*3,softmax\n", "", "documents", false};
static const model_case routed_model = {"moh,lightning + moe,swiglu, documents",
                                        "  attention: moh,lightning\n"
                                        "  ffn: moe,swiglu\n"
                                        "  moh: {shared_heads: 1, top_k: 2}\n"
                                        "  moe: {n_experts: 4, top_k: 2, ffn_dim: 32}\n",
                                        "", "documents", true};
// A window of 12 with 2 sink tokens: masks on absolute positions, across the cp chunks.
static const model_case sparse_model = {"sparse,linear, tied, documents, recompute",
                                        "  attention: sparse,linear\n"
                                        "  tie_embeddings: true\n"
                                        "  sparse: {window: 12, sinks: 2, block_size: 8}\n",
                                        "  recompute: true\n", "documents", false};

typedef struct layout {
  const char *name;
  int dp, pp, cp, tp;
  bool zero;
} layout;

static const layout layouts_of_4[] = {{"pp2 x cp2", 1, 2, 2, 1, false},
                                      {"dp2 x pp2, ZeRO-1", 2, 2, 1, 1, true},
                                      {"tp2 x pp2", 1, 2, 1, 2, false},
                                      {"cp2 x tp2, ZeRO-1", 1, 1, 2, 2, true}};
static const layout layouts_of_8[] = {{"dp2 x cp2 x tp2, ZeRO-1", 2, 1, 2, 2, true},
                                      {"pp2 x cp2 x tp2", 1, 2, 2, 2, false},
                                      {"dp2 x pp2 x cp2, ZeRO-1", 2, 2, 2, 1, true},
                                      {"dp2 x pp2 x tp2, ZeRO-1", 2, 2, 1, 2, true}};
static const layout one_process = {"one process", 1, 1, 1, 1, false};
static const layout dp4_zero = {"dp4, ZeRO-1", 4, 1, 1, 1, true};
static const layout dp2_tp2_zero = {"dp2 x tp2, ZeRO-1", 2, 1, 1, 2, true};

static void make_trainer(lt_trainer *tr, const model_case *m, const layout *l, lt_world *w,
                         const char *run_dir) {
  char yaml[4096];
  snprintf(yaml, sizeof yaml, config_text, m->model, m->train, data_path, m->packing, l->dp, l->pp,
           l->cp, l->tp, l->zero ? "true" : "false", run_dir);
  lt_config cfg;
  assert_ok(lt_config_load_string(&cfg, yaml, "test_layouts.yaml", 0, NULL));
  assert_ok(lt_trainer_create(tr, &cfg, w));
  assert_ok(lt_params_init(&tr->model.params, 11));
}

// What the single process computed, on every rank.
typedef struct reference {
  lt_trainer tr; // built on every rank (its parameter table names the tensors); trained on rank 0
  lt_step_metrics steps[STEPS];
  double val[STEPS / EVAL_EVERY];
  float *grad;   // the whole model's gradient at step 1
  float *master; // the weights after step STEPS
} reference;

static void bcast(void *data, size_t bytes) {
  assert_int_equal(MPI_Bcast(data, (int)bytes, MPI_BYTE, 0, MPI_COMM_WORLD), MPI_SUCCESS);
}

static void reference_run(reference *ref, const model_case *m) {
  make_trainer(&ref->tr, m, &one_process, &single, "unused");
  const lt_params *p = &ref->tr.model.params;
  ref->grad = malloc(p->numel * sizeof(float));
  ref->master = malloc(p->numel * sizeof(float));
  assert_non_null(ref->grad), assert_non_null(ref->master);
  for (int s = 0; s < STEPS && world.rank == 0; s++) {
    assert_ok(lt_trainer_step(&ref->tr, &ref->steps[s]));
    if (s == 0) memcpy(ref->grad, p->grad, p->numel * sizeof(float));
    if ((s + 1) % EVAL_EVERY == 0) assert_ok(lt_trainer_eval(&ref->tr, &ref->val[s / EVAL_EVERY]));
  }
  if (world.rank == 0) memcpy(ref->master, p->master, p->numel * sizeof(float));
  bcast(ref->steps, sizeof ref->steps);
  bcast(ref->val, sizeof ref->val);
  bcast(ref->grad, p->numel * sizeof(float));
  bcast(ref->master, p->numel * sizeof(float));
}

static void reference_free(reference *ref) {
  free(ref->grad);
  free(ref->master);
  lt_trainer_destroy(&ref->tr);
}

// The worst differences a layout showed (over its ranks), for the report.
typedef struct differences {
  double first_loss, first_grads, loss, aux, norm, val, weights;
} differences;

static double relative(double got, double want) {
  return fabs(got - want) / fmax(fabs(want), 1e-30);
}

// Element j of p's shard (row-major in its own shape): its index in the whole tensor.
static int64_t logical_index(const lt_param_info *p, int64_t j) {
  int64_t index = 0, stride = 1;
  for (int d = p->ndim - 1; d >= 0; d--) {
    index += (p->slice_start[d] + j % p->shape[d]) * stride;
    j /= p->shape[d];
    stride *= p->logical_shape[d];
  }
  return index;
}

// The worst difference between this rank's `values` (gradients or weights) in [lo, hi) of its
// flat buffer and the same elements of the single process's `whole` buffer, each relative to the
// reference tensor's largest element.
static double worst_against(const lt_trainer *tr, const float *values, size_t lo, size_t hi,
                            const reference *ref, const float *whole) {
  const lt_params *p = &tr->model.params;
  double worst = 0;
  int64_t compared = 0;
  for (int i = 0; i < p->count; i++) {
    const lt_param_info *info = &p->info[i];
    const lt_param_info *r = lt_params_find(&ref->tr.model.params, info->name);
    assert_non_null(r);
    const float *want = whole + r->offset;
    const double scale = fmax(lt_test_max_abs(want, r->numel), 1e-30);
    for (int64_t j = 0; j < info->numel; j++) {
      const size_t at = info->offset + (size_t)j;
      if (at < lo || at >= hi) continue;
      const double diff = fabs((double)values[at] - want[logical_index(info, j)]) / scale;
      if (!(diff <= worst)) worst = diff; // a NaN stays the worst
      compared++;
    }
  }
  assert_true(compared > 0);
  return worst;
}

static void check(const char *what, const char *layout_name, int step, double diff,
                  double tolerance, double *seen) {
  if (!(diff <= *seen)) *seen = diff;
  if (!(diff <= tolerance))
    fail_msg("rank %d, %s, step %d: %s differs by %g (tolerance %g)", world.rank, layout_name, step,
             what, diff, tolerance);
}

static void train_and_compare(const model_case *m, const layout *l, const reference *ref,
                              differences *d) {
  lt_trainer tr;
  make_trainer(&tr, m, l, &world, "unused");
  const lt_params *p = &tr.model.params;
  // The logs, checkpoints and MFU count the whole model's parameters in every layout.
  assert_int_equal(lt_model_n_params(&tr.model), lt_model_n_params(&ref->tr.model));
  for (int s = 0; s < STEPS; s++) {
    lt_step_metrics got;
    const lt_step_metrics *want = &ref->steps[s];
    assert_ok(lt_trainer_step(&tr, &got));
    if (s == 0) {
      check("the loss", l->name, 1, relative(got.loss, want->loss), TOL_FIRST_LOSS, &d->first_loss);
      // The gradients that hold the sum over the ranks: all, or this rank's ZeRO-1 shard.
      const size_t lo = tr.dp.zero ? p->shard_start : 0;
      const size_t hi = tr.dp.zero ? p->shard_start + p->shard_numel : p->numel;
      check("a gradient", l->name, 1, worst_against(&tr, p->grad, lo, hi, ref, ref->grad),
            TOL_FIRST_GRADS, &d->first_grads);
    }
    check("the loss", l->name, s + 1, relative(got.loss, want->loss), TOL_CURVE, &d->loss);
    check("the auxiliary loss", l->name, s + 1, relative(got.aux_loss, want->aux_loss), TOL_CURVE,
          &d->aux);
    check("the gradient norm", l->name, s + 1, relative(got.grad_norm, want->grad_norm), TOL_NORM,
          &d->norm);
    if ((s + 1) % EVAL_EVERY == 0) {
      double val;
      assert_ok(lt_trainer_eval(&tr, &val));
      check("the validation loss", l->name, s + 1, relative(val, ref->val[s / EVAL_EVERY]),
            TOL_CURVE, &d->val);
    }
  }
  check("a weight", l->name, STEPS, worst_against(&tr, p->master, 0, p->numel, ref, ref->master),
        TOL_WEIGHTS, &d->weights);
  lt_trainer_destroy(&tr);
}

static void report(const model_case *m, const layout *l, differences *d) {
  MPI_Allreduce(MPI_IN_PLACE, d, sizeof *d / sizeof(double), MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (world.rank != 0) return;
  printf("%-24s %-41s step 1: loss %.1e grads %.1e | 20 steps: loss %.1e aux %.1e norm %.1e "
         "val %.1e | weights %.1e\n",
         l->name, m->name, d->first_loss, d->first_grads, d->loss, d->aux, d->norm, d->val,
         d->weights);
  fflush(stdout);
}

static void every_layout_trains_as_one_process(const model_case *m) {
  reference ref = {0};
  reference_run(&ref, m);
  const bool eight = world.size == 8;
  const layout *layouts = eight ? layouts_of_8 : layouts_of_4;
  const int n = 4;
  for (int i = 0; i < n; i++) {
    differences d = {0};
    train_and_compare(m, &layouts[i], &ref, &d);
    report(m, &layouts[i], &d);
  }
  // The models learn (so the curves compared are not flat), and the routers' losses are there.
  assert_true(ref.steps[STEPS - 1].loss < 0.8 * ref.steps[0].loss);
  assert_true(m->routers ? ref.steps[0].aux_loss > 0 : ref.steps[0].aux_loss == 0);
  reference_free(&ref);
}

static void test_softmax_model_with_tied_embeddings_trains_as_one_process(void **state) {
  (void)state;
  every_layout_trains_as_one_process(&softmax_model);
}

static void test_hybrid_lightning_softmax_model_on_documents_trains_as_one_process(void **state) {
  (void)state;
  every_layout_trains_as_one_process(&hybrid_model);
}

static void test_moh_and_moe_model_with_auxiliary_losses_trains_as_one_process(void **state) {
  (void)state;
  every_layout_trains_as_one_process(&routed_model);
}

// The checkpoint folder of step `step` under run folder `run_dir`.
static void checkpoint_of(char *out, size_t cap, const char *run_dir, int step) {
  snprintf(out, cap, "%s/checkpoints/step_%08d", run_dir, step);
}

// How many tensors of checkpoint `dir` have pieces in more than one shard file.
static int split_tensors(const char *dir) {
  lt_checkpoint ck;
  assert_ok(lt_checkpoint_open(&ck, dir));
  int n = 0;
  for (int i = 0; i < ck.n_pieces; i++) {
    const lt_ckpt_piece *p = &ck.pieces[i];
    bool elsewhere = false;
    for (int j = i + 1; j < ck.n_pieces && lt_checkpoint_first_piece(&ck, i); j++) {
      const lt_ckpt_piece *q = &ck.pieces[j];
      elsewhere |= q->kind == p->kind && strcmp(q->name, p->name) == 0 && q->shard != p->shard;
    }
    n += elsewhere;
  }
  lt_checkpoint_close(&ck);
  return n;
}

// Trains model `m` 2 steps in layout `from` and saves; loads that checkpoint in layout `to` (on
// rank 0 alone for one process) and saves again at once. Every rank reads its own slices from
// whichever files hold them and writes its own: the second checkpoint holds the first's tensors
// bit for bit, and the same step, tokens seen and data position. Returns how many tensors the
// second checkpoint holds split over several files.
static int resave(const model_case *m, const layout *from, const layout *to) {
  static int runs = 0;
  char first[600], second[600], saved[700], written[700];
  snprintf(first, sizeof first, "%s/save-%d", tmp_dir, runs++);
  snprintf(second, sizeof second, "%s/save-%d", tmp_dir, runs++);
  lt_trainer tr;
  make_trainer(&tr, m, from, &world, first);
  for (int s = 0; s < 2; s++) {
    lt_step_metrics metrics;
    assert_ok(lt_trainer_step(&tr, &metrics));
  }
  assert_ok(lt_trainer_save(&tr, 0.0, written, sizeof written));
  lt_trainer_destroy(&tr);
  checkpoint_of(saved, sizeof saved, first, 2);
  const bool alone = to == &one_process;
  if (!alone || world.rank == 0) {
    make_trainer(&tr, m, to, alone ? &single : &world, second);
    assert_ok(lt_trainer_resume(&tr, saved));
    assert_ok(lt_trainer_save(&tr, 0.0, written, sizeof written));
    lt_trainer_destroy(&tr);
  }
  // Rank 0 compares and tells the others, so that all pass or fail this test together.
  char what[160] = "", again[700];
  double worst = 0;
  int split = 0;
  checkpoint_of(again, sizeof again, second, 2);
  if (world.rank == 0) {
    worst = lt_test_checkpoint_difference(saved, again, what, sizeof what);
    split = split_tensors(again);
    printf("%-24s -> %-24s %-41s %s\n", from->name, to->name, m->name,
           worst == 0 ? "every tensor the same" : what);
  }
  bcast(&worst, sizeof worst);
  bcast(what, sizeof what);
  bcast(&split, sizeof split);
  if (!(worst == 0)) fail_msg("%s -> %s: %s differs by %g", from->name, to->name, what, worst);
  return split;
}

static void
test_a_checkpoint_loads_in_another_layout_and_saves_back_the_same_tensors(void **state) {
  (void)state;
  const model_case *models[2] = {&softmax_model, &routed_model};
  for (int i = 0; i < 2; i++) {
    if (world.size == 4) {
      const layout *tp2_pp2 = &layouts_of_4[2];
      // dp4 with ZeRO-1: the ranks' shards of the flat buffer cut tensors between their files.
      assert_true(resave(models[i], tp2_pp2, &dp4_zero) > 0);
      resave(models[i], tp2_pp2, &one_process);
      resave(models[i], &dp2_tp2_zero, &layouts_of_4[0]); // to pp2 x cp2
    } else {
      // ZeRO-1 over dp x cp = 4 ranks to ZeRO-1 over 4 others, the moments cut anew.
      resave(models[i], &layouts_of_8[0], &layouts_of_8[2]); // dp2 x cp2 x tp2 -> dp2 x pp2 x cp2
      resave(models[i], &layouts_of_8[1], &one_process);     // pp2 x cp2 x tp2 -> one process
      // tp replicas, a pipeline copy and ZeRO-1 shards in one checkpoint.
      resave(models[i], &layouts_of_8[3], &layouts_of_8[1]); // dp2 x pp2 x tp2 -> pp2 x cp2 x tp2
    }
  }
}

// The documents model's data does what the test is for: in the windows a step reads, documents
// begin inside a cp = 2 chunk (of 8 tokens) and carry on across a chunk boundary, the two cases
// LASP-2's prefix and ring attention's masks must get right.
static void test_sparse_linear_model_tied_with_recomputation_trains_as_one_process(void **state) {
  (void)state;
  every_layout_trains_as_one_process(&sparse_model);
}

static void test_documents_begin_inside_chunks_and_cross_chunk_boundaries(void **state) {
  (void)state;
  lt_trainer tr;
  make_trainer(&tr, &hybrid_model, &one_process, &single, "unused");
  double loss, aux;
  assert_ok(lt_trainer_forward_backward(&tr, &loss, &aux));
  const int64_t chunk = SEQ_LEN / 4, n = tr.cfg.train.batch * (int64_t)SEQ_LEN;
  int inside = 0, across = 0;
  for (int64_t i = 1; i < n; i++) {
    if (i % SEQ_LEN == 0) continue; // another sequence
    const bool boundary = i % chunk == 0, same = tr.host.doc[i] == tr.host.doc[i - 1];
    inside += !boundary && !same;
    across += boundary && same;
  }
  assert_true(inside > 0 && across > 0);
  lt_trainer_destroy(&tr);
}

int main(int argc, char **argv) {
  if (lt_world_init(&world, &argc, &argv) != LT_OK || !world.mpi ||
      (world.size != 4 && world.size != 8)) {
    fprintf(stderr, "test_layouts must run under mpirun with 4 or 8 ranks\n");
    return 1;
  }
  if (world.rank == 0) {
    snprintf(data_path, sizeof data_path, "%s", lt_test_run_files_get()->data);
    snprintf(tmp_dir, sizeof tmp_dir, "%s", lt_test_run_files_get()->dir);
  }
  bcast(data_path, sizeof data_path);
  bcast(tmp_dir, sizeof tmp_dir);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_documents_begin_inside_chunks_and_cross_chunk_boundaries),
      cmocka_unit_test(test_softmax_model_with_tied_embeddings_trains_as_one_process),
      cmocka_unit_test(test_hybrid_lightning_softmax_model_on_documents_trains_as_one_process),
      cmocka_unit_test(test_moh_and_moe_model_with_auxiliary_losses_trains_as_one_process),
      cmocka_unit_test(test_sparse_linear_model_tied_with_recomputation_trains_as_one_process),
      cmocka_unit_test(test_a_checkpoint_loads_in_another_layout_and_saves_back_the_same_tensors),
  };
  int failures = cmocka_run_group_tests(tests, NULL, NULL);
  MPI_Barrier(MPI_COMM_WORLD); // rank 0's folder goes when it exits: the others are done with it
  lt_world_finalize(&world);
  return failures;
}
