// RMSNorm (Zhang & Sennrich 2019): y = x / rms(x) * w, rms(x) = sqrt(mean(x^2) + eps).
#include <math.h>

#include "kernels/cpu/cpu_kernels.h"

void lt_cpu_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *weight, int64_t n,
                        int64_t c, float eps) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    const float *xi = x + i * c;
    double ss = 0.0;
    for (int64_t j = 0; j < c; j++) ss += (double)xi[j] * xi[j];
    float r = 1.0f / sqrtf((float)(ss / (double)c) + eps);
    rstd[i] = r;
    for (int64_t j = 0; j < c; j++) out[i * c + j] = xi[j] * r * weight[j];
  }
}

// With xhat = x r: dx = r (g - xhat mean(g xhat)), g = dout * w; dw = sum_n dout xhat.
void lt_cpu_rmsnorm_bwd(float *dx, float *dweight, const float *dout, const float *x,
                        const float *weight, const float *rstd, int64_t n, int64_t c) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    const float *xi = x + i * c, *gi = dout + i * c;
    float r = rstd[i];
    double dot = 0.0;
    for (int64_t j = 0; j < c; j++) dot += (double)gi[j] * weight[j] * xi[j] * r;
    float mean = (float)(dot / (double)c);
    for (int64_t j = 0; j < c; j++) dx[i * c + j] += r * (gi[j] * weight[j] - xi[j] * r * mean);
  }
  // The weight gradient sums over rows: one pass per column keeps the order fixed.
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < c; j++) {
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += dout[i * c + j] * x[i * c + j] * rstd[i];
    dweight[j] += sum;
  }
}
