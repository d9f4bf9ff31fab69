// run.device: cuda's limits on the model's shapes are config errors that name the key and the fix
// (the CUDA kernels read rows as 16-byte vectors, the experts' rows too; flash attention is built
// for head widths 64 and 128). These run on every machine: the check needs no GPU.
#include "core/config.h"
#include "testing.h"

static int load_cuda(const char *extra) {
  lt_config cfg;
  char *overrides[2] = {"run.device=cuda", (char *)extra};
  return lt_config_load(&cfg, NULL, extra ? 2 : 1, overrides);
}

static void test_default_model_is_valid_on_cuda(void **state) {
  (void)state;
  assert_ok(load_cuda(NULL)); // 768 wide, 12 heads of 64, ffn 2048
}

static void test_head_width_other_than_64_or_128_is_rejected_on_cuda(void **state) {
  (void)state;
  EXPECT_ERROR(load_cuda("model.n_heads=8"), LT_ERR_CONFIG, "run.device: cuda", "96",
               "model.head_dim", "64 or 128");
  assert_ok(load_cuda("model.head_dim=128")); // explicit widths may differ from d_model / n_heads
  lt_config cfg;
  char *cpu[1] = {"model.n_heads=8"};
  assert_ok(lt_config_load(&cfg, NULL, 1, cpu)); // the CPU kernels take any even width
}

static void test_widths_not_a_multiple_of_8_are_rejected_on_cuda(void **state) {
  (void)state;
  EXPECT_ERROR(load_cuda("model.ffn_dim=2050"), LT_ERR_CONFIG, "model.ffn_dim", "2050",
               "multiple of 8", "run.device: cuda");
  lt_config cfg;
  char *overrides[4] = {"run.device=cuda", "model.d_model=772", "model.n_heads=4",
                        "model.head_dim=64"};
  EXPECT_ERROR(lt_config_load(&cfg, NULL, 4, overrides), LT_ERR_CONFIG, "model.d_model", "772",
               "multiple of 8");
}

static void test_moe_feed_forward_is_valid_on_cuda(void **state) {
  (void)state;
  assert_ok(load_cuda("model.ffn=moe"));
  assert_ok(load_cuda("model.ffn=swiglu,moe"));
}

static void test_expert_width_not_a_multiple_of_8_is_rejected_on_cuda(void **state) {
  (void)state;
  lt_config cfg;
  char *overrides[3] = {"run.device=cuda", "model.ffn=moe", "model.moe.ffn_dim=1030"};
  EXPECT_ERROR(lt_config_load(&cfg, NULL, 3, overrides), LT_ERR_CONFIG, "model.moe.ffn_dim", "1030",
               "multiple of 8", "run.device: cuda");
  overrides[2] = "model.moe.ffn_dim=1024";
  assert_ok(lt_config_load(&cfg, NULL, 3, overrides));
}

static void test_linear_and_lightning_layers_are_valid_on_cuda(void **state) {
  (void)state;
  assert_ok(load_cuda("model.attention=lightning"));
  assert_ok(load_cuda("model.attention=lightning*5,softmax")); // a hybrid stack of 12 layers
  assert_ok(load_cuda("model.attention=linear"));              // denominator: v is 65 wide
}

static void test_sparse_and_moh_attention_are_valid_on_cuda(void **state) {
  (void)state;
  lt_config cfg;
  char *overrides[3] = {"run.device=cuda", "model.attention=sparse,moh,softmax",
                        "model.sparse.window=256"};
  assert_ok(lt_config_load(&cfg, NULL, 3, overrides));
}

// Refused until the GPU's gradients on documents were shown to be within bf16's noise
// (tests/gpu/test_cuda_linear_training.c).
static void test_lightning_on_documents_is_valid_on_cuda(void **state) {
  (void)state;
  lt_config cfg;
  char *overrides[3] = {"run.device=cuda", "model.attention=lightning*5,softmax",
                        "data.packing=documents"};
  assert_ok(lt_config_load(&cfg, NULL, 3, overrides));
}

static void test_every_attention_kind_in_one_stack_is_valid_on_cuda(void **state) {
  (void)state;
  lt_config cfg;
  char *overrides[5] = {"run.device=cuda", "model.n_layers=5",
                        "model.attention=softmax,sparse,moh,linear,lightning", "model.ffn=moe",
                        "model.sparse.window=256"};
  assert_ok(lt_config_load(&cfg, NULL, 5, overrides));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_default_model_is_valid_on_cuda),
      cmocka_unit_test(test_head_width_other_than_64_or_128_is_rejected_on_cuda),
      cmocka_unit_test(test_widths_not_a_multiple_of_8_are_rejected_on_cuda),
      cmocka_unit_test(test_moe_feed_forward_is_valid_on_cuda),
      cmocka_unit_test(test_expert_width_not_a_multiple_of_8_is_rejected_on_cuda),
      cmocka_unit_test(test_linear_and_lightning_layers_are_valid_on_cuda),
      cmocka_unit_test(test_sparse_and_moh_attention_are_valid_on_cuda),
      cmocka_unit_test(test_lightning_on_documents_is_valid_on_cuda),
      cmocka_unit_test(test_every_attention_kind_in_one_stack_is_valid_on_cuda),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
