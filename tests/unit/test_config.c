// The run configuration: defaults, YAML files, --set overrides, the resolved YAML, and the
// messages for every kind of mistake (each one line, naming the file or key and the fix).
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "testing.h"

// One folder for the whole program's files.
static const char *test_dir(void) {
  static const char *dir = NULL;
  if (!dir) dir = lt_test_tmpdir();
  return dir;
}

// Writes `yaml` to the file `name` in the test folder and loads it; the path is kept in `path`.
static int load_file(lt_config *cfg, const char *name, const char *yaml, char *path, size_t cap,
                     int n_overrides, char *const *overrides) {
  snprintf(path, cap, "%s/%s", test_dir(), name);
  lt_test_write_file(path, yaml);
  return lt_config_load(cfg, path, n_overrides, overrides);
}

#define EXPECT_CONFIG_ERROR(rc, ...) EXPECT_ERROR((rc), LT_ERR_CONFIG, __VA_ARGS__)

static int load_bad_file(const char *yaml, char *path, size_t cap) {
  lt_config cfg;
  return load_file(&cfg, "run.yaml", yaml, path, cap, 0, NULL);
}

static int set_on_defaults(const char *assignment) {
  lt_config cfg;
  char *overrides[1] = {(char *)assignment};
  return lt_config_load(&cfg, NULL, 1, overrides);
}

// Every key's field, compared byte for byte, naming the first key that differs.
static void assert_same_config(const lt_config *a, const lt_config *b) {
  for (int i = 0; i < lt_config_n_keys; i++) {
    const lt_config_key *key = &lt_config_keys[i];
    if (memcmp((const char *)a + key->offset, (const char *)b + key->offset, key->size) != 0)
      fail_msg("%s differs after the round trip", key->path);
  }
  assert_memory_equal(a, b, offsetof(lt_config, source));
}

// --- loading ---

static void test_defaults_load_and_validate(void **state) {
  (void)state;
  lt_config cfg;
  assert_ok(lt_config_load(&cfg, NULL, 0, NULL));
  assert_ok(lt_config_validate(&cfg));
  assert_string_equal(cfg.source, "<defaults>");
  assert_int_equal(cfg.model.d_model, 768);
  assert_int_equal(cfg.model.n_layers, 12);
  assert_true(cfg.train.lr == 3e-4);
  assert_int_equal(cfg.train.decay, LT_DECAY_COSINE);
  assert_int_equal(cfg.model.init, LT_INIT_SCALED);
  assert_false(cfg.model.tie_embeddings);
  assert_string_equal(cfg.run.dir, "runs/default");
}

static void test_every_key_has_a_default_that_parses(void **state) {
  (void)state;
  lt_config cfg;
  assert_ok(lt_config_defaults(&cfg));
  for (int i = 0; i < lt_config_n_keys; i++) {
    char assignment[512];
    snprintf(assignment, sizeof assignment, "%s=%s", lt_config_keys[i].path,
             lt_config_keys[i].default_value);
    assert_ok(lt_config_set(&cfg, assignment));
  }
}

static void test_empty_file_gives_the_defaults(void **state) {
  (void)state;
  lt_config from_file, defaults;
  char path[1200];
  assert_ok(load_file(&from_file, "empty.yaml", "", path, sizeof path, 0, NULL));
  assert_ok(lt_config_load(&defaults, NULL, 0, NULL));
  assert_same_config(&from_file, &defaults);
  assert_string_equal(from_file.source, path);
}

static void test_yaml_file_sets_keys_in_nested_sections(void **state) {
  (void)state;
  lt_config cfg;
  char path[1200];
  assert_ok(load_file(&cfg, "run.yaml",
                      "# a comment\n"
                      "model:\n"
                      "  d_model: 64\n"
                      "  n_heads: 4\n"
                      "  tie_embeddings: true\n"
                      "train:\n"
                      "  lr: 1.5e-3\n"
                      "  decay: linear\n"
                      "  steps: 1e6\n"
                      "data:\n"
                      "  path: /data/tokens.h5\n"
                      "run:\n"
                      "  seed: 7\n",
                      path, sizeof path, 0, NULL));
  assert_int_equal(cfg.model.d_model, 64);
  assert_int_equal(cfg.model.n_heads, 4);
  assert_true(cfg.model.tie_embeddings);
  assert_true(cfg.train.lr == 1.5e-3);
  assert_int_equal(cfg.train.decay, LT_DECAY_LINEAR);
  assert_int_equal(cfg.train.steps, 1000000);
  assert_string_equal(cfg.data.path, "/data/tokens.h5");
  assert_int_equal(cfg.run.seed, 7);
  assert_int_equal(cfg.model.n_layers, 12); // not in the file: the default
  assert_string_equal(cfg.source, path);
}

static void test_set_overrides_the_file(void **state) {
  (void)state;
  lt_config cfg;
  char path[1200];
  char *overrides[] = {"model.d_model=192", "train.decay=constant"};
  assert_ok(load_file(&cfg, "run.yaml",
                      "model:\n  d_model: 64\n  n_layers: 3\ntrain:\n  decay: linear\n", path,
                      sizeof path, 2, overrides));
  assert_int_equal(cfg.model.d_model, 192);
  assert_int_equal(cfg.train.decay, LT_DECAY_CONSTANT);
  assert_int_equal(cfg.model.n_layers, 3);
}

static void test_later_set_overrides_an_earlier_one(void **state) {
  (void)state;
  lt_config cfg;
  char *overrides[] = {"train.steps=10", "train.steps=20"};
  assert_ok(lt_config_load(&cfg, NULL, 2, overrides));
  assert_int_equal(cfg.train.steps, 20);
}

static void test_bools_accept_true_false_yes_no(void **state) {
  (void)state;
  static const char *yes[] = {"true", "True", "yes", "on"}, *no[] = {"false", "FALSE", "no", "off"};
  for (int i = 0; i < 4; i++) {
    lt_config cfg;
    char path[1200], yaml[128];
    snprintf(yaml, sizeof yaml, "model:\n  tie_embeddings: %s\n", yes[i]);
    assert_ok(load_file(&cfg, "yes.yaml", yaml, path, sizeof path, 0, NULL));
    assert_true(cfg.model.tie_embeddings);
    snprintf(yaml, sizeof yaml, "model:\n  tie_embeddings: %s\n", no[i]);
    char set[64];
    snprintf(set, sizeof set, "train.recompute=%s", yes[i]);
    char *overrides[1] = {set};
    assert_ok(load_file(&cfg, "no.yaml", yaml, path, sizeof path, 1, overrides));
    assert_false(cfg.model.tie_embeddings);
    assert_true(cfg.train.recompute);
  }
  EXPECT_CONFIG_ERROR(set_on_defaults("model.tie_embeddings=maybe"), "model.tie_embeddings",
                      "true or false", "maybe");
}

// --- the resolved YAML ---

static void test_resolved_yaml_loads_back_to_an_identical_config(void **state) {
  (void)state;
  lt_config cfg, back;
  char *overrides[] = {"model.d_model=384",
                       "model.n_heads=6",
                       "model.n_kv_heads=2",
                       "model.rope_theta=500000",
                       "model.tie_embeddings=true",
                       "model.init=neox",
                       "train.steps=123456789012",
                       "train.weight_decay=0.30000000000000004",
                       "train.eps=1e-8",
                       "train.decay=linear",
                       "data.path=/odd \"name\": with \\ back#slash.h5",
                       "run.seed=9000000000000000000",
                       "run.device=cuda"};
  int n = (int)(sizeof overrides / sizeof overrides[0]);
  assert_ok(lt_config_load(&cfg, NULL, n, overrides));
  char *yaml;
  assert_ok(lt_config_to_yaml(&cfg, &yaml));
  int rc = lt_config_load_string(&back, yaml, "resolved.yaml", 0, NULL);
  if (rc != LT_OK) fail_msg("%s\n--- the YAML:\n%s", lt_error_message(), yaml);
  free(yaml);
  assert_same_config(&cfg, &back);
  assert_string_equal(back.data.path, "/odd \"name\": with \\ back#slash.h5");
}

static void test_resolved_yaml_keeps_floats_bit_exact(void **state) {
  (void)state;
  static const char *values[] = {"3e-4", "0.1", "0.30000000000000004", "1e-8", "2.5e-5"};
  for (int i = 0; i < 5; i++) {
    lt_config cfg, back;
    char set[64];
    snprintf(set, sizeof set, "train.lr=%s", values[i]);
    char *overrides[] = {set, "train.min_lr=0"};
    assert_ok(lt_config_load(&cfg, NULL, 2, overrides));
    assert_true(cfg.train.lr == strtod(values[i], NULL));
    char *yaml;
    assert_ok(lt_config_to_yaml(&cfg, &yaml));
    assert_ok(lt_config_load_string(&back, yaml, "resolved.yaml", 0, NULL));
    free(yaml);
    if (memcmp(&back.train.lr, &cfg.train.lr, sizeof(double)) != 0)
      fail_msg("train.lr=%s came back as %.17g", values[i], back.train.lr);
  }
}

// --- mistakes in a YAML file ---

static void test_malformed_yaml_reports_file_and_line(void **state) {
  (void)state;
  char path[1200], at_line[1300];
  int rc = load_bad_file("model:\n  d_model: [32, 64\ntrain:\n  steps: 3\n", path, sizeof path);
  snprintf(at_line, sizeof at_line, "%s:3:", path);
  EXPECT_CONFIG_ERROR(rc, at_line, "YAML syntax error", "started at line 2");
}

static void test_unknown_key_names_its_path_and_suggests_the_nearest(void **state) {
  (void)state;
  char path[1200], at_line[1300];
  int rc = load_bad_file("model:\n  d_model: 32\n  d_modle: 32\n", path, sizeof path);
  snprintf(at_line, sizeof at_line, "%s:3:", path);
  EXPECT_CONFIG_ERROR(rc, at_line, "unknown key 'model.d_modle'", "did you mean 'model.d_model'");
}

static void test_unknown_key_far_from_every_key_points_to_the_docs(void **state) {
  (void)state;
  char path[1200];
  int rc = load_bad_file("train:\n  learning_rate_peak: 1\n", path, sizeof path);
  EXPECT_CONFIG_ERROR(rc, path, "'train.learning_rate_peak'", "longtrain config --docs");
}

static void test_unknown_section_is_rejected_with_a_suggestion(void **state) {
  (void)state;
  char path[1200];
  int rc = load_bad_file("modle:\n  d_model: 32\n", path, sizeof path);
  EXPECT_CONFIG_ERROR(rc, path, "unknown key 'modle'", "did you mean 'model'");
}

static void test_string_for_an_int_is_a_type_error(void **state) {
  (void)state;
  char path[1200], at_line[1300];
  int rc = load_bad_file("model:\n  n_layers: twelve\n", path, sizeof path);
  snprintf(at_line, sizeof at_line, "%s:2:", path);
  EXPECT_CONFIG_ERROR(rc, at_line, "model.n_layers expects an integer", "twelve");
}

static void test_fraction_for_an_int_is_a_type_error(void **state) {
  (void)state;
  char path[1200];
  int rc = load_bad_file("train:\n  batch: 12.5\n", path, sizeof path);
  EXPECT_CONFIG_ERROR(rc, path, "train.batch expects an integer", "12.5");
}

static void test_text_for_a_float_is_a_type_error(void **state) {
  (void)state;
  char path[1200];
  int rc = load_bad_file("train:\n  lr: abc\n", path, sizeof path);
  EXPECT_CONFIG_ERROR(rc, path, "train.lr expects a number", "abc");
}

static void test_mapping_where_a_value_is_expected_is_a_type_error(void **state) {
  (void)state;
  char path[1200];
  int rc = load_bad_file("model:\n  n_layers:\n    value: 2\n", path, sizeof path);
  EXPECT_CONFIG_ERROR(rc, path, "model.n_layers expects an integer", "got a mapping");
}

static void test_list_where_a_value_is_expected_is_a_type_error(void **state) {
  (void)state;
  char path[1200];
  int rc = load_bad_file("train:\n  lr: [1, 2]\n", path, sizeof path);
  EXPECT_CONFIG_ERROR(rc, path, "train.lr expects a number", "got a list");
}

static void test_quoted_number_for_an_int_is_a_type_error(void **state) {
  (void)state;
  char path[1200];
  int rc = load_bad_file("model:\n  n_layers: \"12\"\n", path, sizeof path);
  EXPECT_CONFIG_ERROR(rc, path, "model.n_layers expects an integer", "quoted string \"12\"");
}

static void test_key_without_a_value_is_rejected(void **state) {
  (void)state;
  char path[1200];
  int rc = load_bad_file("model:\n  n_layers:\n", path, sizeof path);
  EXPECT_CONFIG_ERROR(rc, path, "model.n_layers has no value", "an integer");
}

static void test_section_given_a_value_is_rejected(void **state) {
  (void)state;
  char path[1200];
  int rc = load_bad_file("model: 3\n", path, sizeof path);
  EXPECT_CONFIG_ERROR(rc, path, "'model' is a section", "mapping");
}

static void test_top_level_must_be_a_mapping(void **state) {
  (void)state;
  char path[1200];
  int rc = load_bad_file("- model\n- train\n", path, sizeof path);
  EXPECT_CONFIG_ERROR(rc, path, "top level must be a mapping");
}

static void test_out_of_range_value_names_the_range(void **state) {
  (void)state;
  char path[1200], at_line[1300];
  int rc = load_bad_file("model:\n  n_layers: 0\n", path, sizeof path);
  snprintf(at_line, sizeof at_line, "%s:2:", path);
  EXPECT_CONFIG_ERROR(rc, at_line, "model.n_layers must be between 1 and 4096, got 0");
}

static void test_value_beyond_an_int_names_the_largest_allowed(void **state) {
  (void)state;
  EXPECT_CONFIG_ERROR(set_on_defaults("model.d_model=3000000000"), "model.d_model",
                      "at most 2147483647", "3000000000");
  EXPECT_CONFIG_ERROR(set_on_defaults("run.seed=-1"), "run.seed", "at least 0", "-1");
}

static void test_bad_enum_value_lists_the_choices(void **state) {
  (void)state;
  char path[1200];
  int rc = load_bad_file("train:\n  decay: cosin\n", path, sizeof path);
  EXPECT_CONFIG_ERROR(rc, path, "train.decay must be one of cosine|linear|constant", "'cosin'");
}

static void test_key_given_twice_is_rejected(void **state) {
  (void)state;
  char path[1200], at_line[1300];
  int rc =
      load_bad_file("model:\n  n_layers: 2\n  d_model: 64\n  n_layers: 3\n", path, sizeof path);
  snprintf(at_line, sizeof at_line, "%s:4:", path);
  EXPECT_CONFIG_ERROR(rc, at_line, "model.n_layers is given twice");
}

static void test_missing_config_file_is_named(void **state) {
  (void)state;
  lt_config cfg;
  char path[1200];
  snprintf(path, sizeof path, "%s/no-such.yaml", test_dir());
  EXPECT_CONFIG_ERROR(lt_config_load(&cfg, path, 0, NULL), path, "cannot open");
}

static void test_config_path_that_is_a_folder_is_named(void **state) {
  (void)state;
  lt_config cfg;
  EXPECT_CONFIG_ERROR(lt_config_load(&cfg, test_dir(), 0, NULL), test_dir(), "Is a directory");
}

static void test_second_yaml_document_is_rejected_not_ignored(void **state) {
  (void)state;
  char path[1200], at_line[1300];
  int rc = load_bad_file("model:\n  d_model: 64\n---\ntrain:\n  steps: 3\n", path, sizeof path);
  snprintf(at_line, sizeof at_line, "%s:4:", path);
  EXPECT_CONFIG_ERROR(rc, at_line, "second YAML document", "put every key in one");
}

static void test_document_markers_around_one_document_are_accepted(void **state) {
  (void)state;
  lt_config cfg;
  char path[1200];
  assert_ok(load_file(&cfg, "markers.yaml", "---\nmodel:\n  n_layers: 3\n---\n", path, sizeof path,
                      0, NULL));
  assert_int_equal(cfg.model.n_layers, 3);
  assert_ok(load_file(&cfg, "markers.yaml", "---\nmodel:\n  n_layers: 4\n...\n", path, sizeof path,
                      0, NULL));
  assert_int_equal(cfg.model.n_layers, 4);
}

// --- mistakes in --set ---

static void test_set_with_an_unknown_key_suggests_the_nearest(void **state) {
  (void)state;
  EXPECT_CONFIG_ERROR(set_on_defaults("model.d_modle=3"), "--set model.d_modle=3",
                      "unknown key 'model.d_modle'", "did you mean 'model.d_model'");
  EXPECT_CONFIG_ERROR(set_on_defaults("trian.lr=1"), "did you mean 'train.lr'");
}

static void test_set_without_equals_is_rejected(void **state) {
  (void)state;
  EXPECT_CONFIG_ERROR(set_on_defaults("train.lr"), "--set train.lr", "expected key=value");
}

static void test_set_on_a_section_is_rejected(void **state) {
  (void)state;
  EXPECT_CONFIG_ERROR(set_on_defaults("model=3"), "--set model=3", "'model' is a section");
}

static void test_set_with_a_bad_value_names_the_key(void **state) {
  (void)state;
  EXPECT_CONFIG_ERROR(set_on_defaults("train.lr=fast"), "--set train.lr=fast",
                      "train.lr expects a number");
}

// --- relations between keys ---

static void test_n_heads_must_be_a_multiple_of_n_kv_heads(void **state) {
  (void)state;
  char path[1200];
  int rc = load_bad_file("model:\n  n_heads: 12\n  n_kv_heads: 5\n", path, sizeof path);
  EXPECT_CONFIG_ERROR(rc, path, "model.n_heads (12) must be a multiple of model.n_kv_heads (5)");
}

static void test_head_width_must_be_even(void **state) {
  (void)state;
  char path[1200];
  int rc = load_bad_file("model:\n  d_model: 36\n  n_heads: 4\n", path, sizeof path);
  EXPECT_CONFIG_ERROR(rc, path, "head width (9) must be even", "model.head_dim");
}

static void test_seq_len_may_not_exceed_max_seq_len(void **state) {
  (void)state;
  char path[1200];
  int rc =
      load_bad_file("model:\n  max_seq_len: 512\ntrain:\n  seq_len: 1024\n", path, sizeof path);
  EXPECT_CONFIG_ERROR(rc, path, "train.seq_len (1024) exceeds model.max_seq_len (512)");
}

static void test_batch_must_be_a_multiple_of_micro_batch(void **state) {
  (void)state;
  char path[1200];
  int rc = load_bad_file("train:\n  batch: 10\n  micro_batch: 4\n", path, sizeof path);
  EXPECT_CONFIG_ERROR(rc, path, "train.batch (10) must be a multiple of train.micro_batch (4)");
}

static void test_batch_must_split_evenly_over_data_parallel_ranks(void **state) {
  (void)state;
  char path[1200];
  int rc = load_bad_file("train:\n  batch: 10\nparallel:\n  dp: 4\n", path, sizeof path);
  EXPECT_CONFIG_ERROR(rc, path, "train.batch (10) must be a multiple of parallel.dp (4)");
  rc = load_bad_file("train:\n  batch: 8\n  micro_batch: 4\nparallel:\n  dp: 4\n", path,
                     sizeof path);
  EXPECT_CONFIG_ERROR(rc, path,
                      "train.batch (8) must be a multiple of train.micro_batch (4) times "
                      "parallel.dp (4)");
  // micro_batch 0 is each rank's whole share.
  lt_config cfg;
  assert_ok(
      lt_config_load_string(&cfg, "train:\n  batch: 8\nparallel:\n  dp: 4\n", "ok.yaml", 0, NULL));
}

static void test_min_lr_may_not_exceed_lr(void **state) {
  (void)state;
  char path[1200];
  int rc = load_bad_file("train:\n  lr: 1e-4\n  min_lr: 1e-3\n", path, sizeof path);
  EXPECT_CONFIG_ERROR(rc, path, "train.min_lr (0.001) must not exceed train.lr (0.0001)");
}

// --- checkpoints, data pipeline and fine-tuning keys ---

static void test_eval_every_needs_a_validation_set(void **state) {
  (void)state;
  char path[1200];
  int rc = load_bad_file("train:\n  eval_every: 50\n", path, sizeof path);
  EXPECT_CONFIG_ERROR(rc, path, "train.eval_every (50) needs a validation set", "data.val_fraction",
                      "data.val_path");
}

static void test_val_fraction_and_val_path_are_exclusive(void **state) {
  (void)state;
  char path[1200];
  int rc = load_bad_file("data:\n  val_fraction: 0.01\n  val_path: v.h5\n", path, sizeof path);
  EXPECT_CONFIG_ERROR(rc, path, "data.val_fraction and data.val_path are both set");
}

static void test_val_fraction_above_a_half_names_the_range(void **state) {
  (void)state;
  EXPECT_CONFIG_ERROR(set_on_defaults("data.val_fraction=0.6"), "data.val_fraction",
                      "between 0 and 0.5", "0.6");
}

static void test_packing_is_stream_or_documents(void **state) {
  (void)state;
  EXPECT_CONFIG_ERROR(set_on_defaults("data.packing=bestfit"), "data.packing", "stream|documents",
                      "'bestfit'");
}

static void test_checkpoint_keep_must_be_at_least_one(void **state) {
  (void)state;
  EXPECT_CONFIG_ERROR(set_on_defaults("checkpoint.keep=0"), "checkpoint.keep", "at least 1");
}

static void test_checkpoint_every_must_be_an_integer(void **state) {
  (void)state;
  EXPECT_CONFIG_ERROR(set_on_defaults("checkpoint.every=often"), "checkpoint.every",
                      "expects an integer");
}

static void test_rope_ntk_factor_below_one_is_rejected(void **state) {
  (void)state;
  EXPECT_CONFIG_ERROR(set_on_defaults("model.rope_ntk_factor=0.5"), "model.rope_ntk_factor",
                      "between 1 and");
}

// Found by the config fuzzer: a message that quotes a value holding line breaks stays one line.
static void test_a_quoted_value_with_line_breaks_is_reported_on_one_line(void **state) {
  (void)state;
  char path[1200];
  int rc = load_bad_file("model:\n  ffn: \"swig\n\n  lu\"\n", path, sizeof path);
  EXPECT_CONFIG_ERROR(rc, "model.ffn", "unknown kind 'swig\\nlu'");
}

static void test_new_sections_load_from_a_file(void **state) {
  (void)state;
  lt_config cfg;
  char path[1200];
  assert_ok(load_file(&cfg, "pipeline.yaml",
                      "data:\n  packing: documents\n  val_fraction: 0.02\ncheckpoint:\n"
                      "  every: 250\n  keep: 5\ntrain:\n  eval_every: 100\n  eval_batches: 4\n"
                      "  freeze: embed,layers.0.\nmodel:\n  rope_ntk_factor: 4\n",
                      path, sizeof path, 0, NULL));
  assert_int_equal(cfg.data.packing, LT_PACK_DOCUMENTS);
  assert_true(cfg.data.val_fraction == 0.02);
  assert_int_equal(cfg.checkpoint.every, 250);
  assert_int_equal(cfg.checkpoint.keep, 5);
  assert_int_equal(cfg.train.eval_every, 100);
  assert_int_equal(cfg.train.eval_batches, 4);
  assert_string_equal(cfg.train.freeze, "embed,layers.0.");
  assert_true(cfg.model.rope_ntk_factor == 4);
}

// --- the documentation ---

// True when `word` occurs in `text` as a whole key path (not as the start of a longer one, as
// "model.init" is of "model.init_std").
static bool contains_key_path(const char *text, const char *word) {
  size_t n = strlen(word);
  for (const char *p = strstr(text, word); p; p = strstr(p + 1, word)) {
    bool starts = p == text || !(isalnum((unsigned char)p[-1]) || p[-1] == '_' || p[-1] == '.');
    bool ends = !(isalnum((unsigned char)p[n]) || p[n] == '_');
    if (starts && ends) return true;
  }
  return false;
}

static void test_readme_documents_every_key(void **state) {
  (void)state;
  const char *path = lt_test_source_path("README.md");
  FILE *f = fopen(path, "rb");
  if (!f) fail_msg("%s is missing: it must document every config key", path);
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *text = calloc(1, (size_t)size + 1);
  assert_int_equal(fread(text, 1, (size_t)size, f), (size_t)size);
  fclose(f);
  int missing = 0;
  for (int i = 0; i < lt_config_n_keys; i++)
    if (!contains_key_path(text, lt_config_keys[i].path)) {
      print_error("README.md does not document %s\n", lt_config_keys[i].path);
      missing++;
    }
  free(text);
  if (missing)
    fail_msg("%d config keys are missing from %s (see `longtrain config --docs`)", missing, path);
}

static void test_layer_pattern_cycles_over_the_stack(void **state) {
  (void)state;
  const char *const kinds[] = {"softmax", "lightning", NULL};
  const char *kind;
  for (int l = 0; l < 16; l++) {
    assert_ok(lt_config_layer_kind("lightning*7,softmax", kinds, 16, l, "model.attention", &kind));
    assert_string_equal(kind, l % 8 == 7 ? "softmax" : "lightning");
  }
  assert_ok(lt_config_layer_kind("softmax", kinds, 5, 4, "model.attention", &kind));
  assert_string_equal(kind, "softmax");
}

static void test_layer_pattern_errors_name_the_key_and_the_fix(void **state) {
  (void)state;
  const char *const kinds[] = {"softmax", "lightning", NULL};
  const char *kind;
  EXPECT_CONFIG_ERROR(lt_config_layer_kind("softmax,linaer", kinds, 4, 0, "model.attention", &kind),
                      "model.attention", "unknown kind 'linaer'", "known: softmax, lightning");
  EXPECT_CONFIG_ERROR(
      lt_config_layer_kind("lightning*3,softmax", kinds, 6, 0, "model.attention", &kind),
      "has 4 layers", "does not divide model.n_layers (6)");
  EXPECT_CONFIG_ERROR(lt_config_layer_kind("lightning*0", kinds, 4, 0, "model.attention", &kind),
                      "repeat count");
  EXPECT_CONFIG_ERROR(lt_config_layer_kind("softmax,", kinds, 4, 0, "model.attention", &kind),
                      "expected kind[*count]");
  EXPECT_CONFIG_ERROR(lt_config_layer_kind("", kinds, 4, 0, "model.attention", &kind), "is empty");
}

static void test_unknown_layer_kind_in_a_file_is_a_config_error(void **state) {
  (void)state;
  char path[1200];
  int rc = load_bad_file("model:\n  attention: softmax,mamba\n", path, sizeof path);
  EXPECT_CONFIG_ERROR(rc, "model.attention", "unknown kind 'mamba'");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults_load_and_validate),
      cmocka_unit_test(test_every_key_has_a_default_that_parses),
      cmocka_unit_test(test_empty_file_gives_the_defaults),
      cmocka_unit_test(test_yaml_file_sets_keys_in_nested_sections),
      cmocka_unit_test(test_set_overrides_the_file),
      cmocka_unit_test(test_later_set_overrides_an_earlier_one),
      cmocka_unit_test(test_bools_accept_true_false_yes_no),
      cmocka_unit_test(test_resolved_yaml_loads_back_to_an_identical_config),
      cmocka_unit_test(test_resolved_yaml_keeps_floats_bit_exact),
      cmocka_unit_test(test_malformed_yaml_reports_file_and_line),
      cmocka_unit_test(test_unknown_key_names_its_path_and_suggests_the_nearest),
      cmocka_unit_test(test_unknown_key_far_from_every_key_points_to_the_docs),
      cmocka_unit_test(test_unknown_section_is_rejected_with_a_suggestion),
      cmocka_unit_test(test_string_for_an_int_is_a_type_error),
      cmocka_unit_test(test_fraction_for_an_int_is_a_type_error),
      cmocka_unit_test(test_text_for_a_float_is_a_type_error),
      cmocka_unit_test(test_mapping_where_a_value_is_expected_is_a_type_error),
      cmocka_unit_test(test_list_where_a_value_is_expected_is_a_type_error),
      cmocka_unit_test(test_quoted_number_for_an_int_is_a_type_error),
      cmocka_unit_test(test_key_without_a_value_is_rejected),
      cmocka_unit_test(test_section_given_a_value_is_rejected),
      cmocka_unit_test(test_top_level_must_be_a_mapping),
      cmocka_unit_test(test_out_of_range_value_names_the_range),
      cmocka_unit_test(test_value_beyond_an_int_names_the_largest_allowed),
      cmocka_unit_test(test_bad_enum_value_lists_the_choices),
      cmocka_unit_test(test_key_given_twice_is_rejected),
      cmocka_unit_test(test_missing_config_file_is_named),
      cmocka_unit_test(test_config_path_that_is_a_folder_is_named),
      cmocka_unit_test(test_second_yaml_document_is_rejected_not_ignored),
      cmocka_unit_test(test_document_markers_around_one_document_are_accepted),
      cmocka_unit_test(test_set_with_an_unknown_key_suggests_the_nearest),
      cmocka_unit_test(test_set_without_equals_is_rejected),
      cmocka_unit_test(test_set_on_a_section_is_rejected),
      cmocka_unit_test(test_set_with_a_bad_value_names_the_key),
      cmocka_unit_test(test_n_heads_must_be_a_multiple_of_n_kv_heads),
      cmocka_unit_test(test_head_width_must_be_even),
      cmocka_unit_test(test_seq_len_may_not_exceed_max_seq_len),
      cmocka_unit_test(test_batch_must_be_a_multiple_of_micro_batch),
      cmocka_unit_test(test_batch_must_split_evenly_over_data_parallel_ranks),
      cmocka_unit_test(test_min_lr_may_not_exceed_lr),
      cmocka_unit_test(test_eval_every_needs_a_validation_set),
      cmocka_unit_test(test_val_fraction_and_val_path_are_exclusive),
      cmocka_unit_test(test_val_fraction_above_a_half_names_the_range),
      cmocka_unit_test(test_packing_is_stream_or_documents),
      cmocka_unit_test(test_checkpoint_keep_must_be_at_least_one),
      cmocka_unit_test(test_checkpoint_every_must_be_an_integer),
      cmocka_unit_test(test_rope_ntk_factor_below_one_is_rejected),
      cmocka_unit_test(test_new_sections_load_from_a_file),
      cmocka_unit_test(test_a_quoted_value_with_line_breaks_is_reported_on_one_line),
      cmocka_unit_test(test_readme_documents_every_key),
      cmocka_unit_test(test_layer_pattern_cycles_over_the_stack),
      cmocka_unit_test(test_layer_pattern_errors_name_the_key_and_the_fix),
      cmocka_unit_test(test_unknown_layer_kind_in_a_file_is_a_config_error),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
