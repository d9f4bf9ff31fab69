// longtrain <command> [args]: the command-line entry point. Only here does an error end the
// process: its one-line message goes to stderr and its status is the exit code (README, "Exit
// codes").
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/error.h"
#include "core/log.h"
#include "data/prepare.h"
#include "parallel/comm.h"
#include "train/eval.h"
#include "train/hf_convert.h"
#include "train/info.h"
#include "train/plot.h"
#include "train/trainer.h"

static const char *usage =
    "usage: longtrain <command> [options]\n"
    "\n"
    "commands:\n"
    "  prepare   tokenize text files into an HDF5 token dataset\n"
    "  train     train a model from a YAML config\n"
    "  config    print the documentation of every config key (--docs), or a resolved config\n"
    "  info      summarise a checkpoint\n"
    "  import-hf convert a Hugging Face Llama folder (config.json + safetensors) to a checkpoint\n"
    "  export-hf write a checkpoint as a Hugging Face Llama folder\n"
    "  plot      draw a run's loss, learning rate and throughput curves as PNG (gnuplot)\n"
    "  eval      score a checkpoint on a synthetic long-context task (MQAR, passkey)\n"
    "\n"
    "`longtrain <command> --help` describes each.\n";

static const char *config_usage =
    "usage: longtrain config --docs\n"
    "       longtrain config [--config FILE.yaml] [--set key=value ...]\n"
    "\n"
    "--docs prints a table of every key with its type, default and meaning. Otherwise prints the\n"
    "resolved config: the defaults, then FILE.yaml, then each --set.\n";

static int config_main(int argc, char **argv) {
  const char *path = NULL;
  char **overrides = calloc((size_t)argc, sizeof *overrides);
  LT_CHECK(overrides, LT_ERR_MEMORY, "out of memory");
  int n = 0, rc = LT_OK;
  bool docs = false, help = false;
  for (int i = 1; i < argc && rc == LT_OK; i++) {
    if (strcmp(argv[i], "--docs") == 0) {
      docs = true;
    } else if (strcmp(argv[i], "--help") == 0) {
      help = true;
    } else if ((strcmp(argv[i], "--config") == 0 || strcmp(argv[i], "--set") == 0) &&
               i + 1 == argc) {
      rc = lt_fail(LT_ERR_USAGE, "config: %s needs a value (see longtrain config --help)", argv[i]);
    } else if (strcmp(argv[i], "--config") == 0) {
      path = argv[++i];
    } else if (strcmp(argv[i], "--set") == 0) {
      overrides[n++] = argv[++i];
    } else {
      rc = lt_fail(LT_ERR_USAGE, "config: unexpected argument '%s' (see longtrain config --help)",
                   argv[i]);
    }
  }
  lt_config cfg;
  char *yaml = NULL;
  if (rc == LT_OK && help)
    fputs(config_usage, stdout);
  else if (rc == LT_OK && docs)
    lt_config_print_docs();
  else if (rc == LT_OK && (rc = lt_config_load(&cfg, path, n, overrides)) == LT_OK &&
           (rc = lt_config_to_yaml(&cfg, &yaml)) == LT_OK)
    fputs(yaml, stdout);
  free(yaml);
  free(overrides);
  return rc;
}

int main(int argc, char **argv) {
  lt_world world;
  int rc = lt_world_init(&world, &argc, &argv);
  if (rc == LT_OK) {
    lt_log_set_rank(world.rank, world.size);
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
      fputs(usage, argc < 2 ? stderr : stdout);
      rc = argc < 2 ? LT_ERR_USAGE : LT_OK;
      if (argc < 2) lt_fail(LT_ERR_USAGE, "no command given");
    } else if (strcmp(argv[1], "prepare") == 0) {
      rc = lt_prepare_main(argc - 1, argv + 1);
    } else if (strcmp(argv[1], "train") == 0) {
      rc = lt_train_main(argc - 1, argv + 1, &world);
    } else if (strcmp(argv[1], "config") == 0) {
      rc = config_main(argc - 1, argv + 1);
    } else if (strcmp(argv[1], "info") == 0) {
      rc = lt_info_main(argc - 1, argv + 1);
    } else if (strcmp(argv[1], "import-hf") == 0) {
      rc = lt_import_hf_main(argc - 1, argv + 1);
    } else if (strcmp(argv[1], "export-hf") == 0) {
      rc = lt_export_hf_main(argc - 1, argv + 1);
    } else if (strcmp(argv[1], "plot") == 0) {
      rc = lt_plot_main(argc - 1, argv + 1);
    } else if (strcmp(argv[1], "eval") == 0) {
      rc = lt_eval_main(argc - 1, argv + 1);
    } else {
      rc = lt_fail(LT_ERR_USAGE, "unknown command '%s' (see longtrain --help)", argv[1]);
    }
  }
  // Every rank stops together after a signal, and every rank reads the same command line and
  // config: rank 0 alone says why, and no rank aborts the others.
  const bool same_on_every_rank = rc == LT_STOPPED || rc == LT_ERR_USAGE || rc == LT_ERR_CONFIG;
  if (same_on_every_rank) {
    if (world.rank == 0)
      fprintf(stderr, rc == LT_STOPPED ? "longtrain: %s\n" : "longtrain: error: %s\n",
              lt_error_message());
  } else if (rc != LT_OK && world.size > 1) { // which rank failed, then the whole job ends
    fprintf(stderr, "longtrain: error: rank %d: %s\n", world.rank, lt_error_message());
    lt_world_abort(&world, rc);
  } else if (rc != LT_OK) {
    fprintf(stderr, "longtrain: error: %s\n", lt_error_message());
  }
  lt_world_finalize(&world);
  return rc;
}
