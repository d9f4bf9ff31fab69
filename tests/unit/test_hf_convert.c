// Models from elsewhere (train/hf_convert.h): tiny LlamaForCausalLM folders written by
// transformers (tests/fixtures/make_hf_import_fixture.py: a bf16 model in two shards with GQA, and
// a tied-embedding f32 model in one file) import into checkpoints whose logits match
// transformers'; export then import gives the weights back bit for bit; a fine-tune starts from
// an imported model; and every kind of bad input is one line naming the file and the tensor or
// key. With LT_HF_EXPORT_OUT=DIR the exports are left in DIR/sharded and DIR/tied for the
// fixture script's `check` (transformers loads them and gives the same logits).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/dataset.h"
#include "data/hf_config.h"
#include "data/safetensors.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "train/hf_convert.h"
#include "runs.h"
#include "testing.h"

#define REL_TOL 1e-4

static const char *fixture(const char *name) {
  static char paths[4][LT_PATH_MAX];
  static int next = 0;
  char *path = paths[next++ % 4];
  snprintf(path, LT_PATH_MAX, "%s", lt_test_source_path(name));
  return path;
}

// A new path under the test's temporary folder.
static const char *scratch(const char *name) {
  static char paths[8][LT_PATH_MAX];
  static int next = 0;
  char *path = paths[next++ % 8];
  snprintf(path, LT_PATH_MAX, "%s/%s", lt_test_tmpdir(), name);
  return path;
}

// The logits of checkpoint `ckpt` on the fixture's tokens against the fixture's (transformers')
// logits.
static double logits_error(const char *ckpt, const char *hf_dir) {
  lt_config cfg;
  assert_ok(lt_checkpoint_read_config(ckpt, &cfg));
  lt_model model;
  assert_ok(lt_model_create(&model, &cfg.model, LT_CPU, NULL));
  assert_ok(lt_checkpoint_load_weights(ckpt, &model.params));
  char path[LT_PATH_MAX + 32];
  snprintf(path, sizeof path, "%s/reference.safetensors", hf_dir);
  lt_safetensors ref;
  assert_ok(lt_safetensors_open(&ref, path));
  const lt_st_tensor *tokens_t = lt_safetensors_find(&ref, "tokens");
  const lt_st_tensor *logits_t = lt_safetensors_find(&ref, "logits");
  assert_non_null(tokens_t), assert_non_null(logits_t);
  const int64_t B = tokens_t->shape[0], T = tokens_t->shape[1], n = B * T;
  const int64_t V = cfg.model.vocab_size;
  assert_int_equal(logits_t->numel, n * V);
  float *token_values = malloc((size_t)n * sizeof(float));
  float *expected = malloc((size_t)(n * V) * sizeof(float));
  float *logits = malloc((size_t)(n * V) * sizeof(float));
  int32_t *tokens = malloc((size_t)n * sizeof(int32_t)), *pos = malloc((size_t)n * sizeof(int32_t));
  assert_ok(lt_safetensors_read_f32(&ref, tokens_t, token_values));
  assert_ok(lt_safetensors_read_f32(&ref, logits_t, expected));
  for (int64_t i = 0; i < n; i++) tokens[i] = (int32_t)token_values[i], pos[i] = (int32_t)(i % T);
  lt_ctx ctx;
  assert_ok(lt_ctx_init(&ctx, LT_CPU, 2));
  assert_ok(lt_model_plan(&model, B, T, false));
  lt_batch batch = {.B = B,
                    .T = T,
                    .tokens = lt_view1(tokens, LT_I32, LT_CPU, n),
                    .targets = lt_view1(tokens, LT_I32, LT_CPU, n),
                    .pos = lt_view1(pos, LT_I32, LT_CPU, n)};
  assert_ok(lt_model_logits(&model, &ctx, &batch, lt_view2(logits, LT_F32, LT_CPU, n, V)));
  double err = lt_test_normwise_error(logits, expected, n * V);
  free(token_values), free(expected), free(logits), free(tokens), free(pos);
  lt_ctx_destroy(&ctx);
  lt_safetensors_close(&ref);
  lt_model_destroy(&model);
  return err;
}

static void test_an_imported_sharded_bf16_llama_gives_transformers_logits(void **state) {
  const char *hf = fixture("tests/fixtures/hf_llama_sharded"), *ckpt = scratch("sharded");
  assert_ok(lt_hf_import(hf, ckpt, NULL));
  double err = logits_error(ckpt, hf);
  printf("sharded bf16 import: logits normwise error %.2e\n", err);
  assert_true(err < REL_TOL);
}

static void test_an_imported_tied_f32_llama_gives_transformers_logits(void **state) {
  const char *hf = fixture("tests/fixtures/hf_llama_tied"), *ckpt = scratch("tied");
  assert_ok(lt_hf_import(hf, ckpt, NULL));
  lt_config cfg;
  assert_ok(lt_checkpoint_read_config(ckpt, &cfg));
  assert_true(cfg.model.tie_embeddings);
  double err = logits_error(ckpt, hf);
  printf("tied f32 import: logits normwise error %.2e\n", err);
  assert_true(err < REL_TOL);
}

// Import, export (f32, and bf16 for weights that bf16 holds exactly), import again: the same
// weights bit for bit; the exports are kept for the Python check when LT_HF_EXPORT_OUT is set.
static void export_and_reimport(const char *fixture_name, const char *label, lt_st_dtype dtype) {
  char first[LT_PATH_MAX], again[LT_PATH_MAX + 16], exported[LT_PATH_MAX + 16];
  snprintf(first, sizeof first, "%s", scratch(label));
  snprintf(again, sizeof again, "%s-again", first);
  const char *keep = getenv("LT_HF_EXPORT_OUT");
  if (keep)
    snprintf(exported, sizeof exported, "%s/%s", keep, label);
  else
    snprintf(exported, sizeof exported, "%s-exported", first);
  assert_ok(lt_hf_import(fixture(fixture_name), first, NULL));
  assert_ok(lt_hf_export(first, exported, dtype));
  assert_ok(lt_hf_import(exported, again, NULL));
  lt_test_assert_same_checkpoint(first, again);
}

static void test_export_then_import_gives_the_same_weights_bit_for_bit(void **state) {
  export_and_reimport("tests/fixtures/hf_llama_sharded", "sharded", LT_ST_BF16);
  export_and_reimport("tests/fixtures/hf_llama_tied", "tied", LT_ST_F32);
}

static void test_a_fine_tune_starts_from_an_imported_model(void **state) {
  const char *ckpt = scratch("to-tune"), *yaml = scratch("to-tune.yaml");
  const char *data = scratch("tokens.h5"), *run = scratch("tune-run");
  assert_ok(lt_hf_import(fixture("tests/fixtures/hf_llama_sharded"), ckpt, yaml));
  lt_dataset_writer w;
  assert_ok(lt_dataset_writer_open(&w, data, "byte", 256, 255));
  int32_t ids[2000];
  for (int i = 0; i < 2000; i++) ids[i] = (i * 37 + i / 7) % 255;
  assert_ok(lt_dataset_writer_add(&w, ids, 2000));
  assert_ok(lt_dataset_writer_commit(&w));
  char args[4 * LT_PATH_MAX], log[LT_PATH_MAX];
  snprintf(log, sizeof log, "%s", scratch("tune.log"));
  snprintf(args, sizeof args,
           "train --config %s --init-from %s --set data.path=%s --set run.dir=%s "
           "--set train.steps=2 --set train.batch=2 --set train.seq_len=32 --set run.threads=1",
           yaml, ckpt, data, run);
  lt_test_expect_run(log, args, 0, "initialised from the weights of", "done: 2 steps");
}

// A copy of fixture folder `name` to break.
static const char *copy_fixture(const char *name, const char *label) {
  const char *dir = scratch(label);
  char command[3 * LT_PATH_MAX], out[4096];
  snprintf(command, sizeof command, "cp -r %s %s", fixture(name), dir);
  assert_int_equal(lt_test_run(command, out, sizeof out), 0);
  return dir;
}

static void expect_import_error(const char *hf, int code, const char *const *parts) {
  lt_test_expect_error(lt_hf_import(hf, scratch("never"), NULL), code, parts);
  assert_int_not_equal(access(scratch("never"), F_OK), 0);
}
#define EXPECT_IMPORT_ERROR(hf, code, ...)                                                         \
  expect_import_error((hf), (code), (const char *const[]){__VA_ARGS__, NULL})

static void test_a_truncated_shard_is_a_data_error_naming_the_file(void **state) {
  const char *dir = copy_fixture("tests/fixtures/hf_llama_sharded", "truncated");
  char shard[LT_PATH_MAX + 64];
  snprintf(shard, sizeof shard, "%s/model-00002-of-00002.safetensors", dir);
  assert_int_equal(truncate(shard, 50000), 0);
  EXPECT_IMPORT_ERROR(dir, LT_ERR_DATA, "model-00002-of-00002.safetensors");
}

static void test_a_missing_shard_is_a_data_error_naming_the_file(void **state) {
  const char *dir = copy_fixture("tests/fixtures/hf_llama_sharded", "missing-shard");
  char shard[LT_PATH_MAX + 64];
  snprintf(shard, sizeof shard, "%s/model-00001-of-00002.safetensors", dir);
  assert_int_equal(remove(shard), 0);
  EXPECT_IMPORT_ERROR(dir, LT_ERR_DATA, "model-00001-of-00002.safetensors");
}

static void test_a_file_that_is_not_safetensors_is_a_data_error(void **state) {
  const char *dir = copy_fixture("tests/fixtures/hf_llama_tied", "garbage");
  char file[LT_PATH_MAX + 32];
  snprintf(file, sizeof file, "%s/model.safetensors", dir);
  lt_test_write_file(file, "this is not a safetensors file, only text\n");
  EXPECT_IMPORT_ERROR(dir, LT_ERR_DATA, "model.safetensors");
}

// Rewrites DIR/model.safetensors (the tied fixture's) without tensor `drop`, and with `extra` (a
// copy of the embedding) when not NULL.
static void rewrite_tensors(const char *dir, const char *drop, const char *extra) {
  char path[LT_PATH_MAX + 32];
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  lt_safetensors st;
  assert_ok(lt_safetensors_open(&st, path));
  lt_st_entry entries[32];
  float *data[32];
  int n = 0;
  for (int i = 0; i < st.n_tensors; i++) {
    const lt_st_tensor *t = &st.tensors[i];
    if (drop && strcmp(t->name, drop) == 0) continue;
    data[n] = malloc((size_t)t->numel * sizeof(float));
    assert_ok(lt_safetensors_read_f32(&st, t, data[n]));
    entries[n] = (lt_st_entry){
        .name = strdup(t->name), .dtype = LT_ST_F32, .ndim = t->ndim, .data = data[n]};
    memcpy(entries[n].shape, t->shape, sizeof t->shape);
    if (extra && strcmp(t->name, "model.embed_tokens.weight") == 0) {
      entries[n + 1] = entries[n];
      entries[n + 1].name = strdup(extra);
      data[++n] = NULL;
    }
    n++;
  }
  lt_safetensors_close(&st);
  assert_ok(lt_safetensors_write(path, entries, n, NULL));
  for (int i = 0; i < n; i++) free((char *)entries[i].name), free(data[i]);
}

static void test_a_missing_tensor_is_a_data_error_naming_it(void **state) {
  const char *dir = copy_fixture("tests/fixtures/hf_llama_tied", "missing-tensor");
  rewrite_tensors(dir, "model.layers.0.mlp.up_proj.weight", NULL);
  EXPECT_IMPORT_ERROR(dir, LT_ERR_DATA, "model.layers.0.mlp.up_proj.weight", "missing",
                      "layers.0.ffn.w_up");
}

static void test_a_tensor_of_another_model_is_a_data_error_naming_it(void **state) {
  const char *dir = copy_fixture("tests/fixtures/hf_llama_tied", "extra-tensor");
  rewrite_tensors(dir, NULL, "model.layers.0.self_attn.q_norm.weight");
  EXPECT_IMPORT_ERROR(dir, LT_ERR_DATA, "model.layers.0.self_attn.q_norm.weight",
                      "not a parameter of a Llama");
}

static void test_weights_of_another_shape_than_config_json_are_a_data_error(void **state) {
  const char *dir = copy_fixture("tests/fixtures/hf_llama_tied", "shape");
  char path[LT_PATH_MAX + 32], command[3 * LT_PATH_MAX], out[256];
  snprintf(path, sizeof path, "%s/config.json", dir);
  snprintf(command, sizeof command,
           "sed -i 's/\"intermediate_size\": 64/\"intermediate_size\": 72/' %s", path);
  assert_int_equal(lt_test_run(command, out, sizeof out), 0);
  EXPECT_IMPORT_ERROR(dir, LT_ERR_DATA, "model.layers.0.mlp.gate_proj.weight", "64 x 32",
                      "72 x 32");
}

static void test_another_architecture_is_a_data_error_naming_it(void **state) {
  const char *dir = copy_fixture("tests/fixtures/hf_llama_tied", "mistral");
  char path[LT_PATH_MAX + 32], command[3 * LT_PATH_MAX], out[256];
  snprintf(path, sizeof path, "%s/config.json", dir);
  snprintf(command, sizeof command, "sed -i 's/LlamaForCausalLM/GPT2LMHeadModel/' %s", path);
  assert_int_equal(lt_test_run(command, out, sizeof out), 0);
  EXPECT_IMPORT_ERROR(dir, LT_ERR_DATA, "config.json", "GPT2LMHeadModel");
}

static void test_an_existing_output_folder_is_refused(void **state) {
  const char *out = scratch("exists");
  assert_int_equal(mkdir(out, 0755), 0);
  EXPECT_ERROR(lt_hf_import(fixture("tests/fixtures/hf_llama_tied"), out, NULL), LT_ERR_USAGE, out,
               "already exists");
}

// A checkpoint (step 3, seeded weights) of the model `yaml` describes; its folder into dir.
static void write_checkpoint_of(const char *yaml, const char *root, char *dir, size_t cap) {
  lt_config cfg;
  assert_ok(lt_config_load_string(&cfg, yaml, "model.yaml", 0, NULL));
  lt_model model;
  assert_ok(lt_model_create(&model, &cfg.model, LT_CPU, NULL));
  assert_ok(lt_params_init(&model.params, 1));
  lt_checkpoint_meta meta = {.n_params = lt_model_n_params(&model)};
  assert_ok(lt_config_to_yaml(&cfg, &meta.config_yaml));
  lt_checkpoint_writer w;
  assert_ok(lt_checkpoint_begin(&w, root, 3, 0, 1));
  assert_ok(lt_checkpoint_write_params(&w, &model.params, false));
  assert_ok(lt_checkpoint_commit(&w, &meta));
  lt_checkpoint_meta_free(&meta);
  lt_model_destroy(&model);
  snprintf(dir, cap, "%s", w.dir);
}

static void test_exporting_a_model_that_is_not_a_llama_is_a_config_error(void **state) {
  char ckpt[LT_PATH_MAX + 32];
  write_checkpoint_of("model: {attention: linear, d_model: 32, n_layers: 1, n_heads: 2, "
                      "ffn_dim: 64, vocab_size: 64, max_seq_len: 32}\ntrain: {seq_len: 32}\n",
                      scratch("linear-run"), ckpt, sizeof ckpt);
  EXPECT_ERROR(lt_hf_export(ckpt, scratch("linear-hf"), LT_ST_BF16), LT_ERR_CONFIG,
               "model.attention", "linear", "LlamaForCausalLM");
}

// NTK scaling is a larger RoPE base: exported as that base, it imports back as the same RoPE.
static void test_a_context_extended_by_ntk_scaling_exports_as_its_scaled_theta(void **state) {
  char ckpt[LT_PATH_MAX + 32], json[LT_PATH_MAX + 32];
  write_checkpoint_of("model: {d_model: 32, n_layers: 1, n_heads: 2, ffn_dim: 64, vocab_size: "
                      "64, max_seq_len: 128, rope_theta: 10000, rope_ntk_factor: 4}\n"
                      "train: {seq_len: 128}\n",
                      scratch("ntk-run"), ckpt, sizeof ckpt);
  const char *exported = scratch("ntk-hf"), *again = scratch("ntk-again");
  assert_ok(lt_hf_export(ckpt, exported, LT_ST_F32));
  snprintf(json, sizeof json, "%s/config.json", exported);
  lt_hf_config hf;
  assert_ok(lt_hf_config_read(json, &hf));
  const double scaled = 10000 * pow(4.0, 16.0 / 14.0); // head_dim 16: theta * s^(d/(d-2))
  assert_float_equal(hf.model.rope_theta, scaled, 1e-9 * scaled);
  assert_ok(lt_hf_import(exported, again, NULL));
  lt_config cfg;
  assert_ok(lt_checkpoint_read_config(again, &cfg));
  assert_float_equal(lt_model_rope_theta(&cfg.model), scaled, 1e-9 * scaled);
}

static void test_the_commands_give_one_line_and_their_status(void **state) {
  char command[3 * LT_PATH_MAX], out[4096];
  const char *dir = copy_fixture("tests/fixtures/hf_llama_tied", "cli");
  char file[LT_PATH_MAX + 32];
  snprintf(file, sizeof file, "%s/model.safetensors", dir);
  assert_int_equal(truncate(file, 1000), 0);
  snprintf(command, sizeof command, "%s import-hf %s --output %s", lt_test_binary(), dir,
           scratch("cli-out"));
  int status = lt_test_run(command, out, sizeof out);
  if (status != LT_ERR_DATA || !strstr(out, "longtrain: error: ") || !strstr(out, file) ||
      strchr(out, '\n') != out + strlen(out) - 1)
    fail_msg("import-hf of a truncated file: status %d, output:\n%s", status, out);
  snprintf(command, sizeof command, "%s export-hf %s --output %s --dtype f16", lt_test_binary(),
           dir, scratch("cli-export"));
  status = lt_test_run(command, out, sizeof out);
  if (status != LT_ERR_USAGE || !strstr(out, "--dtype takes bf16 or f32, not 'f16'"))
    fail_msg("export-hf --dtype f16: status %d, output:\n%s", status, out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_an_imported_sharded_bf16_llama_gives_transformers_logits),
      cmocka_unit_test(test_an_imported_tied_f32_llama_gives_transformers_logits),
      cmocka_unit_test(test_export_then_import_gives_the_same_weights_bit_for_bit),
      cmocka_unit_test(test_a_fine_tune_starts_from_an_imported_model),
      cmocka_unit_test(test_a_truncated_shard_is_a_data_error_naming_the_file),
      cmocka_unit_test(test_a_missing_shard_is_a_data_error_naming_the_file),
      cmocka_unit_test(test_a_file_that_is_not_safetensors_is_a_data_error),
      cmocka_unit_test(test_a_missing_tensor_is_a_data_error_naming_it),
      cmocka_unit_test(test_a_tensor_of_another_model_is_a_data_error_naming_it),
      cmocka_unit_test(test_weights_of_another_shape_than_config_json_are_a_data_error),
      cmocka_unit_test(test_another_architecture_is_a_data_error_naming_it),
      cmocka_unit_test(test_an_existing_output_folder_is_refused),
      cmocka_unit_test(test_exporting_a_model_that_is_not_a_llama_is_a_config_error),
      cmocka_unit_test(test_a_context_extended_by_ntk_scaling_exports_as_its_scaled_theta),
      cmocka_unit_test(test_the_commands_give_one_line_and_their_status),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
