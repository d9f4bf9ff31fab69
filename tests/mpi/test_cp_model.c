// Run under mpirun with 4 ranks: a model whose sequences are split over cp = 2 (two groups of two
// ranks) and cp = 4 computes what one process computes on the whole batch, for every attention
// kind and hybrid stacks of them (LASP-2H): each token's loss, the loss, MoH's balance loss and
// every parameter's gradient (summed over cp here, as the data-parallel all-reduce over dp x cp
// does in training), with and without documents crossing chunk boundaries; and a 20-step AdamW
// run with recomputation follows the single process's losses.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cp_case.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "parallel/context.h"
#include "parallel/pipeline.h"
#include "pipeline_case.h"
#include "testing.h"

static lt_world world;
static lt_mesh meshes[2];

enum { B = 2, T = 64, VOCAB = 37 };

static lt_model_config config_of(const char *attention, const char *ffn, int n_layers) {
  lt_model_config cfg = {.d_model = 32,
                         .n_layers = n_layers,
                         .n_heads = 4,
                         .n_kv_heads = 2,
                         .ffn_dim = 64,
                         .vocab_size = VOCAB,
                         .max_seq_len = T,
                         .rope_theta = 10000,
                         .norm_eps = 1e-5,
                         .init = LT_INIT_LLAMA,
                         .init_std = 0.1}; // sharp enough attention that masks matter
  snprintf(cfg.attention, sizeof cfg.attention, "%s", attention);
  snprintf(cfg.ffn, sizeof cfg.ffn, "%s", ffn);
  // Dropless (capacity is per rank under cp, as in Megatron-LM), with strong auxiliary losses.
  cfg.moe = (lt_moe_config){.n_experts = 4,
                            .top_k = 2,
                            .ffn_dim = 32,
                            .renormalize = true,
                            .aux_loss_coef = 0.5,
                            .z_loss_coef = 0.05};
  // A window that reaches across the chunks of cp = 4 (8 tokens) and cp = 2 (16), and sinks.
  cfg.sparse = (lt_sparse_config){.window = 12, .sinks = 2, .block_size = 64};
  // A strong balance loss, so that its gradient counts in the comparison.
  cfg.moh = (lt_moh_config){.shared_heads = 1, .top_k = 2, .balance_coef = 0.5};
  cfg.linear = (lt_linear_config){.feature_map = LT_FEATURE_ELU1,
                                  .normalization = LT_LINEAR_NORM_DENOMINATOR,
                                  .decay = 1, // retnet
                                  .gate = LT_GATE_SILU,
                                  .chunk_size = 5};
  cfg.lightning = (lt_lightning_config){.block_size = 6,
                                        .feature_map = LT_FEATURE_SILU,
                                        .gate = LT_GATE_LINEAR,
                                        .depth_scaled_decay = true};
  return cfg;
}

// B sequences of T tokens, whole or this rank's zigzag share.
typedef struct token_batch {
  int32_t *tokens, *targets, *pos, *doc;
  lt_batch batch;
  lt_aux_loss aux;
} token_batch;

static void batch_make(token_batch *tb, bool documents, uint64_t seed) {
  const int64_t n = B * T;
  *tb = (token_batch){0};
  int32_t **arrays[4] = {&tb->tokens, &tb->targets, &tb->pos, &tb->doc};
  for (int i = 0; i < 4; i++) *arrays[i] = malloc(sizeof(int32_t) * (size_t)n);
  lt_test_cp_documents(tb->pos, tb->doc, B, T, documents);
  // A learnable stream: mostly x' = (5x + 3) mod V, with one token in eight drawn at random.
  lt_rng rng = lt_rng_seed(seed);
  for (int64_t i = 0; i < n; i++)
    tb->tokens[i] = i % T == 0 || lt_rng_below(&rng, 8) == 0 ? (int32_t)lt_rng_below(&rng, VOCAB)
                                                             : (5 * tb->tokens[i - 1] + 3) % VOCAB;
  // Next-token targets; a document's last token has none (as the loader's documents packing).
  for (int64_t i = 0; i < n; i++) {
    const bool row_end = (i + 1) % T == 0;
    tb->targets[i] = row_end ? (int32_t)lt_rng_below(&rng, VOCAB) : tb->tokens[i + 1];
    if (documents && !row_end && tb->doc[i + 1] != tb->doc[i]) tb->targets[i] = LT_IGNORE_INDEX;
  }
  tb->aux = (lt_aux_loss){.grad_scale = 1.0f};
  tb->batch = (lt_batch){.B = B,
                         .T = T,
                         .tokens = lt_view1(tb->tokens, LT_I32, LT_CPU, n),
                         .targets = lt_view1(tb->targets, LT_I32, LT_CPU, n),
                         .pos = lt_view1(tb->pos, LT_I32, LT_CPU, n),
                         .aux = &tb->aux};
  if (documents) tb->batch.doc = lt_view1(tb->doc, LT_I32, LT_CPU, n);
}

// The whole batch cut to this rank's tokens in place, as the trainer does after loading.
static void batch_keep_local(token_batch *tb, const lt_mesh *mesh) {
  lt_samples samples = {tb->tokens, tb->targets, tb->pos, tb->doc};
  lt_zigzag_keep_local_samples(&samples, B, T, mesh);
  const int64_t local = lt_cp_local_len(T, mesh), n = B * local;
  tb->batch.T = local;
  tb->batch.tokens = lt_view1(tb->tokens, LT_I32, LT_CPU, n);
  tb->batch.targets = lt_view1(tb->targets, LT_I32, LT_CPU, n);
  tb->batch.pos = lt_view1(tb->pos, LT_I32, LT_CPU, n);
  if (tb->batch.doc.data) tb->batch.doc = lt_view1(tb->doc, LT_I32, LT_CPU, n);
}

static void batch_free(token_batch *tb) {
  free(tb->tokens), free(tb->targets), free(tb->pos), free(tb->doc);
}

static double target_count(const token_batch *whole) {
  double count = 0;
  for (int64_t i = 0; i < B * T; i++) count += whole->targets[i] != LT_IGNORE_INDEX;
  return count;
}

typedef struct model_run {
  lt_ctx ctx;
  lt_model model;
} model_run;

static void model_start(model_run *r, const lt_model_config *cfg, const lt_mesh *mesh,
                        bool recompute) {
  assert_ok(lt_ctx_init(&r->ctx, LT_CPU, 1));
  assert_ok(lt_model_create(&r->model, cfg, LT_CPU, mesh));
  assert_ok(lt_params_init(&r->model.params, 77));
  assert_ok(lt_model_plan(&r->model, B, lt_cp_local_len(T, mesh), recompute));
}

static void model_stop(model_run *r) {
  lt_model_destroy(&r->model);
  lt_ctx_destroy(&r->ctx);
}

// Loss and gradients of one batch. With a cp group: this rank's share, the gradients summed over
// the group and the loss over its ranks, so that every rank holds what one process would.
static double loss_and_grads(model_run *r, token_batch *tb, double count, const lt_mesh *mesh) {
  assert_ok(lt_params_zero_grad(&r->model.params));
  double loss;
  tb->aux.sum = 0;
  assert_ok(lt_model_forward(&r->model, &r->ctx, &tb->batch, true, (float)(1.0 / count), &loss));
  assert_ok(lt_model_backward(&r->model, &r->ctx, &tb->batch));
  const lt_group *cp = lt_cp_group(mesh);
  if (!cp) return loss / count;
  lt_params *p = &r->model.params;
  assert_ok(lt_all_reduce_sum(cp, lt_view1(p->grad, LT_F32, LT_CPU, (int64_t)p->numel)));
  float sum = (float)loss;
  assert_ok(lt_all_reduce_sum(cp, lt_view1(&sum, LT_F32, LT_CPU, 1)));
  return sum / count;
}

typedef struct comparison {
  double token_losses, loss, aux, grads;
  char worst_param[96];
} comparison;

static comparison compare_with_one_process(const char *attention, const char *ffn, int n_layers,
                                           const lt_mesh *mesh, bool documents) {
  const lt_model_config cfg = config_of(attention, ffn, n_layers);
  token_batch whole, mine;
  batch_make(&whole, documents, 5);
  batch_make(&mine, documents, 5);
  batch_keep_local(&mine, mesh);
  const double count = target_count(&whole);
  model_run one, split;
  model_start(&one, &cfg, NULL, false);
  model_start(&split, &cfg, mesh, false);
  const double loss_one = loss_and_grads(&one, &whole, count, NULL);
  const double loss_split = loss_and_grads(&split, &mine, count, mesh);
  comparison c = {.loss = fabs(loss_split - loss_one) / loss_one,
                  .aux =
                      fabs(mine.aux.sum - whole.aux.sum) / (whole.aux.sum > 0 ? whole.aux.sum : 1)};
  // Each token's loss, at this rank's tokens.
  float *expect = malloc(sizeof(float) * B * T);
  lt_test_zigzag_take(expect, lt_f32(one.model.head.losses), B, T, 1, mesh);
  c.token_losses =
      lt_test_scaled_diff(lt_f32(split.model.head.losses), expect, B * lt_cp_local_len(T, mesh));
  free(expect);
  const lt_params *p1 = &one.model.params, *p2 = &split.model.params;
  assert_int_equal(p1->count, p2->count);
  for (int i = 0; i < p1->count; i++) {
    const lt_param_info *a = &p1->info[i], *b = &p2->info[i];
    assert_string_equal(a->name, b->name);
    const double d = lt_test_scaled_diff(p2->grad + b->offset, p1->grad + a->offset, a->numel);
    if (!(d <= c.grads)) c.grads = d, snprintf(c.worst_param, sizeof c.worst_param, "%s", a->name);
  }
  model_stop(&one), model_stop(&split);
  batch_free(&whole), batch_free(&mine);
  return c;
}

static void expect_as_one_process(const char *attention, const char *ffn, int n_layers) {
  for (int m = 0; m < 2; m++)
    for (int documents = 0; documents < 2; documents++) {
      const lt_mesh *mesh = &meshes[m];
      const comparison c = compare_with_one_process(attention, ffn, n_layers, mesh, documents);
      const double worst[4] = {
          lt_test_worst_over_ranks(mesh, c.token_losses), lt_test_worst_over_ranks(mesh, c.loss),
          lt_test_worst_over_ranks(mesh, c.aux), lt_test_worst_over_ranks(mesh, c.grads)};
      if (world.rank == 0)
        print_message("%-28s %-6s cp=%d%s: token losses %.1e, loss %.1e, aux %.1e, gradients %.1e "
                      "(rank 0's worst: %s)\n",
                      attention, ffn, mesh->axis[LT_AXIS_CP].size, documents ? ", documents" : "",
                      worst[0], worst[1], worst[2], worst[3], c.worst_param);
      assert_true(worst[0] < 1e-5 && worst[1] < 1e-6 && worst[2] < 1e-5);
      assert_true(worst[3] < 1e-5);
    }
}

static void test_softmax_attention_split_over_cp_equals_one_process(void **state) {
  (void)state;
  expect_as_one_process("softmax", "swiglu", 2);
}

static void test_sparse_attention_split_over_cp_equals_one_process(void **state) {
  (void)state;
  expect_as_one_process("sparse", "swiglu", 2);
}

static void test_moh_attention_split_over_cp_equals_one_process(void **state) {
  (void)state;
  expect_as_one_process("moh", "swiglu", 2);
}

static void test_linear_attention_split_over_cp_equals_one_process(void **state) {
  (void)state;
  expect_as_one_process("linear", "swiglu", 2);
}

static void test_lightning_attention_split_over_cp_equals_one_process(void **state) {
  (void)state;
  expect_as_one_process("lightning", "swiglu", 2);
}

static void test_hybrid_stacks_split_over_cp_equal_one_process(void **state) {
  (void)state;
  expect_as_one_process("lightning*3,softmax", "swiglu", 4);
  expect_as_one_process("linear,sparse,moh,lightning", "swiglu", 4);
}

static void test_moe_feed_forwards_split_over_cp_equal_one_process(void **state) {
  (void)state;
  expect_as_one_process("lightning,softmax", "moe", 2);
}

// Gives batch `tb` (whole, with documents) documents of `length` tokens from each row's start,
// positions restarting at each, and no target across a document's end.
static void documents_of_length(token_batch *tb, int64_t length) {
  for (int64_t i = 0; i < B * T; i++) {
    tb->doc[i] = (int32_t)(i % T / length);
    tb->pos[i] = (int32_t)(i % T % length);
  }
  for (int64_t i = 0; i + 1 < B * T; i++)
    if ((i + 1) % T != 0) // a row's last target stays
      tb->targets[i] = tb->doc[i + 1] == tb->doc[i] ? tb->tokens[i + 1] : LT_IGNORE_INDEX;
}

static int load_token_batch(void *state, int64_t m, lt_batch *batch) {
  token_batch **batches = state;
  *batch = batches[m]->batch;
  return LT_OK;
}

// A pipeline of two stages over cp = 2 (a pp2 x cp2 mesh of the four ranks) runs four
// micro-batches whose documents alternate between two layouts: a, documents of 40 tokens (one
// crosses the middle chunk boundary and runs on through the next chunk: LASP-2 carries its state
// there, and every ring step has keys to see), and b, each chunk of 16 a document of its own (no
// state carried, every ring step but a rank's own skipped). The first stage keeps two micro-batches
// in flight (1F1B), so b's forward runs between a's forward and a's backward: what ring attention
// and LASP-2 derive from a micro-batch's documents must be its own again in its backward. Every
// stage's gradients, summed over cp, against the whole model in one process.
static void test_micro_batches_in_flight_keep_their_own_documents(void **state) {
  (void)state;
  lt_mesh mesh;
  const lt_parallel_config layout = {.dp = 1, .pp = 2, .cp = 2, .tp = 1, .timeout_s = 60};
  assert_ok(lt_mesh_create(&mesh, &world, &layout));
  const lt_model_config cfg = config_of("linear,sparse,moh,lightning", "swiglu", 4);
  enum { MICRO = 4 };
  token_batch whole[MICRO], mine[MICRO];
  token_batch *batches[MICRO];
  double count = 0;
  for (int m = 0; m < MICRO; m++) {
    batch_make(&whole[m], true, 5 + (uint64_t)m);
    batch_make(&mine[m], true, 5 + (uint64_t)m);
    const int64_t length = m % 2 ? T / 4 : 40;
    documents_of_length(&whole[m], length), documents_of_length(&mine[m], length);
    batch_keep_local(&mine[m], &mesh);
    batches[m] = &mine[m];
    count += target_count(&whole[m]);
  }
  model_run one, stage;
  model_start(&one, &cfg, NULL, false);
  model_start(&stage, &cfg, &mesh, false);
  assert_ok(lt_params_zero_grad(&one.model.params));
  for (int m = 0; m < MICRO; m++) {
    double loss;
    assert_ok(
        lt_model_forward(&one.model, &one.ctx, &whole[m].batch, true, (float)(1.0 / count), &loss));
    assert_ok(lt_model_backward(&one.model, &one.ctx, &whole[m].batch));
  }
  lt_batch batch;
  const lt_micro_batches micro = {
      .count = MICRO, .load = load_token_batch, .state = batches, .batch = &batch};
  double loss, aux;
  lt_params *p = &stage.model.params;
  assert_ok(lt_params_zero_grad(p));
  assert_ok(lt_pipeline_train_step(&stage.model, &stage.ctx, &micro, (float)(1.0 / count), &loss,
                                   &aux, NULL));
  assert_ok(lt_all_reduce_sum(&mesh.axis[LT_AXIS_CP],
                              lt_view1(p->grad, LT_F32, LT_CPU, (int64_t)p->numel)));
  const double worst =
      lt_test_worst_over_ranks(&mesh, lt_test_pp_max_diff(&stage.model, &one.model, true));
  if (world.rank == 0)
    print_message("pp2 x cp2, micro-batches of two document layouts in flight: gradients %.1e\n",
                  worst);
  assert_true(worst < 1e-5);
  model_stop(&one), model_stop(&stage);
  for (int m = 0; m < MICRO; m++) batch_free(&whole[m]), batch_free(&mine[m]);
  lt_mesh_destroy(&mesh);
}

// 20 AdamW steps on fresh batches, on one process and with cp = 4 (recomputing activations): the
// same losses step by step. The runs sum in different orders, and AdamW's normalised update turns
// rounding-sized gradient differences into larger weight differences, so they drift apart slowly
// (by step 20: 3e-5 of the loss on earlier machines, 1.2e-4 on an AVX-512 EPYC, where OpenBLAS
// runs other kernels, 1.5e-4 there in the sanitizer build; the bound is 1e-3). The gradient norms
// part faster (1.1e-3 at most there; bound 1e-2). Without routers (MoH, MoE): a top-k choice at a
// near tie flips under such drift (an expert at step 9, a head at step 4 when tried), and the runs
// then part by more; one step of each is compared above.
static void test_twenty_steps_follow_the_single_process_losses(void **state) {
  (void)state;
  const lt_mesh *mesh = &meshes[1];
  const lt_model_config cfg = config_of("softmax,sparse,linear,lightning", "swiglu", 4);
  lt_config defaults;
  assert_ok(lt_config_defaults(&defaults));
  lt_train_config train = defaults.train;
  train.lr = 1e-2, train.min_lr = 1e-2, train.warmup = 0, train.steps = 20;
  model_run one, split;
  model_start(&one, &cfg, NULL, false);
  model_start(&split, &cfg, mesh, true);
  lt_optimizer opt_one, opt_split;
  assert_ok(lt_optimizer_create(&opt_one, &one.model.params, &train));
  assert_ok(lt_optimizer_create(&opt_split, &split.model.params, &train));
  double first = 0, last = 0, worst = 0;
  for (int step = 0; step < 20; step++) {
    token_batch whole, mine;
    batch_make(&whole, step % 2 == 1, 100 + (uint64_t)step);
    batch_make(&mine, step % 2 == 1, 100 + (uint64_t)step);
    batch_keep_local(&mine, mesh);
    const double count = target_count(&whole);
    const double loss_one = loss_and_grads(&one, &whole, count, NULL);
    const double loss_split = loss_and_grads(&split, &mine, count, mesh);
    const double d = fabs(loss_split - loss_one) / loss_one;
    if (d > worst) worst = d;
    if (step == 0) first = loss_one;
    last = loss_one;
    double norm_one, norm_split;
    assert_ok(lt_optimizer_step(&opt_one, &one.ctx, train.lr, &norm_one));
    assert_ok(lt_optimizer_step(&opt_split, &split.ctx, train.lr, &norm_split));
    assert_true(fabs(norm_split - norm_one) <= 1e-2 * norm_one);
    batch_free(&whole), batch_free(&mine);
  }
  worst = lt_test_worst_over_ranks(mesh, worst);
  if (world.rank == 0)
    print_message("20 steps, cp=4: loss %.4f -> %.4f, worst step difference %.1e\n", first, last,
                  worst);
  assert_true(last < 0.8 * first); // it learns
  assert_true(worst < 1e-3);
  lt_optimizer_destroy(&opt_one), lt_optimizer_destroy(&opt_split);
  model_stop(&one), model_stop(&split);
}

int main(int argc, char **argv) {
  lt_test_cp_setup(&world, meshes, &argc, &argv);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_softmax_attention_split_over_cp_equals_one_process),
      cmocka_unit_test(test_sparse_attention_split_over_cp_equals_one_process),
      cmocka_unit_test(test_moh_attention_split_over_cp_equals_one_process),
      cmocka_unit_test(test_linear_attention_split_over_cp_equals_one_process),
      cmocka_unit_test(test_lightning_attention_split_over_cp_equals_one_process),
      cmocka_unit_test(test_hybrid_stacks_split_over_cp_equal_one_process),
      cmocka_unit_test(test_moe_feed_forwards_split_over_cp_equal_one_process),
      cmocka_unit_test(test_micro_batches_in_flight_keep_their_own_documents),
      cmocka_unit_test(test_twenty_steps_follow_the_single_process_losses),
  };
  int failures = cmocka_run_group_tests(tests, NULL, NULL);
  lt_test_cp_teardown(&world, meshes);
  return failures;
}
