#include "runs.h"

#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/rng.h"
#include "data/dataset.h"
#include "data/tokenizer.h"
#include "testing.h"
#include "train/checkpoint.h"
#include "train/checkpoint_manifest.h"

static const char *run_config = "model:\n"
                                "  d_model: 64\n"
                                "  n_layers: 2\n"
                                "  n_heads: 4\n"
                                "  n_kv_heads: 2\n"
                                "  ffn_dim: 160\n"
                                "  vocab_size: 320\n"
                                "  max_seq_len: 64\n"
                                "train:\n"
                                "  seq_len: 64\n"
                                "  batch: 8\n"
                                "  micro_batch: 4\n"
                                "  steps: 40\n"
                                "  warmup: 5\n"
                                "  lr: 3e-3\n"
                                "  min_lr: 3e-4\n"
                                "  eval_every: 10\n"
                                "  eval_batches: 2\n"
                                "data:\n"
                                "  path: %s\n"
                                "  packing: documents\n"
                                "  val_fraction: 0.1\n"
                                "checkpoint:\n"
                                "  every: 5\n"
                                "  keep: 3\n"
                                "run:\n"
                                "  dir: %s/default-run\n"
                                "  threads: 1\n"
                                "  log_every: 10\n";

// Documents of pseudo-English words, each ended by EOS, as `longtrain prepare` would make them.
static void write_dataset(const char *path, int n_docs, uint64_t seed) {
  static const char *words[] = {"the",   "quick", "brown", "fox",    "jumps",  "over",
                                "lazy",  "dog",   "rain",  "fell",   "on",     "a",
                                "quiet", "town",  "while", "clocks", "struck", "nine"};
  lt_rng rng = lt_rng_seed(seed);
  lt_dataset_writer w;
  if (lt_dataset_writer_open(&w, path, "byte", LT_BYTE_VOCAB, LT_BYTE_EOS) != LT_OK)
    fail_msg("cannot write %s: %s", path, lt_error_message());
  int32_t doc[4096];
  for (int d = 0; d < n_docs; d++) {
    int n = 0, n_words = 4 + (int)lt_rng_below(&rng, 60);
    for (int i = 0; i < n_words; i++) {
      const char *word = words[lt_rng_below(&rng, sizeof words / sizeof words[0])];
      for (const char *c = word; *c; c++) doc[n++] = (unsigned char)*c;
      doc[n++] = i + 1 < n_words ? ' ' : '.';
    }
    doc[n++] = LT_BYTE_EOS;
    if (lt_dataset_writer_add(&w, doc, n) != LT_OK) fail_msg("%s", lt_error_message());
  }
  if (lt_dataset_writer_commit(&w) != LT_OK) fail_msg("%s", lt_error_message());
}

const lt_test_run_files *lt_test_run_files_get(void) {
  static lt_test_run_files f;
  if (f.dir[0]) return &f;
  snprintf(f.dir, sizeof f.dir, "%s", lt_test_tmpdir());
  snprintf(f.data, sizeof f.data, "%s/data.h5", f.dir);
  snprintf(f.other, sizeof f.other, "%s/other.h5", f.dir);
  snprintf(f.config, sizeof f.config, "%s/run.yaml", f.dir);
  write_dataset(f.data, 600, 1);
  write_dataset(f.other, 200, 2);
  char yaml[2048];
  snprintf(yaml, sizeof yaml, run_config, f.data, f.dir);
  lt_test_write_file(f.config, yaml);
  return &f;
}

void lt_test_write_run_config(char *path, size_t cap, const char *name, const char *format) {
  if (path[0]) return;
  snprintf(path, cap, "%s/%s", lt_test_tmpdir(), name);
  char yaml[4096];
  snprintf(yaml, sizeof yaml, format, lt_test_run_files_get()->data);
  lt_test_write_file(path, yaml);
}

// Starts `prefix ARGS`: the words of prefix, then ARGS split at spaces.
static pid_t spawn(const char *log, const char *const *prefix, const char *args) {
  char *copy = strdup(args), *argv[64];
  int argc = 0;
  while (*prefix) argv[argc++] = (char *)*prefix++;
  for (char *tok = strtok(copy, " "); tok && argc < 63; tok = strtok(NULL, " ")) argv[argc++] = tok;
  argv[argc] = NULL;
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) fail_msg("fork failed");
  if (pid == 0) {
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) _exit(127);
    dup2(fd, 1);
    dup2(fd, 2);
    execv(argv[0], argv);
    _exit(127);
  }
  free(copy);
  return pid;
}

pid_t lt_test_spawn(const char *log, const char *args) {
  return spawn(log, (const char *const[]){lt_test_binary(), NULL}, args);
}

pid_t lt_test_spawn_mpi(const char *log, int ranks, const char *args) {
  char n[16];
  snprintf(n, sizeof n, "%d", ranks);
  return spawn(
      log, (const char *const[]){LT_MPIEXEC, "--oversubscribe", "-np", n, lt_test_binary(), NULL},
      args);
}

int lt_test_wait(pid_t pid) {
  int status;
  if (waitpid(pid, &status, 0) != pid) fail_msg("waitpid failed");
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int lt_test_longtrain(const char *log, const char *args) {
  return lt_test_wait(lt_test_spawn(log, args));
}

void lt_test_expect_exit(pid_t pid, int status, const char *log) {
  int got = lt_test_wait(pid);
  if (got == status) return;
  char *text = lt_test_read_text(log);
  fail_msg("exit status %d, expected %d; log:\n%s", got, status, text ? text : "(none)");
}

const char *lt_test_train(const char *name, int ranks, const char *args) {
  static char dirs[16][512];
  static int used = 0;
  char *dir = dirs[used++ % 16], log[600], all[2048];
  if (snprintf(dir, 512, "%s/%s", lt_test_run_files_get()->dir, name) >= 512 ||
      snprintf(all, sizeof all, "train --set run.dir=%s %s", dir, args) >= (int)sizeof all)
    fail_msg("run %s: the folder or arguments are too long", name);
  snprintf(log, sizeof log, "%s.log", dir);
  lt_test_expect_exit(ranks ? lt_test_spawn_mpi(log, ranks, all) : lt_test_spawn(log, all), 0, log);
  return dir;
}

void lt_test_checkpoint_dir(char *out, size_t cap, const char *run_dir, int64_t step) {
  snprintf(out, cap, "%s/checkpoints/step_%08lld", run_dir, (long long)step);
}

void lt_test_expect_run_parts(const char *log, const char *args, int status,
                              const char *const *parts) {
  lt_test_expect_exit(lt_test_spawn(log, args), status, log);
  char *text = lt_test_read_text(log);
  for (int i = 0; parts[i]; i++)
    if (!strstr(text, parts[i])) fail_msg("'%s' is missing from the log:\n%s", parts[i], text);
  free(text);
}

void lt_test_assert_same_checkpoint(const char *a_dir, const char *b_dir) {
  lt_checkpoint a, b;
  assert_ok(lt_checkpoint_open(&a, a_dir));
  assert_ok(lt_checkpoint_open(&b, b_dir));
  assert_int_equal(a.meta.step, b.meta.step);
  assert_int_equal(a.meta.tokens_seen, b.meta.tokens_seen);
  assert_int_equal(a.meta.data_position, b.meta.data_position);
  assert_int_equal(a.n_pieces, b.n_pieces);
  for (int i = 0; i < a.n_pieces; i++) {
    const lt_ckpt_piece *p = &a.pieces[i];
    int64_t n = 1, zeros[LT_MAX_DIMS] = {0};
    for (int d = 0; d < p->ndim; d++) n *= p->logical[d];
    float *x = malloc((size_t)n * 4), *y = malloc((size_t)n * 4);
    assert_ok(lt_checkpoint_read_slice(&a, p->kind, p->name, p->ndim, zeros, p->logical, x));
    assert_ok(lt_checkpoint_read_slice(&b, p->kind, p->name, p->ndim, zeros, p->logical, y));
    if (memcmp(x, y, (size_t)n * 4) != 0)
      fail_msg("%s/%s differs", lt_ckpt_kind_group(p->kind), p->name);
    free(x), free(y);
  }
  lt_checkpoint_close(&a);
  lt_checkpoint_close(&b);
}

void lt_test_reseal_checkpoint(const char *dir) {
  char path[700];
  snprintf(path, sizeof path, "%s/%s", dir, LT_MANIFEST_FILE);
  char *text = lt_test_read_text(path);
  if (!text) fail_msg("%s is missing", path);
  lt_manifest m;
  assert_ok(lt_manifest_parse(path, text, strlen(text), &m));
  const char **names = malloc((size_t)m.n_files * sizeof *names);
  for (int i = 0; i < m.n_files; i++) names[i] = m.files[i].name;
  int err = lt_manifest_write(dir, names, m.n_files);
  if (err) fail_msg("cannot rewrite %s: %s", path, strerror(err));
  free(names);
  lt_manifest_free(&m);
  free(text);
}

static int count_tensors(const lt_checkpoint *ck) {
  int n = 0;
  for (int i = 0; i < ck->n_pieces; i++) n += lt_checkpoint_first_piece(ck, i);
  return n;
}

double lt_test_checkpoint_difference(const char *a_dir, const char *b_dir, char *what, size_t cap) {
  lt_checkpoint a, b;
  assert_ok(lt_checkpoint_open(&a, a_dir));
  assert_ok(lt_checkpoint_open(&b, b_dir));
  double worst = 0;
  snprintf(what, cap, "no tensor");
  if (a.meta.step != b.meta.step || a.meta.tokens_seen != b.meta.tokens_seen ||
      a.meta.data_position != b.meta.data_position || a.meta.n_params != b.meta.n_params) {
    worst = INFINITY;
    snprintf(what, cap, "the step, tokens seen, data position or parameter count");
  } else if (count_tensors(&a) != count_tensors(&b)) {
    worst = INFINITY;
    snprintf(what, cap, "the number of tensors (%d, %d)", count_tensors(&a), count_tensors(&b));
  }
  for (int i = 0; i < a.n_pieces && worst < INFINITY; i++) {
    const lt_ckpt_piece *p = &a.pieces[i];
    if (!lt_checkpoint_first_piece(&a, i)) continue;
    int64_t n = 1, zeros[LT_MAX_DIMS] = {0};
    for (int d = 0; d < p->ndim; d++) n *= p->logical[d];
    float *x = malloc((size_t)n * 4), *y = malloc((size_t)n * 4);
    assert_ok(lt_checkpoint_read_slice(&a, p->kind, p->name, p->ndim, zeros, p->logical, x));
    double d = INFINITY;
    if (lt_checkpoint_read_slice(&b, p->kind, p->name, p->ndim, zeros, p->logical, y) == LT_OK) {
      const double scale = lt_test_max_abs(y, n);
      d = lt_test_max_rel_diff(x, y, n, scale > 0 ? scale : 1);
    }
    lt_error_clear();
    if (!(d <= worst)) {
      worst = d;
      snprintf(what, cap, "%s/%s", lt_ckpt_kind_group(p->kind), p->name);
    }
    free(x), free(y);
  }
  lt_checkpoint_close(&a);
  lt_checkpoint_close(&b);
  return worst;
}

char *lt_test_read_text(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *text = calloc(1, (size_t)size + 1);
  if (fread(text, 1, (size_t)size, f) != (size_t)size) fail_msg("cannot read %s", path);
  fclose(f);
  return text;
}

// The text of field `name` in a JSON record (up to the next comma or brace), or "-".
static void field_text(const char *line, const char *name, char *out, size_t cap) {
  char key[64];
  snprintf(key, sizeof key, "\"%s\": ", name);
  const char *at = strstr(line, key);
  if (!at) {
    snprintf(out, cap, "-");
    return;
  }
  at += strlen(key);
  size_t n = strcspn(at, ",}");
  snprintf(out, cap, "%.*s", (int)n, at);
}

void lt_test_read_records(const char *run_dir, lt_test_records *out) {
  char path[512];
  snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
  out->n = 0;
  char *text = lt_test_read_text(path);
  if (!text) return;
  static const char *fields[] = {"step", "loss", "lr", "grad_norm", "val_loss", "tokens"};
  for (char *line = strtok(text, "\n"); line && out->n < 256; line = strtok(NULL, "\n")) {
    char *record = out->lines[out->n++];
    record[0] = '\0';
    for (int i = 0; i < 6; i++) {
      char value[64];
      field_text(line, fields[i], value, sizeof value);
      snprintf(record + strlen(record), 256 - strlen(record), "%s=%s ", fields[i], value);
    }
  }
  free(text);
}

double lt_test_record_value(const char *line, const char *field) {
  char key[64];
  snprintf(key, sizeof key, "%s=", field);
  const char *at = strstr(line, key);
  while (at && at != line && at[-1] != ' ') at = strstr(at + 1, key); // "loss" is not "val_loss"
  if (!at) fail_msg("no %s in %s", field, line);
  return strtod(at + strlen(key), NULL);
}

double lt_test_expect_records(const char *reference, const char *run, int first, double tolerance) {
  lt_test_records ref, got;
  lt_test_read_records(reference, &ref);
  lt_test_read_records(run, &got);
  if (got.n == 0 || got.n + first - 1 != ref.n)
    fail_msg("%s logged %d records from step %d, %s %d from step 1", run, got.n, first, reference,
             ref.n);
  static const char *exact[] = {"step", "lr", "tokens"},
                    *close[] = {"loss", "grad_norm", "val_loss"};
  double worst = 0;
  for (int i = 0; i < got.n; i++) {
    const char *want = ref.lines[first - 1 + i], *have = got.lines[i];
    if (tolerance == 0) {
      if (strcmp(want, have) != 0)
        fail_msg("%s logged\n  %s\nwhere %s logged\n  %s", run, have, reference, want);
      continue;
    }
    for (int f = 0; f < 3; f++)
      if (lt_test_record_value(have, exact[f]) != lt_test_record_value(want, exact[f]))
        fail_msg("%s of step %d: %s logged %s, %s %s", exact[f], first + i, run, have, reference,
                 want);
    const bool validated = !strstr(want, "val_loss=- ");
    if (validated == !!strstr(have, "val_loss=- "))
      fail_msg("step %d: validated in only one of %s and %s", first + i, run, reference);
    for (int f = 0; f < (validated ? 3 : 2); f++) {
      const double a = lt_test_record_value(have, close[f]),
                   b = lt_test_record_value(want, close[f]);
      const double d = fabs(a - b) / fmax(fabs(b), 1e-30);
      if (!(d <= tolerance))
        fail_msg("%s of step %d: %.17g in %s, %.17g in %s (%.1e apart)", close[f], first + i, a,
                 run, b, reference, d);
      if (d > worst) worst = d;
    }
  }
  return worst;
}
