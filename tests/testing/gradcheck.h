// Gradient checking by directional central differences.
//
// For a function f with inputs x_1..x_k (tensors: activations or parameters) and output y, take
// the scalar L = <r, y> for a fixed random r. backward(r) gives the analytic gradients g_i. For
// random directions u, the finite difference (L(x_i + e u) - L(x_i - e u)) / 2e must equal
// <g_i, u>. The error is measured against |g_i| (the typical size of <g_i, u> for u ~ N(0, I)),
// which keeps the check meaningful for tiny and huge gradients alike and lets the fp32 rounding
// noise of many elements average out instead of failing single coordinates at random.
#ifndef LT_GRADCHECK_H
#define LT_GRADCHECK_H

#include <stdint.h>

typedef struct lt_gradcheck_input {
  const char *name;
  float *value; // perturbed in place (and restored)
  float *grad;  // filled by backward (zeroed before it runs)
  int64_t n;
} lt_gradcheck_input;

typedef struct lt_gradcheck {
  void *state;
  lt_gradcheck_input *inputs;
  int n_inputs;
  const float *output; // where forward writes y
  int64_t n_output;
  void (*forward)(void *state);
  void (*backward)(void *state, const float *dout);
} lt_gradcheck;

// The largest relative error over all inputs and `n_directions` directions each. With eps = 1e-3
// on O(1) inputs, a correct fp32 backward scores near 1e-4 (larger eps adds truncation error in
// deep compositions; smaller adds fp32 rounding) and a wrong one near 1e-1 or above.
double lt_gradcheck_run(const lt_gradcheck *check, uint64_t seed, int n_directions, double eps);

#endif
