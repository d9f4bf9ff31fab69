// What the benchmarks share: a monotonic clock, the PyTorch reference run as a child process
// (its JSON lines read back), and small argument helpers.
#ifndef LT_BENCH_COMMON_H
#define LT_BENCH_COMMON_H

#include <stdbool.h>
#include <stddef.h>

double bench_now_s(void);
// The median of n values (sorts them).
double bench_median(double *values, int n);
// Runs `command` (the reference), handing each stdout line that holds `"what": "<what>"` to
// on_line; the reference's failure is reported and is not fatal (returns false).
bool bench_reference(const char *command, const char *what,
                     void (*on_line)(const char *line, void *arg), void *arg);
// The number after "key": in a JSON line, or NAN.
double bench_json_number(const char *line, const char *key);
// The H100 SXM's dense bf16 peak, the denominator of MFU here and in the reference.
#define BENCH_PEAK_FLOPS 989e12

#endif
