// Hugging Face config.json for LlamaForCausalLM: what transformers 5 writes and what Llama-3's
// published config.json looks like (transformers 4 layout) both read into lt_model_config; what
// longtrain writes reads back the same (and loads in transformers: make_hf_config_reference.py
// check); every architecture or setting longtrain cannot honour is a one-line data error.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/hf_config.h"
#include "testing.h"

static void test_transformers_written_config_reads_into_the_model_config(void **state) {
  (void)state;
  lt_hf_config c;
  assert_ok(lt_hf_config_read(lt_test_source_path("tests/fixtures/hf_llama_config.json"), &c));
  const lt_model_config *m = &c.model;
  assert_int_equal(m->d_model, 96);
  assert_int_equal(m->ffn_dim, 256);
  assert_int_equal(m->n_layers, 3);
  assert_int_equal(m->n_heads, 6);
  assert_int_equal(m->n_kv_heads, 2);
  assert_int_equal(m->head_dim, 32); // not hidden_size / heads
  assert_int_equal(m->vocab_size, 128256);
  assert_int_equal(m->max_seq_len, 8192);
  assert_true(m->rope_theta == 500000.0); // from rope_parameters
  assert_true(m->norm_eps == 1e-5);
  assert_true(m->tie_embeddings);
  assert_int_equal(m->init, LT_INIT_LLAMA);
  assert_string_equal(m->attention, "softmax");
  assert_string_equal(m->ffn, "swiglu");
  assert_int_equal(c.bos_token_id, 128000);
  assert_int_equal(c.n_eos, 3);
  assert_int_equal(c.eos_token_ids[2], 128009);
  assert_string_equal(c.dtype, "bfloat16");
}

// Meta-Llama-3-8B's config.json as published (transformers 4 layout: top-level rope_theta).
static const char llama3_8b[] =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false, "
    "\"attention_dropout\": 0.0, \"bos_token_id\": 128000, \"eos_token_id\": 128001, "
    "\"hidden_act\": \"silu\", \"hidden_size\": 4096, \"initializer_range\": 0.02, "
    "\"intermediate_size\": 14336, \"max_position_embeddings\": 8192, \"model_type\": \"llama\", "
    "\"num_attention_heads\": 32, \"num_hidden_layers\": 32, \"num_key_value_heads\": 8, "
    "\"pretraining_tp\": 1, \"rms_norm_eps\": 1e-05, \"rope_scaling\": null, \"rope_theta\": "
    "500000.0, \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\", "
    "\"transformers_version\": \"4.40.0.dev0\", \"use_cache\": true, \"vocab_size\": 128256}";

static void test_llama3_published_config_reads_with_head_dim_derived(void **state) {
  (void)state;
  lt_hf_config c;
  assert_ok(lt_hf_config_parse(llama3_8b, strlen(llama3_8b), "config.json", &c));
  assert_int_equal(c.model.d_model, 4096);
  assert_int_equal(c.model.n_kv_heads, 8);
  assert_int_equal(c.model.head_dim, 128);
  assert_true(c.model.rope_theta == 500000.0);
  assert_false(c.model.tie_embeddings);
  assert_int_equal(c.n_eos, 1);
  assert_int_equal(c.eos_token_ids[0], 128001);
  assert_string_equal(c.dtype, "bfloat16");
}

static void test_written_config_reads_back_the_same(void **state) {
  (void)state;
  lt_hf_config c = {.bos_token_id = 1, .eos_token_ids = {2}, .n_eos = 1};
  c.model = (lt_model_config){.d_model = 128,
                              .n_layers = 2,
                              .n_heads = 8,
                              .n_kv_heads = 4,
                              .ffn_dim = 352,
                              .vocab_size = 320,
                              .max_seq_len = 1024,
                              .rope_theta = 250000,
                              .norm_eps = 1e-5,
                              .init_std = 0.02};
  const char *dir = getenv("LT_HF_CONFIG_OUT") ? getenv("LT_HF_CONFIG_OUT") : lt_test_tmpdir();
  char path[512];
  snprintf(path, sizeof path, "%s/config.json", dir);
  assert_ok(lt_hf_config_write(path, &c));
  lt_hf_config back;
  assert_ok(lt_hf_config_read(dir, &back));
  const lt_model_config *m = &back.model;
  assert_int_equal(m->d_model, 128);
  assert_int_equal(m->n_layers, 2);
  assert_int_equal(m->n_heads, 8);
  assert_int_equal(m->n_kv_heads, 4);
  assert_int_equal(m->head_dim, 16);
  assert_int_equal(m->ffn_dim, 352);
  assert_int_equal(m->vocab_size, 320);
  assert_int_equal(m->max_seq_len, 1024);
  assert_true(m->rope_theta == 250000 && m->norm_eps == 1e-5 && m->init_std == 0.02);
  assert_false(m->tie_embeddings);
  assert_int_equal(back.bos_token_id, 1);
  assert_int_equal(back.n_eos, 1);
  assert_string_equal(back.dtype, "float32");
}

static void test_writing_a_model_that_is_not_plain_llama_is_a_config_error(void **state) {
  (void)state;
  lt_hf_config c = {.bos_token_id = -1};
  c.model = (lt_model_config){.attention = "softmax*2",
                              .ffn = "swiglu",
                              .d_model = 64,
                              .n_layers = 2,
                              .n_heads = 4,
                              .ffn_dim = 128,
                              .vocab_size = 256,
                              .max_seq_len = 64,
                              .rope_theta = 1e4,
                              .norm_eps = 1e-5};
  char path[512];
  snprintf(path, sizeof path, "%s/config.json", lt_test_tmpdir());
  strcpy(c.model.attention, "softmax*2,lightning");
  c.model.n_layers = 3;
  EXPECT_ERROR(lt_hf_config_write(path, &c), LT_ERR_CONFIG, "model.attention");
}

typedef struct bad_config {
  const char *find, *replace, *says;
} bad_config;

static void test_unsupported_config_is_a_data_error_naming_the_key(void **state) {
  (void)state;
  const bad_config cases[] = {
      {"\"LlamaForCausalLM\"", "\"MistralForCausalLM\"", "architecture MistralForCausalLM"},
      {"\"model_type\": \"llama\"", "\"model_type\": \"qwen2\"", "model_type qwen2"},
      {"\"rope_scaling\": null", "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0}",
       "rope_scaling type llama3 is not supported"},
      {"\"rope_scaling\": null", "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}",
       "rope_scaling type linear"},
      {"\"rope_scaling\": null", "\"rope_parameters\": {\"rope_type\": \"yarn\"}",
       "rope_parameters type yarn"},
      {"\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"", "hidden_act gelu"},
      {"\"attention_bias\": false", "\"attention_bias\": true", "attention_bias is true"},
      {"\"attention_dropout\": 0.0", "\"attention_dropout\": 0.1", "attention_dropout"},
      {"\"hidden_size\": 4096,", "", "hidden_size is missing"},
      {"\"num_key_value_heads\": 8", "\"num_key_value_heads\": 5", "not a multiple of"},
      {"\"num_hidden_layers\": 32", "\"num_hidden_layers\": -1", "num_hidden_layers must be"},
      {"\"vocab_size\": 128256}", "\"vocab_size\": 128256, \"head_dim\": 512}", "head_dim 512"},
      {"{\"architectures\"", "[{\"architectures\"", "not valid JSON"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char json[sizeof llama3_8b + 256];
    const char *at = strstr(llama3_8b, cases[i].find);
    assert_non_null(at);
    snprintf(json, sizeof json, "%.*s%s%s", (int)(at - llama3_8b), llama3_8b, cases[i].replace,
             at + strlen(cases[i].find));
    lt_hf_config c;
    EXPECT_ERROR(lt_hf_config_parse(json, strlen(json), "models/x/config.json", &c), LT_ERR_DATA,
                 "models/x/config.json", cases[i].says);
  }
  lt_hf_config c;
  EXPECT_ERROR(lt_hf_config_read("/nonexistent/model", &c), LT_ERR_DATA, "/nonexistent/model",
               "cannot open");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_transformers_written_config_reads_into_the_model_config),
      cmocka_unit_test(test_llama3_published_config_reads_with_head_dim_derived),
      cmocka_unit_test(test_written_config_reads_back_the_same),
      cmocka_unit_test(test_writing_a_model_that_is_not_plain_llama_is_a_config_error),
      cmocka_unit_test(test_unsupported_config_is_a_data_error_naming_the_key),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
