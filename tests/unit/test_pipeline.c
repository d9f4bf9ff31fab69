// The data pipeline beyond plain windows: document packing (ids, positions, ignored boundary
// targets, and attention that really stays inside a document), the validation split, the
// sharding of a global batch over data-parallel ranks, the sparse document index, and damaged
// token data caught by its checksums.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/dataset.h"
#include "data/doc_index.h"
#include "data/loader.h"
#include "fixture.h"
#include "model/model.h"
#include "testing.h"

// A dataset of documents with the given lengths; token i of the stream is (i * 7) % 97 + 1, so
// any token tells where it came from.
static void write_documents(const char *path, const int64_t *lengths, int n_docs) {
  lt_dataset_writer w;
  assert_ok(lt_dataset_writer_open(&w, path, "test", 100, 0));
  int64_t at = 0;
  for (int d = 0; d < n_docs; d++) {
    int32_t *ids = malloc((size_t)lengths[d] * sizeof *ids);
    for (int64_t i = 0; i < lengths[d]; i++, at++) ids[i] = (int32_t)((at * 7) % 97 + 1);
    assert_ok(lt_dataset_writer_add(&w, ids, lengths[d]));
    free(ids);
  }
  assert_ok(lt_dataset_writer_commit(&w));
}

static const char *dataset_path(const char *name) {
  static char paths[8][512];
  static int used = 0;
  char *path = paths[used++ % 8];
  snprintf(path, 512, "%s/%s", lt_test_tmpdir(), name);
  return path;
}

// --- documents packing ---

static void test_documents_packing_gives_ids_positions_and_ignored_boundary_targets(void **state) {
  (void)state;
  // Documents [0, 3), [3, 10), [10, 11), [11, 11) (empty), [11, 40).
  const int64_t lengths[] = {3, 7, 1, 0, 29};
  const char *path = dataset_path("docs.h5");
  write_documents(path, lengths, 5);
  lt_dataset ds;
  assert_ok(lt_dataset_open(&ds, path));
  enum { T = 16 };
  lt_loader loader;
  assert_ok(lt_loader_create(&loader, &ds,
                             &(lt_loader_spec){.seq_len = T, .packing = LT_PACK_DOCUMENTS}));
  int32_t tokens[T], targets[T], pos[T], doc[T];
  // Find the sample that reads window 0 (tokens [0, 17)).
  int64_t sample = 0;
  while (lt_loader_window_of(&loader, sample) != 0) sample++;
  loader.next_sample = sample;
  assert_ok(lt_loader_next(&loader, 1, 0, 1, (lt_samples){tokens, targets, pos, doc}));
  const int32_t want_doc[T] = {0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 2, 3, 3, 3, 3, 3};
  const int32_t want_pos[T] = {0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 0, 0, 1, 2, 3, 4};
  assert_memory_equal(doc, want_doc, sizeof doc);
  assert_memory_equal(pos, want_pos, sizeof pos);
  for (int t = 0; t < T; t++) {
    assert_int_equal(tokens[t], (t * 7) % 97 + 1);
    bool last_of_document = t == 2 || t == 9 || t == 10;
    assert_int_equal(targets[t], last_of_document ? LT_IGNORE_INDEX : ((t + 1) * 7) % 97 + 1);
  }
  lt_loader_destroy(&loader);
  lt_dataset_close(&ds);
}

static void test_stream_packing_ignores_documents(void **state) {
  (void)state;
  const int64_t lengths[] = {3, 7, 30};
  const char *path = dataset_path("stream.h5");
  write_documents(path, lengths, 3);
  lt_dataset ds;
  assert_ok(lt_dataset_open(&ds, path));
  enum { T = 8 };
  lt_loader loader;
  assert_ok(lt_loader_create(&loader, &ds, &(lt_loader_spec){.seq_len = T}));
  int32_t tokens[T], targets[T], pos[T];
  assert_ok(lt_loader_next(&loader, 1, 0, 1, (lt_samples){tokens, targets, pos, NULL}));
  for (int t = 0; t < T; t++) {
    assert_int_equal(pos[t], t);
    assert_true(targets[t] != LT_IGNORE_INDEX);
  }
  lt_loader_destroy(&loader);
  lt_dataset_close(&ds);
}

// The point of document packing: each document in a packed row is computed exactly as if it
// were alone in its own row (up to the rounding of a different tiling).
static void test_packed_documents_compute_as_if_each_were_alone(void **state) {
  (void)state;
  enum { T = 24, A = 9 }; // document a is tokens [0, A), document b the rest
  lt_model_config cfg = {.d_model = 32,
                         .n_layers = 2,
                         .n_heads = 4,
                         .n_kv_heads = 2,
                         .ffn_dim = 64,
                         .vocab_size = 50,
                         .max_seq_len = T,
                         .rope_theta = 10000,
                         .norm_eps = 1e-5,
                         .init = LT_INIT_SCALED,
                         .init_std = 0.1};
  lt_ctx ctx;
  assert_ok(lt_ctx_init(&ctx, LT_CPU, 2));
  lt_model model;
  assert_ok(lt_model_create(&model, &cfg, LT_CPU, NULL));
  assert_ok(lt_params_init(&model.params, 5));
  int32_t tokens[T], targets[T], pos[T], doc[T];
  for (int t = 0; t < T; t++) {
    tokens[t] = (t * 13 + 5) % 50;
    targets[t] = t == A - 1 ? LT_IGNORE_INDEX : (t * 11 + 3) % 50;
    doc[t] = t >= A;
    pos[t] = t < A ? t : t - A;
  }
  lt_batch packed = {.B = 1,
                     .T = T,
                     .tokens = lt_view1(tokens, LT_I32, LT_CPU, T),
                     .targets = lt_view1(targets, LT_I32, LT_CPU, T),
                     .pos = lt_view1(pos, LT_I32, LT_CPU, T),
                     .doc = lt_view1(doc, LT_I32, LT_CPU, T)};
  assert_ok(lt_model_plan(&model, 1, T, false));
  double sum;
  assert_ok(lt_model_forward(&model, &ctx, &packed, false, 0, &sum));
  float packed_losses[T];
  memcpy(packed_losses, lt_f32(model.head.losses), sizeof packed_losses);
  const int starts[2] = {0, A}, lengths[2] = {A, T - A};
  for (int d = 0; d < 2; d++) {
    const int n = lengths[d], s = starts[d];
    lt_batch alone = {.B = 1,
                      .T = n,
                      .tokens = lt_view1(tokens + s, LT_I32, LT_CPU, n),
                      .targets = lt_view1(targets + s, LT_I32, LT_CPU, n),
                      .pos = lt_view1(pos + s, LT_I32, LT_CPU, n)};
    assert_ok(lt_model_plan(&model, 1, n, false));
    assert_ok(lt_model_forward(&model, &ctx, &alone, false, 0, &sum));
    double worst = lt_test_max_rel_diff(packed_losses + s, lt_f32(model.head.losses), n, 1e-3);
    if (worst > 1e-5) fail_msg("document %d: per-token losses differ by %g", d, worst);
  }
  // Without the document ids the second document would see the first: the losses change.
  packed.doc = (lt_tensor){0};
  assert_ok(lt_model_plan(&model, 1, T, false));
  assert_ok(lt_model_forward(&model, &ctx, &packed, false, 0, &sum));
  assert_true(lt_test_max_rel_diff(packed_losses + A, lt_f32(model.head.losses) + A, T - A, 1e-3) >
              1e-3);
  lt_model_destroy(&model);
  lt_ctx_destroy(&ctx);
}

// --- the sparse document index ---

static void test_doc_index_finds_every_start_across_sparse_blocks(void **state) {
  (void)state;
  enum { N_DOCS = 3000 };
  int64_t lengths[N_DOCS], starts[N_DOCS + 1] = {0};
  for (int d = 0; d < N_DOCS; d++) {
    lengths[d] = d % 7 == 3 ? 0 : 1 + (d * 5) % 9; // some empty documents
    starts[d + 1] = starts[d] + lengths[d];
  }
  const char *path = dataset_path("many.h5");
  write_documents(path, lengths, N_DOCS);
  lt_dataset ds;
  assert_ok(lt_dataset_open(&ds, path));
  lt_doc_index ix;
  assert_ok(lt_doc_index_create(&ix, &ds));
  assert_int_equal(ix.n_sparse, (N_DOCS + 1 + LT_DOC_INDEX_STRIDE - 1) / LT_DOC_INDEX_STRIDE);
  const uint64_t ranges[][2] = {{0, 40},
                                {5000, 5100},
                                {starts[1024] - 1, starts[1024] + 30},
                                {starts[N_DOCS] - 50, starts[N_DOCS]}};
  for (int r = 0; r < 4; r++) {
    uint64_t found[256];
    int64_t n;
    assert_ok(lt_doc_index_starts(&ix, ranges[r][0], ranges[r][1], found, &n));
    int64_t expected = 0;
    for (int d = 0; d < N_DOCS; d++) {
      uint64_t s = (uint64_t)starts[d];
      if (s <= ranges[r][0] || s >= ranges[r][1] || (d > 0 && starts[d - 1] == starts[d])) continue;
      if (expected >= n || found[expected] != s)
        fail_msg("range %d: start %llu missing", r, (unsigned long long)s);
      expected++;
    }
    assert_int_equal(n, expected);
  }
  lt_doc_index_destroy(&ix);
  lt_dataset_close(&ds);
}

// --- validation split ---

enum { T8 = 8, WINDOWS = 200 };

static void open_windows(lt_dataset *ds) {
  const int64_t lengths[] = {WINDOWS * T8 + 1};
  static char path[512];
  if (!path[0]) {
    snprintf(path, sizeof path, "%s", dataset_path("windows.h5"));
    write_documents(path, lengths, 1);
  }
  assert_ok(lt_dataset_open(ds, path));
}

// The windows samples [0, n) read.
static void windows_of(lt_loader_role role, double held_out, uint64_t seed, int64_t n, int64_t *out,
                       int64_t *n_windows) {
  lt_dataset ds;
  open_windows(&ds);
  lt_loader loader;
  lt_loader_spec spec = {.seq_len = T8, .seed = seed, .held_out = held_out, .role = role};
  assert_ok(lt_loader_create(&loader, &ds, &spec));
  for (int64_t i = 0; i < n; i++) out[i] = lt_loader_window_of(&loader, i);
  *n_windows = loader.n_windows;
  lt_loader_destroy(&loader);
  lt_dataset_close(&ds);
}

static void test_validation_windows_are_held_out_of_training(void **state) {
  (void)state;
  int64_t train[3 * WINDOWS], val[2 * WINDOWS], n_train, n_val;
  windows_of(LT_LOADER_TRAIN, 0.1, 3, 3 * WINDOWS, train, &n_train);
  windows_of(LT_LOADER_EVAL, 0.1, 3, 2 * WINDOWS, val, &n_val);
  assert_int_equal(n_val, 20);
  assert_int_equal(n_train, WINDOWS - 20);
  int seen[WINDOWS] = {0};
  for (int64_t i = 0; i < n_val; i++) seen[val[i]] |= 1;
  for (int64_t i = 0; i < 3 * WINDOWS; i++) seen[train[i]] |= 2;
  for (int w = 0; w < WINDOWS; w++)
    if (seen[w] != 1 && seen[w] != 2) fail_msg("window %d: seen as %d", w, seen[w]);
  // Evaluation reads the same windows in the same order every pass.
  assert_memory_equal(val, val + n_val, (size_t)n_val * sizeof *val);
}

static void test_validation_split_follows_the_seed(void **state) {
  (void)state;
  int64_t a[20], b[20], c[20], n;
  windows_of(LT_LOADER_EVAL, 0.1, 3, 20, a, &n);
  windows_of(LT_LOADER_EVAL, 0.1, 3, 20, b, &n);
  windows_of(LT_LOADER_EVAL, 0.1, 4, 20, c, &n);
  assert_memory_equal(a, b, sizeof a);
  assert_memory_not_equal(a, c, sizeof a);
}

static void test_validation_fraction_that_leaves_no_training_is_a_data_error(void **state) {
  (void)state;
  const int64_t lengths[] = {T8 + 1}; // one window: holding any out leaves none
  const char *path = dataset_path("one.h5");
  write_documents(path, lengths, 1);
  lt_dataset ds;
  assert_ok(lt_dataset_open(&ds, path));
  lt_loader loader;
  lt_loader_spec spec = {.seq_len = T8, .held_out = 0.5};
  EXPECT_ERROR(lt_loader_create(&loader, &ds, &spec), LT_ERR_DATA, path, "data.val_fraction");
  lt_dataset_close(&ds);
}

// --- data-parallel sharding ---

static void test_ranks_read_disjoint_shares_that_make_up_the_single_process_batch(void **state) {
  (void)state;
  enum { B = 8, STEPS = 3 };
  int32_t whole[STEPS][B * T8], t[B * T8], p[B * T8];
  lt_dataset ds;
  open_windows(&ds);
  lt_loader_spec spec = {.seq_len = T8, .seed = 9};
  lt_loader one;
  assert_ok(lt_loader_create(&one, &ds, &spec));
  for (int s = 0; s < STEPS; s++)
    assert_ok(lt_loader_next(&one, B, 0, 1, (lt_samples){whole[s], t, p, NULL}));
  const int worlds[] = {2, 4, 8};
  for (int w = 0; w < 3; w++) {
    const int world = worlds[w], local = B / world;
    lt_loader ranks[8];
    for (int r = 0; r < world; r++) assert_ok(lt_loader_create(&ranks[r], &ds, &spec));
    for (int s = 0; s < STEPS; s++)
      for (int r = 0; r < world; r++) {
        int32_t share[B * T8];
        assert_ok(lt_loader_next(&ranks[r], B, r, world, (lt_samples){share, t, p, NULL}));
        // Rank r's share is samples [r * local, (r + 1) * local) of the step's global batch.
        if (memcmp(share, whole[s] + r * local * T8, (size_t)(local * T8) * sizeof *share) != 0)
          fail_msg("world %d, step %d: rank %d read another share", world, s, r);
      }
    for (int r = 0; r < world; r++) {
      assert_int_equal(ranks[r].next_sample, one.next_sample); // the position is global
      lt_loader_destroy(&ranks[r]);
    }
  }
  lt_loader_destroy(&one);
  lt_dataset_close(&ds);
}

// --- damaged token data ---

static void test_flipped_token_bytes_fail_the_fletcher32_check(void **state) {
  (void)state;
  const int64_t lengths[] = {5000};
  const char *path = dataset_path("flip.h5");
  write_documents(path, lengths, 1);
  lt_test_flip_byte(path, lt_fixture_data_offset(path, "tokens") + 1000);
  lt_dataset ds;
  assert_ok(lt_dataset_open(&ds, path)); // the metadata is intact
  int32_t tokens[100];
  EXPECT_ERROR(lt_dataset_read(&ds, 400, 100, tokens), LT_ERR_DATA, path, "/tokens",
               "checksum mismatch", "prepare it again");
  lt_dataset_close(&ds);
}

static void test_flipped_document_offsets_fail_their_check(void **state) {
  (void)state;
  const int64_t lengths[] = {100, 200, 300};
  const char *path = dataset_path("flip-offsets.h5");
  write_documents(path, lengths, 3);
  lt_test_flip_byte(path, lt_fixture_data_offset(path, "doc_offsets") + 9);
  lt_dataset ds;
  EXPECT_ERROR(lt_dataset_open(&ds, path), LT_ERR_DATA, path, "/doc_offsets", "prepare it again");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_documents_packing_gives_ids_positions_and_ignored_boundary_targets),
      cmocka_unit_test(test_stream_packing_ignores_documents),
      cmocka_unit_test(test_packed_documents_compute_as_if_each_were_alone),
      cmocka_unit_test(test_doc_index_finds_every_start_across_sparse_blocks),
      cmocka_unit_test(test_validation_windows_are_held_out_of_training),
      cmocka_unit_test(test_validation_split_follows_the_seed),
      cmocka_unit_test(test_validation_fraction_that_leaves_no_training_is_a_data_error),
      cmocka_unit_test(test_ranks_read_disjoint_shares_that_make_up_the_single_process_batch),
      cmocka_unit_test(test_flipped_token_bytes_fail_the_fletcher32_check),
      cmocka_unit_test(test_flipped_document_offsets_fail_their_check),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
