// `longtrain info CKPT`: what a checkpoint holds, without loading the model.
#include <stdio.h>
#include <string.h>

#include "core/error.h"
#include "data/tasks.h"
#include "train/checkpoint.h"
#include "train/info.h"

static const char *usage =
    "usage: longtrain info CKPT\n"
    "\n"
    "Prints a summary of checkpoint folder CKPT (RUN_DIR/checkpoints/step_N): its step, the model\n"
    "shape and parameter count, the tokens seen, the data position and where its config came\n"
    "from. Exits 5 with one line naming the problem if the checkpoint is missing, incomplete,\n"
    "corrupt or of a newer format.\n";

static void print_summary(const lt_checkpoint *ck, const lt_config *cfg) {
  const lt_checkpoint_meta *m = &ck->meta;
  const lt_model_config *mc = &cfg->model;
  int tensors = 0;
  for (int i = 0; i < ck->n_pieces; i++) // once each, however many shards hold parts of it
    tensors += ck->pieces[i].kind == LT_CKPT_WEIGHTS && lt_checkpoint_first_piece(ck, i);
  const int kv = mc->n_kv_heads ? mc->n_kv_heads : mc->n_heads;
  const int head_dim = mc->head_dim ? mc->head_dim : mc->d_model / mc->n_heads;
  static const char *packing[] = {"stream", "documents"};
  long long seconds = (long long)m->train_seconds;
  printf("checkpoint: %s (format_version %lld, %lld shard%s)\n", ck->dir,
         (long long)m->format_version, (long long)m->n_shards, m->n_shards == 1 ? "" : "s");
  printf("step: %lld of train.steps %lld\n", (long long)m->step, (long long)cfg->train.steps);
  printf("tokens seen: %lld\n", (long long)m->tokens_seen);
  if (cfg->data.task == LT_DATA_TASK_NONE)
    printf("data position: sample %lld of %s (%s packing, seq_len %d, seed %lld)\n",
           (long long)m->data_position, cfg->data.path, packing[cfg->data.packing],
           cfg->train.seq_len, (long long)m->seed);
  else
    printf("data position: sample %lld of task %s (generated, seq_len %d, seed %lld)\n",
           (long long)m->data_position, lt_task_name((lt_task_kind)cfg->data.task),
           cfg->train.seq_len, (long long)m->seed);
  printf("model: %lld parameters in %d tensors; %d layers, d_model %d, %d heads (%d kv) of %d, "
         "ffn %d, vocab %d, max_seq_len %d; attention %s, ffn %s\n",
         (long long)m->n_params, tensors, mc->n_layers, mc->d_model, mc->n_heads, kv, head_dim,
         mc->ffn_dim, mc->vocab_size, mc->max_seq_len, mc->attention, mc->ffn);
  printf("training time: %lld:%02lld:%02lld\n", seconds / 3600, seconds / 60 % 60, seconds % 60);
  printf("config source: %s\n", m->config_source);
}

int lt_info_main(int argc, char **argv) {
  if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
    fputs(usage, stdout);
    return LT_OK;
  }
  LT_CHECK(
      argc == 2 && argv[1][0] != '-', LT_ERR_USAGE,
      "info: give one checkpoint folder, e.g. longtrain info runs/x/checkpoints/step_00001000");
  lt_checkpoint ck;
  LT_TRY(lt_checkpoint_open(&ck, argv[1]));
  lt_config cfg;
  int rc = lt_checkpoint_load_config(&ck, 0, NULL, &cfg);
  if (rc == LT_OK) print_summary(&ck, &cfg);
  lt_checkpoint_close(&ck);
  return rc;
}
