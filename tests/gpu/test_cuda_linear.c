// The linear attention kernels against the CPU reference (itself checked against the token-by-
// token recurrence in tests/unit/): per-head decay on and off, head widths 64 and 128 and the
// denominator's 65, grouped-query heads, ragged documents, documents that start at a chunk's edge
// or last one token, prefix states in and out of their document, sequences that are no multiple
// of the 64-token chunk, sequences long enough to be cut into segments, the LASP-2 state and its
// backward, and the elementwise ends (feature maps, the output normalisations and gates, the
// split-row statistics). Every forward and backward case runs on every GPU path: the chunk-
// parallel kernels (linear_chunk.cu, LT_LINEAR_KERNELS=chunks where they take the widths) with
// their products on mma.sync (linear_chunk_mma.cu), their state pass (linear_chunk_state.cu) in
// the segments it chooses and in those the case asks for (LT_LINEAR_SEGMENTS), and the scan
// (linear_scan.cu, LT_LINEAR_KERNELS=scan).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "gpu_testing.h"

enum { MAX_HEADS = 16 };

typedef struct lin_case {
  int64_t B, T, block;
  int hq, hkv, d, e;
  float log_decay[MAX_HEADS];
  bool decay, docs, prefix;
  float *q, *k, *v, *dout, *prefix_state; // bf16-exact activations; prefix_state f32
  int32_t *doc, *prefix_doc;
} lin_case;

typedef struct lin_options {
  bool decay;
  int max_doc_len; // documents of 1 .. max_doc_len tokens; 0: none
  int doc_len;     // documents of exactly doc_len tokens (instead of max_doc_len)
  bool prefix;
  int64_t block;   // the CPU's block (the GPU's chunk is its own)
  bool slow_decay; // decays close to 1 (a deep lightning layer's), instead of strong ones
  int segments;    // the segments the chunk kernels' segmented path asks for; 0: 3
} lin_options;

static int64_t doc_length(lt_rng *rng, lin_options opt, int64_t t) {
  if (opt.doc_len) return opt.doc_len;
  return opt.max_doc_len ? 1 + (int64_t)lt_rng_below(rng, opt.max_doc_len) : t;
}

// Documents: runs of random (or doc_len) lengths, ids counting up from a different start per row.
// The prefix state belongs to the first document in even rows and to another document in odd
// rows.
static void make_case(lin_case *c, int64_t B, int64_t T, int hq, int hkv, int d, int e,
                      lin_options opt) {
  *c = (lin_case){.B = B,
                  .T = T,
                  .block = opt.block ? opt.block : 64,
                  .hq = hq,
                  .hkv = hkv,
                  .d = d,
                  .e = e,
                  .decay = opt.decay,
                  .docs = opt.max_doc_len > 0 || opt.doc_len > 0,
                  .prefix = opt.prefix};
  for (int h = 0; h < hq; h++)
    c->log_decay[h] =
        opt.slow_decay ? -6e-7f * powf(100.0f, (float)h) : -0.7f * powf(0.25f, (float)h);
  c->q = lt_gpu_random(B * T * hq * d, 0.5f, true);
  c->k = lt_gpu_random(B * T * hkv * d, 0.5f, true);
  c->v = lt_gpu_random(B * T * hkv * e, 1.0f, true);
  c->dout = lt_gpu_random(B * T * hq * e, 1.0f, true);
  c->prefix_state = lt_gpu_random(B * hq * d * e, 2.0f, false);
  c->doc = malloc(sizeof(int32_t) * B * T);
  c->prefix_doc = malloc(sizeof(int32_t) * B);
  lt_rng rng = lt_rng_seed(lt_gpu_next_seed());
  for (int64_t b = 0; b < B; b++) {
    int32_t id = (int32_t)(10 + 1000 * b);
    int64_t left = doc_length(&rng, opt, T);
    for (int64_t t = 0; t < T; t++, left--) {
      if (left == 0) id++, left = doc_length(&rng, opt, T);
      c->doc[b * T + t] = id;
    }
    c->prefix_doc[b] = c->doc[b * T] - (int32_t)(b % 2);
  }
}

static void free_case(lin_case *c) {
  free(c->q), free(c->k), free(c->v), free(c->dout), free(c->prefix_state);
  free(c->doc), free(c->prefix_doc);
}

#define QSHAPE(c)   4, LT_SHAPE((c)->B, (c)->T, (c)->hq, (c)->d)
#define KSHAPE(c)   4, LT_SHAPE((c)->B, (c)->T, (c)->hkv, (c)->d)
#define VSHAPE(c)   4, LT_SHAPE((c)->B, (c)->T, (c)->hkv, (c)->e)
#define OSHAPE(c)   4, LT_SHAPE((c)->B, (c)->T, (c)->hq, (c)->e)
#define SSHAPE(c)   4, LT_SHAPE((c)->B, (c)->hq, (c)->d, (c)->e)
#define H(x, shape) lt_view(x, LT_F32, LT_CPU, shape)

static lt_linear_attn_spec cpu_spec(lin_case *c) {
  lt_linear_attn_spec s = {.block = c->block};
  if (c->decay) s.log_decay = lt_view1(c->log_decay, LT_F32, LT_CPU, c->hq);
  if (c->docs) {
    s.doc = lt_view2(c->doc, LT_I32, LT_CPU, c->B, c->T);
    if (c->prefix) s.prefix_doc = lt_view1(c->prefix_doc, LT_I32, LT_CPU, c->B);
  }
  return s;
}

static lt_linear_attn_spec gpu_spec(lin_case *c) {
  lt_linear_attn_spec s = {.block = c->block};
  if (c->decay) s.log_decay = lt_gpu_upload(c->log_decay, LT_F32, 1, LT_SHAPE(c->hq));
  if (c->docs) {
    s.doc = lt_gpu_upload_i32(c->doc, 2, LT_SHAPE(c->B, c->T));
    if (c->prefix) s.prefix_doc = lt_gpu_upload_i32(c->prefix_doc, 1, LT_SHAPE(c->B));
  }
  return s;
}

typedef struct lin_result {
  float *o, *dq, *dk, *dv, *dprefix, *state; // host f32
} lin_result;

static void free_result(lin_result *r) {
  free(r->o), free(r->dq), free(r->dk), free(r->dv), free(r->dprefix), free(r->state);
}

static int64_t numel_q(const lin_case *c) {
  return c->B * c->T * c->hq * c->d;
}
static int64_t numel_k(const lin_case *c) {
  return c->B * c->T * c->hkv * c->d;
}
static int64_t numel_v(const lin_case *c) {
  return c->B * c->T * c->hkv * c->e;
}
static int64_t numel_o(const lin_case *c) {
  return c->B * c->T * c->hq * c->e;
}
static int64_t numel_s(const lin_case *c) {
  return c->B * c->hq * c->d * c->e;
}

// Forward, backward (from zero gradients) and the chunk's state, on the CPU.
static lin_result run_cpu(lin_case *c) {
  lin_result r = {malloc(4 * numel_o(c)), calloc(numel_q(c), 4),  calloc(numel_k(c), 4),
                  calloc(numel_v(c), 4),  malloc(4 * numel_s(c)), malloc(4 * numel_s(c))};
  lt_linear_attn_spec s = cpu_spec(c);
  const lt_tensor prefix = c->prefix ? H(c->prefix_state, SSHAPE(c)) : (lt_tensor){0};
  assert_ok(lt_linear_attn_fwd(&lt_test_cpu, H(r.o, OSHAPE(c)), H(c->q, QSHAPE(c)),
                               H(c->k, KSHAPE(c)), H(c->v, VSHAPE(c)), prefix, &s));
  assert_ok(lt_linear_attn_bwd(&lt_test_cpu, H(r.dq, QSHAPE(c)), H(r.dk, KSHAPE(c)),
                               H(r.dv, VSHAPE(c)), H(r.dprefix, SSHAPE(c)), H(c->dout, OSHAPE(c)),
                               H(c->q, QSHAPE(c)), H(c->k, KSHAPE(c)), H(c->v, VSHAPE(c)), prefix,
                               &s));
  lt_linear_attn_spec alone = s;
  alone.prefix_doc = (lt_tensor){0};
  assert_ok(lt_linear_attn_state(&lt_test_cpu, H(r.state, SSHAPE(c)), H(c->k, KSHAPE(c)),
                                 H(c->v, VSHAPE(c)), &alone));
  return r;
}

// The same on the GPU, with gradients of `grad_dtype`; the outputs start poisoned.
static lin_result run_gpu(lin_case *c, lt_dtype grad_dtype) {
  lt_linear_attn_spec s = gpu_spec(c);
  lt_tensor q = lt_gpu_upload(c->q, LT_BF16, QSHAPE(c)),
            k = lt_gpu_upload(c->k, LT_BF16, KSHAPE(c));
  lt_tensor v = lt_gpu_upload(c->v, LT_BF16, VSHAPE(c));
  lt_tensor dout = lt_gpu_upload(c->dout, LT_BF16, OSHAPE(c));
  lt_tensor o = lt_gpu_upload(c->dout, LT_BF16, OSHAPE(c));
  lt_tensor prefix = c->prefix ? lt_gpu_upload(c->prefix_state, LT_F32, SSHAPE(c)) : (lt_tensor){0};
  lt_tensor dprefix = lt_gpu_upload(c->prefix_state, LT_F32, SSHAPE(c));
  lt_tensor state = lt_gpu_upload(c->prefix_state, LT_F32, SSHAPE(c));
  lt_tensor dq = lt_gpu_upload(c->q, grad_dtype, QSHAPE(c)),
            dk = lt_gpu_upload(c->k, grad_dtype, KSHAPE(c));
  lt_tensor dv = lt_gpu_upload(c->v, grad_dtype, VSHAPE(c));
  assert_ok(lt_zero(&lt_test_gpu, dq));
  assert_ok(lt_zero(&lt_test_gpu, dk));
  assert_ok(lt_zero(&lt_test_gpu, dv));
  assert_ok(lt_linear_attn_fwd(&lt_test_gpu, o, q, k, v, prefix, &s));
  assert_ok(lt_linear_attn_bwd(&lt_test_gpu, dq, dk, dv, dprefix, dout, q, k, v, prefix, &s));
  lt_linear_attn_spec alone = s;
  alone.prefix_doc = (lt_tensor){0};
  assert_ok(lt_linear_attn_state(&lt_test_gpu, state, k, v, &alone));
  lin_result r = {lt_gpu_fetch(o),  lt_gpu_fetch(dq),      lt_gpu_fetch(dk),
                  lt_gpu_fetch(dv), lt_gpu_fetch(dprefix), lt_gpu_fetch(state)};
  lt_gpu_free_all();
  return r;
}

// Sets the environment variable `name` to `value` (NULL: unset) and returns the setting it
// replaced, for restore_env.
static char *set_env(const char *name, const char *value) {
  const char *old = getenv(name);
  char *saved = old ? strdup(old) : NULL;
  if (value)
    setenv(name, value, 1);
  else
    unsetenv(name);
  return saved;
}

static void restore_env(const char *name, char *saved) {
  if (saved)
    setenv(name, saved, 1);
  else
    unsetenv(name);
  free(saved);
}

// The GPU paths of every case: where the chunk kernels take its widths, they (LT_LINEAR_KERNELS=
// chunks, so that a case they do not take fails) with the state pass in the segments it chooses,
// then again in the segments the case asks for (LT_LINEAR_SEGMENTS); else the default choice;
// then the scan.
typedef struct gpu_path {
  const char *kernels, *segments; // LT_LINEAR_KERNELS, LT_LINEAR_SEGMENTS (NULL: unset)
} gpu_path;

enum { MAX_PATHS = 3, PATH_VARS = 2 };
static const char *const PATH_ENV[PATH_VARS] = {"LT_LINEAR_KERNELS", "LT_LINEAR_SEGMENTS"};

static int gpu_paths_for(int d, int e, const char *segments, gpu_path paths[MAX_PATHS]) {
  const gpu_path scan = {"scan", NULL};
  if (d != e || (d != 64 && d != 128)) {
    paths[0] = (gpu_path){NULL, NULL}, paths[1] = scan;
    return 2;
  }
  paths[0] = (gpu_path){"chunks", NULL};
  paths[1] = (gpu_path){"chunks", segments}, paths[2] = scan;
  return 3;
}

// Prints the path and sets its environment, keeping the settings it replaced in saved.
static void enter_path(gpu_path path, char *saved[PATH_VARS]) {
  printf("  kernels: %s%s%s\n", path.kernels ? path.kernels : "default",
         path.segments ? ", segments: " : "", path.segments ? path.segments : "");
  const char *values[PATH_VARS] = {path.kernels, path.segments};
  for (int i = 0; i < PATH_VARS; i++) saved[i] = set_env(PATH_ENV[i], values[i]);
}

static void leave_path(char *saved[PATH_VARS]) {
  for (int i = 0; i < PATH_VARS; i++) restore_env(PATH_ENV[i], saved[i]);
}

// The tolerance of f32 results whose terms went through bf16 MMA inputs (the decayed rows).
static const double STATE_TOL = 5e-3;

static void expect_matches_cpu_with(const char *what, int64_t B, int64_t T, int hq, int hkv, int d,
                                    int e, lin_options opt, lt_dtype grad_dtype) {
  printf("%s\n", what);
  lin_case c;
  make_case(&c, B, T, hq, hkv, d, e, opt);
  lin_result want = run_cpu(&c);
  char segments[16];
  snprintf(segments, sizeof segments, "%d", opt.segments ? opt.segments : 3);
  gpu_path paths[MAX_PATHS];
  const int n_paths = gpu_paths_for(d, e, segments, paths);
  for (int p = 0; p < n_paths; p++) {
    char *saved[PATH_VARS];
    enter_path(paths[p], saved);
    lin_result got = run_gpu(&c, grad_dtype);
    leave_path(saved);
    lt_gpu_expect_close("o (bf16)", got.o, want.o, numel_o(&c), 1e-2);
    lt_gpu_expect_close("dq", got.dq, want.dq, numel_q(&c), 1e-2);
    lt_gpu_expect_close("dk", got.dk, want.dk, numel_k(&c), 1e-2);
    lt_gpu_expect_close("dv", got.dv, want.dv, numel_v(&c), 1e-2);
    lt_gpu_expect_close("dprefix (f32)", got.dprefix, want.dprefix, numel_s(&c), STATE_TOL);
    lt_gpu_expect_close("state (f32)", got.state, want.state, numel_s(&c), STATE_TOL);
    free_result(&got);
  }
  free_result(&want);
  free_case(&c);
}

static void expect_matches_cpu(const char *what, int64_t B, int64_t T, int hq, int hkv, int d,
                               int e, lin_options opt) {
  expect_matches_cpu_with(what, B, T, hq, hkv, d, e, opt, LT_BF16);
}

static void test_lightning_attention_matches_cpu_for_head_dims_64_and_128(void **state) {
  SKIP_WITHOUT_GPU();
  // 300 tokens: 4 chunks of 64 and 44 more, too few for segments but where a path asks for them.
  expect_matches_cpu("decay, d = 64", 2, 300, 4, 4, 64, 64, (lin_options){.decay = true});
  expect_matches_cpu("decay, d = 128", 2, 300, 4, 4, 128, 128, (lin_options){.decay = true});
}

static void test_linear_attention_without_decay_matches_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_matches_cpu("no decay, d = 64", 1, 200, 2, 2, 64, 64, (lin_options){0});
  // v with the denominator's ones column: 65 wide, the CPU in blocks of 50.
  expect_matches_cpu("no decay, d = 64, e = 65", 2, 130, 2, 2, 64, 65, (lin_options){.block = 50});
}

static void test_grouped_query_heads_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_matches_cpu("6 query heads on 2 kv heads", 1, 257, 6, 2, 64, 64,
                     (lin_options){.decay = true});
  expect_matches_cpu("4 query heads on 1 kv head, d = 128", 2, 190, 4, 1, 128, 128,
                     (lin_options){.decay = true});
}

static void test_ragged_documents_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_matches_cpu("documents of 1 to 40 tokens", 2, 333, 2, 2, 64, 64,
                     (lin_options){.decay = true, .max_doc_len = 40});
  expect_matches_cpu("documents of 1 to 200 tokens, no decay", 2, 600, 2, 1, 128, 128,
                     (lin_options){.max_doc_len = 200});
}

// The shapes of the GPU training tests' lightning model (2 rows of 96 tokens, 2 query heads on 1
// key/value head, the last layer's decays close to 1) with documents of 20 to 219 tokens.
static void test_slow_decays_with_documents_and_grouped_heads_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_matches_cpu("slow decays, documents, 2 heads on 1", 2, 96, 2, 1, 64, 64,
                     (lin_options){.decay = true, .max_doc_len = 219, .slow_decay = true});
  expect_matches_cpu("slow decays, documents, 2 heads on 1, 700 tokens", 2, 700, 2, 1, 64, 64,
                     (lin_options){.decay = true, .max_doc_len = 219, .slow_decay = true});
}

static void test_prefix_state_matches_cpu_in_and_out_of_its_document(void **state) {
  SKIP_WITHOUT_GPU();
  expect_matches_cpu("prefix, no documents", 2, 150, 2, 2, 64, 64,
                     (lin_options){.decay = true, .prefix = true});
  // Row 0's prefix belongs to its first document, row 1's to another.
  expect_matches_cpu("prefix and documents", 2, 260, 4, 2, 64, 64,
                     (lin_options){.decay = true, .max_doc_len = 90, .prefix = true});
}

static void test_long_sequences_cut_into_segments_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  // 47 chunks on 1 x 2 heads x 2 column tiles: the scan runs in segments (linear_scan.cu), and so
  // does the chunk kernels' state pass (linear_chunk_state.cu).
  expect_matches_cpu("3000 tokens, d = 128", 1, 3000, 2, 2, 128, 128,
                     (lin_options){.decay = true, .prefix = true});
  expect_matches_cpu("3000 tokens, documents, prefix, groups", 1, 3000, 4, 2, 64, 64,
                     (lin_options){.decay = true, .max_doc_len = 700, .prefix = true});
  expect_matches_cpu("2500 tokens, no decay, e = 65", 1, 2500, 2, 2, 64, 65, (lin_options){0});
}

// The chunk kernels' state pass in segments (linear_chunk_state.cu), asked for 7 where 7 divides
// no chunk count, beside the segments it chooses itself: decays slow enough that the states carry
// across segments, documents that cross segment edges and end on them, prefixes in (even rows)
// and out of (odd rows) their document, grouped heads, and few heads, as a small model has.
static void test_state_pass_in_segments_matches_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  const lin_options slow = {.decay = true, .slow_decay = true, .prefix = true, .segments = 7};
  lin_options opt = slow;
  opt.max_doc_len = 700;
  expect_matches_cpu("3000 tokens (47 chunks, 7 segments of 7), documents of 1 to 700, prefix", 2,
                     3000, 2, 2, 64, 64, opt);
  opt = slow;
  opt.doc_len = 448;
  expect_matches_cpu("3000 tokens, d = 128, 2 heads on 1, documents of 448 tokens: one per segment",
                     2, 3000, 2, 1, 128, 128, opt);
  opt = slow;
  opt.decay = false;
  expect_matches_cpu("3000 tokens, one head, no decay, no documents, prefix", 1, 3000, 1, 1, 64, 64,
                     opt);
  opt = slow;
  opt.max_doc_len = 5000;
  expect_matches_cpu("20000 tokens (313 chunks, 7 segments of 45), documents of 1 to 5000, 2 heads "
                     "on 1, prefix",
                     2, 20000, 2, 1, 64, 64, opt);
  opt = slow;
  opt.max_doc_len = 3000, opt.prefix = false;
  expect_matches_cpu("20000 tokens, d = 128, one head, documents of 1 to 3000", 1, 20000, 1, 1, 128,
                     128, opt);
  opt = slow;
  opt.max_doc_len = 90;
  expect_matches_cpu("300 tokens: 7 segments asked of 5 chunks, one chunk each", 2, 300, 4, 2, 64,
                     64, opt);
}

// Sequences that end inside a chunk (1, 63, 65 and 200 tokens): the chunk kernels' last chunk is
// partial, and with 1 token the first chunk is the last.
static void test_partial_last_chunks_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_matches_cpu("1 token, prefix", 2, 1, 2, 2, 64, 64,
                     (lin_options){.decay = true, .prefix = true});
  expect_matches_cpu("63 tokens, d = 128, documents, prefix, 2 heads on 1", 2, 63, 2, 1, 128, 128,
                     (lin_options){.decay = true, .max_doc_len = 20, .prefix = true});
  expect_matches_cpu("65 tokens, prefix", 2, 65, 2, 2, 64, 64,
                     (lin_options){.decay = true, .prefix = true});
  expect_matches_cpu("200 tokens, d = 128, documents, 4 heads on 2", 2, 200, 4, 2, 128, 128,
                     (lin_options){.decay = true, .max_doc_len = 50});
}

// Documents that start exactly at a chunk's first token (64 and 128 long: the state is dropped at
// the chunk's edge, and its carry is 0 in the chunk before), and documents of one token each (no
// state ever carries a token into the next).
static void test_documents_at_chunk_edges_and_of_one_token_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_matches_cpu("documents of 64 tokens, prefix", 2, 320, 2, 2, 64, 64,
                     (lin_options){.decay = true, .doc_len = 64, .prefix = true});
  expect_matches_cpu("documents of 128 tokens, d = 128, 2 heads on 1", 2, 300, 2, 1, 128, 128,
                     (lin_options){.decay = true, .doc_len = 128, .prefix = true});
  expect_matches_cpu("documents of 1 token, prefix", 2, 150, 2, 2, 64, 64,
                     (lin_options){.decay = true, .doc_len = 1, .prefix = true});
}

// bench_lightning's shape: 4096 tokens, 16 heads of 128, one batch row.
static void test_benchmark_shape_matches_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_matches_cpu("4096 tokens, 16 heads of 128", 1, 4096, 16, 16, 128, 128,
                     (lin_options){.decay = true});
}

static void test_f32_gradients_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_matches_cpu_with("f32 dq, dk, dv", 1, 200, 4, 2, 64, 64,
                          (lin_options){.decay = true, .max_doc_len = 60}, LT_F32);
}

// The backward adds: a second call on the same gradients doubles them, on every path.
static void expect_backward_adds(gpu_path path) {
  char *saved[PATH_VARS];
  enter_path(path, saved);
  lin_case c;
  make_case(&c, 1, 200, 2, 2, 64, 64, (lin_options){.decay = true});
  lt_linear_attn_spec s = gpu_spec(&c);
  lt_tensor q = lt_gpu_upload(c.q, LT_BF16, QSHAPE(&c)),
            k = lt_gpu_upload(c.k, LT_BF16, KSHAPE(&c));
  lt_tensor v = lt_gpu_upload(c.v, LT_BF16, VSHAPE(&c));
  lt_tensor dout = lt_gpu_upload(c.dout, LT_BF16, OSHAPE(&c)), none = {0};
  lt_tensor grads[3] = {lt_gpu_upload(c.q, LT_F32, QSHAPE(&c)),
                        lt_gpu_upload(c.k, LT_F32, KSHAPE(&c)),
                        lt_gpu_upload(c.v, LT_F32, VSHAPE(&c))};
  float *once[3];
  for (int i = 0; i < 3; i++) assert_ok(lt_zero(&lt_test_gpu, grads[i]));
  assert_ok(lt_linear_attn_bwd(&lt_test_gpu, grads[0], grads[1], grads[2], none, dout, q, k, v,
                               none, &s));
  for (int i = 0; i < 3; i++) once[i] = lt_gpu_fetch(grads[i]);
  assert_ok(lt_linear_attn_bwd(&lt_test_gpu, grads[0], grads[1], grads[2], none, dout, q, k, v,
                               none, &s));
  leave_path(saved);
  const char *names[3] = {"2 x dq", "2 x dk", "2 x dv"};
  for (int i = 0; i < 3; i++) {
    float *twice = lt_gpu_fetch(grads[i]);
    const int64_t n = lt_numel(grads[i]);
    for (int64_t j = 0; j < n; j++) once[i][j] *= 2.0f;
    lt_gpu_expect_close(names[i], twice, once[i], n, 1e-6);
    free(twice), free(once[i]);
  }
  lt_gpu_free_all();
  free_case(&c);
}

static void test_backward_adds_into_the_gradients(void **state) {
  SKIP_WITHOUT_GPU();
  gpu_path paths[MAX_PATHS];
  const int n_paths = gpu_paths_for(64, 64, "3", paths);
  for (int p = 0; p < n_paths; p++) expect_backward_adds(paths[p]);
}

// LASP-2's state backward: dk, dv += the state's gradients, against the CPU, with documents,
// grouped heads and (3000 tokens) segments. Both start from the same random gradients (bf16-exact),
// uploaded before the CPU adds into its copy, so that the += is checked too.
static void expect_state_bwd_matches_cpu(const char *what, int64_t T, int hq, int hkv, int d,
                                         lin_options opt) {
  printf("%s\n", what);
  lin_case c;
  make_case(&c, 2, T, hq, hkv, d, d, opt);
  lt_linear_attn_spec cs = cpu_spec(&c), gs = gpu_spec(&c);
  float *dk = lt_gpu_random(numel_k(&c), 0.1f, true), *dv = lt_gpu_random(numel_v(&c), 0.1f, true);
  lt_tensor gdk = lt_gpu_upload(dk, LT_BF16, KSHAPE(&c)),
            gdv = lt_gpu_upload(dv, LT_BF16, VSHAPE(&c));
  assert_ok(lt_linear_attn_state_bwd(&lt_test_cpu, H(dk, KSHAPE(&c)), H(dv, VSHAPE(&c)),
                                     H(c.prefix_state, SSHAPE(&c)), H(c.k, KSHAPE(&c)),
                                     H(c.v, VSHAPE(&c)), &cs));
  assert_ok(lt_linear_attn_state_bwd(
      &lt_test_gpu, gdk, gdv, lt_gpu_upload(c.prefix_state, LT_F32, SSHAPE(&c)),
      lt_gpu_upload(c.k, LT_BF16, KSHAPE(&c)), lt_gpu_upload(c.v, LT_BF16, VSHAPE(&c)), &gs));
  float *got_dk = lt_gpu_fetch(gdk), *got_dv = lt_gpu_fetch(gdv);
  lt_gpu_expect_close("dk from the state", got_dk, dk, numel_k(&c), 1e-2);
  lt_gpu_expect_close("dv from the state", got_dv, dv, numel_v(&c), 1e-2);
  free(dk), free(dv), free(got_dk), free(got_dv);
  lt_gpu_free_all();
  free_case(&c);
}

static void test_lasp2_state_backward_matches_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_state_bwd_matches_cpu("state backward, documents", 300, 4, 2, 64,
                               (lin_options){.decay = true, .max_doc_len = 100});
  expect_state_bwd_matches_cpu("state backward, 3000 tokens, d = 128", 3000, 2, 2, 128,
                               (lin_options){.decay = true});
}

static void test_head_width_beyond_the_scan_is_an_error(void **state) {
  SKIP_WITHOUT_GPU();
  lin_case c;
  make_case(&c, 1, 16, 1, 1, 160, 160, (lin_options){0});
  lt_linear_attn_spec s = gpu_spec(&c);
  lt_tensor q = lt_gpu_upload(c.q, LT_BF16, QSHAPE(&c));
  EXPECT_ERROR(lt_linear_attn_fwd(&lt_test_gpu, q, q, q, q, (lt_tensor){0}, &s), LT_ERR_INTERNAL,
               "linear_attn_fwd", "head widths");
  lt_gpu_free_all();
  free_case(&c);
}

// A value of LT_LINEAR_KERNELS or LT_LINEAR_SEGMENTS that names nothing is a config error naming
// the variable, not a silent default.
static void test_unknown_kernel_choices_are_config_errors(void **state) {
  SKIP_WITHOUT_GPU();
  lin_case c;
  make_case(&c, 1, 640, 1, 1, 64, 64, (lin_options){.decay = true});
  lt_linear_attn_spec s = gpu_spec(&c);
  lt_tensor q = lt_gpu_upload(c.q, LT_BF16, QSHAPE(&c));
  char *kernels = set_env("LT_LINEAR_KERNELS", "fast");
  EXPECT_ERROR(lt_linear_attn_fwd(&lt_test_gpu, q, q, q, q, (lt_tensor){0}, &s), LT_ERR_CONFIG,
               "LT_LINEAR_KERNELS=fast", "scan or chunks");
  restore_env("LT_LINEAR_KERNELS", kernels);
  char *segments = set_env("LT_LINEAR_SEGMENTS", "many");
  EXPECT_ERROR(lt_linear_attn_fwd(&lt_test_gpu, q, q, q, q, (lt_tensor){0}, &s), LT_ERR_CONFIG,
               "LT_LINEAR_SEGMENTS=many", "whole number");
  restore_env("LT_LINEAR_SEGMENTS", segments);
  lt_gpu_free_all();
  free_case(&c);
}

// --- the elementwise ends ---

static void expect_qkv_matches_cpu(lt_feature_map map, int e) {
  const int64_t n = 77;
  const int hq = 4, hkv = 2, d = 64, row = (hq + 2 * hkv) * d;
  float *qkv = lt_gpu_random(n * row, 1.5f, true), *dq = lt_gpu_random(n * hq * d, 1.0f, true);
  float *dk = lt_gpu_random(n * hkv * d, 1.0f, true), *dv = lt_gpu_random(n * hkv * e, 1.0f, true);
  float *q = malloc(4 * n * hq * d), *k = malloc(4 * n * hkv * d), *v = malloc(4 * n * hkv * e);
  float *dqkv = malloc(4 * n * row);
#define CPU(x, nd, shape) lt_view(x, LT_F32, LT_CPU, nd, shape)
#define GPU(x, nd, shape) lt_gpu_upload(x, LT_BF16, nd, shape)
  assert_ok(lt_linear_qkv_fwd(&lt_test_cpu, CPU(q, 3, LT_SHAPE(n, hq, d)),
                              CPU(k, 3, LT_SHAPE(n, hkv, d)), CPU(v, 3, LT_SHAPE(n, hkv, e)),
                              CPU(qkv, 3, LT_SHAPE(n, hq + 2 * hkv, d)), map));
  assert_ok(lt_linear_qkv_bwd(&lt_test_cpu, CPU(dqkv, 3, LT_SHAPE(n, hq + 2 * hkv, d)),
                              CPU(dq, 3, LT_SHAPE(n, hq, d)), CPU(dk, 3, LT_SHAPE(n, hkv, d)),
                              CPU(dv, 3, LT_SHAPE(n, hkv, e)),
                              CPU(qkv, 3, LT_SHAPE(n, hq + 2 * hkv, d)), map));
  lt_tensor gq = GPU(q, 3, LT_SHAPE(n, hq, d)), gk = GPU(k, 3, LT_SHAPE(n, hkv, d));
  lt_tensor gv = GPU(v, 3, LT_SHAPE(n, hkv, e)), gqkv = GPU(qkv, 3, LT_SHAPE(n, hq + 2 * hkv, d));
  lt_tensor gdqkv = GPU(qkv, 3, LT_SHAPE(n, hq + 2 * hkv, d));
  assert_ok(lt_zero(&lt_test_gpu, gq)); // poisoned differently from the expected values
  assert_ok(lt_linear_qkv_fwd(&lt_test_gpu, gq, gk, gv, gqkv, map));
  assert_ok(lt_linear_qkv_bwd(&lt_test_gpu, gdqkv, GPU(dq, 3, LT_SHAPE(n, hq, d)),
                              GPU(dk, 3, LT_SHAPE(n, hkv, d)), GPU(dv, 3, LT_SHAPE(n, hkv, e)),
                              gqkv, map));
#undef CPU
#undef GPU
  float *got_q = lt_gpu_fetch(gq), *got_k = lt_gpu_fetch(gk), *got_v = lt_gpu_fetch(gv);
  float *got_dqkv = lt_gpu_fetch(gdqkv);
  lt_gpu_expect_close("phi(q)", got_q, q, n * hq * d, 1e-2);
  lt_gpu_expect_close("phi(k)", got_k, k, n * hkv * d, 1e-2);
  lt_gpu_expect_close("v", got_v, v, n * hkv * e, 1e-2);
  lt_gpu_expect_close("dqkv", got_dqkv, dqkv, n * row, 1e-2);
  free(qkv), free(dq), free(dk), free(dv), free(q), free(k), free(v), free(dqkv);
  free(got_q), free(got_k), free(got_v), free(got_dqkv);
  lt_gpu_free_all();
}

static void test_feature_maps_and_the_ones_column_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  const lt_feature_map maps[4] = {LT_FEATURE_ELU1, LT_FEATURE_RELU, LT_FEATURE_SILU,
                                  LT_FEATURE_IDENTITY};
  for (int m = 0; m < 4; m++) {
    printf("feature map %d, e = d and e = d + 1\n", m);
    expect_qkv_matches_cpu(maps[m], 64);
    expect_qkv_matches_cpu(maps[m], 65);
  }
}

// The output stage y = norm(o) g(u) and its backward, with row_stat (a row split over two
// "ranks" holding the same values) where split.
static void expect_out_matches_cpu(lt_linear_norm norm, lt_gate gate, bool split) {
  const int64_t n = 45;
  const int h = 6, d = 64, e = norm == LT_LINEAR_NORM_DENOMINATOR ? d + 1 : d, w = h * d;
  float *o = lt_gpu_random(n * h * e, 1.0f, true), *u = lt_gpu_random(n * w, 1.0f, true);
  float *dy = lt_gpu_random(n * w, 1.0f, true);
  if (norm == LT_LINEAR_NORM_DENOMINATOR) // a positive normaliser, as elu + 1 gives
    for (int64_t i = 0; i < n * h; i++)
      o[i * e + d] = lt_bf16_to_f32(lt_f32_to_bf16(fabsf(o[i * e + d]) + 0.5f));
  float *y = malloc(4 * n * w), *rstd = calloc(n, 4), *d_o = malloc(4 * n * h * e);
  float *du = malloc(4 * n * w), *fstat = calloc(n, 4), *bstat = calloc(n, 4);
  const lt_tensor no_stat = {0};
#define C3(x) lt_view3(x, LT_F32, LT_CPU, n, h, e)
#define C2(x) lt_view2(x, LT_F32, LT_CPU, n, w)
#define C1(x) lt_view1(x, LT_F32, LT_CPU, n)
  if (split) assert_ok(lt_linear_out_rms_stat(&lt_test_cpu, C1(fstat), C3(o), 2 * w));
  assert_ok(lt_linear_out_fwd(&lt_test_cpu, C2(y), C1(rstd), C3(o), C2(u), norm, gate, 1e-5f,
                              split ? C1(fstat) : no_stat));
  if (split)
    assert_ok(lt_linear_out_rms_grad_stat(&lt_test_cpu, C1(bstat), C2(dy), C3(o), C2(u), C1(rstd),
                                          gate, 2 * w));
  assert_ok(lt_linear_out_bwd(&lt_test_cpu, C3(d_o), C2(du), C2(dy), C3(o), C2(u), C1(rstd), norm,
                              gate, 1e-5f, split ? C1(bstat) : no_stat));
#undef C3
#undef C2
#undef C1
  lt_tensor go = lt_gpu_upload(o, LT_BF16, 3, LT_SHAPE(n, h, e));
  lt_tensor gu = lt_gpu_upload(u, LT_BF16, 2, LT_SHAPE(n, w)),
            gdy = lt_gpu_upload(dy, LT_BF16, 2, LT_SHAPE(n, w));
  lt_tensor gy = lt_gpu_upload(dy, LT_BF16, 2, LT_SHAPE(n, w)),
            gdu = lt_gpu_upload(dy, LT_BF16, 2, LT_SHAPE(n, w));
  lt_tensor gd_o = lt_gpu_upload(o, LT_BF16, 3, LT_SHAPE(n, h, e));
  lt_tensor grstd = lt_gpu_upload(fstat, LT_F32, 1, LT_SHAPE(n)),
            gfstat = lt_gpu_upload(fstat, LT_F32, 1, LT_SHAPE(n));
  lt_tensor gbstat = lt_gpu_upload(bstat, LT_F32, 1, LT_SHAPE(n));
  if (split) assert_ok(lt_zero(&lt_test_gpu, gfstat));
  if (split) assert_ok(lt_linear_out_rms_stat(&lt_test_gpu, gfstat, go, 2 * w));
  assert_ok(lt_linear_out_fwd(&lt_test_gpu, gy, grstd, go, gu, norm, gate, 1e-5f,
                              split ? gfstat : no_stat));
  float *got_y = lt_gpu_fetch(gy), *got_rstd = lt_gpu_fetch(grstd);
  lt_gpu_expect_close("y", got_y, y, n * w, 1e-2);
  if (norm == LT_LINEAR_NORM_RMS) lt_gpu_expect_close("rstd (f32)", got_rstd, rstd, n, 1e-5);
  // The backward from the CPU's rstd, so that both sides see the same inputs.
  lt_tensor cpu_rstd = lt_gpu_upload(rstd, LT_F32, 1, LT_SHAPE(n));
  if (split) {
    assert_ok(lt_zero(&lt_test_gpu, gbstat));
    assert_ok(
        lt_linear_out_rms_grad_stat(&lt_test_gpu, gbstat, gdy, go, gu, cpu_rstd, gate, 2 * w));
    float *got_fstat = lt_gpu_fetch(gfstat), *got_bstat = lt_gpu_fetch(gbstat);
    lt_gpu_expect_close("rms_stat (f32)", got_fstat, fstat, n, 1e-5);
    lt_gpu_expect_close("rms_grad_stat (f32)", got_bstat, bstat, n, 1e-4);
    free(got_fstat), free(got_bstat);
  }
  assert_ok(lt_linear_out_bwd(&lt_test_gpu, gd_o, gdu, gdy, go, gu, cpu_rstd, norm, gate, 1e-5f,
                              split ? gbstat : no_stat));
  float *got_d_o = lt_gpu_fetch(gd_o), *got_du = lt_gpu_fetch(gdu);
  lt_gpu_expect_close("d_o", got_d_o, d_o, n * h * e, 1e-2);
  if (gate != LT_GATE_NONE) lt_gpu_expect_close("du", got_du, du, n * w, 1e-2);
  free(o), free(u), free(dy), free(y), free(rstd), free(d_o), free(du), free(fstat), free(bstat);
  free(got_y), free(got_rstd), free(got_d_o), free(got_du);
  lt_gpu_free_all();
}

static void test_output_norms_and_gates_match_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  const lt_linear_norm norms[3] = {LT_LINEAR_NORM_DENOMINATOR, LT_LINEAR_NORM_RMS,
                                   LT_LINEAR_NORM_NONE};
  const lt_gate gates[4] = {LT_GATE_NONE, LT_GATE_LINEAR, LT_GATE_SIGMOID, LT_GATE_SILU};
  for (int nm = 0; nm < 3; nm++)
    for (int g = 0; g < 4; g++) {
      printf("norm %d, gate %d\n", nm, g);
      expect_out_matches_cpu(norms[nm], gates[g], false);
    }
}

static void test_rms_norm_over_a_split_row_matches_cpu(void **state) {
  SKIP_WITHOUT_GPU();
  expect_out_matches_cpu(LT_LINEAR_NORM_RMS, LT_GATE_LINEAR, true);
  expect_out_matches_cpu(LT_LINEAR_NORM_RMS, LT_GATE_NONE, true);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lightning_attention_matches_cpu_for_head_dims_64_and_128),
      cmocka_unit_test(test_linear_attention_without_decay_matches_cpu),
      cmocka_unit_test(test_grouped_query_heads_match_cpu),
      cmocka_unit_test(test_ragged_documents_match_cpu),
      cmocka_unit_test(test_slow_decays_with_documents_and_grouped_heads_match_cpu),
      cmocka_unit_test(test_prefix_state_matches_cpu_in_and_out_of_its_document),
      cmocka_unit_test(test_long_sequences_cut_into_segments_match_cpu),
      cmocka_unit_test(test_state_pass_in_segments_matches_cpu),
      cmocka_unit_test(test_partial_last_chunks_match_cpu),
      cmocka_unit_test(test_documents_at_chunk_edges_and_of_one_token_match_cpu),
      cmocka_unit_test(test_benchmark_shape_matches_cpu),
      cmocka_unit_test(test_f32_gradients_match_cpu),
      cmocka_unit_test(test_backward_adds_into_the_gradients),
      cmocka_unit_test(test_lasp2_state_backward_matches_cpu),
      cmocka_unit_test(test_head_width_beyond_the_scan_is_an_error),
      cmocka_unit_test(test_feature_maps_and_the_ones_column_match_cpu),
      cmocka_unit_test(test_output_norms_and_gates_match_cpu),
      cmocka_unit_test(test_rms_norm_over_a_split_row_matches_cpu),
      cmocka_unit_test(test_unknown_kernel_choices_are_config_errors),
  };
  return cmocka_run_group_tests(tests, lt_gpu_group_setup, lt_gpu_group_teardown);
}
