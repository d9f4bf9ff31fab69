#include "train/plot.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/config.h"
#include "core/error.h"
#include "core/log.h"

static const char *usage =
    "usage: longtrain plot RUN_DIR [--output FILE.png]\n"
    "\n"
    "Draws the curves of a run from RUN_DIR/metrics.jsonl into one PNG (default\n"
    "RUN_DIR/metrics.png): training loss with the validation loss, learning rate, gradient norm\n"
    "and throughput (tokens/s), each against the step. Needs gnuplot (Debian: gnuplot-nox).\n";

// One record of metrics.jsonl; NAN where it has no such field.
typedef struct record {
  double step, loss, val_loss, lr, grad_norm, tokens_per_s;
} record;

static double number(const cJSON *object, const char *key) {
  const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, key);
  return cJSON_IsNumber(item) ? item->valuedouble : NAN;
}

static int read_records(const char *path, record **out, int *n_out) {
  FILE *f = fopen(path, "r");
  LT_CHECK(f, LT_ERR_DATA, "%s: %s: give a run folder that `longtrain train` wrote (run.dir)", path,
           strerror(errno));
  record *records = NULL;
  int n = 0, cap = 0, line_no = 0, rc = LT_OK;
  char *line = NULL;
  size_t line_cap = 0;
  while (rc == LT_OK && getline(&line, &line_cap, f) >= 0) {
    line_no++;
    cJSON *json = cJSON_Parse(line);
    record r = {.step = number(json, "step"),
                .loss = number(json, "loss"),
                .val_loss = number(json, "val_loss"),
                .lr = number(json, "lr"),
                .grad_norm = number(json, "grad_norm"),
                .tokens_per_s = number(json, "tokens_per_s")};
    cJSON_Delete(json);
    if (isnan(r.step) || isnan(r.loss)) {
      rc = lt_fail(LT_ERR_DATA, "%s:%d: not a metrics record (a JSON object with step and loss)",
                   path, line_no);
    } else if (n == cap) {
      cap = cap ? 2 * cap : 256;
      record *grown = realloc(records, (size_t)cap * sizeof *grown);
      if (grown)
        records = grown;
      else
        rc = lt_fail(LT_ERR_MEMORY, "out of memory reading %s", path);
    }
    if (rc == LT_OK) records[n++] = r;
  }
  free(line);
  fclose(f);
  if (rc == LT_OK && n == 0)
    rc = lt_fail(LT_ERR_DATA, "%s is empty: the run has not logged a step yet", path);
  if (rc != LT_OK) {
    free(records);
    return rc;
  }
  *out = records, *n_out = n;
  return LT_OK;
}

// gnuplot on PATH, or "" when there is none.
static void find_gnuplot(char *out, size_t cap) {
  out[0] = '\0';
  const char *path = getenv("PATH");
  char *dirs = strdup(path ? path : "");
  for (char *save, *dir = strtok_r(dirs, ":", &save); dir && !out[0];
       dir = strtok_r(NULL, ":", &save)) {
    snprintf(out, cap, "%s/gnuplot", dir);
    if (access(out, X_OK) != 0) out[0] = '\0';
  }
  free(dirs);
}

// A gnuplot single-quoted string: quotes doubled, nothing else special.
static void put_quoted(FILE *f, const char *text) {
  fputc('\'', f);
  for (const char *c = text; *c; c++) {
    if (*c == '\'') fputc('\'', f);
    fputc(*c, f);
  }
  fputc('\'', f);
}

// One data block: the step and a field, for the records that have it.
static void put_block(FILE *f, const char *name, const record *r, int n, size_t field) {
  fprintf(f, "$%s << EOD\n", name);
  for (int i = 0; i < n; i++) {
    double value = *(const double *)((const char *)&r[i] + field);
    if (!isnan(value)) fprintf(f, "%.0f %.9g\n", r[i].step, value);
  }
  fputs("EOD\n", f);
}

static void put_script(FILE *f, const char *run_dir, const char *png, const record *r, int n) {
  put_block(f, "loss", r, n, offsetof(record, loss));
  put_block(f, "val", r, n, offsetof(record, val_loss));
  put_block(f, "lr", r, n, offsetof(record, lr));
  put_block(f, "norm", r, n, offsetof(record, grad_norm));
  put_block(f, "rate", r, n, offsetof(record, tokens_per_s));
  bool has_val = false;
  for (int i = 0; i < n; i++) has_val = has_val || !isnan(r[i].val_loss);
  fputs("set terminal pngcairo size 1200,800 font 'sans,10'\nset output ", f);
  put_quoted(f, png);
  fputs("\nset multiplot layout 2,2 title ", f);
  put_quoted(f, run_dir);
  fputs("\nset grid\nset xlabel 'step'\nset key top right\n"
        "set title 'loss (nats per token)'\n",
        f);
  fprintf(f, "plot $loss with lines lw 1.5 title 'training'%s\n",
          has_val ? ", $val with linespoints pt 7 ps 0.6 lw 1.5 title 'validation'" : "");
  fputs(
      "set title 'learning rate'\nset format y '%.1e'\nplot $lr with lines lw 1.5 notitle\n"
      "set title 'gradient norm (before clipping)'\nset format y '%g'\n"
      "plot $norm with lines lw 1.5 notitle\n"
      "set title 'throughput (tokens/s)'\nset yrange [0:*]\nplot $rate with lines lw 1.5 notitle\n"
      "unset multiplot\n",
      f);
}

// Runs gnuplot with the script on its standard input.
static int run_gnuplot(const char *gnuplot, const char *run_dir, const char *png, const record *r,
                       int n) {
  int pipe_fds[2];
  LT_CHECK(pipe(pipe_fds) == 0, LT_ERR_IO, "plot: pipe: %s", strerror(errno));
  pid_t pid = fork();
  if (pid == 0) {
    dup2(pipe_fds[0], STDIN_FILENO);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    execl(gnuplot, "gnuplot", (char *)NULL);
    _exit(127);
  }
  close(pipe_fds[0]);
  if (pid < 0) {
    close(pipe_fds[1]);
    return lt_fail(LT_ERR_IO, "plot: cannot start %s: %s", gnuplot, strerror(errno));
  }
  void (*previous)(int) = signal(SIGPIPE, SIG_IGN); // gnuplot may stop reading on an error
  FILE *script = fdopen(pipe_fds[1], "w");
  if (script) {
    put_script(script, run_dir, png, r, n);
    fclose(script);
  } else {
    close(pipe_fds[1]);
  }
  signal(SIGPIPE, previous);
  int status;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) continue;
  LT_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, LT_ERR_IO,
           "plot: gnuplot failed writing %s (its messages are above): check that the folder is "
           "writable",
           png);
  return LT_OK;
}

int lt_plot(const char *run_dir, const char *png) {
  char path[LT_PATH_MAX + 32], gnuplot[LT_PATH_MAX];
  snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
  record *records = NULL;
  int n = 0;
  LT_TRY(read_records(path, &records, &n));
  find_gnuplot(gnuplot, sizeof gnuplot);
  int rc = gnuplot[0] ? run_gnuplot(gnuplot, run_dir, png, records, n)
                      : lt_fail(LT_ERR_USAGE, "plot: gnuplot is not on PATH: install it (Debian: "
                                              "apt-get install gnuplot-nox)");
  free(records);
  return rc;
}

int lt_plot_main(int argc, char **argv) {
  const char *run_dir = NULL, *png = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      fputs(usage, stdout);
      return LT_OK;
    }
    if (strcmp(argv[i], "--output") == 0) {
      LT_CHECK(i + 1 < argc, LT_ERR_USAGE,
               "plot: --output needs a value (see longtrain plot --help)");
      png = argv[++i];
      continue;
    }
    LT_CHECK(argv[i][0] != '-' && !run_dir, LT_ERR_USAGE,
             "plot: unexpected argument '%s' (see longtrain plot --help)", argv[i]);
    run_dir = argv[i];
  }
  LT_CHECK(run_dir, LT_ERR_USAGE, "plot: give a run folder, e.g. longtrain plot runs/quickstart");
  char default_png[LT_PATH_MAX + 32];
  snprintf(default_png, sizeof default_png, "%s/metrics.png", run_dir);
  if (!png) png = default_png;
  LT_TRY(lt_plot(run_dir, png));
  lt_info("plot: %s", png);
  return LT_OK;
}
