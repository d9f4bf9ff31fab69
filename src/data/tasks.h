// Synthetic long-context tasks that longtrain generates itself, to measure in-context recall:
//
// MQAR, multi-query associative recall (Arora et al. 2023, "Zoology", arXiv 2312.04927, section
// 3.1 and its reference generator): n_pairs key-value pairs, then every key asked once more at a
// place drawn from a power law; the model must answer each with its value.
//
// Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention", arXiv 2305.16300): a passkey
// of digits hidden at a chosen depth in a long, repeated filler text, asked for at the end.
//
// Every sequence is a stream of seq_len + 1 tokens; inputs are its first seq_len and targets the
// next token at each place, LT_IGNORE_INDEX everywhere but the answers. Sequence i depends only on
// (seed, i), so a batch can be made from any index, in any order, on any rank.
//
// The trainer draws its samples from a task with data.task (data/source.h), and `longtrain eval`
// scores a checkpoint on one; both take the sizes from the data.task_* keys.
#ifndef LT_TASKS_H
#define LT_TASKS_H

#include <stddef.h>
#include <stdint.h>

#include "core/config.h"

// The values of data.task's choices (lt_data_task).
typedef enum lt_task_kind {
  LT_TASK_MQAR = LT_DATA_TASK_MQAR,
  LT_TASK_PASSKEY = LT_DATA_TASK_PASSKEY
} lt_task_kind;

// The passkey task's tokens: the ten digits, two markers, then filler words.
enum {
  LT_PASSKEY_DIGIT0 = 0, // digits are tokens 0..9
  LT_PASSKEY_KEY = 10,   // "The pass key is", before the hidden passkey
  LT_PASSKEY_ASK = 11,   // "What is the pass key? The pass key is", before the answer
  LT_PASSKEY_FILLER = 12 // filler words are tokens 12..vocab_size-1
};

// The fields are those of the config keys named beside them: messages name the keys.
typedef struct lt_task {
  lt_task_kind kind;
  int vocab_size; // data.task_vocab: token ids are below this
  int seq_len;    // train.seq_len: T, the tokens of one input sequence
  uint64_t seed;
  // MQAR: keys are tokens 1..vocab_size/2-1 and values vocab_size/2..vocab_size-1, each drawn
  // without replacement per sequence; token 0 fills the places between queries.
  int n_pairs;    // data.task_pairs
  double power_a; // data.task_power_a: a query's gap g = 0, 1, ... (in pairs of places) has
                  // weight (g+1)^(a-1)
  // Passkey
  int passkey_len; // data.task_passkey_len: digits of the passkey
  // data.task_depth_min, data.task_depth_max: where the passkey sits in the filler, 0 at the
  // start, 1 just before the ask; each sequence draws its depth uniformly from the range.
  double depth_min, depth_max;
} lt_task;

// A task with the papers' defaults: MQAR with seq_len / 8 pairs (at least 1) and power_a 0.01 as
// in Zoology; a 5-digit passkey (as in Landmark Attention) at any depth.
lt_task lt_task_defaults(lt_task_kind kind, int vocab_size, int seq_len, uint64_t seed);
// "mqar" or "passkey"; an unknown name is a usage error that lists the tasks.
int lt_task_kind_from_name(const char *name, lt_task_kind *kind);
const char *lt_task_name(lt_task_kind kind);
// Checks that the sizes fit together (a config error naming the key and the fix).
int lt_task_check(const lt_task *task);
// "mqar: 8 key-value pairs per sequence of 64 tokens, vocab 64, ..." for logs.
void lt_task_describe(const lt_task *task, char *buf, size_t cap);

// The random streams of a run: disjoint, so that no evaluation sequence is ever trained on.
typedef enum lt_task_stream {
  LT_TASK_TRAIN,      // the training samples
  LT_TASK_VALIDATION, // the periodic validation loss (train.eval_every)
  LT_TASK_EVAL,       // `longtrain eval`
} lt_task_stream;
// The task `kind` of a config: its data.task_* keys, train.seq_len, and a seed derived from
// run.seed for `stream`. Sizes that do not fit are a config error naming the key (and cfg->source).
int lt_task_from_config(const lt_config *cfg, lt_task_kind kind, lt_task_stream stream,
                        lt_task *task);

// The passkey task restricted to the b-th of K equal parts of its depth range (eval's buckets).
lt_task lt_task_depth_bucket(const lt_task *task, int64_t b, int64_t K);

// Sequences first .. first+B-1 as B rows of seq_len tokens: tokens, targets and positions, each
// B * seq_len i32 on the host.
int lt_task_generate(const lt_task *task, int64_t first, int64_t B, int32_t *tokens,
                     int32_t *targets, int32_t *pos);

// Accuracy: the fraction of answer tokens (targets that are not LT_IGNORE_INDEX) whose logits'
// argmax is exactly the target (Zoology's MQAR accuracy, per query); and the fraction of
// sequences whose every answer is right (a whole passkey). Scores add up over batches.
typedef struct lt_task_score {
  int64_t correct, answers;
  int64_t sequences_correct, sequences;
} lt_task_score;
// logits: (B * T, vocab) f32 on the host; targets: (B * T) i32, B sequences of T.
void lt_task_score_logits(lt_task_score *score, const float *logits, const int32_t *targets,
                          int64_t B, int64_t T, int64_t vocab);
void lt_task_score_add(lt_task_score *into, lt_task_score score);
double lt_task_accuracy(lt_task_score score);
double lt_task_exact_match(lt_task_score score);

#endif
