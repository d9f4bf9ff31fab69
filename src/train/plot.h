// `longtrain plot RUN_DIR`: the run's training and validation loss, learning rate, gradient norm
// and throughput against the step, from RUN_DIR/metrics.jsonl, drawn by gnuplot as one PNG.
#ifndef LT_PLOT_H
#define LT_PLOT_H

// Draws `run_dir`/metrics.jsonl into `png` (a 2 x 2 grid of curves). A missing or empty
// metrics.jsonl, or a record that does not parse, is an LT_ERR_DATA naming the file and line;
// no gnuplot on PATH is an LT_ERR_USAGE saying what to install.
int lt_plot(const char *run_dir, const char *png);
int lt_plot_main(int argc, char **argv);

#endif
