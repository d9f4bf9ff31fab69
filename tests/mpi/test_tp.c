// Tensor parallelism over every rank mpirun starts (ctest runs it at 2 and at 4): for every
// attention kind and both feed-forwards, the tp model starts from exactly the single-process
// model's numbers (its shards are slices) and gives its loss, auxiliary loss, logits and every
// gradient (as the matching slice); 20 optimizer steps give the same losses and gradient norms;
// a checkpoint written at tp loads at tp = 1 and the other way round.
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "layers/attention/linear.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "parallel/tp.h"
#include "testing.h"
#include "train/checkpoint.h"

// fp32, the same math summed in another order: observed below 2e-6 (tp = 2 and 4).
#define TOL 2e-5

static lt_world world;
static lt_mesh mesh;
static lt_ctx ctx;

enum { B = 2, T = 16, VOCAB = 64 };

// Divisible by 2 and 4: 8 query heads, 4 key/value heads (grouped), 64 hidden units, 4 experts of
// 32 with a shared one, a vocabulary of 64.
static lt_model_config base_config(const char *attention, const char *ffn) {
  lt_config cfg;
  lt_config_defaults(&cfg);
  lt_model_config m = cfg.model;
  snprintf(m.attention, sizeof m.attention, "%s", attention);
  snprintf(m.ffn, sizeof m.ffn, "%s", ffn);
  m.d_model = 32, m.n_layers = 2, m.n_heads = 8, m.n_kv_heads = 4, m.head_dim = 8;
  m.ffn_dim = 64, m.vocab_size = VOCAB, m.max_seq_len = T;
  m.moe = (lt_moe_config){.n_experts = 4,
                          .top_k = 2,
                          .ffn_dim = 32,
                          .n_shared_experts = 1,
                          .capacity_factor = 1.25,
                          .aux_loss_coef = 0.01,
                          .z_loss_coef = 0.001,
                          .renormalize = true};
  m.sparse = (lt_sparse_config){.window = 5, .sinks = 2, .block_size = 4};
  m.moh = (lt_moh_config){.shared_heads = 2, .top_k = 3, .balance_coef = 0.05};
  m.init_std = 0.1; // larger than the default, so that routers do not sit near their ties
  return m;
}

// A batch of B x T tokens the same on every rank, some targets ignored, and with `documents` two
// documents per row (positions restart at each).
typedef struct test_batch {
  int32_t tokens[B * T], targets[B * T], pos[B * T], doc[B * T];
  lt_aux_loss aux;
  lt_batch batch;
} test_batch;

static void make_batch(test_batch *tb, uint64_t seed, bool documents) {
  lt_rng rng = lt_rng_seed(seed);
  for (int i = 0; i < B * T; i++) {
    const int t = i % T, start = documents && t >= 7 ? 7 : 0;
    tb->tokens[i] = (int32_t)lt_rng_below(&rng, VOCAB);
    tb->targets[i] = i % 11 == 3 ? LT_IGNORE_INDEX : (int32_t)lt_rng_below(&rng, VOCAB);
    tb->pos[i] = t - start;
    tb->doc[i] = i / T * 2 + (t >= start && start > 0);
  }
  tb->aux = (lt_aux_loss){.grad_scale = 1.0f};
  tb->batch = (lt_batch){.B = B,
                         .T = T,
                         .tokens = lt_view1(tb->tokens, LT_I32, LT_CPU, B * T),
                         .targets = lt_view1(tb->targets, LT_I32, LT_CPU, B * T),
                         .pos = lt_view1(tb->pos, LT_I32, LT_CPU, B * T),
                         .aux = &tb->aux};
  if (documents) tb->batch.doc = lt_view1(tb->doc, LT_I32, LT_CPU, B * T);
}

static double target_count(const test_batch *tb) {
  double n = 0;
  for (int i = 0; i < B * T; i++) n += tb->targets[i] != LT_IGNORE_INDEX;
  return n;
}

// The tensor-parallel model and the single-process one, from the same seed.
typedef struct model_pair {
  lt_model tp, whole;
} model_pair;

static void create_pair(model_pair *p, const lt_model_config *cfg, bool recompute) {
  assert_ok(lt_model_create(&p->tp, cfg, LT_CPU, &mesh));
  assert_ok(lt_model_create(&p->whole, cfg, LT_CPU, NULL));
  assert_ok(lt_params_init(&p->tp.params, 7));
  assert_ok(lt_params_init(&p->whole.params, 7));
  assert_ok(lt_model_plan(&p->tp, B, T, recompute));
  assert_ok(lt_model_plan(&p->whole, B, T, recompute));
}

static void destroy_pair(model_pair *p) {
  lt_model_destroy(&p->tp);
  lt_model_destroy(&p->whole);
}

// The slice of the whole tensor `whole` (buffer `from`) that shard `part` holds, into out.
static void slice_of(const lt_param_info *part, const lt_param_info *whole, const float *from,
                     float *out) {
  const int dim = part->spec.shard_length ? part->spec.shard_dim : 0;
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < dim; d++) outer *= part->shape[d];
  for (int d = dim + 1; d < part->ndim; d++) inner *= part->shape[d];
  const int64_t length = part->shape[dim], all = whole->logical_shape[dim];
  for (int64_t o = 0; o < outer; o++)
    memcpy(out + o * length * inner, from + (o * all + part->slice_start[dim]) * inner,
           sizeof(float) * (size_t)(length * inner));
}

// The largest difference between a parameter buffer of the tp model and the matching slices of
// the single-process model's, relative to each whole tensor's largest magnitude; `split` counts
// the parameters split over tp.
static double worst_slice_diff(const lt_params *tp, const float *tp_buf, const lt_params *whole,
                               const float *whole_buf, int *split) {
  double worst = 0.0;
  *split = 0;
  for (int i = 0; i < tp->count; i++) {
    const lt_param_info *part = &tp->info[i];
    const lt_param_info *full = lt_params_find(whole, part->name);
    if (!full) fail_msg("%s is not in the single-process model", part->name);
    for (int d = 0; d < part->ndim; d++)
      if (part->logical_shape[d] != full->logical_shape[d])
        fail_msg("%s: logical shapes differ", part->name);
    *split += part->spec.shard_length > 0;
    float *expect = malloc(sizeof(float) * (size_t)part->numel);
    slice_of(part, full, whole_buf + full->offset, expect);
    const double scale = lt_test_max_abs(whole_buf + full->offset, full->numel);
    for (int64_t j = 0; j < part->numel; j++) {
      const double diff = fabs((double)tp_buf[part->offset + j] - expect[j]) / (scale + 1e-30);
      if (!(diff <= worst)) worst = diff;
    }
    free(expect);
  }
  return worst;
}

typedef struct step_result {
  double loss, aux;
} step_result;

static step_result forward_backward(lt_model *model, test_batch *tb) {
  assert_ok(lt_params_zero_grad(&model->params));
  tb->aux.sum = 0.0;
  double loss_sum;
  assert_ok(
      lt_model_forward(model, &ctx, &tb->batch, true, (float)(1.0 / target_count(tb)), &loss_sum));
  step_result r = {loss_sum / target_count(tb), tb->aux.sum};
  assert_ok(lt_model_backward(model, &ctx, &tb->batch));
  return r;
}

// The whole check of one model: initial weights, loss, auxiliary loss, every gradient, logits.
static void expect_same_as_single_process(const lt_model_config *cfg, bool documents,
                                          bool recompute) {
  model_pair p;
  create_pair(&p, cfg, recompute);
  int split;
  const double init = worst_slice_diff(&p.tp.params, p.tp.params.master, &p.whole.params,
                                       p.whole.params.master, &split);
  assert_true(init == 0.0); // the shards hold exactly the single-process numbers
  assert_true(split > 0);
  test_batch tb;
  make_batch(&tb, 11, documents);
  const step_result a = forward_backward(&p.tp, &tb), b = forward_backward(&p.whole, &tb);
  const double grads = worst_slice_diff(&p.tp.params, p.tp.params.grad, &p.whole.params,
                                        p.whole.params.grad, &split);
  if (world.rank == 0)
    printf("  %s / %s%s%s: loss %.6f (diff %.1e), aux %.6f (diff %.1e), worst gradient %.1e\n",
           cfg->attention, cfg->ffn, cfg->tie_embeddings ? ", tied" : "",
           documents ? ", documents" : "", b.loss, fabs(a.loss - b.loss), b.aux,
           fabs(a.aux - b.aux), grads);
  assert_true(fabs(a.loss - b.loss) <= TOL * fabs(b.loss));
  assert_true(fabs(a.aux - b.aux) <= TOL * fabs(b.aux) + 1e-12);
  assert_true(grads < TOL);
  // The full logits, each rank's columns gathered.
  float *logits_tp = malloc(sizeof(float) * B * T * VOCAB);
  float *logits = malloc(sizeof(float) * B * T * VOCAB);
  assert_ok(
      lt_model_logits(&p.tp, &ctx, &tb.batch, lt_view2(logits_tp, LT_F32, LT_CPU, B * T, VOCAB)));
  assert_ok(
      lt_model_logits(&p.whole, &ctx, &tb.batch, lt_view2(logits, LT_F32, LT_CPU, B * T, VOCAB)));
  assert_true(lt_test_max_rel_diff(logits_tp, logits, B * T * VOCAB,
                                   lt_test_max_abs(logits, B * T * VOCAB)) < TOL);
  free(logits_tp), free(logits);
  destroy_pair(&p);
}

static void test_softmax_attention_and_swiglu_equal_the_single_process(void **state) {
  (void)state;
  lt_model_config cfg = base_config("softmax", "swiglu");
  expect_same_as_single_process(&cfg, false, false);
}

static void test_tied_embeddings_equal_the_single_process(void **state) {
  (void)state;
  lt_model_config cfg = base_config("softmax", "swiglu");
  cfg.tie_embeddings = true;
  expect_same_as_single_process(&cfg, false, false);
}

static void test_sparse_attention_with_documents_equals_the_single_process(void **state) {
  (void)state;
  lt_model_config cfg = base_config("sparse", "swiglu");
  expect_same_as_single_process(&cfg, true, false);
}

static void test_moh_attention_and_its_balance_loss_equal_the_single_process(void **state) {
  (void)state;
  lt_model_config cfg = base_config("moh", "swiglu");
  expect_same_as_single_process(&cfg, false, false);
}

static void test_linear_attention_equals_the_single_process(void **state) {
  (void)state;
  lt_model_config cfg = base_config("linear", "swiglu");
  cfg.linear = (lt_linear_config){.feature_map = LT_FEATURE_ELU1,
                                  .normalization = LT_LINEAR_NORM_DENOMINATOR,
                                  .decay = LT_LINEAR_DECAY_RETNET, // each head its own decay
                                  .gate = LT_GATE_SIGMOID,
                                  .chunk_size = 4};
  expect_same_as_single_process(&cfg, true, false);
}

static void
test_linear_attention_with_rmsnorm_over_split_heads_equals_the_single_process(void **state) {
  (void)state;
  lt_model_config cfg = base_config("linear", "swiglu");
  cfg.linear = (lt_linear_config){.feature_map = LT_FEATURE_SILU,
                                  .normalization = LT_LINEAR_NORM_RMS,
                                  .decay = LT_LINEAR_DECAY_ALIBI,
                                  .gate = LT_GATE_SILU,
                                  .chunk_size = 8};
  expect_same_as_single_process(&cfg, false, false);
}

static void test_lightning_attention_and_moe_equal_the_single_process(void **state) {
  (void)state;
  lt_model_config cfg = base_config("lightning", "moe");
  cfg.lightning = (lt_lightning_config){.block_size = 4,
                                        .feature_map = LT_FEATURE_SILU,
                                        .gate = LT_GATE_LINEAR,
                                        .depth_scaled_decay = true};
  expect_same_as_single_process(&cfg, true, false);
}

static void test_softmax_attention_and_moe_equal_the_single_process(void **state) {
  (void)state;
  lt_model_config cfg = base_config("softmax", "moe");
  cfg.tie_embeddings = true;
  expect_same_as_single_process(&cfg, false, false);
}

static void test_hybrid_stack_with_recomputation_equals_the_single_process(void **state) {
  (void)state;
  lt_model_config cfg = base_config("lightning,moh", "moe,swiglu");
  cfg.lightning = (lt_lightning_config){.block_size = 8,
                                        .feature_map = LT_FEATURE_SILU,
                                        .gate = LT_GATE_SIGMOID,
                                        .depth_scaled_decay = true};
  expect_same_as_single_process(&cfg, true, true);
}

// --- training: 20 AdamW steps with clipping, then checkpoints across layouts ---

static void train_pair(model_pair *p, lt_optimizer opt[2], int steps) {
  lt_train_config t = {.lr = 3e-3,
                       .beta1 = 0.9,
                       .beta2 = 0.95,
                       .eps = 1e-8,
                       .weight_decay = 0.1,
                       .clip_norm = 1.0,
                       .freeze = ""};
  assert_ok(lt_optimizer_create(&opt[0], &p->tp.params, &t));
  assert_ok(lt_optimizer_create(&opt[1], &p->whole.params, &t));
  int clipped = 0;
  double worst_loss = 0.0, worst_norm = 0.0;
  for (int step = 0; step < steps; step++) {
    test_batch tb;
    make_batch(&tb, 100 + (uint64_t)step, step % 2 == 1);
    const step_result a = forward_backward(&p->tp, &tb), b = forward_backward(&p->whole, &tb);
    double norm_tp, norm;
    assert_ok(lt_optimizer_step(&opt[0], &ctx, t.lr, &norm_tp));
    assert_ok(lt_optimizer_step(&opt[1], &ctx, t.lr, &norm));
    clipped += norm > t.clip_norm;
    if (world.rank == 0 && (step == 0 || step == steps - 1))
      printf("  step %2d: loss %.6f vs %.6f, grad norm %.6f vs %.6f\n", step + 1, a.loss, b.loss,
             norm_tp, norm);
    assert_true(fabs(a.loss - b.loss) <= 1e-4 * b.loss);
    assert_true(fabs(a.aux - b.aux) <= 1e-4 * b.aux);
    assert_true(fabs(norm_tp - norm) <= 1e-4 * norm);
    worst_loss = fmax(worst_loss, fabs(a.loss - b.loss) / b.loss);
    worst_norm = fmax(worst_norm, fabs(norm_tp - norm) / norm);
  }
  if (world.rank == 0)
    printf("  %d steps: worst relative difference of the loss %.1e, of the gradient norm %.1e\n",
           steps, worst_loss, worst_norm);
  assert_true(clipped > 0); // the gradient norm mattered: its sum over ranks was tested
}

static void test_twenty_steps_give_the_single_process_loss_curve(void **state) {
  (void)state;
  lt_model_config cfg = base_config("moh,lightning", "swiglu,moe");
  model_pair p;
  create_pair(&p, &cfg, false);
  lt_optimizer opt[2];
  train_pair(&p, opt, 20);
  int split;
  const double weights = worst_slice_diff(&p.tp.params, p.tp.params.master, &p.whole.params,
                                          p.whole.params.master, &split);
  if (world.rank == 0) printf("  weights after 20 steps: worst difference %.1e\n", weights);
  assert_true(weights < 1e-4);
  lt_optimizer_destroy(&opt[0]), lt_optimizer_destroy(&opt[1]);
  destroy_pair(&p);
}

// A folder every rank sees: the first rank's, broadcast.
static void shared_tmpdir(char *dir, size_t cap) {
  memset(dir, 0, cap);
  if (world.rank == 0) snprintf(dir, cap, "%s", lt_test_tmpdir());
  MPI_Bcast(dir, (int)cap, MPI_CHAR, 0, MPI_COMM_WORLD);
}

// Every rank writes its shard (the tp model's slices, the copied tensors by the first tp rank
// only); the first rank commits once all are written.
static void save_tp_checkpoint(const lt_params *params, const char *root) {
  lt_checkpoint_writer w;
  if (world.rank == 0) assert_ok(lt_checkpoint_begin(&w, root, 3, 0, world.size));
  MPI_Barrier(MPI_COMM_WORLD); // the first rank made the folder
  if (world.rank != 0) assert_ok(lt_checkpoint_begin(&w, root, 3, world.rank, world.size));
  assert_ok(lt_checkpoint_write_params(&w, params, true));
  if (world.rank != 0) assert_ok(lt_checkpoint_finish_shard(&w));
  MPI_Barrier(MPI_COMM_WORLD);
  lt_checkpoint_meta meta = {.step = 3};
  if (world.rank == 0) assert_ok(lt_checkpoint_commit(&w, &meta));
  MPI_Barrier(MPI_COMM_WORLD);
}

// Loads `dir` into params and compares weights and AdamW moments with `source`, where the
// parameters of `target` must hold exactly the slices of (or the whole of) `source`'s.
static void expect_loaded_exactly(lt_params *target, const lt_params *source, const char *dir) {
  lt_checkpoint ck;
  assert_ok(lt_checkpoint_open(&ck, dir));
  assert_ok(lt_checkpoint_read_params(&ck, target, true));
  lt_checkpoint_close(&ck);
  float *const target_bufs[3] = {target->master, target->adam_m, target->adam_v};
  float *const source_bufs[3] = {source->master, source->adam_m, source->adam_v};
  for (int k = 0; k < 3; k++) {
    int split;
    const lt_params *sharded = target->mesh ? target : source;
    const lt_params *whole = target->mesh ? source : target;
    const float *sharded_buf = target->mesh ? target_bufs[k] : source_bufs[k];
    const float *whole_buf = target->mesh ? source_bufs[k] : target_bufs[k];
    assert_true(worst_slice_diff(sharded, sharded_buf, whole, whole_buf, &split) == 0.0);
  }
}

static void test_checkpoint_written_at_tp_loads_at_tp_1_and_back(void **state) {
  (void)state;
  lt_model_config cfg = base_config("softmax,linear", "moe,swiglu");
  cfg.tie_embeddings = true;
  model_pair p;
  create_pair(&p, &cfg, false);
  lt_optimizer opt[2];
  train_pair(&p, opt, 3); // weights and moments that are not their initial values
  char dir[256], root[300], ckpt[320];
  shared_tmpdir(dir, sizeof dir);
  // tp -> tp = 1: a fresh single-process model reads the tp shards and holds their numbers.
  snprintf(root, sizeof root, "%s/from_tp", dir);
  save_tp_checkpoint(&p.tp.params, root);
  snprintf(ckpt, sizeof ckpt, "%s/step_00000003", root);
  lt_model whole;
  assert_ok(lt_model_create(&whole, &cfg, LT_CPU, NULL));
  expect_loaded_exactly(&whole.params, &p.tp.params, ckpt);
  // tp = 1 -> tp: a fresh tp model reads the single-process checkpoint as its slices.
  snprintf(root, sizeof root, "%s/from_single", dir);
  if (world.rank == 0) {
    lt_checkpoint_writer w;
    lt_checkpoint_meta meta = {.step = 3};
    assert_ok(lt_checkpoint_begin(&w, root, 3, 0, 1));
    assert_ok(lt_checkpoint_write_params(&w, &p.whole.params, true));
    assert_ok(lt_checkpoint_commit(&w, &meta));
  }
  MPI_Barrier(MPI_COMM_WORLD);
  snprintf(ckpt, sizeof ckpt, "%s/step_00000003", root);
  lt_model split;
  assert_ok(lt_model_create(&split, &cfg, LT_CPU, &mesh));
  expect_loaded_exactly(&split.params, &p.whole.params, ckpt);
  lt_model_destroy(&split), lt_model_destroy(&whole);
  lt_optimizer_destroy(&opt[0]), lt_optimizer_destroy(&opt[1]);
  destroy_pair(&p);
}

static void test_sizes_tp_cannot_split_are_config_errors(void **state) {
  (void)state;
  lt_model model;
  lt_model_config cfg = base_config("softmax", "swiglu");
  cfg.n_kv_heads = world.size / 2; // 1 at tp 2, 2 at tp 4: fewer than the ranks
  EXPECT_ERROR(lt_model_create(&model, &cfg, LT_CPU, &mesh), LT_ERR_CONFIG, "model.n_kv_heads",
               "parallel.tp");
  lt_model_destroy(&model);
  cfg = base_config("softmax", "swiglu");
  cfg.vocab_size = VOCAB + 1;
  EXPECT_ERROR(lt_model_create(&model, &cfg, LT_CPU, &mesh), LT_ERR_CONFIG, "model.vocab_size",
               "parallel.tp");
  lt_model_destroy(&model);
}

int main(int argc, char **argv) {
  if (lt_world_init(&world, &argc, &argv) != LT_OK || !world.mpi || world.size < 2) {
    fprintf(stderr, "test_tp must run under mpirun with 2 or 4 ranks\n");
    return 1;
  }
  lt_parallel_config parallel = {.dp = 1, .pp = 1, .cp = 1, .tp = world.size};
  if (lt_mesh_create(&mesh, &world, &parallel) != LT_OK) {
    fprintf(stderr, "%s\n", lt_error_message());
    return 1;
  }
  lt_ctx_init(&ctx, LT_CPU, 1);
  if (world.rank == 0) printf("tensor parallel over %d ranks\n", world.size);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_softmax_attention_and_swiglu_equal_the_single_process),
      cmocka_unit_test(test_tied_embeddings_equal_the_single_process),
      cmocka_unit_test(test_sparse_attention_with_documents_equals_the_single_process),
      cmocka_unit_test(test_moh_attention_and_its_balance_loss_equal_the_single_process),
      cmocka_unit_test(test_linear_attention_equals_the_single_process),
      cmocka_unit_test(
          test_linear_attention_with_rmsnorm_over_split_heads_equals_the_single_process),
      cmocka_unit_test(test_lightning_attention_and_moe_equal_the_single_process),
      cmocka_unit_test(test_softmax_attention_and_moe_equal_the_single_process),
      cmocka_unit_test(test_hybrid_stack_with_recomputation_equals_the_single_process),
      cmocka_unit_test(test_twenty_steps_give_the_single_process_loss_curve),
      cmocka_unit_test(test_checkpoint_written_at_tp_loads_at_tp_1_and_back),
      cmocka_unit_test(test_sizes_tp_cannot_split_are_config_errors),
  };
  int failures = cmocka_run_group_tests(tests, NULL, NULL);
  lt_mesh_destroy(&mesh);
  lt_world_finalize(&world);
  return failures;
}
