// Dense algebra on the CPU: matmul through OpenBLAS, elementwise ops, reductions.
#include <cblas.h>

#include "kernels/cpu/cpu_kernels.h"

void lt_cpu_matmul(float *c, const float *a, bool trans_a, const float *b, bool trans_b, int64_t m,
                   int64_t n, int64_t k, float alpha, float beta) {
  // Row-major: op(a) is (m, k), op(b) is (k, n), c is (m, n).
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k, alpha, a,
              trans_a ? (int)m : (int)k, b, trans_b ? (int)k : (int)n, beta, c, (int)n);
}

void lt_cpu_add(float *out, const float *a, const float *b, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void lt_cpu_scale(float *x, float s, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; i++) x[i] *= s;
}

double lt_cpu_sum_squares(const float *x, int64_t n) {
  double sum = 0.0;
  // A fixed static split and a fixed combine order would still depend on the thread count, so the
  // sum runs serially: the global gradient norm must be identical across thread counts for
  // bit-exact resume on a different machine.
  for (int64_t i = 0; i < n; i++) sum += (double)x[i] * x[i];
  return sum;
}

double lt_cpu_sum(const float *x, int64_t n) {
  double sum = 0.0; // serial, for the same reason
  for (int64_t i = 0; i < n; i++) sum += x[i];
  return sum;
}
