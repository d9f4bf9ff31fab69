// `longtrain eval`: loads a checkpoint's config and weights, generates held-out sequences of a
// synthetic task from a random stream that training never draws from (LT_TASK_EVAL), runs the
// model over them and prints its accuracy on the answers, for passkey per depth bucket, then one
// JSON line for scripts.
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "core/error.h"
#include "data/tasks.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "train/eval.h"

static const char *usage =
    "usage: longtrain eval [--task mqar|passkey] CKPT [--samples N] [--seq-len T] [--batch B]\n"
    "                      [--buckets K] [--set key=value ...]\n"
    "\n"
    "Scores checkpoint folder CKPT on a synthetic long-context task: generates N sequences from a\n"
    "random stream of the checkpoint's run.seed that training never draws from, runs the model "
    "and\n"
    "prints its accuracy (the fraction of answer tokens whose most likely token is the answer:\n"
    "MQAR's values, the passkey's digits) and the fraction of sequences with every answer right;\n"
    "for passkey also per depth bucket. The last line of the output is one JSON object with the\n"
    "same numbers.\n"
    "\n"
    "The task's sizes are the checkpoint's data.task_* keys and train.seq_len; --set changes any\n"
    "key of the checkpoint's config (e.g. --set data.task_pairs=16 --set run.threads=1).\n"
    "\n"
    "  --task mqar|passkey  the task; by default the one the checkpoint trained on (data.task)\n"
    "  --samples N          sequences to score (default 1000)\n"
    "  --seq-len T          tokens per sequence (default: the checkpoint's train.seq_len); past\n"
    "                       model.max_seq_len, add --set model.max_seq_len=T\n"
    "  --batch B            sequences per forward pass (default 16)\n"
    "  --buckets K          passkey: depth buckets, equal parts of data.task_depth_min .. max\n"
    "                       (default 5)\n";

typedef struct eval_args {
  const char *checkpoint, *task;
  int64_t samples, batch, buckets;
  char **overrides; // the --set values, then train.seq_len=T for --seq-len
  int n_overrides;
  char seq_len_override[64];
} eval_args;

// A positive count for option `name`, or a usage error that names it.
static int parse_count(const char *name, const char *text, int64_t *out) {
  char *end;
  errno = 0;
  long long value = strtoll(text, &end, 10);
  LT_CHECK(errno == 0 && end != text && *end == '\0' && value >= 1, LT_ERR_USAGE,
           "eval: %s takes a positive whole number, not '%s' (see longtrain eval --help)", name,
           text);
  *out = value;
  return LT_OK;
}

static int parse_args(int argc, char **argv, eval_args *args, bool *help) {
  *args = (eval_args){.samples = 1000, .batch = 16, .buckets = 5};
  args->overrides = calloc((size_t)argc + 1, sizeof *args->overrides);
  LT_CHECK(args->overrides, LT_ERR_MEMORY, "out of memory");
  const char *seq_len = NULL;
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
      *help = true;
      return LT_OK;
    }
    if (arg[0] != '-') {
      LT_CHECK(!args->checkpoint, LT_ERR_USAGE,
               "eval: give one checkpoint folder, not '%s' and '%s' (see longtrain eval --help)",
               args->checkpoint, arg);
      args->checkpoint = arg;
      continue;
    }
    static const char *const options[] = {"--task",    "--samples", "--seq-len", "--batch",
                                          "--buckets", "--set",     NULL};
    bool known = false;
    for (int k = 0; options[k]; k++) known |= strcmp(arg, options[k]) == 0;
    LT_CHECK(known, LT_ERR_USAGE, "eval: unexpected argument '%s' (see longtrain eval --help)",
             arg);
    LT_CHECK(i + 1 < argc, LT_ERR_USAGE, "eval: %s needs a value (see longtrain eval --help)", arg);
    const char *value = argv[++i];
    if (strcmp(arg, "--task") == 0) args->task = value;
    if (strcmp(arg, "--set") == 0) args->overrides[args->n_overrides++] = argv[i];
    if (strcmp(arg, "--seq-len") == 0) seq_len = value;
    if (strcmp(arg, "--samples") == 0) LT_TRY(parse_count(arg, value, &args->samples));
    if (strcmp(arg, "--batch") == 0) LT_TRY(parse_count(arg, value, &args->batch));
    if (strcmp(arg, "--buckets") == 0) LT_TRY(parse_count(arg, value, &args->buckets));
  }
  LT_CHECK(args->checkpoint, LT_ERR_USAGE,
           "eval: give a checkpoint folder, e.g. longtrain eval --task mqar "
           "runs/x/checkpoints/step_00001000");
  if (seq_len) { // applied last, through the config's own checks (train.seq_len <= max_seq_len)
    int64_t T = 0;
    LT_TRY(parse_count("--seq-len", seq_len, &T));
    snprintf(args->seq_len_override, sizeof args->seq_len_override, "train.seq_len=%lld",
             (long long)T);
    args->overrides[args->n_overrides++] = args->seq_len_override;
  }
  return LT_OK;
}

// The model with the checkpoint's weights, planned for batches of B sequences of T tokens, and
// the batch and logits on its device with their host copies.
typedef struct eval_model {
  lt_ctx ctx;
  lt_model model;
  lt_arena arena;
  lt_batch batch;
  lt_tensor logits; // (B * T, vocab)
  int64_t B, T, vocab;
  int32_t *tokens, *targets, *pos;
  float *host_logits;
} eval_model;

static int eval_model_create(eval_model *m, lt_checkpoint *ck, const lt_config *cfg, int64_t B) {
  const lt_device device = cfg->run.device == LT_DEVICE_CUDA ? LT_CUDA : LT_CPU;
  m->B = B, m->T = cfg->train.seq_len, m->vocab = cfg->model.vocab_size;
  const int64_t n = m->B * m->T;
  LT_TRY(lt_ctx_init(&m->ctx, device, cfg->run.threads));
  LT_TRY(lt_model_create(&m->model, &cfg->model, device, NULL));
  LT_TRY(lt_checkpoint_read_params(ck, &m->model.params, false));
  LT_TRY(lt_model_plan(&m->model, m->B, m->T, false));
  m->tokens = malloc(sizeof(int32_t) * (size_t)n);
  m->targets = malloc(sizeof(int32_t) * (size_t)n);
  m->pos = malloc(sizeof(int32_t) * (size_t)n);
  m->host_logits = malloc(sizeof(float) * (size_t)(n * m->vocab));
  LT_CHECK(m->tokens && m->targets && m->pos && m->host_logits, LT_ERR_MEMORY,
           "out of host memory for %lld x %lld logits: lower --batch", (long long)n,
           (long long)m->vocab);
  const size_t bytes = 3 * ((size_t)n * sizeof(int32_t) + 256) + (size_t)(n * m->vocab) * 4 + 256;
  LT_TRY(lt_arena_create(&m->arena, device, bytes, "eval batch"));
  m->batch = (lt_batch){.B = m->B, .T = m->T};
  LT_TRY(lt_arena_alloc1(&m->arena, &m->batch.tokens, LT_I32, n));
  LT_TRY(lt_arena_alloc1(&m->arena, &m->batch.targets, LT_I32, n));
  LT_TRY(lt_arena_alloc1(&m->arena, &m->batch.pos, LT_I32, n));
  return lt_arena_alloc2(&m->arena, &m->logits, LT_F32, n, m->vocab);
}

static void eval_model_destroy(eval_model *m) {
  free(m->tokens), free(m->targets), free(m->pos), free(m->host_logits);
  lt_arena_destroy(&m->arena);
  lt_model_destroy(&m->model);
  lt_ctx_destroy(&m->ctx);
}

// Scores sequences [first, first + count) of `task`. The model runs on whole batches of B (what
// it is planned for); the sequences past `count` in the last one are not scored.
static int score(eval_model *m, const lt_task *task, int64_t first, int64_t count,
                 lt_task_score *out) {
  for (int64_t done = 0; done < count; done += m->B) {
    LT_TRY(lt_task_generate(task, first + done, m->B, m->tokens, m->targets, m->pos));
    LT_TRY(lt_tensor_from_host(m->batch.tokens, m->tokens));
    LT_TRY(lt_tensor_from_host(m->batch.targets, m->targets));
    LT_TRY(lt_tensor_from_host(m->batch.pos, m->pos));
    LT_TRY(lt_model_logits(&m->model, &m->ctx, &m->batch, m->logits));
    LT_TRY(lt_tensor_to_host(m->host_logits, m->logits));
    const int64_t rows = count - done < m->B ? count - done : m->B;
    lt_task_score_logits(out, m->host_logits, m->targets, rows, m->T, m->vocab);
  }
  return LT_OK;
}

static void add_score(cJSON *obj, lt_task_score s) {
  cJSON_AddNumberToObject(obj, "accuracy", lt_task_accuracy(s));
  cJSON_AddNumberToObject(obj, "correct", (double)s.correct);
  cJSON_AddNumberToObject(obj, "answers", (double)s.answers);
  cJSON_AddNumberToObject(obj, "exact_match", lt_task_exact_match(s));
  cJSON_AddNumberToObject(obj, "sequences", (double)s.sequences);
}

// Runs the task over args->samples sequences: one range for MQAR, K depth buckets for passkey
// (bucket b holds the passkey in the b-th K-th of the depth range, sequences b N/K .. (b+1) N/K
// of the stream). Prints each bucket's line as it is done and adds the results to `json`.
static int run_task(eval_model *m, const lt_task *task, const eval_args *args, cJSON *json) {
  const int64_t K = task->kind == LT_TASK_PASSKEY ? args->buckets : 1, N = args->samples;
  cJSON *buckets = K > 1 ? cJSON_AddArrayToObject(json, "buckets") : NULL;
  lt_task_score total = {0};
  for (int64_t b = 0; b < K; b++) {
    const lt_task part = lt_task_depth_bucket(task, b, K);
    lt_task_score s = {0};
    LT_TRY(score(m, &part, b * N / K, (b + 1) * N / K - b * N / K, &s));
    lt_task_score_add(&total, s);
    if (!buckets) continue;
    printf("depth %.2f-%.2f: accuracy %.4f (%lld of %lld digits), whole passkey %.4f (%lld of "
           "%lld)\n",
           part.depth_min, part.depth_max, lt_task_accuracy(s), (long long)s.correct,
           (long long)s.answers, lt_task_exact_match(s), (long long)s.sequences_correct,
           (long long)s.sequences);
    cJSON *item = cJSON_CreateObject();
    cJSON_AddNumberToObject(item, "depth_min", part.depth_min);
    cJSON_AddNumberToObject(item, "depth_max", part.depth_max);
    add_score(item, s);
    cJSON_AddItemToArray(buckets, item);
  }
  printf("accuracy %.4f (%lld of %lld answers); every answer right in %.4f of the sequences (%lld "
         "of %lld)\n",
         lt_task_accuracy(total), (long long)total.correct, (long long)total.answers,
         lt_task_exact_match(total), (long long)total.sequences_correct,
         (long long)total.sequences);
  add_score(json, total);
  return LT_OK;
}

// The task of --task, or the one the checkpoint trained on.
static int choose_task(const eval_args *args, const lt_config *cfg, lt_task *task) {
  lt_task_kind kind = (lt_task_kind)cfg->data.task;
  if (args->task) {
    int rc = lt_task_kind_from_name(args->task, &kind);
    if (rc) return lt_error_context(rc, "eval --task");
  } else {
    LT_CHECK(cfg->data.task != LT_DATA_TASK_NONE, LT_ERR_USAGE,
             "eval: %s trained on data.path, not a task: give --task mqar or --task passkey",
             args->checkpoint);
  }
  LT_TRY(lt_task_from_config(cfg, kind, LT_TASK_EVAL, task));
  LT_CHECK(task->kind != LT_TASK_PASSKEY || args->buckets <= args->samples, LT_ERR_USAGE,
           "eval: --buckets (%lld) exceeds --samples (%lld): lower it", (long long)args->buckets,
           (long long)args->samples);
  return LT_OK;
}

static int evaluate(const eval_args *args) {
  lt_checkpoint ck;
  LT_TRY(lt_checkpoint_open(&ck, args->checkpoint));
  lt_config cfg;
  lt_task task;
  eval_model m = {0};
  cJSON *json = cJSON_CreateObject();
  int rc = json ? LT_OK : lt_fail(LT_ERR_MEMORY, "out of memory");
  if (rc == LT_OK) rc = lt_checkpoint_load_config(&ck, args->n_overrides, args->overrides, &cfg);
  if (rc == LT_OK) rc = choose_task(args, &cfg, &task);
  const int64_t B = args->batch < args->samples ? args->batch : args->samples;
  if (rc == LT_OK) rc = eval_model_create(&m, &ck, &cfg, B);
  if (rc == LT_OK) {
    printf("checkpoint: %s (step %lld; %d layers, d_model %d, attention %s, ffn %s)\n", ck.dir,
           (long long)ck.meta.step, cfg.model.n_layers, cfg.model.d_model, cfg.model.attention,
           cfg.model.ffn);
    char described[256];
    lt_task_describe(&task, described, sizeof described);
    printf("task %s; %lld held-out sequences\n", described, (long long)args->samples);
    fflush(stdout);
    cJSON_AddStringToObject(json, "task", lt_task_name(task.kind));
    cJSON_AddStringToObject(json, "checkpoint", ck.dir);
    cJSON_AddNumberToObject(json, "step", (double)ck.meta.step);
    cJSON_AddNumberToObject(json, "seq_len", task.seq_len);
    cJSON_AddNumberToObject(json, "vocab", task.vocab_size);
    if (task.kind == LT_TASK_MQAR) {
      cJSON_AddNumberToObject(json, "pairs", task.n_pairs);
    } else {
      cJSON_AddNumberToObject(json, "passkey_len", task.passkey_len);
      cJSON_AddNumberToObject(json, "depth_min", task.depth_min);
      cJSON_AddNumberToObject(json, "depth_max", task.depth_max);
    }
    rc = run_task(&m, &task, args, json);
  }
  char *line = rc == LT_OK ? cJSON_PrintUnformatted(json) : NULL;
  if (rc == LT_OK && !line) rc = lt_fail(LT_ERR_MEMORY, "out of memory");
  if (line) printf("%s\n", line);
  free(line);
  cJSON_Delete(json);
  eval_model_destroy(&m);
  lt_checkpoint_close(&ck);
  return rc;
}

int lt_eval_main(int argc, char **argv) {
  eval_args args;
  bool help = false;
  int rc = parse_args(argc, argv, &args, &help);
  if (rc == LT_OK && help)
    fputs(usage, stdout);
  else if (rc == LT_OK)
    rc = evaluate(&args);
  free(args.overrides);
  return rc;
}
