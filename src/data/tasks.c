#include "data/tasks.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/rng.h"
#include "layers/layer.h"

// The filler "sentence" of the passkey task: this many filler words, repeated.
enum { FILLER_SENTENCE = 16 };

lt_task lt_task_defaults(lt_task_kind kind, int vocab_size, int seq_len, uint64_t seed) {
  return (lt_task){.kind = kind,
                   .vocab_size = vocab_size,
                   .seq_len = seq_len,
                   .seed = seed,
                   .n_pairs = seq_len / 8 > 0 ? seq_len / 8 : 1,
                   .power_a = 0.01,
                   .passkey_len = 5,
                   .depth_min = 0.0,
                   .depth_max = 1.0};
}

const char *lt_task_name(lt_task_kind kind) {
  return kind == LT_TASK_MQAR ? "mqar" : "passkey";
}

int lt_task_kind_from_name(const char *name, lt_task_kind *kind) {
  if (strcmp(name, "mqar") == 0) return *kind = LT_TASK_MQAR, LT_OK;
  if (strcmp(name, "passkey") == 0) return *kind = LT_TASK_PASSKEY, LT_OK;
  return lt_fail(LT_ERR_USAGE, "unknown task '%s': choose mqar or passkey", name);
}

int lt_task_check(const lt_task *t) {
  LT_CHECK(t->seq_len >= 2, LT_ERR_CONFIG, "task %s: train.seq_len (%d) must be at least 2",
           lt_task_name(t->kind), t->seq_len);
  if (t->kind == LT_TASK_MQAR) {
    LT_CHECK(t->n_pairs >= 1, LT_ERR_CONFIG, "task mqar: data.task_pairs (%d) must be at least 1",
             t->n_pairs);
    // Keys 1..V/2-1 and values V/2..V-1 are drawn without replacement.
    LT_CHECK(t->n_pairs <= t->vocab_size / 2 - 1, LT_ERR_CONFIG,
             "task mqar: data.task_vocab (%d) holds only %d distinct keys for data.task_pairs "
             "(%d): raise data.task_vocab (and model.vocab_size) to at least %d or lower "
             "data.task_pairs",
             t->vocab_size, t->vocab_size / 2 - 1, t->n_pairs, 2 * t->n_pairs + 2);
    // The pairs take 2 n places, and each query a distinct pair of the places after them.
    LT_CHECK(t->seq_len >= 4 * t->n_pairs, LT_ERR_CONFIG,
             "task mqar: train.seq_len (%d) is too short for data.task_pairs (%d) and their "
             "queries: raise train.seq_len to at least %d or lower data.task_pairs",
             t->seq_len, t->n_pairs, 4 * t->n_pairs);
    LT_CHECK(t->power_a > 0 && t->power_a <= 1, LT_ERR_CONFIG,
             "task mqar: data.task_power_a (%g) must be in (0, 1] (Zoology uses 0.01)", t->power_a);
    return LT_OK;
  }
  LT_CHECK(t->vocab_size > LT_PASSKEY_FILLER, LT_ERR_CONFIG,
           "task passkey: data.task_vocab (%d) must exceed %d (10 digits, 2 markers, then filler "
           "words): raise data.task_vocab (and model.vocab_size)",
           t->vocab_size, LT_PASSKEY_FILLER);
  LT_CHECK(t->passkey_len >= 1, LT_ERR_CONFIG,
           "task passkey: data.task_passkey_len (%d) must be at least 1", t->passkey_len);
  // The stream of seq_len + 1 tokens holds the passkey twice, each after its marker.
  LT_CHECK(t->seq_len + 1 >= 2 * (t->passkey_len + 1), LT_ERR_CONFIG,
           "task passkey: train.seq_len (%d) cannot hold a %d-digit passkey twice: raise "
           "train.seq_len to at least %d or lower data.task_passkey_len",
           t->seq_len, t->passkey_len, 2 * t->passkey_len + 1);
  LT_CHECK(0 <= t->depth_min && t->depth_min <= t->depth_max && t->depth_max <= 1, LT_ERR_CONFIG,
           "task passkey: data.task_depth_min (%g) and data.task_depth_max (%g) must satisfy 0 <= "
           "min <= max <= 1",
           t->depth_min, t->depth_max);
  return LT_OK;
}

void lt_task_describe(const lt_task *t, char *buf, size_t cap) {
  if (t->kind == LT_TASK_MQAR)
    snprintf(buf, cap,
             "mqar: %d key-value pairs per sequence of %d tokens, vocab %d, query gaps by power "
             "law a = %g",
             t->n_pairs, t->seq_len, t->vocab_size, t->power_a);
  else
    snprintf(buf, cap,
             "passkey: a %d-digit passkey at depth %g to %g of a sequence of %d tokens, vocab %d",
             t->passkey_len, t->depth_min, t->depth_max, t->seq_len, t->vocab_size);
}

int lt_task_from_config(const lt_config *cfg, lt_task_kind kind, lt_task_stream stream,
                        lt_task *task) {
  static const char *const stream_names[] = {"task: train", "task: validation", "task: eval"};
  const lt_data_config *d = &cfg->data;
  const uint64_t seed =
      lt_rng_split_name(lt_rng_seed((uint64_t)cfg->run.seed), stream_names[stream]).key;
  *task = lt_task_defaults(kind, d->task_vocab ? d->task_vocab : cfg->model.vocab_size,
                           cfg->train.seq_len, seed);
  if (d->task_pairs) task->n_pairs = d->task_pairs;
  task->power_a = d->task_power_a;
  task->passkey_len = d->task_passkey_len;
  task->depth_min = d->task_depth_min;
  task->depth_max = d->task_depth_max;
  const int rc = lt_task_check(task);
  return rc == LT_OK ? LT_OK : lt_error_context(rc, "%s", cfg->source);
}

lt_task lt_task_depth_bucket(const lt_task *task, int64_t b, int64_t K) {
  lt_task part = *task;
  const double span = task->depth_max - task->depth_min;
  part.depth_min = task->depth_min + span * (double)b / (double)K;
  part.depth_max = task->depth_min + span * (double)(b + 1) / (double)K;
  return part;
}

// n distinct draws from 0..count-1 by partial Fisher-Yates; `pool` has room for count.
static void draw_distinct(lt_rng *rng, int32_t *out, int n, int32_t *pool, int count) {
  for (int i = 0; i < count; i++) pool[i] = i;
  for (int i = 0; i < n; i++) {
    int j = i + (int)lt_rng_below(rng, (uint64_t)(count - i));
    int32_t swap = pool[i];
    pool[i] = pool[j], pool[j] = swap;
    out[i] = pool[i];
  }
}

// One MQAR stream (seq_len + 1 tokens) and its labels (the target of place t - 1 is label[t]).
// Zoology: k1 v1 ... kn vn, then in the remaining space/2 pairs of places each key once, at gap g
// drawn without replacement with weight (g+1)^(a-1), so that most queries come soon after the
// pairs and a few much later; the value is the label of the place after its key.
static void mqar_stream(const lt_task *t, lt_rng *rng, int32_t *stream, int32_t *label,
                        int32_t *scratch, double *weights) {
  const int n = t->n_pairs, half = t->vocab_size / 2, space = (t->seq_len - 2 * n) / 2;
  int32_t *keys = scratch, *values = scratch + n, *pool = scratch + 2 * n;
  draw_distinct(rng, keys, n, pool, half - 1);
  draw_distinct(rng, values, n, pool, t->vocab_size - half);
  for (int i = 0; i <= t->seq_len; i++) stream[i] = 0, label[i] = LT_IGNORE_INDEX;
  double total = 0;
  for (int g = 0; g < space; g++) total += weights[g] = pow(g + 1.0, t->power_a - 1.0);
  for (int i = 0; i < n; i++) {
    stream[2 * i] = 1 + keys[i];
    stream[2 * i + 1] = half + values[i];
    // A weighted draw among the gaps not yet taken (numpy's choice without replacement).
    double u = lt_rng_uniform(rng) * total;
    int gap = -1;
    for (int g = 0; g < space && gap < 0; g++) {
      if (weights[g] == 0) continue;
      if (u < weights[g]) gap = g;
      u -= weights[g];
    }
    for (int g = space - 1; gap < 0; g--) // rounding left u past the end: the last gap left
      if (weights[g] > 0) gap = g;
    total -= weights[gap];
    weights[gap] = 0;
    const int query = 2 * n + 2 * gap;
    stream[query] = 1 + keys[i];
    label[query + 1] = half + values[i];
  }
}

// One passkey stream: filler, KEY d1..dL at a depth drawn from [depth_min, depth_max] of the
// filler, filler, ASK d1..dL; the answer is the last L tokens. The filler repeats one sentence, as
// Landmark Attention's does.
static void passkey_stream(const lt_task *t, lt_rng *rng, const int32_t *sentence, int sentence_len,
                           int32_t *stream, int32_t *label) {
  const int L = t->passkey_len, total = t->seq_len + 1, filler = total - 2 * (L + 1);
  const double depth = t->depth_min + (t->depth_max - t->depth_min) * lt_rng_uniform(rng);
  const int at = (int)lround(depth * filler);
  int n = 0, words = 0;
  for (int i = 0; i < at; i++) stream[n++] = sentence[words++ % sentence_len];
  stream[n++] = LT_PASSKEY_KEY;
  const int key = n;
  for (int i = 0; i < L; i++) stream[n++] = LT_PASSKEY_DIGIT0 + (int32_t)lt_rng_below(rng, 10);
  for (int i = at; i < filler; i++) stream[n++] = sentence[words++ % sentence_len];
  stream[n++] = LT_PASSKEY_ASK;
  for (int i = 0; i < L; i++) stream[n++] = stream[key + i];
  for (int i = 0; i < total; i++) label[i] = i >= total - L ? stream[i] : LT_IGNORE_INDEX;
}

int lt_task_generate(const lt_task *t, int64_t first, int64_t B, int32_t *tokens, int32_t *targets,
                     int32_t *pos) {
  LT_TRY(lt_task_check(t));
  const int T = t->seq_len;
  const lt_rng root = lt_rng_seed(t->seed);
  int32_t *stream = malloc(sizeof(int32_t) * 2 * (size_t)(T + 1));
  int32_t *scratch = malloc(sizeof(int32_t) * (size_t)(2 * t->n_pairs + t->vocab_size + 1));
  double *weights = malloc(sizeof(double) * (size_t)(T / 2 + 1));
  int rc = stream && scratch && weights
               ? LT_OK
               : lt_fail(LT_ERR_MEMORY, "out of memory generating task %s", lt_task_name(t->kind));
  // The filler sentence is the task's fixed text, as Landmark Attention's is: the same in every
  // sequence of every seed, so that training, validation and evaluation streams differ only in
  // their passkeys and depths. (A text drawn per seed made a model that had learned retrieval on
  // one text fail on another's.)
  int32_t sentence[FILLER_SENTENCE];
  const int sentence_len = t->vocab_size - LT_PASSKEY_FILLER < FILLER_SENTENCE
                               ? t->vocab_size - LT_PASSKEY_FILLER
                               : FILLER_SENTENCE;
  if (rc == LT_OK && t->kind == LT_TASK_PASSKEY) {
    lt_rng rng = lt_rng_split_name(lt_rng_seed(0), "passkey filler");
    draw_distinct(&rng, sentence, sentence_len, scratch, t->vocab_size - LT_PASSKEY_FILLER);
    for (int i = 0; i < sentence_len; i++) sentence[i] += LT_PASSKEY_FILLER;
  }
  for (int64_t b = 0; b < B && rc == LT_OK; b++) {
    lt_rng rng = lt_rng_split(root, (uint64_t)(first + b));
    int32_t *label = stream + T + 1;
    if (t->kind == LT_TASK_MQAR)
      mqar_stream(t, &rng, stream, label, scratch, weights);
    else
      passkey_stream(t, &rng, sentence, sentence_len, stream, label);
    for (int i = 0; i < T; i++) {
      tokens[b * T + i] = stream[i];
      targets[b * T + i] = label[i + 1];
      pos[b * T + i] = i;
    }
  }
  free(stream), free(scratch), free(weights);
  return rc;
}

void lt_task_score_logits(lt_task_score *score, const float *logits, const int32_t *targets,
                          int64_t B, int64_t T, int64_t vocab) {
  for (int64_t b = 0; b < B; b++) {
    int64_t answers = 0, correct = 0;
    for (int64_t i = b * T; i < (b + 1) * T; i++) {
      if (targets[i] == LT_IGNORE_INDEX) continue;
      const float *row = logits + i * vocab;
      int64_t best = 0;
      for (int64_t v = 1; v < vocab; v++)
        if (row[v] > row[best]) best = v;
      answers++;
      correct += best == targets[i];
    }
    score->answers += answers;
    score->correct += correct;
    score->sequences++;
    score->sequences_correct += correct == answers;
  }
}

void lt_task_score_add(lt_task_score *into, lt_task_score score) {
  into->correct += score.correct;
  into->answers += score.answers;
  into->sequences_correct += score.sequences_correct;
  into->sequences += score.sequences;
}

double lt_task_accuracy(lt_task_score score) {
  return score.answers ? (double)score.correct / (double)score.answers : 0.0;
}

double lt_task_exact_match(lt_task_score score) {
  return score.sequences ? (double)score.sequences_correct / (double)score.sequences : 0.0;
}
