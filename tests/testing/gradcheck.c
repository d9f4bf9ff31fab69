#include "gradcheck.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"

static double objective(const lt_gradcheck *c, const float *r) {
  c->forward(c->state);
  double sum = 0.0;
  for (int64_t i = 0; i < c->n_output; i++) sum += (double)r[i] * c->output[i];
  return sum;
}

double lt_gradcheck_run(const lt_gradcheck *c, uint64_t seed, int n_directions, double eps) {
  lt_rng rng = lt_rng_seed(seed);
  float *r = malloc((size_t)c->n_output * sizeof *r);
  for (int64_t i = 0; i < c->n_output; i++) r[i] = lt_rng_normal(&rng);
  for (int k = 0; k < c->n_inputs; k++) memset(c->inputs[k].grad, 0, (size_t)c->inputs[k].n * 4);
  c->forward(c->state);
  c->backward(c->state, r);
  double worst = 0.0;
  for (int k = 0; k < c->n_inputs; k++) {
    const lt_gradcheck_input *in = &c->inputs[k];
    float *saved = malloc((size_t)in->n * sizeof *saved), *u = malloc((size_t)in->n * sizeof *u);
    memcpy(saved, in->value, (size_t)in->n * sizeof *saved);
    double grad_norm = 0.0;
    for (int64_t i = 0; i < in->n; i++) grad_norm += (double)in->grad[i] * in->grad[i];
    grad_norm = sqrt(grad_norm);
    for (int d = 0; d < n_directions; d++) {
      double analytic = 0.0;
      for (int64_t i = 0; i < in->n; i++) {
        u[i] = lt_rng_normal(&rng);
        analytic += (double)in->grad[i] * u[i];
      }
      for (int64_t i = 0; i < in->n; i++) in->value[i] = saved[i] + (float)eps * u[i];
      double plus = objective(c, r);
      for (int64_t i = 0; i < in->n; i++) in->value[i] = saved[i] - (float)eps * u[i];
      double minus = objective(c, r);
      memcpy(in->value, saved, (size_t)in->n * sizeof *saved);
      double numeric = (plus - minus) / (2.0 * eps);
      double scale = fmax(fmax(grad_norm, fabs(numeric)), 1e-12);
      double err = fabs(numeric - analytic) / scale;
      if (getenv("LT_GRADCHECK_VERBOSE"))
        printf("  %-12s dir %d: numeric %+.6e analytic %+.6e err %.2e\n", in->name, d, numeric,
               analytic, err);
      if (!(err <= worst)) worst = err;
    }
    free(saved);
    free(u);
  }
  c->forward(c->state); // leave the outputs of the unperturbed inputs
  free(r);
  return worst;
}
