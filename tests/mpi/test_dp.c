// Run under mpirun with 2 and with 4 ranks: data parallelism computes what one process computes.
// Every rank also builds the single-process trainer on the whole batch (a world of one, no MPI)
// and compares: the loss, its own reduced gradients against the reference's (all of them, or its
// ZeRO-1 shard), the gradient norm, and 20 optimizer steps. The model mixes softmax and lightning
// attention with a dense and a MoE feed-forward; buckets are a few KiB, so there are many, and
// with 2 ranks each rank accumulates 2 micro-batches.
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runs.h"
#include "testing.h"
#include "train/trainer.h"

static lt_world world, single = {.rank = 0, .size = 1};
static char data_path[512];

enum { STEPS = 20 };

static const char *config_text = "model:\n"
                                 "  d_model: 32\n"
                                 "  n_layers: 2\n"
                                 "  n_heads: 4\n"
                                 "  n_kv_heads: 2\n"
                                 "  ffn_dim: 64\n"
                                 "  vocab_size: 320\n"
                                 "  max_seq_len: 32\n"
                                 "  attention: softmax,lightning\n"
                                 "  ffn: moe,swiglu\n"
                                 "  moe: {n_experts: 4, top_k: 2, ffn_dim: 32}\n"
                                 "train:\n"
                                 "  seq_len: 32\n"
                                 "  batch: 8\n"
                                 "  micro_batch: 2\n"
                                 "  steps: 20\n"
                                 "  warmup: 3\n"
                                 "  lr: 3e-3\n"
                                 "  min_lr: 3e-4\n"
                                 "  clip_norm: 0.5\n"
                                 "  eval_batches: 3\n" // not a multiple of the ranks
                                 "data:\n"
                                 "  path: %s\n"
                                 "  packing: documents\n"
                                 "  val_fraction: 0.1\n"
                                 "parallel:\n"
                                 "  dp: %d\n"
                                 "  zero: %s\n"
                                 "  bucket_mb: 0.004\n"
                                 "  timeout_s: 30\n" // ranks that part ways after a failure
                                 "run:\n"
                                 "  threads: 1\n";

static void make_trainer(lt_trainer *tr, lt_world *w, bool zero) {
  char yaml[2048];
  snprintf(yaml, sizeof yaml, config_text, data_path, w->size, zero ? "true" : "false");
  lt_config cfg;
  assert_ok(lt_config_load_string(&cfg, yaml, "test_dp.yaml", 0, NULL));
  assert_ok(lt_trainer_create(tr, &cfg, w));
  assert_ok(lt_params_init(&tr->model.params, 7));
}

// The part of the gradient buffer that holds the sum over the ranks: all, or the ZeRO-1 shard.
static void reduced_range(const lt_trainer *tr, size_t *lo, size_t *hi) {
  const lt_params *p = &tr->model.params;
  *lo = tr->dp.zero ? p->shard_start : 0;
  *hi = tr->dp.zero ? p->shard_start + p->shard_numel : p->numel;
}

// Each parameter's reduced gradient against the reference's, relative to the reference's
// largest element: fp32 sums in another order differ by a few ulps of the largest terms.
static void assert_gradients_match(const lt_trainer *tr, const lt_trainer *ref) {
  const lt_params *p = &tr->model.params, *r = &ref->model.params;
  size_t lo, hi, compared = 0;
  reduced_range(tr, &lo, &hi);
  for (int i = 0; i < p->count; i++) {
    const lt_param_info *info = &p->info[i];
    assert_int_equal(info->offset, r->info[i].offset);
    const float *whole = r->grad + info->offset;
    const double scale = lt_test_max_abs(whole, info->numel);
    double worst = 0;
    for (int64_t j = 0; j < info->numel; j++) {
      const size_t at = info->offset + (size_t)j;
      if (at < lo || at >= hi) continue;
      double diff = fabs((double)p->grad[at] - (double)whole[j]) / (scale > 0 ? scale : 1);
      if (!(diff <= worst)) worst = diff;
      compared++;
    }
    if (!(worst <= 2e-6)) // measured: 1.2e-7
      fail_msg("rank %d: %s's gradient differs by %g of its scale %g", world.rank, info->name,
               worst, scale);
  }
  assert_true(compared > 0);
}

static void test_plain_gradients(bool zero) {
  lt_trainer tr, ref;
  make_trainer(&tr, &world, zero);
  make_trainer(&ref, &single, false);
  double loss, aux, ref_loss, ref_aux;
  assert_ok(lt_trainer_forward_backward(&tr, &loss, &aux));
  assert_ok(lt_trainer_forward_backward(&ref, &ref_loss, &ref_aux));
  if (!(fabs(loss - ref_loss) <= 1e-6 * ref_loss))
    fail_msg("rank %d: loss %.17g, single process %.17g", world.rank, loss, ref_loss);
  if (!(fabs(aux - ref_aux) <= 1e-6 * ref_aux && aux > 0))
    fail_msg("rank %d: aux loss %.17g, single process %.17g", world.rank, aux, ref_aux);
  assert_gradients_match(&tr, &ref);
  double norm, ref_norm;
  assert_ok(lt_grad_norm(&tr.ctx, &tr.model.params, &norm));
  assert_ok(lt_grad_norm(&ref.ctx, &ref.model.params, &ref_norm));
  if (!(fabs(norm - ref_norm) <= 1e-5 * ref_norm))
    fail_msg("rank %d: gradient norm %.17g, single process %.17g", world.rank, norm, ref_norm);
  // The norm is one number for the whole job: every rank holds the same bits.
  double max = norm, min = norm;
  MPI_Allreduce(MPI_IN_PLACE, &max, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &min, 1, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
  assert_true(max == min);
  lt_trainer_destroy(&ref);
  lt_trainer_destroy(&tr);
}

static void test_data_parallel_loss_and_gradients_equal_the_single_process(void **state) {
  (void)state;
  test_plain_gradients(false);
}

static void test_zero1_shard_gradients_equal_the_single_process(void **state) {
  (void)state;
  test_plain_gradients(true);
}

static void test_zero1_keeps_adamw_state_for_its_shard_only(void **state) {
  (void)state;
  lt_trainer tr;
  make_trainer(&tr, &world, true);
  const lt_params *p = &tr.model.params;
  assert_true(tr.dp.zero);
  assert_int_equal(p->numel % ((size_t)64 * world.size), 0);
  assert_int_equal(p->shard_numel * (size_t)world.size, p->numel);
  assert_int_equal(p->state_numel, p->shard_numel);
  assert_int_equal(p->state_start, (size_t)world.rank * p->shard_numel);
  // Some parameter straddles a shard boundary (the case checkpoints must cut into slices).
  bool straddles = false;
  for (int i = 0; i < p->count; i++) {
    const size_t start = p->info[i].offset, end = start + (size_t)p->info[i].numel;
    straddles |= start / p->shard_numel != (end - 1) / p->shard_numel;
  }
  assert_true(straddles);
  lt_trainer_destroy(&tr);
}

static void test_buckets_tile_the_buffer_from_the_last_parameter(void **state) {
  (void)state;
  lt_trainer tr;
  make_trainer(&tr, &world, false);
  const lt_dp *dp = &tr.dp;
  assert_true(dp->n_buckets > 4);
  assert_int_equal(dp->buckets[0].end, tr.model.params.numel);
  assert_int_equal(dp->buckets[dp->n_buckets - 1].start, 0);
  for (int b = 1; b < dp->n_buckets; b++) {
    assert_int_equal(dp->buckets[b].end, dp->buckets[b - 1].start);
    assert_true(dp->buckets[b].first_param < dp->buckets[b - 1].first_param);
  }
  lt_trainer_destroy(&tr);
}

// Records how many buckets were under way each time the model reported final gradients.
typedef struct hook_log {
  lt_dp *dp;
  int calls, started[64];
} hook_log;

static int record_hook(void *arg, int first) {
  hook_log *log = arg;
  int rc = lt_dp_grads_ready(log->dp, first);
  if (log->calls < 64) log->started[log->calls++] = log->dp->n_started;
  return rc;
}

static void test_buckets_start_while_backward_runs(void **state) {
  (void)state;
  lt_trainer tr;
  make_trainer(&tr, &world, false);
  assert_ok(lt_source_next(tr.data, tr.cfg.train.batch, world.rank, world.size, tr.host));
  tr.batch.tokens = lt_view1(tr.host.tokens, LT_I32, LT_CPU, tr.micro_batch * tr.seq_len);
  tr.batch.targets = lt_view1(tr.host.targets, LT_I32, LT_CPU, tr.micro_batch * tr.seq_len);
  tr.batch.pos = lt_view1(tr.host.pos, LT_I32, LT_CPU, tr.micro_batch * tr.seq_len);
  tr.batch.doc = lt_view1(tr.host.doc, LT_I32, LT_CPU, tr.micro_batch * tr.seq_len);
  hook_log log = {.dp = &tr.dp};
  tr.model.grads_ready = record_hook, tr.model.grads_ready_arg = &log;
  double loss;
  assert_ok(lt_params_zero_grad(&tr.model.params));
  assert_ok(lt_model_forward(&tr.model, &tr.ctx, &tr.batch, true, 1e-3f, &loss));
  assert_ok(lt_model_backward(&tr.model, &tr.ctx, &tr.batch));
  // Called after the head, after each block and after the embedding: buckets went out in
  // between, not all at the end; the last call started the rest.
  assert_int_equal(log.calls, tr.model.cfg.n_layers + 2);
  assert_true(log.started[0] > 0);
  for (int c = 1; c < log.calls; c++) assert_true(log.started[c] >= log.started[c - 1]);
  assert_true(log.started[log.calls - 2] < tr.dp.n_buckets);
  assert_int_equal(log.started[log.calls - 1], tr.dp.n_buckets);
  assert_ok(lt_dp_finish(&tr.dp));
  assert_int_equal(tr.dp.n_started, 0);
  lt_trainer_destroy(&tr);
}

// STEPS optimizer steps; the metrics of each into out.
static void train(lt_trainer *tr, lt_step_metrics *out) {
  for (int s = 0; s < STEPS; s++) assert_ok(lt_trainer_step(tr, &out[s]));
}

static void test_20_steps_match_the_single_process(void **state) {
  (void)state;
  lt_step_metrics plain[STEPS], zero[STEPS], ref[STEPS];
  lt_trainer tr, tz, single_tr;
  make_trainer(&tr, &world, false);
  make_trainer(&tz, &world, true);
  make_trainer(&single_tr, &single, false);
  train(&tr, plain);
  train(&tz, zero);
  train(&single_tr, ref);
  for (int s = 0; s < STEPS; s++) {
    // Other summation orders change the last bits; 20 AdamW steps carry that to about 1e-8.
    if (!(fabs(plain[s].loss - ref[s].loss) <= 1e-6 * ref[s].loss) ||
        !(fabs(plain[s].grad_norm - ref[s].grad_norm) <= 1e-5 * ref[s].grad_norm))
      fail_msg("rank %d step %d: loss %.9g norm %.9g, single process %.9g %.9g", world.rank, s + 1,
               plain[s].loss, plain[s].grad_norm, ref[s].loss, ref[s].grad_norm);
    // ZeRO-1 equals plain data parallelism: bit for bit with two ranks, where each sum is one
    // addition whatever the algorithm; with more, MPI's all-reduce and reduce-scatter may add
    // the ranks in different orders.
    if (world.size == 2) {
      assert_true(zero[s].loss == plain[s].loss);
      assert_true(zero[s].grad_norm == plain[s].grad_norm);
    } else if (!(fabs(zero[s].loss - plain[s].loss) <= 1e-6 * plain[s].loss)) {
      fail_msg("rank %d step %d: ZeRO-1 loss %.9g, plain %.9g", world.rank, s + 1, zero[s].loss,
               plain[s].loss);
    }
  }
  assert_true(ref[STEPS - 1].loss < 0.8 * ref[0].loss); // it learned something
  const lt_params *p = &tr.model.params, *z = &tz.model.params, *r = &single_tr.model.params;
  if (world.size == 2) assert_memory_equal(p->master, z->master, p->numel * sizeof(float));
  // The single process pads its buffer less: compare up to the end of the last parameter.
  const lt_param_info *last = &r->info[r->count - 1];
  const int64_t used = (int64_t)last->offset + last->numel;
  double scale = lt_test_max_abs(r->master, used);
  double worst = lt_test_max_rel_diff(p->master, r->master, used, scale);
  if (!(worst <= 1e-5)) fail_msg("rank %d: weights differ by %g of their scale", world.rank, worst);
  // The moments this rank keeps under ZeRO-1 are its shard of the plain run's.
  worst = lt_test_max_rel_diff(z->adam_m, p->adam_m + z->state_start, (int64_t)z->state_numel,
                               lt_test_max_abs(p->adam_m, (int64_t)p->numel));
  assert_true(world.size == 2 ? worst == 0 : worst <= 1e-5);
  lt_trainer_destroy(&single_tr);
  lt_trainer_destroy(&tz);
  lt_trainer_destroy(&tr);
}

static void test_validation_loss_equals_the_single_process(void **state) {
  (void)state;
  lt_trainer tr, ref;
  make_trainer(&tr, &world, false);
  make_trainer(&ref, &single, false);
  double loss, ref_loss;
  // Three micro-batches over 2 or 4 ranks: some ranks evaluate more than others, or none.
  assert_ok(lt_trainer_eval(&tr, &loss));
  assert_ok(lt_trainer_eval(&ref, &ref_loss));
  if (!(fabs(loss - ref_loss) <= 1e-9 * ref_loss))
    fail_msg("rank %d: validation loss %.17g, single process %.17g", world.rank, loss, ref_loss);
  lt_trainer_destroy(&ref);
  lt_trainer_destroy(&tr);
}

static void test_a_nan_on_one_rank_stops_every_rank(void **state) {
  (void)state;
  lt_trainer tr;
  make_trainer(&tr, &world, true);
  double loss, aux, norm;
  assert_ok(lt_trainer_forward_backward(&tr, &loss, &aux));
  lt_params *p = &tr.model.params;
  if (world.rank == world.size - 1) p->grad[p->shard_start + 3] = NAN; // in its own shard only
  float before = p->master[p->shard_start + 3];
  EXPECT_ERROR(lt_optimizer_step(&tr.opt, &tr.ctx, 1e-3, &norm), LT_ERR_NUMERIC,
               "the gradient norm is nan at step 1");
  assert_true(p->master[p->shard_start + 3] == before);
  lt_trainer_destroy(&tr);
}

int main(int argc, char **argv) {
  if (lt_world_init(&world, &argc, &argv) != LT_OK || !world.mpi) {
    fprintf(stderr, "test_dp must run under mpirun\n");
    return 1;
  }
  // One dataset for every rank, in rank 0's temporary folder.
  if (world.rank == 0) snprintf(data_path, sizeof data_path, "%s", lt_test_run_files_get()->data);
  MPI_Bcast(data_path, sizeof data_path, MPI_CHAR, 0, MPI_COMM_WORLD);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_data_parallel_loss_and_gradients_equal_the_single_process),
      cmocka_unit_test(test_zero1_shard_gradients_equal_the_single_process),
      cmocka_unit_test(test_zero1_keeps_adamw_state_for_its_shard_only),
      cmocka_unit_test(test_buckets_tile_the_buffer_from_the_last_parameter),
      cmocka_unit_test(test_buckets_start_while_backward_runs),
      cmocka_unit_test(test_20_steps_match_the_single_process),
      cmocka_unit_test(test_validation_loss_equals_the_single_process),
      cmocka_unit_test(test_a_nan_on_one_rank_stops_every_rank),
  };
  int failures = cmocka_run_group_tests(tests, NULL, NULL);
  MPI_Barrier(MPI_COMM_WORLD); // rank 0's folder goes when it exits: the others are done with it
  lt_world_finalize(&world);
  return failures;
}
