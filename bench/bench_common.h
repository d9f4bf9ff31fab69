// What the benchmarks share: a monotonic clock, the PyTorch reference run as a child process
// (its JSON lines read back), and small argument helpers.
#ifndef LT_BENCH_COMMON_H
#define LT_BENCH_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/tensor.h"
#include "kernels/kernels.h"

double bench_now_s(void);
// The median of n values (sorts them).
double bench_median(double *values, int n);
// Runs `command` (the reference), handing each stdout line that holds `"what": "<what>"` to
// on_line; the reference's failure is reported and is not fatal (returns false).
bool bench_reference(const char *command, const char *what,
                     void (*on_line)(const char *line, void *arg), void *arg);
// The number after "key": in a JSON line, or NAN.
double bench_json_number(const char *line, const char *key);
// A CUDA tensor of random normal bf16 values (a random block repeated: timing needs no more);
// the caller frees t->data with lt_device_free.
int bench_random_bf16(lt_tensor *t, int ndim, const int64_t *shape, uint64_t seed);
// The median milliseconds per call of fn(arg) over 5 trials of back-to-back calls (0.2 s or one
// call each) after two warm-up calls, the device synced around each trial.
int bench_time_ms(lt_ctx *ctx, int (*fn)(void *arg), void *arg, double *ms);
// The attention benchmarks' shape: the sequence lengths, heads, head width and batch.
#define BENCH_MAX_SEQS 8
typedef struct bench_shape {
  int64_t seqs[BENCH_MAX_SEQS];
  int n_seqs, heads, head_dim, batch;
} bench_shape;
// Reads argv[*i] into shape when it is --seq T ..., --heads H, --head-dim D or --batch B,
// advancing *i past its values; false when it is none of them.
bool bench_shape_arg(int argc, char **argv, int *i, bench_shape *shape);
// The H100 SXM's dense bf16 peak, the denominator of MFU here and in the reference.
#define BENCH_PEAK_FLOPS 989e12

#endif
